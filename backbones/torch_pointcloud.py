"""Convert ``torch-pointcloud`` Point-MAE / PointGPT weights (the third-party Hugging Face Hub re-publications of the
official checkpoints) to the official key layout, so the official loaders apply unchanged.

The supported layouts, the full key mapping, the tensor changes (1x1 ``Conv1d`` weights stored 2-D), the keys without
a counterpart (PointGPT's extractor ``increase_dim``) and the sources it was derived from are in
``docs/checkpoints.md`` §7. Any key outside the supported layouts raises :class:`TorchPointcloudLayoutError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

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

Architecture = Literal["point_mae", "pointgpt_s", "pointgpt_b", "pointgpt_l"]
Kind = Literal["finetune", "pretrain"]

ARCHITECTURES: tuple[str, ...] = ("point_mae", "pointgpt_s", "pointgpt_b", "pointgpt_l")


@dataclass(frozen=True)
class _Spec:
    """Widths of one architecture (official and torch-pointcloud agree)."""

    width: int
    depth: int
    local_layers: int  # Conv1d layers in ``first_conv`` (= PyG ``lins`` in ``local_mlp``)
    global_layers: int  # Conv1d layers in ``second_conv``
    decoder_depth: int


_SPECS: dict[str, _Spec] = {
    "point_mae": _Spec(width=384, depth=12, local_layers=2, global_layers=2, decoder_depth=4),
    "pointgpt_s": _Spec(width=384, depth=12, local_layers=2, global_layers=2, decoder_depth=4),
    "pointgpt_b": _Spec(width=768, depth=12, local_layers=3, global_layers=2, decoder_depth=4),
    "pointgpt_l": _Spec(width=1024, depth=24, local_layers=3, global_layers=2, decoder_depth=4),
}
_PGPT_WIDTH_TO_ARCH = {384: "pointgpt_s", 768: "pointgpt_b", 1024: "pointgpt_l"}

_HEAD_LINEARS = 3  # Linear(2C,256) -> Linear(256,256) -> Linear(256,cls_dim)
_MAX_REPORTED = 5


class TorchPointcloudLayoutError(ValueError):
    """A state dict is not in the expected torch-pointcloud layout for the requested architecture."""


# --------------------------------------------------------------------------------------------------------------
# Mapping table
# --------------------------------------------------------------------------------------------------------------

# Placeholders of the templates. ``{bn}`` on the library side also absorbs the optional ``module.`` level that
# PyG's ``BatchNorm`` wrapper adds around ``torch.nn.BatchNorm1d``.
_PLACEHOLDER_RE = {
    "i": r"(?P<i>0|[1-9][0-9]*)",
    "p": r"(?P<p>weight|bias)",
    "bn": r"(?:module\.)?(?P<bn>weight|bias|running_mean|running_var|num_batches_tracked)",
}
_TOKEN_RE = re.compile(r"\{(i|p|bn)\}")


@dataclass(frozen=True)
class _Rule:
    source: str  # library template
    target: str  # official template
    conv: bool  # Linear [out, in] -> Conv1d [out, in, 1] (weights only)
    pattern: re.Pattern[str]


def _rule(source: str, target: str, conv: bool = False) -> _Rule:
    parts: list[str] = []
    pos = 0
    for m in _TOKEN_RE.finditer(source):
        parts.append(re.escape(source[pos : m.start()]))
        parts.append(_PLACEHOLDER_RE[m.group(1)])
        pos = m.end()
    parts.append(re.escape(source[pos:]))
    return _Rule(source, target, conv, re.compile("^" + "".join(parts) + "$"))


def _mlp_as_sequential(
    src: str, dst: str, n_linear: int, stride: int, *, batch_norm: bool, conv: bool
) -> list[tuple[str, str, bool]]:
    """PyG ``MLP`` (``lins.j`` / ``norms.j``) -> ``nn.Sequential`` with ``stride`` modules per layer."""
    rows = [(f"{src}lins.{j}.{{p}}", f"{dst}{stride * j}.{{p}}", conv) for j in range(n_linear)]
    if batch_norm:
        rows += [(f"{src}norms.{j}.{{bn}}", f"{dst}{stride * j + 1}.{{bn}}", False) for j in range(n_linear - 1)]
    return rows


def _patch_encoder_rows(prefix: str, spec: _Spec) -> list[tuple[str, str, bool]]:
    src, dst = f"{prefix}encoder.", f"{prefix}encoder."
    local = _mlp_as_sequential(
        src + "local_mlp.", dst + "first_conv.", spec.local_layers, 3, batch_norm=True, conv=True
    )
    glob = _mlp_as_sequential(
        src + "global_mlp.", dst + "second_conv.", spec.global_layers, 3, batch_norm=True, conv=True
    )
    return local + glob


def _head_rows(dst: str) -> list[tuple[str, str, bool]]:
    return _mlp_as_sequential("head.", dst, _HEAD_LINEARS, 4, batch_norm=True, conv=False)


def _vit_block_rows(src: str, dst: str) -> list[tuple[str, str, bool]]:
    """Point-MAE ``TransformerBlock`` list ``src{i}.*`` -> official timm-style ``Block`` list ``dst{i}.*``."""
    return [
        (f"{src}{{i}}.norm1.{{p}}", f"{dst}{{i}}.norm1.{{p}}", False),
        (f"{src}{{i}}.norm2.{{p}}", f"{dst}{{i}}.norm2.{{p}}", False),
        (f"{src}{{i}}.attn.qkv.weight", f"{dst}{{i}}.attn.qkv.weight", False),
        (f"{src}{{i}}.attn.proj.{{p}}", f"{dst}{{i}}.attn.proj.{{p}}", False),
        (f"{src}{{i}}.mlp.lins.0.{{p}}", f"{dst}{{i}}.mlp.fc1.{{p}}", False),
        (f"{src}{{i}}.mlp.lins.1.{{p}}", f"{dst}{{i}}.mlp.fc2.{{p}}", False),
    ]


def _gpt_stack_rows(src: str, dst: str) -> list[tuple[str, str, bool]]:
    """``PointGPTExtractor``/``PointGPTGenerator`` common part -> official ``GPT_extractor``/``GPT_generator``."""
    rows = [
        (f"{src}sos", f"{dst}sos", False),
        (f"{src}layers.{{i}}.ln_1.{{p}}", f"{dst}layers.{{i}}.ln_1.{{p}}", False),
        (f"{src}layers.{{i}}.ln_2.{{p}}", f"{dst}layers.{{i}}.ln_2.{{p}}", False),
        (f"{src}layers.{{i}}.attn.in_proj_weight", f"{dst}layers.{{i}}.attn.in_proj_weight", False),
        (f"{src}layers.{{i}}.attn.in_proj_bias", f"{dst}layers.{{i}}.attn.in_proj_bias", False),
        (f"{src}layers.{{i}}.attn.out_proj.{{p}}", f"{dst}layers.{{i}}.attn.out_proj.{{p}}", False),
        (f"{src}ln_f.{{p}}", f"{dst}ln_f.{{p}}", False),
    ]
    rows += _mlp_as_sequential(f"{src}layers.{{i}}.mlp.", f"{dst}layers.{{i}}.mlp.", 2, 2, batch_norm=False, conv=False)
    return rows


def _table_rows(architecture: str, kind: Kind) -> list[tuple[str, str, bool]]:
    spec = _SPECS[architecture]
    if architecture == "point_mae":
        if kind == "finetune":
            return [
                ("cls_token", "cls_token", False),
                ("cls_pos", "cls_pos", False),
                *_patch_encoder_rows("", spec),
                *_mlp_as_sequential("pos_embed.", "pos_embed.", 2, 2, batch_norm=False, conv=False),
                *_vit_block_rows("blocks.blocks.", "blocks.blocks."),
                ("norm_f.{p}", "norm.{p}", False),
                *_head_rows("cls_head_finetune."),
            ]
        return [
            ("mask_token", "mask_token", False),
            *_patch_encoder_rows("MAE_encoder.", spec),
            *_mlp_as_sequential("MAE_encoder.pos_embed.", "MAE_encoder.pos_embed.", 2, 2, batch_norm=False, conv=False),
            *_vit_block_rows("MAE_encoder.blocks.blocks.", "MAE_encoder.blocks.blocks."),
            ("MAE_encoder.norm.{p}", "MAE_encoder.norm.{p}", False),
            *_mlp_as_sequential("decoder_pos_embed.", "decoder_pos_embed.", 2, 2, batch_norm=False, conv=False),
            *_vit_block_rows("MAE_decoder.blocks.", "MAE_decoder.blocks."),
            ("MAE_decoder.norm.{p}", "MAE_decoder.norm.{p}", False),
            ("increase_dim.lins.0.{p}", "increase_dim.0.{p}", True),
        ]
    out = "" if kind == "finetune" else "GPT_Transformer."
    rows = [
        ("sos_pos", f"{out}sos_pos", False),
        *[(s, out + t, c) for s, t, c in _patch_encoder_rows("", spec)],
        *_gpt_stack_rows("blocks.", f"{out}blocks."),
        *_gpt_stack_rows("generator_blocks.", f"{out}generator_blocks."),
        ("generator_blocks.increase_dim.lins.0.{p}", f"{out}generator_blocks.increase_dim.0.{{p}}", True),
        ("norm.{p}", f"{out}norm.{{p}}", False),
    ]
    if kind == "finetune":
        rows += [
            ("cls_token", "cls_token", False),
            ("cls_pos", "cls_pos", False),
            ("cls_norm.{p}", "blocks.cls_norm.{p}", False),
            *_head_rows("blocks.cls_head_finetune."),
        ]
    return rows


def _check_architecture(architecture: str) -> None:
    if architecture not in _SPECS:
        raise ValueError(f"Unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}.")


def _check_kind(kind: str) -> None:
    if kind not in ("finetune", "pretrain"):
        raise ValueError(f"Unknown kind {kind!r}; expected 'finetune' or 'pretrain'.")


def torch_pointcloud_key_table(architecture: str, kind: Kind = "finetune") -> list[tuple[str, str, bool]]:
    """The mapping table for one architecture and file kind.

    Args:
        architecture: ``point_mae``, ``pointgpt_s``, ``pointgpt_b`` or ``pointgpt_l``.
        kind: ``finetune`` (classification model) or ``pretrain`` (self-supervised pretraining model).

    Returns:
        Rows ``(torch_pointcloud_template, official_template, linear_to_conv1d)``. Templates use ``{i}`` (block
        index, copied), ``{p}`` (``weight``/``bias``) and ``{bn}`` (BatchNorm entry; on the library side
        optionally preceded by ``module.``). ``linear_to_conv1d`` marks 2-D weights that gain a trailing
        kernel dimension of 1.
    """
    _check_architecture(architecture)
    _check_kind(kind)
    return list(_table_rows(architecture, kind))


_RULE_CACHE: dict[tuple[str, str], tuple[_Rule, ...]] = {}


def _rules(architecture: str, kind: Kind) -> tuple[_Rule, ...]:
    key = (architecture, kind)
    if key not in _RULE_CACHE:
        _RULE_CACHE[key] = tuple(_rule(s, t, c) for s, t, c in _table_rows(architecture, kind))
    return _RULE_CACHE[key]


def official_keys_without_source(architecture: str, kind: Kind = "finetune") -> tuple[str, ...]:
    """Official keys that a torch-pointcloud file of this architecture/kind cannot provide.

    Only PointGPT is affected: the library's extractor has no ``increase_dim`` (the official one has an unused
    ``Conv1d(C, 3 * group_size, 1)``). The converter leaves these keys absent.
    """
    _check_architecture(architecture)
    _check_kind(kind)
    if architecture == "point_mae":
        return ()
    prefix = "" if kind == "finetune" else "GPT_Transformer."
    return (f"{prefix}blocks.increase_dim.0.weight", f"{prefix}blocks.increase_dim.0.bias")


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
