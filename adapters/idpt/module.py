"""The IDPT forward over a frozen Point-MAE-family or PointGPT backbone (``docs/peft_methods/idpt.md`` §2, §9)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from pointgst.backbones.layers import classification_head

from ..whole_forward import WholeForward, head_norm_copy
from .config import HEAD_INPUTS, IDPTConfig
from .generator import PromptGenerator


class IDPT(WholeForward):
    """Instance-aware Dynamic Prompt Tuning: points (B, N, 3) -> logits (B, num_classes).

    The frozen backbone builds its sequence ``[specials, t_1..t_G]`` (S special tokens: Point-MAE ``[cls]``,
    PointGPT ``[sos, cls]``) and runs its blocks (``x = block(x + pos)``) up to block ``prompt_block``; there the
    :class:`PromptGenerator` turns the point tokens (B, G, C), as that block would receive them before the positions
    are added, into one prompt token, inserted right after the special tokens with the fixed position ``prompt_pos``
    (1, 1, C); the remaining blocks run on ``[specials, prompt, t_1..t_G]`` (B, S + 1 + G, C), then the final norm
    (Point-MAE ``norm``; PointGPT ``ln_f`` and this module's ``cls_norm``), and ``head`` reads ``head_input`` (cls,
    prompt and/or max over the point tokens).

    ``prompt_pos`` is a buffer: the official trainable rule never trains it (``docs/peft_methods/idpt.md`` §3).
    ``cls_norm`` is a trainable copy of PointGPT's head norm ``blocks.cls_norm`` (None on Point-MAE, §9).
    Trainable: the generator, the head, ``cls_norm`` (and, through the tuner, the cls token and position copies).
    """

    def __init__(self, dim: int, num_classes: int, *, prompt_block: int, head_input: str = "cls+prompt+max",
                 k: int = 20, cls_norm: nn.LayerNorm | None = None):
        super().__init__()
        self.prompt_block = prompt_block
        self.head_input = head_input
        self.generator = PromptGenerator(dim, k)
        self.register_buffer("prompt_pos", torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.prompt_pos, std=0.02, a=-2.0, b=2.0)
        self.head = classification_head(HEAD_INPUTS[head_input] * dim, num_classes)
        self.cls_norm = cls_norm

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        neighborhood, centers = backbone.group(points)
        x, pos = backbone.sequence(backbone.encoder(neighborhood), centers)  # (B, S + G, C) each
        b, s = x.shape[0], backbone.num_special_tokens
        stack, blocks = backbone.blocks, backbone.transformer_blocks
        if self.prompt_block:
            x = stack.run_blocks(blocks[:self.prompt_block], x, pos, None)
        prompt = self.generator(x[:, s:])  # (B, 1, C)
        x = torch.cat([x[:, :s], prompt, x[:, s:]], dim=1)
        pos = torch.cat([pos[:, :s], self.prompt_pos.expand(b, -1, -1), pos[:, s:]], dim=1)
        x = stack.run_blocks(blocks[self.prompt_block:], x, pos, None)
        return self.head(self.pool(self.final_tokens(backbone, x), s))

    def pool(self, x: Tensor, specials: int) -> Tensor:
        """Final tokens ``[specials, prompt, t_1..t_G]`` (B, specials + 1 + G, C), the cls token last of the
        ``specials`` -> the head's input (B, n C), the parts of ``head_input`` concatenated in its order."""
        parts = {"cls": lambda: x[:, specials - 1], "prompt": lambda: x[:, specials],
                 "max": lambda: x[:, specials + 1:].amax(dim=1)}
        return torch.cat([parts[name]() for name in self.head_input.split("+")], dim=-1)

    def official_names(self) -> dict[str, str]:
        if self.cls_norm is not None:
            raise ValueError("IDPT's official code runs on Point-MAE only: an IDPT module built for PointGPT has no "
                             "official checkpoint layout; save and load it with save_pretrained / load_adapter")
        names = {"prompt_pos": "prompt_pos"}
        names |= {f"generator.{own}": f"blocks.cls.{official}"
                  for own, official in self.generator.official_names().items()}
        names |= {f"head.{key}": f"cls_head_finetune.{key}" for key in self.head.state_dict()}
        return names

    def official_aliases(self) -> dict[str, str]:
        """The official generator registers each BatchNorm twice, as ``bnN`` and as entry 1 of the ``convN``
        sequence, so its checkpoints hold ``blocks.cls.convN.1.*`` beside the identical ``blocks.cls.bnN.*``."""
        norms = [v for v in self.official_names().values() if re.match(r"blocks\.cls\.bn\d\.", v)]
        return {re.sub(r"\.bn(\d)\.", r".conv\1.1.", v): v for v in norms}

    def extra_repr(self) -> str:
        return f"prompt_block={self.prompt_block}, head_input={self.head_input!r}"


def build_idpt(backbone: Any, config: IDPTConfig) -> IDPT:
    """The :class:`IDPT` module for ``backbone`` (a Point-MAE-family or PointGPT classifier), with ``prompt_block``
    resolved to a block index ``0 <= i < depth``; on PointGPT it holds a trainable copy of ``blocks.cls_norm``."""
    depth, groups = backbone.depth, backbone.arch_config["num_group"]
    if not -depth <= config.prompt_block < depth:
        raise ValueError(f"prompt_block={config.prompt_block} names no block of this {depth}-block backbone; use "
                         f"{-depth}..{depth - 1} (negative counts from the end: -1 inserts the prompt before the last "
                         "block)")
    if config.k > groups:
        raise ValueError(f"k={config.k} feature-space neighbours need at least {config.k} point tokens, but the "
                         f"backbone makes num_group={groups}; pass k <= {groups} or use more groups")
    return IDPT(backbone.embed_dim, backbone.num_classes, prompt_block=config.prompt_block % depth,
                head_input=config.head_input, k=config.k, cls_norm=head_norm_copy(backbone))
