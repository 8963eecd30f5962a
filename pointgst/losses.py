"""Point-set losses in plain torch."""

import torch
from torch import Tensor


def chamfer_sq_distances(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Squared nearest-neighbour distances between two point sets.

    a: (B, N, 3), b: (B, M, 3) -> (d_ab (B, N), d_ba (B, M)): for each point of ``a`` its squared distance to
    the closest point of ``b``, and vice versa.
    """
    d = (a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(-1)  # (B, N, M)
    return d.min(dim=2).values, d.min(dim=1).values


def chamfer_l2(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer-L2 as in Point-MAE / PointGPT: ``mean(d_ab) + mean(d_ba)`` of squared distances. Scalar."""
    d_ab, d_ba = chamfer_sq_distances(a, b)
    return d_ab.mean() + d_ba.mean()


def chamfer_l1(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer-L1 as in PointGPT: ``(mean(sqrt(d_ab)) + mean(sqrt(d_ba))) / 2``. Scalar."""
    d_ab, d_ba = chamfer_sq_distances(a, b)
    return (torch.sqrt(d_ab).mean() + torch.sqrt(d_ba).mean()) / 2
