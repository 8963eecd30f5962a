"""What a run writes into its folder: checkpoints (atomically), metrics as JSONL and CSV, the curve plot."""

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointgst.atomic import write_atomic, write_text_atomic

CHECKPOINT = "checkpoint-last.pt"
BEST_STATE = "best-trainable.pt"
METRICS_JSONL, METRICS_CSV, CURVES_PNG, SUMMARY = "metrics.jsonl", "metrics.csv", "curves.png", "summary.json"
RECIPE = "recipe.yaml"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, then rename it into place."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything training changes: trainable parameters, the buffers of modules that own trainable parameters
    (e.g. the head's BatchNorm statistics), and adapter-owned buffers (official BatchNorm drift copies)."""
    owners = {name.rpartition(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    state = {}
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in owners or ".pointgst_module." in key:
            state[key] = value.detach().clone()
    return state


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing = set(state) - set(model.state_dict())
    if missing:
        raise ValueError(f"the checkpoint does not fit this model ({len(missing)} unknown keys, e.g. "
                         f"{sorted(missing)[:3]}); was the recipe changed since the run started?")
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
        right.plot(epochs, [100 * r["select_acc"] for r in rows], marker="o",
                   label=f"{rows[0]['select_split']} accuracy")
        right.set_xlabel("epoch"), right.set_ylabel("%"), right.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
