"""``DCNv4Config``: the options of the deformable point layer (``dcnv4``)."""

from dataclasses import dataclass, field

from pointgst.validation import check_int


@dataclass(frozen=True)
class DCNv4Config:
    """A :class:`~pointgst.adapters.dcnv4.DeformablePointLayer` parallel to the FFN of every block."""

    rank: int = field(default=36, metadata={"help": "bottleneck width r (values and offset/modulation predictor "
                                                    "input), a multiple of groups"})
    groups: int = field(default=4, metadata={"help": "channel groups G, each with its own offsets and modulation"})
    num_points: int = field(default=9, metadata={"help": "sampling points K per group: the K nearest token centres "
                                                         "(itself included), DCNv4's 3x3 window"})

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        check_int("groups", self.groups, 1)
        check_int("num_points", self.num_points, 1)
        if self.rank % self.groups:
            raise ValueError(f"rank must be divisible by groups, got rank={self.rank} and groups={self.groups}")
