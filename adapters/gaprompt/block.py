"""What GAPrompt adds to one transformer block (docs/peft_methods/gaprompt.md §3, §4): deep prompt tokens, the
prompt propagation from the coarse level of the token centres, and an adapter after the block. Names follow the
official block (``prompt_embeddings``, ``scaler1``, ``scaler2``, ``adapter.*``, ``out_transform.0.*``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pointgst.ops import gather_points

from .geometry import CoarseLevel, interpolate

#: the propagation interpolates from this many nearest coarse centres, weights 1 / (d^2 + 1e-8)
PROPAGATION_NEIGHBORS, PROPAGATION_EPS = 64, 1e-8
#: weight of the coarse centre's own token in its pooled feature, and of the interpolated feature in each token
CENTRE_WEIGHT, PROPAGATION_WEIGHT = 0.3, 0.3
#: the adapter's constant output scale (its ``scale`` layer is kept, for the official keys, but never used)
ADAPTER_SCALE = 0.7


class Adapter(nn.Module):
    """LayerNorm -> Linear(C, r) -> QuickGELU -> dropout 0.1 -> Linear(r, C), times 0.7. (B, T, C) -> (B, T, C).

    Every linear layer (``scale`` too) starts kaiming-uniform (a = sqrt 5) with N(0, 1e-6) biases, as officially.
    """

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        self.ln1 = nn.Linear(dim, width)
        self.dropout = nn.Dropout(0.1)
        self.ln2 = nn.Linear(width, dim)
        for layer in (self.scale, self.ln1, self.ln2):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.ln1(self.layer_norm(x))
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
        return self.ln2(self.dropout(hidden)) * ADAPTER_SCALE


def gather_tokens(tokens: Tensor, level: CoarseLevel, sample_mixing: bool) -> tuple[Tensor, Tensor]:
    """The tokens of the coarse centres' neighbourhoods (B, G2, K2, C) and of the coarse centres (B, G2, C), from
    ``tokens`` (B, S, C) whose last G are the point tokens.

    Per sample, the indices point into each sample's own point tokens. With ``sample_mixing`` they point, as in the
    official code, into the flattened (B * S, C) batch offset by ``b * G`` per sample: when S > G (prompts in the
    sequence) sample b reads rows of its own prompts and of the samples before it.
    """
    if not sample_mixing:
        points = tokens[:, -level.centres.shape[1]:]
        return gather_points(points, level.neighbour_index), gather_points(points, level.coarse_index)
    b, s, c = tokens.shape
    flat = tokens.reshape(b * s, c)
    offset = torch.arange(b, device=tokens.device) * level.centres.shape[1]
    neighbours = flat[(level.neighbour_index + offset.view(b, 1, 1)).flatten()]
    centres = flat[(level.coarse_index + offset.view(b, 1)).flatten()]
    return neighbours.reshape(*level.neighbour_index.shape, c), centres.reshape(b, -1, c)


class GAPromptBlock(nn.Module):
    """GAPrompt's tensors of one block and the block step around the frozen block's own computation.

    Args:
        dim: token width C.
        prompt_tokens: deep prompt tokens T.
        adapter_dim: the adapter's bottleneck width.
    """

    def __init__(self, dim: int, prompt_tokens: int, adapter_dim: int):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(torch.zeros(prompt_tokens, dim))  # zero at start, as officially
        self.prompt_dropout = nn.Dropout(0.1)
        # the official weights of the shape code in the prompts and the adapter input; never trained (0.5)
        self.register_buffer("scaler1", torch.full((1,), 0.5))
        self.register_buffer("scaler2", torch.full((1,), 0.5))
        self.adapter = Adapter(dim, adapter_dim)
        self.out_transform = nn.Sequential(nn.BatchNorm1d(dim), nn.GELU())

    def propagate(self, drop_path: nn.Module, tokens: Tensor, level: CoarseLevel, sample_mixing: bool) -> Tensor:
        """Prompt propagation: tokens (B, S, C), the last G the point tokens -> (B, S, C) with those updated.

        Each coarse centre pools its neighbourhood's tokens (``x + drop_path(x)``, max, BatchNorm + GELU) and adds
        0.3 x its own token; every point token adds 0.3 x the pooled features interpolated from the coarse centres.
        """
        neighbours, centres = gather_tokens(tokens, level, sample_mixing)
        b, m, k, c = neighbours.shape
        rows = neighbours.reshape(b * m, k, c)  # the official drop-path draws one mask per neighbourhood
        pooled = (drop_path(rows) + rows).reshape(b, m, k, c).max(dim=2).values
        pooled = self.out_transform(pooled.transpose(1, 2)).transpose(1, 2) + CENTRE_WEIGHT * centres
        g = level.centres.shape[1]
        spread = interpolate(level.centres, level.coarse, pooled, PROPAGATION_NEIGHBORS, PROPAGATION_EPS)
        return torch.cat([tokens[:, :-g], tokens[:, -g:] + PROPAGATION_WEIGHT * spread], dim=1)

    def forward(self, block: nn.Module, drop_path: nn.Module, x: Tensor, pos: Tensor, level: CoarseLevel, *,
                shape: Tensor | None, prompt_pos: Tensor, specials: int, before_attention: bool,
                sample_mixing: bool) -> Tensor:
        """One block: x, pos (B, S + G, C) -> (B, S + G, C), the S special tokens first (Point-MAE: cls; PointGPT: sos,
        cls), ``drop_path`` the one the propagation uses.

        ``shape`` (B, 1, C), the shape feature, is given to the prompted blocks: they insert T prompts
        ``prompt + 0.5 * shape + prompt_pos`` (prompt_pos (T, C)) after the special tokens, run the block on
        S + T + G tokens, drop the prompts again and feed ``x + 0.5 * shape`` to the adapter.
        """
        x = x + pos
        special, rest = x[:, :specials], x[:, specials:]
        prompted = shape is not None
        if prompted:
            prompts = self.prompt_dropout(self.prompt_embeddings.expand(len(x), -1, -1))
            rest = torch.cat([prompts + self.scaler1 * shape + prompt_pos, rest], dim=1)
        if before_attention:
            rest = self.propagate(drop_path, rest, level, sample_mixing)
        x = block(torch.cat([special, rest], dim=1))
        special, rest = x[:, :specials], x[:, specials:]
        if not before_attention:
            rest = self.propagate(drop_path, rest, level, sample_mixing)
        if prompted:
            rest = rest[:, len(self.prompt_embeddings):]
        rest = rest + self.adapter(rest + self.scaler2 * shape if prompted else rest)
        return torch.cat([special, rest], dim=1)
