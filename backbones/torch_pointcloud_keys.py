"""The key tables of the ``torch-pointcloud`` hub layouts: which library key is which official key, per architecture
and checkpoint kind (``docs/checkpoints.md`` §7). :mod:`pointgst.backbones.torch_pointcloud` converts with them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

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


