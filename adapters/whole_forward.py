"""The base of a ``forward`` method's module (``docs/design.md``, "Methods"): the methods that change what the
backbone computes from the input on (DAPT, IDPT, GAPrompt, PPT) rather than adding beside a residual branch.

Such a module holds every tensor its method adds or retrains (prompts, scale-and-shift factors, adapters, its own
head, copies of retrained backbone layers) and never the backbone itself: the tuner calls it with the frozen backbone,
whose grouping, patch encoder, positional embedding, blocks and norm it runs (their BatchNorm statistics as the tuner
keeps them, the cls token and position through ``backbone.special_tokens()``, each adapter's trainable copies).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

#: the classifiers of each family (ACT and ReCon load as point_mae); a forward method lists those it runs on in its
#: registry entry's ``backbones``
POINT_MAE_FAMILY = ("point_mae", "point_mae_tiny")
POINTGPT_FAMILY = ("pointgpt_s", "pointgpt_b", "pointgpt_l")


class WholeForward(nn.Module):
    """A ``forward`` method's module: ``forward(backbone, points (B, N, 3)) -> logits (B, classes)``.

    Subclasses implement :meth:`forward` and :meth:`official_names` (this module's state-dict keys -> the keys of the
    same tensors in the method's official fine-tuned checkpoint, for ``pointgst convert``), and set ``cls_norm`` to
    :func:`head_norm_copy` of their backbone, which :meth:`final_tokens` applies.
    """

    cls_norm: nn.Module | None

    def final_tokens(self, backbone: Any, x: Tensor) -> Tensor:
        """The last block's output (B, T, C) -> the tokens the head pools (B, T, C): the backbone's frozen final norm,
        then this module's trainable copy of the head norm where the backbone has one (PointGPT ``cls_norm``)."""
        x = backbone.final_norm(x)
        return x if self.cls_norm is None else self.cls_norm(x)

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        raise NotImplementedError

    def official_names(self) -> dict[str, str]:
        """Own state-dict key -> official checkpoint key, for every tensor of this module."""
        raise NotImplementedError

    def official_aliases(self) -> dict[str, str]:
        """Second keys under which the official checkpoint saves some of the same tensors (a module registered twice)
        -> the key of :meth:`official_names` each repeats; ``pointgst convert`` checks they are equal."""
        return {}


def head_norm_copy(backbone: Any) -> nn.Module | None:
    """A trainable copy of the backbone's head norm (PointGPT ``blocks.cls_norm``, which official PEFT runs train with
    the head), or None where the head has none (Point-MAE). The copy travels with the adapter and leaves the frozen
    backbone as loaded."""
    norm = backbone.head_norm
    return None if norm is None else copy.deepcopy(norm).requires_grad_(True)
