"""IDPT's prompt generator: a dynamic-graph CNN (three edge convolutions over feature-space kNN graphs of the point
tokens, a fusing layer, a max over the tokens) that turns the point tokens of one cloud into one prompt token
(``docs/peft_methods/idpt.md`` §2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.ops import gather_points

#: LeakyReLU slope after every BatchNorm of the generator (every official config)
NEGATIVE_SLOPE = 0.2


def feature_knn(x: Tensor, k: int) -> Tensor:
    """Indices (B, G, k) of the ``k`` tokens nearest to each token of ``x`` (B, G, C) in feature space, the token
    itself included. The score is the negative squared distance in its expanded form, summed in the official order:
    ``(2 x_i.x_j - |x_j|^2) - |x_i|^2``; the largest ``k`` win. Scored in float32 even under autocast (bf16
    distances would reorder the neighbours)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().float()
        squares = x.square().sum(dim=-1)  # (B, G)
        score = (2 * (x @ x.transpose(1, 2)) - squares.unsqueeze(1)) - squares.unsqueeze(2)
        return score.topk(k, dim=-1).indices


class EdgeConv(nn.Module):
    """One edge convolution on a graph rebuilt from its input: token i becomes the max over its ``k`` feature-space
    neighbours j of ``LeakyReLU(BN(W [x_j - x_i, x_i]))``. (B, G, C_in) -> (B, G, C_out).

    ``conv`` is the 1x1 ``Conv2d`` weight (C_out, 2 C_in, 1, 1) of the official layout, applied as
    ``W [x_j - x_i, x_i] = W_d x_j + (W_s - W_d) x_i``: two (B, G, C) products and a gather instead of a product over
    every (B, G, k) edge (the same values up to float rounding). ``norm`` normalises the edges, a BatchNorm2d over
    (B, C_out, G, k).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * in_dim, out_dim, 1, bias=False)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: Tensor, k: int) -> Tensor:
        w_diff, w_self = self.conv.weight[:, :, 0, 0].chunk(2, dim=1)  # each (C_out, C_in)
        neighbours = gather_points(F.linear(x, w_diff), feature_knn(x, k))  # (B, G, k, C_out)
        edges = neighbours + F.linear(x, w_self - w_diff).unsqueeze(2)
        edges = F.leaky_relu(self.norm(edges.permute(0, 3, 1, 2)), NEGATIVE_SLOPE)  # (B, C_out, G, k)
        return edges.amax(dim=-1).transpose(1, 2)


class PromptGenerator(nn.Module):
    """Point tokens (B, G, C) -> one prompt token (B, 1, C).

    Three :class:`EdgeConv` (C -> C each, every one on the kNN graph of its own input); their outputs concatenated
    (B, G, 3C) and fused by a 1x1 ``Conv1d`` (3C -> C, no bias), BatchNorm1d and LeakyReLU(0.2); the max over the G
    tokens is the prompt. In eval mode each cloud's prompt depends on that cloud alone; in train mode the BatchNorms
    normalise over the batch.
    """

    def __init__(self, dim: int, k: int = 20):
        super().__init__()
        self.k = k
        self.edge_convs = nn.ModuleList(EdgeConv(dim, dim) for _ in range(3))
        self.fuse = nn.Conv1d(3 * dim, dim, 1, bias=False)
        self.fuse_norm = nn.BatchNorm1d(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        features, x = [], tokens
        for edge_conv in self.edge_convs:
            x = edge_conv(x, self.k)
            features.append(x)
        fused = self.fuse(torch.cat(features, dim=-1).transpose(1, 2))  # (B, C, G)
        return F.leaky_relu(self.fuse_norm(fused), NEGATIVE_SLOPE).amax(dim=-1).unsqueeze(1)

    def official_names(self) -> dict[str, str]:
        """Own state-dict key -> key under the official generator (``blocks.cls.`` in the checkpoint), e.g.
        ``edge_convs.0.conv.weight`` -> ``conv1.0.weight``, ``edge_convs.0.norm.running_mean`` ->
        ``bn1.running_mean``, ``fuse.weight`` -> ``conv5.0.weight``, ``fuse_norm.bias`` -> ``bn5.bias``."""
        prefixes = {"fuse.": "conv5.0.", "fuse_norm.": "bn5."}
        for i in range(len(self.edge_convs)):
            prefixes |= {f"edge_convs.{i}.conv.": f"conv{i + 1}.0.", f"edge_convs.{i}.norm.": f"bn{i + 1}."}
        names = {}
        for key in self.state_dict():
            own = next(p for p in prefixes if key.startswith(p))
            names[key] = prefixes[own] + key[len(own):]
        return names

    def extra_repr(self) -> str:
        return f"k={self.k}"
