"""Pure loss functions, registered by name. See `registry.py` for the interface."""
from alignkit.objectives.registry import Objective, get_objective, register

__all__ = ["Objective", "get_objective", "register"]
