"""GAPrompt's Point Shift Prompter (``shift_net``): a small PointNet++ over sinusoidal encodings of the input points
that moves every point and gives the global shape code (docs/peft_methods/gaprompt.md §2). Submodule names and
layouts are the official ones (``abstraction_level1.mlp_convs.0.weight`` ...)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.ops import gather_points

from .geometry import fps_knn, interpolate

#: frequencies of the positional encoding: 1, 2, 4, 8 (each point -> 3 * (2 * 4 + 1) = 27 channels)
ENCODING_LEVELS = 4
#: width of the coarse level's features, whose concatenation over the coarse centres is the shape code
TOP_DIM = 8
#: the feature propagations interpolate from this many nearest centres, weights 1 / (d^2 + 1e-4)
PROPAGATION_NEIGHBORS, PROPAGATION_EPS = 32, 1e-4


def sinusoidal_encoding(points: Tensor) -> Tensor:
    """(B, N, 3) -> (B, N, 27): ``[p, sin(p), cos(p), sin(2p), cos(2p), sin(4p), cos(4p), sin(8p), cos(8p)]``."""
    parts = [points]
    for level in range(ENCODING_LEVELS):
        scaled = points * float(2 ** level)
        parts += [torch.sin(scaled), torch.cos(scaled)]
    return torch.cat(parts, dim=-1)


def _layers(conv: type, in_channels: int, widths: tuple[int, ...]) -> tuple[nn.ModuleList, nn.ModuleList]:
    """1x1 convolutions (``conv``: Conv1d or Conv2d) with a BatchNorm after each: (mlp_convs, mlp_bns)."""
    norm = nn.BatchNorm2d if conv is nn.Conv2d else nn.BatchNorm1d
    channels = (in_channels,) + widths
    return (nn.ModuleList(conv(a, b, 1) for a, b in zip(channels, widths)),
            nn.ModuleList(norm(width) for width in widths))


class SetAbstraction(nn.Module):
    """FPS centres, each the max over its kNN points' features after 1x1 Conv2d + BN + ReLU layers (no relative
    coordinates). xyz (B, N, 3), features (B, N, D) -> (centres (B, G, 3), features (B, G, widths[-1]))."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.mlp_convs, self.mlp_bns = _layers(nn.Conv2d, in_channels, widths)

    def forward(self, xyz: Tensor, features: Tensor, groups: int, size: int,
                skip_near_origin: bool) -> tuple[Tensor, Tensor]:
        centres, _, neighbours = fps_knn(xyz, groups, size, skip_near_origin)
        x = gather_points(features, neighbours).permute(0, 3, 2, 1)  # (B, D, K, G), the official layout
        for conv, norm in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(norm(conv(x)))
        return centres, x.max(dim=2).values.transpose(1, 2)


class FeaturePropagation(nn.Module):
    """Centre features interpolated to every point (:func:`interpolate`, 32 neighbours), appended after the points'
    own features, then 1x1 Conv1d + BN + ReLU layers. xyz (B, N, 3), centres (B, S, 3), own (B, N, D0), features
    (B, S, D) -> (B, N, widths[-1])."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.mlp_convs, self.mlp_bns = _layers(nn.Conv1d, in_channels, widths)

    def forward(self, xyz: Tensor, centres: Tensor, own: Tensor, features: Tensor) -> Tensor:
        spread = interpolate(xyz, centres, features, PROPAGATION_NEIGHBORS, PROPAGATION_EPS)
        x = torch.cat([own, spread], dim=-1).transpose(1, 2)
        for conv, norm in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(norm(conv(x)))
        return x.transpose(1, 2)


class ShiftNet(nn.Module):
    """points (B, N, 3) -> (shifted points (B, N, 3), shape code (B, groups // 2 * 8)).

    Two set-abstraction levels (``groups`` centres of ``size`` points, then half as many of half as many) over the
    27-channel encoding, two feature propagations back to every point, and a per-point MLP giving a relative shift:
    ``p + perturbation * p * mlp(feature)``. The shape code is the coarse level's features, concatenated.
    """

    def __init__(self, perturbation: float):
        super().__init__()
        encoded = 3 * (2 * ENCODING_LEVELS + 1)
        self.perturbation = perturbation
        self.abstraction_level1 = SetAbstraction(encoded, (64, 32, 64))
        self.abstraction_level2 = SetAbstraction(64, (64, 32, TOP_DIM))
        self.propagation1 = FeaturePropagation(encoded + 32, (32, 32))
        self.propagation2 = FeaturePropagation(64 + TOP_DIM, (64, 32))
        self.mlp_position = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))
        for layer in (self.mlp_position[0], self.mlp_position[3]):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            nn.init.zeros_(layer.bias)

    def forward(self, points: Tensor, groups: int, size: int, skip_near_origin: bool) -> tuple[Tensor, Tensor]:
        encoded = sinusoidal_encoding(points)
        fine, fine_features = self.abstraction_level1(points, encoded, groups, size, skip_near_origin)
        coarse, coarse_features = self.abstraction_level2(fine, fine_features, groups // 2, size // 2,
                                                          skip_near_origin)
        fine_features = self.propagation2(fine, coarse, fine_features, coarse_features)
        features = self.propagation1(points, fine, encoded, fine_features)
        shifted = points + self.mlp_position(features) * self.perturbation * points
        return shifted, coarse_features.flatten(1)

    def extra_repr(self) -> str:
        return f"perturbation={self.perturbation}"
