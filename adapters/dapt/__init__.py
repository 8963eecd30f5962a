"""DAPT (Dynamic Adapter + Internal Prompt, CVPR 2024): config, modules (Point-MAE and PointGPT families), and its
registry entry (``docs/peft_methods/dapt.md``)."""

from ..registry import FORWARD, MethodSpec
from ..whole_forward import POINT_MAE_FAMILY, POINTGPT_FAMILY
from .config import OFFICIAL_OPTIONS, DAPTConfig
from .gpt import GPTDAPT, GPTDAPTBlock
from .layers import DAPTBlock, DynamicAdapter, ScaleShift
from .module import DAPT, build_dapt
from .official import OFFICIAL_MARKER, options_from_official

METHOD = MethodSpec(
    name="dapt", config_class=DAPTConfig, attaches=FORWARD, exact_at_init=False, trains_cls_tokens=True,
    summary="DAPT: scale-and-shift factors around the frozen layers, a dynamic adapter parallel to each MLP, an "
            "internal prompt per block, cls token + position, its own head",
    build=build_dapt, official_options=OFFICIAL_OPTIONS, official_marker=OFFICIAL_MARKER,
    options_from_official=options_from_official,
    backbones=POINT_MAE_FAMILY + POINTGPT_FAMILY)

__all__ = ["DAPT", "DAPTBlock", "DAPTConfig", "DynamicAdapter", "GPTDAPT", "GPTDAPTBlock", "METHOD", "ScaleShift",
           "build_dapt", "options_from_official"]
