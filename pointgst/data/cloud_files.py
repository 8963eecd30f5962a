"""One point cloud from a file of a common format: :func:`read_cloud` -> float32 xyz ``(N, 3)``.

Formats (:data:`CLOUD_SUFFIXES`; the suffix decides, in any case):

- ``.npy`` an ``(N, >=3)`` array; ``.npz`` its ``points`` array, else its only array (no pickle either way);
- ``.txt`` / ``.xyz`` one point per row, separated by whitespace or commas (``x y z`` or ``x y z nx ny nz``);
- ``.ply`` ASCII or binary (``plyfile``): the ``vertex`` element's ``x``, ``y``, ``z``;
- ``.pcd`` ASCII, binary or binary_compressed (``pypcd4``): the ``x``, ``y``, ``z`` fields;
- meshes ``.off``, ``.obj``, ``.stl`` (``trimesh``), and a ``.ply`` with faces.

Columns beyond xyz are dropped. A file with faces is a mesh: ``num_surface_points`` points are sampled on its surface,
faces drawn with probability proportional to their area, points uniform within a face, from a numpy generator seeded
by ``seed`` (the same file and seed give the same points). An ``.off`` / ``.obj`` / ``.ply`` with vertices and no faces
is a point cloud: its vertices are the points, in file order. An ``.stl`` without facets is an error.

Every problem with a file raises :class:`~pointgst.data.readers.DatasetError` (a ``ValueError``; a missing file:
:class:`~pointgst.data.readers.DatasetNotFoundError`) whose one-line message names the file, the problem and the fix.
``plyfile``, ``pypcd4`` and ``trimesh`` are the optional ``io`` extra (``pip install "pointgst[io]"``), imported only
when a file needs them.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from pointgst.data.readers import DatasetError, DatasetNotFoundError, read_text_array

__all__ = ["CLOUD_SUFFIXES", "DEFAULT_SURFACE_POINTS", "check_points", "find_cloud_files", "read_cloud"]

#: points sampled on a mesh's surface unless told otherwise
DEFAULT_SURFACE_POINTS = 8192
_IO_EXTRA = 'pip install "pointgst[io]"'


def check_points(points: np.ndarray, source: str | os.PathLike, *, min_points: int = 1) -> np.ndarray:
    """Validate one cloud ``(N, >=3)`` of finite numbers with at least ``min_points`` rows -> float32 xyz ``(N, 3)``."""
    array = np.asarray(points)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] < 3:
        raise DatasetError(f"{source}: expected one cloud, a numeric (N, >=3) array with x, y, z in the first three "
                           f"columns, got {array.dtype} {array.shape}; store one cloud per file, one point per row")
    if len(array) == 0:
        raise DatasetError(f"{source} holds no points; write the cloud's points into it (one point per row)")
    xyz = np.ascontiguousarray(array[:, :3], dtype=np.float32)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise DatasetError(f"{source}: {int(bad.sum())} of {len(xyz)} points have NaN or infinite coordinates (first "
                           f"at row {int(bad.argmax())}); remove those points or repair the file")
    if len(xyz) < min_points:
        raise DatasetError(f"{source} holds {len(xyz)} points, fewer than the {min_points} the model needs; use a "
                           f"denser cloud (for a mesh: more surface samples)")
    return xyz


def read_cloud(path: str | os.PathLike, *, num_surface_points: int = DEFAULT_SURFACE_POINTS, seed: int = 0,
               min_points: int = 1) -> np.ndarray:
    """The points of one file (see the module docstring for the formats) -> float32 xyz ``(N, 3)``; a mesh gives
    ``num_surface_points`` seeded surface samples. Fewer than ``min_points`` points is an error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise DatasetError(f"{path}: unknown point-cloud file type {suffix or '(no suffix)'!r}; supported: "
                           f"{', '.join(CLOUD_SUFFIXES)}; convert the file to one of them")
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist or is not a file; pass the path of a point-cloud file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty (0 bytes); write the cloud into it again")
    return check_points(_READERS[suffix](path, num_surface_points, seed), path, min_points=min_points)


def find_cloud_files(folder: str | os.PathLike) -> list[Path]:
    """Every file with a supported suffix under ``folder``, recursively, sorted (hidden files and folders skipped)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _READERS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _unreadable(path: Path, kind: str, err: Exception, fix: str) -> DatasetError:
    detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return DatasetError(f"{path} is not a readable {kind} file ({detail}); {fix}")


def _extra(module: str, path: Path) -> ModuleType:
    """Import an optional ``io`` dependency, or name the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(f"{path}: reading {path.suffix} files needs the {module} package; install it with "
                           f"{_IO_EXTRA}") from None


def _read_npy(path: Path, count: int, seed: int) -> np.ndarray:
    fix = "save the cloud with numpy.save(path, points), an (N, 3) float array"
    _require_header(path, b"\x93NUMPY", ".npy", fix)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _unreadable(path, ".npy", err, fix) from None


def _read_npz(path: Path, count: int, seed: int) -> np.ndarray:
    fix = "save the cloud with numpy.savez(path, points=points)"
    _require_header(path, b"PK", ".npz", fix)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "points" in npz.files or len(npz.files) == 1:
                return npz["points" if "points" in npz.files else npz.files[0]]
            names = npz.files
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable(path, ".npz", err, fix) from None
    raise DatasetError(f"{path} holds the arrays {names or 'none'} but none named 'points'; {fix}")


def _require_header(path: Path, magic: bytes, kind: str, fix: str) -> None:
    """Refuse a file that does not start like a ``kind`` file (numpy would try to unpickle it)."""
    with open(path, "rb") as handle:
        if handle.read(len(magic)) != magic:
            raise DatasetError(f"{path} is not a {kind} file (it does not start with the {kind} header); {fix}")


def _read_text(path: Path, count: int, seed: int) -> np.ndarray:
    return read_text_array(path)


def _read_ply(path: Path, count: int, seed: int) -> np.ndarray:
    plyfile = _extra("plyfile", path)
    try:
        ply = plyfile.PlyData.read(str(path))
    except Exception as err:  # plyfile raises many types for a corrupt file
        raise _unreadable(path, "PLY", err, "export it again as PLY (ASCII or binary) with a vertex element holding "
                                            "x, y, z") from None
    names = [element.name for element in ply.elements]
    fields = ply["vertex"].data.dtype.names if "vertex" in names else ()
    if not {"x", "y", "z"} <= set(fields or ()):
        raise DatasetError(f"{path}: the PLY file has no vertex element with x, y, z (elements {names}, vertex "
                           f"properties {list(fields or ())}); export the points as vertices with x, y, z")
    vertices = np.stack([ply["vertex"].data[axis] for axis in "xyz"], axis=1)
    faces = ply["face"].data if "face" in names else ()
    if len(faces) == 0:
        return vertices
    lists = [name for name in ("vertex_indices", "vertex_index") if name in (faces.dtype.names or ())]
    if not lists:
        raise DatasetError(f"{path}: the PLY face element has no vertex_indices list (properties "
                           f"{list(faces.dtype.names or ())}); export the mesh with vertex_indices faces")
    triangles = [np.stack([np.full(len(p) - 2, p[0]), p[1:-1], p[2:]], axis=1)
                 for p in (np.asarray(f, dtype=np.int64) for f in faces[lists[0]]) if len(p) >= 3]
    if not triangles:
        raise DatasetError(f"{path}: every PLY face has fewer than 3 vertices; export the mesh with its triangles")
    return _sample_surface(path, vertices, np.concatenate(triangles), count, seed)


def _read_pcd(path: Path, count: int, seed: int) -> np.ndarray:
    pypcd4 = _extra("pypcd4", path)
    try:
        cloud = pypcd4.PointCloud.from_path(path)
    except Exception as err:  # header validation, short data, bad compression: many types
        raise _unreadable(path, "PCD", err, "save it again as PCD (ASCII or binary) with x, y, z fields") from None
    if not {"x", "y", "z"} <= set(cloud.fields):
        raise DatasetError(f"{path}: the PCD file has no x, y, z fields (fields {list(cloud.fields)}); save the "
                           "points with x, y, z fields")
    return cloud.numpy(("x", "y", "z"))


def _read_mesh(path: Path, count: int, seed: int) -> np.ndarray:
    trimesh = _extra("trimesh", path)
    kind = path.suffix[1:].upper()
    try:
        loaded = trimesh.load(str(path), file_type=path.suffix[1:].lower(), process=False)
        if isinstance(loaded, trimesh.Scene):  # several objects (OBJ groups): one geometry
            loaded = loaded.to_geometry()
    except ImportError:  # trimesh reaches for charset_normalizer when the bytes are no UTF-8 text
        raise DatasetError(f"{path} is not a readable {kind} file (its bytes are not UTF-8 text); export it again "
                           f"as {kind}") from None
    except Exception as err:  # trimesh raises many types for a corrupt file
        raise _unreadable(path, kind, err, f"export it again as {kind}") from None
    vertices, faces = getattr(loaded, "vertices", None), getattr(loaded, "faces", None)  # a PointCloud has no faces
    vertices = np.empty((0, 3)) if vertices is None else np.asarray(vertices)
    faces = np.empty((0, 3), dtype=np.int64) if faces is None else np.asarray(faces)
    if len(faces):
        return _sample_surface(path, vertices, faces, count, seed)
    if kind == "STL":
        raise DatasetError(f"{path}: the STL file holds no facets; export the mesh with its triangles")
    return vertices


def _sample_surface(path: Path, vertices: np.ndarray, faces: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` points on a triangle mesh, vertices ``(V, 3)``, faces ``(F, 3)`` int: a face with probability
    proportional to its area, a uniform point in it (seeded numpy generator) -> float64 ``(count, 3)``."""
    vertices = check_points(vertices, path).astype(np.float64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
        raise DatasetError(f"{path}: the faces refer to vertices the file does not have ({len(vertices)} vertices); "
                           "export the mesh again")
    corner, edge1, edge2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    edge1, edge2 = edge1 - corner, edge2 - corner
    areas = 0.5 * np.linalg.norm(np.cross(edge1, edge2), axis=1)
    if not areas.sum() > 0:
        raise DatasetError(f"{path}: every face of the mesh has zero area; export a mesh with a surface")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.random((2, count))
    outside = u + v > 1  # fold the far half of the parallelogram back into the triangle
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    return corner[chosen] + u[:, None] * edge1[chosen] + v[:, None] * edge2[chosen]


_READERS: dict[str, Callable[[Path, int, int], np.ndarray]] = {
    ".npy": _read_npy, ".npz": _read_npz, ".txt": _read_text, ".xyz": _read_text, ".ply": _read_ply,
    ".pcd": _read_pcd, ".off": _read_mesh, ".obj": _read_mesh, ".stl": _read_mesh,
}
#: the suffixes :func:`read_cloud` reads
CLOUD_SUFFIXES = tuple(_READERS)
