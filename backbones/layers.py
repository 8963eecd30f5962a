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

    @property
    def owner(self) -> nn.Module:
        """The module whose method this handle calls (the backbone, for its ``pipeline`` handle)."""
        return self.fn.__self__


class BlockStack(nn.Module):
    """Base of a module that runs transformer blocks: ``x = block(x + pos, geometry)`` for every block, each block's
    activations recomputed in the backward pass instead of kept when ``gradient_checkpointing`` is on (set through
    the backbone's ``gradient_checkpointing_enable()``; only while training with autograd)."""

    gradient_checkpointing = False

    def run_blocks(self, blocks: nn.ModuleList, x: Tensor, pos: Tensor, geometry: Any) -> Tensor:
        """x, pos (B, T, C) -> (B, T, C) after every block."""
        return self.block_outputs(blocks, x, pos, geometry, [len(blocks) - 1])[0]

    def block_outputs(self, blocks: nn.ModuleList, x: Tensor, pos: Tensor, geometry: Any,
                      indices: list[int]) -> list[Tensor]:
        """x, pos (B, T, C) -> the outputs (B, T, C) of the blocks at ``indices`` (ascending, 0-based); the blocks
        after the last of them are not run."""
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        outputs = []
        for index, block in enumerate(blocks[:indices[-1] + 1]):
            x = checkpoint(block, x + pos, geometry, use_reentrant=False) if recompute else block(x + pos, geometry)
            if index in indices:
                outputs.append(x)
        return outputs


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
    match the official state-dict keys. Input (B, G, K, 3) -> tokens (B, G, C).

    The forward equals the official one (``Conv1d`` layers over each patch, max-pool, the pooled feature concatenated
    in front of every point's, more layers, max-pool) up to float rounding, computed with fewer passes over the
    B*G*K point rows, which dominate the frozen backbone's cost: the 1x1 convolutions run as matrix products over all
    points; a BatchNorm in eval mode (frozen statistics) is folded into the matrix product before it; the layer after
    the concatenation is split into its pooled part, computed once per patch, and its per-point part; and the bias of
    a layer followed by the max-pool is added after the pool (``max(y + b) = max(y) + b``).
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

    #: point rows per chunk when no gradient is needed and no BatchNorm uses batch statistics (the frozen encoder of a
    #: tuned model, inference): the tokens are the same, the large intermediate tensors are not all alive at once
    chunk_rows = 16384

    def forward(self, neighborhood: Tensor) -> Tensor:
        return encode_patches(self.first_conv, self.second_conv, neighborhood, self.chunk_rows)


def encode_patches(first_conv: nn.Sequential, second_conv: nn.Sequential, neighborhood: Tensor,
                   chunk_rows: int = PatchEncoder.chunk_rows) -> Tensor:
    """The patch encoder's computation (:class:`PatchEncoder`) with the given layers: centred patches (B, G, K, 3) ->
    tokens (B, G, C), in chunks of ``chunk_rows`` point rows where nothing needs the whole batch. A method that
    retrains one half of a frozen encoder (PPT's ``first_conv``) passes its copy."""
    b, g, k, _ = neighborhood.shape
    patches = neighborhood.reshape(b * g, k, 3)
    layers = (first_conv, second_conv)
    whole = (torch.is_grad_enabled() and (neighborhood.requires_grad or
                                          any(p.requires_grad for m in layers for p in m.parameters()))
             or any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                    for layer in layers for m in layer.modules()))
    per_chunk = len(patches) if whole else max(1, chunk_rows // k)  # batch statistics need every patch
    tokens = [_encode(first_conv, second_conv, chunk) for chunk in patches.split(per_chunk)]
    return (tokens[0] if len(tokens) == 1 else torch.cat(tokens)).reshape(b, g, -1)


def _encode(first_conv: nn.Sequential, second_conv: nn.Sequential, patches: Tensor) -> Tensor:
    """(P, K, 3) centred patches -> (P, C) tokens."""
    p, k, _ = patches.shape
    local, local_bias = _pointwise(first_conv, patches.reshape(p * k, 3))  # bias still to add
    local = local.reshape(p, k, -1)
    pooled = local.max(dim=1).values + local_bias  # (P, L): the official global feature
    # the layer after the concatenation [pooled, local + local_bias], split by the two parts of its input
    weight, bias, used = _linear_params(second_conv, 0)
    width = pooled.shape[1]
    per_patch = F.linear(pooled, weight[:, :width], bias + weight[:, width:] @ local_bias)  # (P, H)
    x = (F.linear(local, weight[:, width:]) + per_patch.unsqueeze(1)).reshape(p * k, -1)
    x, out_bias = _pointwise(second_conv[used:], x)
    return x.reshape(p, k, -1).max(dim=1).values + out_bias


def _linear_params(layers: nn.Sequential, index: int) -> tuple[Tensor, Tensor, int]:
    """``(weight (out, in), bias (out,), layers used)`` of the 1x1 ``Conv1d`` at ``index``, with the BatchNorm after it
    folded in when that BatchNorm is in eval mode (frozen statistics): ``BN(W x + b) = (s W) x + s (b - mean) + beta``,
    ``s = gamma / sqrt(var + eps)``."""
    conv = layers[index]
    weight, bias = conv.weight[..., 0], conv.bias
    norm = layers[index + 1] if index + 1 < len(layers) else None
    if type(norm) is not nn.BatchNorm1d or norm.training or norm.running_var is None:
        return weight, bias, index + 1
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
    return weight * scale.unsqueeze(1), bias * scale + shift, index + 2


def _pointwise(layers: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run 1x1 ``Conv1d`` / ``BatchNorm1d`` / ``ReLU`` layers on points in rows, (P, C_in) -> ``(rows without the last
    convolution's bias (P, C_out), that bias (C_out,))``: the caller adds it after pooling.

    A BatchNorm in training mode (full fine-tuning, the official drifting statistics) runs on the (P, C) rows: it
    reduces over the same values per channel as over (BG, C, K). Other layers (a tuner's BatchNorm wrapper) get the
    rows too."""
    index, last = 0, max(i for i, layer in enumerate(layers) if type(layer) is nn.Conv1d)
    while index < len(layers):
        if type(layers[index]) is not nn.Conv1d:
            x = layers[index](x)
            index += 1
            continue
        weight, bias, after = _linear_params(layers, index)
        if index == last:
            return F.linear(x, weight), bias
        x = F.linear(x, weight, bias)
        index = after
    raise ValueError("the layers must end with a Conv1d")


def classification_head(in_dim: int, num_classes: int) -> nn.Sequential:
    """The official fine-tuning head (state-dict indices 0, 1, 4, 5, 8): (B, in_dim) -> (B, num_classes)."""
    return nn.Sequential(
        nn.Linear(in_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(256, num_classes))
