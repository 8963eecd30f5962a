"""DCNv4 deformable aggregation in pure PyTorch, on 2-D images (``docs/methods.md``, "DCNv4"; Xiong et al.,
CVPR 2024, ``OpenGVLab/DCNv4``).

* :func:`dcnv4_sample` - the DCNv4 core op (``DCNv4Function``), in :mod:`.sampling`, re-exported here.
* :class:`DCNv4` - the official module (``DCNv4_op/DCNv4/modules/dcnv4.py``): same argument and parameter names, same
  initialisation, so official state dicts load unchanged.

The point-token analogue used as a tunable module is :class:`pointgst.adapters.dcnv4.DeformablePointLayer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointgst.validation import check_int

from .sampling import _check_geometry, dcnv4_output_size, dcnv4_sample

__all__ = ["dcnv4_output_size", "dcnv4_sample", "DCNv4"]


class DCNv4(nn.Module):
    """The official DCNv4 module in pure PyTorch (``value_proj`` -> core op -> ``output_proj``).

    Argument and parameter names equal ``DCNv4_op/DCNv4/modules/dcnv4.py``, so official state dicts load unchanged.
    Differences from the official module: unknown keyword arguments raise ``TypeError`` (the official ``**kwargs``
    silently swallows ``groups=``/``padding=``, issue #97); ``center_feature_scale`` works (shape bug, issue #12: the
    gate is computed, as in v4, from the aggregated output, per group); no CUDA-only limits on K, batch or image size.

    One ``offset_mask`` Linear predicts, per pixel and group, ``2K`` offsets then ``K`` modulation scalars
    (``P = ceil(3 G K / 8) * 8`` outputs, tail ignored); it is zero-initialised (``value_proj``/``output_proj``:
    Xavier-uniform weights, zero biases), so a fresh module outputs exactly zero.

    Parameters: ``C P + P`` (offset_mask) ``+ C^2 + C`` (value_proj) ``+ C^2 + C [output_bias]`` (output_proj)
    ``+ C k_dw^2 + C`` (with ``dw_kernel_size``) ``+ G C + G`` (with ``center_feature_scale``);
    e.g. C = 64, G = 4, K = 9 (P = 112): 7,280 + 4,160 + 4,160 = 15,600.

    Args:
        channels: C; ``channels // group`` must be a multiple of 16 (the official constraint, kept so every config
            that builds here also runs with the CUDA op and vice versa).
        kernel_size, stride, pad, dilation: sampling grid. Offsets are predicted per input pixel (as officially), so
            the output must have the input's size: ``stride == 1`` and ``2 pad == dilation (kernel_size - 1)``; call
            :func:`dcnv4_sample` directly for strided sampling.
        group: G.
        offset_scale: multiplier of the sampling grid and offsets.
        dw_kernel_size: if set, offsets and masks are predicted from a depth-wise ``dw_kernel_size`` convolution of
            the input (no norm, no activation) instead of the input itself.
        center_feature_scale: blend ``(1 - s) * out + s * value_proj(input)`` with a per-group gate
            ``s = sigmoid(W out + b)`` (W, b zero-initialised, s = 0.5).
        remove_center: drop the centre sampling point (K = kernel_size^2 - 1).
        output_bias: whether ``output_proj`` has a bias.
        without_pointwise: no ``value_proj``/``output_proj`` (sample the input directly).
    """

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
    ) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        _check_geometry(group=group, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation)
        if channels % group:
            raise ValueError(f"channels must be divisible by group, got channels={channels} and group={group}")
        if (channels // group) % 16:
            raise ValueError(
                f"channels // group must be a multiple of 16 (official DCNv4 constraint), got "
                f"{channels} // {group} = {channels // group}; e.g. use group={max(1, channels // 16)}"
            )
        if stride != 1 or 2 * pad != dilation * (kernel_size - 1):
            raise ValueError(
                "DCNv4 predicts offsets per input pixel, so the output must keep the input size: need stride=1 and "
                f"pad = dilation*(kernel_size-1)/2, got stride={stride}, pad={pad}, dilation={dilation}, "
                f"kernel_size={kernel_size}; use dcnv4_sample for other geometries"
            )
        if remove_center and (kernel_size % 2 == 0 or kernel_size == 1):
            raise ValueError(f"remove_center needs an odd kernel_size > 1, got kernel_size={kernel_size}")
        if dw_kernel_size is not None:
            check_int("dw_kernel_size", dw_kernel_size, 1)
            if dw_kernel_size % 2 == 0:
                raise ValueError(f"dw_kernel_size must be odd to keep the image size, got {dw_kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = pad
        self.dilation = dilation
        self.group = group
        self.group_channels = channels // group
        self.offset_scale = offset_scale
        self.dw_kernel_size = dw_kernel_size
        self.center_feature_scale = center_feature_scale
        self.remove_center = int(remove_center)
        self.without_pointwise = without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)  # official name: G * points per group

        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(
                channels, channels, dw_kernel_size, padding=(dw_kernel_size - 1) // 2, groups=channels
            )
        self.offset_mask = nn.Linear(channels, int(math.ceil(self.K * 3 / 8) * 8))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        if center_feature_scale:
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        if not self.without_pointwise:
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
            nn.init.xavier_uniform_(self.output_proj.weight)
            if self.output_proj.bias is not None:
                nn.init.zeros_(self.output_proj.bias)

    def forward(self, input: Tensor, shape: tuple[int, int] | None = None) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``; or the official layout ``(B, L, C) -> (B, L, C)`` with ``shape=(H, W)``
        (``None``: ``H = W = sqrt(L)``, which must then be an integer)."""
        if input.dim() not in (3, 4) or input.shape[-1] != self.channels or not input.is_floating_point():
            raise ValueError(
                f"input must be a floating-point (B, H, W, C={self.channels}) image or (B, L, C={self.channels}) "
                f"token tensor, got {input.dtype} {tuple(input.shape)}"
            )
        flat = input.dim() == 3
        if flat:
            length = input.shape[1]
            if shape is None:
                side = math.isqrt(length)
                shape = (side, side)
            if len(shape) != 2 or shape[0] * shape[1] != length:
                raise ValueError(f"shape={shape} does not hold the L={length} tokens; pass shape=(H, W) with H*W = L")
            image = input.reshape(input.shape[0], shape[0], shape[1], self.channels)
        else:
            if shape is not None and tuple(shape) != tuple(input.shape[1:3]):
                raise ValueError(f"shape={shape} disagrees with the (B, H, W, C) input {tuple(input.shape)}")
            image = input
        x = image if self.without_pointwise else self.value_proj(image)
        source = image
        if self.dw_kernel_size is not None:
            source = self.offset_mask_dw(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = dcnv4_sample(
            x,
            self.offset_mask(source),
            group=self.group,
            kernel_size=self.kernel_size,
            stride=self.stride,
            pad=self.pad,
            dilation=self.dilation,
            offset_scale=self.offset_scale,
            remove_center=bool(self.remove_center),
        )
        if self.center_feature_scale:
            gate = F.linear(out, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias).sigmoid()
            gate = gate.repeat_interleave(self.group_channels, dim=-1)
            out = out * (1 - gate) + x * gate
        if not self.without_pointwise:
            out = self.output_proj(out)
        return out.reshape(input.shape)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, pad={self.pad}, dilation={self.dilation}, "
            f"group={self.group}, offset_scale={self.offset_scale}, remove_center={bool(self.remove_center)}"
        )
