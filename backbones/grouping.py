"""Patch grouping: FPS centres, kNN neighbourhoods, and PointGPT's nearest-neighbour-chain patch order."""

import torch
from torch import Tensor, nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices


def nearest_neighbor_chain(centers: Tensor) -> Tensor:
    """PointGPT's patch order (``simplied_morton_sorting``, which is not a Morton order).

    Start at patch 0, then repeatedly append the unvisited centre closest to the last appended one
    (first index on ties). centers (B, G, 3) -> order (B, G) int64, a permutation per sample.
    Distances are squared Euclidean from explicit differences (the official code uses ``torch.cdist``,
    whose matmul path can flip near-ties).
    """
    b, g, _ = centers.shape
    dist = (centers.unsqueeze(2) - centers.unsqueeze(1)).pow(2).sum(-1)  # (B, G, G)
    visited = torch.zeros(b, g, dtype=torch.bool, device=centers.device)
    order = torch.zeros(b, g, dtype=torch.long, device=centers.device)
    rows = torch.arange(b, device=centers.device)
    last = order[:, 0]
    visited[rows, last] = True
    for step in range(1, g):
        candidate = dist[rows, last].masked_fill(visited, float("inf"))
        last = candidate.argmin(dim=1)
        order[:, step] = last
        visited[rows, last] = True
    return order


class PatchGrouper(nn.Module):
    """Split each cloud into ``num_group`` patches of ``group_size`` points.

    Centres are FPS points (start index 0); each patch holds the centre's kNN (the centre itself first),
    expressed relative to the centre (no scale normalisation). ``order="nn_chain"`` re-orders the patches
    as PointGPT does. ``skip_near_origin`` reproduces the official CUDA FPS kernel's skip of points with
    x²+y²+z² <= 1e-3.

    points (B, N, 3) -> (neighborhood (B, G, K, 3), centers (B, G, 3)); tuners hook this module's output
    to learn the token centres of the current forward.
    """

    def __init__(self, num_group: int, group_size: int, *, order: str = "fps", skip_near_origin: bool = False):
        super().__init__()
        if order not in ("fps", "nn_chain"):
            raise ValueError(f"unknown patch order {order!r}; choose 'fps' or 'nn_chain'")
        if num_group < 1 or group_size < 1:
            raise ValueError(f"num_group and group_size must be positive, got {num_group} and {group_size}")
        self.num_group = num_group
        self.group_size = group_size
        self.order = order
        self.skip_near_origin = skip_near_origin

    @property
    def min_points(self) -> int:
        """Fewest points per cloud this grouping can handle."""
        return max(self.num_group, self.group_size)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        center_idx = farthest_point_sample(points, self.num_group, skip_near_origin=self.skip_near_origin)
        centers = gather_points(points, center_idx)  # (B, G, 3)
        neighbor_idx = knn_indices(centers, points, self.group_size)  # (B, G, K)
        neighborhood = gather_points(points, neighbor_idx) - centers.unsqueeze(2)
        if self.order == "nn_chain":
            chain = nearest_neighbor_chain(centers)
            centers = gather_points(centers, chain)
            neighborhood = torch.take_along_dim(neighborhood, chain[:, :, None, None], dim=1)
        return neighborhood, centers

    def extra_repr(self) -> str:
        return (f"num_group={self.num_group}, group_size={self.group_size}, order={self.order!r}, "
                f"skip_near_origin={self.skip_near_origin}")
