"""The dataset base class, :class:`PointCloudDataset`, and the private helpers the dataset modules share.

Every dataset yields ``(points, label)``: ``points`` a float32 ``(N, 3)`` tensor, ``label`` an ``int``. Every dataset
has ``name``, ``split``, ``class_names``, ``num_classes``, ``labels`` (int64 tensor of all labels, for stratified
splits and mean class accuracy) and ``shape_ids`` (names of the samples, or ``None``).

Point order, as in the official loaders: the training split shuffles each sample's points (so the FPS that starts
at index 0 starts somewhere random), the test split keeps the stored order. The shuffle is drawn from a generator
seeded by ``(seed, epoch, index)``: call :meth:`PointCloudDataset.set_epoch` once per epoch for a new order
(results do not depend on DataLoader workers or on the order items are read).
"""

from __future__ import annotations

import copy
import operator
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pointgst.data.readers import DatasetError

__all__ = ["PointCloudDataset"]

_SPLITS = ("train", "test")


def _choice(value: str, choices: Sequence[str], what: str) -> str:
    key = str(value).lower().replace("-", "_")
    if key not in choices:
        raise DatasetError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return key


def _labels_tensor(labels: np.ndarray, num_classes: int, source: str | os.PathLike) -> Tensor:
    """Validate integer labels ``(M,)`` (any integer dtype, or integral floats) in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iuf" or (
            labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
        raise DatasetError(f"{source}: labels must be integers of shape (M,), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{source}: labels must lie in [0, {num_classes}), found values in "
                           f"[{labels.min()}, {labels.max()}]")
    return torch.from_numpy(labels)


def _clouds_tensor(points: np.ndarray, source: str | os.PathLike) -> Tensor:
    """Validate stacked clouds ``(M, N, >=3)`` of finite numbers -> float32 xyz tensor ``(M, N, 3)``."""
    if points.ndim != 3 or points.shape[2] < 3 or points.dtype.kind not in "fiu":
        raise DatasetError(f"{source}: points must be a numeric array of shape (M, N, >=3), got "
                           f"{points.dtype} {points.shape}")
    xyz = np.ascontiguousarray(points[..., :3], dtype=np.float32)
    if not np.isfinite(xyz).all():
        raise DatasetError(f"{source}: the points contain NaN or infinite values")
    return torch.from_numpy(xyz)


def _shuffle_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class PointCloudDataset(Dataset):
    """Shared behaviour: items ``(points (N, 3) float32, label int)`` and seeded per-sample point shuffling.

    Subclasses set the attributes and implement :meth:`_cloud` (one cloud in stored order). Eager subclasses keep
    all clouds in ``self.points`` ``(M, N, 3)``.

    Args:
        shuffle_points: shuffle each sample's point order; ``None`` = only on the ``train`` split (official).
        seed: base seed of the shuffle.
    """

    name: str
    split: str | None
    class_names: list[str]
    labels: Tensor
    shape_ids: list[str] | None = None

    def __init__(self, split: str | None, shuffle_points: bool | None, seed: int):
        self.split = split
        self.shuffle_points = (split == "train") if shuffle_points is None else bool(shuffle_points)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_stored_order(self) -> "PointCloudDataset":
        """The same samples (sharing the loaded data) without the point-order shuffle."""
        view = copy.copy(self)
        view.shuffle_points = False
        return view

    def set_epoch(self, epoch: int) -> None:
        """Draw a new point-order shuffle for this epoch (no effect when ``shuffle_points`` is off)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def _cloud(self, index: int) -> Tensor:
        return self.points[index].clone()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {self.name} ({self.split}) with {len(self)} samples")
        index %= len(self)
        points = self._cloud(index)
        if self.shuffle_points:
            generator = torch.Generator().manual_seed(_shuffle_seed(self.seed, self.epoch, index))
            points = points[torch.randperm(len(points), generator=generator)]
        return points, int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.num_classes}, shuffle_points={self.shuffle_points})")
