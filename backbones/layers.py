"""Building blocks shared by the backbones: stochastic depth, the patch encoder, the classification
head, and :class:`Handle`, through which a tuner reaches one residual branch of a block or the special tokens."""

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pointgst.stochastic_depth import drop_path


class DropPath(nn.Module):
    """Per-sample stochastic depth (timm 0.4.5 semantics): ``x / keep * floor(keep + U)``, training only."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Handle(nn.Module):
    """A parameter-free module that calls a method of the module owning it: the point where a tuner reaches
    one piece of a backbone.

    Blocks expose their residual branches this way (``x = x + block.ffn_branch(x)``), and backbones their
    learnable special tokens (``cls_token, cls_pos = backbone.special_tokens()``). The handle owns no
    parameters, so wrapping it (a parallel adapter ``base(x) + adapter(x)``, or trainable per-adapter token
    copies) never changes the backbone's state-dict keys.
    """

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Any:
        return self.fn(*args)


class BlockStack(nn.Module):
    """Base of a module that runs transformer blocks: ``x = block(x + pos, geometry)`` for every block, each block's
    activations recomputed in the backward pass instead of kept when ``gradient_checkpointing`` is on (set through
    the backbone's ``gradient_checkpointing_enable()``; only while training with autograd)."""

    gradient_checkpointing = False

    def run_blocks(self, blocks: nn.ModuleList, x: Tensor, pos: Tensor, geometry: Any) -> Tensor:
        """x, pos (B, T, C) -> (B, T, C) after every block."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            x = checkpoint(block, x + pos, geometry, use_reentrant=False) if recompute else block(x + pos, geometry)
        return x


def init_vit_weights(module: nn.Module) -> None:
    """The official from-scratch init: trunc-normal(0.02) Linear/Conv1d weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PatchEncoder(nn.Module):
    """Mini-PointNet turning each centred patch into one token.

    ``large=False`` is Point-MAE's / PointGPT-S's encoder (3-w0-w1 | 2w1-2w1-C with ``widths=(w0, w1) = (128, 256)``;
    ``point_mae_tiny`` narrows it); ``large=True`` is PointGPT-B/L's (3-256-512-1024 | 2048-2048-C). Module indices
    match the official state-dict keys. The 1x1 convolutions run as matrix products over all points (the same weights;
    equal to ``Conv1d`` up to rounding, and faster on CPU). Input (B, G, K, 3) -> tokens (B, G, C).
    """

    def __init__(self, embed_dim: int, *, large: bool = False, widths: tuple[int, int] = (128, 256)):
        super().__init__()
        if large:
            self.first_conv = nn.Sequential(
                nn.Conv1d(3, 256, 1), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
                nn.Conv1d(256, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                nn.Conv1d(512, 1024, 1))
            local_dim, hidden = 1024, 2048
        else:
            first, local_dim = widths
            self.first_conv = nn.Sequential(
                nn.Conv1d(3, first, 1), nn.BatchNorm1d(first), nn.ReLU(inplace=True), nn.Conv1d(first, local_dim, 1))
            hidden = 2 * local_dim
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * local_dim, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Conv1d(hidden, embed_dim, 1))

    def forward(self, neighborhood: Tensor) -> Tensor:
        b, g, k, _ = neighborhood.shape
        x = _pointwise(self.first_conv, neighborhood.reshape(b * g * k, 3)).reshape(b * g, k, -1)  # (BG, K, local)
        pooled = x.max(dim=1, keepdim=True).values
        x = torch.cat([pooled.expand(-1, k, -1), x], dim=2).reshape(b * g * k, -1)
        x = _pointwise(self.second_conv, x).reshape(b * g, k, -1).max(dim=1).values  # (BG, C)
        return x.reshape(b, g, -1)


def _pointwise(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Run 1x1 ``Conv1d`` / ``BatchNorm1d`` / ``ReLU`` layers on points in rows: (P, C_in) -> (P, C_out).

    BatchNorm1d over (P, C) rows reduces over the same values per channel as over (BG, C, K); results equal the
    ``Conv1d`` forward up to floating-point rounding. Other layers (a tuner's BatchNorm wrapper) get the (P, C) rows."""
    for layer in layers:
        x = F.linear(x, layer.weight[..., 0], layer.bias) if type(layer) is nn.Conv1d else layer(x)
    return x


def classification_head(in_dim: int, num_classes: int) -> nn.Sequential:
    """The official fine-tuning head (state-dict indices 0, 1, 4, 5, 8): (B, in_dim) -> (B, num_classes)."""
    return nn.Sequential(
        nn.Linear(in_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(256, num_classes))
