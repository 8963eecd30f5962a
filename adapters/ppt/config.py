"""``PPTConfig``: the options of Positional Prompt Tuning (``docs/peft_methods/ppt.md``)."""

from dataclasses import dataclass, field

from pointgst.validation import check_choice, check_int

#: how the prompt patches become tokens (``docs/peft_methods/ppt.md`` §5, quirk P1)
PROMPT_ENCODINGS = ("shared", "separate")


@dataclass(frozen=True)
class PPTConfig:
    """Positional prompts (a second set of patch tokens with their own positions), three prompt MLPs shared by every
    block, retrained ``encoder.first_conv`` and ``pos_embed``, a GELU head on ``[cls, mean of the point tokens, mean
    of the prompt tokens]`` (``docs/peft_methods/ppt.md`` §2)."""

    hidden: int = field(default=256, metadata={
        "help": "hidden width of the three prompt MLPs (prompt_mlp, prompt_pos_mlp, prompt_all_mlp); 256 in every "
                "official config (OBJ_BG, OBJ_ONLY, PB_T50_RS, ModelNet40), fixed in the official model"})
    prompt_groups: int | None = field(default=None, metadata={
        "help": "positional-prompt patches per cloud (official prompt_num_group): the first prompt_groups FPS "
                "patches of the backbone's grouping (on PointGPT chained among themselves as its grouping chains "
                "its patches); None = the backbone's num_group, which every official 1k/2k "
                "config sets (OBJ_BG 128, OBJ_ONLY 128, PB_T50_RS 128, ModelNet40 64; the Point-MAE ModelNet40 "
                "8k config sets 64 with num_group 512). Their size is the backbone's group_size (official "
                "prompt_group_size, always equal to group_size)"})
    prompt_encoding: str = field(default="shared", metadata={
        "help": "'shared': the prompt tokens are the point tokens of the same patches (one encoder pass); "
                "'separate': the patch encoder runs again on the prompt patches as in the official code (the "
                "official preset): in training its BatchNorm statistics then update twice per step, and with "
                "prompt_groups < num_group the prompt patches are normalised by their own batch statistics. Both "
                "give the same outputs in eval mode"})

    def __post_init__(self) -> None:
        check_int("hidden", self.hidden, 1)
        if self.prompt_groups is not None:
            check_int("prompt_groups", self.prompt_groups, 1)
        check_choice("prompt_encoding", self.prompt_encoding, PROMPT_ENCODINGS)


#: what ``preset="official"`` sets: the official code's second encoder pass over the prompt patches
OFFICIAL_OPTIONS = {"prompt_encoding": "separate"}
