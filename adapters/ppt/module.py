"""Positional Prompt Tuning (PPT): the whole classification forward over a frozen Point-MAE-family backbone, with
positional prompts, three prompt MLPs, retrained copies of ``encoder.first_conv`` and ``pos_embed`` and its own head
(``docs/peft_methods/ppt.md`` §2-§4)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pointgst.backbones.layers import init_vit_weights

from ..whole_forward import WholeForward
from .config import PPTConfig

#: own submodule -> the prefix of the same tensors in an official PPT checkpoint (``docs/peft_methods/ppt.md`` §6)
OFFICIAL_PREFIXES = {"first_conv": "encoder.first_conv", "pos_embed": "pos_embed", "prompt_mlp": "blocks.prompt_mlp",
                     "prompt_pos_mlp": "blocks.prompt_pos_mlp", "prompt_all_mlp": "blocks.prompt_all_mlp",
                     "head": "cls_head_finetune"}
HEAD_WIDTH = 256


def prompt_mlp(dim: int, hidden: int) -> nn.Sequential:
    """Linear dim->hidden, GELU, Linear hidden->dim; trunc-normal(0.02) weights, zero biases. (..., C) -> (..., C)."""
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
    mlp.apply(init_vit_weights)
    return mlp


def gelu_head(in_dim: int, num_classes: int) -> nn.Sequential:
    """PPT's head: the fine-tuning head's layout (Linear, BatchNorm, activation, Dropout(0.5), twice, then Linear;
    state-dict indices 0, 1, 4, 5, 8) with GELU where Point-MAE has ReLU. (B, in_dim) -> (B, num_classes)."""
    head = nn.Sequential(
        nn.Linear(in_dim, HEAD_WIDTH), nn.BatchNorm1d(HEAD_WIDTH), nn.GELU(), nn.Dropout(0.5),
        nn.Linear(HEAD_WIDTH, HEAD_WIDTH), nn.BatchNorm1d(HEAD_WIDTH), nn.GELU(), nn.Dropout(0.5),
        nn.Linear(HEAD_WIDTH, num_classes))
    head.apply(init_vit_weights)
    return head


def plain_copy(layers: nn.Sequential) -> nn.Sequential:
    """A copy of a backbone ``Sequential`` for this adapter to retrain. A layer another adapter wrapped (a frozen
    BatchNorm under the official statistics drift) is copied unwrapped: this adapter starts from the backbone's own."""
    return nn.Sequential(*(copy.deepcopy(getattr(layer, "base_layer", layer)) for layer in layers))


def encode_patches(first_conv: nn.Module, second_conv: nn.Module, neighborhood: Tensor) -> Tensor:
    """The official patch encoder, as 1x1 convolutions over the points of each patch: ``first_conv``, max-pool, the
    pooled feature concatenated in front of every point's, ``second_conv``, max-pool.

    neighborhood (B, G, K, 3) centred patches -> tokens (B, G, C).
    """
    b, g, k, _ = neighborhood.shape
    local = first_conv(neighborhood.reshape(b * g, k, 3).transpose(1, 2))  # (BG, L, K)
    pooled = local.max(dim=2, keepdim=True).values  # (BG, L, 1)
    feature = second_conv(torch.cat([pooled.expand(-1, -1, k), local], dim=1))  # (BG, C, K)
    return feature.max(dim=2).values.reshape(b, g, -1)


class PPT(WholeForward):
    """PPT on a Point-MAE-family backbone: ``forward(backbone, points (B, N, 3)) -> logits (B, classes)``.

    The sequence is ``[cls, G point tokens, P prompt tokens]`` (B, 1 + G + P, C): the prompt tokens are the first P
    FPS patches encoded again, with their own positional embeddings. Before every block the positions are re-added,
    the point tokens get ``+ prompt_mlp(.)`` and the prompt tokens ``+ prompt_pos_mlp(.)``; in every block
    ``prompt_all_mlp`` runs beside the FFN branch on all tokens. The head reads ``[cls, mean of the point tokens,
    mean of the prompt tokens]`` (B, 3C) after the final norm.

    Args:
        backbone: the frozen Point-MAE-family classifier (read for its width, grouping, classes, ``first_conv`` and
            ``pos_embed``, which this module copies; not stored).
        config: the method's options.
    """

    def __init__(self, backbone: Any, config: PPTConfig):
        super().__init__()
        groups = backbone.arch_config["num_group"]
        if config.prompt_groups is not None and config.prompt_groups > groups:
            raise ValueError(f"ppt: prompt_groups={config.prompt_groups} exceeds the backbone's num_group={groups} "
                             f"(the prompt patches are the first prompt_groups of its patches); choose "
                             f"prompt_groups <= {groups}, or None for all of them")
        dim = backbone.embed_dim
        self.prompt_groups = config.prompt_groups or groups
        self.separate_encoding = config.prompt_encoding == "separate"
        self.first_conv = plain_copy(backbone.encoder.first_conv)
        self.pos_embed = plain_copy(backbone.pos_embed)
        self.prompt_mlp = prompt_mlp(dim, config.hidden)  # on the point tokens, before every block
        self.prompt_pos_mlp = prompt_mlp(dim, config.hidden)  # on the prompt tokens, before every block
        self.prompt_all_mlp = prompt_mlp(dim, config.hidden)  # on all tokens, beside every block's FFN
        self.head = gelu_head(3 * dim, backbone.num_classes)

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        """points (B, N, 3) -> logits (B, classes)."""
        neighborhood, centers = backbone.group(points)  # (B, G, K, 3), (B, G, 3)
        second_conv = backbone.encoder.second_conv
        tokens = encode_patches(self.first_conv, second_conv, neighborhood)  # (B, G, C)
        p = self.prompt_groups
        # the official second FPS of P centres picks the first P of these (FPS is greedy from index 0)
        prompts = (encode_patches(self.first_conv, second_conv, neighborhood[:, :p]) if self.separate_encoding
                   else tokens[:, :p])  # (B, P, C)
        point_pos = self.pos_embed(centers)  # (B, G, C)
        cls_token, cls_pos = backbone.special_tokens()
        b, g, _ = tokens.shape
        x = torch.cat([cls_token.expand(b, -1, -1), tokens, prompts], dim=1)  # (B, 1 + G + P, C)
        pos = torch.cat([cls_pos.expand(b, -1, -1), point_pos, point_pos[:, :p]], dim=1)
        stack = backbone.blocks
        recompute = stack.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in stack.blocks:
            x = (checkpoint(self._block, block, x, pos, g, use_reentrant=False) if recompute
                 else self._block(block, x, pos, g))
        x = backbone.norm(x)
        return self.head(torch.cat([x[:, 0], x[:, 1:g + 1].mean(dim=1), x[:, g + 1:].mean(dim=1)], dim=-1))

    def _block(self, block: nn.Module, x: Tensor, pos: Tensor, g: int) -> Tensor:
        """One backbone block with the prompt MLPs; ``g`` point tokens follow the cls token. (B, T, C) -> (B, T, C)."""
        x = x + pos
        point, prompt = x[:, 1:g + 1], x[:, g + 1:]
        x = torch.cat([x[:, :1], point + self.prompt_mlp(point), prompt + self.prompt_pos_mlp(prompt)], dim=1)
        x = x + block.attn_branch(x)  # DropPath(Attn(LN1(x)))
        return x + block.ffn_branch(x) + self.prompt_all_mlp(x)  # DropPath(MLP(LN2(x))), the prompt MLP undropped

    def official_names(self) -> dict[str, str]:
        """Own state-dict key -> official checkpoint key (``first_conv.1.running_mean`` ->
        ``encoder.first_conv.1.running_mean``, ``head.8.weight`` -> ``cls_head_finetune.8.weight``, ...)."""
        names = {}
        for key in self.state_dict():
            part, _, rest = key.partition(".")
            names[key] = f"{OFFICIAL_PREFIXES[part]}.{rest}"
        return names

    def extra_repr(self) -> str:
        return f"prompt_groups={self.prompt_groups}, separate_encoding={self.separate_encoding}"
