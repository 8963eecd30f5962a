"""ScanObjectNN from its official h5 files: :class:`ScanObjectNN`, its class names and its file names per variant.

Layouts: ``main_split[_nobg]/*.h5`` (Point-MAE/PointGST root) or ``h5_files/main_split[_nobg]/*.h5`` (PointGPT
root); points are used as stored. ``h5py`` is imported only when a file is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from pointgst.data.base import _SPLITS, PointCloudDataset, _choice, _clouds_tensor, _labels_tensor
from pointgst.data.readers import DatasetError, DatasetNotFoundError, read_h5_arrays, require_dir

__all__ = ["SCANOBJECTNN_CLASSES", "SCANOBJECTNN_FILES", "ScanObjectNN"]

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]
#: variant -> (folder, training file, test file), as distributed (datasets.md §2.1).
SCANOBJECTNN_FILES = {
    "obj_bg": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "pb_t50_rs": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}

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
