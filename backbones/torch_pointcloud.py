"""Convert ``torch-pointcloud`` Point-MAE / PointGPT weights (the third-party Hugging Face Hub re-publications of the
official checkpoints) to the official key layout, so the official loaders apply unchanged.

The supported layouts, the full key mapping, the tensor changes (1x1 ``Conv1d`` weights stored 2-D), the keys without
a counterpart (PointGPT's extractor ``increase_dim``) and the sources it was derived from are in
``docs/checkpoints.md`` §7. Any key outside the supported layouts raises :class:`TorchPointcloudLayoutError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import Tensor

from .torch_pointcloud_keys import (
    _MAX_REPORTED,
    _PGPT_WIDTH_TO_ARCH,
    _SPECS,
    _TOKEN_RE,
    ARCHITECTURES,
    Kind,
    TorchPointcloudLayoutError,
    _check_architecture,
    _check_kind,
    _rules,
    official_keys_without_source,
    torch_pointcloud_key_table,
)

__all__ = [
    "ARCHITECTURES",
    "TorchPointcloudLayoutError",
    "convert_torch_pointcloud_state_dict",
    "detect_torch_pointcloud_architecture",
    "detect_torch_pointcloud_kind",
    "looks_like_torch_pointcloud",
    "official_keys_without_source",
    "torch_pointcloud_key_table",
]



# --------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------

# PyG ``MLP`` sub-module names never occur in the official models; the patch embedder is present in all four
# supported torch-pointcloud classes, the transformer MLPs in every backbone.
_SIGNATURE_RE = re.compile(
    r"^(?:MAE_encoder\.)?encoder\.(?:local|global)_mlp\.lins\.\d+\.weight$"
    r"|^(?:MAE_encoder\.blocks\.|MAE_decoder\.|blocks\.|generator_blocks\.)(?:blocks\.|layers\.)?"
    r"\d+\.mlp\.lins\.\d+\.weight$"
)


def looks_like_torch_pointcloud(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` uses torch-pointcloud's Point-MAE/PointGPT key names (cheap, keys only).

    True when a key of the library's PyG-style patch embedder (``encoder.local_mlp.lins.0.weight``, also under
    ``MAE_encoder.``) or of its transformer MLPs (``blocks.blocks.0.mlp.lins.0.weight``,
    ``blocks.layers.0.mlp.lins.0.weight``, ...) is present. The official layouts never contain these names.
    """
    return any(isinstance(k, str) and _SIGNATURE_RE.match(k) for k in state_dict)


def detect_torch_pointcloud_kind(state_dict: Mapping[str, object], architecture: str) -> Kind:
    """``pretrain`` or ``finetune`` for a torch-pointcloud state dict of the given architecture (keys only)."""
    _check_architecture(architecture)
    keys = [k for k in state_dict if isinstance(k, str)]
    if architecture == "point_mae":
        pretrain = any(k == "mask_token" or k.startswith(("MAE_encoder.", "MAE_decoder.")) for k in keys)
        return "pretrain" if pretrain else "finetune"
    finetune = any(k in ("cls_token", "cls_pos") or k.startswith(("head.", "cls_norm.")) for k in keys)
    return "finetune" if finetune else "pretrain"


def _first_dim(state_dict: Mapping[str, object], key: str) -> int | None:
    value = state_dict.get(key)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return int(shape[0])


def detect_torch_pointcloud_architecture(state_dict: Mapping[str, object]) -> str | None:
    """Guess ``point_mae`` / ``pointgpt_{s,b,l}`` from a torch-pointcloud state dict, or ``None``.

    PointGPT is recognised by ``blocks.layers.*`` and sized by the width of ``blocks.ln_f.weight``; Point-MAE by
    ``blocks.blocks.*`` or ``MAE_encoder.*``. Returns ``None`` when the dict does not look like either.
    """
    if not looks_like_torch_pointcloud(state_dict):
        return None
    keys = [k for k in state_dict if isinstance(k, str)]
    if any(k.startswith("blocks.layers.") for k in keys):
        width = _first_dim(state_dict, "blocks.ln_f.weight") or _first_dim(state_dict, "blocks.sos")
        return _PGPT_WIDTH_TO_ARCH.get(width) if width is not None else None
    if any(k.startswith(("blocks.blocks.", "MAE_encoder.")) for k in keys):
        return "point_mae"
    return None


# --------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------


def _fill(template: str, match: re.Match[str]) -> str:
    groups = match.groupdict()
    return _TOKEN_RE.sub(lambda m: groups[m.group(1)], template)


def _preview(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_REPORTED])
    more = f" (and {len(keys) - _MAX_REPORTED} more)" if len(keys) > _MAX_REPORTED else ""
    return shown + more


def _to_conv1d(key: str, value: Tensor) -> Tensor:
    if value.dim() == 2:
        return value.unsqueeze(-1)
    if value.dim() == 3 and value.shape[-1] == 1:
        return value
    raise TorchPointcloudLayoutError(
        f"Key {key!r} has shape {tuple(value.shape)}; expected a 2-D Linear weight (or a 3-D Conv1d weight with "
        "kernel size 1)."
    )


def _validate_sizes(converted: Mapping[str, Tensor], architecture: str, kind: Kind) -> None:
    spec = _SPECS[architecture]
    if architecture == "point_mae":
        width_keys = ("norm.weight",) if kind == "finetune" else ("MAE_encoder.norm.weight", "mask_token")
        stacks = (
            {"blocks.blocks.": spec.depth}
            if kind == "finetune"
            else {"MAE_encoder.blocks.blocks.": spec.depth, "MAE_decoder.blocks.": spec.decoder_depth}
        )
    else:
        out = "" if kind == "finetune" else "GPT_Transformer."
        width_keys = (f"{out}blocks.ln_f.weight", f"{out}blocks.sos", f"{out}sos_pos")
        stacks = {f"{out}blocks.layers.": spec.depth, f"{out}generator_blocks.layers.": spec.decoder_depth}

    for key in width_keys:
        if key in converted:
            width = int(converted[key].shape[-1])
            if width != spec.width:
                raise TorchPointcloudLayoutError(
                    f"{key!r} has width {width}, but {architecture!r} has width {spec.width}: the file is not in "
                    f"the expected torch-pointcloud {architecture} layout."
                )
    for prefix, depth in stacks.items():
        indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in converted if k.startswith(prefix)}
        if indices and max(indices) >= depth:
            raise TorchPointcloudLayoutError(
                f"Found block index {max(indices)} under {prefix!r}, but {architecture!r} has {depth} blocks there: "
                f"the file is not in the expected torch-pointcloud {architecture} layout."
            )


def convert_torch_pointcloud_state_dict(
    state_dict: Mapping[str, Tensor],
    architecture: str,
    *,
    kind: Kind | None = None,
) -> dict[str, Tensor]:
    """Map a torch-pointcloud ``model.safetensors`` state dict to the official key layout.

    Args:
        state_dict: Tensors as read from the hub file (e.g. ``safetensors.torch.load_file``).
        architecture: ``point_mae``, ``pointgpt_s``, ``pointgpt_b`` or ``pointgpt_l``.
        kind: ``finetune`` or ``pretrain``; detected from the keys when omitted
            (:func:`detect_torch_pointcloud_kind`).

    Returns:
        A new dict in the official layout (see the module docstring for the target of each kind). Tensors are
        shared with the input except Conv1d weights, which are 3-D views (``unsqueeze(-1)``) of the 2-D inputs.
        Official keys the file cannot provide (:func:`official_keys_without_source`) are absent.

    Raises:
        ValueError: Unknown ``architecture`` or ``kind``.
        TorchPointcloudLayoutError: Keys that the layout does not contain (the first few are named), two keys
            landing on the same official key, or widths/depths that do not match ``architecture``.
    """
    _check_architecture(architecture)
    if kind is None:
        kind = detect_torch_pointcloud_kind(state_dict, architecture)
    _check_kind(kind)
    rules = _rules(architecture, kind)

    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    collisions: list[str] = []
    for key, value in state_dict.items():
        for rule in rules:
            match = rule.pattern.match(key) if isinstance(key, str) else None
            if match is None:
                continue
            target = _fill(rule.target, match)
            if target in converted:
                collisions.append(f"{origin[target]!r} and {key!r} -> {target!r}")
            if rule.conv and target.endswith(".weight"):
                value = _to_conv1d(key, value)
            converted[target] = value
            origin[target] = key
            break
        else:
            unknown.append(key)

    if unknown:
        raise TorchPointcloudLayoutError(
            f"{len(unknown)} key(s) not in the torch-pointcloud {architecture} {kind} layout: {_preview(unknown)}. "
            f"The file is not in the expected torch-pointcloud {architecture} ({kind}) layout."
        )
    if collisions:
        raise TorchPointcloudLayoutError(
            f"Several keys map to the same official key: {_preview(collisions)}. The file is not in the expected "
            f"torch-pointcloud {architecture} ({kind}) layout."
        )
    _validate_sizes(converted, architecture, kind)
    return converted
