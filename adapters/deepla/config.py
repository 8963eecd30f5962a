"""``DeepLAHeadConfig``: the options of the DeepLA-Net head (``deepla_head``)."""

from dataclasses import dataclass, field

from pointgst.validation import check_int


@dataclass(frozen=True)
class DeepLAHeadConfig:
    """A :class:`~pointgst.adapters.deepla.DeepLAHead` replacing the backbone's classification head."""

    width: int = field(default=128, metadata={"help": "width of the head's stages"})
    depths: tuple = field(default=(2, 2), metadata={
        "help": "ResLFE iterations per stage (each further stage halves the tokens)"})
    k: int = field(default=16, metadata={"help": "neighbours per token, itself included"})
    hybrid_supervision: bool = field(default=False, metadata={
        "help": "per-stage semantic and spatial losses during training (weights decay over training)"})

    def __post_init__(self) -> None:
        check_int("width", self.width, 1)
        check_int("k", self.k, 1)
        if isinstance(self.depths, (str, bytes)) or not hasattr(self.depths, "__iter__"):
            raise ValueError(f"depths must be a list of ints, e.g. [2, 2], got {self.depths!r}")
        object.__setattr__(self, "depths", tuple(self.depths))  # a JSON or YAML config gives a list
        if not self.depths:
            raise ValueError("depths must name at least one stage, e.g. [2, 2]")
        for depth in self.depths:
            check_int("every entry of depths", depth, 1)
        if not isinstance(self.hybrid_supervision, bool):
            raise ValueError(f"hybrid_supervision must be true or false, got {self.hybrid_supervision!r}")
