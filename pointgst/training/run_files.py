"""What a run writes into its folder and reads back: checkpoints (atomically), its recipe, metrics as JSONL and CSV,
the curve plot."""

import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointgst.atomic import write_atomic, write_text_atomic
from pointgst.errors import CheckpointError
from pointgst.recipe import Recipe, load_recipe
from pointgst.tuner.keys import is_adapter_tensor

CHECKPOINT = "checkpoint-last.pt"
BEST_STATE = "best-trainable.pt"
METRICS_JSONL, METRICS_CSV, CURVES_PNG, SUMMARY = "metrics.jsonl", "metrics.csv", "curves.png", "summary.json"
RECIPE = "recipe.yaml"
__all__ = ["BEST_STATE", "CHECKPOINT", "CURVES_PNG", "METRICS_CSV", "METRICS_JSONL", "CurvePlotter", "MetricsLog",
           "RECIPE", "SUMMARY", "load_run_file", "load_trainable_state", "plot_curves", "read_run_recipe",
           "save_atomic", "save_trained_part", "saved_trainable_state", "trainable_state", "write_text_atomic"]


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename it into place."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_run_file(path: Path) -> Any:
    """A file the run wrote with :func:`save_atomic` (tensors and plain containers only)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or overwritten file fails inside torch in many ways
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({detail}); it was not written by a completed "
                              "pointgst save. Restore it from a backup, or start the run again") from None


def read_run_recipe(run_dir: Path) -> Recipe:
    """The recipe a run folder records (``recipe.yaml``), validated like any recipe file."""
    path = run_dir / RECIPE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {RECIPE}: not a pointgst run folder")
    return load_recipe(path)


def saved_trainable_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The trainable state of a run's saved epoch and the file it comes from: ``best-trainable.pt``, or with
    ``train.selection: last`` (nothing selected) the last checkpoint's."""
    if (run_dir / BEST_STATE).is_file():
        return load_run_file(run_dir / BEST_STATE), run_dir / BEST_STATE
    if (run_dir / CHECKPOINT).is_file() and read_run_recipe(run_dir).train.selection == "last":
        return load_run_file(run_dir / CHECKPOINT)["trainable"], run_dir / CHECKPOINT
    raise FileNotFoundError(f"{run_dir} holds no {BEST_STATE}: not a pointgst run folder, or no epoch finished; "
                            "finish the run (pointgst train ... --resume) or pass another run folder")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything training changes: trainable parameters, the buffers of modules that own trainable parameters
    (e.g. the head's BatchNorm statistics), and every tensor of an adapter (frozen cls-token copies, official
    BatchNorm drift copies)."""
    owners = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    return {key: value.detach().clone() for key, value in model.state_dict().items()
            if key.rpartition(".")[0] in owners or is_adapter_tensor(key)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "the checkpoint") -> None:
    """Load :func:`trainable_state` back; a key the model does not have is an error (another recipe's model)."""
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unknown or misshapen:
        raise CheckpointError(f"{source} does not fit this model ({len(unknown)} unknown keys, e.g. {unknown[:2]}; "
                              f"{len(misshapen)} of another shape, e.g. {misshapen[:2]}); it was written by another "
                              "recipe's model")
    model.load_state_dict(state, strict=False)


class MetricsLog:
    """Appends one row per epoch to ``metrics.jsonl`` and rewrites ``metrics.csv`` (main process only)."""

    def __init__(self, run_dir: Path, history: list[dict] | None = None):
        self.run_dir = run_dir
        self.rows: list[dict] = list(history or [])

    def append(self, row: dict) -> None:
        self.rows.append(row)
        write_text_atomic(self.run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        columns = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        write_atomic(self.run_dir / METRICS_CSV, write_csv)


class CurvePlotter:
    """Redraws a run's curve plot after an epoch: the first time, then at most once per ``interval`` seconds, and
    always after the last epoch (drawing takes about 0.3 s, which short epochs should not pay every time)."""

    def __init__(self, path: Path, *, loss_name: str = "cross-entropy", interval: float = 30.0) -> None:
        self.path, self.loss_name, self.interval = path, loss_name, interval
        self._drawn_at: float | None = None

    def update(self, rows: list[dict], *, last: bool) -> None:
        if last or self._drawn_at is None or time.monotonic() - self._drawn_at >= self.interval:
            plot_curves(rows, self.path, loss_name=self.loss_name)
            self._drawn_at = time.monotonic()


def plot_curves(rows: list[dict], path: Path, *, loss_name: str = "cross-entropy") -> None:
    """Loss (and, where the rows have it, accuracy) per epoch as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    with_accuracy = all("train_acc" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(10 if with_accuracy else 5, 4), squeeze=False)
    left = axes[0, 0]
    left.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    if all("select_loss" in r for r in rows):
        left.plot(epochs, [r["select_loss"] for r in rows], marker="o", label=f"{rows[0]['select_split']} loss")
    left.set_xlabel("epoch"), left.set_ylabel(loss_name), left.legend()
    if with_accuracy:
        right = axes[0, 1]
        right.plot(epochs, [100 * r["train_acc"] for r in rows], marker="o", label="train accuracy")
        if all("select_acc" in r for r in rows):
            right.plot(epochs, [100 * r["select_acc"] for r in rows], marker="o",
                       label=f"{rows[0]['select_split']} accuracy")
        right.set_xlabel("epoch"), right.set_ylabel("%"), right.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def save_trained_part(model: nn.Module, folder: Path) -> None:
    """``model.save_pretrained(folder)``: the adapter, or the weights folder after full fine-tuning. The run folder
    is the run's own, so a folder left by an earlier pointgst version is replaced too."""
    model.save_pretrained(folder, overwrite=True)
