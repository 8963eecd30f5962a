"""Positional Prompt Tuning (PPT): the whole classification forward over a frozen Point-MAE-family or PointGPT backbone,
with positional prompts, three prompt MLPs, retrained copies of ``encoder.first_conv`` and (Point-MAE) ``pos_embed``
or (PointGPT) ``cls_norm``, and its own head (``docs/peft_methods/ppt.md`` §2-§4, §8)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pointgst.backbones.layers import encode_patches, init_vit_weights

from ..whole_forward import POINTGPT_FAMILY, WholeForward, head_norm_copy
from .config import PPTConfig
from .prompts import prompt_indices, take

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


class PPT(WholeForward):
    """PPT on a Point-MAE-family or PointGPT backbone: ``forward(backbone, points (B, N, 3)) -> logits (B, classes)``.

    The sequence is the backbone's ``S`` special tokens, its ``L`` point tokens and ``P`` prompt tokens,
    (B, S + L + P, C): ``[cls, points, prompts]`` on Point-MAE (S = 1, the official order), ``[sos, cls, prompts,
    points]`` on PointGPT (S = 2; under its causal attention every point token sees every prompt, as on Point-MAE,
    ``docs/peft_methods/ppt.md`` §8.1). The prompt tokens are the patches of a second grouping of the cloud
    (:func:`prompt_indices`) encoded again, with their own positions. Before every block the positions are re-added,
    the point tokens get ``+ prompt_mlp(.)`` and the prompt tokens ``+ prompt_pos_mlp(.)``; in every block
    ``prompt_all_mlp`` runs beside the FFN branch on all tokens. The head reads ``[cls, mean of the point tokens, mean
    of the prompt tokens]`` (B, 3C) after the final norm (PointGPT: ``ln_f``, then this module's ``cls_norm``).

    Args:
        backbone: the frozen classifier (read for its width, grouping, classes and the layers this module copies:
            ``first_conv``, Point-MAE's ``pos_embed``, PointGPT's ``cls_norm``; not stored).
        config: the method's options.
    """

    def __init__(self, backbone: Any, config: PPTConfig):
        super().__init__()
        groups = backbone.arch_config["num_group"]
        if config.prompt_groups is not None and config.prompt_groups > groups:
            raise ValueError(f"ppt: prompt_groups={config.prompt_groups} exceeds the backbone's num_group={groups} "
                             f"(the prompt patches are prompt_groups of its patches); choose "
                             f"prompt_groups <= {groups}, or None for all of them")
        dim = backbone.embed_dim
        self.prompt_groups = config.prompt_groups or groups
        self.separate_encoding = config.prompt_encoding == "separate"
        self.causal = backbone.architecture in POINTGPT_FAMILY  # PointGPT (docs/peft_methods/ppt.md §8)
        self.first_conv = plain_copy(backbone.encoder.first_conv)
        # PointGPT's sine embedding has no parameters to retrain; its head norm trains with PPT's head
        # (docs/peft_methods/ppt.md §8.4)
        self.pos_embed = None if self.causal else plain_copy(backbone.pos_embed)
        self.prompt_mlp = prompt_mlp(dim, config.hidden)  # on the point tokens, before every block
        self.prompt_pos_mlp = prompt_mlp(dim, config.hidden)  # on the prompt tokens, before every block
        self.prompt_all_mlp = prompt_mlp(dim, config.hidden)  # on all tokens, beside every block's FFN
        self.cls_norm = head_norm_copy(backbone)
        self.head = gelu_head(3 * dim, backbone.num_classes)

    def forward(self, backbone: Any, points: Tensor) -> Tensor:
        """points (B, N, 3) -> logits (B, classes)."""
        neighborhood, centers = backbone.group(points)  # (B, L, K, 3), (B, L, 3)
        second_conv = backbone.encoder.second_conv
        tokens = encode_patches(self.first_conv, second_conv, neighborhood)  # (B, L, C)
        x, pos = backbone.sequence(tokens, centers)  # (B, S + L, C), the S special tokens first
        s = backbone.num_special_tokens
        if self.pos_embed is not None:  # Point-MAE: the retrained positional MLP places the point tokens
            pos = torch.cat([pos[:, :s], self.pos_embed(centers)], dim=1)
        pick = prompt_indices(centers, self.prompt_groups, chained=self.causal)  # (B, P)
        prompts = (encode_patches(self.first_conv, second_conv, take(neighborhood, pick)) if self.separate_encoding
                   else take(tokens, pick))  # (B, P, C)
        x = self._join(x[:, :s], x[:, s:], prompts)  # (B, S + L + P, C)
        pos = self._join(pos[:, :s], pos[:, s:], take(pos[:, s:], pick))
        recompute = backbone.blocks.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in backbone.transformer_blocks:
            x = (checkpoint(self._block, block, x, pos, s, use_reentrant=False) if recompute
                 else self._block(block, x, pos, s))
        x = self.final_tokens(backbone, x)
        point, prompt = self._split(x, s)
        # the cls token is the last special token: position 0 on Point-MAE, 1 on PointGPT
        return self.head(torch.cat([x[:, s - 1], point.mean(dim=1), prompt.mean(dim=1)], dim=-1))

    def _block(self, block: nn.Module, x: Tensor, pos: Tensor, s: int) -> Tensor:
        """One backbone block with the prompt MLPs, after ``s`` special tokens. (B, T, C) -> (B, T, C)."""
        x = x + pos
        point, prompt = self._split(x, s)
        x = self._join(x[:, :s], point + self.prompt_mlp(point), prompt + self.prompt_pos_mlp(prompt))
        if self.causal:
            x = block.ln_1(x)  # PointGPT's block replaces the stream by its norm; its attn_branch has no norm
        x = x + block.attn_branch(x)  # Point-MAE: DropPath(Attn(LN1(x))); PointGPT: causal Attn(x)
        return x + block.ffn_branch(x) + self.prompt_all_mlp(x)  # the FFN branch, the prompt MLP undropped

    def _split(self, x: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """(B, S + L + P, C) -> (point tokens (B, L, C), prompt tokens (B, P, C)), after ``s`` special tokens."""
        p = self.prompt_groups
        return (x[:, s + p:], x[:, s:s + p]) if self.causal else (x[:, s:-p], x[:, -p:])

    def _join(self, special: Tensor, point: Tensor, prompt: Tensor) -> Tensor:
        """The sequence in the family's order: ``[special, points, prompts]`` (Point-MAE) or ``[special, prompts,
        points]`` (PointGPT). (B, S, C), (B, L, C), (B, P, C) -> (B, S + L + P, C)."""
        return torch.cat([special, prompt, point] if self.causal else [special, point, prompt], dim=1)

    def official_names(self) -> dict[str, str]:
        """Own state-dict key -> official checkpoint key (``first_conv.1.running_mean`` ->
        ``encoder.first_conv.1.running_mean``, ``head.8.weight`` -> ``cls_head_finetune.8.weight``, ...); none on
        PointGPT, for which the official PPT code has no model (``docs/peft_methods/ppt.md`` §8.6)."""
        if self.causal:
            raise ValueError("ppt: the official PPT code runs on Point-MAE only, so a PPT checkpoint of a PointGPT "
                             "backbone has no official layout to convert; save a pointgst PPT adapter with "
                             "save_pretrained and load it with pointgst.load_adapter instead")
        names = {}
        for key in self.state_dict():
            part, _, rest = key.partition(".")
            names[key] = f"{OFFICIAL_PREFIXES[part]}.{rest}"
        return names

    def extra_repr(self) -> str:
        return f"prompt_groups={self.prompt_groups}, separate_encoding={self.separate_encoding}, causal={self.causal}"
