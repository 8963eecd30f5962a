"""Building a dataset from a recipe's data section: :func:`build_dataset` (dispatch on ``dataset`` and ``format``)
and the detection of the ModelNet format of a folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pointgst.data.base import PointCloudDataset, _choice
from pointgst.data.folder import _FOLDER_LAYOUT, PointCloudFolder
from pointgst.data.modelnet import ModelNetDatCache, ModelNetNormalResampled, ModelNetPack
from pointgst.data.readers import DatasetError, DatasetNotFoundError, require_dir
from pointgst.data.scanobjectnn import ScanObjectNN

__all__ = ["build_dataset"]

_DATASETS = ("scanobjectnn", "modelnet40", "modelnet10", "pack", "folder")
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

    Keys: ``dataset`` (``scanobjectnn``, ``modelnet40``, ``modelnet10``, ``pack``: an ``.npz`` pack with any
    classes, such as a few-shot episode, ``folder``), ``root``, ``variant``
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
    if dataset == "pack":
        if fmt not in (None, "npz"):
            raise DatasetError(f"a pack is read from its .npz files; format {fmt!r} is not supported (use npz)")
        return ModelNetPack(root, split, classes="pack", axis_order=_option(data, "axis_order", "stored"), **common)
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
