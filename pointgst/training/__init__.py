"""Fine-tuning engine: optimizer groups, schedules, checkpoints, evaluation, DDP."""

from .engine import Trainer, evaluate_run, train

__all__ = ["Trainer", "evaluate_run", "train"]
