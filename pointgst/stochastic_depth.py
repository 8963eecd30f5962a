"""Stochastic depth (DropPath), shared by the backbones' blocks and the tunable modules."""

import torch
from torch import Tensor


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Per-sample stochastic depth (timm 0.4.5 semantics): ``x (B, ...)`` times ``floor(keep + U) / keep`` per
    sample, ``keep = 1 - rate``; the identity when not training or ``rate == 0``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device))
    return x.div(keep) * mask
