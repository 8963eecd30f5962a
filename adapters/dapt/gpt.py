"""DAPT on the PointGPT family, as PointGST's official ``GPT_Transformer_DAPT`` places it
(``docs/peft_methods/dapt.md`` §9): the DAPT tensors of a causal GPT block, and the whole forward."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import DAPTBase
from .config import DAPTConfig
from .layers import BlockFactors
from .official import gpt_official_key


class GPTDAPTBlock(BlockFactors):
    """One PointGPT block's DAPT tensors (:class:`BlockFactors`; the causal attention has no factors of its own).

    ``norm1`` scales ``ln_1``'s output, which replaces the residual stream; ``norm2`` scales ``ln_2``'s output, the
    adapter's input and, with ``mlp_input="norm"``, the frozen MLP's (with ``"stream"``, the official code, the MLP
    reads the residual stream itself); ``fc1`` scales its first layer before GELU, ``fc2`` its output; the adapter's
    output is added beside the MLP's.
    """

    def __init__(self, dim: int, hidden: int, rank: int, dropout: float, mlp_input: str) -> None:
        super().__init__(dim, hidden, rank, dropout)
        self.mlp_input = mlp_input

    def forward(self, block: Any, x: Tensor) -> Tensor:
        """Run the frozen ``GPTBlock`` ``block`` with this block's tensors on ``x`` (B, T, C), laid out
        ``[sos, cls, ...]`` (positions already added).

        Returns (B, T + 1, C): the output with this block's internal prompt inserted after ``sos`` and the cls token,
        so it comes before every point token (the causal attention lets all of them see it).
        """
        h = self.norm1(block.ln_1(x))
        x = h + block.attn.out_proj(block.attend(block.qkv(h)))
        normed = self.norm2(block.ln_2(x))
        adapted = self.adapter(normed)  # (B, T, C)
        mlp = block.mlp
        mlp_in = normed if self.mlp_input == "norm" else x
        x = x + (self.fc2(mlp[2](mlp[1](self.fc1(mlp[0](mlp_in))))) + adapted)
        return self.insert_prompt(x, adapted, at=2)


class GPTDAPT(DAPTBase):
    """Dynamic Adapter + Internal Prompt on PointGPT: points (B, N, 3) -> logits (B, num_classes).

    Tokens ``[sos, cls, t_1..t_L]`` with positions ``[cls_pos, sos_pos, PE(c_1)..]`` (``backbone.sequence``),
    re-added before every block to sos, cls and the point tokens (``gpt_positions="own"``) or to the last 2 + L
    tokens (``"end_aligned"``, the official code); each block inserts one prompt at index 2, so the final
    sequence is ``[sos, cls, prompts (depth), patches (L)]`` (the newest prompt first). Then the frozen ``ln_f``,
    this module's trainable copy of the head norm ``cls_norm``, and the head (:meth:`head_input`, cls at index 1).

    Args:
        dim: token width C. depth: number of blocks. hidden: the MLP's hidden width. cls_norm: this module's
        trainable copy of the backbone's ``blocks.cls_norm``. num_classes: head outputs. config: the method's options.
    """

    cls_index = 1
    key_of = staticmethod(gpt_official_key)

    def __init__(self, dim: int, depth: int, hidden: int, cls_norm: nn.LayerNorm, num_classes: int,
                 config: DAPTConfig) -> None:
        super().__init__(dim, num_classes, config)
        self.blocks.extend(GPTDAPTBlock(dim, hidden, config.rank, config.adapter_dropout, config.gpt_mlp_input)
                           for _ in range(depth))
        self.cls_norm = cls_norm

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        neighborhood, centers = backbone.group(points)
        x, pos = backbone.sequence(backbone.encoder(neighborhood), centers)  # (B, 2 + L, C) each
        specials = 0 if self.config.gpt_positions == "end_aligned" else self.cls_index + 1
        x = self.run_blocks(backbone, backbone.blocks.layers, x, pos, specials)  # (B, 2 + depth + L, C)
        x = self.final_tokens(backbone, x)
        return self.head(self.head_input(x, centers.shape[1]))
