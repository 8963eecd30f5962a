"""Input checks shared across the package: point clouds (shape, dtype, finiteness, point count) and arguments."""

from typing import Iterable

import torch
from torch import Tensor

from pointgst.errors import PointCloudError, UnknownNameError


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_number(name: str, value: object, *, minimum: float | None = None, below: float | None = None,
                 hint: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (an int or a float, not a bool) with
    ``minimum <= value < below`` (either bound optional); ``hint`` ends the message."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (minimum is None or value >= minimum) and (below is None or value < below):
        return
    if minimum is not None and below is not None:
        what = f"a number in [{minimum:g}, {below:g})"
    elif minimum is not None:
        what = f"a number >= {minimum:g}"
    else:
        what = "a number" if below is None else f"a number < {below:g}"
    raise ValueError(f"{name} must be {what}, got {value!r}{hint}")


def check_bool(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise :class:`UnknownNameError` (a ``ValueError``) naming the valid choices unless ``value`` is one."""
    choices = tuple(choices)
    if value not in choices:
        raise UnknownNameError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def check_point_cloud(points: Tensor, *, min_points: int = 1, name: str = "points") -> None:
    """Raise :class:`PointCloudError` unless ``points`` is a finite float tensor ``(B, N, 3)``
    with ``N >= min_points``."""
    if not isinstance(points, Tensor):
        raise PointCloudError(f"{name} must be a torch.Tensor of shape (B, N, 3), got {type(points).__name__}; "
                              "convert with torch.as_tensor(array, dtype=torch.float32)")
    if points.dim() != 3:
        hint = " (add a batch dimension with points.unsqueeze(0))" if points.dim() == 2 else ""
        raise PointCloudError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}{hint}")
    if points.shape[-1] != 3:
        hint = " (pass xyz only, e.g. points[..., :3])" if points.shape[-1] > 3 else ""
        raise PointCloudError(f"{name} must have 3 coordinates in the last dimension, got shape "
                              f"{tuple(points.shape)}{hint}")
    if not points.is_floating_point():
        raise PointCloudError(f"{name} must be a floating-point tensor, got {points.dtype}; use points.float()")
    if points.shape[1] < min_points:
        raise PointCloudError(f"{name} has {points.shape[1]} points per cloud but this model needs at least "
                              f"{min_points} (num_group and group_size); resample the clouds to more points or "
                              "create the backbone with a smaller num_group / group_size")
    if not torch.isfinite(points).all():
        bad = (~torch.isfinite(points)).any(dim=-1).any(dim=-1).nonzero().flatten().tolist()
        raise PointCloudError(f"{name} contains NaN or inf values (batch items {bad[:8]}); clean or drop those "
                              "clouds before the forward pass")


def model_input(points: Tensor, *, min_points: int, dtype: torch.dtype, training: bool) -> Tensor:
    """``points`` checked for a model (:func:`check_point_cloud`, a non-empty batch, at least 2 clouds in training
    mode: a BatchNorm normalises over the batch) and cast to the model's floating dtype."""
    check_point_cloud(points, min_points=min_points)
    if points.shape[0] == 0:
        raise PointCloudError("points is an empty batch (B=0); pass at least one cloud")
    if training and points.shape[0] < 2:
        raise PointCloudError("training mode needs at least 2 clouds per batch (a BatchNorm normalises over the "
                              "batch); use a batch size >= 2, or call model.eval() for inference")
    return points.to(dtype)
