"""``GAPromptConfig``: the options of GAPrompt (docs/peft_methods/gaprompt.md §8, §10)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pointgst.validation import check_bool, check_choice, check_int, check_number

#: where the per-block prompt propagation runs relative to the block's attention and MLP
PROPAGATIONS = ("after_attention", "before_attention")


@dataclass(frozen=True)
class GAPromptConfig:
    """GAPrompt: point prompts appended to the cloud, a ShiftNet that moves every input point and yields a global
    shape feature, deep prompt tokens, per-block prompt propagation and adapters. Defaults are the official ModelNet40
    config; docs/peft_methods/gaprompt.md §8 lists every dataset's values."""

    point_prompts: int = field(default=5, metadata={
        "help": "learnable points appended to every cloud before grouping (official point_number: 5 for ModelNet40 "
                "and PB_T50_RS, 10 for OBJ_BG and OBJ_ONLY)"})
    perturbation: float = field(default=0.05, metadata={
        "help": "ShiftNet's shift factor: each point p moves to p + perturbation * p * mlp(feature) (official: 0.05 "
                "ModelNet40, 0.80 PB_T50_RS, 0.20 OBJ_BG, 0.10 OBJ_ONLY)"})
    propagation: str = field(default="after_attention", metadata={
        "help": "where each block propagates the coarse-level token features back to the point tokens: "
                "'after_attention' (official ModelNet40, PB_T50_RS, OBJ_ONLY) or 'before_attention' (official "
                "OBJ_BG)"})
    prompt_tokens: int = field(default=10, metadata={
        "help": "deep prompt tokens per prompted block, with as many learnable prompt coordinates (10 in every "
                "official config)"})
    prompt_depth: int = field(default=6, metadata={
        "help": "the first prompt_depth blocks take deep prompts and feed the shape feature to their adapter; "
                "clamped to the backbone's depth (6 of 12 in every official config)"})
    adapter_dim: int = field(default=16, metadata={
        "help": "bottleneck width of each block's adapter (16 in every official config)"})
    shift_groups: int | None = field(default=None, metadata={
        "help": "centres of ShiftNet's first set-abstraction level; its second level has half as many (None: the "
                "backbone's num_group, as in the official code: 64 ModelNet40, 128 ScanObjectNN)"})
    sample_mixing: bool = field(default=False, metadata={
        "help": "reproduce the official indexing of the prompted blocks' propagation, which reads the flattened "
                "batch as if each sample held num_group tokens while it holds num_group + prompt_tokens, so one "
                "sample's output depends on the others in its batch (official: True; default False: per sample)"})

    def __post_init__(self) -> None:
        check_int("point_prompts", self.point_prompts, 1)
        check_number("perturbation", self.perturbation, hint=" (e.g. 0.05)")
        check_choice("propagation", self.propagation, PROPAGATIONS)
        check_int("prompt_tokens", self.prompt_tokens, 1)
        check_int("prompt_depth", self.prompt_depth, 0)
        check_int("adapter_dim", self.adapter_dim, 1)
        if self.shift_groups is not None:
            check_int("shift_groups", self.shift_groups, 2)
        check_bool("sample_mixing", self.sample_mixing)


#: what ``preset="official"`` sets: the official gather of the prompted blocks, which mixes the samples of a batch
OFFICIAL_OPTIONS = {"sample_mixing": True}
