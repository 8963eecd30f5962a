"""The DeepLA-Net head (``deepla_head``): config, building blocks, classification head, segmentation decoder, registry
entry."""

from torch import nn

from ..registry import HEAD, MethodSpec
from .blocks import (
    FFN,
    VFR,
    DeepLAStage,
    Downsample,
    PointBatchNorm,
    ResLFE,
    StagePositionEmbedding,
    kemp,
    knn_geometry,
)
from .config import DeepLAHeadConfig
from .head import DeepLAHead, DeepLAStages, hybrid_weights
from .segmentation import DeepLASegmentationHead


def build_head(backbone: nn.Module, config: DeepLAHeadConfig) -> DeepLAStages:
    """The head for ``backbone``'s task: a :class:`DeepLASegmentationHead` on a segmentation model's fetched tokens
    (replacing its ``segment`` step), a :class:`DeepLAHead` on a classification model's final tokens."""
    options = dict(width=config.width, depths=config.depths, k=config.k, hybrid=config.hybrid_supervision)
    if backbone.task == "segmentation":
        return DeepLASegmentationHead(len(backbone.fetch_layers) * backbone.embed_dim, backbone.num_classes,
                                      backbone.num_categories, **options)
    return DeepLAHead(backbone.embed_dim, backbone.num_classes, **options)


METHOD = MethodSpec(
    name="deepla_head", config_class=DeepLAHeadConfig, attaches=HEAD, exact_at_init=False, trains_cls_tokens=False,
    summary="a DeepLA-Net head (ResLFE stages over the final tokens and their centres) replacing the classification "
            "or segmentation head; hybrid_supervision=True adds per-stage losses during training",
    build=build_head)

__all__ = ["FFN", "METHOD", "VFR", "DeepLAHead", "DeepLAHeadConfig", "DeepLASegmentationHead", "DeepLAStage",
           "DeepLAStages", "Downsample", "PointBatchNorm", "ResLFE", "StagePositionEmbedding", "build_head",
           "hybrid_weights", "kemp", "knn_geometry"]
