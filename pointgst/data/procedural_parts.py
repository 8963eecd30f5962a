"""A procedural ShapeNetPart in the official ``normal`` layout (:func:`write_procedural_shapenetpart`): each of the
16 categories is a fixed arrangement of its parts in the real part order (Table: desktop 47, legs 48, stretchers 49)
built from boxes, tubes and cones, ellipsoids and torus arcs, with random proportions, jittered positions and a turn
about the up axis (y). Points lie on the surfaces (with their normals); each part gets at least a quarter of an equal
share of the points, so every part occurs in every shape."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pointgst.data.readers import DatasetError
from pointgst.data.shapenetpart import (
    SHAPENETPART_CATEGORIES,
    SHAPENETPART_PART_COUNTS,
    SHAPENETPART_PART_OFFSETS,
    SHAPENETPART_SYNSETS,
    category_index,
)

__all__ = ["write_procedural_shapenetpart"]

Primitive = tuple[int, float, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]]


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


_ALONG = {"x": _rot("z", -math.pi / 2), "y": np.eye(3), "z": _rot("x", math.pi / 2)}  # turns local y onto the axis


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _placed(part: int, area: float, local: Callable, centre, rot: np.ndarray | None) -> Primitive:
    """(part, area, sample(rng, n)): ``local``'s points and normals, turned by ``rot``, moved to a jittered centre."""
    rot = np.eye(3) if rot is None else rot

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        points, normals = local(rng, n)
        return points @ rot.T + np.asarray(centre) + rng.normal(0, 0.02, 3), normals @ rot.T
    return part, float(area), sample


def _box(part: int, centre, size, rot: np.ndarray | None = None) -> Primitive:
    """A box of full extents ``size``."""
    size = np.asarray(size, dtype=float)
    area = np.repeat([size[1] * size[2], size[0] * size[2], size[0] * size[1]], 2)

    def local(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        face = rng.choice(6, n, p=area / area.sum())
        axis, sign, rows = face // 2, np.where(face % 2, 1.0, -1.0), np.arange(n)
        points, normals = (rng.random((n, 3)) - 0.5) * size, np.zeros((n, 3))
        points[rows, axis], normals[rows, axis] = sign * size[axis] / 2, sign
        return points, normals
    return _placed(part, area.sum(), local, centre, rot)


def _tube(part: int, centre, length: float, r0: float, r1: float | None = None, axis: str = "y",
          rot: np.ndarray | None = None) -> Primitive:
    """A closed frustum along ``axis``: radius ``r0`` at the back end, ``r1`` (``None``: ``r0``; 0: a cone) in front."""
    r1 = r0 if r1 is None else r1
    area = np.array([math.pi * (r0 + r1) * math.hypot(length, r0 - r1), math.pi * r0**2, math.pi * r1**2])

    def local(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:  # along y
        which, u, theta = rng.choice(3, n, p=area / area.sum()), rng.random(n), rng.uniform(0, math.tau, n)
        t = u if r0 == r1 else (np.sqrt(r0**2 + u * (r1**2 - r0**2)) - r0) / (r1 - r0)  # density along y ~ radius
        radius = np.where(which == 0, r0 + (r1 - r0) * t, np.sqrt(u) * np.where(which == 1, r0, r1))
        y = np.where(which == 0, t - 0.5, np.where(which == 1, -0.5, 0.5)) * length
        side = _unit(np.stack([np.cos(theta), np.full(n, (r0 - r1) / length), np.sin(theta)], axis=1))
        cap = np.stack([np.zeros(n), np.where(which == 1, -1.0, 1.0), np.zeros(n)], axis=1)
        points = np.stack([radius * np.cos(theta), y, radius * np.sin(theta)], axis=1)
        return points, np.where((which == 0)[:, None], side, cap)
    return _placed(part, area.sum(), local, centre, _ALONG[axis] if rot is None else rot @ _ALONG[axis])


def _blob(part: int, centre, radii, upper: bool = False) -> Primitive:
    """An ellipsoid of semi-axes ``radii`` (``upper``: only its ``y >= 0`` half, a dome)."""
    a, b, c = radii
    area = 4 * math.pi * (((a * b) ** 1.6 + (a * c) ** 1.6 + (b * c) ** 1.6) / 3) ** (1 / 1.6)  # Thomsen's formula

    def local(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = _unit(rng.normal(size=(n, 3)))
        d[:, 1] = np.abs(d[:, 1]) if upper else d[:, 1]
        return d * radii, _unit(d / np.asarray(radii))
    return _placed(part, area / 2 if upper else area, local, centre, None)


def _ring(part: int, centre, major: float, minor: float, arc: tuple = (0.0, math.tau), rot: np.ndarray | None = None
          ) -> Primitive:
    """The arc ``arc`` (angles in the xy plane, from +x towards +y) of a torus around the z axis."""
    def local(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        phi, theta = rng.uniform(*arc, n), rng.uniform(0, math.tau, n)
        ring = np.stack([np.cos(phi), np.sin(phi), np.zeros(n)], axis=1)
        normals = np.cos(theta)[:, None] * ring + np.sin(theta)[:, None] * np.array([0.0, 0.0, 1.0])
        return major * ring + minor * normals, normals
    return _placed(part, math.tau * minor * major * (arc[1] - arc[0]), local, centre, rot)


def _corners(a: float, b: float) -> list[tuple[float, float]]:
    return [(x, z) for x in (-a, a) for z in (-b, b)]


def _airplane(u) -> list[Primitive]:  # body, wing, tail, engine
    length, r, span, chord, wing = u(1.6, 2.0), u(0.08, 0.12), u(1.4, 1.9), u(0.25, 0.4), u(-0.1, 0.15)
    tail = -length / 2 + 0.12
    return [_tube(0, (0, 0, 0), length, r * u(0.4, 0.7), r, axis="x"),
            _box(1, (wing, -0.3 * r, 0), (chord, 0.03, span)),
            _box(2, (tail, r + 0.14, 0), (0.2, 0.28, 0.03)), _box(2, (tail, 0.4 * r, 0), (0.15, 0.02, span * 0.35)),
            *[_tube(3, (wing + 0.05, -r - 0.07, z), u(0.3, 0.4), u(0.05, 0.07), axis="x")
              for z in (-span / 4, span / 4)]]


def _bag(u) -> list[Primitive]:  # handle, body
    w, h, d = u(0.7, 1.0), u(0.5, 0.8), u(0.2, 0.35)
    return [_ring(0, (0, h / 2, 0), w * u(0.2, 0.35), 0.025, (0.0, math.pi)), _box(1, (0, 0, 0), (w, h, d))]


def _cap(u) -> list[Primitive]:  # panels, peak
    r, peak = u(0.45, 0.55), u(0.3, 0.45)
    return [_blob(0, (0, 0, 0), (r, r * u(0.6, 0.9), r), upper=True),
            _box(1, (r + peak / 2 - 0.05, 0.01, 0), (peak, 0.02, r * u(1.2, 1.6)))]


def _car(u) -> list[Primitive]:  # roof, hood, wheels, body
    length, width, height, wheel, roof = u(1.8, 2.2), u(0.8, 1.0), u(0.3, 0.4), u(0.16, 0.22), u(0.25, 0.35)
    return [_box(0, (-u(0.0, 0.2), wheel + height + roof / 2, 0), (length * u(0.4, 0.55), roof, width * 0.85)),
            _box(1, (length * 0.35, wheel + height + 0.02, 0), (length * u(0.2, 0.3), 0.04, width * 0.9)),
            *[_tube(2, (x, wheel, z), 0.12, wheel, axis="z") for x, z in _corners(length * 0.32, width / 2)],
            _box(3, (0, wheel + height / 2, 0), (length, height, width))]


def _chair(u) -> list[Primitive]:  # back, seat, leg, arm
    d, w, seat, back, leg = u(0.8, 1.0), u(0.8, 1.0), u(0.8, 1.0), u(0.8, 1.1), u(0.03, 0.045)
    return [_box(0, (-d / 2, seat + back / 2, 0), (0.07, back, w)), _box(1, (0, seat, 0), (d, 0.07, w)),
            *[_tube(2, (x, seat / 2, z), seat, leg) for x, z in _corners(d / 2 - 0.06, w / 2 - 0.06)],
            *[_box(3, (0, seat + u(0.22, 0.3), z), (d * 0.85, 0.05, 0.07)) for z in (-w / 2, w / 2)]]


def _earphone(u) -> list[Primitive]:  # earcup, headband, data wire
    r, cup, wire = u(0.4, 0.55), u(0.15, 0.22), u(0.5, 0.8)
    return [*[_tube(0, (x, 0, 0), u(0.1, 0.14), cup, axis="x") for x in (-r, r)],
            _ring(1, (0, 0, 0), r, 0.03, (0.0, math.pi)), _tube(2, (r, -cup - wire / 2, 0), wire, 0.015)]


def _guitar(u) -> list[Primitive]:  # head, neck, body
    lower, neck = u(0.38, 0.48), u(0.8, 1.0)
    return [_box(0, (0, 0.3 + neck, 0), (u(0.12, 0.16), u(0.2, 0.26), 0.04)),
            _box(1, (0, 0.2 + neck / 2, 0), (0.08, neck, 0.04)),
            _blob(2, (0, -0.45, 0), (lower, lower * u(1.0, 1.2), 0.1)),
            _blob(2, (0, 0, 0), (lower * 0.75, lower * 0.8, 0.1))]


def _knife(u) -> list[Primitive]:  # blade, handle
    blade, handle = u(0.8, 1.1), u(0.4, 0.6)
    return [_box(0, (0, blade / 2, 0), (u(0.12, 0.2), blade, 0.015)),
            _box(1, (0, -handle / 2, 0), (u(0.09, 0.12), handle, u(0.05, 0.07)))]


def _lamp(u) -> list[Primitive]:  # base, lampshade, canopy, tube
    height, shade = u(1.2, 1.6), u(0.35, 0.5)
    return [_tube(0, (0, 0.03, 0), 0.06, u(0.25, 0.35)),
            _tube(1, (0, height + 0.05 + shade / 2, 0), shade, u(0.3, 0.45), u(0.12, 0.22)),
            _blob(2, (0, height, 0), (0.08, 0.05, 0.08)), _tube(3, (0, height / 2, 0), height, 0.025)]


def _laptop(u) -> list[Primitive]:  # keyboard, screen
    d, w, screen, tilt = u(0.6, 0.8), u(0.9, 1.2), u(0.55, 0.75), _rot("z", math.radians(u(5, 35)))  # leans to -x
    return [_box(0, (0, 0.02, 0), (d, 0.04, w)),
            _box(1, np.array([-d / 2, 0.04, 0]) + tilt @ np.array([0, screen / 2, 0]), (0.02, screen, w), tilt)]


def _motorbike(u) -> list[Primitive]:  # gas tank, seat, wheel, handle, light, frame
    wheel, base = u(0.28, 0.35), u(1.2, 1.5)
    return [_blob(0, (base * 0.12, wheel + 0.33, 0), (u(0.2, 0.28), 0.11, 0.14)),
            _box(1, (-base * 0.22, wheel + 0.3, 0), (u(0.4, 0.5), 0.06, 0.22)),
            *[_ring(2, (x, wheel, 0), wheel, 0.06) for x in (-base / 2, base / 2)],
            _tube(3, (base / 2 - 0.22, wheel + 0.62, 0), u(0.5, 0.7), 0.02, axis="z"),
            _blob(4, (base / 2 - 0.08, wheel + 0.48, 0), (0.06, 0.06, 0.06)),
            _box(5, (0, wheel + 0.12, 0), (base * 0.75, 0.12, 0.1)),
            _tube(5, (base / 2 - 0.1, wheel + 0.3, 0), 0.6, 0.03, rot=_rot("z", 0.35))]


def _mug(u) -> list[Primitive]:  # handle, body
    r, h = u(0.25, 0.35), u(0.6, 0.9)
    return [_ring(0, (r, h / 2, 0), u(0.15, 0.22), 0.03, (-math.pi / 2, math.pi / 2)), _tube(1, (0, h / 2, 0), h, r)]


def _pistol(u) -> list[Primitive]:  # barrel, handle, trigger and guard
    barrel = u(0.8, 1.0)
    return [_box(0, (0, 0, 0), (barrel, 0.18, 0.08)),
            _box(1, (-barrel / 2 + 0.15, -0.3, 0), (0.16, u(0.4, 0.5), 0.08), _rot("z", u(0.2, 0.35))),
            _ring(2, (-barrel / 2 + 0.4, -0.13, 0), 0.08, 0.015, (math.pi, math.tau)),
            _box(2, (-barrel / 2 + 0.4, -0.15, 0), (0.03, 0.08, 0.03))]


def _rocket(u) -> list[Primitive]:  # body, fin, nose
    length, r, nose, width, height, turn = u(1.2, 1.6), u(0.1, 0.15), u(0.25, 0.4), u(0.12, 0.2), u(0.25, 0.35), u(0, 1)
    return [_tube(0, (0, 0, 0), length, r),
            *[_box(1, rot @ np.array([r + width / 2, (height - length) / 2, 0]), (width, height, 0.02), rot)
              for rot in [_rot("y", math.tau * (turn + k) / 4) for k in range(4)]],
            _tube(2, (0, (length + nose) / 2, 0), nose, r, 0.0)]


def _skateboard(u) -> list[Primitive]:  # wheel, deck, belt for foot
    length, width, across = u(1.4, 1.7), u(0.35, 0.45), _rot("y", math.pi / 2)
    return [*[_tube(0, (x, 0.05, z), 0.06, 0.05, axis="z") for x, z in _corners(length * 0.35, width * 0.4)],
            _box(1, (0, 0.15, 0), (length, 0.04, width)),
            *[_ring(2, (x * length * u(0.15, 0.25), 0.17, 0), width * 0.4, 0.015, (0.0, math.pi), across)
              for x in (-1, 1)]]


def _table(u) -> list[Primitive]:  # desktop, leg, support
    length, width, height, leg = u(1.2, 1.8), u(0.7, 1.0), u(0.6, 0.8), u(0.05, 0.08)
    x, z, low = length / 2 - 0.06, width / 2 - 0.06, height * u(0.2, 0.35)
    return [_box(0, (0, height, 0), (length, 0.06, width)),
            *[_box(1, (a, height / 2, b), (leg, height, leg)) for a, b in _corners(x, z)],
            *[_box(2, (a, low, 0), (0.03, 0.04, 2 * z)) for a in (-x, x)],
            *[_box(2, (0, low, b), (2 * x, 0.04, 0.03)) for b in (-z, z)]]


#: one recipe per category, parts in the real order; u(a, b) draws a proportion. x: front, y: up, z: side.
_RECIPES = (_airplane, _bag, _cap, _car, _chair, _earphone, _guitar, _knife, _lamp, _laptop, _motorbike, _mug,
            _pistol, _rocket, _skateboard, _table)


def _split_counts(n: int, weights: np.ndarray) -> np.ndarray:
    """``n`` split in proportion to ``weights`` (largest remainders), int ``(len(weights),)``."""
    raw = n * np.asarray(weights, dtype=float) / np.sum(weights)
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw, kind="stable")[: n - counts.sum()]] += 1
    return counts


def _sample_shape(category: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """One shape of ``category``: rows ``x y z nx ny nz part`` ``(n, 7)``, part = global part id, y up."""
    prims, k = _RECIPES[category](lambda a, b: rng.uniform(a, b)), SHAPENETPART_PART_COUNTS[category]
    owner, areas = np.array([p[0] for p in prims]), np.array([p[1] for p in prims])
    share = np.array([areas[owner == part].sum() for part in range(k)]) / areas.sum()
    rows = []
    for part, count in enumerate(_split_counts(n, np.maximum(share, 0.25 / k))):
        mine = np.flatnonzero(owner == part)
        for index, m in zip(mine, _split_counts(count, areas[mine])):
            points, normals = prims[index][2](rng, m)
            rows.append(np.hstack([points, normals, np.full((m, 1), SHAPENETPART_PART_OFFSETS[category] + part)]))
    table, turn = np.concatenate(rows)[rng.permutation(n)], _rot("y", rng.uniform(0, math.tau))
    table[:, :3] = table[:, :3] @ turn.T + rng.normal(0, 0.003, (n, 3))
    table[:, 3:6] = table[:, 3:6] @ turn.T
    return table


def write_procedural_shapenetpart(root: str | os.PathLike, *, shapes_per_category: int = 40,
                                  points_per_shape: int = 2048, seed: int = 0,
                                  categories: list[int | str] | None = None) -> Path:
    """Write a procedural part-segmentation dataset in the ShapeNetPart ``normal`` layout under ``root``: files
    ``synsetoffset2category.txt`` (all 16 categories, so the category indices are the real ones),
    ``<synset>/<id>.txt`` (``points_per_shape`` rows ``x y z nx ny nz label``, label the global part id) and
    ``train_test_split/shuffled_{train,val,test}_file_list.json`` (per category of ``n`` shapes, the last
    ``round(0.2 * n)`` are test, the ``round(0.1 * n)`` before them val, the others train). Shape ``i`` of a category
    depends only on ``(seed, category, i)``, whatever ``categories`` (indices, names or synsets; ``None``: all 16)
    holds. ``root`` must be new or empty. Returns ``root``."""
    for name, value, least in (("shapes_per_category", shapes_per_category, 1),
                               ("points_per_shape", points_per_shape, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise DatasetError(f"{name} must be an int >= {least}, got {value!r}")
    n_val, n_test = round(0.1 * shapes_per_category), round(0.2 * shapes_per_category)  # >= 1 train shape left
    splits = ["train"] * (shapes_per_category - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    chosen = sorted({category_index(c) for c in (range(len(_RECIPES)) if categories is None else categories)})
    root = Path(os.path.expanduser(str(root)))
    if root.exists() and any(root.iterdir()):  # never write over what someone else put there
        raise DatasetError(f"{root} exists and is not empty; write the procedural dataset into a new folder")
    (root / "train_test_split").mkdir(parents=True, exist_ok=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{synset}\n" for name, synset in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_SYNSETS)))
    lists, row_format = {"train": [], "val": [], "test": []}, "%.6f %.6f %.6f %.6f %.6f %.6f %.6f\n" * points_per_shape
    for category in chosen:
        synset = SHAPENETPART_SYNSETS[category]
        (root / synset).mkdir(exist_ok=True)
        for i in range(shapes_per_category):
            shape_id = f"procedural{category:02d}{i:05d}"
            table = _sample_shape(category, points_per_shape, np.random.default_rng([seed, category, i]))
            (root / synset / f"{shape_id}.txt").write_text(row_format % tuple(table.ravel().tolist()))
            lists[splits[i]].append(f"shape_data/{synset}/{shape_id}")
    order = np.random.default_rng([seed, len(_RECIPES)])
    for split, names in lists.items():
        shuffled = json.dumps([names[j] for j in order.permutation(len(names))])
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(shuffled)
    return root
