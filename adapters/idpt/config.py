"""``IDPTConfig``: the options of Instance-aware Dynamic Prompt Tuning (``idpt``, ``docs/peft_methods/idpt.md`` §4)."""

from dataclasses import dataclass, field

from pointgst.validation import check_choice, check_int

#: what the head reads from the final tokens -> how many token widths that is (official ``cls_type`` in brackets):
#: cls output + prompt output + max over the point tokens ("all"), the prompt output alone ("promptonly"),
#: cls + prompt ("promptcls"), cls + max over the point tokens ("pointcls")
HEAD_INPUTS = {"cls+prompt+max": 3, "prompt": 1, "cls+prompt": 2, "cls+max": 2}


@dataclass(frozen=True)
class IDPTConfig:
    """A DGCNN prompt generator that turns the point tokens entering one block into one instance-aware prompt token,
    inserted after the cls token and kept to the end, and a new head (``docs/peft_methods/idpt.md`` §2)."""

    prompt_block: int = field(default=-1, metadata={
        "help": "the block before which the prompt is generated and inserted; negative counts from the end (-1: "
                "before the last block). Official prompt_layer: 11 of 12 blocks (= -1) on ModelNet40, OBJ_BG and "
                "PB_T50_RS, 6 (= -6) on OBJ_ONLY; on PointGPT-L's 24 layers -1 is layer 23"})
    head_input: str = field(default="cls+prompt+max", metadata={
        "help": "what the head reads: 'cls+prompt+max' (official cls_type 'all': ModelNet40, OBJ_ONLY, PB_T50_RS), "
                "'prompt' ('promptonly': OBJ_BG), 'cls+prompt' or 'cls+max' (in no official config)"})
    k: int = field(default=20, metadata={
        "help": "feature-space neighbours of each point token in the generator's graphs, itself included (20 in "
                "every official config)"})

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_block, int) or isinstance(self.prompt_block, bool):
            raise ValueError(f"prompt_block must be an int block index (negative counts from the end), got "
                             f"{self.prompt_block!r}")
        check_choice("head_input", self.head_input, HEAD_INPUTS)
        check_int("k", self.k, 1)
