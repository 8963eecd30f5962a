"""Which of the backbone's patches are PPT's prompt patches (``docs/peft_methods/ppt.md`` §2.1, §8.2)."""

import torch
from torch import Tensor

from pointgst.backbones.grouping import nearest_neighbor_chain
from pointgst.ops import farthest_point_sample, gather_points


def prompt_indices(centers: Tensor, count: int, *, chained: bool) -> Tensor:
    """Positions among the backbone's patches of the ``count`` patches a second grouping of the cloud gives (the
    official second ``Group`` with ``count`` centres), in that grouping's order.

    FPS is greedy from the cloud's index 0, so the ``count`` FPS centres are the first ``count`` of the backbone's. In
    FPS order (Point-MAE, ``chained=False``) they are positions ``0..count-1``. In PointGPT's nearest-neighbour-chain
    order (``chained=True``) they are spread along the chain: FPS over the chained centres from chain position 0 (the
    cloud's first FPS centre) picks the same centres (barring exact distance ties: the distances are the same float32
    sums), and they are chained among themselves as PointGPT's grouping chains its own; all of them keep the chain.

    centers (B, L, 3) -> indices (B, count) int64 into L.
    """
    b, g, _ = centers.shape
    if not chained or count == g:
        return torch.arange(count, device=centers.device).expand(b, -1)
    picked = farthest_point_sample(centers, count)  # (B, count) chain positions
    return picked.gather(1, nearest_neighbor_chain(gather_points(centers, picked)))


def take(values: Tensor, index: Tensor) -> Tensor:
    """values (B, L, ...) at index (B, P) along dim 1 -> (B, P, ...) (differentiable in ``values``)."""
    return torch.take_along_dim(values, index.view(*index.shape, *(1,) * (values.dim() - 2)), dim=1)
