"""``pointgst.Predictor`` (behind ``pointgst predict``): class predictions for point-cloud files or arrays with a trained
model, each cloud prepared exactly like the run's test split (:class:`~pointgst.preprocessing.Preprocessing`)::

    predictor = pointgst.Predictor.from_path("runs/demo")   # a run folder, or an adapter folder
    for result in predictor.predict(["chair.ply", "scans/"], top_k=3):
        print(result.source, result.top_k if result.ok else result.error)
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pointgst.data.cloud_files import CLOUD_SUFFIXES, DEFAULT_SURFACE_POINTS, check_points, find_cloud_files, read_cloud
from pointgst.data.readers import DatasetError
from pointgst.errors import CheckpointError
from pointgst.loading import load_adapter, resolve_adapter_dir
from pointgst.preprocessing import INFERENCE_RECORD, Preprocessing, read_inference_record
from pointgst.recipe import SEGMENTATION_DATASETS
from pointgst.training.distributed import Distributed
from pointgst.training.evaluate import collect_logits
from pointgst.training.run_files import RECIPE, load_trainable_state, read_run_recipe, saved_trainable_state
from pointgst.training.seeds import derived_seed
from pointgst.training.setup import autocast, build_model

__all__ = ["FORMATS", "Prediction", "Predictor", "expand_inputs", "render_predictions"]

#: output formats of :func:`render_predictions`
FORMATS = ("table", "json", "csv")


@dataclass
class Prediction:
    """One input's result: ``label`` (the predicted class) and its ``index``, ``top_k`` ``[(class name,
    probability)]`` best first; or ``error``, one line naming the input, when it could not be classified."""

    source: str
    label: str | None = None
    index: int | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Predictor:
    """A trained classifier with its test-time preprocessing.

    Args:
        model: the wrapped model (a run's best epoch, or what :func:`pointgst.load_adapter` rebuilt).
        preprocessing: the run's :class:`~pointgst.preprocessing.Preprocessing` (``Preprocessing.from_recipe``).
        class_names: the class names in label order; ``None``: ``"class 0"``, ``"class 1"``, ...
        device: ``"cpu"`` or ``"cuda"``; default cuda when available.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, class_names: Sequence[str] | None = None, *,
                 device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.preprocessing = preprocessing
        self.class_names = None if class_names is None else list(class_names)

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Predictor:
        """From a run folder (``recipe.yaml`` and ``best-trainable.pt``: the best epoch's model, rebuilt like
        ``pointgst eval`` does) or an adapter folder or hub repo id (:func:`pointgst.load_adapter`) recording
        ``inference.json``; the ``adapter/`` of a run from before that record takes the run's recipe. Class names
        come from ``inference.json``, else they are indices (``"class 3"``)."""
        run = Path(path).expanduser()
        if (run / RECIPE).is_file():
            recipe = read_run_recipe(run)
            if recipe.data.dataset in SEGMENTATION_DATASETS:
                raise ValueError(f"{run} is a part-segmentation run; pointgst predict classifies whole clouds")
            state, source = saved_trainable_state(run)
            model = build_model(recipe)
            load_trainable_state(model, state, source=str(source))
            record = read_inference_record(run)
            return cls(model, Preprocessing.from_recipe(recipe), record[0] if record else None, device=device)
        folder = resolve_adapter_dir(path)
        record = read_inference_record(folder)
        if record is None:
            if not (folder.parent / RECIPE).is_file():
                raise CheckpointError(f"{folder} records no test-time preprocessing (no {INFERENCE_RECORD}: saved "
                                      "outside `pointgst train`, or by an older pointgst); pass its run folder, or "
                                      "build Predictor(pointgst.load_adapter(folder), Preprocessing(npoints=...))")
            record = (None, Preprocessing.from_recipe(read_run_recipe(folder.parent)))
        model = load_adapter(folder)
        backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
        if getattr(backbone, "task", "classification") == "segmentation":
            raise ValueError(f"{folder} holds a part-segmentation model; label points with its run folder and the "
                             "shapes' category: pointgst predict RUN_FOLDER FILES --category NAME")
        return cls(model, record[1], record[0], device=device)

    def predict(self, inputs: Sequence[str | os.PathLike | np.ndarray | torch.Tensor], *, top_k: int = 5,
                vote: int = 0, batch_size: int = 32,
                num_surface_points: int = DEFAULT_SURFACE_POINTS) -> list[Prediction]:
        """One :class:`Prediction` per cloud: a file (see :func:`~pointgst.data.cloud_files.read_cloud`; a mesh
        gives ``num_surface_points`` surface samples, seeded by the run's seed), every supported file in a folder
        (recursively, sorted), or an array ``(N, >=3)``. A bad input gets an ``error`` line; the others are still
        classified.

        ``vote == 0``: one pass on the FPS of ``npoints`` points (the test input). ``vote == N``: the average of
        ``N`` passes, each on a random ``npoints`` subset of the FPS of ``point_all`` points, scaled and translated
        (``pointgst eval --vote``; the draws depend on the batch's clouds).
        """
        for name, value, least in (("top_k", top_k, 1), ("vote", vote, 0), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        results, clouds = [], []
        for source, item in expand_inputs(inputs):
            try:
                if isinstance(item, DatasetError):
                    raise item
                clouds.append(self.preprocessing.apply(self._read(source, item, num_surface_points)))
                results.append(Prediction(source))
            except (ValueError, OSError) as err:
                results.append(Prediction(source, error=str(err)))
        pending = [r for r in results if r.ok]
        if not pending:
            return results
        probabilities = torch.softmax(self.logits(clouds, vote=vote, batch_size=batch_size), dim=1)
        names = self.class_names or [f"class {i}" for i in range(probabilities.shape[1])]
        values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        for result, value, index in zip(pending, values.tolist(), indices.tolist()):
            result.label, result.index = names[index[0]], index[0]
            result.top_k = [(names[i], p) for i, p in zip(index, value)]
        return results

    def _read(self, source: str, item: Path | np.ndarray | torch.Tensor, num_surface_points: int) -> np.ndarray:
        needed = self.preprocessing.min_points
        if isinstance(item, Path):
            return read_cloud(item, num_surface_points=num_surface_points, seed=self.preprocessing.seed,
                              min_points=needed)
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
        return check_points(array, source, min_points=needed)

    @torch.no_grad()
    def logits(self, clouds: Sequence[torch.Tensor], *, vote: int = 0, batch_size: int = 32) -> torch.Tensor:
        """Logits ``(M, C)`` (float32, CPU) of prepared clouds ``(N_i, 3)`` (``preprocessing.apply``), through the
        evaluation code of ``pointgst eval``; clouds of one size share batches of up to ``batch_size``."""
        pre = self.preprocessing
        order = sorted(range(len(clouds)), key=lambda i: len(clouds[i]))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < batch_size and len(clouds[batches[-1][0]]) == len(clouds[i]):
                batches[-1].append(i)
            else:
                batches.append([i])
        loader = [(torch.tensor(batch), torch.stack([clouds[i] for i in batch]),
                   torch.zeros(len(batch), dtype=torch.long)) for batch in batches]
        with autocast(pre.precision, self.device):
            logits, _ = collect_logits(self.model, loader, Distributed(device=self.device), npoints=pre.npoints,
                                       vote=vote, point_all=pre.point_all, seed=derived_seed(pre.seed, "vote", 0))
        return logits[torch.argsort(torch.tensor(order))]


def expand_inputs(inputs: Sequence[str | os.PathLike | np.ndarray | torch.Tensor]
            ) -> Iterator[tuple[str, Path | np.ndarray | torch.Tensor | DatasetError]]:
    """``(source, item)`` per cloud: a path, the files of a folder, an array; a :class:`DatasetError` item for a
    folder without cloud files."""
    for number, item in enumerate(inputs):
        if not isinstance(item, (str, os.PathLike)):
            yield f"cloud {number}", item
            continue
        path = Path(item)
        if not path.is_dir():
            yield str(path), path
            continue
        files = find_cloud_files(path)
        if not files:
            yield str(path), DatasetError(f"{path} holds no point-cloud files ({', '.join(CLOUD_SUFFIXES)}); pass a "
                                          "folder of such files")
        yield from ((str(f), f) for f in files)


def render_predictions(predictions: Sequence[Prediction], fmt: str = "table") -> str:
    """The classified inputs as text: ``table`` (probabilities as percentages), ``json`` (a list of ``{"path",
    "class", "top_k": [{"class", "probability"}]}``) or ``csv`` (``path,rank,class,probability``, rank 1 = the
    prediction)."""
    done = [p for p in predictions if p.ok]
    if fmt == "json":
        return json.dumps([{"path": p.source, "class": p.label,
                            "top_k": [{"class": n, "probability": v} for n, v in p.top_k]} for p in done], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability"])
        writer.writerows([p.source, rank, n, f"{v:.6f}"] for p in done for rank, (n, v) in enumerate(p.top_k, 1))
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    width = max([len("path")] + [len(p.source) for p in done])
    label_width = max([len("class")] + [len(p.label) for p in done])
    rows = [f"{'path':<{width}}  {'class':<{label_width}}  top classes"]
    rows += [f"{p.source:<{width}}  {p.label:<{label_width}}  "
             + "  ".join(f"{n} {100 * v:.1f}%" for n, v in p.top_k) for p in done]
    return "\n".join(rows)
