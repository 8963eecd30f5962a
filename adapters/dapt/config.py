"""``DAPTConfig``: the options of DAPT (Dynamic Adapter + Internal Prompt), ``docs/peft_methods/dapt.md`` §5."""

from dataclasses import dataclass, field

from pointgst.validation import check_bool, check_choice, check_int, check_number

#: how a group of final tokens (the internal prompts, or the patch tokens) is pooled into the head's input
POOLINGS = ("max", "mean", "none")
#: the prompts' poolings: those of :data:`POOLINGS`, or "joint" (pooled together with the patch tokens)
PROMPT_POOLINGS = (*POOLINGS, "joint")
#: on PointGPT, what the frozen MLP of a block reads, and which tokens the positions are re-added to
GPT_MLP_INPUTS = ("norm", "stream")
GPT_POSITIONS = ("own", "end_aligned")


@dataclass(frozen=True)
class DAPTConfig:
    """DAPT on every block of a Point-MAE- or PointGPT-family backbone. Defaults: the official Point-MAE
    ModelNet40 config.

    The head's input is the concatenation, in this order, of the parts that are on: the cls token, the pooled
    internal prompts (one per block), the pooled patch tokens (each part (B, C), so the head reads (B, parts * C));
    with ``prompt_token="joint"`` the prompts and the patch tokens are pooled as one group (the official PointGPT
    head, ``docs/peft_methods/dapt.md`` §9).
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
        "help": "pooling of the final internal prompts for the head: 'max', 'mean', 'none', or 'joint' (pooled "
                "together with the patch tokens by patch_token's pooling) (official Point-MAE prompt_token: 'None' "
                "on ModelNet40, 'mean' on OBJ_BG, OBJ_ONLY and PB_T50_RS; official PointGPT-L: 'joint' with "
                "patch_token 'max' on every dataset)"})
    patch_token: str = field(default="max", metadata={
        "help": "pooling of the final patch tokens for the head: 'max', 'mean' or 'none' (official patch_token: "
                "'max' on ModelNet40, OBJ_BG and PB_T50_RS, 'None' on OBJ_ONLY)"})

    gpt_mlp_input: str = field(default="norm", metadata={
        "help": "PointGPT only: what each block's frozen MLP reads: 'norm' (ln_2's scaled output, as the pretrained "
                "block and DAPT on Point-MAE) or 'stream' (the residual stream itself: the official PointGST code; "
                "the official preset)"})
    gpt_positions: str = field(default="own", metadata={
        "help": "PointGPT only: before every block the positions are re-added to 'own' (sos, cls and the point "
                "tokens, each its own; the prompts none) or 'end_aligned' (the last 2 + L tokens, so from block 2 on "
                "two prompts carry the sos and cls positions: the official PointGST code; the official preset)"})

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        check_choice("gpt_mlp_input", self.gpt_mlp_input, GPT_MLP_INPUTS)
        check_choice("gpt_positions", self.gpt_positions, GPT_POSITIONS)
        check_number("adapter_dropout", self.adapter_dropout, minimum=0, below=1,
                     hint="; the official values are 0.0, 0.2 and 0.5")
        check_bool("class_token", self.class_token)
        check_choice("prompt_token pooling", self.prompt_token, PROMPT_POOLINGS)
        check_choice("patch_token pooling", self.patch_token, POOLINGS)
        if self.prompt_token == "joint" and self.patch_token == "none":
            raise ValueError("prompt_token='joint' pools the prompts with the patch tokens by patch_token's pooling, "
                             "which is 'none'; set patch_token='max' (the official PointGPT head) or 'mean'")
        if self.head_parts == 0:
            raise ValueError("the DAPT head has no input: class_token is False and prompt_token and patch_token are "
                             "'none'; turn at least one on (e.g. patch_token='max')")

    @property
    def head_parts(self) -> int:
        """How many (B, C) features the head reads: 1 to 3."""
        return int(self.class_token) + (self.prompt_token not in ("none", "joint")) + (self.patch_token != "none")


#: what ``preset="official"`` sets: PointGST's DAPT on PointGPT feeds the frozen MLP the residual stream and re-adds
#: the positions to the end of the growing sequence (``docs/peft_methods/dapt.md`` §9.5); nothing on Point-MAE
OFFICIAL_OPTIONS = {"gpt_mlp_input": "stream", "gpt_positions": "end_aligned"}
