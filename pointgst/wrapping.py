"""``pointgst.wrap``: freeze a backbone and make a registered method its trainable part, in one call."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from pointgst.adapters import FULL, LORA, METHODS
from pointgst.adapters.registry import describe_options
from pointgst.backbones import PointBackbone, create_backbone
from pointgst.errors import UnknownNameError
from pointgst.tuner import PointGSTConfig, PointPeftModel
from pointgst.tuner.config import TUNER_ATTACHES

#: options of the tuner itself (pointgst's methods only), beside each method's own options
TUNER_OPTIONS = ("placement", "bn_stats", "train_cls_tokens", "preset")
#: options of the backbone, accepted when ``wrap`` builds it from a name
BACKBONE_OPTIONS = ("num_group", "group_size", "drop_path_rate", "skip_near_origin", "task", "fetch_layers")


def wrap(backbone_or_name: PointBackbone | str, method: str = "pcsa", *, num_classes: int | None = None,
         pretrained: bool | str | os.PathLike | None = None, adapter_name: str = "default",
         **options: Any) -> nn.Module:
    """Freeze a backbone and make ``method`` its trainable part.

    backbone_or_name: a backbone, or a name for :func:`pointgst.create_backbone` (a tag such as
        ``point_mae.pretrain`` loads its pretrained weights unless ``pretrained=False``).
    method: one of :func:`pointgst.adapters.list_methods` (``pcsa``, ``dcnv4``, ``deepla_head``, ``lora``,
        ``linear``, ``full``, or a parallel module and a head joined by ``+``).
    num_classes: head size; a backbone whose head differs gets a fresh head.
    options: the method's options (its config's fields, e.g. ``rank=16``), the tuner's (``placement``, ``bn_stats``,
        ``train_cls_tokens``, ``preset="official"``: every official-code behaviour; options given explicitly win
        over the preset) and, when ``wrap`` builds the backbone from a name, its options (``num_group=128`` ...;
        ``task="segmentation"``: the backbone's part-segmentation model, see :func:`pointgst.create_backbone`).

    Returns a ``peft.PeftModel`` (:class:`~pointgst.tuner.PointPeftModel`), or for ``full`` the backbone itself.
    """
    built_here = isinstance(backbone_or_name, str)
    specs, method_options, tuner_options, backbone_options = split_options(method, options, built_here=built_here)
    config = None
    if specs[0].attaches in TUNER_ATTACHES:
        config = PointGSTConfig(method=method, options=method_options, **tuner_options)
        if config.preset == "official" and built_here:
            backbone_options.setdefault("skip_near_origin", True)  # the official CUDA FPS kernel's skip
    else:
        configs = METHODS.configs(method, method_options)  # validates before the backbone is built
    backbone = _backbone(backbone_or_name, num_classes, pretrained, backbone_options)
    if specs[0].attaches == FULL:
        backbone.requires_grad_(True)
        backbone.tuning_method = "full"
        return backbone
    if specs[0].attaches == LORA:
        config = specs[0].build(backbone, configs[specs[0].name])
    config.base_model_name_or_path = backbone.name_or_path
    return PointPeftModel(backbone, config, adapter_name=adapter_name)


def split_options(method: str, options: dict[str, Any], *, built_here: bool
                  ) -> tuple[list, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(method specs, method options, tuner options, backbone options)`` of ``wrap``'s keyword options; an option
    none of them takes is an error listing what the method takes."""
    specs = METHODS.parts(method)
    method_names = {name for spec in specs for name in spec.option_names}
    by_tuner = all(spec.attaches in TUNER_ATTACHES for spec in specs)
    method_options = {k: v for k, v in options.items() if k in method_names}
    tuner_options = {k: v for k, v in options.items() if k in TUNER_OPTIONS and by_tuner}
    backbone_options = {k: v for k, v in options.items() if k not in method_options and k not in tuner_options}
    unknown = [k for k in backbone_options if not (built_here and k in BACKBONE_OPTIONS)]
    if unknown:
        raise UnknownNameError(_unknown_options_message(method, specs, unknown, by_tuner, built_here))
    return specs, method_options, tuner_options, backbone_options


def check_options(method: str, options: dict[str, Any]) -> None:
    """Validate a method's options (a recipe's ``method.options``) without building anything."""
    specs, method_options, tuner_options, _ = split_options(method, options, built_here=False)
    if specs[0].attaches in TUNER_ATTACHES:
        PointGSTConfig(method=method, options=dict(method_options), **tuner_options)
    else:
        METHODS.configs(method, method_options)


def _unknown_options_message(method: str, specs: list, unknown: list[str], by_tuner: bool, built_here: bool) -> str:
    known = "; ".join(f"{spec.name}: {describe_options(spec)}" for spec in specs)
    extra = []
    if by_tuner:
        extra.append(f"the tuner's {', '.join(TUNER_OPTIONS)}")
    extra.append(f"the backbone's {', '.join(BACKBONE_OPTIONS)}" if built_here else
                 "backbone options only when wrap() builds the backbone from a name")
    return (f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, sorted(unknown)))} for method "
            f"{method!r}. Its options: {known}; also {'; '.join(extra)}")


def _backbone(backbone_or_name: PointBackbone | str, num_classes: int | None, pretrained: Any,
              options: dict[str, Any]) -> PointBackbone:
    if isinstance(backbone_or_name, str):
        if pretrained is None:
            pretrained = "." in backbone_or_name
        return create_backbone(backbone_or_name, pretrained=pretrained, num_classes=num_classes, **options)
    if not isinstance(backbone_or_name, PointBackbone):
        raise TypeError(f"wrap() takes a pointgst backbone or its name, got {type(backbone_or_name).__name__}")
    if num_classes is not None and num_classes != backbone_or_name.num_classes:
        backbone_or_name.reset_classifier(num_classes)
    return backbone_or_name
