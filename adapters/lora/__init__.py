"""LoRA on the transformer blocks' linear layers (``lora``), through peft's own LoRA, with a trainable head copy."""

from dataclasses import dataclass, field
from typing import Any

from pointgst.validation import check_int, check_number

from ..registry import LORA, MethodSpec


@dataclass(frozen=True)
class LoraOptions:
    """peft LoRA on every block's linear layers (Point-MAE: ``qkv``, ``proj``, ``fc1``, ``fc2``; PointGPT: the packed
    q/k/v projection of its ``nn.MultiheadAttention``, as a parameter, and the MLP), plus the backbone's head trained
    whole."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=8, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        check_number("dropout", self.dropout, minimum=0, below=1)


def peft_lora_config(backbone: Any, options: LoraOptions):
    """The peft ``LoraConfig`` of ``options`` for ``backbone`` (its ``lora_targets``, ``lora_target_parameters`` and
    ``head_modules``)."""
    from peft import LoraConfig

    return LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                      target_modules=backbone.lora_targets, target_parameters=backbone.lora_target_parameters or None,
                      modules_to_save=list(backbone.head_modules))


METHOD = MethodSpec(
    name="lora", config_class=LoraOptions, attaches=LORA, exact_at_init=True, trains_cls_tokens=False,
    summary="peft LoRA on every block's linear layers (PointGPT: the packed q/k/v projection and the MLP) + head",
    build=peft_lora_config)

__all__ = ["LoraOptions", "METHOD", "peft_lora_config"]
