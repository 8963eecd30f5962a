"""``DAPTConfig``: the options of DAPT (Dynamic Adapter + Internal Prompt), ``docs/peft_methods/dapt.md`` §5."""

from dataclasses import dataclass, field

from pointgst.validation import check_choice, check_int

#: how a group of final tokens (the internal prompts, or the patch tokens) is pooled into the head's input
POOLINGS = ("max", "mean", "none")


@dataclass(frozen=True)
class DAPTConfig:
    """DAPT on every block of a Point-MAE-family backbone. Defaults: the official ModelNet40 config.

    The head's input is the concatenation, in this order, of the parts that are on: the cls token, the pooled
    internal prompts (one per block), the pooled patch tokens (each part (B, C), so the head reads (B, parts * C)).
    """

    rank: int = field(default=72, metadata={
        "help": "bottleneck width of the dynamic adapter (official: 72 on ModelNet40; 64 on ScanObjectNN OBJ_BG, "
                "OBJ_ONLY and PB_T50_RS)"})
    adapter_dropout: float = field(default=0.0, metadata={
        "help": "dropout on the adapter's hidden activations while training (official drop_adapter_rate: 0.0 on "
                "ModelNet40, 0.5 on OBJ_BG, 0.0 on OBJ_ONLY, 0.2 on PB_T50_RS)"})
    class_token: bool = field(default=True, metadata={
        "help": "feed the final cls token to the head (official class_token: 'use' on every dataset)"})
    prompt_token: str = field(default="none", metadata={
        "help": "pooling of the final internal prompts for the head: 'max', 'mean' or 'none' (official "
                "prompt_token: 'None' on ModelNet40, 'mean' on OBJ_BG, OBJ_ONLY and PB_T50_RS)"})
    patch_token: str = field(default="max", metadata={
        "help": "pooling of the final patch tokens for the head: 'max', 'mean' or 'none' (official patch_token: "
                "'max' on ModelNet40, OBJ_BG and PB_T50_RS, 'None' on OBJ_ONLY)"})

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        dropout = self.adapter_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"adapter_dropout must be a number in [0, 1), got {dropout!r}; the official values are "
                             "0.0, 0.2 and 0.5")
        if not isinstance(self.class_token, bool):
            raise ValueError(f"class_token must be True or False, got {self.class_token!r}")
        check_choice("prompt_token pooling", self.prompt_token, POOLINGS)
        check_choice("patch_token pooling", self.patch_token, POOLINGS)
        if self.head_parts == 0:
            raise ValueError("the DAPT head has no input: class_token is False and prompt_token and patch_token are "
                             "'none'; turn at least one on (e.g. patch_token='max')")

    @property
    def head_parts(self) -> int:
        """How many (B, C) features the head reads: 1 to 3."""
        return int(self.class_token) + (self.prompt_token != "none") + (self.patch_token != "none")
