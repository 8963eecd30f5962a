"""The training engine: run folders, the training loop, evaluation and voting, optimizer groups, schedules, DDP."""

from typing import Any

from pointgst.recipe import SEGMENTATION_DATASETS, Recipe

from .evaluate import evaluate_run
from .segmentation import SegmentationTrainer
from .trainer import Trainer, TrainingDivergedError


def train(recipe: Recipe, run_dir: Any, **options: Any) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir`` (a classification recipe with :class:`Trainer`, a part-segmentation one with
    :class:`SegmentationTrainer`); returns the summary."""
    trainer = SegmentationTrainer if recipe.data.dataset in SEGMENTATION_DATASETS else Trainer
    return trainer(recipe, run_dir, **options).fit()


__all__ = ["SegmentationTrainer", "Trainer", "TrainingDivergedError", "evaluate_run", "train"]
