"""Your own point clouds as a dataset: :class:`PointCloudFolder` reads ``root/[<split>/]<class>/*.{npy,txt,ply}``.

The folder layout is checked when the dataset is built, so a mismatch fails there with a message naming the folder
(not later inside the training loop): every class folder must hold point files, and clouds of different sizes
need ``num_points``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from pointgst.data.base import PointCloudDataset
from pointgst.data.readers import (
    POINT_FILE_SUFFIXES,
    DatasetError,
    DatasetNotFoundError,
    read_points_file,
    require_dir,
)

__all__ = ["PointCloudFolder"]

_FOLDER_LAYOUT = ("ROOT/<class>/*.{npy,txt,ply}, or ROOT/train/<class>/... and ROOT/test/<class>/... with a split; "
                  "one cloud per file, x, y, z in the first three columns")


def _subfolders(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _point_files(folder: Path) -> list[Path]:
    """The point files directly in ``folder``, sorted (hidden files and other suffixes are skipped)."""
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and f.suffix.lower() in POINT_FILE_SUFFIXES and not f.name.startswith(".")]


def _check_no_empty_class(split_dirs: list[Path]) -> None:
    """Raise :class:`DatasetError` naming every class folder (in any split) that holds no point files.

    Classes are the sorted folder names, so an empty folder would still take a label: it shifts the labels of the
    classes sorted after it and adds a class no sample has (a model then sees targets beyond its head).
    """
    empty = sorted(d for s in split_dirs for d in _subfolders(s) if not _point_files(d))
    if empty:
        one = len(empty) == 1
        subject = f"class folder {empty[0]} holds" if one else f"class folders {', '.join(map(str, empty))} hold"
        raise DatasetError(f"{subject} no point files, yet every class folder takes a class label (an empty one "
                           f"shifts the labels of the classes sorted after it); remove {'it' if one else 'them'} or "
                           f"add .npy/.txt/.ply files (expected layout: {_FOLDER_LAYOUT})")


def _resample(cloud: Tensor, num_points: int, generator: torch.Generator) -> Tensor:
    """``num_points`` rows: the first after a seeded permutation, or all rows plus random repeats when fewer."""
    n = len(cloud)
    if n == num_points:
        return cloud
    order = torch.randperm(n, generator=generator)
    if n > num_points:
        return cloud[order[:num_points]]
    extra = torch.randint(n, (num_points - n,), generator=generator)
    return cloud[torch.cat([order, extra])]


class PointCloudFolder(PointCloudDataset):
    """Your own clouds: ``root/<class>/*.{npy,txt,ply}`` (or ``root/<split>/<class>/...`` when ``split`` is given).

    File formats: ``.npy`` ``(N, >=3)`` (no pickle); ``.txt`` rows separated by whitespace or commas; ``.ply`` ASCII
    or binary vertex ``x``/``y``/``z``. Columns beyond xyz are dropped; points are used as stored. Classes are
    the sorted class folder names (with a split: the union over all split folders, so labels agree across splits);
    files are read in sorted order, eagerly. Every class folder (in every split folder) must hold at least one
    point file, else :class:`DatasetError` names it: an empty folder would shift the labels.

    Args:
        root: the dataset folder.
        split: ``None`` for ``root/<class>/``, else the split folder name (``train``, ``test``, ``val``, ...).
        num_points: resample every cloud to this many points (seeded: first ``num_points`` after a random
            permutation, or all points plus random repeats when a cloud has fewer); ``None`` requires equal counts.
            In a recipe: ``data.num_points`` (command line: ``--set data.num_points=N``).
        seed: seed of the resampling and of the point shuffle.
        shuffle_points: see :class:`PointCloudDataset` (default: shuffle on ``split == "train"`` only).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, *, num_points: int | None = None,
                 seed: int = 0, shuffle_points: bool | None = None):
        if num_points is not None and (not isinstance(num_points, int) or num_points < 1):
            raise DatasetError(f"num_points must be a positive int or None, got {num_points!r}")
        super().__init__(split, shuffle_points, seed)
        root = require_dir(root, _FOLDER_LAYOUT)
        base = root if split is None else require_dir(root / split, _FOLDER_LAYOUT)
        split_dirs = [root] if split is None else _subfolders(root)
        self.class_names = sorted({d.name for s in split_dirs for d in _subfolders(s)})
        files = [(f, label) for label, cls in enumerate(self.class_names) if (base / cls).is_dir()
                 for f in _point_files(base / cls)]
        if not files:
            raise DatasetNotFoundError(f"no point files found under {base} (expected layout: {_FOLDER_LAYOUT})")
        _check_no_empty_class(split_dirs)
        generator = torch.Generator().manual_seed(self.seed)
        clouds = [torch.from_numpy(read_points_file(f)) for f, _ in files]
        if num_points is not None:
            clouds = [_resample(c, num_points, generator) for c in clouds]
        counts = {len(c) for c in clouds}
        if len(counts) > 1:
            smallest = min(zip(clouds, files), key=lambda cf: len(cf[0]))[1][0]
            raise DatasetError(f"clouds under {base} have different point counts ({min(counts)} in {smallest} to "
                               f"{max(counts)}); resample every cloud to N points: pass num_points=N (Python), or "
                               f"set data.num_points in the recipe (command line: --set data.num_points=N)")
        self.points = torch.stack(clouds)
        self.labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        self.files = [f for f, _ in files]
        self.shape_ids = [str(f.relative_to(base).with_suffix("")) for f in self.files]
        self.name, self.num_points = "folder", num_points
