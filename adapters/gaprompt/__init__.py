"""GAPrompt (Geometry-Aware Point Cloud Prompt, ICML 2025): config, module, and its registry entry
(docs/peft_methods/gaprompt.md)."""

from ..registry import FORWARD, MethodSpec
from ..whole_forward import POINT_MAE_FAMILY, POINTGPT_FAMILY
from .config import OFFICIAL_OPTIONS, GAPromptConfig
from .module import GAPrompt, build, options_from_official

METHOD = MethodSpec(
    name="gaprompt", config_class=GAPromptConfig, attaches=FORWARD, exact_at_init=False, trains_cls_tokens=True,
    summary="GAPrompt: point prompts and a point-shifting ShiftNet on the input, deep prompts with prompt propagation "
            "and adapters in the blocks, shape feature, cls token + position, head",
    build=build, official_options=OFFICIAL_OPTIONS, official_marker=r"^shift_net\.",
    options_from_official=options_from_official, backbones=POINT_MAE_FAMILY + POINTGPT_FAMILY)

__all__ = ["METHOD", "GAPrompt", "GAPromptConfig"]
