"""Tunable modules and the registry that names them.

A *parallel* module runs beside a residual branch of every block and returns an additive correction; it is called
as ``module(x, geometry)`` with tokens ``x`` (B, T, C) whose last G tokens are point tokens, and ``geometry`` the
spectral basis of the token centres (``"basis"``) or the centres (B, G, 3) themselves (``"centers"``).
"""

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from pointgst.errors import UnknownNameError

from .dcnv4 import DeformablePointLayer
from .pcsa import PCSA


@dataclass(frozen=True)
class ParallelModuleSpec:
    """How to build a parallel module for width ``dim`` from a config, and which geometry it consumes."""

    build: Callable[[int, Any], nn.Module]
    geometry: str  # "basis" | "centers"


PARALLEL_MODULES: dict[str, ParallelModuleSpec] = {
    "pcsa": ParallelModuleSpec(lambda dim, config: PCSA(dim, rank=config.rank), "basis"),
    "dcnv4": ParallelModuleSpec(lambda dim, config: DeformablePointLayer(
        dim, hidden=config.rank, groups=config.dcnv4_groups, num_points=config.dcnv4_points), "centers"),
}


def parallel_module_spec(method: str) -> ParallelModuleSpec:
    """The registered parallel module ``method``."""
    if method not in PARALLEL_MODULES:
        raise UnknownNameError(f"unknown tuning method {method!r}; choose one of {sorted(PARALLEL_MODULES)}")
    return PARALLEL_MODULES[method]


__all__ = ["PARALLEL_MODULES", "PCSA", "DeformablePointLayer", "ParallelModuleSpec", "parallel_module_spec"]
