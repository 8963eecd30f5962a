"""DAPT's whole classification forward over a frozen Point-MAE-family backbone (``docs/peft_methods/dapt.md`` §3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pointgst.backbones.layers import classification_head

from ..whole_forward import WholeForward
from .config import DAPTConfig
from .layers import DAPTBlock, ScaleShift
from .official import official_key


class DAPT(WholeForward):
    """Dynamic Adapter + Internal Prompt: points (B, N, 3) -> logits (B, num_classes).

    Tokens ``[cls, patch tokens (G)]`` with the positional embedding added once at the input; every block then
    appends one internal prompt after the cls token, so the final sequence is ``[cls, prompts (depth), patches (G)]``
    (the newest prompt first). The head reads the parts ``config`` turns on (:meth:`head_input`). With the backbone's
    gradient checkpointing on, each block's activations are recomputed in the backward pass (training only).

    Args:
        dim: token width C. depth: number of blocks. hidden: the MLP's hidden width. num_classes: head outputs.
        config: the method's options.
    """

    def __init__(self, dim: int, depth: int, hidden: int, num_classes: int, config: DAPTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder_tfts = ScaleShift(dim)
        self.blocks = nn.ModuleList(DAPTBlock(dim, hidden, config.rank, config.adapter_dropout) for _ in range(depth))
        self.norm_tfts = ScaleShift(dim)
        self.head = classification_head(config.head_parts * dim, num_classes)

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        neighborhood, centers = backbone.group(points)
        tokens = self.encoder_tfts(backbone.encoder(neighborhood))  # (B, G, C)
        b = tokens.shape[0]
        cls_token, cls_pos = backbone.special_tokens()
        x = torch.cat([cls_token.expand(b, -1, -1), tokens], dim=1)
        x = x + torch.cat([cls_pos.expand(b, -1, -1), backbone.pos_embed(centers)], dim=1)
        recompute = backbone.blocks.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for own, block in zip(self.blocks, backbone.blocks.blocks):
            x = checkpoint(own, block, x, use_reentrant=False) if recompute else own(block, x)
        x = self.norm_tfts(backbone.norm(x))  # (B, 1 + depth + G, C)
        return self.head(self.head_input(x, tokens.shape[1]))

    def head_input(self, x: Tensor, num_patches: int) -> Tensor:
        """Final tokens (B, 1 + P + num_patches, C), P prompts -> the head's input (B, parts * C): the cls token,
        the pooled prompts ``x[:, 1:-num_patches]``, the pooled patches ``x[:, -num_patches:]``, those turned on."""
        parts = [x[:, 0]] if self.config.class_token else []
        for pooling, group in ((self.config.prompt_token, x[:, 1:x.shape[1] - num_patches]),
                               (self.config.patch_token, x[:, x.shape[1] - num_patches:])):
            if pooling == "max":
                parts.append(group.max(dim=1).values)
            elif pooling == "mean":
                parts.append(group.mean(dim=1))
        return torch.cat(parts, dim=-1)

    def official_names(self) -> dict[str, str]:
        return {key: official_key(key) for key in self.state_dict()}

    def extra_repr(self) -> str:
        return f"config={self.config}"


def build_dapt(backbone: Any, config: DAPTConfig) -> DAPT:
    """A DAPT module sized for ``backbone`` (a Point-MAE-family classifier; others are refused)."""
    blocks = backbone.blocks.blocks
    return DAPT(backbone.embed_dim, len(blocks), blocks[0].mlp.fc1.out_features, backbone.num_classes, config)
