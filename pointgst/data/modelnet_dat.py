"""Reading the official ModelNet ``*_8192pts_fps.dat`` pickles (opt-in only) and writing the safe ``.npz`` pack.

The dataset class built on these, :class:`~pointgst.data.modelnet.ModelNetDatCache`, and the public converter,
:func:`~pointgst.data.modelnet.convert_dat_to_npz`, live in :mod:`pointgst.data.modelnet`; this module holds the
pickle reading (behind ``allow_pickle``), :class:`UnsafeDatasetError` and the atomic pack writer.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
from torch import Tensor

from pointgst.atomic import write_atomic, write_text_atomic
from pointgst.data.base import _SPLITS, _choice
from pointgst.data.readers import DatasetError, check_cloud, pc_normalize, read_name_list, require_file

__all__ = ["UnsafeDatasetError"]


class UnsafeDatasetError(DatasetError):
    """A dataset file is a pickle (which can run code when loaded) and loading it was not allowed."""


def _dat_split(path: Path, split: str | None) -> str:
    if split is not None:
        return _choice(split, _SPLITS, "split")
    found = [s for s in _SPLITS if f"_{s}" in path.name]
    if len(found) != 1:
        raise DatasetError(f"cannot tell the split from the file name {path.name!r}; pass split='train' or 'test'")
    return found[0]


def _load_dat(path: str | os.PathLike, allow_pickle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read an official ``.dat`` cache -> ``pc_normalize``-d xyz ``(M, P, 3)`` float32, labels ``(M,)`` int64."""
    path = require_file(path, "modelnet40_{train,test}_8192pts_fps.dat (pickle of [points_list, labels_list])")
    if not allow_pickle:
        raise UnsafeDatasetError(
            f"{path} is a Python pickle: loading it can run arbitrary code. Load it only if you trust its source "
            "(the Point-BERT release): pass allow_pickle=True (recipe data section: allow_pickle: true), or convert "
            "it once with pointgst.data.convert_dat_to_npz(dat, 'out/train.npz', allow_pickle=True) and use the "
            "safe .npz pack (format: npz) from then on")
    # stacklevel 3: the caller of ModelNetDatCache(...), which calls this function directly
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
        if len(ids) == len(labels) and all(i.rpartition("_")[0] == class_names[int(label)] for i, label in zip(ids, labels)):
            return ids
    return [f"{class_names[int(label)]}_dat{i:05d}" for i, label in enumerate(labels)]


def _write_pack(out_path: str | os.PathLike, points: np.ndarray, labels: np.ndarray, names: list[str],
                class_names: list[str]) -> Path:
    """Write one split of the ``.npz`` pack atomically, and ``shape_names.txt`` beside it when absent."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, lambda tmp: _save_npz(tmp, points=points, labels=labels, names=np.array(names)))
    names_file = out_path.parent / "shape_names.txt"
    if not names_file.exists():
        write_text_atomic(names_file, "".join(f"{c}\n" for c in class_names))
    return out_path


def _save_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare path
        np.savez(handle, **arrays)
