"""Build the ModelNet10 sample shipped in ``pointgst/sample_data`` for ``pointgst demo``.

Usage (from the project root): ``python scripts/make_demo_sample.py ../shared/data/modelnet40_1024``

Per ModelNet10 class, ``TRAIN_PER_CLASS`` shapes of the official training split and ``TEST_PER_CLASS`` of the test split
are drawn with a fixed seed from the complete 1024-point ModelNet40 pack; the arrays are copied unchanged (float32, the
pack's axis order and 40-class labels) into ``train.npz`` / ``test.npz`` with the pack's ``shape_names.txt``, so
:class:`pointgst.data.ModelNetPack` reads the sample with ``classes="modelnet10"``.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

from pointgst.data import MODELNET10_CLASSES

TRAIN_PER_CLASS, TEST_PER_CLASS, SEED = 28, 10, 0
OUT = Path(__file__).resolve().parents[1] / "pointgst" / "sample_data"


def main(pack: Path) -> None:
    names = (pack / "shape_names.txt").read_text().split()
    rng = np.random.default_rng(SEED)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        with np.load(pack / f"{split}.npz") as arrays:
            points, labels, shape_ids = arrays["points"], arrays["labels"], arrays["names"]
        rows = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == names.index(c)), per_class, replace=False))
                               for c in MODELNET10_CLASSES])
        np.savez_compressed(OUT / f"{split}.npz", points=points[rows], labels=labels[rows], names=shape_ids[rows])
        print(f"{split}: {len(rows)} shapes, {(OUT / f'{split}.npz').stat().st_size / 1e6:.2f} MB")
    shutil.copyfile(pack / "shape_names.txt", OUT / "shape_names.txt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
