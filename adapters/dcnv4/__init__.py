"""DCNv4-style deformable point layers (``dcnv4``): config, the point layer, the 2-D DCNv4 operator, registry entry."""

from ..registry import PARALLEL, MethodSpec
from .config import DCNv4Config
from .op import DCNv4, dcnv4_output_size, dcnv4_sample
from .point_layer import DeformablePointLayer

METHOD = MethodSpec(
    name="dcnv4", config_class=DCNv4Config, attaches=PARALLEL, exact_at_init=True, trains_cls_tokens=True,
    summary="a DCNv4-style deformable point layer (offsets around the K nearest token centres, unnormalised "
            "modulation) parallel to the FFN of every block, cls token + position, head",
    build=lambda backbone, config: DeformablePointLayer(backbone.embed_dim, hidden=config.rank, groups=config.groups,
                                                        num_points=config.num_points))

__all__ = ["DCNv4", "DCNv4Config", "DeformablePointLayer", "METHOD", "dcnv4_output_size", "dcnv4_sample"]
