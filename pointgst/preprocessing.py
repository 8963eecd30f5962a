"""A trained model's test-time input, as a record: :class:`Preprocessing` (read from a recipe, applied to one cloud) and
``inference.json`` (the class names and the preprocessing), which a run writes into its folder and its ``adapter/``
folder, so that :class:`pointgst.Predictor` classifies new clouds exactly like the run's test split, from either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointgst.atomic import write_folder, write_text_atomic
from pointgst.data.folder import _resample
from pointgst.data.readers import pc_normalize
from pointgst.errors import CheckpointError
from pointgst.recipe import Recipe

__all__ = ["INFERENCE_RECORD", "Preprocessing", "read_inference_record", "write_inference_record"]

INFERENCE_RECORD = "inference.json"
_MODELNET = ("modelnet40", "modelnet10")


@dataclass(frozen=True)
class Preprocessing:
    """What a run's test split does to a cloud ``(N, 3)`` before the model, in this order:

    1. ``first_rows``: keep the first rows (the ModelNet ``normal_resampled`` text tree's ``data.num_points``);
    2. ``normalize``: ``pc_normalize``, centroid to the origin and largest norm 1 (every ModelNet format: the text tree
       and the dat caches normalise each cloud they read, the npz pack stores normalised clouds);
    3. ``swap_yz``: ``data.axis_order: official`` of an npz pack (y and z swapped; files are read in the pack's
       stored orientation);
    4. ``resample_to``: the folder dataset's ``data.num_points`` (seeded by ``seed``: the first rows after a random
       permutation, or all rows plus random repeats);
    5. farthest point sampling from index 0 to ``npoints`` (voting: to ``point_all``, then random subsets), done by
       the predictor on its device, and the model under ``precision`` autocast.

    The folder, pack and ScanObjectNN datasets use their clouds as stored: no normalisation.
    """

    npoints: int = 1024
    point_all: int = 1024
    normalize: bool = False
    swap_yz: bool = False
    first_rows: int | None = None
    resample_to: int | None = None
    seed: int = 0
    precision: str = "fp32"

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> Preprocessing:
        """The test-time preprocessing of a recipe's dataset."""
        data = recipe.data
        return cls(npoints=data.npoints, point_all=data.point_all, normalize=data.dataset in _MODELNET,
                   swap_yz=data.format == "npz" and data.axis_order == "official",
                   first_rows=data.num_points if data.format == "normal_resampled" else None,
                   resample_to=data.num_points if data.dataset == "folder" else None,
                   seed=recipe.train.seed, precision=recipe.train.precision)

    @property
    def min_points(self) -> int:
        """Points a cloud needs: ``npoints`` (sampling cannot add points), or 1 where ``resample_to`` pads a cloud
        with repeats, as the folder dataset does."""
        return 1 if self.resample_to else self.npoints

    def apply(self, xyz: np.ndarray) -> torch.Tensor:
        """Steps 1-4: float32 ``(N, 3)`` -> the cloud the run's test split would hold, float32 ``(M, 3)``."""
        if self.first_rows:
            xyz = xyz[: self.first_rows]
        if self.normalize:
            xyz = pc_normalize(xyz)
        if self.swap_yz:
            xyz = xyz[:, [0, 2, 1]]
        cloud = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))
        if self.resample_to:
            cloud = _resample(cloud, self.resample_to, torch.Generator().manual_seed(self.seed))
        return cloud


def write_inference_record(recipe: Recipe, class_names: Sequence[str], run_dir: Path, adapter_dir: Path) -> None:
    """``inference.json`` (class names in label order, :class:`Preprocessing`) into the run folder, atomically, and
    into its saved adapter folder, as a pointgst save into that folder (listed in its manifest)."""
    text = json.dumps({"class_names": list(class_names), "preprocessing": asdict(Preprocessing.from_recipe(recipe))},
                      indent=2) + "\n"
    write_text_atomic(run_dir / INFERENCE_RECORD, text)

    def fill(tmp: Path) -> dict[str, Any]:
        (tmp / INFERENCE_RECORD).write_text(text)
        return {}
    write_folder(adapter_dir, fill, overwrite=True)


def read_inference_record(folder: Path) -> tuple[list[str], Preprocessing] | None:
    """The class names and preprocessing ``folder`` records, or ``None`` (saved before pointgst recorded them)."""
    path = folder / INFERENCE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return [str(name) for name in record["class_names"]], Preprocessing(**record["preprocessing"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a readable inference record ({type(err).__name__}: {err}); copy it "
                              "again from the run folder, or delete it to use the run's recipe.yaml") from None
