"""Part segmentation in the training engine (``pointgst train`` / ``pointgst eval`` on a ``shapenetpart`` recipe):
the :class:`~pointgst.training.trainer.Trainer` loop with a per-point cross-entropy, the official augmentation and
the ShapeNetPart metrics (``docs/segmentation.md``).

Splits: selection on the validation split (the default) trains on the official ``train`` list and selects on ``val``;
selection on the test split (the official protocol) or none trains on ``trainval``. Each shape's points are drawn
anew every epoch from a generator seeded by (seed, epoch, index); the validation and test splits always use the
epoch-0 draw, so every evaluation sees the same points.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pointgst.atomic import write_text_atomic
from pointgst.data.shapenetpart import ShapeNetPart, category_part_ids
from pointgst.data.splits import stratified_subset
from pointgst.part_metrics import PartSegmentationMeter
from pointgst.recipe import Recipe

from .data import base_dataset, make_loader, subset
from .distributed import Distributed, setup_distributed, teardown_distributed
from .run_files import load_trainable_state, read_run_recipe, saved_trainable_state
from .setup import autocast, build_model, selection_split
from .trainer import Trainer


class PartDataset(Dataset):
    """A :class:`~pointgst.data.shapenetpart.ShapeNetPart` split whose items are ``(points (N, 3), (category,
    parts (N,)))``: the ``(input, label)`` pairs the training engine's loaders index."""

    def __init__(self, shapes: ShapeNetPart):
        self.shapes = shapes
        self.class_names = list(shapes.class_names)  # the categories
        self.labels = list(shapes.categories)  # stratified subsets keep the category mix

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> tuple[Tensor, tuple[int, Tensor]]:
        points, category, parts = self.shapes[index]
        return points, (category, parts)

    def set_epoch(self, epoch: int) -> None:
        self.shapes.set_epoch(epoch)


def _split(recipe: Recipe, name: str, cap: int | None) -> Dataset:
    data = recipe.data
    dataset = PartDataset(ShapeNetPart(data.root, name, npoints=data.npoints, seed=recipe.train.seed))
    return subset(dataset, stratified_subset(dataset.labels, cap, recipe.train.seed)) if cap else dataset


def build_part_splits(recipe: Recipe) -> dict[str, Dataset]:
    """train / select / test of a ShapeNetPart recipe (see the module docstring)."""
    selection = selection_split(recipe)
    test = _split(recipe, "test", recipe.data.max_test_samples)
    splits = {"train": _split(recipe, "train" if selection == "val" else "trainval", recipe.data.max_train_samples),
              "test": test}
    if selection == "val":
        splits["select"] = _split(recipe, "val", recipe.data.max_test_samples)
    elif selection == "test":
        splits["select"] = test
    return splits


@dataclass
class PartScores:
    """Instance mIoU, class mIoU, point accuracy (fractions) and mean per-point cross-entropy over a split, with the
    per-category table; the saved epoch is picked by instance mIoU, as the official script does."""

    instance_miou: float
    class_miou: float
    acc: float
    loss: float
    count: int
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    selected_by: ClassVar[str] = "instance_miou"

    def metrics(self) -> dict[str, float]:
        return {"instance_miou": self.instance_miou, "class_miou": self.class_miou, "acc": self.acc,
                "loss": self.loss}

    @property
    def selected(self) -> float:
        return self.instance_miou

    def details(self) -> dict[str, Any]:
        return {"per_category": self.per_category}


def parts_of_categories(names: list[str]) -> list[list[int]]:
    """The global part ids of each category, in the dataset's category order."""
    return [category_part_ids(name) for name in names]


@torch.no_grad()
def part_scores(model: torch.nn.Module, loader: DataLoader, recipe: Recipe, dist: Distributed) -> PartScores:
    """:class:`PartScores` of a whole split (summed over processes)."""
    model.eval()
    names = base_dataset(loader.dataset.dataset).class_names  # the loader indexes the split (a PartDataset)
    meter = PartSegmentationMeter(parts_of_categories(names), names)
    loss = torch.zeros(2, dtype=torch.float64)  # summed cross-entropy, points
    for _, points, (category, parts) in loader:
        points, category, parts = points.to(dist.device), category.to(dist.device), parts.to(dist.device)
        with autocast(recipe.train.precision, dist.device):
            logits = model(points, category).float()
        loss += torch.tensor([F.cross_entropy(logits.flatten(0, 1), parts.flatten(), reduction="sum").item(),
                              parts.numel()], dtype=torch.float64)
        meter.update(logits.cpu(), parts.cpu(), category.cpu())
    state = torch.cat([meter.state(), loss])
    dist.all_reduce_sum(state)
    meter.load_state(state[:-2])
    result = meter.compute()
    return PartScores(instance_miou=result["instance_miou"], class_miou=result["class_miou"],
                      acc=result["accuracy"], loss=(state[-2] / state[-1]).item(), count=result["shapes"],
                      per_category=result["per_category"])


class SegmentationTrainer(Trainer):
    """:class:`Trainer` for part segmentation: ``model(points, category)`` -> per-point logits (the training step's
    cross-entropy and accuracy then run over points), per-shape augmentation without the classification FPS subset,
    :class:`PartScores`."""

    def _build_splits(self) -> dict[str, Dataset]:
        return build_part_splits(self.recipe)

    def _scores(self, split: str) -> PartScores:
        return part_scores(self.model, self.loaders[split], self.recipe, self.dist)

    def _prepare(self, batch: tuple, epoch: int, step: int) -> tuple[tuple[Tensor, ...], Tensor]:
        """``(index, points, (category, parts))`` -> ``((points, category), parts)`` on the device, each shape
        augmented (:meth:`_augment_samples`; no classification FPS subset: the dataset drew the points)."""
        index, points, (category, parts) = batch
        points = self._augment_samples(points.to(self.dist.device), index, epoch)
        return (points, category.to(self.dist.device)), parts.to(self.dist.device)


def evaluate_part_run(run_dir: Path, *, device: str | None = None) -> dict[str, Any]:
    """Test scores of a segmentation run's saved epoch, written to ``RUN_DIR/eval.json``."""
    recipe = read_run_recipe(run_dir)
    dist = setup_distributed(device)
    model = build_model(recipe).to(dist.device)
    state, source = saved_trainable_state(run_dir)
    load_trainable_state(model, state, source=str(source))
    loader = make_loader(_split(recipe, "test", recipe.data.max_test_samples), recipe, dist, train=False)
    scores = part_scores(model, loader, recipe, dist)
    result = {"run": str(run_dir), **{f"test_{k}": v for k, v in scores.metrics().items() if k != "loss"},
              "count": scores.count, "test_per_category": scores.per_category}
    if dist.is_main:
        write_text_atomic(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    teardown_distributed()
    return result
