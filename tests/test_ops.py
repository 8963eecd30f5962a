"""Tests for pointgst.ops: exact indices/keys against independent naive references and hand-worked values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pointgst.geometry import TokenGeometry
from pointgst.ops import (
    curve_key,
    farthest_point_sample,
    gather_points,
    hilbert_key,
    hilbert_key_from_cells,
    knn_indices,
    z_order_key,
)

f32 = np.float32


# --------------------------------------------------------------------------- references


def reference_fps(points: np.ndarray, m: int, skip_near_origin: bool = False) -> np.ndarray:
    """Naive per-sample transcription of the pointnet2_ops kernel (float32 maths, strict '>' scan)."""
    out = np.zeros((points.shape[0], m), dtype=np.int64)
    for b, cloud in enumerate(points.astype(np.float32)):
        x, y, z = cloud[:, 0], cloud[:, 1], cloud[:, 2]
        valid = (x * x + y * y + z * z).astype(np.float64) > 1e-3 if skip_near_origin else np.ones(len(cloud), bool)
        temp = np.full(len(cloud), 1e10, dtype=np.float32)
        old = 0
        for j in range(1, m):
            dx, dy, dz = x - x[old], y - y[old], z - z[old]
            d = dx * dx + dy * dy + dz * dz
            best, besti = -1.0, 0
            for k in range(len(cloud)):
                if not valid[k]:
                    continue
                temp[k] = min(d[k], temp[k])
                if temp[k] > best:
                    best, besti = temp[k], k
            out[b, j] = old = besti
    return out


def reference_knn(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Brute force: float32 per-dimension squared distances, Python sort by (distance, index)."""
    out = np.zeros(query.shape[:2] + (k,), dtype=np.int64)
    for b in range(query.shape[0]):
        for g, q in enumerate(query[b].astype(np.float32)):
            d = np.zeros(reference.shape[1], dtype=np.float32)
            for axis in range(3):
                diff = reference[b, :, axis].astype(np.float32) - q[axis]
                d += diff * diff
            out[b, g] = sorted(range(len(d)), key=lambda i: (d[i], i))[:k]
    return out


def reference_z_order(point) -> int:
    """Official PointGST Morton key of one float32 point, with Python ints."""
    x, y, z = (math.trunc(float(f32(c) * f32(100.0))) % (1 << 16) for c in point)
    return sum(((y >> i) & 1) << (3 * i + 2) | ((x >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i) for i in range(16))


def full_grid(depth: int) -> torch.Tensor:
    side = torch.arange(1 << depth)
    return torch.stack(torch.meshgrid(side, side, side, indexing="ij"), dim=-1).reshape(-1, 3)


# --------------------------------------------------------------------------- farthest point sampling


@pytest.mark.parametrize("batch,n,m", [(1, 1, 1), (1, 17, 17), (2, 64, 8), (3, 300, 40), (2, 257, 64)])
def test_fps_matches_naive_reference(batch, n, m):
    rng = np.random.default_rng(batch * 1000 + n)
    points = rng.normal(size=(batch, n, 3)).astype(np.float32)
    idx = farthest_point_sample(torch.from_numpy(points), m)
    assert idx.dtype == torch.int64 and idx.shape == (batch, m)
    assert (idx[:, 0] == 0).all()
    np.testing.assert_array_equal(idx.numpy(), reference_fps(points, m))
    assert all(len(set(row)) == m for row in idx.tolist())  # distinct points: no repeats before exhaustion


@pytest.mark.parametrize("skip", [False, True])
def test_fps_ties_and_duplicates_match_reference(skip):
    # Small integer grid with duplicates and the origin: many exact ties, zero scores, skipped points.
    rng = np.random.default_rng(7)
    points = rng.integers(-2, 3, size=(4, 60, 3)).astype(np.float32) * f32(0.5)
    idx = farthest_point_sample(torch.from_numpy(points), 50, skip_near_origin=skip)
    np.testing.assert_array_equal(idx.numpy(), reference_fps(points, 50, skip))


def test_fps_float64_input_and_no_grad_graph():
    points = torch.randn(2, 50, 3, dtype=torch.float64, requires_grad=True)
    idx = farthest_point_sample(points, 10)
    np.testing.assert_array_equal(idx.numpy(), reference_fps(points.detach().numpy(), 10))
    assert not idx.requires_grad


def test_fps_skip_drops_near_origin_point():
    # Index 1 (|p|^2 = 4e-4) is the farthest from index 0 but is skipped; index 2 is taken instead.
    points = torch.tensor([[[1.0, 0.0, 0.0], [-0.02, 0.0, 0.0], [0.5, 0.0, 0.0]]])
    assert farthest_point_sample(points, 2).tolist() == [[0, 1]]
    assert farthest_point_sample(points, 2, skip_near_origin=True).tolist() == [[0, 2]]


def test_fps_skip_threshold_is_compared_in_float64():
    # float32(1e-3) = 0.0010000000474974513 > 1e-3, so a point whose float32 magnitude equals it is kept;
    # the float32 just below it (0.0009999999310821295) is skipped.
    just_above = np.nextafter(f32(0.03), f32(1.0))
    kept, dropped = [0.01, just_above, 0.0], [0.01, 0.03, 0.0]
    assert f32(0.01) * f32(0.01) + just_above * just_above == f32(1e-3)
    assert f32(0.01) * f32(0.01) + f32(0.03) * f32(0.03) < 1e-3
    points = torch.tensor([[[0.0, 0.0, 0.0], kept, dropped]], dtype=torch.float32)
    # Origin start, the kept point is the only valid one, then it repeats (exhaustion).
    assert farthest_point_sample(points, 3, skip_near_origin=True).tolist() == [[0, 1, 1]]
    assert farthest_point_sample(points, 3).tolist() == [[0, 1, 2]]


def test_fps_exhaustion_repeats_first_valid_index():
    # Valid points 0, 2, 3; index 1 is at the origin. After all valid points are taken every score is 0
    # and the kernel picks the first valid candidate (index 0) again.
    points = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [2.0, 0, 0], [-1.0, 0, 0]]])
    assert farthest_point_sample(points, 4, skip_near_origin=True).tolist() == [[0, 3, 2, 0]]
    # Start index 0 is skipped itself: it starts the sample but never comes back; index 1 repeats.
    points = torch.tensor([[[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [0, 0, 0.01]]])
    assert farthest_point_sample(points, 4, skip_near_origin=True).tolist() == [[0, 2, 1, 1]]
    assert farthest_point_sample(points, 4).tolist() == [[0, 2, 1, 3]]
    # Without skipping, duplicates exhaust the scores too and index 0 repeats.
    points = torch.tensor([[[0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 0, 0]]])
    assert farthest_point_sample(points, 4).tolist() == [[0, 1, 0, 0]]
    # No valid point at all: index 0 throughout.
    assert farthest_point_sample(torch.zeros(2, 4, 3), 3, skip_near_origin=True).tolist() == [[0, 0, 0]] * 2


# --------------------------------------------------------------------------- kNN


def test_knn_ties_keep_lower_index_first():
    # Six reference points at exactly distance 1 from the origin query, interleaved with nearer and
    # farther points; ties must come out in ascending index order.
    ref = torch.tensor(
        [[[0, 0, 2.0], [0, -1.0, 0], [0.5, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [3.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]]
    )
    query = torch.zeros(1, 1, 3)
    assert knn_indices(query, ref, 9).tolist() == [[[2, 1, 3, 4, 6, 7, 8, 0, 5]]]
    assert knn_indices(query, ref, 4).tolist() == [[[2, 1, 3, 4]]]


@pytest.mark.parametrize("batch,g,n,k", [(1, 1, 1, 1), (2, 8, 40, 5), (3, 16, 64, 16), (2, 5, 30, 30)])
def test_knn_matches_brute_force(batch, g, n, k):
    rng = np.random.default_rng(g * 100 + n)
    ref = rng.normal(size=(batch, n, 3)).astype(np.float32)
    query = rng.normal(size=(batch, g, 3)).astype(np.float32)
    idx = knn_indices(torch.from_numpy(query), torch.from_numpy(ref), k)
    assert idx.dtype == torch.int64 and idx.shape == (batch, g, k)
    np.testing.assert_array_equal(idx.numpy(), reference_knn(query, ref, k))


def test_knn_matches_brute_force_on_grid_with_ties():
    rng = np.random.default_rng(3)
    ref = rng.integers(-3, 4, size=(2, 80, 3)).astype(np.float32)
    query = rng.integers(-3, 4, size=(2, 10, 3)).astype(np.float32) * f32(0.5)
    np.testing.assert_array_equal(knn_indices(torch.from_numpy(query), torch.from_numpy(ref), 20).numpy(), reference_knn(query, ref, 20))


def test_knn_query_in_reference_is_its_own_first_neighbour():
    torch.manual_seed(0)
    ref = torch.randn(4, 100, 3)
    centre_idx = farthest_point_sample(ref, 16)
    idx = knn_indices(gather_points(ref, centre_idx), ref, 8)
    assert torch.equal(idx[..., 0], centre_idx)


def test_token_geometry_knn_is_scale_free_and_built_once():
    """TokenGeometry.knn(k) is knn_indices on the normalised centres (each sample moved to its mean and divided by
    its largest absolute coordinate): every point its own first neighbour, the same neighbours for centres scaled
    to 1e-30 or 1e30 (squared distances outside float32's range), each structure built once per geometry."""
    rng = np.random.default_rng(5)
    centers = torch.from_numpy(rng.normal(size=(3, 32, 3)).astype(np.float32))
    geometry = TokenGeometry(centers)
    normalized = geometry.normalized_centers()
    moved = centers - centers.mean(dim=1, keepdim=True)
    assert torch.equal(normalized, moved / moved.abs().amax(dim=(1, 2), keepdim=True))
    assert torch.equal(normalized.abs().amax(dim=(1, 2)), torch.ones(3))
    knn = geometry.knn(8)
    np.testing.assert_array_equal(knn.numpy(), reference_knn(normalized.numpy(), normalized.numpy(), 8))
    assert torch.equal(knn[..., 0], torch.arange(32).expand(3, -1))
    assert geometry.knn(8) is knn and geometry.computations == 2  # the normalised centres and one kNN graph
    for factor in (1e-30, 1e30):
        scaled = TokenGeometry(centers * factor + 5 * factor)
        assert torch.isfinite(scaled.normalized_centers()).all()
        assert torch.equal(scaled.knn(8), knn)
    # coincident centres: no scale to divide by, all at the origin
    assert torch.equal(TokenGeometry(torch.full((1, 8, 3), 0.3)).normalized_centers(), torch.zeros(1, 8, 3))


# --------------------------------------------------------------------------- gather


def test_gather_points_shapes_values_and_grad():
    torch.manual_seed(1)
    values = torch.randn(3, 20, 5, requires_grad=True)
    idx = torch.randint(0, 20, (3, 4, 6))
    out = gather_points(values, idx)
    assert out.shape == (3, 4, 6, 5)
    expected = torch.stack([values[b][idx[b]] for b in range(3)])
    assert torch.equal(out, expected)
    assert gather_points(values, idx[:, 0]).shape == (3, 6, 5)
    out.sum().backward()
    counts = torch.stack([torch.bincount(idx[b].flatten(), minlength=20) for b in range(3)]).float()
    assert torch.equal(values.grad, counts[..., None].expand(-1, -1, 5))


# --------------------------------------------------------------------------- Morton / Z-order


def test_z_order_hand_computed_official_keys():
    points = torch.tensor([[0.01, 0.02, 0.03], [-0.01, 0.0, 0.0], [0.005, -0.37, 1.0]], dtype=torch.float32)
    expected = [
        # *100 -> x=1, y=2, z=3: y bit1 -> 2^(3+2)=32; x bit0 -> 2^1=2; z bits0,1 -> 2^0+2^3=9. 32+2+9 = 43
        43,
        # x=-1 -> low 16 bits all ones -> sum_i 2^(3i+1) = 2*(8^16-1)/7 = 2*40210710958665
        80421421917330,
        # x=trunc(0.5)=0; y=-37 -> 65499 = 0xFFDB (all bits but 2 and 5) -> 4*((8^16-1)/7 - 8^2 - 8^5)
        #   = 4*40210710925833 = 160842843703332; z=100=0b1100100 -> 8^2+8^5+8^6 = 294976
        160842843703332 + 294976,
    ]
    keys = z_order_key(points)
    assert keys.dtype == torch.int64
    assert keys.tolist() == expected == [reference_z_order(p) for p in points.tolist()]


def test_z_order_axis_order_y_highest_then_x_then_z():
    unit = torch.eye(3) * 0.01  # one cell along x, y, z respectively
    assert z_order_key(unit).tolist() == [2, 4, 1]
    # Octant first: for |coord*100| < 2^15 the three top bits are the sign bits (y, x, z).
    signs = torch.tensor(list(itertools.product([1.0, -1.0], repeat=3)))
    keys = z_order_key(signs * torch.tensor([0.5, 1.2, 3.4]))
    octant = (signs[:, 1] < 0).long() * 4 + (signs[:, 0] < 0).long() * 2 + (signs[:, 2] < 0).long()
    assert torch.equal(keys >> 45, octant)


def test_z_order_matches_python_reference_and_batch_shapes():
    torch.manual_seed(2)
    points = torch.randn(2, 3, 7, 3) * 5
    keys = z_order_key(points)
    assert keys.shape == (2, 3, 7)
    assert keys.flatten().tolist() == [reference_z_order(p) for p in points.reshape(-1, 3).tolist()]
    assert torch.equal(curve_key(points[0]), keys[0])


# --------------------------------------------------------------------------- Hilbert


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_visits_every_cell_once_through_neighbours(depth):
    cells = full_grid(depth)
    keys = hilbert_key_from_cells(cells, depth)
    assert keys.dtype == torch.int64
    assert torch.equal(keys.sort().values, torch.arange(8**depth))
    path = cells[keys.argsort()]
    assert path[0].tolist() == [0, 0, 0]
    assert ((path[1:] - path[:-1]).abs().sum(-1) == 1).all()


def test_hilbert_max_depth_fits_int64():
    side = 1 << 21
    corners = torch.tensor(list(itertools.product([0, side - 1], repeat=3)))
    keys = hilbert_key_from_cells(corners, 21)
    assert int(keys.min()) == 0 and int(keys.max()) < 8**21 and len(set(keys.tolist())) == 8


def test_hilbert_key_is_per_sample_and_guards_zero_extent():
    torch.manual_seed(3)
    a, b = torch.randn(1, 50, 3), torch.randn(1, 50, 3) * 1000 + 77
    batched = hilbert_key(torch.cat([a, b]), depth=6)
    assert batched.shape == (2, 50) and batched.dtype == torch.int64
    assert torch.equal(batched[0], hilbert_key(a, depth=6)[0])
    assert torch.equal(batched[1], hilbert_key(b, depth=6)[0])
    assert batched.min() >= 0 and batched.max() < 8**6
    assert hilbert_key(torch.full((2, 5, 3), 4.2)).tolist() == [[0] * 5] * 2
    assert torch.equal(curve_key(a, "hilbert"), hilbert_key(a))


def test_hilbert_key_orders_grid_points_along_the_curve():
    # Points at the centres of a 4x4x4 grid quantise to their own cells.
    cells = full_grid(2)
    points = (cells.float() + 0.5)[None]
    assert torch.equal(hilbert_key(points, depth=2)[0], hilbert_key_from_cells(cells, 2))


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(4)
    points = torch.randn(4, 512, 3)
    cuda = points.cuda()
    assert torch.equal(farthest_point_sample(cuda, 64, skip_near_origin=True).cpu(), farthest_point_sample(points, 64, skip_near_origin=True))
    assert torch.equal(knn_indices(cuda[:, :32], cuda, 16).cpu(), knn_indices(points[:, :32], points, 16))
    for curve in ("z_order", "hilbert"):
        assert torch.equal(curve_key(cuda, curve).cpu(), curve_key(points, curve))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: farthest_point_sample(torch.randn(10, 3), 4), r"points must have shape \(B, N, 3\)"),
        (lambda: farthest_point_sample(torch.randn(2, 3, 10), 4), r"got \(2, 3, 10\).*transpose"),
        (lambda: farthest_point_sample(torch.randint(0, 5, (2, 10, 3)), 4), "floating-point"),
        (lambda: farthest_point_sample(torch.randn(2, 10, 3), 11), r"num_samples must be an int in \[1, N=10\]"),
        (lambda: farthest_point_sample(torch.randn(2, 10, 3), 0), "num_samples"),
        (lambda: knn_indices(torch.randn(2, 4, 3), torch.randn(2, 10, 3), 11), r"k must be an int in \[1, N=10\]"),
        (lambda: knn_indices(torch.randn(2, 4, 3), torch.randn(3, 10, 3), 2), "batch size"),
        (lambda: knn_indices(torch.randn(2, 4, 2), torch.randn(2, 10, 3), 2), r"query must have shape \(B, G, 3\)"),
        (lambda: gather_points(torch.randn(2, 10), torch.zeros(2, 3, dtype=torch.long)), r"\(B, N, C\)"),
        (lambda: gather_points(torch.randn(2, 10, 4), torch.zeros(3, 3, dtype=torch.long)), r"\(B=2, \.\.\.\)"),
        (lambda: gather_points(torch.randn(2, 10, 4), torch.zeros(2, 3, dtype=torch.int32)), r"\.long\(\)"),
        (lambda: z_order_key(torch.randn(5, 2)), r"\(\.\.\., 3\)"),
        (lambda: z_order_key(torch.randn(5, 3), depth=22), r"depth must be an int in \[1, 21\].*int64"),
        (lambda: hilbert_key_from_cells(torch.zeros(4, 3, dtype=torch.long), 0), "depth"),
        (lambda: hilbert_key_from_cells(torch.zeros(4, 3), 2), "integer tensor"),
        (lambda: hilbert_key_from_cells(torch.full((4, 3), 4), 2), r"\[0, 4\), got values in \[4, 4\]"),
        (lambda: hilbert_key_from_cells(torch.full((4, 3), -1), 2), "clamp"),
        (lambda: hilbert_key(torch.randn(5, 3)), r"\(B, G, 3\)"),
        (lambda: hilbert_key(torch.randn(1, 5, 3), depth=30), "depth"),
        (lambda: curve_key(torch.randn(1, 5, 3), "peano"), r"unknown curve 'peano'; choose one of \['hilbert', 'z_order'\]"),
    ],
)
def test_bad_inputs_raise_helpful_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
