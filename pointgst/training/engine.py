"""The training engine behind ``pointgst train``: one recipe -> one run folder.

A run folder holds ``recipe.yaml``, ``checkpoint-last.pt`` (written atomically after every epoch: trainable
state, optimizer, scheduler, RNG states, epoch, best score, metrics history, recipe), ``best-trainable.pt``,
``adapter/`` (the best epoch's adapter, peft format, where the method is a peft method), ``metrics.jsonl`` /
``metrics.csv``, ``curves.png`` and ``summary.json``. Randomness is drawn from generators seeded by (seed, epoch,
step, sample index), so a resumed run continues exactly as an uninterrupted one, and augmentation does not depend
on the batch composition or the number of processes.
"""

import json
import random
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from pointgst.data import build_dataset, stratified_split, stratified_subset
from pointgst.data.transforms import augment, fps_then_random_subset
from pointgst.recipe import PRETRAIN_METHOD, Recipe, RecipeError
from pointgst.tuner.model import PointGSTModel, keep_frozen_norms_in_eval

from .distributed import Distributed, setup_distributed, teardown_distributed
from .evaluate import Scores, collect_logits, scores_from
from .optim import build_scheduler, num_epochs, parameter_groups
from .run_files import (BEST_STATE, CHECKPOINT, CURVES_PNG, RECIPE, SUMMARY, MetricsLog, load_trainable_state,
                        plot_curves, save_atomic, trainable_state, write_text_atomic)

_STREAM = {"shuffle": 1, "subset": 2, "augment": 3, "dropout": 4, "vote": 5, "mask": 6}


def derived_seed(seed: int, stream: str, *parts: int) -> int:
    """A reproducible seed for one purpose (``stream``) at one place (epoch, step, sample)."""
    value = seed * 1_000_003 + _STREAM[stream]
    for part in parts:
        value = (value * 1_000_033 + part) % (2**62)
    return value


class IndexedDataset(Dataset):
    """Items ``(index, points, label)``: the dataset index seeds per-sample augmentation."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        points, label = self.dataset[i]
        return i, points, label


def build_model(recipe: Recipe) -> nn.Module:
    """The wrapped backbone a recipe describes. Seeded by ``train.seed``, so a run's randomly initialised parts
    (a backbone without pretrained weights, fresh adapters) are rebuilt identically for ``pointgst eval``."""
    from pointgst.wrapping import wrap

    torch.manual_seed(recipe.train.seed)
    return wrap(recipe.backbone.name, method=recipe.method.name, num_classes=recipe.data.num_classes,
                pretrained=recipe.backbone.pretrained, **backbone_options(recipe), **recipe.method.options)


def backbone_options(recipe: Recipe) -> dict[str, Any]:
    """The backbone's grouping and (where the recipe sets it) stochastic depth."""
    options: dict[str, Any] = {"num_group": recipe.backbone.num_group, "group_size": recipe.backbone.group_size}
    if recipe.backbone.drop_path_rate is not None:
        options["drop_path_rate"] = recipe.backbone.drop_path_rate
    return options


def preflight(recipe: Recipe) -> None:
    """Cheap checks before any work: backbone name, method options, data root."""
    from pointgst.backbones.factory import parse_name
    from pointgst.wrapping import check_method_options

    if recipe.method.name == PRETRAIN_METHOD:
        raise RecipeError(f"method {PRETRAIN_METHOD!r} is masked-autoencoder pretraining: run this recipe with "
                          "`pointgst pretrain`, not `pointgst train`")
    parse_name(recipe.backbone.name)
    check_method_options(recipe.method.name, recipe.method.options)
    check_data_root(recipe)


def check_data_root(recipe: Recipe) -> None:
    """``FileNotFoundError`` naming the fix unless ``data.root`` exists."""
    if not Path(recipe.data.root).exists():
        raise FileNotFoundError(f"data.root {recipe.data.root!r} does not exist (from {Path.cwd()}); point it at the "
                                f"{recipe.data.dataset} data with --set data.root=PATH")


def selection_split(recipe: Recipe) -> str:
    """``"test"`` with ``train.selection: test`` or the ``official`` preset (the official protocol), else ``"val"``."""
    official = recipe.method.options.get("preset") == "official"
    return "test" if recipe.train.selection == "test" or official else "val"


def build_splits(recipe: Recipe, *, with_test: bool = True) -> dict[str, Dataset]:
    """train / select (validation carved from train, or the test split: :func:`selection_split`) / test (not
    even read with ``with_test=False``, which needs a validation split)."""
    data, seed = recipe.data, recipe.train.seed
    spec = {**asdict(data), "seed": seed}  # the per-sample point shuffle follows train.seed
    train = build_dataset(spec, "train")
    # validation clouds keep their stored point order every epoch (FPS starts at index 0), like the test split
    stored_order = train.with_stored_order()
    if data.max_train_samples:
        kept = stratified_subset(train.labels, data.max_train_samples, seed)
        train, stored_order = _subset(train, kept), _subset(stored_order, kept)
    splits = {"test": build_test_split(recipe)} if with_test else {}
    if selection_split(recipe) == "test":
        splits.update(train=train, select=splits["test"])
    else:
        train_idx, val_idx = stratified_split(_labels(train), data.val_fraction, seed)
        if len(val_idx) == 0:
            raise ValueError(f"the validation split is empty: {len(train)} training samples over "
                             f"{data.num_classes} classes leave none at val_fraction {data.val_fraction}; raise "
                             "data.val_fraction or data.max_train_samples, or select on the test split "
                             "(train.selection=test, the official protocol)")
        splits.update(train=_subset(train, train_idx), select=_subset(stored_order, val_idx))
    return splits


def build_test_split(recipe: Recipe) -> Dataset:
    """The test split (a stratified, seeded subset with ``data.max_test_samples``)."""
    data, seed = recipe.data, recipe.train.seed
    test = build_dataset({**asdict(data), "seed": seed}, "test")
    if data.max_test_samples:
        test = _subset(test, stratified_subset(test.labels, data.max_test_samples, seed))
    return test


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _labels(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor(dataset.labels)


def _subset(dataset: Dataset, indices) -> Subset:
    return Subset(dataset, [int(i) for i in indices])


def make_loader(dataset: Dataset, recipe: Recipe, dist: Distributed, *, train: bool) -> DataLoader:
    """A loader of ``(index, points, label)`` batches; every process gets its shard (``DistributedSampler``, also
    with one process, so the shuffling order is the same whatever the number of processes)."""
    indexed = IndexedDataset(dataset)
    sampler = DistributedSampler(indexed, num_replicas=dist.world_size, rank=dist.rank, shuffle=train,
                                 seed=recipe.train.seed, drop_last=False)
    per_rank = max(1, recipe.train.batch_size // dist.world_size)
    return DataLoader(indexed, batch_size=per_rank if train else 2 * per_rank, sampler=sampler,
                      num_workers=recipe.train.num_workers, drop_last=train and len(dataset) > per_rank)


def split_scores(model: nn.Module, loader: DataLoader, recipe: Recipe, dist: Distributed, *, vote: int = 0,
                 seed: int = 0) -> Scores:
    data = recipe.data
    logits, labels = collect_logits(model, loader, dist, npoints=data.npoints, vote=vote, point_all=data.point_all,
                                    seed=seed)
    return scores_from(logits, labels, data.num_classes)


def vote_results(model: nn.Module, loader: DataLoader, recipe: Recipe, dist: Distributed, *, vote: int,
                 repeats: int, best_of: bool = False) -> dict[str, Any]:
    """``repeats`` voting runs of ``vote`` passes each: mean ± std over the runs (and, only when asked, the
    official best-of-``repeats`` number, labelled as optimistic)."""
    accs = [split_scores(model, loader, recipe, dist, vote=vote, seed=derived_seed(recipe.train.seed, "vote", r)).acc
            for r in range(repeats)]
    out = {"vote_passes": vote, "vote_repeats": repeats, "vote_acc_mean": float(np.mean(accs)),
           "vote_acc_std": float(np.std(accs))}
    if best_of:
        out["vote_acc_best_of_repeats_official_optimistic"] = max(accs)
    return out


class Trainer:
    """Trains a recipe in a run folder (``resume`` continues from ``checkpoint-last.pt``)."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, *, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        self._preflight(recipe)
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.dist = setup_distributed(device)
        if self.dist.is_main:
            self._prepare_run_dir(resume)
        self.dist.barrier()
        self.splits = self._build_splits()
        self.model = self._build_model().to(self.dist.device)
        self.loaders = {name: make_loader(ds, recipe, self.dist, train=(name == "train"))
                        for name, ds in self.splits.items()}
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, recipe.train.weight_decay), lr=recipe.train.lr,
                                           betas=(0.9, 0.999), eps=1e-8)
        self.scheduler, self.schedule_per = build_scheduler(self.optimizer, recipe.train, len(self.loaders["train"]))
        self.epochs = num_epochs(recipe.train)
        self.start_epoch, self.best, self.history = 0, None, []
        self.first_step_loss: float | None = None
        if resume:
            self._resume()
        self.log = MetricsLog(self.run_dir, self.history)
        self.train_model = self.model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None)

    # -- setup ------------------------------------------------------------------------------------------------
    def _preflight(self, recipe: Recipe) -> None:
        preflight(recipe)

    def _build_splits(self) -> dict[str, Dataset]:
        return build_splits(self.recipe)

    def _build_model(self) -> nn.Module:
        return build_model(self.recipe)

    def _prepare_run_dir(self, resume: bool) -> None:
        import yaml
        if resume:
            if not (self.run_dir / CHECKPOINT).is_file():
                raise FileNotFoundError(f"--resume: {self.run_dir / CHECKPOINT} does not exist; start the run "
                                        "without --resume")
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it, or choose "
                                  "another --out folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / RECIPE, yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))

    def _resume(self) -> None:
        state = torch.load(self.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        load_trainable_state(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]

    # -- training ---------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        started = time.time()
        for epoch in range(self.start_epoch, self.epochs):
            self.loaders["train"].sampler.set_epoch(epoch)
            _base_dataset(self.splits["train"]).set_epoch(epoch)  # a fresh point order for every sample
            train_loss, train_acc, seconds = self._train_epoch(epoch)
            select = self._scores("select")
            row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   **({"first_step_loss": self.first_step_loss} if epoch == 0 else {}),
                   "train_acc": train_acc, "select_split": selection_split(self.recipe),
                   "select_acc": select.acc, "select_macc": select.macc, "select_loss": select.loss,
                   "epoch_seconds": seconds}
            if self.schedule_per == "epoch":
                self.scheduler.step()
            improved = self.best is None or select.acc > self.best["acc"]
            if improved:
                self.best = {"epoch": epoch, "acc": select.acc, "macc": select.macc}
            if self.dist.is_main:
                self.log.append(row)
                if improved:
                    save_atomic(trainable_state(self.model), self.run_dir / BEST_STATE)
                self._checkpoint(epoch)
                plot_curves(self.log.rows, self.run_dir / CURVES_PNG)
            self.dist.barrier()
        summary = self._finish(time.time() - started)
        teardown_distributed()
        return summary

    def _train_epoch(self, epoch: int) -> tuple[float, float, float]:
        self._set_train_mode()
        torch.manual_seed(derived_seed(self.recipe.train.seed, "dropout", epoch, self.dist.rank))
        auxiliary = [m for m in self.model.modules() if hasattr(m, "auxiliary_loss")]
        loader = self.loaders["train"]
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        start = time.time()
        bar = self._progress_bar(loader, epoch)
        for step, (index, points, labels) in enumerate(bar):
            points, labels = points.to(self.dist.device), labels.to(self.dist.device)
            points = self._augment(points, index, epoch, step)
            if epoch == 0 and step == 0:
                self.first_step_loss = self._probe_loss(points, labels)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.dist.device.type == "cuda"):
                logits = self.train_model(points)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.recipe.train.label_smoothing)
            progress = (epoch * len(loader) + step) / (self.epochs * len(loader))
            for module in auxiliary:  # e.g. DeepLA's hybrid deep supervision (training only)
                loss = loss + module.auxiliary_loss(labels, progress)
            self._optimizer_step(loss)
            totals += torch.tensor([loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(),
                                    len(labels)], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.3f}", samples_per_s=f"{totals[2] / (time.time() - start):.1f}")
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), time.time() - start

    def _progress_bar(self, loader: DataLoader, epoch: int):
        """``loader`` wrapped in the epoch's progress bar (main process, unless progress is off)."""
        from tqdm import tqdm

        return tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                    disable=not (self.progress and self.dist.is_main), leave=False)

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping (``train.grad_clip``), optimiser step and, per step, the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.train.grad_clip:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                     self.recipe.train.grad_clip)
        self.optimizer.step()
        if self.schedule_per == "step":
            self.scheduler.step()

    def _set_train_mode(self) -> None:
        self.train_model.train()
        if not isinstance(getattr(self.model, "base_model", None), PointGSTModel):
            keep_frozen_norms_in_eval(self.model)  # PointGST's tuner does this itself (or, officially, does not)

    @torch.no_grad()
    def _probe_loss(self, points: torch.Tensor, labels: torch.Tensor) -> float:
        """Cross-entropy of the first training batch under the initial weights in eval mode (no dropout, no batch
        statistics), averaged over all processes: it does not depend on how the batch is split across processes
        (the training-mode loss does, through the trainable head's BatchNorm: CPU has no SyncBatchNorm)."""
        self.model.eval()
        totals = torch.tensor([F.cross_entropy(self.model(points).float(), labels, reduction="sum").item(),
                               len(labels)], dtype=torch.float64)
        self._set_train_mode()
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[1]).item()

    def _augment(self, points: torch.Tensor, index: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Official training input: FPS to ``point_all``, one random ``npoints`` subset shared by the batch (seeded
        by epoch and step, so every process draws the same), then per-sample augmentation seeded by the sample."""
        data, seed = self.recipe.data, self.recipe.train.seed
        subset = torch.Generator().manual_seed(derived_seed(seed, "subset", epoch, step))
        points = fps_then_random_subset(points, data.npoints, data.point_all, subset)
        if data.augmentation == "none":
            return points
        return torch.cat([augment(points[i:i + 1], data.augmentation,
                                  torch.Generator().manual_seed(derived_seed(seed, "augment", epoch, int(j))))
                          for i, j in enumerate(index)])

    def _scores(self, split: str) -> Scores:
        return split_scores(self.model, self.loaders[split], self.recipe, self.dist)

    def _checkpoint(self, epoch: int) -> None:
        save_atomic({"epoch": epoch, "trainable": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "best": self.best,
                     "history": self.log.rows, "recipe": self.recipe.to_dict()}, self.run_dir / CHECKPOINT)

    # -- the end ----------------------------------------------------------------------------------------------
    def _finish(self, seconds: float) -> dict[str, Any]:
        last_test = self._scores("test")
        load_trainable_state(self.model, torch.load(self.run_dir / BEST_STATE, map_location="cpu", weights_only=True))
        best_test = self._scores("test")
        summary = {
            "recipe": self.recipe.name, "selection": selection_split(self.recipe),
            "best_epoch": self.best["epoch"],
            "test_acc": best_test.acc, "test_macc": best_test.macc,
            "test_acc_last_epoch": last_test.acc, "test_macc_last_epoch": last_test.macc,
            "note": ("model selected on the TEST split (official protocol): test accuracy is optimistic"
                     if selection_split(self.recipe) == "test" else
                     "model selected on a validation split held out from the training data"),
        }
        if self.recipe.eval.vote:
            summary.update(vote_results(self.model, self.loaders["test"], self.recipe, self.dist,
                                        vote=self.recipe.eval.vote, repeats=self.recipe.eval.vote_repeats))
        from pointgst.report import parameter_report
        report = parameter_report(self.model)
        summary.update(trainable_parameters=report.trainable, backbone_parameters=report.backbone_total,
                       train_seconds=round(seconds, 1), peak_memory_mb=round(_peak_memory_mb(self.dist.device), 1),
                       epochs=len(self.log.rows))
        if self.dist.is_main:
            write_text_atomic(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
            if hasattr(self.model, "save_pretrained"):
                save_trained_part(self.model, self.run_dir / "adapter")
        return summary


def save_trained_part(model: nn.Module, folder: Path) -> None:
    """``model.save_pretrained(folder)``; for a peft model without asking the hub whether the backbone's name has a
    ``config.json`` (peft's check for resized token embeddings, which point-cloud backbones do not have)."""
    from peft import PeftModel

    options = {"save_embedding_layers": False} if isinstance(model, PeftModel) else {}
    model.save_pretrained(str(folder), **options)


def _rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` reads (tensors, numbers, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       cached), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def evaluate_run(run_dir: str | Path, *, vote: int | None = None, repeats: int | None = None, best_of: bool = False,
                 device: str | None = None) -> dict[str, Any]:
    """Test accuracy of a run's best epoch, optionally with voting; written to ``RUN_DIR/eval.json``."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / BEST_STATE).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {BEST_STATE}: not a pointgst run folder, or no epoch finished")
    recipe = Recipe.from_dict(yaml.safe_load((run_dir / RECIPE).read_text()), name=run_dir.name)
    dist = setup_distributed(device)
    model = build_model(recipe).to(dist.device)
    load_trainable_state(model, torch.load(run_dir / BEST_STATE, map_location="cpu", weights_only=True))
    loader = make_loader(build_test_split(recipe), recipe, dist, train=False)
    scores = split_scores(model, loader, recipe, dist)
    result = {"run": str(run_dir), "test_acc": scores.acc, "test_macc": scores.macc, "count": scores.count}
    vote = recipe.eval.vote if vote is None else vote
    if vote:
        result.update(vote_results(model, loader, recipe, dist, vote=vote,
                                   repeats=repeats or recipe.eval.vote_repeats, best_of=best_of))
    if dist.is_main:
        write_text_atomic(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    teardown_distributed()
    return result


def train(recipe: Recipe, run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; returns the summary."""
    return Trainer(recipe, run_dir, **options).fit()
