"""``pointgst.PartPredictor`` (behind ``pointgst predict`` on a part-segmentation run): a part label for every point
of point-cloud files, written as coloured PLY files::

    predictor = pointgst.PartPredictor.from_run("runs/shapenetpart.point_mae")
    for result in predictor.predict(["chair.ply"], category="Chair", out_dir="parts/"):
        print(result.source, result.counts if result.ok else result.error)

Each cloud is prepared as the run's training data were (``pc_normalize``, then ``data.npoints`` points drawn
uniformly with replacement, seeded); the model labels those points, restricted to the category's parts, and every
point of the file takes the label of its nearest labelled point.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pointgst.atomic import write_atomic
from pointgst.data.cloud_files import DEFAULT_SURFACE_POINTS, check_points, read_cloud
from pointgst.data.readers import DatasetError, pc_normalize
from pointgst.data.shapenetpart import SHAPENETPART_CATEGORIES, category_index, category_part_ids
from pointgst.part_metrics import restrict_to_category
from pointgst.predict import expand_inputs
from pointgst.recipe import SEGMENTATION_DATASETS
from pointgst.training.run_files import load_trainable_state, read_run_recipe, saved_trainable_state
from pointgst.training.setup import build_model

__all__ = ["PartPrediction", "PartPredictor", "part_colours", "render_part_predictions"]

PARTS_OF_CATEGORIES = [category_part_ids(i) for i in range(len(SHAPENETPART_CATEGORIES))]


@dataclass
class PartPrediction:
    """One input's result: ``parts`` (a global part id per point of the file, ``(N,)``), ``output`` (the coloured
    PLY written, if any); or ``error``, one line naming the input."""

    source: str
    category: str | None = None
    parts: np.ndarray | None = None
    output: Path | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def counts(self) -> dict[int, int]:
        """Points per predicted part id."""
        return dict(sorted(Counter(self.parts.tolist()).items())) if self.parts is not None else {}


def part_colours(parts: np.ndarray) -> np.ndarray:
    """A fixed, distinct RGB colour (uint8) per global part id: ``(N,)`` -> ``(N, 3)``."""
    rng = np.random.default_rng(50)
    palette = rng.integers(40, 256, size=(int(parts.max(initial=0)) + 1, 3), dtype=np.uint8)
    return palette[parts]


class PartPredictor:
    """A trained part-segmentation model with its input preparation (see the module docstring)."""

    def __init__(self, model: nn.Module, npoints: int, *, seed: int = 0, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.npoints, self.seed = npoints, seed

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> PartPredictor:
        """The saved epoch of a ``pointgst train`` run on a part-segmentation recipe."""
        run_dir = Path(run_dir).expanduser()
        recipe = read_run_recipe(run_dir)
        if recipe.data.dataset not in SEGMENTATION_DATASETS:
            raise ValueError(f"{run_dir} is a classification run; use pointgst.Predictor")
        state, source = saved_trainable_state(run_dir)
        model = build_model(recipe)
        load_trainable_state(model, state, source=str(source))
        return cls(model, recipe.data.npoints, seed=recipe.train.seed, device=device)

    def predict(self, inputs: Sequence[str | os.PathLike | np.ndarray], *, category: int | str,
                out_dir: str | os.PathLike | None = None,
                num_surface_points: int = DEFAULT_SURFACE_POINTS) -> list[PartPrediction]:
        """One :class:`PartPrediction` per input (a file, every cloud file of a folder, or an ``(N, >=3)`` array) of
        the given ShapeNetPart category
        (name, index or synset). With ``out_dir``, each file's points are written to ``out_dir/<stem>.parts.ply``
        (x, y, z as read, red, green, blue, part); an existing file there is an error for that input. A bad input
        gets an ``error`` line; the others are still labelled."""
        index = category_index(category)
        name = SHAPENETPART_CATEGORIES[index]
        results = []
        for source, item in expand_inputs(inputs):
            try:
                if isinstance(item, DatasetError):
                    raise item
                points = (read_cloud(item, num_surface_points=num_surface_points, seed=self.seed)
                          if isinstance(item, Path) else check_points(np.asarray(item), source))
                target = None if out_dir is None or not isinstance(item, Path) else \
                    Path(out_dir) / f"{item.stem}.parts.ply"
                if target is not None and target.exists():
                    raise FileExistsError(f"{target} exists; pass another output folder or remove it")
                parts = self.label_points(points, index)
                if target is not None:
                    write_part_ply(target, points, parts)
                results.append(PartPrediction(source, name, parts, target))
            except (ValueError, OSError) as err:
                results.append(PartPrediction(source, name, error=str(err)))
        return results

    @torch.no_grad()
    def label_points(self, points: np.ndarray, category: int) -> np.ndarray:
        """xyz ``(N, 3)`` of one cloud of ``category`` -> a global part id per point ``(N,)``."""
        normalised = torch.from_numpy(pc_normalize(np.asarray(points, dtype=np.float32)))
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randint(len(normalised), (self.npoints,), generator=generator)
        sample = normalised[chosen].unsqueeze(0).to(self.device)
        logits = self.model(sample, torch.tensor([category], device=self.device)).float().cpu()
        labels = restrict_to_category(logits, torch.tensor([category]), PARTS_OF_CATEGORIES)[0]
        nearest = torch.cat([torch.cdist(chunk, normalised[chosen]).argmin(dim=1)
                             for chunk in normalised.split(8192)])  # (8192, npoints) distances at a time
        return labels[nearest].numpy()


def write_part_ply(path: Path, points: np.ndarray, parts: np.ndarray) -> None:
    """A binary PLY of the points with their part colour and id, written atomically."""
    from plyfile import PlyData, PlyElement  # the io extra

    colours = part_colours(parts)
    rows = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                        ("blue", "u1"), ("part", "i4")])
    for axis, column in enumerate("xyz"):
        rows[column] = points[:, axis]
    for channel, column in enumerate(("red", "green", "blue")):
        rows[column] = colours[:, channel]
    rows["part"] = parts
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: PlyData([PlyElement.describe(rows, "vertex")]).write(str(tmp)))


def render_part_predictions(predictions: Sequence[PartPrediction]) -> str:
    """One line per labelled input: source, category, points, points per part id, output file."""
    lines = []
    for p in predictions:
        if p.ok:
            counts = " ".join(f"{part}:{count}" for part, count in p.counts.items())
            lines.append(f"{p.source}  {p.category}  {len(p.parts)} points  parts {counts}"
                         + (f"  -> {p.output}" if p.output else ""))
    return "\n".join(lines)
