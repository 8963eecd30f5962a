"""Tunable modules (PCSA; more methods register here) and the registry that names them."""

from typing import Any, Callable

from torch import nn

from pointgst.errors import UnknownNameError

from .pcsa import PCSA

#: parallel tunable modules: name -> factory(dim, config) returning a module called as module(x, basis)
PARALLEL_MODULES: dict[str, Callable[[int, Any], nn.Module]] = {
    "pcsa": lambda dim, config: PCSA(dim, rank=config.rank),
}


def build_parallel_module(method: str, dim: int, config: Any) -> nn.Module:
    """Build the tunable module registered as ``method`` for tokens of width ``dim``."""
    if method not in PARALLEL_MODULES:
        raise UnknownNameError(f"unknown tuning method {method!r}; choose one of {sorted(PARALLEL_MODULES)}")
    return PARALLEL_MODULES[method](dim, config)


__all__ = ["PARALLEL_MODULES", "PCSA", "build_parallel_module"]
