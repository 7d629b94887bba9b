"""Pure loss functions, registered by name. See `registry.py` for the interface."""
from alignkit.objectives.registry import Objective, get_objective, list_objectives, register

__all__ = ["Objective", "get_objective", "list_objectives", "register"]
