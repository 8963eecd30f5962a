"""Accuracy, mean class accuracy, voting (averaged logits of augmented passes), and ``pointgst eval`` of a run."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pointgst.atomic import write_text_atomic
from pointgst.data.transforms import augment, fps_resample, random_subset
from pointgst.recipe import SEGMENTATION_DATASETS, Recipe

from .data import build_test_split, make_loader
from .distributed import Distributed, setup_distributed, teardown_distributed
from .run_files import load_trainable_state, read_run_recipe, saved_trainable_state
from .seeds import derived_seed
from .setup import autocast, build_model


@dataclass
class Scores:
    """Overall accuracy, mean class accuracy (fractions) and mean cross-entropy over a split.

    What the training loop reads of a split's scores (the part-segmentation scores offer the same):
    :meth:`metrics` (logged per epoch as ``select_<name>``, summarised as ``test_<name>``), ``selected_by`` (the
    metric that picks the saved epoch) and :meth:`details` (extra summary entries)."""

    acc: float
    macc: float
    loss: float
    count: int
    selected_by: ClassVar[str] = "acc"

    def metrics(self) -> dict[str, float]:
        return {"acc": self.acc, "macc": self.macc, "loss": self.loss}

    @property
    def selected(self) -> float:
        return self.metrics()[self.selected_by]

    def details(self) -> dict[str, Any]:
        return {}


def scores_from(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Scores:
    """logits (N, C), labels (N,) -> :class:`Scores`; mean class accuracy over the classes present."""
    pred = logits.argmax(dim=1)
    correct = (pred == labels).float()
    per_class = torch.zeros(num_classes).index_add_(0, labels.cpu(), correct.cpu())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float()
    present = counts > 0
    return Scores(acc=correct.mean().item(), macc=(per_class[present] / counts[present]).mean().item(),
                  loss=F.cross_entropy(logits.float(), labels).item(), count=len(labels))


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader, dist: Distributed, *, npoints: int, vote: int = 0,
                   point_all: int | None = None, augmentation: str = "scale_translate",
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole split (gathered across processes, in dataset order).

    ``vote == 0``: one deterministic pass (FPS to ``npoints`` from index 0, the official test input).
    ``vote == N``: the average of N passes, each an FPS to ``point_all`` points, one random ``npoints`` subset
    and the augmentation (official voting uses scale-and-translate), with a seeded generator.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    all_logits, all_labels, all_index = [], [], []
    for index, points, labels in loader:
        points = points.to(dist.device)
        if vote:
            pool = fps_resample(points, min(point_all or npoints, points.shape[1]))  # deterministic: once per batch
            total = 0
            for _ in range(vote):
                view = random_subset(pool, npoints, generator)
                total = total + model(augment(view, augmentation, generator)).float()
            logits = total / vote
        else:
            logits = model(fps_resample(points, npoints)).float()
        all_logits.append(logits.cpu()), all_labels.append(labels.cpu()), all_index.append(index.cpu())
    logits, labels, index = torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_index)
    if dist.enabled:
        logits, labels, index = _gather(logits, dist), _gather(labels, dist), _gather(index, dist)
        order = torch.sort(index, stable=True).indices
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]  # DistributedSampler pads with repeats
        logits, labels = logits[order][keep], labels[order][keep]
    return logits, labels


def _gather(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """Concatenate every process's ``tensor`` (rows may differ in number); collectives run on the process device
    (nccl serves CUDA tensors only), the result is on the CPU."""
    import torch.distributed as tdist
    sizes = [torch.zeros(1, dtype=torch.long, device=dist.device) for _ in range(dist.world_size)]
    tdist.all_gather(sizes, torch.tensor([len(tensor)], device=dist.device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=dist.device)
    padded[: len(tensor)] = tensor.to(dist.device)
    out = [torch.zeros_like(padded) for _ in range(dist.world_size)]
    tdist.all_gather(out, padded)
    return torch.cat([o[: int(s)].cpu() for o, s in zip(out, sizes)])


def split_scores(model: nn.Module, loader: DataLoader, recipe: Recipe, dist: Distributed, *, vote: int = 0,
                 seed: int = 0) -> Scores:
    """:class:`Scores` of a whole split: one deterministic pass, or the average of ``vote`` augmented passes."""
    data = recipe.data
    with autocast(recipe.train.precision, dist.device):
        logits, labels = collect_logits(model, loader, dist, npoints=data.npoints, vote=vote,
                                        point_all=data.point_all, seed=seed)
    return scores_from(logits, labels, data.num_classes)


def vote_results(model: nn.Module, loader: DataLoader, recipe: Recipe, dist: Distributed, *, vote: int,
                 repeats: int, best_of: bool = False) -> dict[str, Any]:
    """``repeats`` voting runs of ``vote`` passes each: mean ± std over the runs (and, only when asked, the
    official best-of-``repeats`` number, labelled as optimistic)."""
    accs = [split_scores(model, loader, recipe, dist, vote=vote, seed=derived_seed(recipe.train.seed, "vote", r)).acc
            for r in range(repeats)]
    out = {"vote_passes": vote, "vote_repeats": repeats, "vote_acc_mean": float(np.mean(accs)),
           "vote_acc_std": float(np.std(accs))}
    if best_of:
        out["vote_acc_best_of_repeats_official_optimistic"] = max(accs)
    return out


def evaluate_run(run_dir: str | Path, *, vote: int | None = None, repeats: int | None = None, best_of: bool = False,
                 device: str | None = None) -> dict[str, Any]:
    """Test accuracy of a run's best epoch, optionally with voting; written to ``RUN_DIR/eval.json``."""
    run_dir = Path(run_dir)
    for name, value in (("vote", vote), ("repeats", repeats)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    recipe = read_run_recipe(run_dir)
    if recipe.data.dataset in SEGMENTATION_DATASETS:
        if vote or best_of:
            raise ValueError("voting is a classification protocol; evaluate a segmentation run without --vote")
        from .segmentation import evaluate_part_run  # it builds on the training loop, which imports this module
        return evaluate_part_run(run_dir, device=device)
    best, source = saved_trainable_state(run_dir)
    dist = setup_distributed(device)
    model = build_model(recipe).to(dist.device)
    load_trainable_state(model, best, source=str(source))
    loader = make_loader(build_test_split(recipe), recipe, dist, train=False)
    scores = split_scores(model, loader, recipe, dist)
    result = {"run": str(run_dir), "test_acc": scores.acc, "test_macc": scores.macc, "count": scores.count}
    vote = recipe.eval.vote if vote is None else vote
    if vote:
        result.update(vote_results(model, loader, recipe, dist, vote=vote,
                                   repeats=repeats or recipe.eval.vote_repeats, best_of=best_of))
    if dist.is_main:
        write_text_atomic(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    teardown_distributed()
    return result
