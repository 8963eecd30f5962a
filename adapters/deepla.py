"""DeepLA-Net classification head on frozen point tokens, in pure PyTorch.

Reference: ``docs/alt_modules.md`` section A (DeepLA-Net, Zeng et al., CVPR 2025, ``zeng-ziyin/DeepLA-Net``: the
building blocks of A.2 and the hybrid deep supervision of A.4) and section C.4 (this head: DeepLA blocks on the final
tokens of a frozen Point-MAE / PointGPT, a design proposal of this toolkit, not a published method).

Top to bottom: the point-wise pieces (:class:`PointBatchNorm`, :func:`kemp`, :func:`knn_geometry`; stochastic
depth is :func:`pointgst.stochastic_depth.drop_path`), the DeepLA building blocks (:class:`VFR`, :class:`FFN`, :class:`StagePositionEmbedding`,
:class:`ResLFE`, :class:`Downsample`), then :class:`DeepLAHead` and its loss schedule :func:`hybrid_weights`.

Everything works on batches of clouds ``(B, N, C)`` at once. The released code packs a batch into one point set; the
per-cloud layout here is equivalent: BatchNorm normalises over all ``B * N`` points of the batch, stochastic depth
drops whole clouds, and neighbourhoods, scales and sampling never cross clouds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.ops import farthest_point_sample, gather_points, knn_indices
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
    "DeepLAHead",
    "hybrid_weights",
]

PE_DIMS = (3, 8, 16, 32)  # MLP_pe of the stage position embedding (``nbr_dims[1] = 32``, hidden 32 // 2, 16 // 2)
COR_DIM = 32  # hidden width of the spatial-supervision head ``cor_head``
LABEL_SMOOTHING = 0.2  # of the semantic-supervision cross-entropy (as the main loss of the released recipe)


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


def hybrid_weights(progress: float) -> tuple[float, float]:
    """Hybrid deep supervision weights at training progress ``t in [0, 1]``:
    ``alpha(t) = 0.25 * 0.005^t`` (spatial, 0.25 -> 1.25e-3) and ``beta(t) = 0.25 * 0.3^t``
    (semantic, 0.25 -> 0.075)."""
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be a number in [0, 1] (step / total_steps), got {progress!r}")
    return 0.25 * 0.005**progress, 0.25 * 0.3**progress


class DeepLAHead(nn.Module):
    """DeepLA-Net classification head on the final tokens of a frozen backbone (``alt_modules.md`` C.4).

    1. ``x = BN(Linear_{in_dim -> width}(tokens))`` (no bias: BN follows).
    2. Stage 0 at the N token centres; stage s > 0 keeps ``N_s = N // 2^s`` centres, the prefix of one farthest point
       sampling of the centres (start index 0), via :class:`Downsample` over the previous stage's kNN. FPS is re-run
       here, so the stages are FPS subsets for Point-MAE (centres already in FPS order: the same prefix) and PointGPT
       (centres in chain order) alike. The width stays ``width`` at every stage: the head sits on one token resolution
       and a few stages, so widening would only add parameters (``Downsample`` supports it).
    3. Every stage builds its own kNN graph (k, self included), scale sigma (mean kNN edge length of each cloud) and
       :class:`StagePositionEmbedding`, then runs a :class:`ResLFE` of ``depths[s]`` iterations; stochastic-depth rates
       ``linspace(0, drop_path_rate, sum(depths))`` split over the stages.
    4. ``[max, mean]`` over the last stage's points -> Linear(2 width -> hidden) BN GELU Dropout(0.5) ->
       Linear(hidden -> hidden) BN GELU -> Linear(hidden -> num_classes) (C.4's light PEFT classifier).
    5. ``hybrid=True`` adds hybrid deep supervision (training only, A.4 / C.4 step 6): per stage a semantic head
       ``Linear_{no bias}(BN(max-pooled stage feature))`` and a spatial ``cor_head`` (Linear width->32 no bias, BN,
       GELU, Linear 32->3 no bias) regressing ``(p_j - p_i) / sigma`` by ``h_j - h_i`` (MSE over all kNN edges).
       A training forward stores them in :attr:`semantic_logits` and :attr:`spatial_losses` (cleared by every
       forward, left empty in eval mode); :meth:`auxiliary_loss` weighs them. They never touch the main logits.

    Geometry (FPS, kNN, sigma) is computed from the centres without gradient, per cloud; in eval mode a cloud's logits
    do not depend on the rest of its batch. Init: trunc-normal(0.02) Linear weights, zero biases, BatchNorm weights 1
    except the gamma0 overrides (position embedding 0.2, leading FFN 0.2, in-loop VFR/FFN 0, downsampling 0.3), so an
    untrained head is "projection + leading FFN + position embeddings + pooling + classifier".

    Parameters, with I = ``in_dim``, C = ``width``, K = ``num_classes``, H = ``hidden``, S = ``len(depths)``,
    D = ``sum(depths)``::

        I C + 2 C                                  input projection
        + S (712 + 34 C)                           stage position embeddings
        + S (2 C^2 + 3 C) + D (3 C^2 + 5 C)        ResLFE blocks (leading FFN; VFR + FFN per iteration)
        + (S - 1) (2 C^2 + 4 C)                    downsampling (skip projection + VFR)
        + 2 C H + H^2 + 4 H + H K + K              classifier
        [+ S (C K + 34 C + 160)]                   hybrid: semantic (BN + Linear) and cor_head per stage

    Defaults with I = 384, K = 40 (C = 128, depths (2, 2), H = 256): 500,664 (519,928 with ``hybrid=True``).

    Args:
        in_dim: token width of the backbone (384 for Point-MAE / PointGPT-S).
        num_classes: K.
        width: C, the head's width at every stage.
        depths: ResLFE iterations per stage; ``len(depths)`` stages.
        k: neighbours per centre (itself included) at every stage; needs ``N // 2^(S-1) >= k``.
        drop_path_rate: largest stochastic-depth rate, in [0, 1).
        hybrid: add hybrid deep supervision heads.
        hidden: H, width of the classifier MLP.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        *,
        width: int = 128,
        depths: tuple[int, ...] = (2, 2),
        k: int = 16,
        drop_path_rate: float = 0.1,
        hybrid: bool = False,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("num_classes", num_classes), ("width", width), ("k", k),
                            ("hidden", hidden)):
            check_int(name, value, 1)
        depths = tuple(depths)
        if not depths:
            raise ValueError("depths must name at least one stage, e.g. (2, 2)")
        for depth in depths:
            check_int("every entry of depths", depth, 1)
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.width = width
        self.depths = depths
        self.k = k
        self.hybrid = bool(hybrid)
        self.hidden = hidden

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:s]) for s in range(len(depths))]
        self.proj = nn.Sequential(_linear(in_dim, width, bias=False), PointBatchNorm(width))
        self.stages = nn.ModuleList(
            DeepLAStage(width, depth, rates[start : start + depth], downsample=s > 0)
            for s, (depth, start) in enumerate(zip(depths, starts))
        )
        self.classifier = nn.Sequential(
            _linear(2 * width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(0.5),
            _linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
            _linear(hidden, num_classes, bias=True),
        )
        if self.hybrid:  # built last, so the main weights do not depend on the flag under a fixed seed
            self.semantic_heads = nn.ModuleList(
                nn.Sequential(nn.BatchNorm1d(width), _linear(width, num_classes, bias=False)) for _ in depths
            )
            self.cor_heads = nn.ModuleList(
                nn.Sequential(_linear(width, COR_DIM, bias=False), PointBatchNorm(COR_DIM), nn.GELU(),
                              _linear(COR_DIM, 3, bias=False))
                for _ in depths
            )
        self.semantic_logits: list[Tensor] = []  # per stage (B, num_classes), last training forward with hybrid on
        self.spatial_losses: list[Tensor] = []  # per stage scalar edge MSE, same

    @property
    def min_points(self) -> int:
        """Fewest point tokens per cloud: the last stage (``N // 2^(S-1)`` centres) needs k of them."""
        return self.k * 2 ** (len(self.depths) - 1)

    def _check_inputs(self, tokens: Tensor, centers: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[-1] != self.in_dim \
                or not tokens.is_floating_point():
            got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a floating-point (B, T, in_dim={self.in_dim}) tensor, got {got}")
        batch, t = tokens.shape[:2]
        if not isinstance(centers, Tensor) or centers.dim() != 3 or centers.shape[-1] != 3 \
                or centers.shape[0] != batch or not centers.is_floating_point():
            got = f"{centers.dtype} {tuple(centers.shape)}" if isinstance(centers, Tensor) else type(centers).__name__
            raise ValueError(f"centers must be a floating-point (B={batch}, N, 3) tensor, got {got}")
        n = centers.shape[1]
        if n > t:
            raise ValueError(
                f"got {n} centres but only {t} tokens; the last N tokens must be the point tokens of those centres"
            )
        factor = 2 ** (len(self.depths) - 1)
        if n // factor < self.k:
            raise ValueError(
                f"{n} point tokens per cloud are too few: the last of {len(self.depths)} stages keeps "
                f"N // {factor} = {n // factor} centres and needs k={self.k}; "
                f"use at least {self.min_points} tokens, a smaller k or fewer stages"
            )
        if self.training and batch < 2:
            raise ValueError("training mode needs at least 2 clouds per batch (BatchNorm over pooled features)")
        for name, value in (("tokens", tokens[:, t - n :]), ("centers", centers)):
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contain NaN or inf values; clean or drop those clouds first")

    def forward(self, tokens: Tensor, centers: Tensor) -> Tensor:
        """Point tokens and their centres -> logits ``(B, num_classes)``.

        Args:
            tokens: ``(B, T, in_dim)`` final tokens; the last N are the point tokens (leading special tokens such as
                cls are ignored, so the full token sequence of a backbone can be passed as is).
            centers: ``(B, N, 3)`` centres of the point tokens, in token order.
        """
        self._check_inputs(tokens, centers)
        self.semantic_logits, self.spatial_losses = [], []
        supervise = self.hybrid and self.training
        n = centers.shape[1]
        p = centers.detach()
        x = self.proj(tokens[:, tokens.shape[1] - n :])
        order = farthest_point_sample(p, n // 2) if len(self.stages) > 1 else None
        knn = None
        for s, stage in enumerate(self.stages):
            if stage.downsample is not None:
                m = n >> s
                ids = order[:, :m] if s == 1 else torch.arange(m, device=p.device).expand(p.shape[0], m)
                x = stage.downsample(x, knn, ids)
                p = gather_points(p, ids)
            knn, relative = knn_geometry(p, self.k)
            x = stage(x, knn, relative)
            if supervise:
                self.semantic_logits.append(self.semantic_heads[s](x.max(dim=1).values))
                h = self.cor_heads[s](x)
                self.spatial_losses.append(F.mse_loss(gather_points(h, knn) - h[:, :, None], relative))
        return self.classifier(torch.cat([x.max(dim=1).values, x.mean(dim=1)], dim=-1))

    def auxiliary_loss(self, labels: Tensor, progress: float) -> Tensor:
        """Hybrid deep supervision loss of the last forward, to add to the main cross-entropy:
        ``alpha(t) sum_s L_spa,s + beta(t) sum_s CE(sem_s, labels; label_smoothing 0.2)`` (:func:`hybrid_weights`).

        Exactly zero (a 0-d tensor) when ``hybrid`` is off or the head is in eval mode.

        Args:
            labels: ``(B,)`` int64 class indices of the last forward's clouds.
            progress: t = step / total_steps in [0, 1].
        """
        alpha, beta = hybrid_weights(progress)
        if not (self.hybrid and self.training):
            return self.classifier[-1].weight.new_zeros(())
        if not self.semantic_logits:
            raise RuntimeError("no auxiliary outputs: call forward in training mode before auxiliary_loss")
        batch = self.semantic_logits[0].shape[0]
        if not isinstance(labels, Tensor) or labels.shape != (batch,) or labels.dtype != torch.int64:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be an int64 tensor of shape (B={batch},), got {got}")
        spatial = torch.stack(self.spatial_losses).sum()
        semantic = torch.stack([
            F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING) for logits in self.semantic_logits
        ]).sum()
        return alpha * spatial + beta * semantic

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_classes={self.num_classes}, width={self.width}, depths={self.depths}, "
            f"k={self.k}, hybrid={self.hybrid}, hidden={self.hidden}"
        )
