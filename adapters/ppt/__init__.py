"""Positional Prompt Tuning (``ppt``): config, module, and its registry entry (``docs/peft_methods/ppt.md``)."""

from typing import Any, Mapping

from ..registry import FORWARD, MethodSpec
from ..whole_forward import POINT_MAE_FAMILY, POINTGPT_FAMILY
from .config import OFFICIAL_OPTIONS, PPTConfig
from .module import PPT

#: a key only an official PPT checkpoint has (``docs/peft_methods/ppt.md`` §6)
OFFICIAL_MARKER = r"^blocks\.prompt_pos_mlp\."


def options_from_official(state: Mapping[str, Any]) -> dict[str, Any]:
    """The options an official PPT checkpoint's shapes fix: the prompt MLPs' hidden width (``hidden``)."""
    weight = state.get("blocks.prompt_mlp.0.weight")
    return {} if weight is None else {"hidden": int(weight.shape[0])}


METHOD = MethodSpec(
    name="ppt", config_class=PPTConfig, attaches=FORWARD, exact_at_init=False, trains_cls_tokens=True,
    summary="PPT: positional prompts (the patches encoded again, own positions), three prompt MLPs shared by the "
            "blocks, retrained encoder.first_conv and pos_embed (PointGPT: cls_norm), cls token + position, its own "
            "GELU head",
    build=PPT, official_options=OFFICIAL_OPTIONS, official_marker=OFFICIAL_MARKER,
    options_from_official=options_from_official, backbones=POINT_MAE_FAMILY + POINTGPT_FAMILY)

__all__ = ["METHOD", "PPT", "PPTConfig"]
