"""ShapeNetPart part segmentation: the category table (16 categories, 50 global part ids) and :class:`ShapeNetPart`.

Items are ``(points, category, parts)``: ``points`` float32 ``(npoints, 3)``, ``category`` an ``int`` in
``[0, 16)`` (the index in ``synsetoffset2category.txt`` order; the one-hot of the segmentation head is built from
it), ``parts`` int64 ``(npoints,)`` global part ids in ``[0, 50)``. The layout of the root (``normal``, ``v0`` or
``hdf5``) is detected; the files are read by :mod:`pointgst.data.shapenetpart_readers`.

Preprocessing as Point-MAE's ``PartNormalDataset``: xyz only (normals dropped), ``pc_normalize`` per shape, then
``npoints`` rows drawn with replacement each time an item is read. The draw is seeded by ``(seed, epoch, index)``:
call :meth:`ShapeNetPart.set_epoch` once per epoch for a new draw; without it every read gives the same points.
"""

from __future__ import annotations

import copy
import operator
import os
import warnings
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pointgst.data.base import _choice, _shuffle_seed
from pointgst.data.readers import DatasetError, DatasetNotFoundError, pc_normalize, require_dir
from pointgst.data.shapenetpart_readers import (
    CATEGORY_FILE,
    LAYOUT_HELP,
    detect_layout,
    read_category_file,
    read_hdf5_split,
    read_split_entries,
    read_text_shape,
    shape_files,
)

__all__ = ["SHAPENETPART_CATEGORIES", "SHAPENETPART_SYNSETS", "SHAPENETPART_PART_COUNTS", "SHAPENETPART_PART_OFFSETS",
           "PART_TO_CATEGORY", "NUM_CATEGORIES", "NUM_PARTS", "SHAPENETPART_SPLITS", "category_index",
           "category_part_ids", "ShapeNetPart"]

SHAPENETPART_CATEGORIES = ("Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife", "Lamp", "Laptop",
                           "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table")
SHAPENETPART_SYNSETS = ("02691156", "02773838", "02954340", "02958343", "03001627", "03261776", "03467517",
                        "03624134", "03636649", "03642806", "03790512", "03797390", "03948459", "04099429",
                        "04225987", "04379243")
#: parts per category; a category's global part ids are ``offset .. offset + count - 1``.
SHAPENETPART_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
SHAPENETPART_PART_OFFSETS = tuple(accumulate(SHAPENETPART_PART_COUNTS[:-1], initial=0))
NUM_CATEGORIES = len(SHAPENETPART_CATEGORIES)
NUM_PARTS = sum(SHAPENETPART_PART_COUNTS)
#: the category of each global part id, ``(NUM_PARTS,)``.
PART_TO_CATEGORY = tuple(c for c, k in enumerate(SHAPENETPART_PART_COUNTS) for _ in range(k))
SHAPENETPART_SPLITS = ("train", "val", "test", "trainval")


def category_index(category: int | str) -> int:
    """The index in ``[0, 16)`` of a category given as index, name (any case) or synset id."""
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
        if 0 <= category < NUM_CATEGORIES:
            return int(category)
    elif isinstance(category, str):
        names = [n.lower() for n in SHAPENETPART_CATEGORIES]
        if category.lower() in names:
            return names.index(category.lower())
        if category in SHAPENETPART_SYNSETS:
            return SHAPENETPART_SYNSETS.index(category)
    raise DatasetError(f"unknown ShapeNetPart category {category!r}; use an index 0..{NUM_CATEGORIES - 1}, a synset "
                       f"id or one of {', '.join(SHAPENETPART_CATEGORIES)}")


def category_part_ids(category: int | str) -> list[int]:
    """The global part ids of a category (index, name or synset), e.g. ``Table`` -> ``[47, 48, 49]``."""
    index = category_index(category)
    start = SHAPENETPART_PART_OFFSETS[index]
    return list(range(start, start + SHAPENETPART_PART_COUNTS[index]))


def _check_category_file(root: Path) -> None:
    """``synsetoffset2category.txt`` must pair names and synsets as the standard table does."""
    path = root / CATEGORY_FILE
    table = {s: n.lower() for n, s in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_SYNSETS)}
    for name, synset in read_category_file(path):
        if table.get(synset) != name.lower():
            pairs = ", ".join(f"{n} {s}" for n, s in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_SYNSETS))
            raise DatasetError(f"{path}: line '{name} {synset}' is not in the standard ShapeNetPart table ({pairs})")


def _check_parts(parts: np.ndarray, category: int, what: str) -> None:
    """Every global part id of a shape ``(N,)`` must belong to its category."""
    ids = category_part_ids(category)
    bad = np.unique(parts[(parts < ids[0]) | (parts > ids[-1])])
    if bad.size:
        raise DatasetError(f"{what}: part ids {bad.tolist()[:8]} lie outside the {SHAPENETPART_CATEGORIES[category]} "
                           f"range {ids[0]}..{ids[-1]}")


def _check_hdf5(categories: np.ndarray, parts: np.ndarray, files: str) -> None:
    """Category indices ``(M,)`` in ``[0, 16)`` and part ids ``(M, N)`` of each shape's category."""
    if categories.size and (categories.min() < 0 or categories.max() >= NUM_CATEGORIES):
        raise DatasetError(f"{files}: category labels must lie in [0, {NUM_CATEGORIES}), found "
                           f"{categories.min()}..{categories.max()}")
    owner = np.asarray(PART_TO_CATEGORY)[np.clip(parts, 0, NUM_PARTS - 1)]
    bad = ((parts < 0) | (parts >= NUM_PARTS) | (owner != categories[:, None])).any(axis=1)
    if bad.any():
        first = int(bad.argmax())
        _check_parts(parts[first], int(categories[first]), f"{files}: shape {first} of the split")


def _read_text(root: Path, layout: str, split: str, split_dir: Path
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[int], list[str]]:
    """Per shape of ``split`` present under ``root``: xyz ``(N, 3)``, global part ids ``(N,)``, category, id."""
    _check_category_file(root)
    entries, lists = read_split_entries(split_dir, split)
    unknown = sorted({s for s, _ in entries} - set(SHAPENETPART_SYNSETS))
    if unknown:
        raise DatasetError(f"{', '.join(map(str, lists))} name synsets {unknown[:4]} that are not ShapeNetPart "
                           f"categories")
    shapes = sorted((SHAPENETPART_SYNSETS.index(s), i, shape_files(root, layout, s, i)) for s, i in entries)
    present = [(c, i, f) for c, i, f in shapes if all(p.is_file() for p in f)]
    listed = ", ".join(p.name for p in lists)
    if not present:
        raise DatasetNotFoundError(f"none of the {len(shapes)} shapes listed in {listed} ({split_dir}) exist under "
                                   f"{root} (expected {LAYOUT_HELP})")
    if len(present) < len(shapes):
        warnings.warn(f"ShapeNetPart {split}: {len(shapes) - len(present)} of the {len(shapes)} shapes listed in "
                      f"{listed} are absent from {root}; using the {len(present)} present", UserWarning, stacklevel=3)
    clouds, labels = [], []
    for category, _, files in present:
        xyz, parts = read_text_shape(files)
        if layout == "v0":
            count = SHAPENETPART_PART_COUNTS[category]
            if parts.min() < 1 or parts.max() > count:
                raise DatasetError(f"{files[1]}: part numbers must lie in 1..{count} for "
                                   f"{SHAPENETPART_CATEGORIES[category]}, found {parts.min()}..{parts.max()}")
            parts = parts + SHAPENETPART_PART_OFFSETS[category] - 1
        _check_parts(parts, category, str(files[0]))
        clouds.append(xyz)
        labels.append(parts)
    return clouds, labels, [c for c, _, _ in present], [f"{SHAPENETPART_SYNSETS[c]}/{i}" for c, i, _ in present]


class ShapeNetPart(Dataset):
    """ShapeNetPart from any official layout; items ``(points (npoints, 3) float32, category int, parts (npoints,))``.

    Args:
        root: the ``..._v0_normal`` folder, the ``..._v0`` folder or PointNet's ``hdf5_data`` folder (detected).
        split: ``train``, ``val``, ``test`` or ``trainval`` (train + val).
        npoints: rows drawn with replacement per read (official: 2048).
        seed: base seed of the draws (each is seeded by ``(seed, epoch, index)``).
        normalize: ``pc_normalize`` each shape (centroid to origin, max norm 1), as the official loader does.
        split_dir: text layouts only: the folder holding ``shuffled_<split>_file_list.json`` (default
            ``root/train_test_split``). Listed shapes whose files are absent are skipped with one warning.

    Attributes: ``layout``, ``class_names`` (the 16 category names), ``categories`` (int64 ``(M,)``, also as
    ``labels``, for stratified splits), ``shape_ids`` (``<synset>/<id>``; ``None`` for hdf5), ``num_parts`` (50).
    Text layouts list shapes by category, then id (the official order); hdf5 keeps the file order.
    """

    name = "shapenetpart"
    num_parts = NUM_PARTS

    def __init__(self, root: str | os.PathLike, split: str, *, npoints: int = 2048, seed: int = 0,
                 normalize: bool = True, split_dir: str | os.PathLike | None = None):
        self.split = _choice(split, SHAPENETPART_SPLITS, "ShapeNetPart split")
        if not isinstance(npoints, int) or isinstance(npoints, bool) or npoints < 1:
            raise DatasetError(f"npoints must be a positive int, got {npoints!r}")
        root = require_dir(Path(os.path.expanduser(str(root))), LAYOUT_HELP)
        self.root, self.layout = root, detect_layout(root)
        if self.layout == "hdf5":
            if split_dir is not None:
                raise DatasetError("split_dir applies to the text layouts; the hdf5 layout's splits are its "
                                   "<split>_hdf5_file_list.txt files (remove split_dir)")
            data, categories, parts, files = read_hdf5_split(root, self.split)
            _check_hdf5(categories, parts, ", ".join(f.name for f in files))
            clouds, labels, categories, self.shape_ids = list(data), list(parts), categories.tolist(), None
        else:
            split_dir = root / "train_test_split" if split_dir is None else Path(split_dir)
            clouds, labels, categories, self.shape_ids = _read_text(root, self.layout, self.split, split_dir)
        if normalize:
            clouds = [pc_normalize(c) for c in clouds]
        lengths = [len(c) for c in clouds]
        self._offsets = torch.tensor(list(accumulate(lengths, initial=0)), dtype=torch.int64)
        self._points = torch.from_numpy(np.concatenate(clouds).astype(np.float32))
        self._parts = torch.from_numpy(np.concatenate(labels).astype(np.uint8))
        self.categories = torch.tensor(categories, dtype=torch.int64)
        self.class_names = list(SHAPENETPART_CATEGORIES)
        self.npoints, self.seed, self.normalize, self.epoch, self.resample = npoints, int(seed), normalize, 0, True

    @property
    def num_classes(self) -> int:
        return NUM_CATEGORIES

    @property
    def labels(self) -> Tensor:
        """The per-item category indices (the name other datasets use, e.g. for stratified splits)."""
        return self.categories

    def set_epoch(self, epoch: int) -> None:
        """Draw new points for this epoch."""
        self.epoch = int(epoch)

    def with_stored_order(self) -> "ShapeNetPart":
        """The same shapes (sharing the loaded data) without the draw: items hold every stored point, in order,
        so their sizes differ (batch them one at a time or pad them)."""
        view = copy.copy(self)
        view.resample = False
        return view

    def _index(self, index: int) -> int:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for ShapeNetPart ({self.split}) with {len(self)} shapes")
        return index % len(self)

    def cloud(self, index: int) -> tuple[Tensor, Tensor]:
        """Shape ``index`` as stored: points float32 ``(N_i, 3)`` (normalised when ``normalize``), parts ``(N_i,)``."""
        index = self._index(index)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._points[start:end].clone(), self._parts[start:end].long()

    def __len__(self) -> int:
        return len(self.categories)

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        index = self._index(index)
        points, parts = self.cloud(index)
        if self.resample:
            generator = torch.Generator().manual_seed(_shuffle_seed(self.seed, self.epoch, index))
            choice = torch.randint(len(points), (self.npoints,), generator=generator)
            points, parts = points[choice], parts[choice]
        return points, int(self.categories[index]), parts

    def __repr__(self) -> str:
        return (f"ShapeNetPart(root={str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, "
                f"shapes={len(self)}, npoints={self.npoints if self.resample else 'stored'})")
