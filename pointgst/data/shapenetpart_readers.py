"""File readers for the three official ShapeNetPart layouts, with no knowledge of the category table (that lives
in :mod:`pointgst.data.shapenetpart`, which maps what these return to category indices and global part ids).

* ``normal`` - PointNet++'s ``shapenetcore_partanno_segmentation_benchmark_v0_normal``: ``<synset>/<id>.txt`` with
  rows ``x y z nx ny nz label`` (label: the global part id, written as a float).
* ``v0`` - the original ``shapenetcore_partanno_segmentation_benchmark_v0``: ``<synset>/points/<id>.pts`` (rows
  ``x y z``) and ``<synset>/points_label/<id>.seg`` (one per-category part number ``1..k`` per row).
* ``hdf5`` - PointNet's ``hdf5_data``: ``ply_data_{train,val,test}<n>.h5`` (``data`` ``(M, 2048, 3)``, ``label``
  ``(M, 1)`` category index, ``pid`` ``(M, 2048)`` global part id), listed by ``<split>_hdf5_file_list.txt``.

Both text layouts hold ``synsetoffset2category.txt`` and ``train_test_split/shuffled_<split>_file_list.json``
(entries ``shape_data/<synset>/<id>``). Every reader raises :class:`DatasetError` naming the file on bad content.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from pointgst.data.readers import (
    DatasetError,
    DatasetNotFoundError,
    check_cloud,
    read_h5_arrays,
    read_name_list,
    read_text_array,
    require_file,
)

__all__ = ["LAYOUT_HELP", "SHAPENETPART_LAYOUTS", "CATEGORY_FILE", "detect_layout", "read_category_file",
           "read_split_entries", "shape_files", "read_text_shape", "read_hdf5_split"]

SHAPENETPART_LAYOUTS = ("normal", "v0", "hdf5")
CATEGORY_FILE = "synsetoffset2category.txt"
LAYOUT_HELP = ("ROOT/synsetoffset2category.txt with ROOT/<synset>/<id>.txt (normal layout) or with "
                "ROOT/<synset>/points/<id>.pts + ROOT/<synset>/points_label/<id>.seg (v0 layout), or "
                "ROOT/train_hdf5_file_list.txt / ROOT/ply_data_train0.h5 (PointNet hdf5_data layout)")
_SPLIT_FILES = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}


def _synset_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name.isdigit())


def detect_layout(root: Path) -> str:
    """``normal``, ``v0`` or ``hdf5`` from the files in ``root``; :class:`DatasetNotFoundError` when none fits."""
    if (root / "train_hdf5_file_list.txt").is_file() or any(root.glob("ply_data_*.h5")):
        return "hdf5"
    if (root / CATEGORY_FILE).is_file():
        synsets = _synset_dirs(root)
        if any((d / "points").is_dir() for d in synsets):
            return "v0"
        if any(next(d.glob("*.txt"), None) for d in synsets):
            return "normal"
    raise DatasetNotFoundError(f"cannot find ShapeNetPart data in {root}: expected {LAYOUT_HELP}")


def read_category_file(path: Path) -> list[tuple[str, str]]:
    """``(name, synset)`` per line of ``synsetoffset2category.txt`` (``Name<TAB or spaces>synset``), in file order."""
    pairs = []
    for line in read_name_list(path, LAYOUT_HELP):
        words = line.split()
        if len(words) != 2:
            raise DatasetError(f"{path}: expected lines 'Category synset', got {line!r}")
        pairs.append((words[0], words[1]))
    return pairs


def read_split_entries(split_dir: Path, split: str) -> tuple[list[tuple[str, str]], list[Path]]:
    """``[(synset, shape id)]`` of ``split`` (``trainval``: train then val) and the list files read.

    Reads ``split_dir/shuffled_<split>_file_list.json`` (a JSON list of ``shape_data/<synset>/<id>``).
    """
    entries, paths = [], []
    for part in _SPLIT_FILES[split]:
        path = split_dir / f"shuffled_{part}_file_list.json"
        if not path.is_file():
            raise DatasetNotFoundError(f"ShapeNetPart split list {path} does not exist; pass split_dir= a folder "
                                       f"holding shuffled_{{train,val,test}}_file_list.json")
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: not a JSON list of 'shape_data/<synset>/<id>' entries ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n.count("/") >= 1 for n in names):
            raise DatasetError(f"{path}: expected a JSON list of 'shape_data/<synset>/<id>' strings")
        entries += [tuple(n.rstrip("/").split("/")[-2:]) for n in names]
        paths.append(path)
    return entries, paths


def shape_files(root: Path, layout: str, synset: str, shape_id: str) -> tuple[Path, ...]:
    """The file(s) of one shape: ``(<id>.txt,)`` (normal) or ``(<id>.pts, <id>.seg)`` (v0)."""
    if layout == "normal":
        return (root / synset / f"{shape_id}.txt",)
    return root / synset / "points" / f"{shape_id}.pts", root / synset / "points_label" / f"{shape_id}.seg"


def _integers(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    if not np.array_equal(values, np.round(values)):
        raise DatasetError(f"{path}: the {what} must be whole numbers")
    return values.astype(np.int64)


def read_text_shape(files: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One shape of a text layout -> xyz float32 ``(N, 3)`` and its labels int64 ``(N,)``.

    Normal layout (one file): the last column is the global part id. v0 layout (two files): the labels are the
    ``.seg`` file's per-category part numbers (``1..k``), one row per ``.pts`` row.
    """
    if len(files) == 1:
        table = read_text_array(files[0])
        if table.shape[1] < 4:
            raise DatasetError(f"{files[0]}: expected rows 'x y z nx ny nz label' (>= 4 columns), got "
                               f"{table.shape[1]} columns")
        return check_cloud(table, files[0]), _integers(table[:, -1], files[0], "part labels (last column)")
    points, seg = files
    xyz = check_cloud(read_text_array(points), points)
    labels = read_text_array(seg)
    if labels.shape != (len(xyz), 1):
        raise DatasetError(f"{seg}: expected one part number per line for the {len(xyz)} points of {points.name}, "
                           f"got {labels.shape[0]} lines of {labels.shape[1]} values")
    return xyz, _integers(labels[:, 0], seg, "part numbers")


def _hdf5_files(root: Path, split: str) -> list[Path]:
    """The h5 files of ``split``: those ``<split>_hdf5_file_list.txt`` names, else ``ply_data_<split><n>.h5``."""
    files = []
    for part in _SPLIT_FILES[split]:
        listing = root / f"{part}_hdf5_file_list.txt"
        if listing.is_file():
            files += [root / Path(name).name for name in read_name_list(listing, LAYOUT_HELP)]
        else:
            found = [p for p in root.glob(f"ply_data_{part}*.h5") if re.fullmatch(rf"ply_data_{part}\d+\.h5", p.name)]
            if not found:
                raise DatasetNotFoundError(f"ShapeNetPart hdf5 data in {root} has neither {listing.name} nor "
                                           f"ply_data_{part}<n>.h5 files for the {part} split")
            files += sorted(found, key=lambda p: int(p.stem[len(f"ply_data_{part}"):]))
    return files


def read_hdf5_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Path]]:
    """``(data (M, N, 3) float32, label (M,) int64, pid (M, N) int64, files)`` of ``split``, files concatenated."""
    data, label, pid = [], [], []
    files = _hdf5_files(root, split)
    if not files:
        raise DatasetNotFoundError(f"the {split} file list in {root} names no h5 files (expected {LAYOUT_HELP})")
    for path in files:
        arrays = read_h5_arrays(require_file(path, LAYOUT_HELP), ("data", "label", "pid"), LAYOUT_HELP)
        points, cats, parts = arrays["data"], np.asarray(arrays["label"]), np.asarray(arrays["pid"])
        cats = cats[:, 0] if cats.ndim == 2 and cats.shape[1] == 1 else cats
        if points.ndim != 3 or points.shape[2] < 3 or cats.shape != points.shape[:1] or \
                parts.shape != points.shape[:2]:
            raise DatasetError(f"{path}: expected data (M, N, 3), label (M, 1) and pid (M, N), got "
                               f"{points.shape}, {arrays['label'].shape} and {parts.shape}")
        data.append(np.ascontiguousarray(points[..., :3], dtype=np.float32))
        label.append(_integers(cats, path, "category labels"))
        pid.append(_integers(parts, path, "part ids (pid)"))
    if len({d.shape[1] for d in data}) > 1:
        raise DatasetError(f"the {split} h5 files in {root} hold clouds of different sizes")
    return np.concatenate(data), np.concatenate(label), np.concatenate(pid), files

