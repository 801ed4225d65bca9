"""Registry of downstream recipes: ``RECIPES[name]`` / :func:`get_recipe`.

Adding a task is one module under ``finetune/recipes/`` exposing ``RECIPE`` plus one line below.
"""

from __future__ import annotations

from finetune.recipes import emotion, motor_imagery, seizure, sleep
from finetune.recipes.base import Hyper, LabelSpace, Recipe, normalize_label

__all__ = ["RECIPES", "Hyper", "LabelSpace", "Recipe", "get_recipe", "normalize_label"]

RECIPES: dict[str, Recipe] = {r.RECIPE.name: r.RECIPE for r in (seizure, sleep, emotion, motor_imagery)}


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; KeyError listing the known ones otherwise."""
    try:
        return RECIPES[name.strip()]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}") from None
