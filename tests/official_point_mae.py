"""The official Point-MAE parts the reference models of the fidelity tests share, in the official key layout: the
Conv1d patch encoder (``encoder.first_conv`` / ``encoder.second_conv``), ``pos_embed``, the bare blocks
(``blocks.blocks.N.{norm1, norm2, attn.qkv, attn.proj, mlp.fc1, mlp.fc2}``), explicit-softmax attention, the grouping
and the ``cls_head_finetune`` head.

Grouping uses pointgst's FPS (optionally with the official CUDA kernel's skip of near-origin points), kNN and gather
ops, which have their own reference tests.
"""

from collections.abc import Callable

import torch
from torch import nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices


def official_encoder(dim: int) -> nn.Module:
    """The patch encoder: ``first_conv`` Conv1d 3-128(BN, ReLU)-256, ``second_conv`` Conv1d 512-512(BN, ReLU)-dim."""
    encoder = nn.Module()
    encoder.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(), nn.Conv1d(128, 256, 1))
    encoder.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, dim, 1))
    return encoder


def official_pos_embed(dim: int) -> nn.Sequential:
    """``pos_embed``: centres (B, G, 3) -> positions (B, G, dim) by Linear 3-128, GELU, Linear 128-dim."""
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


def official_block(dim: int, block: nn.Module | None = None) -> nn.Module:
    """``block`` (a new module when None) given the bare block's layers: ``norm1``, ``norm2``, ``attn.qkv`` (dim-3dim,
    no bias), ``attn.proj``, ``mlp.fc1`` (dim-4dim), ``mlp.fc2``."""
    block = nn.Module() if block is None else block
    block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    block.attn = nn.Module()
    block.attn.qkv, block.attn.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
    block.mlp = nn.Module()
    block.mlp.fc1, block.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
    return block


def official_blocks(dim: int, depth: int, extend: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """``blocks`` holding ``blocks.blocks``, ``depth`` bare blocks; ``extend(block)`` adds a method's own tensors to
    each block before the next is built (the official initialisation order)."""
    blocks = nn.Module()
    blocks.blocks = nn.ModuleList()
    for _ in range(depth):
        block = official_block(dim)
        if extend is not None:
            extend(block)
        blocks.blocks.append(block)
    return blocks


def official_head(in_dim: int, num_classes: int, activation: type[nn.Module] = nn.ReLU,
                  dropout: float = 0.5) -> nn.Sequential:
    """``cls_head_finetune``: in_dim-256-256-num_classes, BatchNorm, ``activation`` and dropout after each hidden
    Linear (head input (B, in_dim) -> logits (B, num_classes))."""
    return nn.Sequential(nn.Linear(in_dim, 256), nn.BatchNorm1d(256), activation(), nn.Dropout(dropout),
                         nn.Linear(256, 256), nn.BatchNorm1d(256), activation(), nn.Dropout(dropout),
                         nn.Linear(256, num_classes))


def softmax_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv (B, N, 3C) -> ``softmax(q k^T / sqrt(C / heads)) v`` per head, the heads merged, (B, N, C)."""
    b, n, c = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def explicit_attention(attn: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """The official ``Attention``: x (B, N, C) -> ``attn.proj`` of the softmax attention of ``attn.qkv(x)``."""
    return attn.proj(softmax_attention(attn.qkv(x), heads))


def group(points: torch.Tensor, num_group: int, group_size: int = 32,
          skip_near_origin: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``Group``: points (B, N, 3) -> patches (B, G, K, 3) about their FPS centres, centres (B, G, 3)."""
    centers = gather_points(points, farthest_point_sample(points, num_group, skip_near_origin=skip_near_origin))
    return gather_points(points, knn_indices(centers, points, group_size)) - centers.unsqueeze(2), centers


def encode(encoder: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """The official ``Encoder``: patches (B, G, K, 3) -> tokens (B, G, C): ``first_conv``, max-pool, the pooled feature
    concatenated before each point's, ``second_conv``, max-pool."""
    b, g, k, _ = patches.shape
    feature = encoder.first_conv(patches.reshape(b * g, k, 3).transpose(2, 1))
    feature = torch.cat([feature.max(dim=2, keepdim=True).values.expand(-1, -1, k), feature], dim=1)
    return encoder.second_conv(feature).max(dim=2).values.reshape(b, g, -1)


def group_and_encode(encoder: nn.Module, points: torch.Tensor, num_group: int, group_size: int = 32,
                     skip_near_origin: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B, N, 3) -> tokens (B, G, C), centres (B, G, 3): :func:`group`, then :func:`encode`."""
    patches, centers = group(points, num_group, group_size, skip_near_origin)
    return encode(encoder, patches), centers
