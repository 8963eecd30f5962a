"""Point-cloud transformer backbones (Point-MAE, PointGPT) and their checkpoint loaders."""

from .base import PointBackbone
from .checkpoint import LoadReport, read_checkpoint
from .factory import ARCHITECTURES, create_backbone, list_backbones, load_weights
from .point_mae import PointMAE
from .pointgpt import PointGPT
from .pretrained import PRETRAINED_CFGS, PretrainedCfg

__all__ = ["ARCHITECTURES", "PRETRAINED_CFGS", "LoadReport", "PointBackbone", "PointGPT", "PointMAE",
           "PretrainedCfg", "create_backbone", "list_backbones", "load_weights",
           "read_checkpoint"]
