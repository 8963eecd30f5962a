"""The DeepLA-Net decoder as a part-segmentation head (``deepla_head`` on a segmentation backbone), with hybrid deep
supervision (``docs/methods.md`` §4.4: pointgst's design from DeepLA-Net's released segmentation network, not a
published method)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.backbones.segmentation import FeaturePropagation
from pointgst.geometry import TokenGeometry
from pointgst.ops import gather_points, knn_indices
from pointgst.validation import check_int

from .blocks import PointBatchNorm, _linear
from .head import LABEL_SMOOTHING, DeepLAStages

CATEGORY_DIM = 64  # width of the category embedding (Point-MAE's ``label_conv``)


class DeepLASegmentationHead(DeepLAStages):
    """DeepLA-Net segmentation decoder on the fetched tokens of a frozen segmentation backbone: per-point part logits
    for every input point.

    1. Input projection and DeepLA stages over the G token centres exactly as :class:`DeepLAHead` (steps 1-3): stage
       s keeps ``G // 2^s`` centres (FPS prefix), each stage its own kNN, scale, position embedding and ResLFE.
    2. Multi-scale fusion as DeepLA-Net's released segmentation network (no decoder blocks): per stage
       ``y_s = Linear_{no bias}(BN(x_s))`` (width -> width; the released BN gamma0 ``sqrt(C_0 / C_s)`` is 1 at one
       width), brought back to the G centres by 1-NN (each centre takes its nearest stage-s point) and summed.
    3. Feature propagation from the centres to the N input points (:class:`FeaturePropagation`: 3-NN inverse-distance
       interpolation, the point's xyz put in front, Conv1d (width + 3 -> hidden) BN ReLU).
    4. Category: its one-hot through ``Linear_{no bias}(categories -> 64)`` BN LeakyReLU(0.2) (Point-MAE's
       ``label_conv``), repeated at every point.
    5. Per-point classifier on ``[propagated, category]``: Linear(hidden + 64 -> hidden, no bias) BN GELU
       Dropout(0.5) Linear(hidden -> num_classes).
    6. ``hybrid=True`` (training only): per stage a semantic head ``Linear_{no bias}(BN(x_s))`` giving part logits
       ``(B, N_s, num_classes)`` at the stage's points, compared with the part of the input point nearest to each
       stage point, and the spatial ``cor_head`` term of :class:`DeepLAHead`; :meth:`auxiliary_loss` takes the
       parts ``(B, N)`` of the forward's points. The auxiliary heads never touch the main logits.

    Geometry (FPS, kNN, 1-NN and 3-NN maps) is computed per cloud without gradient: in eval mode a cloud's logits do
    not depend on the rest of its batch. Init as :class:`DeepLAHead` (trunc-normal Linear weights, the gamma0
    overrides); the propagation's Conv1d keeps PyTorch's default, as in the Point-MAE head.

    Parameters, with I = ``in_dim``, C = ``width``, P = ``num_classes`` (parts), Q = ``num_categories``,
    H = ``hidden``, S = ``len(depths)``, D = ``sum(depths)``::

        I C + 2 C + S (712 + 34 C) + S (2 C^2 + 3 C)     projection, stage position embeddings, leading FFNs
        + D (3 C^2 + 5 C) + (S - 1) (2 C^2 + 4 C)        ResLFE iterations, downsampling
        + S (C^2 + 2 C)                                  per-stage outputs
        + (C + 3) H + 3 H                                feature propagation
        + 64 Q + 128                                     category embedding
        + (H + 64) H + 2 H + H P + P                     classifier
        [+ S (C P + 34 C + 160)]                         hybrid: semantic (BN + Linear) and cor_head per stage

    Args:
        in_dim: width of the fetched tokens (``len(fetch_layers) * embed_dim``: 1152 for Point-MAE's).
        num_classes: P, the parts.
        num_categories: Q, the shape categories.
        width, depths, k, drop_path_rate, hybrid: as :class:`DeepLAHead`.
        hidden: H, width of the feature propagation and the classifier.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_categories: int,
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
        check_int("num_categories", num_categories, 1)
        self.num_categories = num_categories
        self.outputs = nn.ModuleList(
            nn.Sequential(PointBatchNorm(width), _linear(width, width, bias=False)) for _ in self.depths
        )
        self.propagation = FeaturePropagation(width + 3, (hidden,))
        self.category_embed = nn.Sequential(_linear(num_categories, CATEGORY_DIM, bias=False),
                                            nn.BatchNorm1d(CATEGORY_DIM), nn.LeakyReLU(0.2))
        self.classifier = nn.Sequential(
            _linear(hidden + CATEGORY_DIM, hidden, bias=False), PointBatchNorm(hidden), nn.GELU(), nn.Dropout(0.5),
            _linear(hidden, num_classes, bias=True),
        )
        if self.hybrid:
            self._add_supervision_heads()
        self.stage_nearest: list[Tensor] = []  # per stage (B, N_s): the input point nearest each stage point
        self.parts_shape: tuple[int, int] | None = None  # (B, N) of the last supervised forward

    def _check_cloud(self, points: Tensor, category: Tensor, batch: int) -> None:
        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[0] != batch or points.shape[-1] != 3 \
                or not points.is_floating_point():
            got = f"{points.dtype} {tuple(points.shape)}" if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"points must be a floating-point (B={batch}, N, 3) tensor, got {got}")
        if not isinstance(category, Tensor) or category.shape != (batch,) or category.is_floating_point():
            got = f"{category.dtype} {tuple(category.shape)}" if isinstance(category, Tensor) else type(category)
            raise ValueError(f"category must be an integer tensor of shape (B={batch},), got {got}")

    def forward(self, tokens: Tensor, geometry: TokenGeometry, points: Tensor, category: Tensor) -> Tensor:
        """Fetched tokens, their geometry, the input points and the category -> part logits ``(B, N, num_classes)``.

        Args:
            tokens: ``(B, G, in_dim)`` fetched tokens, one per centre.
            geometry: the token geometry (``geometry.centers`` ``(B, G, 3)``, in token order).
            points: ``(B, N, 3)`` the input points, each of which gets logits.
            category: ``(B,)`` integer category ids in ``[0, num_categories)``.
        """
        centers = geometry.centers
        stages = self._stage_features(tokens, centers)
        self._check_cloud(points, category, tokens.shape[0])
        fused = self.outputs[0](stages[0][0])  # stage 0 is at every centre, in token order
        for output, (x, p) in zip(self.outputs[1:], stages[1:]):
            fused = fused + gather_points(output(x), knn_indices(centers, p, 1)[..., 0])
        per_point = self.propagation(points, points, centers, fused).transpose(1, 2)  # (B, N, hidden)
        embedded = self.category_embed(F.one_hot(category.long(), self.num_categories).to(per_point.dtype))
        logits = self.classifier(torch.cat([per_point, embedded[:, None].expand(-1, points.shape[1], -1)], dim=-1))
        self.stage_nearest, self.parts_shape = [], None
        if self.hybrid and self.training:
            self.semantic_logits = [head(x) for head, (x, _) in zip(self.semantic_heads, stages)]
            self.stage_nearest = [knn_indices(p, points, 1)[..., 0] for _, p in stages]
            self.parts_shape = tuple(points.shape[:2])
        return logits

    def _semantic_loss(self, labels: Tensor) -> Tensor:
        """Per-stage cross-entropy of the stage logits ``(B, N_s, num_classes)`` against the parts ``(B, N)`` (int64)
        of the input points nearest to the stage's points."""
        if not isinstance(labels, Tensor) or tuple(labels.shape) != self.parts_shape or labels.dtype != torch.int64:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"parts must be an int64 tensor of shape (B, N) = {self.parts_shape}, one part per input "
                             f"point of the last forward, got {got}")
        return torch.stack([
            F.cross_entropy(logits.flatten(0, 1), labels.gather(1, nearest).flatten(), label_smoothing=LABEL_SMOOTHING)
            for logits, nearest in zip(self.semantic_logits, self.stage_nearest)
        ]).sum()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_categories={self.num_categories}"
