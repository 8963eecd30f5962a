"""GAPrompt's module: the whole classification forward over a frozen Point-MAE- or PointGPT-family backbone
(docs/peft_methods/gaprompt.md §1, §12)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pointgst.backbones.layers import classification_head
from pointgst.validation import model_input

from ..whole_forward import WholeForward, head_norm_copy
from .block import GAPromptBlock
from .config import GAPromptConfig
from .geometry import CoarseLevel
from .shift_net import TOP_DIM, ShiftNet

#: the point prompts enter the cloud times this factor; they start uniform in [-0.01, 0.01]
POINT_FACTOR, POINT_INIT = 5.0, 0.01
#: the learnable prompt coordinates start trunc-normal with this standard deviation (cut at +-2)
PROMPT_COORD_STD = 0.06
#: dropout in the shape-feature MLP and in the head
SHAPE_DROPOUT, HEAD_DROPOUT = 0.25, 0.6
#: why a PointGPT GAPrompt checkpoint has no official key layout to convert from (docs/peft_methods/gaprompt.md §12)
NO_OFFICIAL_POINTGPT = ("gaprompt has no official PointGPT checkpoints (its official code runs on Point-MAE only), so "
                        "pointgst convert cannot map one; convert a Point-MAE GAPrompt checkpoint, or train gaprompt "
                        "on PointGPT with pointgst and load it with pointgst.load_adapter")


class GAPrompt(WholeForward):
    """points (B, N, 3) -> logits (B, classes).

    ShiftNet moves the points and gives the shape code; the point prompts join the moved cloud, which the backbone
    groups and encodes; the second grouping level of the token centres drives each block's prompt propagation; the
    first ``prompt_depth`` blocks take deep prompts, inserted right after the special tokens; after the final norm
    (and on PointGPT this module's copy of ``cls_norm``) the head reads ``[cls, max over point tokens, shape feature]``.

    Args:
        dim: the backbone's token width C.
        depth: its number of blocks.
        num_classes: classes of the head.
        shift_groups: centres of ShiftNet's first level (its shape code has ``shift_groups // 2 * 8`` values).
        config: the method's options.
        cls_norm: PointGPT's head norm, which this module then owns and trains (None on Point-MAE, whose head reads
            the final norm's output directly).
    """

    def __init__(self, dim: int, depth: int, num_classes: int, shift_groups: int, config: GAPromptConfig,
                 cls_norm: nn.LayerNorm | None = None):
        super().__init__()
        self.shift_groups = shift_groups
        self.prompt_depth = min(config.prompt_depth, depth)
        self.before_attention = config.propagation == "before_attention"
        self.sample_mixing = config.sample_mixing
        self.point_prompt = nn.Module()
        self.point_prompt.points = nn.Parameter(torch.empty(1, config.point_prompts, 3).uniform_(-POINT_INIT,
                                                                                                 POINT_INIT))
        self.shift_net = ShiftNet(config.perturbation)
        self.shape_feature_mlp = nn.Sequential(nn.Linear(shift_groups // 2 * TOP_DIM, 16), nn.GELU(),
                                               nn.Dropout(SHAPE_DROPOUT), nn.Linear(16, dim))
        self.prompt_cor = nn.Parameter(torch.zeros(config.prompt_tokens, 3))
        nn.init.trunc_normal_(self.prompt_cor, std=PROMPT_COORD_STD, a=-2.0, b=2.0)
        self.blocks = nn.ModuleList(GAPromptBlock(dim, config.prompt_tokens, config.adapter_dim)
                                    for _ in range(depth))
        self.cls_head_finetune = classification_head(3 * dim, num_classes)
        for index in (3, 7):
            self.cls_head_finetune[index].p = HEAD_DROPOUT
        self.cls_norm = cls_norm

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        grouper = backbone.group_divider
        groups, size, skip = grouper.num_group, grouper.group_size, grouper.skip_near_origin
        points = model_input(points, min_points=max(self.shift_groups, size), dtype=backbone.dtype,
                             training=self.training)
        shifted, code = self.shift_net(points, self.shift_groups, size, skip)
        shape = self.shape_feature_mlp(code).unsqueeze(1)  # (B, 1, C)
        prompts = self.point_prompt.points.expand(len(points), -1, -1) * POINT_FACTOR
        neighborhood, centers = backbone.group(torch.cat([shifted, prompts], dim=1))
        level = CoarseLevel.of(centers, groups // 2, size // 2, skip)
        x, pos = backbone.sequence(backbone.encoder(neighborhood), centers)  # (B, S + G, C), S special tokens
        specials = backbone.num_special_tokens
        prompt_pos = backbone.pos_embed(self.prompt_cor)  # (T, C)
        for index, (block, step) in enumerate(zip(backbone.transformer_blocks, self.blocks)):
            # the propagation uses the block's drop path (PointGPT's blocks have none: identity)
            x = step(block, block.drop_path, x, pos, level, shape=shape if index < self.prompt_depth else None,
                     prompt_pos=prompt_pos, specials=specials, before_attention=self.before_attention,
                     sample_mixing=self.sample_mixing)
        x = self.final_tokens(backbone, x)
        cls, point_tokens = x[:, specials - 1], x[:, specials:]
        return self.cls_head_finetune(torch.cat([cls, point_tokens.max(dim=1).values, shape[:, 0]], dim=-1))

    def official_names(self) -> dict[str, str]:
        """Own key -> official key: the per-block tensors sit under ``blocks.blocks.i``, the rest keeps its name.
        Refused on PointGPT: GAPrompt's official code runs on Point-MAE only, so no official layout exists there."""
        if self.cls_norm is not None:  # the PointGPT path
            raise ValueError(NO_OFFICIAL_POINTGPT)
        return {key: f"blocks.{key}" if key.startswith("blocks.") else key for key in self.state_dict()}

    def extra_repr(self) -> str:
        return (f"shift_groups={self.shift_groups}, prompt_depth={self.prompt_depth}, before_attention="
                f"{self.before_attention}, sample_mixing={self.sample_mixing}")


def build(backbone: Any, config: GAPromptConfig) -> GAPrompt:
    """GAPrompt for ``backbone`` (a Point-MAE- or PointGPT-family classifier; on PointGPT with a trainable copy of
    ``blocks.cls_norm``); refuses a grouping the two coarse levels cannot split."""
    groups, size = backbone.arch_config["num_group"], backbone.arch_config["group_size"]
    shift_groups = config.shift_groups or groups
    if groups < 2 or size < 2 or size // 2 > groups or size // 2 > shift_groups:
        raise ValueError(f"gaprompt groups the {groups} token centres again into {groups // 2} of {size // 2} and "
                         f"ShiftNet's {shift_groups} centres into {shift_groups // 2} of {size // 2}: it needs "
                         "num_group >= 2, group_size >= 2 and group_size // 2 <= num_group and <= shift_groups; "
                         "create the backbone with more groups or a smaller group_size")
    return GAPrompt(backbone.embed_dim, backbone.depth, backbone.num_classes, shift_groups, config,
                    head_norm_copy(backbone))


def options_from_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The options the shapes of an official GAPrompt checkpoint fix: point prompts, prompt tokens, adapter width and
    ShiftNet's groups (its shape-feature MLP reads ``shift_groups // 2 * 8`` values). A PointGPT state (its blocks
    under ``blocks.layers.``) is refused: no official PointGPT GAPrompt exists."""
    if any(key.startswith("blocks.layers.") for key in state):
        raise ValueError(NO_OFFICIAL_POINTGPT)
    return {"point_prompts": state["point_prompt.points"].shape[1], "prompt_tokens": state["prompt_cor"].shape[0],
            "adapter_dim": state["blocks.blocks.0.adapter.ln1.weight"].shape[0],
            "shift_groups": state["shape_feature_mlp.0.weight"].shape[1] // TOP_DIM * 2}
