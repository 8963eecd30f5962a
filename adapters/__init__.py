"""Tuning methods, one folder each, and the registry that names them (``docs/design.md``, "Methods").

Adding a method = adding its folder (config dataclass, module, ``METHOD`` spec) and one line below. The ``forward``
methods (DAPT, IDPT, GAPrompt, PPT) are each described in ``docs/peft_methods/``.
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
    dapt.METHOD,
    idpt.METHOD,
    gaprompt.METHOD,
    ppt.METHOD,
    lora.METHOD,
    LINEAR,
    FULL_FINE_TUNING,
])


def list_methods() -> list[str]:
    """Every method name ``pointgst.wrap`` accepts, combinations (``pcsa+deepla_head``) included."""
    return METHODS.names()


__all__ = ["ATTACH_POINTS", "DCNv4", "DCNv4Config", "DeepLAHead", "DeepLAHeadConfig", "DeformablePointLayer", "FORWARD",
           "FULL",
           "HEAD", "HEAD_ONLY", "LORA", "LoraOptions", "METHODS", "MethodSpec", "PARALLEL", "PCSA", "PCSAConfig",
           "Registry", "help_text", "list_methods"]
