"""pointgst's peft tuner: config, layers, the tuner model, the key map, the ``PeftModel`` with pointgst's save and
load, and the tuner's registration in peft's type mappings."""

from peft import mapping

from .config import PEFT_TYPE, PointGSTConfig
from .model import PointGSTModel
from .peft_model import PointPeftModel


def register() -> None:
    """Make peft know the ``POINTGST`` type (idempotent). peft's ``PeftType`` enum is closed, so the string key
    goes straight into the mapping dicts, which are plain dict lookups keyed by ``config.peft_type``."""
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING.setdefault(PEFT_TYPE, PointGSTConfig)
    mapping.PEFT_TYPE_TO_TUNER_MAPPING.setdefault(PEFT_TYPE, PointGSTModel)
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING.setdefault(PEFT_TYPE, PointGSTModel.prefix)


register()

__all__ = ["PEFT_TYPE", "PointGSTConfig", "PointGSTModel", "PointPeftModel", "register"]
