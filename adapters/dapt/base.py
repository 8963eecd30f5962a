"""What DAPT's whole forward does on every backbone family (``docs/peft_methods/dapt.md`` §3, §9): its own head and
the head's input, the frozen blocks run with DAPT's block tensors, the official key of each tensor."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pointgst.backbones.layers import classification_head

from ..whole_forward import WholeForward
from .config import DAPTConfig


class DAPTBase(WholeForward):
    """A DAPT module: ``blocks`` (one set of DAPT tensors per frozen block, filled by the subclass) and its own
    ``head`` reading ``config.head_parts`` features of width ``dim``.

    Subclasses set ``cls_index`` (where the cls token sits in the final sequence; the internal prompts follow it,
    the patch tokens close it) and ``key_of`` (a ``staticmethod``: own state-dict key -> official key).
    """

    cls_index: int
    key_of: Callable[[str], str]

    def __init__(self, dim: int, num_classes: int, config: DAPTConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList()
        self.head = classification_head(config.head_parts * dim, num_classes)

    def run_blocks(self, backbone: Any, layers: nn.ModuleList, x: Tensor, pos: Tensor | None = None,
                   specials: int = 0) -> Tensor:
        """x (B, T, C) through every frozen layer with its DAPT tensors; each adds one prompt, so the result is
        (B, T + depth, C). ``pos`` (B, P, C), if given, is added before every layer: its first ``specials`` rows to the
        first ``specials`` tokens, the rest to the last tokens (``specials=0``: all P rows to the last P tokens).
        With the backbone's gradient checkpointing on, each layer is recomputed in the backward pass (training
        only)."""
        recompute = backbone.blocks.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for own, layer in zip(self.blocks, layers):
            if pos is not None:
                tail = x.shape[1] - (pos.shape[1] - specials)
                x = torch.cat([x[:, :specials] + pos[:, :specials], x[:, specials:tail],
                               x[:, tail:] + pos[:, specials:]], dim=1)
            x = checkpoint(own, layer, x, use_reentrant=False) if recompute else own(layer, x)
        return x

    def head_input(self, x: Tensor, num_patches: int) -> Tensor:
        """Final tokens (B, T, C), laid out ``[..., cls (at cls_index), prompts, patches (num_patches)]`` -> the
        head's input (B, parts * C): the cls token, the pooled prompts, the pooled patches, those turned on; with
        ``prompt_token="joint"`` the prompts and patches are pooled as one group by ``patch_token``."""
        first, last = self.cls_index + 1, x.shape[1] - num_patches
        parts = [x[:, self.cls_index]] if self.config.class_token else []
        prompts, patches = x[:, first:last], x[:, last:]
        if self.config.prompt_token == "joint":
            groups = ((self.config.patch_token, x[:, first:]),)
        else:
            groups = ((self.config.prompt_token, prompts), (self.config.patch_token, patches))
        for pooling, group in groups:
            if pooling == "max":
                parts.append(group.max(dim=1).values)
            elif pooling == "mean":
                parts.append(group.mean(dim=1))
        return torch.cat(parts, dim=-1)

    def official_names(self) -> dict[str, str]:
        return {key: self.key_of(key) for key in self.state_dict()}

    def extra_repr(self) -> str:
        return f"config={self.config}"
