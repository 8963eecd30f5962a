"""DAPT's trainable pieces: the scale-and-shift factors and the dynamic adapter (``docs/peft_methods/dapt.md`` §2),
one block's set of them, and the Point-MAE block that runs a frozen Point-MAE block with them (§3); the PointGPT
block is in ``gpt.py`` (§9)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScaleShift(nn.Module):
    """A per-channel affine map ``x * gamma + beta`` over the last dimension: (..., dim) -> (..., dim).

    Initialised near the identity: ``gamma ~ N(1, 0.02)``, ``beta ~ N(0, 0.02)`` (so a freshly built DAPT model is
    not exactly the frozen backbone).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim))
        self.beta = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.gamma, mean=1.0, std=0.02)
        nn.init.normal_(self.beta, mean=0.0, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma + self.beta

    def extra_repr(self) -> str:
        return f"dim={self.gamma.shape[0]}"


class DynamicAdapter(nn.Module):
    """A bottleneck adapter whose output each token scales by its own non-negative factor: (B, T, C) -> (B, T, C).

    ``h = LN(x)``; ``out = up(dropout(GELU(down(h)))) * ReLU(scale(h))``, ``scale`` a (C -> 1) linear map. ``up``
    starts at zero (the adapter adds nothing at first), ``down`` and ``scale`` keep PyTorch's default weight init
    with zero biases.
    """

    def __init__(self, dim: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.dropout = nn.Dropout(dropout)
        for bias in (self.scale.bias, self.down.bias, self.up.bias):
            nn.init.zeros_(bias)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        return self.up(self.dropout(F.gelu(self.down(h)))) * F.relu(self.scale(h))


class BlockFactors(nn.Module):
    """The DAPT tensors every family's block has: scale-and-shift after the two norms and the two MLP layers, a
    dynamic adapter parallel to the MLP, and the scale-and-shift of the internal prompt the block makes."""

    def __init__(self, dim: int, hidden: int, rank: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = ScaleShift(dim)
        self.norm2 = ScaleShift(dim)
        self.fc1 = ScaleShift(hidden)
        self.fc2 = ScaleShift(dim)
        self.adapter = DynamicAdapter(dim, rank, dropout)
        self.prompt = ScaleShift(dim)

    def insert_prompt(self, x: Tensor, adapted: Tensor, at: int) -> Tensor:
        """x (B, T, C), the adapter's output ``adapted`` (B, T, C) -> (B, T + 1, C): x with this block's internal
        prompt ``prompt(mean over all T tokens of GELU(adapted))`` inserted at index ``at``."""
        prompt = self.prompt(F.gelu(adapted).mean(dim=1, keepdim=True))  # (B, 1, C)
        return torch.cat([x[:, :at], prompt, x[:, at:]], dim=1)


class DAPTBlock(BlockFactors):
    """One Point-MAE block's DAPT tensors: :class:`BlockFactors` plus scale-and-shift after ``attn.qkv`` and
    ``attn.proj``."""

    def __init__(self, dim: int, hidden: int, rank: int, dropout: float) -> None:
        super().__init__(dim, hidden, rank, dropout)
        self.qkv = ScaleShift(3 * dim)
        self.proj = ScaleShift(dim)

    def forward(self, block: Any, x: Tensor) -> Tensor:
        """Run the frozen Point-MAE ``block`` with this block's tensors on ``x`` (B, T, C), cls token first.

        Returns (B, T + 1, C): the block's output with this block's internal prompt inserted right after the cls
        token, so the prompts of earlier blocks move one place back. No positional embedding is added here.
        """
        attn, mlp = block.attn, block.mlp
        qkv = self.qkv(attn.qkv(self.norm1(block.norm1(x))))
        x = x + block.drop_path(self.proj(attn.proj(attn.attend(qkv))))
        h = self.norm2(block.norm2(x))
        adapted = self.adapter(h)  # (B, T, C)
        x = x + block.drop_path(self.fc2(mlp.fc2(mlp.act(self.fc1(mlp.fc1(h))))) + adapted)
        return self.insert_prompt(x, adapted, at=1)
