"""pointgst: parameter-efficient fine-tuning of pretrained point-cloud transformers.

The public names are imported lazily, so ``import pointgst`` stays fast (torch and peft load on first use).
"""

from importlib import import_module
from typing import Any

from pointgst import _peft_hook
from pointgst.version import __version__

_LAZY = {
    "create_backbone": "pointgst.backbones",
    "list_backbones": "pointgst.backbones",
    "convert_checkpoint": "pointgst.converting",
    "wrap": "pointgst.wrapping",
    "load_adapter": "pointgst.loading",
    "list_methods": "pointgst.adapters",
    "parameter_report": "pointgst.report",
    "TokenGeometry": "pointgst.geometry",
    "Predictor": "pointgst.predict",
    "PartPredictor": "pointgst.predict_parts",
}

__all__ = sorted(_LAZY) + ["__version__"]

_peft_hook.install()


_SUBPACKAGES = ("adapters", "backbones", "recipes", "tuner")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = import_module(f"pointgst.{name}")
    else:
        raise AttributeError(f"module 'pointgst' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
