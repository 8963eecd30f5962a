"""ModelNet40/10 in three official formats: :class:`ModelNetPack`, :class:`ModelNetNormalResampled`,
:class:`ModelNetDatCache` (plus :func:`convert_dat_to_npz`), and the class-name lists.

* :class:`ModelNetPack` - ``train.npz`` / ``test.npz`` (``points``, ``labels``, ``names``) + ``shape_names.txt``.
* :class:`ModelNetNormalResampled` - the PointNet++ ``modelnet40_normal_resampled`` text tree; ``pc_normalize``.
* :class:`ModelNetDatCache` - the official ``modelnet40_{train,test}_8192pts_fps.dat`` pickles (opt-in only);
  :func:`convert_dat_to_npz` turns them into the safe pack format once. The pickle reading and the pack writer
  live in :mod:`pointgst.data.modelnet_dat`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from pointgst.data.base import _SPLITS, PointCloudDataset, _choice, _clouds_tensor, _labels_tensor
from pointgst.data.modelnet_dat import UnsafeDatasetError, _dat_shape_ids, _dat_split, _load_dat, _write_pack
from pointgst.data.readers import (
    DatasetError,
    DatasetNotFoundError,
    check_cloud,
    pc_normalize,
    read_name_list,
    read_npz_arrays,
    read_text_array,
    require_dir,
)

__all__ = [
    "MODELNET40_CLASSES",
    "MODELNET10_CLASSES",
    "UnsafeDatasetError",
    "ModelNetPack",
    "ModelNetNormalResampled",
    "ModelNetDatCache",
    "convert_dat_to_npz",
]

MODELNET40_CLASSES = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]
MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]
_MODELNET_CLASSES = {"modelnet40": MODELNET40_CLASSES, "modelnet10": MODELNET10_CLASSES}


_PACK_LAYOUT = "ROOT/train.npz and ROOT/test.npz (points (M, N, 3), labels (M,), names (M,)) + ROOT/shape_names.txt"


class ModelNetPack(PointCloudDataset):
    """ModelNet40/10 from the ``.npz`` pack (``points`` ``(M, N, 3)``, ``labels``, ``names``; ``shape_names.txt``).

    Args:
        root: folder holding ``train.npz``, ``test.npz`` and ``shape_names.txt`` (e.g. ``shared/data/modelnet40_1024``).
        split: ``train`` or ``test``.
        classes: ``modelnet40``, or ``modelnet10``: the rows of the ten ModelNet10 classes, relabelled in the
            ``modelnet10_shape_names.txt`` order (bathtub, bed, chair, desk, dresser, monitor, night_stand, sofa,
            table, toilet); same shapes and split as the official ModelNet10; or ``pack``: every class that
            ``shape_names.txt`` lists, in its order (a few-shot episode, a pack of your own).
        axis_order: ``stored`` (the pack's axes; the local pack is z-up) or ``official``: ``points[..., [0, 2, 1]]``,
            the axis order of the PointNet++ files the official pipelines (and pretrained models) use.
        shuffle_points, seed: see :class:`PointCloudDataset`.

    Loaded without pickle. The pack's rows are used as stored (the local pack is already unit-sphere normalised).
    """

    def __init__(self, root: str | os.PathLike, split: str, *, classes: str = "modelnet40",
                 axis_order: str = "stored", shuffle_points: bool | None = None, seed: int = 0):
        classes = _choice(classes, (*_MODELNET_CLASSES, "pack"), "ModelNet class set")
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



def _dat_classes(path: Path, classes: str | None) -> str:
    if classes is not None:
        return _choice(classes, tuple(_MODELNET_CLASSES), "ModelNet class set")
    return "modelnet10" if path.name.startswith("modelnet10") else "modelnet40"



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
    return _write_pack(out_path, data.points.numpy(), data.labels.numpy(), data.shape_ids, data.class_names)
