"""``pointgst.load_adapter``: rebuild a saved model, for any method (``docs/design.md``, "Saving").

A folder written by a model's ``save_pretrained`` is either a peft adapter (``adapter_config.json``: every method
but ``full``) or a weights folder (``config.json`` with ``model.safetensors``: ``full``, and ``linear`` from pointgst
0.1.0). The backbone it was trained on is rebuilt from what the folder records, then the saved tensors are loaded
strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from torch import nn

from pointgst.atomic import read_manifest
from pointgst.backbones import PointBackbone, create_backbone
from pointgst.backbones.checkpoint import CONFIG_FILE, FOLDER_FORMAT, read_checkpoint
from pointgst.backbones.factory import architecture_task, folder_config, parse_name
from pointgst.backbones.pretrained import PRETRAINED_CFGS, hub_snapshot
from pointgst.errors import CheckpointError
from pointgst.tuner import PointPeftModel
from pointgst.tuner.keys import head_classes
from pointgst.tuner.peft_model import ADAPTER_WEIGHTS, warn_unsaved_cls_tokens
from pointgst.wrapping import wrap

PEFT_CONFIG = "adapter_config.json"


def resolve_adapter_dir(adapter: str | os.PathLike) -> Path:
    """A local folder for a folder path or a hub repo id (downloaded, or from the cache offline)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    text = str(adapter)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if path.exists() or not looks_like_repo:
        raise FileNotFoundError(f"{text} is not an adapter folder ({'a file' if path.exists() else 'no such folder'}); "
                                "pass the folder a model's save_pretrained wrote, or a hub repo id org/name")
    return hub_snapshot(text)


def load_adapter(adapter: str | os.PathLike, backbone_or_name: nn.Module | str | None = None, *,
                 adapter_name: str = "default", is_trainable: bool = False, **backbone_kwargs: Any) -> nn.Module:
    """Load what a model's ``save_pretrained`` wrote (folder or hub repo id), for any method; returns the model.

    backbone_or_name: the backbone the adapter was trained on, or where its weights come from (a pretrained tag,
        weights file or folder, hub repo id); by default what the folder records. The backbone is rebuilt with the
        architecture and grouping options the folder records (``backbone_kwargs`` override them).
    """
    folder = resolve_adapter_dir(adapter)
    own_manifest = read_manifest(folder)
    manifest = own_manifest or read_manifest(folder.parent)  # an adapter saved beside others: its parent's
    latest = own_manifest.get("format")  # a folder saved into more than once: its latest save counts
    if (folder / PEFT_CONFIG).is_file() and latest != FOLDER_FORMAT:
        config = _read_peft_config(folder)
        backbone = backbone_or_name
        if isinstance(backbone, nn.Module):
            _check_backbone(folder, backbone, config)
        else:
            # pointgst's own config records the backbone; peft's (LoRA) does not, the folder's manifest does
            recorded = getattr(config, "backbone_options", None) or manifest.get("backbone_options") or {}
            options = {**recorded, **backbone_kwargs}
            source = backbone or config.base_model_name_or_path
            num_classes = options.pop("num_classes", None) or _saved_head_classes(folder)
            backbone = _rebuild(folder, source, options.pop("architecture", None), num_classes, options)
        return PointPeftModel.from_pretrained(backbone, str(folder), adapter_name=adapter_name,
                                              is_trainable=is_trainable, config=config)
    if folder_config(folder):
        return _load_weights_folder(folder, backbone_or_name)
    raise CheckpointError(f"{folder} holds neither a peft adapter ({PEFT_CONFIG}) nor a pointgst weights folder "
                          f"({CONFIG_FILE}); pass the folder a model's save_pretrained wrote")


def _read_peft_config(folder: Path):
    try:  # the config class's own from_pretrained, which migrates older layouts (PointGSTConfig.check_kwargs)
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftConfig._get_peft_type(str(folder))].from_pretrained(str(folder))
    except (ValueError, KeyError, TypeError, OSError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{folder / PEFT_CONFIG} is not a readable adapter config ({detail}); save the model "
                              "again") from None


def _check_backbone(folder: Path, backbone: nn.Module, config: Any) -> None:
    recorded = (getattr(config, "backbone_options", None) or {}).get("architecture")
    actual = getattr(backbone, "architecture", None)
    if recorded and actual and recorded != actual:
        raise CheckpointError(f"{folder} holds an adapter for {recorded}, but the backbone passed is {actual}; pass "
                              f"a {recorded} backbone (or none: load_adapter rebuilds it)")


def _saved_head_classes(folder: Path) -> int | None:
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as handle:
            return head_classes((key, handle.get_slice(key).get_shape()) for key in handle.keys())
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); save the model again") from None


def _rebuild(folder: Path, source: str | None, architecture: str | None, num_classes: int | None,
             options: dict[str, Any]) -> PointBackbone:
    """The backbone a folder was trained on, from its recorded weights source."""
    if not source:
        raise ValueError(f"{folder} does not record its backbone's weights (it was trained on a randomly "
                         "initialised backbone); pass the backbone: load_adapter(path, backbone)")
    if source in PRETRAINED_CFGS:  # a segmentation adapter records a classification tag's weights
        task = architecture_task(architecture) if architecture else "classification"
        return create_backbone(source, pretrained=True, num_classes=num_classes, task=task, **options)
    relative = folder / source  # a converted official checkpoint records its backbone folder relatively
    pretrained = str(relative.resolve()) if not Path(source).is_absolute() and relative.exists() else source
    architecture = architecture or folder_config(Path(pretrained)).get("architecture")
    if architecture is None:
        raise ValueError(f"{folder} does not record its backbone architecture; pass the backbone: "
                         "load_adapter(path, create_backbone(...))")
    parse_name(architecture)
    return create_backbone(architecture, pretrained=pretrained, num_classes=num_classes, **options)


def _load_weights_folder(folder: Path, backbone: nn.Module | str | None) -> nn.Module:
    """A weights folder: full fine-tuning, or a 0.1.0 linear-probing head (migrated to today's ``linear``)."""
    config = folder_config(folder)
    options = config.get("backbone_options") or {}
    if (config.get("tuning_method") or "full") == "full":
        model = create_backbone(config["architecture"], pretrained=folder, **options)
        model.requires_grad_(True)
        model.tuning_method = "full"
        return model
    if not isinstance(backbone, nn.Module):
        backbone = _rebuild(folder, backbone or config.get("base"), config["architecture"], config["num_classes"],
                            options)
    head = read_checkpoint(folder / "model.safetensors")
    model = wrap(backbone, method="linear")
    for name in backbone.head_modules:
        prefix = name + "."
        model.base_model.model.get_submodule(name).modules_to_save["default"].load_state_dict(
            {k[len(prefix):]: v for k, v in head.items() if k.startswith(prefix)})
    warn_unsaved_cls_tokens(folder, "linear")
    return model


__all__ = ["load_adapter", "resolve_adapter_dir"]
