"""The DeepLA-Net head (``deepla_head``): config, building blocks, head, registry entry."""

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
from .head import DeepLAHead, hybrid_weights

METHOD = MethodSpec(
    name="deepla_head", config_class=DeepLAHeadConfig, attaches=HEAD, exact_at_init=False, trains_cls_tokens=False,
    summary="a DeepLA-Net head (ResLFE stages over the final tokens and their centres) replacing the head; "
            "hybrid_supervision=True adds per-stage losses during training",
    build=lambda backbone, config: DeepLAHead(backbone.embed_dim, backbone.num_classes, width=config.width,
                                              depths=config.depths, k=config.k, hybrid=config.hybrid_supervision))

__all__ = ["FFN", "METHOD", "VFR", "DeepLAHead", "DeepLAHeadConfig", "DeepLAStage", "Downsample", "PointBatchNorm",
           "ResLFE", "StagePositionEmbedding", "hybrid_weights", "kemp", "knn_geometry"]
