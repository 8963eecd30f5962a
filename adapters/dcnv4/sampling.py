"""The DCNv4 core op in pure PyTorch (``docs/methods.md``, "DCNv4"; Xiong et al., CVPR 2024, ``OpenGVLab/DCNv4``):
:func:`dcnv4_sample` (``DCNv4Function``), grouped, modulated (no softmax) bilinear sampling with zero padding in the
official ``offset_mask`` layout, batched, CPU or CUDA, differentiable in every input; :func:`dcnv4_output_size`.
The official module around it is :class:`pointgst.adapters.dcnv4.op.DCNv4`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pointgst.validation import check_int

__all__ = ["dcnv4_output_size", "dcnv4_sample"]




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
