"""PointGST's Point Cloud Spectral Adapter (``pcsa``): config, module, and its registry entry."""

from ..registry import PARALLEL, MethodSpec
from .config import OFFICIAL_OPTIONS, PCSAConfig
from .module import PCSA

METHOD = MethodSpec(
    name="pcsa", config_class=PCSAConfig, attaches=PARALLEL, exact_at_init=True, trains_cls_tokens=True,
    summary="PointGST: a Point Cloud Spectral Adapter parallel to the FFN of every block, cls token + position, head",
    build=lambda backbone, config: PCSA(backbone.embed_dim, rank=config.rank, spectral=config.spectral_options()),
    official_options=OFFICIAL_OPTIONS)

__all__ = ["METHOD", "PCSA", "PCSAConfig"]
