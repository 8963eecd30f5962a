"""Map-style datasets for point-cloud classification, in the official formats, plus splitting helpers.

Every dataset yields ``(points, label)``: ``points`` a float32 ``(N, 3)`` tensor, ``label`` an ``int``. Every dataset
has ``name``, ``split``, ``class_names``, ``num_classes``, ``labels`` (int64 tensor of all labels, for stratified
splits and mean class accuracy) and ``shape_ids`` (names of the samples, or ``None``).

Point order, as in the official loaders: the training split shuffles each sample's points (so the FPS that starts
at index 0 starts somewhere random), the test split keeps the stored order. The shuffle is drawn from a generator
seeded by ``(seed, epoch, index)``: call :meth:`PointCloudDataset.set_epoch` once per epoch for a new order
(results do not depend on DataLoader workers or on the order items are read).

Formats (see ``datasets.md``):

* :class:`ScanObjectNN` - h5 files ``main_split[_nobg]/*.h5`` (Point-MAE/PointGST root) or
  ``h5_files/main_split[_nobg]/*.h5`` (PointGPT root); points used as stored.
* :class:`ModelNetPack` - ``train.npz`` / ``test.npz`` (``points``, ``labels``, ``names``) + ``shape_names.txt``.
* :class:`ModelNetNormalResampled` - the PointNet++ ``modelnet40_normal_resampled`` text tree; ``pc_normalize``.
* :class:`ModelNetDatCache` - the official ``modelnet40_{train,test}_8192pts_fps.dat`` pickles (opt-in only);
  :func:`convert_dat_to_npz` turns them into the safe pack format once.
* :class:`PointCloudFolder` - your own data, ``root/[<split>/]<class>/*.{npy,txt,ply}``.
"""

from __future__ import annotations

import copy
import operator
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pointgst.atomic import write_atomic, write_text_atomic
from pointgst.data.readers import (
    POINT_FILE_SUFFIXES,
    DatasetError,
    DatasetNotFoundError,
    check_cloud,
    pc_normalize,
    read_h5_arrays,
    read_name_list,
    read_npz_arrays,
    read_points_file,
    read_text_array,
    require_dir,
    require_file,
)

__all__ = [
    "SCANOBJECTNN_CLASSES",
    "SCANOBJECTNN_FILES",
    "MODELNET40_CLASSES",
    "MODELNET10_CLASSES",
    "UnsafeDatasetError",
    "PointCloudDataset",
    "ScanObjectNN",
    "ModelNetPack",
    "ModelNetNormalResampled",
    "ModelNetDatCache",
    "PointCloudFolder",
    "convert_dat_to_npz",
    "build_dataset",
    "stratified_split",
    "stratified_subset",
]

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]
#: variant -> (folder, training file, test file), as distributed (datasets.md §2.1).
SCANOBJECTNN_FILES = {
    "obj_bg": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "pb_t50_rs": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}
MODELNET40_CLASSES = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]
MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]
_MODELNET_CLASSES = {"modelnet40": MODELNET40_CLASSES, "modelnet10": MODELNET10_CLASSES}
_SPLITS = ("train", "test")


class UnsafeDatasetError(DatasetError):
    """A dataset file is a pickle (which can run code when loaded) and loading it was not allowed."""


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


# ------------------------------------------------------------------------------------------------- ScanObjectNN

_SCAN_LAYOUT = ("ROOT/main_split/*.h5 and ROOT/main_split_nobg/*.h5 (Point-MAE/PointGST: data/ScanObjectNN) or "
                "ROOT/h5_files/main_split[_nobg]/*.h5 (PointGPT)")


class ScanObjectNN(PointCloudDataset):
    """ScanObjectNN from the official h5 files (keys ``data`` ``(M, 2048, 3)``, ``label`` ``(M,)``; ``mask`` ignored).

    Args:
        root: ``data/ScanObjectNN`` (holding ``main_split/``, ``main_split_nobg/``) or the PointGPT layout
            (holding ``h5_files/main_split...``); detected.
        variant: ``obj_bg``, ``obj_only`` or ``pb_t50_rs`` (alias ``hardest``); case and ``-``/``_`` are ignored.
        split: ``train`` or ``test``.
        shuffle_points, seed: see :class:`PointCloudDataset`.

    Points are used as stored (no normalisation), as in the official loader.
    """

    def __init__(self, root: str | os.PathLike, variant: str, split: str, *, shuffle_points: bool | None = None,
                 seed: int = 0):
        variant = "pb_t50_rs" if str(variant).lower() == "hardest" else _choice(variant, tuple(SCANOBJECTNN_FILES),
                                                                                "ScanObjectNN variant")
        split = _choice(split, _SPLITS, "split")
        super().__init__(split, shuffle_points, seed)
        self.path = self.find_file(root, variant, split)
        arrays = read_h5_arrays(self.path, ("data", "label"), _SCAN_LAYOUT)
        self.points = _clouds_tensor(arrays["data"], self.path)
        self.labels = _labels_tensor(arrays["label"], len(SCANOBJECTNN_CLASSES), self.path)
        if len(self.labels) != len(self.points):
            raise DatasetError(f"{self.path}: {len(self.points)} clouds but {len(self.labels)} labels")
        self.name, self.variant, self.class_names = f"scanobjectnn-{variant}", variant, list(SCANOBJECTNN_CLASSES)

    @staticmethod
    def find_file(root: str | os.PathLike, variant: str, split: str) -> Path:
        """The h5 file of ``variant``/``split`` under ``root`` in either official layout."""
        root = require_dir(root, _SCAN_LAYOUT)
        folder, train_file, test_file = SCANOBJECTNN_FILES[variant]
        relative = Path(folder) / (train_file if split == "train" else test_file)
        candidates = [root / relative, root / "h5_files" / relative]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise DatasetNotFoundError(f"ScanObjectNN {variant} {split} file not found: looked for "
                                   f"{' and '.join(map(str, candidates))} (expected layout: {_SCAN_LAYOUT})")


# ------------------------------------------------------------------------------------------------- ModelNet

_PACK_LAYOUT = "ROOT/train.npz and ROOT/test.npz (points (M, N, 3), labels (M,), names (M,)) + ROOT/shape_names.txt"


class ModelNetPack(PointCloudDataset):
    """ModelNet40/10 from the ``.npz`` pack (``points`` ``(M, N, 3)``, ``labels``, ``names``; ``shape_names.txt``).

    Args:
        root: folder holding ``train.npz``, ``test.npz`` and ``shape_names.txt`` (e.g. ``shared/data/modelnet40_1024``).
        split: ``train`` or ``test``.
        classes: ``modelnet40``, or ``modelnet10``: the rows of the ten ModelNet10 classes, relabelled in the
            ``modelnet10_shape_names.txt`` order (bathtub, bed, chair, desk, dresser, monitor, night_stand, sofa,
            table, toilet); same shapes and split as the official ModelNet10.
        axis_order: ``stored`` (the pack's axes; the local pack is z-up) or ``official``: ``points[..., [0, 2, 1]]``,
            the axis order of the PointNet++ files the official pipelines (and pretrained models) use.
        shuffle_points, seed: see :class:`PointCloudDataset`.

    Loaded without pickle. The pack's rows are used as stored (the local pack is already unit-sphere normalised).
    """

    def __init__(self, root: str | os.PathLike, split: str, *, classes: str = "modelnet40",
                 axis_order: str = "stored", shuffle_points: bool | None = None, seed: int = 0):
        classes = _choice(classes, tuple(_MODELNET_CLASSES), "ModelNet class set")
        axis_order = _choice(axis_order, ("stored", "official"), "axis_order")
        split = _choice(split, _SPLITS, "split")
        super().__init__(split, shuffle_points, seed)
        root = require_dir(root, _PACK_LAYOUT)
        self.path = root / f"{split}.npz"
        pack_names = read_name_list(root / "shape_names.txt", _PACK_LAYOUT)
        arrays = read_npz_arrays(self.path, ("points", "labels"), ("names",), _PACK_LAYOUT)
        points, labels = arrays["points"], _labels_tensor(arrays["labels"], len(pack_names), self.path)
        if len(points) != len(labels) or ("names" in arrays and len(arrays["names"]) != len(labels)):
            raise DatasetError(f"{self.path}: points, labels and names must have the same length, got "
                               f"{len(points)}, {len(labels)}, {len(arrays.get('names', labels))}")
        names = [str(n) for n in arrays["names"]] if "names" in arrays else None
        if classes == "modelnet10":
            missing = [c for c in MODELNET10_CLASSES if c not in pack_names]
            if missing:
                raise DatasetError(f"{root / 'shape_names.txt'} lacks the ModelNet10 classes {missing}")
            remap = torch.full((len(pack_names),), -1, dtype=torch.int64)
            remap[[pack_names.index(c) for c in MODELNET10_CLASSES]] = torch.arange(10)
            keep = (remap[labels] >= 0).nonzero().squeeze(1)
            points, labels = points[keep.numpy()], remap[labels[keep]]
            names = None if names is None else [names[i] for i in keep.tolist()]
            self.class_names = list(MODELNET10_CLASSES)
        else:
            self.class_names = pack_names
        xyz = _clouds_tensor(points, self.path)
        self.points = xyz[..., [0, 2, 1]].contiguous() if axis_order == "official" else xyz
        self.labels, self.shape_ids, self.axis_order, self.name = labels, names, axis_order, classes


_TEXT_LAYOUT = ("ROOT/modelnet40_shape_names.txt, ROOT/modelnet40_{train,test}.txt (shape ids like airplane_0001) "
                "and ROOT/<class>/<shape id>.txt with rows x,y,z,nx,ny,nz (modelnet10_* lists for ModelNet10)")


class ModelNetNormalResampled(PointCloudDataset):
    """ModelNet40/10 from the PointNet++ ``modelnet40_normal_resampled`` text tree (read lazily, per item).

    Args:
        root: the ``modelnet40_normal_resampled`` folder (shape-name and split lists + ``<class>/<id>.txt``).
        split: ``train`` or ``test``.
        classes: ``modelnet40`` or ``modelnet10`` (uses ``modelnet10_shape_names.txt`` / ``modelnet10_*.txt``).
        num_points: keep the first ``num_points`` rows of each file (the official non-uniform loader), then
            ``pc_normalize``; ``None`` keeps all rows (10000 in the official files). The official 8k setting instead
            reads ``*_8192pts_fps.dat`` caches built with an unseeded FPS (see :class:`ModelNetDatCache`), so the
            first 8192 rows are a different subset from the official one.
        skip_missing: drop list entries whose file is missing (e.g. the 39-shape sample) instead of raising.
        shuffle_points, seed: see :class:`PointCloudDataset`.

    Items: xyz only (normals dropped), ``pc_normalize`` applied (centroid to origin, max norm 1).
    """

    def __init__(self, root: str | os.PathLike, split: str, *, classes: str = "modelnet40",
                 num_points: int | None = None, skip_missing: bool = False, shuffle_points: bool | None = None,
                 seed: int = 0):
        classes = _choice(classes, tuple(_MODELNET_CLASSES), "ModelNet class set")
        split = _choice(split, _SPLITS, "split")
        if num_points is not None and (not isinstance(num_points, int) or num_points < 1):
            raise DatasetError(f"num_points must be a positive int or None, got {num_points!r}")
        super().__init__(split, shuffle_points, seed)
        root = require_dir(root, _TEXT_LAYOUT)
        self.class_names = read_name_list(root / f"{classes}_shape_names.txt", _TEXT_LAYOUT)
        list_path = root / f"{classes}_{split}.txt"
        ids = read_name_list(list_path, _TEXT_LAYOUT)
        index = {name: i for i, name in enumerate(self.class_names)}
        labels, files = [], []
        for shape_id in ids:
            cls = shape_id.rpartition("_")[0]
            if cls not in index:
                raise DatasetError(f"{list_path}: shape id {shape_id!r} names class {cls!r}, which is not in "
                                   f"{classes}_shape_names.txt")
            labels.append(index[cls])
            files.append(root / cls / f"{shape_id}.txt")
        present = [f.is_file() for f in files]
        if not all(present) and not skip_missing:
            missing = [f for f, ok in zip(files, present) if not ok]
            raise DatasetNotFoundError(
                f"{len(missing)} of {len(files)} shape files listed in {list_path} are missing, first "
                f"{missing[0]} (expected layout: {_TEXT_LAYOUT}); pass skip_missing=True to use only the present files")
        keep = [i for i, ok in enumerate(present) if ok]
        if not keep:
            raise DatasetNotFoundError(f"none of the {len(files)} shape files listed in {list_path} exist "
                                       f"(expected layout: {_TEXT_LAYOUT})")
        self.files = [files[i] for i in keep]
        self.shape_ids = [ids[i] for i in keep]
        self.labels = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
        self.num_points, self.name = num_points, classes

    def _cloud(self, index: int) -> Tensor:
        path = self.files[index]
        xyz = check_cloud(read_text_array(path)[: self.num_points], path)
        return torch.from_numpy(pc_normalize(xyz))


def _dat_split(path: Path, split: str | None) -> str:
    if split is not None:
        return _choice(split, _SPLITS, "split")
    found = [s for s in _SPLITS if f"_{s}" in path.name]
    if len(found) != 1:
        raise DatasetError(f"cannot tell the split from the file name {path.name!r}; pass split='train' or 'test'")
    return found[0]


def _dat_classes(path: Path, classes: str | None) -> str:
    if classes is not None:
        return _choice(classes, tuple(_MODELNET_CLASSES), "ModelNet class set")
    return "modelnet10" if path.name.startswith("modelnet10") else "modelnet40"


def _load_dat(path: str | os.PathLike, allow_pickle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read an official ``.dat`` cache -> ``pc_normalize``-d xyz ``(M, P, 3)`` float32, labels ``(M,)`` int64."""
    path = require_file(path, "modelnet40_{train,test}_8192pts_fps.dat (pickle of [points_list, labels_list])")
    if not allow_pickle:
        raise UnsafeDatasetError(
            f"{path} is a Python pickle: loading it can run arbitrary code. Load it only if you trust its source "
            "(the Point-BERT release): pass allow_pickle=True (recipe data section: allow_pickle: true), or convert "
            "it once with pointgst.data.convert_dat_to_npz(dat, 'out/train.npz', allow_pickle=True) and use the "
            "safe .npz pack (format: npz) from then on")
    warnings.warn(f"unpickling {path}: only do this for files from a source you trust", UserWarning, stacklevel=3)
    try:
        with open(path, "rb") as f:
            content = pickle.load(f)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DatasetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not (isinstance(content, (list, tuple)) and len(content) == 2 and len(content[0]) == len(content[1])):
        raise DatasetError(f"{path}: expected a pickle of [points_list, labels_list] of equal lengths")
    clouds, labels = content
    if not len(clouds):
        raise DatasetError(f"{path}: the cache holds no shapes")
    xyz = [pc_normalize(check_cloud(np.asarray(c), f"{path} (shape {i})")) for i, c in enumerate(clouds)]
    if len({c.shape for c in xyz}) != 1:
        raise DatasetError(f"{path}: clouds have different point counts; expected one count (8192 officially)")
    try:
        flat = np.array([np.asarray(label).reshape(-1)[0] for label in labels])
    except (IndexError, ValueError, TypeError):
        raise DatasetError(f"{path}: each label must be an integer array of shape (1,)") from None
    return np.stack(xyz), flat


def _dat_shape_ids(path: Path, classes: str, split: str, labels: Tensor, class_names: list[str]) -> list[str]:
    """Shape ids of a ``.dat`` cache: the official list beside it when it fits (same order), else synthesised."""
    listed = path.parent / f"{classes}_{split}.txt"
    if listed.is_file():
        ids = read_name_list(listed, "one shape id per line")
        if len(ids) == len(labels) and all(i.rpartition("_")[0] == class_names[int(l)] for i, l in zip(ids, labels)):
            return ids
    return [f"{class_names[int(label)]}_dat{i:05d}" for i, label in enumerate(labels)]


class ModelNetDatCache(PointCloudDataset):
    """The official ``modelnet{40,10}_{train,test}_8192pts_fps.dat`` caches (Point-BERT release).

    Each file is a pickle of ``[points_list, labels_list]``: float32 ``(8192, 6)`` clouds (xyz + normals,
    FPS-ordered) and int32 ``(1,)`` labels. Items: ``pc_normalize``-d xyz, ``label[0]``.

    Unpickling can run code, so ``allow_pickle=True`` is required (a ``UserWarning`` is emitted on load);
    otherwise :class:`UnsafeDatasetError` is raised. Prefer converting once with :func:`convert_dat_to_npz`.

    Args:
        path: the ``.dat`` file.
        split: ``train`` / ``test``; ``None`` reads it from the file name.
        classes: ``modelnet40`` / ``modelnet10``; ``None`` reads it from the file name prefix.
        allow_pickle: opt in to unpickling.
        shuffle_points, seed: see :class:`PointCloudDataset`.
    """

    def __init__(self, path: str | os.PathLike, *, split: str | None = None, classes: str | None = None,
                 allow_pickle: bool = False, shuffle_points: bool | None = None, seed: int = 0):
        path = Path(path)
        split, classes = _dat_split(path, split), _dat_classes(path, classes)
        super().__init__(split, shuffle_points, seed)
        points, labels = _load_dat(path, allow_pickle)
        self.path, self.name, self.class_names = path, classes, list(_MODELNET_CLASSES[classes])
        self.points = torch.from_numpy(points)
        self.labels = _labels_tensor(labels, self.num_classes, path)
        self.shape_ids = _dat_shape_ids(path, classes, split, self.labels, self.class_names)


def convert_dat_to_npz(dat_path: str | os.PathLike, out_path: str | os.PathLike, *, allow_pickle: bool,
                       split: str | None = None, classes: str | None = None) -> Path:
    """Convert an official ``.dat`` cache into the safe pack format (readable by :class:`ModelNetPack`).

    Writes ``out_path`` (``points`` float32 ``(M, P, 3)`` after ``pc_normalize``, normals dropped; ``labels`` int64;
    ``names``: the official list beside the ``.dat`` when it fits, else ``<class>_datNNNNN``) atomically (temporary
    file + ``os.replace``), and ``shape_names.txt`` beside it when absent. Name the outputs ``train.npz`` /
    ``test.npz`` to use the folder as a :class:`ModelNetPack` root. ``allow_pickle=True`` is required (see
    :class:`ModelNetDatCache`). Returns ``out_path``.
    """
    data = ModelNetDatCache(dat_path, split=split, classes=classes, allow_pickle=allow_pickle)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, lambda tmp: _save_npz(tmp, points=data.points.numpy(), labels=data.labels.numpy(),
                                               names=np.array(data.shape_ids)))
    names_file = out_path.parent / "shape_names.txt"
    if not names_file.exists():
        write_text_atomic(names_file, "".join(f"{c}\n" for c in data.class_names))
    return out_path


def _save_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare path
        np.savez(handle, **arrays)


# ------------------------------------------------------------------------------------------------- own data

_FOLDER_LAYOUT = ("ROOT/<class>/*.{npy,txt,ply}, or ROOT/train/<class>/... and ROOT/test/<class>/... with a split; "
                  "one cloud per file, x, y, z in the first three columns")


def _subfolders(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


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
    files are read in sorted order, eagerly.

    Args:
        root: the dataset folder.
        split: ``None`` for ``root/<class>/``, else the split folder name (``train``, ``test``, ``val``, ...).
        num_points: resample every cloud to this many points (seeded: first ``num_points`` after a random
            permutation, or all points plus random repeats when a cloud has fewer); ``None`` requires equal counts.
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
                 for f in sorted((base / cls).iterdir())
                 if f.is_file() and f.suffix.lower() in POINT_FILE_SUFFIXES and not f.name.startswith(".")]
        if not files:
            raise DatasetNotFoundError(f"no point files found under {base} (expected layout: {_FOLDER_LAYOUT})")
        generator = torch.Generator().manual_seed(self.seed)
        clouds = [torch.from_numpy(read_points_file(f)) for f, _ in files]
        if num_points is not None:
            clouds = [_resample(c, num_points, generator) for c in clouds]
        counts = {len(c) for c in clouds}
        if len(counts) > 1:
            smallest = min(zip(clouds, files), key=lambda cf: len(cf[0]))[1][0]
            raise DatasetError(f"clouds under {base} have different point counts ({min(counts)} in {smallest} to "
                               f"{max(counts)}); pass num_points=N to resample every cloud to N points")
        self.points = torch.stack(clouds)
        self.labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        self.files = [f for f, _ in files]
        self.shape_ids = [str(f.relative_to(base).with_suffix("")) for f in self.files]
        self.name, self.num_points = "folder", num_points


# ------------------------------------------------------------------------------------------------- recipe dispatch

_DATASETS = ("scanobjectnn", "modelnet40", "modelnet10", "folder")
_FORMATS = ("npz", "normal_resampled", "dat", "h5")


def _option(data: Mapping[str, Any] | object, key: str, default: Any = None) -> Any:
    if isinstance(data, Mapping):
        value = data.get(key, default)
    else:
        value = getattr(data, key, default)
    return default if value is None else value


def _modelnet_format(root: Path, classes: str, split: str) -> str:
    """Detect the ModelNet format of ``root``: an ``.npz`` pack, a text tree or ``.dat`` caches."""
    if (root / f"{split}.npz").is_file():
        return "npz"
    if (root / f"{classes}_shape_names.txt").is_file():
        return "normal_resampled"
    if (root / f"{classes}_{split}_8192pts_fps.dat").is_file():
        return "dat"
    raise DatasetNotFoundError(
        f"cannot find ModelNet data in {root}: looked for {root / f'{split}.npz'} (npz pack), "
        f"{root / f'{classes}_shape_names.txt'} (normal_resampled text tree) and "
        f"{root / f'{classes}_{split}_8192pts_fps.dat'} (dat cache)")


def build_dataset(data: Mapping[str, Any] | object, split: str) -> PointCloudDataset:
    """Build the ``split`` dataset described by a recipe's data section (a mapping or an object with attributes).

    Keys: ``dataset`` (``scanobjectnn``, ``modelnet40``, ``modelnet10``, ``folder``), ``root``, ``variant``
    (ScanObjectNN), ``format`` (``npz``, ``normal_resampled``, ``dat``, ``h5`` or ``None`` = detect from ``root``),
    ``allow_pickle`` (required for ``dat``; default false), ``axis_order`` (npz), ``num_points`` (text tree:
    first N rows; folder: resample to N), ``skip_missing`` (text tree), ``seed`` (point shuffle / resampling),
    ``shuffle_points`` (``None`` = train split only). Other keys are ignored.

    ``folder``: ``root/<split>/<class>/...`` is used when ``root`` has split folders; a flat ``root/<class>/...``
    is only a training set (carve a validation split with :func:`stratified_split`).
    """
    dataset = _choice(_option(data, "dataset", ""), _DATASETS, "dataset")
    root = _option(data, "root")
    if root is None:
        raise DatasetError(f"the data section of dataset {dataset!r} needs a 'root' (the dataset folder)")
    root, fmt = Path(os.path.expanduser(str(root))), _option(data, "format")
    common = {"shuffle_points": _option(data, "shuffle_points"), "seed": int(_option(data, "seed", 0))}
    fmt = None if fmt is None else _choice(fmt, _FORMATS, "data format")
    if dataset == "scanobjectnn":
        if fmt not in (None, "h5"):
            raise DatasetError(f"ScanObjectNN is read from its h5 files; format {fmt!r} is not supported (use h5)")
        return ScanObjectNN(root, _option(data, "variant", ""), split, **common)
    if dataset == "folder":
        if fmt is not None:
            raise DatasetError(f"the folder dataset reads .npy/.txt/.ply files itself; remove format {fmt!r}")
        has_splits = any((root / s).is_dir() for s in ("train", "test", "val"))
        if not has_splits and split != "train":
            raise DatasetError(f"{root} has no train/ and test/ folders, so it only provides a training set "
                               f"(asked for {split!r}); arrange it as {_FOLDER_LAYOUT}")
        return PointCloudFolder(root, split if has_splits else None, num_points=_option(data, "num_points"),
                                **common)
    fmt = fmt or _modelnet_format(require_dir(root, "a ModelNet folder (npz pack, text tree or dat caches)"),
                                  dataset, split)
    if fmt == "npz":
        return ModelNetPack(root, split, classes=dataset, axis_order=_option(data, "axis_order", "stored"), **common)
    if fmt == "normal_resampled":
        return ModelNetNormalResampled(root, split, classes=dataset, num_points=_option(data, "num_points"),
                                       skip_missing=bool(_option(data, "skip_missing", False)), **common)
    if fmt == "dat":
        return ModelNetDatCache(root / f"{dataset}_{split}_8192pts_fps.dat", split=split, classes=dataset,
                                allow_pickle=bool(_option(data, "allow_pickle", False)), **common)
    raise DatasetError(f"format {fmt!r} is for ScanObjectNN; ModelNet reads npz, normal_resampled or dat")


# ------------------------------------------------------------------------------------------------- splits


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
