"""Tuning methods, one folder each, and the registry that names them (``docs/design.md``, "Methods").

Adding a method = adding its folder (config dataclass, module, ``METHOD`` spec) and one line below.
"""

from . import dapt, dcnv4, deepla, gaprompt, idpt, lora, pcsa, ppt
from .baselines import FULL_FINE_TUNING, LINEAR
from .dcnv4 import DCNv4, DCNv4Config, DeformablePointLayer
from .deepla import DeepLAHead, DeepLAHeadConfig
from .lora import LoraOptions
from .pcsa import PCSA, PCSAConfig
from .registry import (
    ATTACH_POINTS,
    FORWARD,
    FULL,
    HEAD,
    HEAD_ONLY,
    LORA,
    PARALLEL,
    MethodSpec,
    Registry,
    help_text,
)

METHODS = Registry([
    pcsa.METHOD,
    dcnv4.METHOD,
    deepla.METHOD,
    lora.METHOD,
    LINEAR,
    FULL_FINE_TUNING,
    dapt.METHOD,
    ppt.METHOD,
    gaprompt.METHOD,
    idpt.METHOD,
])


def list_methods() -> list[str]:
    """Every method name ``pointgst.wrap`` accepts, combinations (``pcsa+deepla_head``) included."""
    return METHODS.names()


__all__ = ["ATTACH_POINTS", "DCNv4", "DCNv4Config", "DeepLAHead", "DeepLAHeadConfig", "DeformablePointLayer", "FORWARD",
           "FULL",
           "HEAD", "HEAD_ONLY", "LORA", "LoraOptions", "METHODS", "MethodSpec", "PARALLEL", "PCSA", "PCSAConfig",
           "Registry", "help_text", "list_methods"]
