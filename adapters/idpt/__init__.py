"""Instance-aware Dynamic Prompt Tuning (``idpt``, ICCV 2023): config, prompt generator, forward module, official
checkpoint facts and its registry entry (``docs/peft_methods/idpt.md``)."""

from ..registry import FORWARD, MethodSpec
from ..whole_forward import POINT_MAE_FAMILY, POINTGPT_FAMILY
from .config import HEAD_INPUTS, IDPTConfig
from .generator import EdgeConv, PromptGenerator, feature_knn
from .module import IDPT, build_idpt
from .official import OFFICIAL_MARKER, options_from_official

METHOD = MethodSpec(
    name="idpt", config_class=IDPTConfig, attaches=FORWARD, exact_at_init=False, trains_cls_tokens=True,
    summary="IDPT: a DGCNN prompt generator turns the point tokens entering one block into an instance-aware prompt "
            "token kept to the end; cls token + position, new head",
    build=build_idpt, official_marker=OFFICIAL_MARKER, options_from_official=options_from_official,
    backbones=POINT_MAE_FAMILY + POINTGPT_FAMILY)

__all__ = ["HEAD_INPUTS", "IDPT", "IDPTConfig", "METHOD", "OFFICIAL_MARKER", "EdgeConv", "PromptGenerator",
           "build_idpt", "feature_knn", "options_from_official"]
