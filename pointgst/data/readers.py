"""File readers for point clouds: text rows, ``.npy``, ``.ply`` (ASCII and binary), h5 and ``.npz`` arrays.

Each reader returns numpy arrays and raises :class:`DatasetError` (a ``ValueError``) naming the file when the
content is malformed, or :class:`DatasetNotFoundError` (a ``FileNotFoundError`` and a ``DatasetError``) when a
path does not exist. ``h5py`` is imported only when an h5 file is read.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "require_file",
    "require_dir",
    "read_name_list",
    "read_text_array",
    "read_npy_points",
    "read_ply_points",
    "read_points_file",
    "read_h5_arrays",
    "read_npz_arrays",
    "check_cloud",
    "pc_normalize",
    "POINT_FILE_SUFFIXES",
]

POINT_FILE_SUFFIXES = (".npy", ".txt", ".ply")


class DatasetError(ValueError):
    """A dataset file or folder is malformed, or the options do not fit the data."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset root or file does not exist (catchable as ``FileNotFoundError`` or ``DatasetError``)."""


def require_file(path: str | os.PathLike, layout: str) -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DatasetNotFoundError` naming ``layout`` when it is no file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist (expected layout: {layout})")
    return path


def require_dir(path: str | os.PathLike, layout: str) -> Path:
    """Return ``path`` as a ``Path``; raise :class:`DatasetNotFoundError` naming ``layout`` when it is no folder."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetNotFoundError(f"dataset folder {path} does not exist (expected layout: {layout})")
    return path


def read_name_list(path: str | os.PathLike, layout: str) -> list[str]:
    """Non-empty stripped lines of a text file (class names, shape ids)."""
    path = require_file(path, layout)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a UTF-8 text file of names ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def check_cloud(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Validate one cloud ``(N, C >= 3)`` of finite numbers and return its xyz as contiguous float32 ``(N, 3)``."""
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] < 3 or array.shape[0] < 1:
        raise DatasetError(
            f"{path}: expected a numeric array of shape (N, >=3) with x, y, z in the first 3 columns, got "
            f"{array.dtype} {array.shape}")
    xyz = np.ascontiguousarray(array[:, :3], dtype=np.float32)
    if not np.isfinite(xyz).all():
        raise DatasetError(f"{path}: the coordinates contain NaN or infinite values")
    return xyz


def pc_normalize(xyz: np.ndarray) -> np.ndarray:
    """The official ``pc_normalize``: subtract the centroid, divide by the largest point norm. ``(N, 3)``."""
    centred = xyz - xyz.mean(axis=0)
    radius = np.sqrt((centred**2).sum(axis=1)).max()
    return centred / radius if radius > 0 else centred


def read_text_array(path: str | os.PathLike) -> np.ndarray:
    """Rows of numbers separated by whitespace or commas (``x,y,z,nx,ny,nz`` or ``x y z ...``) -> float32 ``(N, C)``.

    Every row must have the same number of columns; empty lines are ignored.
    """
    path = require_file(path, "a text file with one point per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file (expected one point per line: x y z ...)") from None
    rows = [line for line in text.replace(",", " ").splitlines() if line.strip()]
    if not rows:
        raise DatasetError(f"{path}: the file holds no points (expected one point per line: x y z ...)")
    columns = len(rows[0].split())
    try:
        values = np.array(" ".join(rows).split(), dtype=np.float32)
    except ValueError as exc:
        raise DatasetError(f"{path}: non-numeric value in the point rows ({exc})") from None
    if values.size != columns * len(rows):
        raise DatasetError(f"{path}: rows have different numbers of columns (first row has {columns})")
    return values.reshape(len(rows), columns)


def read_npy_points(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` array ``(N, >=3)``, loaded without pickle -> float32 xyz ``(N, 3)``."""
    path = require_file(path, "a .npy file holding an (N, >=3) array")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a plain numeric .npy array ({exc})") from None
    return check_cloud(array, path)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _parse_ply_header(path: Path, raw: bytes) -> tuple[str, list[tuple[str, int, list[tuple[str, str | None]]]], int]:
    """``(format, [(element, count, [(property, numpy type or None for lists)])], header byte length)``."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DatasetError(f"{path}: not a PLY file (expected a 'ply' ... 'end_header' header)")
    newline = raw.find(b"\n", end)
    body_start = len(raw) if newline < 0 else newline + 1
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2 and words[1] in _PLY_FORMATS:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1][2].append((words[4], None))
        else:
            raise DatasetError(f"{path}: unsupported PLY header line {line.strip()!r}")
    if fmt is None:
        raise DatasetError(f"{path}: PLY header has no supported 'format' line (ascii, binary_little_endian, "
                           "binary_big_endian)")
    return fmt, elements, body_start


def read_ply_points(path: str | os.PathLike) -> np.ndarray:
    """The ``x``, ``y``, ``z`` vertex properties of a PLY file (ASCII or binary) -> float32 ``(N, 3)``.

    Elements before ``vertex`` (rare) must have no list properties; faces and anything after the vertices are
    ignored.
    """
    path = require_file(path, "a .ply file with a 'vertex' element holding x, y, z properties")
    raw = path.read_bytes()
    fmt, elements, offset = _parse_ply_header(path, raw)
    names = [name for name, _, _ in elements]
    if "vertex" not in names:
        raise DatasetError(f"{path}: the PLY file has no 'vertex' element")
    vertex = names.index("vertex")
    count, props = elements[vertex][1], elements[vertex][2]
    prop_names = [p for p, _ in props]
    if not {"x", "y", "z"} <= set(prop_names):
        raise DatasetError(f"{path}: the PLY vertex element lacks x, y or z (has {prop_names})")
    if any(t is None for _, t in props) or any(t is None for _, _, ps in elements[:vertex] for _, t in ps):
        raise DatasetError(f"{path}: list properties in or before the PLY vertex element are not supported")
    columns = [prop_names.index(axis) for axis in "xyz"]
    if fmt == "ascii":
        lines = raw[offset:].decode("ascii", errors="replace").splitlines()
        skip = sum(n for _, n, _ in elements[:vertex])
        rows = [line for line in lines if line.strip()][skip:skip + count]
        try:
            table = np.array(" ".join(rows).split(), dtype=np.float64)
        except ValueError as exc:
            raise DatasetError(f"{path}: non-numeric value in the PLY vertex rows ({exc})") from None
        if len(rows) != count or table.size != count * len(props):
            raise DatasetError(f"{path}: the PLY file holds fewer vertex rows, or other columns, than its header "
                               f"declares ({count} vertices x {len(props)} properties)")
        xyz = table.reshape(count, len(props))[:, columns]
    else:
        endian = _PLY_FORMATS[fmt]
        for _, n, ps in elements[:vertex]:
            offset += n * np.dtype([(p, endian + t) for p, t in ps]).itemsize
        dtype = np.dtype([(p, endian + t) for p, t in props])
        if len(raw) - offset < count * dtype.itemsize:
            raise DatasetError(f"{path}: the PLY file is truncated ({count} vertices of {dtype.itemsize} bytes "
                               f"declared, {max(len(raw) - offset, 0)} bytes present)")
        table = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        xyz = np.stack([table[axis] for axis in "xyz"], axis=1)
    return check_cloud(xyz, path)


def read_points_file(path: str | os.PathLike) -> np.ndarray:
    """Dispatch on the suffix (``.npy``, ``.txt``, ``.ply``) -> float32 xyz ``(N, 3)``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return read_npy_points(path)
    if suffix == ".txt":
        return check_cloud(read_text_array(path), path)
    if suffix == ".ply":
        return read_ply_points(path)
    raise DatasetError(f"{path}: unsupported point file type {suffix!r} (supported: {', '.join(POINT_FILE_SUFFIXES)})")


def read_h5_arrays(path: str | os.PathLike, keys: tuple[str, ...], layout: str) -> dict[str, np.ndarray]:
    """Read whole datasets ``keys`` of an h5 file (``h5py`` imported here, not at package import)."""
    path = require_file(path, layout)
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in keys if key not in f]
            if missing:
                raise DatasetError(f"{path}: missing h5 dataset(s) {missing}; the file holds {sorted(f.keys())} "
                                   f"(expected keys {list(keys)})")
            return {key: f[key][()] for key in keys}
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None


def read_npz_arrays(path: str | os.PathLike, required: tuple[str, ...], optional: tuple[str, ...],
                    layout: str) -> dict[str, np.ndarray]:
    """Read the arrays of an ``.npz`` file without pickle (an object array raises :class:`DatasetError`)."""
    path = require_file(path, layout)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in required if key not in npz.files]
            if missing:
                raise DatasetError(f"{path}: missing array(s) {missing}; the file holds {npz.files} "
                                   f"(expected {list(required)})")
            return {key: npz[key] for key in required + optional if key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz file of plain arrays ({exc})") from None
