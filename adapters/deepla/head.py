"""The DeepLA-Net head on the final tokens of a frozen backbone (``deepla_head``), with hybrid deep supervision
(``docs/methods.md``, "DeepLA head": pointgst's design from DeepLA-Net's blocks, not a published method)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.ops import farthest_point_sample, gather_points
from pointgst.validation import check_int

from .blocks import DeepLAStage, PointBatchNorm, _linear, knn_geometry

COR_DIM = 32  # hidden width of the spatial-supervision head ``cor_head``
LABEL_SMOOTHING = 0.2  # of the semantic-supervision cross-entropy (as the main loss of the released recipe)


def hybrid_weights(progress: float) -> tuple[float, float]:
    """Hybrid deep supervision weights at training progress ``t in [0, 1]``:
    ``alpha(t) = 0.25 * 0.005^t`` (spatial, 0.25 -> 1.25e-3) and ``beta(t) = 0.25 * 0.3^t``
    (semantic, 0.25 -> 0.075)."""
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be a number in [0, 1] (step / total_steps), got {progress!r}")
    return 0.25 * 0.005**progress, 0.25 * 0.3**progress


class DeepLAStages(nn.Module):
    """What the DeepLA heads share: the input projection ``BN(Linear_{in_dim -> width}(tokens))``, the DeepLA stages
    over the token centres (FPS-prefix downsampling, per-stage kNN, scale and position embedding, ResLFE; see
    :class:`DeepLAHead`), and with ``hybrid=True`` the per-stage supervision heads and the hybrid loss
    ``alpha(t) sum_s L_spa,s + beta(t) L_sem`` (:meth:`auxiliary_loss`; the subclass defines its semantic term).

    A subclass builds its own output modules, then calls :meth:`_add_supervision_heads` (last, so that its main
    weights do not depend on ``hybrid`` under a fixed seed), and runs :meth:`_stage_features` in its forward.
    """

    def __init__(self, in_dim: int, num_classes: int, *, width: int, depths: tuple[int, ...], k: int,
                 drop_path_rate: float, hybrid: bool, hidden: int) -> None:
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
        self.semantic_logits: list[Tensor] = []  # per stage, last training forward with hybrid on
        self.spatial_losses: list[Tensor] = []  # per stage scalar edge MSE, same

    def _add_supervision_heads(self) -> None:
        """Per stage a semantic head ``Linear_{no bias}(BN(feature))`` (width -> num_classes; a pooled ``(B, C)`` or
        per-point ``(B, N, C)`` feature) and a spatial ``cor_head`` (Linear width->32 no bias, BN, GELU, Linear 32->3
        no bias)."""
        self.semantic_heads = nn.ModuleList(
            nn.Sequential(PointBatchNorm(self.width), _linear(self.width, self.num_classes, bias=False))
            for _ in self.depths
        )
        self.cor_heads = nn.ModuleList(
            nn.Sequential(_linear(self.width, COR_DIM, bias=False), PointBatchNorm(COR_DIM), nn.GELU(),
                          _linear(COR_DIM, 3, bias=False))
            for _ in self.depths
        )

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
            raise ValueError("training mode needs at least 2 clouds per batch (BatchNorm over per-cloud features)")
        for name, value in (("tokens", tokens[:, t - n :]), ("centers", centers)):
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contain NaN or inf values; clean or drop those clouds first")

    def _stage_features(self, tokens: Tensor, centers: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The stages over the point tokens: tokens ``(B, T, in_dim)`` (the last N are the point tokens), centres
        ``(B, N, 3)`` -> per stage ``(features (B, N_s, width), centres (B, N_s, 3))``, ``N_s = N // 2^s`` (stage 0:
        every centre, in token order). Clears :attr:`semantic_logits` and :attr:`spatial_losses` and, in a training
        forward with ``hybrid``, records each stage's spatial loss."""
        self._check_inputs(tokens, centers)
        self.semantic_logits, self.spatial_losses = [], []
        supervise = self.hybrid and self.training
        n = centers.shape[1]
        p = centers.detach()
        x = self.proj(tokens[:, tokens.shape[1] - n :])
        order = farthest_point_sample(p, n // 2) if len(self.stages) > 1 else None
        knn = None
        features = []
        for s, stage in enumerate(self.stages):
            if stage.downsample is not None:
                m = n >> s
                ids = order[:, :m] if s == 1 else torch.arange(m, device=p.device).expand(p.shape[0], m)
                x = stage.downsample(x, knn, ids)
                p = gather_points(p, ids)
            knn, relative = knn_geometry(p, self.k)
            x = stage(x, knn, relative)
            if supervise:
                h = self.cor_heads[s](x)
                self.spatial_losses.append(F.mse_loss(gather_points(h, knn) - h[:, :, None], relative))
            features.append((x, p))
        return features

    def _semantic_loss(self, labels: Tensor) -> Tensor:
        """The summed per-stage semantic cross-entropy of the last training forward against ``labels``."""
        raise NotImplementedError

    def auxiliary_loss(self, labels: Tensor, progress: float) -> Tensor:
        """Hybrid deep supervision loss of the last forward, to add to the main cross-entropy:
        ``alpha(t) sum_s L_spa,s + beta(t) sum_s CE(sem_s, labels_s; label_smoothing 0.2)`` (:func:`hybrid_weights`).

        Exactly zero (a 0-d tensor) when ``hybrid`` is off or the head is in eval mode.

        Args:
            labels: the last forward's labels: ``(B,)`` int64 class indices for :class:`DeepLAHead`, ``(B, N)``
                int64 part ids of the input points for the segmentation head.
            progress: t = step / total_steps in [0, 1].
        """
        alpha, beta = hybrid_weights(progress)
        if not (self.hybrid and self.training):
            return self.proj[0].weight.new_zeros(())
        if not self.semantic_logits:
            raise RuntimeError("no auxiliary outputs: call forward in training mode before auxiliary_loss")
        return alpha * torch.stack(self.spatial_losses).sum() + beta * self._semantic_loss(labels)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_classes={self.num_classes}, width={self.width}, depths={self.depths}, "
            f"k={self.k}, hybrid={self.hybrid}, hidden={self.hidden}"
        )


class DeepLAHead(DeepLAStages):
    """DeepLA-Net classification head on the final tokens of a frozen backbone.

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
       Linear(hidden -> hidden) BN GELU -> Linear(hidden -> num_classes) (the light PEFT classifier of
       ``docs/methods.md`` §4.1, step 4).
    5. ``hybrid=True`` adds hybrid deep supervision (training only, ``docs/methods.md`` §3.3 and §4.1 step 5): per
       stage a semantic head ``Linear_{no bias}(BN(max-pooled stage feature))`` and a spatial ``cor_head`` (Linear
       width->32 no bias, BN, GELU, Linear 32->3 no bias) regressing ``(p_j - p_i) / sigma`` by ``h_j - h_i`` (MSE
       over all kNN edges).
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
        super().__init__(in_dim, num_classes, width=width, depths=depths, k=k, drop_path_rate=drop_path_rate,
                         hybrid=hybrid, hidden=hidden)
        self.classifier = nn.Sequential(
            _linear(2 * width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(0.5),
            _linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
            _linear(hidden, num_classes, bias=True),
        )
        if self.hybrid:
            self._add_supervision_heads()

    def forward(self, tokens: Tensor, geometry: TokenGeometry) -> Tensor:
        """Point tokens and their geometry -> logits ``(B, num_classes)``.

        Args:
            tokens: ``(B, T, in_dim)`` final tokens; the last N are the point tokens (leading special tokens such as
                cls are ignored, so the full token sequence of a backbone can be passed as is).
            geometry: the token geometry of the forward (``geometry.centers`` ``(B, N, 3)``: centres of the point
                tokens, in token order).
        """
        stages = self._stage_features(tokens, geometry.centers)
        if self.hybrid and self.training:
            self.semantic_logits = [head(x.max(dim=1).values) for head, (x, _) in zip(self.semantic_heads, stages)]
        x = stages[-1][0]
        return self.classifier(torch.cat([x.max(dim=1).values, x.mean(dim=1)], dim=-1))

    def _semantic_loss(self, labels: Tensor) -> Tensor:
        """Per-stage cross-entropy of the pooled stage logits ``(B, num_classes)`` against labels ``(B,)`` int64."""
        batch = self.semantic_logits[0].shape[0]
        if not isinstance(labels, Tensor) or labels.shape != (batch,) or labels.dtype != torch.int64:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be an int64 tensor of shape (B={batch},), got {got}")
        return torch.stack([
            F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING) for logits in self.semantic_logits
        ]).sum()
