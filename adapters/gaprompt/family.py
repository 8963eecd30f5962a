"""What GAPrompt's forward runs of each backbone family (docs/peft_methods/gaprompt.md §12): the blocks with the
drop-path their prompt propagation uses, and the final norm. The token sequence comes from ``backbone.sequence`` in
both families (Point-MAE ``[cls, t..]``, PointGPT ``[sos, cls, t..]``), so the cls token is the last special token."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..whole_forward import POINTGPT_FAMILY


def on_pointgpt(backbone: Any) -> bool:
    """Whether ``backbone`` is a PointGPT classifier (causal ``GPTBlock`` layers, ``ln_f``, ``cls_norm``)."""
    return backbone.architecture in POINTGPT_FAMILY


def blocks_with_drop_paths(backbone: Any) -> list[tuple[nn.Module, nn.Module]]:
    """(block, drop-path of its prompt propagation) for every block, input side first.

    A Point-MAE block lends its own drop-path (the official propagation uses the block's); PointGPT's ``GPTBlock``
    has none, so its propagation pools ``x + x`` (identity).
    """
    if on_pointgpt(backbone):
        return [(block, nn.Identity()) for block in backbone.blocks.layers]
    return [(block, block.drop_path) for block in backbone.blocks.blocks]


def final_norm(backbone: Any) -> nn.Module:
    """The frozen norm after the last block: Point-MAE's ``norm``, PointGPT's ``blocks.ln_f`` (PointGPT's top-level
    ``norm`` is never used)."""
    return backbone.blocks.ln_f if on_pointgpt(backbone) else backbone.norm
