"""The training engine: run folders, the training loop, evaluation and voting, optimizer groups, schedules, DDP."""

from .evaluate import evaluate_run
from .trainer import Trainer, TrainingDivergedError, train

__all__ = ["Trainer", "TrainingDivergedError", "evaluate_run", "train"]
