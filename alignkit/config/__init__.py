"""Recipes: the typed schema (`schema.py`) and loading with inheritance, overrides and validation (`loader.py`)."""
from alignkit.config.loader import dump_recipe, load_recipe, recipe_from_dict, recipe_to_dict
from alignkit.config.schema import Recipe

__all__ = ["Recipe", "dump_recipe", "load_recipe", "recipe_from_dict", "recipe_to_dict"]
