"""Tunable modules and the registries that name them.

A *parallel* module runs beside a residual branch of every block and returns an additive correction; it is called
as ``module(x, geometry)`` with tokens ``x`` (B, T, C) whose last G tokens are point tokens, and ``geometry`` the
spectral basis of the token centres (``"basis"``) or the centres (B, G, 3) themselves (``"centers"``). A *head*
module replaces the classification head: it reads the final point tokens and their centres.
"""

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from pointgst.errors import UnknownNameError

from .dcnv4 import DeformablePointLayer
from .deepla import DeepLAHead
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


#: head modules: name -> factory(in_dim, num_classes, config), called as module(point_tokens (B,G,C), centers)
HEAD_MODULES: dict[str, Callable[[int, int, Any], nn.Module]] = {
    "deepla_head": lambda dim, classes, config: DeepLAHead(
        dim, classes, width=config.head_width, depths=tuple(config.head_depths), k=config.head_k,
        hybrid=config.hybrid_supervision),
}


def parallel_module_spec(method: str) -> ParallelModuleSpec:
    """The registered parallel module ``method``."""
    if method not in PARALLEL_MODULES:
        raise UnknownNameError(f"unknown tuning method {method!r}; choose one of {sorted(PARALLEL_MODULES)}")
    return PARALLEL_MODULES[method]


__all__ = ["HEAD_MODULES", "PARALLEL_MODULES", "PCSA", "DeepLAHead", "DeformablePointLayer", "ParallelModuleSpec",
           "parallel_module_spec"]
