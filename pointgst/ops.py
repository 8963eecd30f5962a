"""Batched point-cloud primitives: sampling, neighbourhoods and space-filling-curve keys.

Pure PyTorch, device-agnostic (CPU or CUDA, tensors are created on the input's device) and
vectorised over the batch. Indices reproduce the official CUDA extensions the pretrained
backbones were trained with:

* :func:`farthest_point_sample` - ``pointnet2_ops`` furthest point sampling (float32 arithmetic,
  start index 0, optional skip of near-origin points, first-max tie break).
* :func:`knn_indices` - ``KNN_CUDA``: per-dimension squared distances, ``k`` smallest in
  ascending ``(distance, index)`` order.
* :func:`z_order_key` - the Morton key of the official PointGST code; :func:`hilbert_key` - a 3-D
  Hilbert key (Skilling's transpose algorithm); :func:`curve_key` dispatches between them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "farthest_point_sample",
    "knn_indices",
    "gather_points",
    "z_order_key",
    "hilbert_key_from_cells",
    "hilbert_key",
    "curve_key",
]

_MAX_DEPTH = 21  # 3 * 21 = 63 bits: the largest key that fits a signed int64
_NEAR_ORIGIN = 1e-3  # pointnet2_ops skips points with x^2 + y^2 + z^2 <= 1e-3 (compared in float64)


def _check_xyz(tensor: Tensor, name: str, shape: str) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a floating tensor of ``shape`` (e.g. ``"(B, N, 3)"``).

    ``shape`` is the human-readable layout; its rank is checked unless it contains ``...``.
    """
    rank = None if "..." in shape else shape.count(",") + 1
    if tensor.dim() == 0 or tensor.shape[-1] != 3 or (rank is not None and tensor.dim() != rank):
        raise ValueError(
            f"{name} must have shape {shape} (last dim = x, y, z), got {tuple(tensor.shape)}; "
            "reshape or permute it to that layout (channels-first (B, 3, N) tensors need .transpose(1, 2))"
        )
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}; convert it with .float()")


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or not 1 <= depth <= _MAX_DEPTH:
        raise ValueError(
            f"depth must be an int in [1, {_MAX_DEPTH}], got {depth!r}; a key holds 3 * depth bits "
            f"and must fit in a signed int64, so use depth <= {_MAX_DEPTH}"
        )


def farthest_point_sample(points: Tensor, num_samples: int, *, skip_near_origin: bool = False) -> Tensor:
    """Farthest point sampling, index-exact with the ``pointnet2_ops`` CUDA kernel.

    Args:
        points: ``(B, N, 3)`` float coordinates (processed in float32, like the kernel).
        num_samples: number ``m`` of indices to draw, ``1 <= m <= N``.
        skip_near_origin: reproduce the kernel's skip of points with ``x^2 + y^2 + z^2 <= 1e-3``:
            they are never selected (except index 0, which always starts the sample). Once every
            valid point is taken, the first valid index repeats; with no valid point, index 0 does.

    Returns:
        ``(B, m)`` int64 indices into ``N``; column 0 is always 0. Exact score ties pick the lowest
        index (the kernel's strided block reduction may break such ties differently).
    """
    _check_xyz(points, "points", "(B, N, 3)")
    batch, n = points.shape[:2]
    if not isinstance(num_samples, int) or not 1 <= num_samples <= n:
        raise ValueError(
            f"num_samples must be an int in [1, N={n}], got {num_samples!r}; "
            "sample at most as many points as each cloud holds"
        )
    xyz = points.detach().to(torch.float32).permute(2, 0, 1).contiguous()  # (3, B, N)
    # Squared distance to the selected set; -1 marks skipped points (below every real distance).
    temp = torch.full((batch, n), 1e10, dtype=torch.float32, device=xyz.device)
    if skip_near_origin:
        mag = xyz[0] * xyz[0] + xyz[1] * xyz[1] + xyz[2] * xyz[2]
        temp.masked_fill_(mag.double() <= _NEAR_ORIGIN, -1.0)
    picks = torch.zeros(num_samples, batch, dtype=torch.int64, device=xyz.device)  # row j = j-th pick
    last = xyz.new_empty(3, batch, 1)
    diff = torch.empty_like(xyz)
    dist = torch.empty_like(temp)
    for j in range(1, num_samples):
        torch.gather(xyz, 2, picks[j - 1].view(1, batch, 1).expand(3, batch, 1), out=last)
        torch.sub(xyz, last, out=diff)
        diff.mul_(diff)
        torch.add(diff[0], diff[1], out=dist)
        dist.add_(diff[2])  # (dx*dx + dy*dy) + dz*dz, float32, as the kernel sums it
        torch.minimum(temp, dist, out=temp)  # skipped points stay at -1
        torch.argmax(temp, dim=1, out=picks[j])
    return picks.t().contiguous()


def knn_indices(query: Tensor, reference: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` nearest reference points of every query point, as ``KNN_CUDA`` returns them.

    Squared distances are accumulated per dimension from explicit float32 differences (no
    ``|a|^2 + |b|^2 - 2ab`` expansion); neighbours are sorted by ascending ``(distance, index)``, so
    equidistant points come out lowest index first.

    Args:
        query: ``(B, G, 3)`` float query points.
        reference: ``(B, N, 3)`` float reference points, same batch size.
        k: neighbours per query, ``1 <= k <= N``.

    Returns:
        ``(B, G, k)`` int64 indices into ``N``.
    """
    _check_xyz(query, "query", "(B, G, 3)")
    _check_xyz(reference, "reference", "(B, N, 3)")
    if query.shape[0] != reference.shape[0]:
        raise ValueError(
            f"query and reference must share the batch size, got {query.shape[0]} and {reference.shape[0]}; "
            "pair every query cloud with its own reference cloud"
        )
    n = reference.shape[1]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, N={n}], got {k!r}; ask for at most as many neighbours as points")
    q = query.detach().to(torch.float32)
    r = reference.detach().to(torch.float32)
    dist = (q[:, :, None, 0] - r[:, None, :, 0]).square_()  # (B, G, N)
    for axis in (1, 2):
        dist += (q[:, :, None, axis] - r[:, None, :, axis]).square_()
    # Non-negative float32 bit patterns order like the floats, so (distance bits << 32 | index) is a
    # unique int64 key whose smallest-k are exactly the (distance, index)-sorted neighbours.
    key = dist.view(torch.int32).to(torch.int64).bitwise_left_shift_(32)
    key |= torch.arange(n, device=key.device)
    return key.topk(k, dim=-1, largest=False, sorted=True).values.bitwise_and_(0xFFFFFFFF)


def gather_points(values: Tensor, indices: Tensor) -> Tensor:
    """Batched gather: ``out[b, s..., :] = values[b, indices[b, s...], :]`` (differentiable in ``values``).

    Args:
        values: ``(B, N, C)`` per-point values.
        indices: ``(B, *S)`` int64 indices into ``N``.

    Returns:
        ``(B, *S, C)`` tensor.
    """
    if values.dim() != 3:
        raise ValueError(f"values must have shape (B, N, C), got {tuple(values.shape)}; add a channel dim with .unsqueeze(-1)")
    if indices.dim() < 1 or indices.shape[0] != values.shape[0] or indices.dtype != torch.int64:
        raise ValueError(
            f"indices must be an int64 tensor of shape (B={values.shape[0]}, ...), got {indices.dtype} "
            f"{tuple(indices.shape)}; index each sample's own points (convert with .long())"
        )
    flat = indices.reshape(indices.shape[0], -1, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).reshape(*indices.shape, values.shape[-1])


def inverse_distance_interpolate(distances: Tensor, values: Tensor, neighbors: int, eps: float) -> Tensor:
    """PointNet++-style interpolation from the ``neighbors`` nearest centres (all of them when there are fewer).

    Args:
        distances: ``(B, N, S)`` squared distances from N points to S centres (however the caller computes them).
        values: ``(B, S, D)`` values at the centres.
        neighbors: how many nearest centres each point reads.
        eps: added to every squared distance before inverting it.

    Returns:
        ``(B, N, D)``: per point, the values of its nearest centres weighted by ``1 / (d^2 + eps)``, the weights
        normalised to sum 1. Gathered by index, so the gradient of ``values`` is (B, S, D), not (B, N, S, D).
    """
    nearest, index = distances.topk(min(neighbors, distances.shape[-1]), dim=-1, largest=False)  # ascending
    weights = 1.0 / (nearest + eps)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (gather_points(values, index) * weights.unsqueeze(-1)).sum(dim=2)


def _interleave_bits(high: Tensor, mid: Tensor, low: Tensor, depth: int) -> Tensor:
    """``sum_i bit_i(high) << 3i+2 | bit_i(mid) << 3i+1 | bit_i(low) << 3i`` over the ``depth`` low bits."""
    key = torch.zeros_like(high)
    for i in range(depth):
        key |= (((high >> i) & 1) << (3 * i + 2)) | (((mid >> i) & 1) << (3 * i + 1)) | (((low >> i) & 1) << (3 * i))
    return key


def z_order_key(points: Tensor, *, scale: float = 100.0, depth: int = 16) -> Tensor:
    """Morton key exactly as the official PointGST code computes it.

    Each coordinate of ``points * scale`` is truncated toward zero to int64 and its ``depth`` low bits
    are kept (two's complement, negatives not offset), then bits are interleaved with ``y`` highest,
    ``x`` middle, ``z`` lowest: octant (sign bits) first, Morton order inside the octant.

    Args:
        points: ``(..., 3)`` float coordinates.
        scale: multiplier applied before truncation (100 in the official code).
        depth: bits kept per axis, ``1 <= depth <= 21`` (16 in the official code).

    Returns:
        ``(...)`` int64 keys in ``[0, 8**depth)``.
    """
    _check_xyz(points, "points", "(..., 3)")
    _check_depth(depth)
    cells = (points.detach() * scale).to(torch.int64) & ((1 << depth) - 1)
    return _interleave_bits(cells[..., 1], cells[..., 0], cells[..., 2], depth)


def hilbert_key_from_cells(cells: Tensor, depth: int) -> Tensor:
    """Position of integer grid cells along the 3-D Hilbert curve (Skilling's transpose algorithm).

    Consecutive keys are face-adjacent cells (Manhattan distance 1); cell ``(0, 0, 0)`` has key 0.

    Args:
        cells: ``(..., 3)`` integer tensor with entries in ``[0, 2**depth)``.
        depth: bits per axis, ``1 <= depth <= 21``.

    Returns:
        ``(...)`` int64 keys in ``[0, 8**depth)``, a bijection on the ``(2**depth)**3`` grid.
    """
    _check_depth(depth)
    if cells.dim() == 0 or cells.shape[-1] != 3:
        raise ValueError(f"cells must have shape (..., 3), got {tuple(cells.shape)}; put the x, y, z cell indices last")
    if cells.is_floating_point() or cells.is_complex() or cells.dtype == torch.bool:
        raise ValueError(f"cells must be an integer tensor, got {cells.dtype}; quantise first or use hilbert_key")
    side = 1 << depth
    if cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= side):
        raise ValueError(
            f"cells must lie in [0, 2**depth) = [0, {side}), got values in [{int(cells.min())}, {int(cells.max())}]; "
            "clamp the cells or raise depth"
        )
    return _hilbert_key(cells, depth)


def _hilbert_key(cells: Tensor, depth: int) -> Tensor:
    """:func:`hilbert_key_from_cells` of cells known to lie on the grid."""
    x = list(cells.to(torch.int64).unbind(-1))
    # Undo excess work (Skilling 2004, AxestoTranspose), from the top bit down.
    for level in range(depth - 1, 0, -1):
        q = 1 << level
        p = q - 1
        for i in range(3):
            flip = (x[i] & q) != 0
            swap = torch.where(flip, 0, (x[0] ^ x[i]) & p)  # i == 0: always 0
            x[0] = x[0] ^ torch.where(flip, p, swap)
            x[i] = x[i] ^ swap
    # Gray encode.
    x[1] = x[1] ^ x[0]
    x[2] = x[2] ^ x[1]
    t = torch.zeros_like(x[2])
    for level in range(depth - 1, 0, -1):
        q = 1 << level
        t ^= torch.where((x[2] & q) != 0, q - 1, 0)
    return _interleave_bits(x[0] ^ t, x[1] ^ t, x[2] ^ t, depth)


def hilbert_key(points: Tensor, *, depth: int = 10) -> Tensor:
    """Hilbert key of every point, quantised per sample into its own bounding cube.

    Each sample is shifted to its bounding-box minimum and scaled by its largest box side (a cube, so
    locality is isotropic; a zero extent maps every point to cell 0), giving ``2**depth`` cells per
    axis. Keys of one sample never depend on the other samples of the batch.

    Args:
        points: ``(B, G, 3)`` float coordinates.
        depth: bits per axis, ``1 <= depth <= 21``.

    Returns:
        ``(B, G)`` int64 keys in ``[0, 8**depth)``.
    """
    _check_xyz(points, "points", "(B, G, 3)")
    _check_depth(depth)
    pts = points.detach()
    low = pts.amin(dim=1, keepdim=True)
    extent = (pts.amax(dim=1, keepdim=True) - low).amax(dim=2, keepdim=True)  # (B, 1, 1)
    extent = torch.where(extent > 0, extent, torch.ones_like(extent))
    side = 1 << depth
    cells = ((pts - low) / extent * side).floor().clamp_(0, side - 1).to(torch.int64)
    return _hilbert_key(cells, depth)  # clamped onto the grid: no range check (and no host sync) needed


_CURVES = {"z_order": z_order_key, "hilbert": hilbert_key}


def curve_key(points: Tensor, curve: str = "z_order") -> Tensor:
    """Space-filling-curve key of ``(B, G, 3)`` points, ``(B, G)`` int64, for ``curve`` in ``{"z_order", "hilbert"}``."""
    if curve not in _CURVES:
        raise ValueError(f"unknown curve {curve!r}; choose one of {sorted(_CURVES)}")
    _check_xyz(points, "points", "(B, G, 3)")
    return _CURVES[curve](points)
