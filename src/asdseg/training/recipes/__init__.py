"""The papers' training recipes, by the name ``asdseg train --recipe`` takes."""

from __future__ import annotations

from asdseg.training.recipes.asdnet import AsdnetRecipe
from asdseg.training.recipes.attention_unet import AttentionUnetRecipe
from asdseg.training.recipes.base import Recipe
from asdseg.training.recipes.dan import DanRecipe
from asdseg.training.recipes.sassnet import SassnetRecipe
from asdseg.training.recipes.sparse_finetune import SparseFineTuneRecipe
from asdseg.training.recipes.supervised import SupervisedRecipe

RECIPE_CLASSES: dict[str, type[Recipe]] = {
    recipe.name: recipe
    for recipe in (
        SupervisedRecipe,
        AsdnetRecipe,
        SassnetRecipe,
        DanRecipe,
        AttentionUnetRecipe,
        SparseFineTuneRecipe,
    )
}
