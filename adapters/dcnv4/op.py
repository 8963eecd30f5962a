"""DCNv4 deformable aggregation in pure PyTorch, on 2-D images (``docs/methods.md``, "DCNv4"; Xiong et al.,
CVPR 2024, ``OpenGVLab/DCNv4``).

* :func:`dcnv4_sample` - the DCNv4 core op (``DCNv4Function``): grouped, modulated (no softmax) bilinear sampling
  with zero padding, in the official ``offset_mask`` layout. Batched, CPU or CUDA, differentiable in every input.
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

__all__ = ["dcnv4_output_size", "dcnv4_sample", "DCNv4"]



def _check_geometry(*, group: int, kernel_size: int, stride: int, pad: int, dilation: int) -> None:
    """Validate the sampling-geometry arguments shared by :func:`dcnv4_sample` and :class:`DCNv4`."""
    for name, number, minimum in (("group", group, 1), ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                                  ("pad", pad, 0), ("dilation", dilation, 1)):
        check_int(name, number, minimum)


def _kernel_points(kernel_size: int, dilation: int, remove_center: bool) -> list[tuple[int, int]]:
    """The ``(x, y)`` pixel displacements of the sampling points, in the official order (x outer, y inner).

    Point ``k = i * kernel_size + j`` (x index ``i``, y index ``j``) sits at ``(i * dilation - c, j * dilation - c)``
    with ``c = dilation * (kernel_size - 1) // 2``; ``remove_center`` drops ``i = j = kernel_size // 2``.
    """
    c = dilation * (kernel_size - 1) // 2
    middle = kernel_size // 2
    return [
        (i * dilation - c, j * dilation - c)
        for i in range(kernel_size)
        for j in range(kernel_size)
        if not (remove_center and i == middle and j == middle)
    ]


def dcnv4_output_size(size: int, kernel_size: int = 3, stride: int = 1, pad: int = 1, dilation: int = 1) -> int:
    """Output height (or width) of :func:`dcnv4_sample`, as for a convolution:
    ``(size + 2 pad - dilation (kernel_size - 1) - 1) // stride + 1``."""
    return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1


def dcnv4_sample(
    value: Tensor,
    offset_mask: Tensor,
    *,
    group: int,
    kernel_size: int = 3,
    stride: int = 1,
    pad: int = 1,
    dilation: int = 1,
    offset_scale: float = 1.0,
    remove_center: bool = False,
) -> Tensor:
    """The DCNv4 core op: ``out[b, y, x, g] = sum_k m_k * Bilinear(value[b, :, :, g], q_k)`` (no softmax on ``m``).

    Pixel centres sit at integer coordinates. For output pixel ``(y_o, x_o)`` and sampling point ``k`` with grid
    displacement ``(gx_k, gy_k)`` (:func:`_kernel_points`), ``p0 = (x_o stride - pad + c, y_o stride - pad + c)``,
    ``c = dilation (kernel_size - 1) // 2``, and ``q_k = p0 + offset_scale * ((gx_k, gy_k) + (dx_k, dy_k))``:
    ``offset_scale`` scales the regular grid and the learned offset alike. Bilinear corners outside the image
    contribute zero (the CUDA kernel's zero padding). Matches the official kernel, gradients included (the bilinear
    weights are differentiable in ``q``; ``floor`` is piecewise constant).

    Args:
        value: ``(B, H, W, group * D)`` channels-last values (already projected).
        offset_mask: ``(B, H_out, W_out, P)`` with ``P >= group * K * 3``, ``K = kernel_size**2 - remove_center``.
            Group ``g`` owns ``[g K 3, (g + 1) K 3)``: ``2K`` offsets interleaved ``(dx_k, dy_k)`` in pixels, then ``K``
            modulation scalars. Trailing entries (the official padding to a multiple of 8) are ignored.
        group: number of groups G; each shares one set of offsets and modulation scalars over its D channels.
        kernel_size, stride, pad, dilation: the sampling grid, as in a convolution
            (``H_out = dcnv4_output_size(H, ...)``).
        offset_scale: multiplier of the grid and of the offsets.
        remove_center: drop the centre sampling point (odd ``kernel_size`` > 1 only).

    Returns:
        ``(B, H_out, W_out, group * D)``.
    """
    _check_geometry(group=group, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation)
    if remove_center and (kernel_size % 2 == 0 or kernel_size == 1):
        raise ValueError(f"remove_center needs an odd kernel_size > 1, got kernel_size={kernel_size}")
    if value.dim() != 4 or not value.is_floating_point():
        raise ValueError(
            f"value must be a floating-point (B, H, W, C) channels-last tensor, got {value.dtype} "
            f"{tuple(value.shape)}; "
            "channels-first (B, C, H, W) maps need .permute(0, 2, 3, 1)"
        )
    batch, height, width, channels = value.shape
    if channels % group:
        raise ValueError(f"value channels ({channels}) must be divisible by group ({group})")
    grid = _kernel_points(kernel_size, dilation, remove_center)
    k = len(grid)
    h_out = dcnv4_output_size(height, kernel_size, stride, pad, dilation)
    w_out = dcnv4_output_size(width, kernel_size, stride, pad, dilation)
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"a {height}x{width} input is smaller than the {kernel_size}x{kernel_size} kernel "
            f"(pad {pad}, dilation {dilation})"
        )
    if (
        offset_mask.dim() != 4
        or tuple(offset_mask.shape[:3]) != (batch, h_out, w_out)
        or offset_mask.shape[3] < group * k * 3
    ):
        raise ValueError(
            f"offset_mask must have shape (B={batch}, H_out={h_out}, W_out={w_out}, P >= group*K*3={group * k * 3}), "
            f"got {tuple(offset_mask.shape)}"
        )
    d = channels // group
    om = offset_mask[..., : group * k * 3].reshape(batch, h_out, w_out, group, 3 * k).to(value.dtype)
    offsets = om[..., : 2 * k].reshape(batch, h_out, w_out, group, k, 2)
    mask = om[..., 2 * k :]  # (B, Ho, Wo, G, K)

    dev, dt = value.device, value.dtype
    c = dilation * (kernel_size - 1) // 2
    x0 = (torch.arange(w_out, device=dev, dtype=dt) * stride + (c - pad)).view(1, 1, w_out, 1, 1)
    y0 = (torch.arange(h_out, device=dev, dtype=dt) * stride + (c - pad)).view(1, h_out, 1, 1, 1)
    kernel = torch.tensor(grid, device=dev, dtype=dt)  # (K, 2) as (x, y)
    pos = offset_scale * (kernel + offsets)  # (B, Ho, Wo, G, K, 2)
    px, py = x0 + pos[..., 0], y0 + pos[..., 1]

    fx, fy = px.floor(), py.floor()
    lx, ly = px - fx, py - fy
    ix, iy = fx.long(), fy.long()
    indices, weights = [], []
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            cx, cy = ix + dx, iy + dy
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            indices.append(cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1))
            weights.append(wy * wx * inside)
    index = torch.stack(indices, -1)  # (B, Ho, Wo, G, K, 4)
    coeff = torch.stack(weights, -1) * mask[..., None]

    q = h_out * w_out
    index = index.permute(0, 3, 1, 2, 4, 5).reshape(batch, group, q * k * 4, 1).expand(-1, -1, -1, d)
    coeff = coeff.permute(0, 3, 1, 2, 4, 5).reshape(batch, group, q, k * 4)
    values = value.reshape(batch, height * width, group, d).transpose(1, 2)  # (B, G, HW, D)
    sampled = values.gather(2, index).view(batch, group, q, k * 4, d)
    out = torch.einsum("bgqn,bgqnd->bgqd", coeff, sampled)
    return out.transpose(1, 2).reshape(batch, h_out, w_out, channels)


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
