"""One-call entry points: ``wrap`` a backbone with a tuning method, ``load_adapter`` a saved one.

Methods: ``pcsa`` (PointGST), ``dcnv4``, ``deepla_head``, a parallel module plus a head (``pcsa+deepla_head``) —
all through pointgst's peft method —; ``lora`` (peft's LoRA on the blocks' linear layers and PointGPT's packed
attention projection, plus the head); and the baselines without adapters ``linear`` (head only) and ``full``.
"""

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from pointgst.backbones import PointBackbone, create_backbone
from pointgst.backbones.checkpoint import CONFIG_FILE
from pointgst.backbones.factory import folder_config

ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASELINES = ("linear", "full")
LORA_OPTIONS = {"rank": 8, "alpha": 8, "dropout": 0.0}
METHODS = ("pcsa", "dcnv4", "deepla_head", "pcsa+deepla_head", "dcnv4+deepla_head", "lora", "linear", "full")


def wrap(backbone_or_name: PointBackbone | str, method: str = "pcsa", *, num_classes: int | None = None,
         pretrained: bool | str | os.PathLike | None = None, adapter_name: str = "default", **options: Any):
    """Freeze a backbone and make ``method`` its trainable part; returns a ``peft.PeftModel`` (the backbone itself
    for ``linear`` and ``full``).

    backbone_or_name: a backbone, or a name for :func:`pointgst.create_backbone` (a tag such as
        ``point_mae.pretrain`` loads its pretrained weights unless ``pretrained=False``).
    method: one of :data:`METHODS`.
    num_classes: head size; a backbone whose head differs gets a fresh head.
    options: the method's options (:class:`~pointgst.tuner.PointGSTConfig` fields such as ``preset="official"``
        or ``rank=16``; LoRA: ``rank``, ``alpha``, ``dropout``); with a name, also backbone options such as
        ``num_group=128`` (2048-point clouds).
    """
    from pointgst.tuner import PointGSTConfig

    method_fields = (set(LORA_OPTIONS) if method == "lora" else set() if method in BASELINES
                     else {f.name for f in fields(PointGSTConfig)})
    method_options = {k: v for k, v in options.items() if k in method_fields}
    backbone_options = {k: v for k, v in options.items() if k not in method_fields}
    config = None
    if method not in BASELINES and method != "lora":
        config = PointGSTConfig(method=method, **method_options)
        if config.preset == "official" and isinstance(backbone_or_name, str):
            backbone_options.setdefault("skip_near_origin", True)  # the official CUDA FPS kernel's skip
    backbone = _backbone(backbone_or_name, num_classes, pretrained, backbone_options)
    if method in BASELINES:
        return backbone.set_tuning(method)
    from peft import get_peft_model
    if method == "lora":
        config = _lora_config(backbone, **method_options)
    return get_peft_model(backbone, config, adapter_name=adapter_name)


def check_method_options(method: str, options: dict) -> None:
    """Raise ``ValueError`` for an unknown method or option, before any model is built."""
    from pointgst.tuner import PointGSTConfig

    if method == "lora":
        unknown = set(options) - set(LORA_OPTIONS)
        if unknown:
            raise ValueError(f"unknown lora options {sorted(unknown)}; lora takes {sorted(LORA_OPTIONS)}")
    elif method in BASELINES:
        if options:
            raise ValueError(f"method {method!r} takes no options, got {sorted(options)}")
    else:
        known = {f.name for f in fields(PointGSTConfig)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown {method} options {sorted(unknown)}; see pointgst.tuner.PointGSTConfig")
        PointGSTConfig(method=method, **options)


def _backbone(backbone_or_name: PointBackbone | str, num_classes: int | None, pretrained, options: dict):
    if isinstance(backbone_or_name, str):
        if pretrained is None:
            pretrained = "." in backbone_or_name
        return create_backbone(backbone_or_name, pretrained=pretrained, num_classes=num_classes, **options)
    if not isinstance(backbone_or_name, PointBackbone):
        raise TypeError(f"wrap() takes a pointgst backbone or its name, got {type(backbone_or_name).__name__}")
    if options:
        raise TypeError(f"unknown options {sorted(options)}: not options of this method (backbone options only "
                        "apply when wrap() builds the backbone from a name)")
    if num_classes is not None and num_classes != backbone_or_name.num_classes:
        backbone_or_name.reset_classifier(num_classes)
    return backbone_or_name


def _lora_config(backbone: PointBackbone, rank: int = 8, alpha: float = 8, dropout: float = 0.0):
    """peft LoRA on the transformer blocks' linear layers (PointGPT: the packed ``nn.MultiheadAttention`` too) and
    a trainable head."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=backbone.lora_targets,
                      modules_to_save=list(backbone.head_modules))


def resolve_adapter_dir(adapter: str | os.PathLike) -> Path:
    """A local adapter folder for a folder path or a hub repo id (downloaded, or from the cache offline)."""
    path = Path(adapter).expanduser()
    if path.is_dir():
        return path
    from pointgst.backbones.pretrained import hub_snapshot
    return hub_snapshot(str(adapter))


def adapter_num_classes(adapter_dir: Path) -> int | None:
    """The head size stored in an adapter folder's weights, or None if it holds no head."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith("cls_head_finetune.8.weight"):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def load_adapter(adapter: str | os.PathLike, backbone_or_name: nn.Module | str | None = None, *,
                 adapter_name: str = "default", is_trainable: bool = False, **backbone_kwargs: Any):
    """Load what :meth:`save_pretrained` wrote (folder or hub repo id) for any method; returns the model.

    backbone_or_name: the backbone the adapter was trained on, or where its weights come from (a pretrained
        tag, weights file or folder, hub repo id); by default what the adapter folder records. The backbone is
        rebuilt with the architecture and grouping options the folder records.
    """
    folder = resolve_adapter_dir(adapter)
    if (folder / CONFIG_FILE).is_file() and not (folder / "adapter_config.json").is_file():
        return _load_baseline(folder, backbone_or_name)
    from peft import PeftConfig, PeftModel

    backbone = backbone_or_name
    if not isinstance(backbone, nn.Module):
        config = PeftConfig.from_pretrained(str(folder))
        options = {**(getattr(config, "backbone_options", None) or {}), **backbone_kwargs}
        source = backbone or config.base_model_name_or_path
        num_classes = options.pop("num_classes", None) or adapter_num_classes(folder)
        backbone = _rebuild(folder, source, options.pop("architecture", None), num_classes, options)
    return PeftModel.from_pretrained(backbone, str(folder), adapter_name=adapter_name, is_trainable=is_trainable)


def _rebuild(folder: Path, source: str | None, architecture: str | None, num_classes: int | None,
             options: dict) -> PointBackbone:
    """The backbone an adapter folder was trained on, from its recorded weights source."""
    from pointgst.backbones import PRETRAINED_CFGS

    if not source:
        raise ValueError(f"{folder} does not record its backbone's weights (it was trained on a randomly "
                         "initialised backbone); pass the backbone: load_adapter(path, backbone)")
    if source in PRETRAINED_CFGS:
        return create_backbone(source, pretrained=True, num_classes=num_classes, **options)
    relative = folder / source  # a converted PointGST checkpoint records its backbone folder relatively
    pretrained = str(relative.resolve()) if not Path(source).is_absolute() and relative.exists() else source
    architecture = architecture or folder_config(Path(pretrained)).get("architecture")
    if architecture is None:
        raise ValueError(f"{folder} does not record its backbone architecture; pass the backbone: "
                         "load_adapter(path, create_backbone(...))")
    return create_backbone(architecture, pretrained=pretrained, num_classes=num_classes, **options)


def _load_baseline(folder: Path, backbone: nn.Module | str | None) -> PointBackbone:
    """A folder written by ``PointBackbone.save_pretrained`` after ``linear`` or ``full`` tuning."""
    config = folder_config(folder)
    if not config:
        raise ValueError(f"{folder} holds neither a peft adapter nor a pointgst weights folder")
    method = config.get("tuning_method") or "full"
    options = config.get("backbone_options") or {}
    if method == "full":
        model = create_backbone(config["architecture"], pretrained=folder, **options)
    else:
        if not isinstance(backbone, nn.Module):
            backbone = _rebuild(folder, backbone or config.get("base"), config["architecture"],
                                config["num_classes"], options)
        from pointgst.backbones.checkpoint import read_checkpoint
        head = read_checkpoint(folder / "model.safetensors")
        missing = set(head) - set(backbone.state_dict())
        if missing:
            raise ValueError(f"{folder}: the saved head does not fit the backbone ({sorted(missing)[:3]})")
        backbone.load_state_dict(head, strict=False)
        model = backbone
    return model.set_tuning(method)
