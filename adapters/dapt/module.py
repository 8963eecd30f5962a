"""DAPT's whole classification forward over a frozen Point-MAE-family backbone (``docs/peft_methods/dapt.md`` §3),
and the builder that picks the family's module."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..whole_forward import POINTGPT_FAMILY, head_norm_copy
from .base import DAPTBase
from .config import DAPTConfig
from .gpt import GPTDAPT
from .layers import DAPTBlock, ScaleShift
from .official import official_key


class DAPT(DAPTBase):
    """Dynamic Adapter + Internal Prompt on Point-MAE: points (B, N, 3) -> logits (B, num_classes).

    Tokens ``[cls, patch tokens (G)]`` with the positional embedding added once at the input; every block then
    appends one internal prompt after the cls token, so the final sequence is ``[cls, prompts (depth), patches (G)]``
    (the newest prompt first). The head reads the parts ``config`` turns on (:meth:`head_input`).

    Args:
        dim: token width C. depth: number of blocks. hidden: the MLP's hidden width. num_classes: head outputs.
        config: the method's options.
    """

    cls_index = 0
    key_of = staticmethod(official_key)

    def __init__(self, dim: int, depth: int, hidden: int, num_classes: int, config: DAPTConfig) -> None:
        super().__init__(dim, num_classes, config)
        self.encoder_tfts = ScaleShift(dim)
        self.blocks.extend(DAPTBlock(dim, hidden, config.rank, config.adapter_dropout) for _ in range(depth))
        self.norm_tfts = ScaleShift(dim)
        self.cls_norm = None  # Point-MAE's head pools the final norm's output directly

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        neighborhood, centers = backbone.group(points)
        tokens = self.encoder_tfts(backbone.encoder(neighborhood))  # (B, G, C)
        x, pos = backbone.sequence(tokens, centers)  # (B, 1 + G, C) each
        x = self.run_blocks(backbone, backbone.blocks.blocks, x + pos)  # pos once, at the input
        x = self.norm_tfts(self.final_tokens(backbone, x))  # (B, 1 + depth + G, C)
        return self.head(self.head_input(x, tokens.shape[1]))


def build_dapt(backbone: Any, config: DAPTConfig) -> DAPTBase:
    """A DAPT module sized for ``backbone``: :class:`GPTDAPT` on the PointGPT family, :class:`DAPT` on Point-MAE."""
    if backbone.architecture in POINTGPT_FAMILY:
        layers = backbone.blocks.layers
        return GPTDAPT(backbone.embed_dim, len(layers), layers[0].mlp[0].out_features, head_norm_copy(backbone),
                       backbone.num_classes, config)
    blocks = backbone.blocks.blocks
    return DAPT(backbone.embed_dim, len(blocks), blocks[0].mlp.fc1.out_features, backbone.num_classes, config)
