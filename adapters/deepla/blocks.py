"""DeepLA-Net building blocks in pure PyTorch (``docs/methods.md``, "DeepLA-Net"; Zeng et al., CVPR 2025,
``zeng-ziyin/DeepLA-Net``).

Top to bottom: the point-wise pieces (:class:`PointBatchNorm`, :func:`kemp`, :func:`knn_geometry`; stochastic depth
is :func:`pointgst.stochastic_depth.drop_path`), then the DeepLA blocks (:class:`VFR`, :class:`FFN`,
:class:`StagePositionEmbedding`, :class:`ResLFE`, :class:`Downsample`, :class:`DeepLAStage`). The head built from
them is :class:`pointgst.adapters.deepla.DeepLAHead`.

Everything works on batches of clouds ``(B, N, C)`` at once. The released code packs a batch into one point set; the
per-cloud layout here is equivalent: BatchNorm normalises over all ``B * N`` points of the batch, stochastic depth
drops whole clouds, and neighbourhoods, scales and sampling never cross clouds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pointgst.ops import gather_points, knn_indices
from pointgst.stochastic_depth import drop_path
from pointgst.validation import check_int

__all__ = [
    "PointBatchNorm",
    "kemp",
    "knn_geometry",
    "VFR",
    "FFN",
    "StagePositionEmbedding",
    "ResLFE",
    "Downsample",
    "DeepLAStage",
]

PE_DIMS = (3, 8, 16, 32)  # MLP_pe of the stage position embedding (``nbr_dims[1] = 32``, hidden 32 // 2, 16 // 2)


def _linear(in_dim: int, out_dim: int, bias: bool) -> nn.Linear:
    """A Linear with DeepLA's init: trunc-normal(0.02) weight, zero bias."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer



class PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over every point of the batch: ``(..., C) -> (..., C)``, statistics over all leading positions
    (``B * N`` points, or ``B * N * k`` edges). The weight starts at ``gamma0`` (DeepLA's per-branch init)."""

    def __init__(self, dim: int, gamma0: float = 1.0) -> None:
        super().__init__(dim)
        nn.init.constant_(self.weight, gamma0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def kemp(features: Tensor, knn: Tensor) -> Tensor:
    """kNN edge max-pool: ``out[b, i] = max_{j in knn[b, i]} f[b, j] - f[b, i]`` channel-wise (>= 0 when i is in its
    own neighbourhood). The gradient goes to one argmax neighbour per channel and, negated, to the centre.

    Args:
        features: ``(B, N, C)``.
        knn: ``(B, N, k)`` int64 indices into ``N``.

    Returns:
        ``(B, N, C)``.
    """
    if features.dim() != 3 or knn.dim() != 3 or knn.shape[:2] != features.shape[:2]:
        raise ValueError(
            f"kemp needs features (B, N, C) and knn (B, N, k) over the same points, got {tuple(features.shape)} "
            f"and {tuple(knn.shape)}"
        )
    return gather_points(features, knn).max(dim=2).values - features


def knn_geometry(centers: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """kNN graph of every cloud and its edge vectors in units of the cloud's spacing.

    ``sigma_b`` is the mean length of all ``N * k`` kNN edges of cloud b (self edges included); a cloud whose
    centres all coincide has only zero edges and keeps them zero (sigma taken as 1). Nothing depends on other clouds.

    Args:
        centers: ``(B, N, 3)`` centres (treated as fixed input: no gradient flows into them).
        k: neighbours per centre, itself included, ``k <= N``.

    Returns:
        ``knn (B, N, k)`` int64 (ascending distance, ties lowest index first) and
        ``relative (B, N, k, 3) = (p_j - p_i) / sigma``.
    """
    p = centers.detach()
    knn = knn_indices(p, p, k)
    offsets = gather_points(p, knn) - p[:, :, None]
    sigma = offsets.norm(dim=-1).mean(dim=(1, 2))
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return knn, offsets / sigma[:, None, None, None]


class VFR(nn.Module):
    """Vector-feature reduction ``VFR(x) = BN_gamma0(KEMP(W x))``: Linear without bias (applied before grouping),
    kNN edge max-pool of the relative features, BatchNorm whose weight starts at ``gamma0`` (0 inside ResLFE, so the
    residual branch is zero at init). ``(B, N, in_dim)``, ``(B, N, k)`` -> ``(B, N, out_dim)``.
    Parameters: ``in_dim * out_dim + 2 out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, gamma0: float = 0.0) -> None:
        super().__init__()
        self.proj = _linear(in_dim, out_dim, bias=False)
        self.norm = PointBatchNorm(out_dim, gamma0)

    def forward(self, x: Tensor, knn: Tensor) -> Tensor:
        return self.norm(kemp(self.proj(x), knn))


class FFN(nn.Module):
    """Point-wise feed-forward ``BN_gamma0(W2 GELU(W1 x + b1))``, W1: C -> round(C * mlp_ratio) with bias, W2 back to C
    without bias (DeepLA: ``mlp_ratio = 1``, no expansion). ``(..., C) -> (..., C)``.
    Parameters (ratio 1): ``2 C^2 + 3 C``."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0, gamma0: float = 0.0) -> None:
        super().__init__()
        hidden = round(dim * mlp_ratio)
        self.fc1 = _linear(dim, hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = _linear(hidden, dim, bias=False)
        self.norm = PointBatchNorm(dim, gamma0)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))


class StagePositionEmbedding(nn.Module):
    """Stage-level position embedding, computed once per stage:
    ``pe_i = BN_0.2(W_pe max_{j in knn(i)} MLP_pe((p_j - p_i) / sigma))``.

    ``MLP_pe`` = Linear 3->8, BN, GELU, Linear 8->16, BN, GELU, Linear 16->32 (Linear layers without bias, BatchNorm
    over all ``B * N * k`` edges); ``W_pe``: 32 -> C without bias. ``(B, N, k, 3)`` normalised edge vectors (from
    :func:`knn_geometry`) -> ``(B, N, C)``. Parameters: ``712 + 34 C``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(PE_DIMS[:-1], PE_DIMS[1:])):
            layers.append(_linear(a, b, bias=False))
            if i < len(PE_DIMS) - 2:
                layers += [PointBatchNorm(b), nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.proj = _linear(PE_DIMS[-1], dim, bias=False)
        self.norm = PointBatchNorm(dim, 0.2)

    def forward(self, relative: Tensor) -> Tensor:
        return self.norm(self.proj(self.mlp(relative).max(dim=2).values))


class ResLFE(nn.Module):
    """Residual local feature extraction, one per stage, in the released order:

    1. ``x <- x + DropPath_0(FFN_{gamma0=0.2}(x))`` (one leading FFN);
    2. for i = 0..depth-1: ``x <- x + pe``; ``x <- x + DropPath_i(VFR_i(x, knn))``; ``x <- x + DropPath_i(FFN_i(x))``.

    Every VFR / FFN branch inside the loop starts at exactly zero (BN gamma0 = 0), so a fresh block returns
    ``x + FFN_0(x) + depth * pe``. As released, the leading FFN shares the first iteration's drop rate.
    ``(B, N, C)``, ``(B, N, k)``, ``(B, N, C)`` -> ``(B, N, C)``. Parameters: ``2 C^2 + 3 C + depth (3 C^2 + 5 C)``.

    Args:
        dim: C.
        depth: inner iterations d >= 1.
        drop_path: d per-iteration stochastic-depth rates (default all 0).
        mlp_ratio: FFN hidden width / C.
    """

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float] | None = None, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        check_int("depth", depth, 1)
        rates = [0.0] * depth if drop_path is None else [float(rate) for rate in drop_path]
        if len(rates) != depth or not all(0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"drop_path must hold depth={depth} rates in [0, 1), got {drop_path!r}")
        self.drop_rates = tuple(rates)
        self.ffn0 = FFN(dim, mlp_ratio, gamma0=0.2)
        self.vfrs = nn.ModuleList(VFR(dim, dim, gamma0=0.0) for _ in range(depth))
        self.ffns = nn.ModuleList(FFN(dim, mlp_ratio, gamma0=0.0) for _ in range(depth))

    def forward(self, x: Tensor, knn: Tensor, pe: Tensor) -> Tensor:
        x = x + drop_path(self.ffn0(x), self.drop_rates[0], self.training)
        for vfr, ffn, rate in zip(self.vfrs, self.ffns, self.drop_rates):
            x = x + pe
            x = x + drop_path(vfr(x, knn), rate, self.training)
            x = x + drop_path(ffn(x), rate, self.training)
        return x

    def extra_repr(self) -> str:
        return f"drop_rates={self.drop_rates}"


class Downsample(nn.Module):
    """Transition to a coarser stage: ``x_sub = BN_0.3(W_skip x)[ids] + VFR_{0.3}(x; prev_knn)[ids]`` (aggregate at
    the finer resolution, keep the subset). ``(B, N, in_dim)``, ``(B, N, k)``, ``(B, M)`` -> ``(B, M, out_dim)``.
    Parameters: ``2 (in_dim out_dim + 2 out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.skip_proj = nn.Sequential(_linear(in_dim, out_dim, bias=False), PointBatchNorm(out_dim, 0.3))
        self.vfr = VFR(in_dim, out_dim, gamma0=0.3)

    def forward(self, x: Tensor, knn: Tensor, ids: Tensor) -> Tensor:
        return gather_points(self.skip_proj(x) + self.vfr(x, knn), ids)


class DeepLAStage(nn.Module):
    """One resolution of the head: optional :class:`Downsample` from the previous stage, the stage's own kNN graph and
    :class:`StagePositionEmbedding`, then a :class:`ResLFE` block."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = Downsample(dim, dim) if downsample else None
        self.pos_embed = StagePositionEmbedding(dim)
        self.block = ResLFE(dim, depth, drop_path)

    def forward(self, x: Tensor, knn: Tensor, relative: Tensor) -> Tensor:
        """Stage features ``(B, N_s, C)`` (already downsampled), the stage's kNN and edge vectors -> ``(B, N_s, C)``."""
        return self.block(x, knn, self.pos_embed(relative))
