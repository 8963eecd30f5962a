"""Tests for pointgst.data.transforms: exact properties of the official batched augmentations and samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pointgst.data.transforms import (
    AUGMENTATIONS,
    augment,
    fps_resample,
    fps_then_random_subset,
    normalize_unit_sphere,
    official_point_all,
    random_subset,
    rotate_up,
    scale_and_shift,
    scale_and_translate,
)
from pointgst.ops import farthest_point_sample, gather_points


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(6, 200, 3, generator=gen(1))


# ============================================================================ scale and translate


def test_scale_and_translate_ranges_and_per_sample_affine_form():
    b = 4000
    origin_and_ones = torch.stack([torch.zeros(b, 3), torch.ones(b, 3)], dim=1).double()  # p = 0: t; p = 1: s + t
    out = scale_and_translate(origin_and_ones, gen(0))
    t, s = out[:, 0], out[:, 1] - out[:, 0]
    assert t.min() >= -0.2 and t.max() < 0.2 and t.min() < -0.19 and t.max() > 0.19
    assert s.min() >= 2 / 3 - 1e-6 and s.max() < 1.5 + 1e-6 and s.min() < 0.68 and s.max() > 1.48
    assert (s[:, 0] != s[:, 1]).all() and (s[:, 1] != s[:, 2]).all()  # anisotropic
    assert len(torch.unique(s[:, 0])) == b  # one draw per sample


def test_scale_and_translate_exact_formula(batch):
    out = scale_and_translate(batch, gen(7), scale=(0.5, 2.0), translate=0.3)
    g = gen(7)
    s = 0.5 + 1.5 * torch.rand(6, 1, 3, generator=g, dtype=torch.float64)
    t = -0.3 + 0.6 * torch.rand(6, 1, 3, generator=g, dtype=torch.float64)
    assert torch.equal(out, batch * s.float() + t.float())
    assert torch.equal(out, scale_and_translate(batch, gen(7), scale=(0.5, 2.0), translate=0.3))
    assert not torch.equal(out, scale_and_translate(batch, gen(8), scale=(0.5, 2.0), translate=0.3))


def test_scale_and_translate_float64(batch):
    out64 = scale_and_translate(batch.double(), gen(3))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), scale_and_translate(batch, gen(3)))


# ============================================================================ rotation about the up axis


def test_rotate_up_preserves_norms_and_the_up_coordinate(batch):
    out = rotate_up(batch, gen(0))
    assert torch.equal(out[..., 1], batch[..., 1])
    torch.testing.assert_close(out.norm(dim=-1), batch.norm(dim=-1))
    assert not torch.allclose(out, batch)
    z = rotate_up(batch, gen(0), axis=2)
    assert torch.equal(z[..., 2], batch[..., 2])


def test_rotate_up_is_the_official_matrix_applied_as_pc_at_r():
    b = 2000
    unit = torch.eye(3).expand(b, 3, 3).contiguous()  # rows e_x, e_y, e_z: pc @ R returns the rows of R
    out = rotate_up(unit.double(), gen(5))
    angle = 2 * math.pi * torch.rand(b, generator=gen(5), dtype=torch.float64)
    c, s = angle.cos(), angle.sin()
    zero, one = torch.zeros(b, dtype=torch.float64), torch.ones(b, dtype=torch.float64)
    expected = torch.stack([torch.stack([c, zero, s], -1), torch.stack([zero, one, zero], -1),
                            torch.stack([-s, zero, c], -1)], dim=1)  # [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    assert torch.equal(out, expected)
    assert angle.min() >= 0 and angle.max() < 2 * math.pi and angle.min() < 0.01 and angle.max() > 2 * math.pi - 0.01
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        rotate_up(unit, gen(0), axis=3)


def test_rotate_up_dtype_and_determinism(batch):
    out = rotate_up(batch, gen(2))
    assert out.dtype == torch.float32 and torch.equal(out, rotate_up(batch, gen(2)))
    out64 = rotate_up(batch.double(), gen(2))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out)


# ============================================================================ FPS and random subsets


def test_random_subset_shares_one_index_set_without_replacement():
    b, n = 5, 64
    ids = torch.arange(n, dtype=torch.float32)
    points = (ids[None, :, None] + 1000 * torch.arange(b)[:, None, None]).expand(b, n, 3).contiguous()
    out = random_subset(points, 40, gen(0))
    columns = out[..., 0] - 1000 * torch.arange(b)[:, None]
    assert (columns == columns[0]).all()  # the same columns in every sample
    assert len(torch.unique(columns[0])) == 40
    assert torch.equal(columns[0].long(), torch.randperm(n, generator=gen(0))[:40])
    with pytest.raises(ValueError, match="npoints must be an int in \\[1, 64\\]"):
        random_subset(points, 65, gen(0))


def test_fps_then_random_subset_matches_the_official_pipeline(batch):
    out = fps_then_random_subset(batch, 100, 150, gen(4))
    fps = gather_points(batch, farthest_point_sample(batch, 150))
    cols = torch.randperm(150, generator=gen(4))[:100]
    assert torch.equal(out, fps[:, cols])
    assert out.shape == (6, 100, 3) and torch.equal(out, fps_then_random_subset(batch, 100, 150, gen(4)))
    assert not torch.equal(out, fps_then_random_subset(batch, 100, 150, gen(5)))


def test_fps_then_random_subset_point_all_is_capped_and_defaults_to_the_official_table():
    assert [official_point_all(n, 10_000) for n in (1024, 2048, 4096, 8192, 512)] == [1200, 2400, 4800, 8192, 512]
    assert official_point_all(2048, 2048) == 2048 and official_point_all(1024, 1024) == 1024
    clouds = torch.randn(2, 1300, 3, generator=gen(0))
    assert torch.equal(fps_then_random_subset(clouds, 1024, None, gen(1)),
                       fps_then_random_subset(clouds, 1024, 1200, gen(1)))
    small = torch.randn(3, 96, 3, generator=gen(0))
    out = fps_then_random_subset(small, 96, 5000, gen(2))  # point_all >= N: FPS only re-orders each cloud
    for cloud, view in zip(small, out):
        assert torch.equal(cloud[torch.argsort(cloud[:, 0])], view[torch.argsort(view[:, 0])])
    with pytest.raises(ValueError, match="npoints must be an int in \\[1, min\\(point_all, N\\) = 50\\]"):
        fps_then_random_subset(small, 60, 50, gen(0))


def test_fps_resample_and_dtypes(batch):
    out = fps_resample(batch, 32)
    assert torch.equal(out, gather_points(batch, farthest_point_sample(batch, 32)))
    assert torch.equal(out[:, 0], batch[:, 0])  # starts at stored index 0
    out64 = fps_resample(batch.double(), 32)
    assert out64.dtype == torch.float64 and torch.equal(out64.float(), out)
    sub64 = fps_then_random_subset(batch.double(), 20, 40, gen(0))
    assert sub64.dtype == torch.float64 and torch.equal(sub64.float(), fps_then_random_subset(batch, 20, 40, gen(0)))


def test_fps_skip_near_origin_is_passed_through():
    clouds = torch.randn(2, 64, 3, generator=gen(0)) * 3
    clouds[:, 5] = 0.0
    assert torch.equal(fps_resample(clouds, 64, skip_near_origin=False).sort(1).values, clouds.sort(1).values)
    skipped = fps_resample(clouds, 64, skip_near_origin=True)
    assert not (skipped == 0).all(-1).any()  # the origin point is never picked


# ============================================================================ normalisation and dispatch


def test_normalize_unit_sphere(batch):
    shifted = batch * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([5.0, -1.0, 0.5])
    for points in (shifted, shifted.double()):
        out = normalize_unit_sphere(points)
        assert out.dtype == points.dtype
        assert out.mean(1).abs().max() < 1e-6
        torch.testing.assert_close(out.norm(dim=-1).amax(1), torch.ones(6, dtype=points.dtype))
    for cloud, out in zip(shifted.numpy(), normalize_unit_sphere(shifted).numpy()):
        centred = cloud - cloud.mean(0)
        np.testing.assert_allclose(out, centred / np.linalg.norm(centred, axis=1).max(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(normalize_unit_sphere(torch.ones(1, 4, 3))).all()  # degenerate cloud: no NaN


def test_augment_dispatch(batch):
    assert AUGMENTATIONS == ("scale_translate", "scale_shift", "rotate_y", "none")
    assert torch.equal(augment(batch, "scale_translate", gen(1)), scale_and_translate(batch, gen(1)))
    assert torch.equal(augment(batch, "scale_shift", gen(1)), scale_and_shift(batch, gen(1)))
    assert torch.equal(augment(batch, "rotate_y", gen(1)), rotate_up(batch, gen(1), axis=1))
    assert augment(batch, "none", gen(1)) is batch
    with pytest.raises(ValueError, match="unknown augmentation 'jitter'; choose one of scale_translate, scale_shift, rotate_y"):
        augment(batch, "jitter", gen(1))


def test_transforms_reject_bad_layouts():
    for fn in (lambda p: scale_and_translate(p, gen(0)), lambda p: rotate_up(p, gen(0)), normalize_unit_sphere):
        with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
            fn(torch.zeros(2, 3, 16))
        with pytest.raises(ValueError, match="floating-point"):
            fn(torch.zeros(2, 16, 3, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_points_with_a_cpu_generator_match_cpu(batch):
    cuda = batch.cuda()
    for fn in (lambda p, g: scale_and_translate(p, g), lambda p, g: rotate_up(p, g),
               lambda p, g: fps_then_random_subset(p, 100, 150, g)):
        out = fn(cuda, gen(3))
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), fn(batch, gen(3)))


def test_an_fps_of_every_point_is_skipped_and_the_model_sees_the_same_input():
    """Sampling all N points only re-orders a cloud (first point kept first): the models' own FPS from the first point
    and pooling within groups give the same logits for the re-ordered and the stored cloud."""
    import numpy as np

    import pointgst
    from pointgst.demo import sample_data_folder
    from pointgst.ops import farthest_point_sample, gather_points

    clouds = torch.from_numpy(np.load(sample_data_folder() / "test.npz")["points"][:8])
    reordered = gather_points(clouds, farthest_point_sample(clouds, clouds.shape[1]))
    assert not torch.equal(reordered, clouds) and torch.equal(reordered[:, 0], clouds[:, 0])
    assert fps_resample(clouds, clouds.shape[1]) is clouds
    for arch in ("point_mae_tiny", "pointgpt_s"):
        torch.manual_seed(0)
        model = pointgst.wrap(arch, method="pcsa", num_classes=10).eval()
        with torch.no_grad():
            assert torch.equal(model(reordered), model(clouds)), arch
    subset = fps_then_random_subset(clouds, 512, 1024, torch.Generator().manual_seed(0))
    rows = {tuple(p) for p in clouds[0].tolist()}
    assert subset.shape == (8, 512, 3) and all(tuple(p) in rows for p in subset[0].tolist())


def test_scale_and_shift_is_the_official_segmentation_augmentation(batch):
    """One isotropic scale in [0.8, 1.25] and one shift in [-0.1, 0.1]^3 per cloud (docs/segmentation.md §3)."""
    out = scale_and_shift(batch, gen(3))
    for cloud, moved in zip(batch, out):
        centred, moved_centred = cloud - cloud.mean(0), moved - moved.mean(0)
        scale = (moved_centred.norm(dim=1) / centred.norm(dim=1)).mean()
        assert 0.8 <= scale <= 1.25 and torch.allclose(moved_centred, centred * scale, atol=1e-5)
        shift = moved.mean(0) - cloud.mean(0) * scale
        assert shift.abs().max() <= 0.1 + 1e-6
