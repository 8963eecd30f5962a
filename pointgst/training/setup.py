"""What a recipe builds before training: checks that fail fast, the wrapped model, the selection protocol."""

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointgst.backbones.factory import parse_name
from pointgst.backbones.pointgpt import SIZES
from pointgst.backbones.pointgpt_segmentation import OFFICIAL_FETCH_LAYERS
from pointgst.recipe import PRETRAIN_METHOD, SEGMENTATION_DATASETS, Recipe, RecipeError
from pointgst.wrapping import check_options, wrap


def preflight(recipe: Recipe) -> None:
    """Cheap checks before any work: backbone name, method and its options, data root."""
    if recipe.method.name == PRETRAIN_METHOD:
        raise RecipeError(f"method {PRETRAIN_METHOD!r} is masked-autoencoder pretraining: run this recipe with "
                          "`pointgst pretrain`, not `pointgst train`")
    if recipe.fewshot is not None:
        raise RecipeError(f"recipe {recipe.name!r} is a few-shot protocol (fewshot section): run it with "
                          f"`pointgst fewshot {recipe.name}`, which trains one run per fold")
    parse_name(recipe.backbone.name)
    check_options(recipe.method.name, recipe.method.options)
    check_data_root(recipe)


def check_data_root(recipe: Recipe) -> None:
    """``FileNotFoundError`` naming the fix unless ``data.root`` exists."""
    if not Path(recipe.data.root).exists():
        raise FileNotFoundError(f"data.root {recipe.data.root!r} does not exist (from {Path.cwd()}); point it at the "
                                f"{recipe.data.dataset} data with --set data.root=PATH")


def backbone_options(recipe: Recipe) -> dict[str, Any]:
    """The backbone's grouping, (where the recipe sets it) stochastic depth, and its task (a segmentation dataset
    builds the backbone's part-segmentation model)."""
    options: dict[str, Any] = {"num_group": recipe.backbone.num_group, "group_size": recipe.backbone.group_size}
    if recipe.data.dataset in SEGMENTATION_DATASETS:
        options["task"] = "segmentation"
        if recipe.method.options.get("preset") == "official" and parse_name(recipe.backbone.name)[0] in SIZES:
            options["fetch_layers"] = OFFICIAL_FETCH_LAYERS  # blocks 4/8/12 even of PointGPT-L's 24 (quirk S3)
    if recipe.backbone.drop_path_rate is not None:
        options["drop_path_rate"] = recipe.backbone.drop_path_rate
    return options


def build_model(recipe: Recipe) -> nn.Module:
    """The wrapped backbone a recipe describes. Seeded by ``train.seed``, so a run's randomly initialised parts
    (a backbone without pretrained weights, fresh adapters) are rebuilt identically for ``pointgst eval``."""
    torch.manual_seed(recipe.train.seed)
    model = wrap_recipe(recipe, pretrained=recipe.backbone.pretrained)
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def wrap_recipe(recipe: Recipe, *, pretrained: Any) -> nn.Module:
    """``pointgst.wrap`` of the recipe's backbone, method, classes and options (``pretrained=False``: no weights, as
    ``pointgst params`` builds it on the meta device)."""
    return wrap(recipe.backbone.name, method=recipe.method.name, num_classes=recipe.data.num_classes,
                pretrained=pretrained, **backbone_options(recipe), **recipe.method.options)


PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of ``train.precision`` (disabled for ``fp32``)."""
    return torch.autocast(device.type, dtype=PRECISION_DTYPES.get(precision), enabled=precision in PRECISION_DTYPES)


def selection_split(recipe: Recipe) -> str | None:
    """The split that picks the saved epoch: ``"test"`` with ``train.selection: test`` or the ``official`` preset
    (the official protocol), none with ``train.selection: last`` (the last epoch is kept), else ``"val"``."""
    if recipe.train.selection == "last":
        return None
    official = recipe.method.options.get("preset") == "official"
    return "test" if recipe.train.selection == "test" or official else "val"
