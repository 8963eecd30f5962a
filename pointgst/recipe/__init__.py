"""Training recipes: one YAML file per (dataset x backbone) setting, read into validated pydantic dataclasses.

A recipe holds everything a run needs besides the data itself: the backbone and its weights, the tuning
method, the dataset and its pipeline, the optimisation schedule and the evaluation protocol. Built-in recipes
live in ``recipes/`` (package ``pointgst.recipes``) and are named by their file stem,
``<setting>.<backbone>`` (``scanobjectnn-obj_bg.point_mae``); a path to any YAML file works too.

Every field is type-checked and range-checked when a recipe is built, from a file, a dict, an override
(``train.epochs=5``) or the classes themselves, and when a field is assigned; errors are one-line
:class:`RecipeError` naming the key. Loading imports neither torch nor the data code, so it is instantaneous.

- :mod:`pointgst.recipe.schema`: the sections and :class:`Recipe` (pydantic v2 dataclasses);
- :mod:`pointgst.recipe.validation`: the shared pydantic config and the one-line error messages;
- :mod:`pointgst.recipe.loading`: YAML files, built-in recipes, overrides, :func:`load_recipe`, :func:`list_recipes`.
"""

from pointgst.recipe.fewshot_section import FewShotSpec, parse_folds
from pointgst.recipe.loading import list_recipes, load_recipe
from pointgst.recipe.schema import (
                                    AUGMENTATIONS,
                                    DATASET_CLASSES,
                                    DATASET_FORMATS,
                                    PRETRAIN_METHOD,
                                    SCANOBJECTNN_VARIANTS,
                                    SCHEDULES,
                                    SEGMENTATION_DATASETS,
                                    SELECTIONS,
                                    BackboneSpec,
                                    DataSpec,
                                    EvalSpec,
                                    MethodSpec,
                                    Recipe,
                                    RecipeError,
                                    TrainSpec,
)

__all__ = ["AUGMENTATIONS", "DATASET_CLASSES", "DATASET_FORMATS", "PRETRAIN_METHOD", "SCANOBJECTNN_VARIANTS",
           "SCHEDULES", "SEGMENTATION_DATASETS", "SELECTIONS", "BackboneSpec", "DataSpec", "EvalSpec", "FewShotSpec", "MethodSpec", "Recipe", "RecipeError",
           "TrainSpec", "list_recipes", "load_recipe", "parse_folds"]
