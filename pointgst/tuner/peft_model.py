"""``PointPeftModel``: peft's ``PeftModel`` with pointgst's save and load (``docs/design.md``, "Saving").

- Saves go through :func:`pointgst.atomic.write_folder`: atomic, never touching a file pointgst did not write.
- Everything the model's outputs depend on is saved. peft saves the adapter's own tensors; a backbone tensor that
  the backbone's weights source does not provide (a pretraining checkpoint has no cls token or position) and that
  no adapter tensor replaces goes to ``backbone_state.safetensors`` (for LoRA: the cls token and position).
- The weights record their method (safetensors metadata) and the folder a manifest (``pointgst.json``); loading
  checks both and requires every adapter tensor, so weights of another method are an error, not a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import ModulesToSaveWrapper
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pointgst.atomic import read_manifest, write_folder
from pointgst.errors import CheckpointError
from pointgst.version import __version__

from .keys import backbone_name, is_backbone_copy, official_name

ADAPTER_FORMAT = "pointgst-adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BACKBONE_STATE = "backbone_state.safetensors"
METHOD_KEY = "pointgst_method"


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer without trainable parameters in eval mode (its statistics stay as loaded)."""
    for module in model.modules():
        frozen = not any(p.requires_grad for p in module.parameters())
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()


def warn_unsaved_cls_tokens(folder: Path, method: str) -> None:
    """The warning for a model saved by pointgst 0.1.0 without the cls token and position it depends on."""
    warnings.warn(f"{folder} was saved by pointgst 0.1.0, which did not save the cls token and position of a {method} "
                  "model: they come from the backbone as built now. To reproduce the trained model, call "
                  "torch.manual_seed(SEED) before pointgst.load_adapter, with SEED the run's train.seed (0 unless the "
                  "recipe set it); pointgst eval does this for a run folder", stacklevel=3)


def _check_method(folder: Path) -> None:
    """Refuse weights (adapter or backbone state) that record another method than the folder's config."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return  # peft's own reading of the config reports it
    method = config.get("method") or str(config.get("peft_type", "")).lower()
    for path in (folder / ADAPTER_WEIGHTS, folder / BACKBONE_STATE):
        if not path.is_file():
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                saved = (handle.metadata() or {}).get(METHOD_KEY)
        except (SafetensorError, OSError):
            continue  # unreadable: peft's load reports it, naming the file
        if saved is not None and saved != method:
            raise CheckpointError(f"{path} holds {saved} weights but {folder / 'adapter_config.json'} describes a "
                                  f"{method} adapter; the folder mixes two saves: save the model again")


def method_name(config: Any) -> str:
    """The pointgst method a peft config stands for: its ``method``, or ``lora`` for peft's ``LoraConfig``."""
    return getattr(config, "method", None) or str(config.peft_type).rpartition(".")[2].lower()


class PointPeftModel(PeftModel):
    """What ``pointgst.wrap`` returns for every adapter method (a ``peft.PeftModel``); see the module docstring."""

    def train(self, mode: bool = True) -> "PointPeftModel":
        """Train mode, except that frozen BatchNorm layers stay in eval mode (their statistics would otherwise drift,
        and they are not saved), unless an adapter follows the official code (``bn_stats="update"``)."""
        super().train(mode)
        if mode and all(getattr(config, "bn_stats", "frozen") == "frozen" for config in self.peft_config.values()):
            keep_frozen_norms_in_eval(self)
        return self

    def unload(self) -> nn.Module:
        """The backbone as it was before wrapping: adapters removed, and the original of every module peft trained
        as a copy (the head) put back (peft's own ``unload`` would keep the trained copy)."""
        model = self.base_model.model
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, module.original_module)
        return self.base_model.unload()

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False,
                        selected_adapters: list[str] | None = None, **kwargs: Any) -> Path:
        """Save the adapters into ``save_directory`` (the default adapter at its top, others in subfolders named
        after them, as peft does). A folder holding files pointgst did not write needs ``overwrite=True``, and even
        then only pointgst's files are written. Returns the folder."""
        kwargs.setdefault("save_embedding_layers", False)  # point backbones have none; avoids asking the hub
        names = selected_adapters or list(self.peft_config)

        def fill(tmp: Path) -> dict[str, Any]:
            PeftModel.save_pretrained(self, str(tmp), selected_adapters=names, **kwargs)
            for name in names:
                folder = tmp if name == "default" else tmp / name
                self._tag_weights(folder, name)
                extra = self.unsaved_backbone_state(name)
                if extra:
                    save_file(extra, str(folder / BACKBONE_STATE),
                              metadata={"format": "pt", METHOD_KEY: method_name(self.peft_config[name])})
            backbone = self.get_base_model()
            return {"format": ADAPTER_FORMAT, "pointgst_version": __version__,
                    "methods": {name: method_name(self.peft_config[name]) for name in names},
                    "backbone_options": {"architecture": backbone.architecture, "num_classes": backbone.num_classes,
                                         **backbone.grouping_options}}

        return write_folder(save_directory, fill, overwrite=overwrite)

    def _tag_weights(self, folder: Path, adapter_name: str) -> None:
        """Record the method in the adapter weights' metadata."""
        path = folder / ADAPTER_WEIGHTS
        tensors = load_file(str(path))
        method = method_name(self.peft_config[adapter_name])
        save_file(tensors, str(path), metadata={"format": "pt", METHOD_KEY: method})

    def unsaved_backbone_state(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """Backbone tensors the model depends on that neither the backbone's weights source provides nor the adapter
        replaces (empty for a backbone without a recorded source: loading then needs that backbone itself)."""
        backbone = self.get_base_model()
        report = getattr(backbone, "load_report", None)
        if report is None:
            return {}
        state = self.state_dict()
        covered = {official_name(k) for k in state if is_backbone_copy(k) and f".{adapter_name}." in f".{k}."}
        own_head = (".classify.pointgst_module.", ".segment.pointgst_module.", ".pipeline.pointgst_module.")
        if any(marker in k for k in state for marker in own_head):  # the backbone's head is unused
            covered |= {backbone_name(k) for k in backbone.state_dict() if k.startswith(backbone.head_prefixes)}
        own = backbone.state_dict()
        return {key: own[key].detach().contiguous().cpu() for key in report.missing_keys
                if key in own and key not in covered and not key.startswith(backbone.unused_in_forward)}

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False,
                     torch_device: str | None = None, **kwargs: Any):
        """peft's ``load_adapter``, strict: the weights must be of the folder's method and hold every adapter tensor;
        then the backbone tensors saved beside them are loaded."""
        folder = Path(model_id) / (kwargs.get("subfolder") or "") if os.path.isdir(model_id) else None
        if folder is not None:
            _check_method(folder)
        try:
            result = super().load_adapter(model_id, adapter_name, is_trainable=is_trainable,
                                          torch_device=torch_device, **kwargs)
        except SafetensorError as err:
            raise CheckpointError(f"{Path(model_id) / ADAPTER_WEIGHTS} is not a readable safetensors file ({err}); "
                                  "save the model again") from None
        except RuntimeError as err:  # shape mismatches from load_state_dict
            raise CheckpointError(f"the adapter weights in {model_id} do not fit this model: "
                                  f"{str(err).splitlines()[-1].strip()}") from None
        if folder is None:
            return result
        method = method_name(self.peft_config[adapter_name])
        missing = [k for k in result.missing_keys if f".{adapter_name}." in k]  # peft's own filter over-matches
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"{folder / ADAPTER_WEIGHTS} does not hold the tensors of a {method} adapter for this backbone "
                f"({len(missing)} missing, e.g. {missing[:2]}; {len(result.unexpected_keys)} unknown, e.g. "
                f"{result.unexpected_keys[:2]}); its config and weights come from different methods or models")
        legacy = not (read_manifest(folder) or read_manifest(folder.parent))  # written by pointgst 0.1.0
        if legacy and self.unsaved_backbone_state(adapter_name):
            warn_unsaved_cls_tokens(folder, method)
        self._load_backbone_state(folder)
        return result

    def _load_backbone_state(self, folder: Path) -> None:
        path = folder / BACKBONE_STATE
        if not path.is_file():
            return
        state = load_file(str(path))
        backbone = self.get_base_model()
        own = backbone.state_dict()
        bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"{path} does not fit this backbone (e.g. {bad[:2]}); it belongs to another "
                                  "architecture: load the adapter onto the backbone it was trained on")
        backbone.load_state_dict(state, strict=False)
