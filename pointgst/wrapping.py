"""One-call entry points: ``wrap`` a backbone with a tuning method, ``load_adapter`` a saved one."""

import os
from pathlib import Path
from typing import Any

from torch import nn

from pointgst.backbones import PointBackbone, create_backbone

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def wrap(backbone_or_name: PointBackbone | str, method: str = "pcsa", *, num_classes: int | None = None,
         pretrained: bool | str | os.PathLike | None = None, adapter_name: str = "default", **options: Any):
    """Freeze a backbone and inject a tunable module in every block; returns a ``peft.PeftModel``.

    backbone_or_name: a backbone, or a name for :func:`pointgst.create_backbone` (a tag such as
        ``point_mae.pretrain`` loads its pretrained weights unless ``pretrained=False``).
    method: ``"pcsa"`` (PointGST).
    num_classes: head size; a backbone whose head differs gets a fresh head.
    options: :class:`~pointgst.tuner.PointGSTConfig` fields, e.g. ``preset="official"``, ``rank=16``; with a
        name, also backbone options such as ``num_group=128`` (2048-point clouds).
    """
    from dataclasses import fields

    from peft import get_peft_model

    from pointgst.tuner import PointGSTConfig

    config_fields = {f.name for f in fields(PointGSTConfig)}
    config = PointGSTConfig(method=method, **{k: v for k, v in options.items() if k in config_fields})
    backbone_options = {k: v for k, v in options.items() if k not in config_fields}
    if isinstance(backbone_or_name, str):
        if pretrained is None:
            pretrained = "." in backbone_or_name
        if config.preset == "official":
            backbone_options.setdefault("skip_near_origin", True)
        backbone = create_backbone(backbone_or_name, pretrained=pretrained, num_classes=num_classes,
                                   **backbone_options)
    elif backbone_options:
        raise TypeError(f"unknown options {sorted(backbone_options)}: not PointGSTConfig fields (backbone options "
                        "only apply when wrap() builds the backbone from a name)")
    elif isinstance(backbone_or_name, PointBackbone):
        backbone = backbone_or_name
        if num_classes is not None and num_classes != backbone.num_classes:
            backbone.reset_classifier(num_classes)
    else:
        raise TypeError(f"wrap() takes a pointgst backbone or its name, got {type(backbone_or_name).__name__}")
    return get_peft_model(backbone, config, adapter_name=adapter_name)


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
    """Load a saved adapter (folder or hub repo id) onto its backbone; returns a ``peft.PeftModel``.

    backbone_or_name: the backbone the adapter was trained on, or where its weights come from (a pretrained
        tag, weights file or folder, hub repo id); by default the ``base_model_name_or_path`` recorded in the
        adapter config. The backbone is rebuilt with the architecture and grouping options the adapter records.
    """
    from peft import PeftConfig, PeftModel

    from pointgst.backbones import PRETRAINED_CFGS

    folder = resolve_adapter_dir(adapter)
    backbone = backbone_or_name
    if not isinstance(backbone, nn.Module):
        config = PeftConfig.from_pretrained(str(folder))
        options = {**(getattr(config, "backbone_options", None) or {}), **backbone_kwargs}
        architecture = options.pop("architecture", None)
        source = backbone or config.base_model_name_or_path
        if not source:
            raise ValueError(f"{folder} does not record its backbone's weights; pass the backbone: "
                             "load_adapter(path, backbone)")
        if source in PRETRAINED_CFGS:
            architecture, pretrained = source, True
        else:
            relative = folder / source  # a converted PointGST checkpoint records its backbone folder relatively
            pretrained = str(relative.resolve()) if not Path(source).is_absolute() and relative.exists() else source
        if architecture is None:
            raise ValueError(f"{folder} does not record its backbone architecture; pass the backbone: "
                             "load_adapter(path, create_backbone(...))")
        backbone = create_backbone(architecture, pretrained=pretrained, num_classes=adapter_num_classes(folder),
                                   **options)
    return PeftModel.from_pretrained(backbone, str(folder), adapter_name=adapter_name, is_trainable=is_trainable)
