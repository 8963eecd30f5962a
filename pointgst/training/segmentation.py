"""Part segmentation in the training engine (``pointgst train`` / ``pointgst eval`` on a ``shapenetpart`` recipe):
the :class:`~pointgst.training.trainer.Trainer` loop with a per-point cross-entropy, the official augmentation and
the ShapeNetPart metrics (``docs/segmentation.md``).

Splits: selection on the validation split (the default) trains on the official ``train`` list and selects on ``val``;
selection on the test split (the official protocol) or none trains on ``trainval``. Each shape's points are drawn
anew every epoch from a generator seeded by (seed, epoch, index); the validation and test splits always use the
epoch-0 draw, so every evaluation sees the same points.
"""

import json
import time
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
from pointgst.data.transforms import augment
from pointgst.part_metrics import PartSegmentationMeter
from pointgst.recipe import Recipe

from .data import base_dataset, make_loader, subset
from .distributed import Distributed, setup_distributed, teardown_distributed
from .run_files import load_trainable_state, read_run_recipe, saved_trainable_state
from .seeds import derived_seed
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
    """:class:`Trainer` for part segmentation: ``model(points, category)`` -> per-point logits, per-point
    cross-entropy, per-shape augmentation without the classification FPS subset, :class:`PartScores`."""

    def _build_splits(self) -> dict[str, Dataset]:
        return build_part_splits(self.recipe)

    def _scores(self, split: str) -> PartScores:
        return part_scores(self.model, self.loaders[split], self.recipe, self.dist)

    def _train_epoch(self, epoch: int) -> tuple[float, float, float]:
        self._set_train_mode()
        torch.manual_seed(derived_seed(self.recipe.train.seed, "dropout", epoch, self.dist.rank))
        auxiliary = [m for m in self.model.modules() if hasattr(m, "auxiliary_loss")]
        loader = self.loaders["train"]
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum over points, correct points, points
        start = time.time()
        bar = self._progress_bar(loader, epoch)
        for step, (index, points, (category, parts)) in enumerate(bar):
            points, category, parts = (t.to(self.dist.device) for t in (points, category, parts))
            points = self._augment_shapes(points, index, epoch)
            if epoch == 0 and step == 0:
                self.first_step_loss = self._probe_loss(points, (category, parts))
            with autocast(self.recipe.train.precision, self.dist.device):
                logits = self.train_model(points, category)
            loss = F.cross_entropy(logits.float().flatten(0, 1), parts.flatten(),
                                   label_smoothing=self.recipe.train.label_smoothing)
            progress = (epoch * len(loader) + step) / (self.epochs * len(loader))
            for module in auxiliary:  # e.g. DeepLA's hybrid deep supervision (training only)
                loss = loss + module.auxiliary_loss(parts, progress)
            self._check_finite(loss, epoch, step)
            self._optimizer_step(loss)
            totals += torch.tensor([loss.item() * parts.numel(), (logits.argmax(-1) == parts).sum().item(),
                                    parts.numel()], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.3f}", points_per_s=f"{totals[2] / (time.time() - start):.0f}")
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), time.time() - start

    def _augment_shapes(self, points: Tensor, index: Tensor, epoch: int) -> Tensor:
        """The recipe's augmentation per shape, seeded by (seed, epoch, shape index)."""
        name = self.recipe.data.augmentation
        if name == "none":
            return points
        seed = self.recipe.train.seed
        return torch.cat([augment(points[i:i + 1], name,
                                  torch.Generator().manual_seed(derived_seed(seed, "augment", epoch, int(j))))
                          for i, j in enumerate(index)])

    @torch.no_grad()
    def _probe_loss(self, points: Tensor, labels: tuple[Tensor, Tensor]) -> float:
        """Per-point cross-entropy of the first training batch under the initial weights in eval mode."""
        category, parts = labels
        self.model.eval()
        logits = self.model(points, category).float()
        totals = torch.tensor([F.cross_entropy(logits.flatten(0, 1), parts.flatten(), reduction="sum").item(),
                               parts.numel()], dtype=torch.float64)
        self._set_train_mode()
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[1]).item()


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
