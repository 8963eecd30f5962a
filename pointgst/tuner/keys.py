"""The one place that knows how the weights of a wrapped model are named.

A peft-wrapped backbone names a tensor ``base_model.model.<backbone path>`` plus, for tuner-owned tensors, the tuner
layer's per-adapter container: ``blocks.blocks.3.ffn_branch.pointgst_module.default.up.weight`` (a parallel module),
``special_tokens.pointgst_module.default.cls_token`` (an adapter's cls-token copy), ``classify.pointgst_module...``
or a segmentation model's ``segment.pointgst_module...`` (a head module), ``pipeline.pointgst_module...`` (a
``forward`` method's module),
``cls_head_finetune.modules_to_save.default.0.weight`` (peft's trained head copy), ``...lora_A.default.weight`` (peft
LoRA). The report, the optimizer groups, the run files and the official-checkpoint converter read names only through
these functions.
"""

import re
from typing import Iterable

PEFT_PREFIX = "base_model.model."
ADAPTER_CONTAINER = "pointgst_module"
_OWN = f".{ADAPTER_CONTAINER}."

_TO_OFFICIAL = [
    (re.compile(rf"^{re.escape(PEFT_PREFIX)}"), ""),
    (re.compile(rf"^special_tokens\.{ADAPTER_CONTAINER}\.[^.]+\."), ""),  # an adapter's cls_token / cls_pos copy
    (re.compile(rf"\.(ffn|attn)_branch\.{ADAPTER_CONTAINER}\.[^.]+\."), ".gft_adapter."),  # official PCSA name
    (re.compile(r"\.modules_to_save\.[^.]+\."), "."),  # peft's trained copy of a module, per adapter
    (re.compile(r"\.original_module\."), "."),
]
_HEAD_OUTPUT = re.compile(r"(^|\.)cls_head_finetune\.8\.weight$")


def backbone_name(name: str) -> str:
    """``name`` without peft's ``base_model.model.`` prefix."""
    return name.removeprefix(PEFT_PREFIX)


def official_name(name: str) -> str:
    """The name a tensor has in the official model (peft wrapping removed), e.g.
    ``base_model.model.special_tokens.pointgst_module.default.cls_pos`` -> ``cls_pos`` and
    ``base_model.model.blocks.blocks.3.ffn_branch.pointgst_module.default.up.weight`` ->
    ``blocks.blocks.3.gft_adapter.up.weight``."""
    for pattern, replacement in _TO_OFFICIAL:
        name = pattern.sub(replacement, name)
    return name


def is_adapter_tensor(name: str) -> bool:
    """Whether a tensor belongs to a pointgst tuner layer's per-adapter modules (trained or not: a frozen cls-token
    copy or official BatchNorm statistics belong to the adapter too)."""
    return _OWN in f".{name}"


def part_of(name: str) -> str:
    """The part of the model a trainable tensor is reported under."""
    name = backbone_name(name)
    if ".modules_to_save." in name:
        return name.split(".modules_to_save.")[0]
    if name.startswith(f"special_tokens{_OWN}"):
        return "cls token + cls position"
    if name.startswith(f"pipeline{_OWN}"):  # a forward method's module: by its own top-level parts
        return "method: " + name.split(_OWN)[1].split(".")[1]
    if _OWN in name:
        branch = name.split(_OWN)[0].rpartition(".")[2]
        return "head (replaces the original)" if branch in ("classify", "segment") else f"adapters on {branch}"
    if ".lora_" in name:
        return "lora"
    return name.split(".")[0]


def is_backbone_copy(name: str) -> bool:
    """Whether a tensor of a wrapped model is one of peft's or pointgst's per-adapter copies or additions (not counted
    among the backbone's own parameters)."""
    return is_adapter_tensor(name) or ".modules_to_save." in name or ".lora_" in name


def head_classes(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> int | None:
    """The number of classes of the official head among ``(name, shape)`` pairs (any wrapping), or None."""
    for name, shape in shapes:
        if _HEAD_OUTPUT.search(official_name(name)):
            return int(shape[0])
    return None
