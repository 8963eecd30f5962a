"""The training loop behind ``pointgst train``: one recipe -> one run folder (``docs/design.md``, "Training").

A run folder holds ``recipe.yaml``, ``checkpoint-last.pt`` (written atomically after every epoch: trainable
state, optimizer, scheduler, RNG states, epoch, best score, metrics history, recipe), ``best-trainable.pt``,
``adapter/`` (the best epoch's adapter, or weights folder after full fine-tuning), ``metrics.jsonl`` /
``metrics.csv``, ``curves.png``, ``summary.json`` and ``inference.json`` (class names and test-time preprocessing, also
in ``adapter/``: :mod:`pointgst.preprocessing`). Randomness is drawn from generators seeded by (seed, epoch,
step, sample index), so a resumed run continues exactly as an uninterrupted one, and augmentation does not depend
on the batch composition or the number of processes. One process at a time trains in a folder (:mod:`.run_dir`).
"""

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pointgst.data.transforms import augment, fps_then_random_subset
from pointgst.errors import RunError
from pointgst.preprocessing import write_inference_record
from pointgst.recipe import Recipe
from pointgst.report import parameter_report

from .data import base_dataset, build_splits, make_loader
from .distributed import setup_distributed, teardown_distributed
from .evaluate import Scores, split_scores, vote_results
from .memory import peak_memory_mb
from .optim import build_scheduler, num_epochs, parameter_groups
from .run_dir import RunLock, prepare_run_dir
from .run_files import (
    BEST_STATE,
    CHECKPOINT,
    CURVES_PNG,
    SUMMARY,
    CurvePlotter,
    MetricsLog,
    load_run_file,
    load_trainable_state,
    save_atomic,
    save_trained_part,
    trainable_state,
    write_text_atomic,
)
from .seeds import derived_seed, rng_state, set_rng_state
from .setup import autocast, build_model, preflight, selection_split


class TrainingDivergedError(RunError):
    """The loss became NaN or infinite: training stopped before the weights were overwritten."""


class Trainer:
    """Trains a recipe in a run folder (``resume`` continues from ``checkpoint-last.pt``)."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, *, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        self._preflight(recipe)
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.dist = setup_distributed(device)
        self.lock = RunLock(self.run_dir) if self.dist.is_main else None
        try:
            self._setup(resume)
        except BaseException:
            self._release()
            raise

    def _setup(self, resume: bool) -> None:
        recipe = self.recipe
        resume = prepare_run_dir(self.run_dir, recipe, resume=resume) if self.dist.is_main else resume
        resume = self.dist.broadcast_flag(resume)
        self.splits = self._build_splits()
        self.model = self._build_model().to(self.dist.device)
        self.loaders = {name: make_loader(ds, recipe, self.dist, train=(name == "train"))
                        for name, ds in self.splits.items()}
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, recipe.train.weight_decay), lr=recipe.train.lr,
                                           betas=(0.9, 0.999), eps=1e-8)
        self.scheduler, self.schedule_per = build_scheduler(self.optimizer, recipe.train, len(self.loaders["train"]))
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=recipe.train.precision == "fp16")
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

    def _resume(self) -> None:
        state = load_run_file(self.run_dir / CHECKPOINT)
        load_trainable_state(self.model, state["trainable"], source=str(self.run_dir / CHECKPOINT))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]

    # -- training ---------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, then evaluate and save; returns the summary (the lock is released)."""
        try:
            return self._fit()
        finally:
            self._release()

    def _fit(self) -> dict[str, Any]:
        started = time.time()
        curves = CurvePlotter(self.run_dir / CURVES_PNG)
        for epoch in range(self.start_epoch, self.epochs):
            self.loaders["train"].sampler.set_epoch(epoch)
            base_dataset(self.splits["train"]).set_epoch(epoch)  # a fresh point order for every sample
            train_loss, train_acc, seconds = self._train_epoch(epoch)
            row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   **({"first_step_loss": self.first_step_loss} if epoch == 0 else {}), "train_acc": train_acc}
            selecting = "select" in self.loaders  # not with train.selection=last
            if selecting:
                select = self._scores("select")
                row.update(select_split=selection_split(self.recipe),
                           **{f"select_{name}": value for name, value in select.metrics().items()})
            row["epoch_seconds"] = seconds
            if self.schedule_per == "epoch":
                self.scheduler.step()
            improved = selecting and (self.best is None or select.selected > self.best[select.selected_by])
            if improved:
                self.best = {"epoch": epoch, **{k: v for k, v in select.metrics().items() if k != "loss"}}
            elif not selecting:
                self.best = {"epoch": epoch}
            if self.dist.is_main:
                self.log.append(row)
                if improved:
                    save_atomic(trainable_state(self.model), self.run_dir / BEST_STATE)
                self._checkpoint(epoch)
                curves.update(self.log.rows, last=epoch == self.epochs - 1)
            self.dist.barrier()
        return self._finish(time.time() - started)

    def _release(self) -> None:
        teardown_distributed()
        if self.lock is not None:
            self.lock.release()

    def _train_epoch(self, epoch: int) -> tuple[float, float, float]:
        self._set_train_mode()
        torch.manual_seed(derived_seed(self.recipe.train.seed, "dropout", epoch, self.dist.rank))
        auxiliary = [m for m in self.model.modules() if hasattr(m, "auxiliary_loss")]
        loader = self.loaders["train"]
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        start = time.time()
        bar = self._progress_bar(loader, epoch)
        samples = 0
        for step, batch in enumerate(bar):
            inputs, labels = self._prepare(batch, epoch, step)
            if epoch == 0 and step == 0:
                self.first_step_loss = self._probe_loss(inputs, labels)
            with autocast(self.recipe.train.precision, self.dist.device):
                logits = self.train_model(*inputs).float()
            loss = F.cross_entropy(logits.flatten(0, -2), labels.flatten(),
                                   label_smoothing=self.recipe.train.label_smoothing)
            progress = (epoch * len(loader) + step) / (self.epochs * len(loader))
            for module in auxiliary:  # e.g. DeepLA's hybrid deep supervision (training only)
                loss = loss + module.auxiliary_loss(labels, progress)
            self._check_finite(loss, epoch, step)
            self._optimizer_step(loss)
            totals += torch.tensor([loss.item() * labels.numel(), (logits.argmax(-1) == labels).sum().item(),
                                    labels.numel()], dtype=torch.float64)
            samples += len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}", samples_per_s=f"{samples / (time.time() - start):.1f}")
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), time.time() - start

    def _prepare(self, batch: tuple, epoch: int, step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """A loader batch ``(index, points, labels)`` -> (the model's inputs, the labels) on the device, with the
        training input pipeline applied (:meth:`_augment`)."""
        index, points, labels = batch
        points = self._augment(points.to(self.dist.device), index, epoch, step)
        return (points,), labels.to(self.dist.device)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop the run at the first NaN or infinite loss, before it reaches the weights."""
        if math.isfinite(loss.item()):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDivergedError(
            f"the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: training stopped before updating the "
            f"weights (learning rate {lr:g}). Likely causes: a learning rate too high "
            f"(train.lr={self.recipe.train.lr:g}), clouds with extreme coordinates, or fp16 overflow. The epochs saved "
            "so far are intact; with another recipe, start a new run in another --out folder")

    def _progress_bar(self, loader: DataLoader, epoch: int):
        """``loader`` wrapped in the epoch's progress bar (main process, unless progress is off)."""
        from tqdm import tqdm

        return tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                    disable=not (self.progress and self.dist.is_main), leave=False)

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping (``train.grad_clip``), optimiser step and, per step, the schedule; with
        ``train.precision: fp16`` the loss is scaled (and the gradients unscaled before clipping)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                     self.recipe.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.schedule_per == "step":
            self.scheduler.step()

    def _set_train_mode(self) -> None:
        self.train_model.train()  # a wrapped model keeps its frozen BatchNorm layers in eval mode itself

    @torch.no_grad()
    def _probe_loss(self, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> float:
        """Cross-entropy of the first training batch under the initial weights in eval mode (no dropout, no batch
        statistics), averaged over all processes: it does not depend on how the batch is split across processes
        (the training-mode loss does, through the trainable head's BatchNorm: CPU has no SyncBatchNorm)."""
        self.model.eval()
        logits = self.model(*inputs).float()
        totals = torch.tensor([F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="sum").item(),
                               labels.numel()], dtype=torch.float64)
        self._set_train_mode()
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[1]).item()

    def _augment(self, points: torch.Tensor, index: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Official training input: FPS to ``point_all``, one random ``npoints`` subset shared by the batch (seeded
        by epoch and step, so every process draws the same), then per-sample augmentation seeded by the sample."""
        data = self.recipe.data
        subset = torch.Generator().manual_seed(derived_seed(self.recipe.train.seed, "subset", epoch, step))
        return self._augment_samples(fps_then_random_subset(points, data.npoints, data.point_all, subset), index, epoch)

    def _augment_samples(self, points: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The recipe's augmentation of every cloud (B, N, 3), seeded by (seed, epoch, sample index)."""
        name, seed = self.recipe.data.augmentation, self.recipe.train.seed
        if name == "none":
            return points
        return torch.cat([augment(points[i:i + 1], name,
                                  torch.Generator().manual_seed(derived_seed(seed, "augment", epoch, int(j))))
                          for i, j in enumerate(index)])

    def _scores(self, split: str) -> Scores:
        return split_scores(self.model, self.loaders[split], self.recipe, self.dist)

    def _checkpoint(self, epoch: int) -> None:
        save_atomic({"epoch": epoch, "trainable": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                     "best": self.best,
                     "history": self.log.rows, "recipe": self.recipe.to_dict()}, self.run_dir / CHECKPOINT)

    # -- the end ----------------------------------------------------------------------------------------------
    def _finish(self, seconds: float) -> dict[str, Any]:
        last_test = best_test = self._scores("test")
        if "select" in self.loaders:
            best = self.run_dir / BEST_STATE
            load_trainable_state(self.model, load_run_file(best), source=str(best))
            best_test = self._scores("test")
        split = selection_split(self.recipe)
        summary = {
            "recipe": self.recipe.name, "selection": split or "last",
            "best_epoch": self.best["epoch"],
            **{f"test_{name}": value for name, value in best_test.metrics().items() if name != "loss"},
            **{f"test_{name}_last_epoch": value for name, value in last_test.metrics().items() if name != "loss"},
            **{f"test_{name}": value for name, value in best_test.details().items()},
            "note": {"test": "model selected on the TEST split (official protocol): test accuracy is optimistic",
                     "val": "model selected on a validation split held out from the training data",
                     None: "no model selection: the last epoch's model"}[split],
        }
        if self.recipe.eval.vote:
            summary.update(vote_results(self.model, self.loaders["test"], self.recipe, self.dist,
                                        vote=self.recipe.eval.vote, repeats=self.recipe.eval.vote_repeats))
        report = parameter_report(self.model)
        summary.update(trainable_parameters=report.trainable, backbone_parameters=report.backbone_total,
                       train_seconds=round(seconds, 1), peak_memory_mb=round(peak_memory_mb(self.dist.device), 1),
                       epochs=len(self.log.rows))
        if self.dist.is_main:
            write_text_atomic(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
            save_trained_part(self.model, self.run_dir / "adapter")
            write_inference_record(self.recipe, base_dataset(self.splits["test"]).class_names, self.run_dir,
                                   self.run_dir / "adapter")
        return summary
