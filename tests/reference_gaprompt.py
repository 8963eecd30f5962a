"""GAPrompt on Point-MAE written from the official formulas (docs/peft_methods/gaprompt.md), in the official key layout
(``PointTransformer_pointtokenprompt``), for the fidelity tests of ``tests/test_gaprompt.py``.

Grouping uses pointgst's FPS (with the CUDA kernel's near-origin skip), kNN and gather, which have their own
reference tests; the Conv1d patch encoder, the blocks' layers, explicit-softmax attention and the head are those of
``tests/official_point_mae.py``; the rest is explicit: the official flattened-batch indexing of the prompt
propagation (indices offset by ``b * G`` into a batch whose samples hold ``G + T`` tokens in the prompted blocks),
squared distances as ``|a|^2 + |b|^2 - 2ab``, neighbours by a full sort. Evaluation mode only (no dropout or
drop-path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices

from . import official_point_mae as mae

#: the official trainable rule: a parameter trains when its name holds one of these
OFFICIAL_TRAINABLE = ("point_prompt", "shift_net", "shape_feature_mlp", "adapter", "cls_pos", "cls_token", "cls_head_",
                      "prompt_embeddings", "prompt_cor", "out_transform")


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N, 3), (B, M, 3) -> (B, N, M) by the expansion."""
    d = -2 * torch.matmul(a, b.permute(0, 2, 1))
    d += torch.sum(a ** 2, -1).view(a.shape[0], a.shape[1], 1)
    d += torch.sum(b ** 2, -1).view(b.shape[0], 1, b.shape[1])
    return d


def idw(xyz1: torch.Tensor, xyz2: torch.Tensor, values: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """Values (B, M, D) at xyz2 interpolated at xyz1 from the k nearest by 1 / (d + eps), normalised."""
    d, idx = sq_dist(xyz1, xyz2).sort(dim=-1)
    d, idx = d[:, :, :k], idx[:, :, :k]
    w = 1.0 / (d + eps)
    w = w / w.sum(dim=2, keepdim=True)
    rows = torch.arange(values.shape[0]).view(-1, 1, 1)
    return (values[rows, idx] * w.unsqueeze(-1)).sum(dim=2)


def group(xyz: torch.Tensor, g: int, k: int):
    """FPS centres (B, G, 3) and flat indices into (B * N): of the kNN (B*G*K,) and of the centres (B*G,)."""
    b, n, _ = xyz.shape
    centre_idx = farthest_point_sample(xyz, g, skip_near_origin=True)
    centre = gather_points(xyz, centre_idx)
    knn = knn_indices(centre, xyz, k)
    base = torch.arange(b).view(-1, 1) * n
    return centre, (knn + base.unsqueeze(-1)).view(-1), (centre_idx + base).view(-1)


def seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


class SA(nn.Module):
    def __init__(self, cin: int, widths: list[int]):
        super().__init__()
        chans = [cin] + widths
        self.mlp_convs = nn.ModuleList(nn.Conv2d(a, c, 1) for a, c in zip(chans, widths))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)

    def forward(self, xyz, feats, g, k):
        b, n, _ = xyz.shape
        centre, flat, _ = group(xyz, g, k)
        x = feats.reshape(b * n, -1)[flat].reshape(b, g, k, -1).permute(0, 3, 2, 1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return centre, torch.max(x, 2)[0].permute(0, 2, 1)


class FP(nn.Module):
    def __init__(self, cin: int, widths: list[int]):
        super().__init__()
        chans = [cin] + widths
        self.mlp_convs = nn.ModuleList(nn.Conv1d(a, c, 1) for a, c in zip(chans, widths))
        self.mlp_bns = nn.ModuleList(nn.BatchNorm1d(c) for c in widths)

    def forward(self, xyz1, xyz2, p1, p2):
        x = torch.cat([p1, idw(xyz1, xyz2, p2, 32, 1e-4)], dim=-1).permute(0, 2, 1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return x.permute(0, 2, 1)


class Shift(nn.Module):
    def __init__(self, perturbation: float):
        super().__init__()
        self.perturbation = perturbation
        self.abstraction_level1 = SA(27, [64, 32, 64])
        self.abstraction_level2 = SA(64, [64, 32, 8])
        self.propagation1 = FP(27 + 32, [32, 32])
        self.propagation2 = FP(64 + 8, [64, 32])
        self.mlp_position = seq(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))

    def forward(self, x, g, k):
        enc = [x]
        for freq in 2 ** torch.linspace(0, 3, 4):
            enc += [torch.sin(freq * x), torch.cos(freq * x)]
        enc = torch.cat(enc, -1)
        c1, f1 = self.abstraction_level1(x, enc, g, k)
        c2, f2 = self.abstraction_level2(c1, f1, g // 2, k // 2)
        f1 = self.propagation2(c1, c2, f1, f2)
        feat = self.propagation1(x, c1, enc, f1)
        return self.mlp_position(feat) * self.perturbation * x + x, f2.reshape(x.shape[0], -1)


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, width: int):
        super().__init__()
        self.heads = heads
        mae.official_block(dim, self)
        self.prompt_embeddings = nn.Parameter(torch.zeros(tokens, dim))
        self.scaler1 = nn.Parameter(torch.ones(1) * 0.5)
        self.scaler2 = nn.Parameter(torch.ones(1) * 0.5)
        self.adapter = nn.Module()
        self.adapter.layer_norm = nn.LayerNorm(dim)
        self.adapter.scale = nn.Linear(dim, 1)
        self.adapter.ln1, self.adapter.ln2 = nn.Linear(dim, width), nn.Linear(width, dim)
        self.out_transform = seq(nn.BatchNorm1d(dim), nn.GELU())

    def adapt(self, x):
        h = self.adapter.ln1(self.adapter.layer_norm(x))
        return self.adapter.ln2(h * torch.sigmoid(1.702 * h)) * 0.7

    def propagate(self, x, geo, mixing: bool):
        """x (B, S, C) without cls, the last G the point tokens; official flat indexing when ``mixing``."""
        centre, flat1, coarse, flat2 = geo
        b, s, c = x.shape
        g, g2 = centre.shape[1], coarse.shape[1]
        if mixing:  # the official flat indices assume G rows per sample
            rows = x.reshape(b * s, c)
        else:
            rows = x[:, -g:].reshape(b * g, c)
        nb = rows[flat1].reshape(b * g2, -1, c)
        ctr = rows[flat2].reshape(b, g2, c)
        nb = nb + nb  # drop_path(x) + x in evaluation
        pooled = self.out_transform(nb.reshape(b, g2, -1, c).max(dim=2)[0].permute(0, 2, 1)).permute(0, 2, 1)
        pooled = pooled + 0.3 * ctr
        x = x.clone()
        x[:, -g:] = x[:, -g:] + 0.3 * idw(centre, coarse, pooled, 64, 1e-8)
        return x

    def forward(self, x, shape, prompt_pos, geo, before: bool, mixing: bool):
        b = x.shape[0]
        if shape is not None:
            p = self.prompt_embeddings.repeat(b, 1, 1) + self.scaler1 * shape.repeat(1, len(self.prompt_embeddings), 1)
            x = torch.cat([x[:, :1], p + prompt_pos.repeat(b, 1, 1), x[:, 1:]], dim=1)
        if before:
            x = torch.cat([x[:, :1], self.propagate(x[:, 1:], geo, mixing)], dim=1)
        x = x + mae.explicit_attention(self.attn, self.norm1(x), self.heads)
        x = x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        cls, x = x[:, :1], x[:, 1:]
        if not before:
            x = self.propagate(x, geo, mixing)
        x = x + self.adapt(x + shape * self.scaler2 if shape is not None else x)
        if shape is not None:
            x = x[:, len(self.prompt_embeddings):]
        return torch.cat([cls, x], dim=1)


class ReferenceGAPrompt(nn.Module):
    """Point-MAE + GAPrompt as the official model computes it (evaluation mode), with its state-dict keys."""

    def __init__(self, num_classes: int, num_group: int, *, point_prompts: int = 5, perturbation: float = 0.05,
                 before: bool = False, dim: int = 384, depth: int = 12, heads: int = 6, tokens: int = 10,
                 prompt_depth: int = 6, group_size: int = 32):
        super().__init__()
        self.num_group, self.group_size, self.before, self.prompt_depth = num_group, group_size, before, prompt_depth
        self.mixing = True
        self.encoder = mae.official_encoder(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = mae.official_pos_embed(dim)
        self.prompt_cor = nn.Parameter(torch.zeros(tokens, 3))
        self.blocks = nn.Module()
        self.blocks.blocks = nn.ModuleList(RefBlock(dim, heads, tokens, 16) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = mae.official_head(3 * dim, num_classes, dropout=0.6)
        self.point_prompt = nn.Module()
        self.point_prompt.points = nn.Parameter(torch.zeros(1, point_prompts, 3))
        self.shift_net = Shift(perturbation)
        self.shape_feature_mlp = seq(nn.Linear(num_group // 2 * 8, 16), nn.GELU(), nn.Dropout(0.25),
                                     nn.Linear(16, dim))

    def forward(self, pts):
        g, k = self.num_group, self.group_size
        pts, code = self.shift_net(pts, g, k)
        shape = self.shape_feature_mlp(code)[:, None, :]
        pts = torch.cat([pts, self.point_prompt.points.repeat(pts.shape[0], 1, 1) * 5], dim=1)
        b, n, _ = pts.shape
        centre, flat, _ = group(pts, g, k)
        patches = pts.reshape(b * n, 3)[flat].reshape(b, g, k, 3) - centre.unsqueeze(2)
        tokens = mae.encode(self.encoder, patches)
        coarse, flat1, flat2 = group(centre, g // 2, k // 2)
        geo = (centre, flat1, coarse, flat2)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centre)], dim=1)
        prompt_pos = self.pos_embed(self.prompt_cor)
        for i, blk in enumerate(self.blocks.blocks):
            x = blk(x + pos, shape if i < self.prompt_depth else None, prompt_pos, geo, self.before, self.mixing)
        x = self.norm(x)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(1)[0], shape[:, 0]], dim=-1))
