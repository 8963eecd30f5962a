"""Deterministic, class-stratified index selection: :func:`stratified_split` (carve a validation split) and
:func:`stratified_subset` (a class-balanced subset), plus ``_as_labels`` (label validation, shared with
:mod:`pointgst.data.fewshot`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["stratified_split", "stratified_subset"]


def _as_labels(labels: Tensor | np.ndarray | Sequence[int], what: str = "labels") -> Tensor:
    """Labels as a flat int64 CPU tensor; ``ValueError`` unless they are non-negative integers."""
    labels = torch.as_tensor(labels if isinstance(labels, Tensor) else np.asarray(labels)).reshape(-1).cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or (
            len(labels) and labels.min() < 0):
        raise ValueError(f"{what} must be non-negative integers, got {labels.dtype} values")
    return labels.to(torch.int64)


def _rank_in_class(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random order of the samples grouped by class, and each sample's rank within its class in that order."""
    order = torch.randperm(len(labels), generator=generator)
    order = order[torch.sort(labels[order], stable=True).indices]  # grouped by class, random within a class
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    return order, torch.arange(len(labels)) - starts[labels[order]]


def stratified_split(labels: Tensor | np.ndarray | Sequence[int], fraction: float, seed: int = 0
                     ) -> tuple[Tensor, Tensor]:
    """Carve a validation split from a training set, class by class, deterministically.

    Each class with ``n >= 2`` samples gives ``round(fraction * n)`` of them, at least 1 and at most ``n - 1``, to
    validation; a class with one sample stays in training. Returns sorted int64 ``(train_idx, val_idx)``.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    labels = _as_labels(labels)
    order, rank = _rank_in_class(labels, torch.Generator().manual_seed(int(seed)))
    counts = torch.bincount(labels)
    n_val = torch.clamp(torch.round(counts.double() * float(fraction)).long(), min=1)
    n_val = torch.minimum(n_val, counts - 1).clamp(min=0)
    is_val = rank < n_val[labels[order]]
    return torch.sort(order[~is_val]).values, torch.sort(order[is_val]).values


def stratified_subset(labels: Tensor | np.ndarray | Sequence[int], max_samples: int, seed: int = 0) -> Tensor:
    """At most ``max_samples`` indices keeping the class proportions, deterministically (sorted int64).

    Every class present gets a sample before any class gets a second one (when ``max_samples`` >= classes);
    beyond that, classes are filled in proportion to their size.
    """
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
    labels = _as_labels(labels)
    if max_samples >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(int(seed))
    order, rank = _rank_in_class(labels, generator)
    counts = torch.bincount(labels)
    position = rank.double() / counts[labels[order]].double()  # fraction of its class drawn before this sample
    shuffle = torch.randperm(len(labels), generator=generator)  # random tie break between classes
    picked = order[shuffle[torch.sort(position[shuffle], stable=True).indices[:max_samples]]]
    return torch.sort(picked).values
