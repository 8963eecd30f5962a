"""DAPT on PointGPT as PointGST's official ``GPT_Transformer_DAPT`` computes it (``docs/peft_methods/dapt.md`` §9),
written from the formulas with the official state-dict keys, for the conversion test and the official trainable
counts in ``tests/test_dapt_pointgpt.py``.

Grouping uses pointgst's FPS (with the official CUDA kernel's skip of near-origin points), kNN, gather and
nearest-neighbour-chain ops, which have their own reference tests; the Conv1d patch encoding and the head are those
of ``tests/official_point_mae.py``; everything else is explicit: the sine positional embedding, causal attention
with an explicit mask and softmax, the scale-and-shift factors, the dynamic adapter and the internal prompts.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from pointgst.backbones.grouping import nearest_neighbor_chain
from pointgst.ops import gather_points

from . import official_point_mae as mae
from .reference_dapt import add_scale_shift, as_trained, scale_shift


def sine_position(xyz: torch.Tensor, dim: int) -> torch.Tensor:
    """The official ``PositionEmbeddingCoordsSine(3, dim, 1.0)``: temperature 1, so every frequency is 2π; per
    coordinate F = dim // 3 // 2 * 2 features, sin on even and cos on odd ones, x | y | z, zero-padded to dim."""
    f = dim // 3 // 2 * 2
    angles = (xyz * 2 * math.pi).unsqueeze(-1).expand(*xyz.shape, f)  # (B, L, 3, F), all divisors 1
    emb = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).reshape(*xyz.shape[:-1], 3 * f)
    return F.pad(emb, (0, dim - 3 * f))


def conv_stack(channels: list[int]) -> nn.Sequential:
    """Conv1d(k=1) layers through ``channels``, BatchNorm + ReLU between them (the official encoder's stages)."""
    layers: list[nn.Module] = []
    for i, (inp, out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv1d(inp, out, 1))
        if i < len(channels) - 2:
            layers += [nn.BatchNorm1d(out), nn.ReLU()]
    return nn.Sequential(*layers)


class ReferenceGPTDAPT(nn.Module):
    """PointGPT + DAPT with the official keys (``large_encoder``: the B/L encoder, three first-stage convs)."""

    def __init__(self, num_classes: int, num_group: int, *, dim: int = 384, depth: int = 12, heads: int = 6,
                 group_size: int = 32, large_encoder: bool = False, rank: int = 64):
        super().__init__()
        self.num_group, self.group_size, self.heads, self.dim = num_group, group_size, heads, dim
        self.encoder = nn.Module()
        first = [3, 256, 512, 1024] if large_encoder else [3, 128, 256]
        self.encoder.first_conv = conv_stack(first)
        self.encoder.second_conv = conv_stack([2 * first[-1], 2 * first[-1], dim])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.sos_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)  # in the official model, never used
        self.blocks = nn.Module()
        self.blocks.sos = nn.Parameter(torch.zeros(dim))
        self.blocks.layers = nn.ModuleList(self.make_layer(dim, rank) for _ in range(depth))
        self.blocks.ln_f = nn.LayerNorm(dim)
        self.blocks.increase_dim = nn.Sequential(nn.Conv1d(dim, 3 * group_size, 1))  # never used
        self.blocks.cls_head_finetune = mae.official_head(2 * dim, num_classes)
        self.blocks.cls_norm = nn.LayerNorm(dim)

    @staticmethod
    def make_layer(dim: int, rank: int) -> nn.Module:
        layer = nn.Module()
        layer.ln_1, layer.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        layer.attn = nn.Module()
        layer.attn.in_proj_weight = nn.Parameter(torch.randn(3 * dim, dim) * 0.02)
        layer.attn.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        layer.attn.out_proj = nn.Linear(dim, dim)
        layer.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        layer.adapt_mlp = nn.Module()
        layer.adapt_mlp.adapter_layer_norm_before = nn.LayerNorm(dim)
        layer.adapt_mlp.scale = nn.Linear(dim, 1)
        layer.adapt_mlp.down_proj, layer.adapt_mlp.up_proj = nn.Linear(dim, rank), nn.Linear(rank, dim)
        for index, width in ((1, dim), (2, dim), (3, dim), (4, 4 * dim), (5, dim)):
            add_scale_shift(layer, index, width)
        return layer

    def attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Causal multi-head attention: a token attends to itself and the tokens before it."""
        b, t, c = x.shape
        q, k, v = (x @ attn.in_proj_weight.T + attn.in_proj_bias).reshape(b, t, 3, self.heads, c // self.heads) \
            .permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, t, c))

    def layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = scale_shift(layer, 1, layer.ln_1(x))
        x = x + self.attention(layer.attn, x)
        adapter = layer.adapt_mlp
        a = adapter.adapter_layer_norm_before(scale_shift(layer, 2, layer.ln_2(x)))
        adapted = adapter.up_proj(F.gelu(adapter.down_proj(a))) * F.relu(adapter.scale(a))
        mlp = scale_shift(layer, 5, layer.mlp[2](F.gelu(scale_shift(layer, 4, layer.mlp[0](x)))))  # reads x
        x = x + (mlp + adapted)
        prompt = scale_shift(layer, 3, F.gelu(adapted).mean(dim=1, keepdim=True))
        return torch.cat([x[:, :2], prompt, x[:, 2:]], dim=1)  # after sos and cls

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        patches, centers = mae.group(points, self.num_group, self.group_size)
        order = nearest_neighbor_chain(centers)  # the patches in chain order, then the official encoder
        centers, patches = gather_points(centers, order), gather_points(patches.flatten(2), order).unflatten(2, (-1, 3))
        tokens, b = mae.encode(self.encoder, patches), points.shape[0]
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.sos_pos.expand(b, -1, -1),
                         sine_position(centers, self.dim)], dim=1)  # (B, 2 + G, C)
        h = torch.cat([self.blocks.sos.expand(b, 1, -1), self.cls_token.expand(b, -1, -1), tokens], dim=1)
        for layer in self.blocks.layers:
            h = torch.cat([h[:, :h.shape[1] - pos.shape[1]], h[:, h.shape[1] - pos.shape[1]:] + pos], dim=1)
            h = self.layer(layer, h)
        h = self.blocks.cls_norm(self.blocks.ln_f(h))
        return self.blocks.cls_head_finetune(torch.cat([h[:, 1], h[:, 2:].max(dim=1).values], dim=-1))


def official_trainable(model: nn.Module) -> int:
    """The official ``part: dapt`` rule (PointGST ``tools/builder.py``): a parameter trains iff its name contains
    ``adapt``, ``cls`` or ``tfts``."""
    return sum(p.numel() for n, p in model.named_parameters() if any(s in n for s in ("adapt", "cls", "tfts")))


def trained_reference(num_classes: int, num_group: int, **sizes) -> ReferenceGPTDAPT:
    """A reference model as after official training (:func:`~tests.reference_dapt.as_trained`), in eval mode."""
    torch.manual_seed(5)
    return as_trained(ReferenceGPTDAPT(num_classes, num_group, **sizes))
