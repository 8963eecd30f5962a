"""The baselines without adapters: ``linear`` (a trainable copy of the head, everything else frozen) and ``full``
(every weight trains). Neither has options."""

from dataclasses import dataclass

from .registry import FULL, HEAD_ONLY, MethodSpec


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


LINEAR = MethodSpec(name="linear", config_class=NoOptions, attaches=HEAD_ONLY, exact_at_init=True,
                    trains_cls_tokens=False, summary="the head only (linear probing of the frozen features)")
FULL_FINE_TUNING = MethodSpec(name="full", config_class=NoOptions, attaches=FULL, exact_at_init=True,
                              trains_cls_tokens=True, summary="everything (full fine-tuning; saves a weights folder)")
