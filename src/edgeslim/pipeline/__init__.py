"""Recipes: ordered compression stages run into a resumable run directory."""
from .recipe import Recipe, load_recipe, parse_recipe
from .runner import run_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_recipe"]
