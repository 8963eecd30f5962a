"""The point operations GAPrompt's official code runs through CUDA extensions and helpers, in torch
(docs/peft_methods/gaprompt.md §2, §4): FPS + kNN grouping by index, squared distances by the matmul expansion, and
inverse-distance interpolation from the k nearest centres."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pointgst.ops import farthest_point_sample, gather_points, inverse_distance_interpolate, knn_indices


def fps_knn(points: Tensor, groups: int, size: int, skip_near_origin: bool) -> tuple[Tensor, Tensor, Tensor]:
    """FPS centres and their kNN, as the official ``Group`` picks them: points (B, N, 3) -> (centres (B, G, 3),
    centre indices (B, G), neighbour indices (B, G, K)) into N. The centres are gathered (differentiable in
    ``points``); ``skip_near_origin`` is the official CUDA FPS quirk the backbone's grouping also follows."""
    centre_index = farthest_point_sample(points, groups, skip_near_origin=skip_near_origin)
    centres = gather_points(points, centre_index)
    return centres, centre_index, knn_indices(centres, points, size)


def square_distance(queries: Tensor, references: Tensor) -> Tensor:
    """Squared distances (B, N, 3) x (B, S, 3) -> (B, N, S) as ``|q|^2 + |r|^2 - 2 q.r`` (the official formula: a
    coincident pair gives rounding noise, which may be negative, rather than 0)."""
    distance = -2 * torch.matmul(queries, references.transpose(1, 2))
    distance += queries.square().sum(-1).unsqueeze(-1)
    distance += references.square().sum(-1).unsqueeze(1)
    return distance


def interpolate(points: Tensor, centres: Tensor, values: Tensor, neighbors: int, eps: float) -> Tensor:
    """:func:`~pointgst.ops.inverse_distance_interpolate` on the official expanded squared distances
    (:func:`square_distance`): points (B, N, 3), centres (B, S, 3), values (B, S, D) -> (B, N, D)."""
    return inverse_distance_interpolate(square_distance(points, centres), values, neighbors, eps)


@dataclass(frozen=True)
class CoarseLevel:
    """The second grouping level of the token centres that every block's prompt propagation reads.

    ``centres`` (B, G, 3): the token centres; ``coarse`` (B, G2, 3): FPS picks among them, ``coarse_index`` (B, G2)
    their token indices, ``neighbour_index`` (B, G2, K2) the token indices of each pick's kNN among the centres.
    """

    centres: Tensor
    coarse: Tensor
    coarse_index: Tensor
    neighbour_index: Tensor

    @classmethod
    def of(cls, centres: Tensor, groups: int, size: int, skip_near_origin: bool) -> "CoarseLevel":
        """Group the (B, G, 3) token centres into ``groups`` coarse centres of ``size`` neighbours each."""
        coarse, coarse_index, neighbour_index = fps_knn(centres, groups, size, skip_near_origin)
        return cls(centres, coarse, coarse_index, neighbour_index)
