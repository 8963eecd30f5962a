"""Point-MAE masked-autoencoder pretraining on the fine-tuning engine: ``pointgst pretrain RECIPE``.

A pretraining recipe is an ordinary recipe whose ``method.name`` is ``mae`` (options: ``mask_ratio``, default 0.6,
``decoder_depth``, default 4) and whose ``backbone.name`` is a Point-MAE architecture (``point_mae``,
``point_mae_tiny``). Labels are never read. The run folder holds what a fine-tuning run's does (``checkpoint-last.pt``
for ``--resume``, metrics, ``curves.png``, ``summary.json``), and at the end:

- ``pretrain.pth``: the official pretraining checkpoint layout (``{"base_model": state_dict, "epoch": ...}`` with the
  ``MAE_encoder.`` / ``MAE_decoder.`` keys), which :func:`pointgst.create_backbone` loads like the authors' file;
- ``backbone/``: the encoder as a safetensors weights folder (``create_backbone(ARCH, pretrained=RUN/backbone)``).

The validation split (``data.val_fraction`` of the training split) is scored with the reconstruction loss under
fixed masks, so its curve is comparable across epochs. Masks are drawn per batch from a generator seeded by (seed,
epoch, step, rank): a run repeats exactly (and resumes exactly) for a given batch size and number of processes; with
another number of processes the masks, like the batches, differ.
"""

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from pointgst.backbones.point_mae_pretrain import PRETRAIN_ARCHITECTURES, PointMAEPretrain
from pointgst.converting import convert_checkpoint
from pointgst.recipe import PRETRAIN_METHOD, Recipe, RecipeError

from .data import base_dataset, build_splits
from .memory import peak_memory_mb
from .run_files import CURVES_PNG, SUMMARY, CurvePlotter, save_atomic, write_text_atomic
from .seeds import derived_seed
from .setup import autocast, backbone_options, check_data_root
from .trainer import Trainer

PRETRAIN_CHECKPOINT, BACKBONE_FOLDER = "pretrain.pth", "backbone"
MAE_OPTIONS = {"mask_ratio": float, "decoder_depth": int}


def check_pretrain_recipe(recipe: Recipe) -> None:
    """A pretraining recipe names ``method.name: mae``, a Point-MAE architecture and only known options."""

    if recipe.method.name != PRETRAIN_METHOD:
        raise RecipeError(f"a pretraining recipe has method.name {PRETRAIN_METHOD!r} (masked autoencoding), got "
                          f"{recipe.method.name!r}; fine-tune with `pointgst train` instead")
    if recipe.backbone.name not in PRETRAIN_ARCHITECTURES:
        raise RecipeError(f"backbone.name must be one of {', '.join(PRETRAIN_ARCHITECTURES)} for pretraining "
                          f"(an architecture, not a tag), got {recipe.backbone.name!r}")
    for key, value in recipe.method.options.items():
        if key not in MAE_OPTIONS:
            raise RecipeError(f"unknown method.options key {key!r} for mae; valid: {', '.join(MAE_OPTIONS)}")
        if not isinstance(value, MAE_OPTIONS[key]) or isinstance(value, bool):
            raise RecipeError(f"method.options.{key} must be {MAE_OPTIONS[key].__name__}, got {value!r}")
    if recipe.backbone.pretrained is not False:
        raise RecipeError("pretraining starts from a fresh initialisation: set backbone.pretrained=false "
                          f"(got {recipe.backbone.pretrained!r})")
    if recipe.train.selection != "val" or recipe.data.val_fraction == 0.0:
        raise RecipeError("pretraining never looks at the test split: set train.selection=val and a "
                          "data.val_fraction > 0 (the held-out shapes score the reconstruction loss)")
    check_data_root(recipe)


def build_pretrain_model(recipe: Recipe) -> nn.Module:
    """The :class:`PointMAEPretrain` model a recipe describes, from scratch, seeded by ``train.seed``. Its layers keep
    PyTorch's default initialisation (only ``mask_token`` is trunc-normal(0.02)); the official pretraining model also
    re-initialises its Linear/Conv1d layers trunc-normal(0.02)."""

    torch.manual_seed(recipe.train.seed)
    return PointMAEPretrain.for_architecture(recipe.backbone.name, **recipe.method.options,
                                             **backbone_options(recipe))


class Pretrainer(Trainer):
    """Pretrains a ``mae`` recipe in a run folder (``resume`` continues from ``checkpoint-last.pt``)."""

    def _preflight(self, recipe: Recipe) -> None:
        check_pretrain_recipe(recipe)

    def _build_splits(self) -> dict[str, Dataset]:
        return build_splits(self.recipe, with_test=False)  # pretraining never reads the test split

    def _build_model(self) -> nn.Module:
        return build_pretrain_model(self.recipe)

    def _fit(self) -> dict[str, Any]:
        started = time.time()
        curves = CurvePlotter(self.run_dir / CURVES_PNG, loss_name="Chamfer-L2 loss")
        for epoch in range(self.start_epoch, self.epochs):
            self.loaders["train"].sampler.set_epoch(epoch)
            base_dataset(self.splits["train"]).set_epoch(epoch)
            train_loss, seconds = self._pretrain_epoch(epoch)
            val_loss = self._validation_loss()
            row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   "select_split": "val", "select_loss": val_loss, "epoch_seconds": seconds}
            if self.schedule_per == "epoch":
                self.scheduler.step()
            if self.best is None or val_loss < self.best["loss"]:
                self.best = {"epoch": epoch, "loss": val_loss}
            if self.dist.is_main:
                self.log.append(row)
                self._checkpoint(epoch)
                curves.update(self.log.rows, last=epoch == self.epochs - 1)
            self.dist.barrier()
        summary = self._write_outputs(time.time() - started)
        self.dist.barrier()
        return summary

    def _pretrain_epoch(self, epoch: int) -> tuple[float, float]:
        self.train_model.train()
        torch.manual_seed(derived_seed(self.recipe.train.seed, "dropout", epoch, self.dist.rank))
        loader = self.loaders["train"]
        totals = torch.zeros(2, dtype=torch.float64)  # loss sum, count
        start = time.time()
        bar = self._progress_bar(loader, epoch)
        for step, (index, points, _) in enumerate(bar):
            points = self._augment(points.to(self.dist.device), index, epoch, step)
            masks = torch.Generator().manual_seed(derived_seed(self.recipe.train.seed, "mask", epoch, step,
                                                               self.dist.rank))
            with autocast(self.recipe.train.precision, self.dist.device):
                loss = self.train_model(points, generator=masks)
            self._optimizer_step(loss)
            totals += torch.tensor([loss.item() * len(points), len(points)], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{totals[1] / (time.time() - start):.1f}")
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[1]).item(), time.time() - start

    @torch.no_grad()
    def _validation_loss(self) -> float:
        """Mean reconstruction loss on the validation split; batch ``b`` always hides the same patches."""
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        for batch, (_, points, _) in enumerate(self.loaders["select"]):
            masks = torch.Generator().manual_seed(derived_seed(self.recipe.train.seed, "mask", 0, batch,
                                                               self.dist.rank) + 1)
            loss = self.model(points.to(self.dist.device), generator=masks)
            totals += torch.tensor([loss.item() * len(points), len(points)], dtype=torch.float64)
        self.dist.all_reduce_sum(totals)
        return (totals[0] / totals[1]).item()

    def _write_outputs(self, seconds: float) -> dict[str, Any]:
        """``pretrain.pth`` (official layout), ``backbone/`` (safetensors) and ``summary.json`` of the last epoch (main
        process; the others return ``{}``)."""
        if not self.dist.is_main:
            return {}
        rows = self.log.rows
        summary = {"recipe": self.recipe.name, "architecture": self.recipe.backbone.name,
                   "epochs": len(rows), "final_train_loss": rows[-1]["train_loss"],
                   "final_val_loss": rows[-1]["select_loss"], "best_val_epoch": self.best["epoch"],
                   "best_val_loss": self.best["loss"],
                   "parameters": sum(p.numel() for p in self.model.parameters()),
                   "train_seconds": round(seconds, 1),  # this process only (a resumed run: since the resume)
                   "epoch_seconds_total": round(sum(r["epoch_seconds"] for r in rows), 1),
                   "peak_memory_mb": round(peak_memory_mb(self.dist.device), 1)}
        checkpoint = self.run_dir / PRETRAIN_CHECKPOINT
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_atomic({"base_model": state, "epoch": rows[-1]["epoch"],
                     "metrics": {"train_loss": rows[-1]["train_loss"], "val_loss": rows[-1]["select_loss"]}},
                    checkpoint)
        convert_checkpoint(checkpoint, self.run_dir / BACKBONE_FOLDER, architecture=self.recipe.backbone.name,
                           overwrite=True)
        write_text_atomic(self.run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary


def pretrain(recipe: Recipe, run_dir: str | Path, **options: Any) -> dict[str, Any]:
    """Pretrain ``recipe`` (``method.name: mae``) into ``run_dir``; returns the summary."""
    return Pretrainer(recipe, run_dir, **options).fit()
