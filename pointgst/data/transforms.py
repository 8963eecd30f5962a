"""Batched point-cloud transforms of the official training and evaluation pipelines.

All functions take ``points`` ``(B, N, 3)`` (any float dtype, any device) and return a new tensor of the same
dtype and device; nothing loops over the batch. Randomness comes from an explicit ``torch.Generator`` (``None``
= torch's global generator); random numbers are drawn on the generator's device in float64 and then moved to the
points' device and dtype, so a seeded CPU generator gives the same draws for CPU and CUDA tensors of any dtype.

Official training input (``runner_finetune.py``; docs/official.md §4.4)::

    points = fps_then_random_subset(points, npoints, point_all, generator)   # FPS to point_all, shared subset
    points = augment(points, "scale_translate", generator)                  # or "rotate_y" (ACT/ReCon on ScanObjectNN)

Evaluation input: ``fps_resample(points, npoints)``. One voting pass: ``fps_resample`` to ``point_all`` once, then
per view ``random_subset`` + ``scale_and_translate``, averaging the logits of the views.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pointgst.ops import _check_xyz, farthest_point_sample, gather_points

__all__ = [
    "AUGMENTATIONS",
    "OFFICIAL_POINT_ALL",
    "official_point_all",
    "scale_and_shift",
    "scale_and_translate",
    "rotate_up",
    "random_subset",
    "fps_resample",
    "fps_then_random_subset",
    "normalize_unit_sphere",
    "augment",
]

#: ``point_all`` of the official runner: the FPS size before the random ``npoints`` subset.
OFFICIAL_POINT_ALL = {1024: 1200, 2048: 2400, 4096: 4800, 8192: 8192}


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None,
             like: Tensor) -> Tensor:
    """U[low, high) of ``shape``, drawn in float64 on the generator's device, returned on ``like``'s device/dtype."""
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


def official_point_all(npoints: int, num_points: int) -> int:
    """The official ``point_all`` for ``npoints`` (1024 -> 1200, 2048 -> 2400, 4096 -> 4800, 8192 -> 8192; other
    sizes -> ``npoints``), capped at the cloud size ``num_points``."""
    return min(OFFICIAL_POINT_ALL.get(npoints, npoints), num_points)


def scale_and_translate(points: Tensor, generator: torch.Generator | None = None,
                        scale: tuple[float, float] = (2.0 / 3.0, 3.0 / 2.0), translate: float = 0.2) -> Tensor:
    """Official ``PointcloudScaleAndTranslate``: ``p * s + t`` per sample, ``s ~ U(scale)^3``,
    ``t ~ U(-translate, translate)^3`` (anisotropic). ``(B, N, 3) -> (B, N, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    batch = points.shape[0]
    s = _uniform((batch, 1, 3), scale[0], scale[1], generator, points)
    t = _uniform((batch, 1, 3), -translate, translate, generator, points)
    return points * s + t


def scale_and_shift(points: Tensor, generator: torch.Generator | None = None,
                    scale: tuple[float, float] = (0.8, 1.25), shift: float = 0.1) -> Tensor:
    """The official part-segmentation augmentation: ``p * s + t`` per sample, one ``s ~ U(scale)`` for the three axes
    (isotropic), ``t ~ U(-shift, shift)^3``. ``(B, N, 3) -> (B, N, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    batch = points.shape[0]
    s = _uniform((batch, 1, 1), scale[0], scale[1], generator, points)
    t = _uniform((batch, 1, 3), -shift, shift, generator, points)
    return points * s + t


def rotate_up(points: Tensor, generator: torch.Generator | None = None, axis: int = 1) -> Tensor:
    """Official ``PointcloudRotate`` (ACT/ReCon on ScanObjectNN): per sample a rotation about ``axis`` (1 = y)
    by an angle ``U[0, 2*pi)``, applied as ``points @ R`` with, for y, ``R = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``.
    Norms and the ``axis`` coordinate are preserved. ``(B, N, 3) -> (B, N, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (x, y, z), got {axis!r}")
    angle = _uniform((points.shape[0],), 0.0, 2.0 * math.pi, generator, torch.empty(0, dtype=torch.float64))
    cos, sin = angle.cos(), angle.sin()
    i, j = (axis + 1) % 3, (axis + 2) % 3  # for y: i = z, j = x
    rotation = torch.zeros(points.shape[0], 3, 3, dtype=torch.float64)
    rotation[:, axis, axis] = 1.0
    rotation[:, i, i] = cos
    rotation[:, j, j] = cos
    rotation[:, j, i] = sin
    rotation[:, i, j] = -sin
    return torch.bmm(points, rotation.to(device=points.device, dtype=points.dtype))


def random_subset(points: Tensor, npoints: int, generator: torch.Generator | None = None) -> Tensor:
    """``npoints`` columns drawn without replacement, ONE index set shared by the whole batch (official
    ``np.random.choice(point_all, npoints, False)``). ``(B, M, 3) -> (B, npoints, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    if not isinstance(npoints, int) or not 1 <= npoints <= points.shape[1]:
        raise ValueError(f"npoints must be an int in [1, {points.shape[1]}], got {npoints!r}")
    return points[:, _randperm(points.shape[1], generator, points.device)[:npoints]]


def fps_resample(points: Tensor, npoints: int, *, skip_near_origin: bool = False) -> Tensor:
    """Deterministic evaluation input: farthest point sampling of ``npoints`` from index 0 (official
    ``misc.fps``). ``skip_near_origin`` reproduces the CUDA kernel's skip of points with ``|p|^2 <= 1e-3``.
    ``(B, N, 3) -> (B, npoints, 3)``.

    Sampling all ``N`` points (the 1024-point ModelNet pack, ScanObjectNN) only re-orders each cloud, keeping its
    first point first; the clouds are then returned as they are: the models group by FPS from the first point and
    pool within groups, so they see the same input (exactly equidistant points aside, which the reorder could swap)."""
    if npoints == points.shape[1] and not skip_near_origin:
        _check_xyz(points, "points", "(B, N, 3)")
        return points
    return gather_points(points, farthest_point_sample(points, npoints, skip_near_origin=skip_near_origin))


def fps_then_random_subset(points: Tensor, npoints: int, point_all: int | None = None,
                           generator: torch.Generator | None = None, *, skip_near_origin: bool = False) -> Tensor:
    """Official training input: FPS (from index 0) to ``min(point_all, N)`` points, then one random subset of
    ``npoints`` of those columns shared by the batch. ``point_all=None`` uses :func:`official_point_all`.
    With ``point_all >= N`` (ScanObjectNN 2048, the 1024-point ModelNet pack) the FPS only re-orders each cloud
    before a uniformly random subset: it is skipped, which leaves the distribution of the result unchanged (the
    draws differ from pointgst 0.1.0's, which ran the FPS). ``(B, N, 3) -> (B, npoints, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    n = points.shape[1]
    point_all = official_point_all(npoints, n) if point_all is None else min(int(point_all), n)
    if not isinstance(npoints, int) or not 1 <= npoints <= point_all:
        raise ValueError(f"npoints must be an int in [1, min(point_all, N) = {point_all}], got {npoints!r}; "
                         "the clouds must hold at least npoints points")
    if point_all == n and not skip_near_origin:
        return random_subset(points, npoints, generator)
    return random_subset(fps_resample(points, point_all, skip_near_origin=skip_near_origin), npoints, generator)


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Per sample: centroid to the origin, largest point norm 1 (``pc_normalize``). ``(B, N, 3) -> (B, N, 3)``."""
    _check_xyz(points, "points", "(B, N, 3)")
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=2).amax(dim=1).clamp_min(torch.finfo(points.dtype).tiny)
    return centred / radius[:, None, None]


AUGMENTATIONS = ("scale_translate", "scale_shift", "rotate_y", "none")


def augment(points: Tensor, name: str, generator: torch.Generator | None = None) -> Tensor:
    """Training augmentation by name: ``scale_translate`` (:func:`scale_and_translate`; Point-MAE, PointGPT, all
    ModelNet recipes), ``scale_shift`` (:func:`scale_and_shift`; part segmentation), ``rotate_y`` (:func:`rotate_up`
    about y; ACT/ReCon on ScanObjectNN) or ``none``."""
    if name == "scale_translate":
        return scale_and_translate(points, generator)
    if name == "scale_shift":
        return scale_and_shift(points, generator)
    if name == "rotate_y":
        return rotate_up(points, generator, axis=1)
    if name == "none":
        _check_xyz(points, "points", "(B, N, 3)")
        return points
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
