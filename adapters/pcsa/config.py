"""``PCSAConfig``: the options of PointGST's Point Cloud Spectral Adapter."""

from dataclasses import dataclass, field

from pointgst.spectral import SpectralOptions
from pointgst.validation import check_int


@dataclass(frozen=True)
class PCSAConfig(SpectralOptions):
    """PCSA in every block (``docs/official.md``, "PCSA"): rank ``r`` plus the spectral options (how the global and
    local graphs of the token centres and their bases are built), which it shares with any spectral method."""

    rank: int = field(default=36, metadata={"help": "bottleneck width r of the adapter (36 in every official config)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("rank", self.rank, 1)


#: what ``preset="official"`` sets: the official code's graph construction and transform direction
OFFICIAL_OPTIONS = {"dmin_scope": "batch", "gft_mode": "official_code", "distance": "cdist", "laplacian": "normalized",
                    "curve": "z_order"}
