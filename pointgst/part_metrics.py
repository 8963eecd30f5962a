"""Part-segmentation metrics as in the official ShapeNetPart evaluation: instance / class mIoU and point accuracy.

Follows Point-MAE ``segmentation/main.py`` (test loop): each point's prediction is the argmax of its logits over the
parts of its shape's category only; a shape's mIoU is the mean IoU over its category's parts, a part absent from both
prediction and ground truth counting IoU 1; the instance mIoU averages the shape mIoUs over all shapes, the class mIoU
averages the per-category means; the accuracy is the fraction of points whose restricted prediction is right.
One deliberate difference: a category without any evaluated shape is left out of the class mIoU (the official mean
over all categories would be NaN); on the full test set, where every category occurs, the two agree.

Part ids are global (0 .. P-1 over all categories); ``parts_of_category[c]`` lists category ``c``'s part ids, e.g.
``[[0, 1, 2, 3], [4, 5], ...]`` for the 16 ShapeNetPart categories and P = 50 parts.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["PartSegmentationMeter", "format_per_category", "restrict_to_category", "shape_part_ious"]


def _part_table(parts_of_category: Sequence[Sequence[int]]) -> Tensor:
    """``(C, K)`` int64 table of each category's part ids in the given order, padded with -1 to the largest category
    size ``K``."""
    if isinstance(parts_of_category, (str, bytes, Tensor)) or len(parts_of_category) == 0:
        raise ValueError("parts_of_category must be a non-empty list of part-id lists, e.g. [[0, 1, 2, 3], [4, 5]]")
    rows = []
    for c, parts in enumerate(parts_of_category):
        try:
            row = [operator.index(p) for p in parts]
        except TypeError:
            row = []
        if not row or min(row) < 0 or len(set(row)) != len(row):
            raise ValueError(f"parts_of_category[{c}] = {parts!r} must be a non-empty list of distinct non-negative "
                             "int part ids")
        rows.append(row)
    width = max(map(len, rows))
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.int64)


def _is_int(tensor: object) -> bool:
    """Whether ``tensor`` is a tensor of integer dtype (bool excluded)."""
    return (isinstance(tensor, Tensor) and not tensor.is_floating_point() and not tensor.is_complex()
            and tensor.dtype != torch.bool)


def _check_categories(categories: Tensor, batch: int, num_categories: int) -> None:
    """Raise ``ValueError`` unless ``categories`` is an integer tensor ``(batch,)`` with values in
    ``[0, num_categories)``."""
    if not _is_int(categories) or tuple(categories.shape) != (batch,):
        got = tuple(categories.shape) if isinstance(categories, Tensor) else type(categories).__name__
        raise ValueError(f"categories must be an integer tensor of shape (B,) = ({batch},), one category per shape, "
                         f"got {got}")
    if batch and (categories.min() < 0 or categories.max() >= num_categories):
        raise ValueError(f"categories must lie in [0, {num_categories}) (one per parts_of_category entry), got values "
                         f"in [{int(categories.min())}, {int(categories.max())}]")


def _check_in_category(name: str, labels: Tensor, parts: Tensor, categories: Tensor, hint: str) -> None:
    """Raise ``ValueError`` naming the first point of ``labels (B, N)`` whose part id is not one of its shape's
    category parts ``parts (B, K)`` (-1 padded)."""
    inside = (labels.unsqueeze(-1) == parts.unsqueeze(1)).any(-1)
    if not inside.all():
        b, n = (~inside).nonzero()[0].tolist()
        cat_parts = [p for p in parts[b].tolist() if p >= 0]
        raise ValueError(f"{name}[{b}, {n}] = {int(labels[b, n])} is not a part of category {int(categories[b])} "
                         f"(parts {cat_parts}); {hint}")


def _restrict(logits: Tensor, categories: Tensor, table: Tensor) -> Tensor:
    """:func:`restrict_to_category` with the part table from :func:`_part_table`."""
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor of shape (B, N, P), got {got}")
    _check_categories(categories, logits.shape[0], table.shape[0])
    if int(table.max()) >= logits.shape[2]:
        raise ValueError(f"logits have P = {logits.shape[2]} part scores but parts_of_category uses part id "
                         f"{int(table.max())}; pass scores for all {int(table.max()) + 1} global part ids")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN; check the model output (e.g. a diverged run) before evaluating")
    parts = table.to(logits.device)[categories]
    parts = torch.where(parts >= 0, parts, parts[:, :1])  # pad with the first part: on ties argmax keeps the first
    scores = logits.gather(2, parts.unsqueeze(1).expand(-1, logits.shape[1], -1))
    return parts.gather(1, scores.argmax(2))


def restrict_to_category(logits: Tensor, categories: Tensor, parts_of_category: Sequence[Sequence[int]]) -> Tensor:
    """Predicted global part ids ``(B, N)`` int64: for each shape ``b`` of category ``c = categories[b]``, the argmax
    of ``logits[b, n]`` over ``parts_of_category[c]`` only (ties go to the part listed first, as ``np.argmax`` over
    ``logits[:, parts]`` does in the official code).

    ``logits``: ``(B, N, P)`` floating point, P covering every part id; ``categories``: ``(B,)`` integer."""
    return _restrict(logits, categories, _part_table(parts_of_category))


def _part_ious(pred: Tensor, target: Tensor, parts: Tensor) -> Tensor:
    """IoU ``(B, K)`` float64 of each part ``parts (B, K)`` between ``pred (B, N)`` and ``target (B, N)``; a part
    in neither (including the -1 padding) has IoU 1."""
    in_pred = pred.unsqueeze(1) == parts.unsqueeze(2)
    in_target = target.unsqueeze(1) == parts.unsqueeze(2)
    inter = (in_pred & in_target).sum(2)
    union = (in_pred | in_target).sum(2)
    return torch.where(union > 0, inter.double() / union.clamp(min=1), 1.0)


def shape_part_ious(pred: Tensor, target: Tensor, parts: Sequence[int]) -> Tensor:
    """IoU ``(len(parts),)`` float64 of each part id in ``parts`` for one shape: ``|pred == p and target == p| /
    |pred == p or target == p|``, and 1 for a part absent from both.

    ``pred``, ``target``: ``(N,)`` integer part ids of the shape's points (other ids only enlarge the unions)."""
    if not (_is_int(pred) and _is_int(target)) or pred.dim() != 1 or pred.shape != target.shape:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (pred, target)]
        raise ValueError(f"pred and target must be integer tensors of the same shape (N,), got {shapes[0]} and "
                         f"{shapes[1]}")
    table = _part_table([parts]).to(pred.device)
    return _part_ious(pred.unsqueeze(0), target.unsqueeze(0), table)[0]


class PartSegmentationMeter:
    """Accumulates the official ShapeNetPart metrics over batches; :meth:`compute` gives the results.

    The accumulated state is a float64 tensor of sums, so meters combine by addition: :meth:`merge` another meter,
    or, in distributed evaluation, sum the states of all processes and load the total::

        state = meter.state().to(device)
        torch.distributed.all_reduce(state)  # default op: SUM
        meter.load_state(state)

    ``parts_of_category[c]``: the global part ids of category ``c``; ``category_names[c]``: its name."""

    def __init__(self, parts_of_category: Sequence[Sequence[int]], category_names: Sequence[str]) -> None:
        self._table = _part_table(parts_of_category)
        self._names = list(category_names)
        if len(self._names) != self._table.shape[0] or len(set(self._names)) != len(self._names):
            raise ValueError(f"category_names must hold {self._table.shape[0]} distinct names, one per "
                             f"parts_of_category entry, got {self._names!r}")
        self._num_parts = int(self._table.max()) + 1
        self._state = torch.zeros(2 * len(self._names) + 2, dtype=torch.float64)

    def update(self, scores: Tensor, targets: Tensor, categories: Tensor) -> None:
        """Add a batch of shapes.

        ``scores``: logits ``(B, N, P)`` (restricted with :func:`restrict_to_category`) or predicted global part ids
        ``(B, N)`` that already lie in each shape's category; ``targets``: ``(B, N)`` integer global part ids;
        ``categories``: ``(B,)`` integer category of each shape."""
        if not _is_int(targets) or targets.dim() != 2 or targets.shape[1] == 0:
            got = f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be an integer tensor of shape (B, N) with N >= 1, got {got}")
        if not isinstance(scores, Tensor) or scores.dim() not in (2, 3) or scores.shape[:2] != targets.shape:
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"scores must be logits (B, N, P) or predictions (B, N) matching targets "
                             f"{tuple(targets.shape)}, got {got}")
        if scores.dim() == 3:
            pred = _restrict(scores, categories, self._table)
        elif not _is_int(scores):
            raise ValueError(f"predictions (B, N) must be integer part ids, got {scores.dtype}; pass logits "
                             "(B, N, P) to have them restricted to each shape's category")
        else:
            pred = scores
            _check_categories(categories, targets.shape[0], self._table.shape[0])
        parts = self._table.to(targets.device)[categories]
        _check_in_category("targets", targets, parts, categories, "check that categories[b] is that shape's category")
        _check_in_category("predictions", pred, parts, categories,
                           "pass logits (B, N, P) to restrict predictions to each shape's category")
        valid = parts >= 0
        shape_miou = (_part_ious(pred, targets, parts) * valid).sum(1) / valid.sum(1)
        num = len(self._names)
        cats = categories.long().cpu()
        self._state[:num].index_add_(0, cats, shape_miou.cpu())
        self._state[num:2 * num] += torch.bincount(cats, minlength=num).double()
        self._state[-2] += float((pred == targets).sum())
        self._state[-1] += targets.numel()

    def state(self) -> Tensor:
        """A copy of the accumulated sums, float64 ``(2C + 2,)``: per category the sum of shape mIoUs (C values) and
        the number of shapes (C values), then the correct and the total point counts."""
        return self._state.clone()

    def load_state(self, state: Tensor) -> None:
        """Replace the accumulated sums by ``state`` (from :meth:`state`, possibly summed across processes)."""
        if not isinstance(state, Tensor) or tuple(state.shape) != tuple(self._state.shape):
            got = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"state must have shape {tuple(self._state.shape)} for {len(self._names)} categories, "
                             f"got {got}; build the meter with the same parts_of_category")
        self._state = state.detach().to("cpu", torch.float64).clone()

    def merge(self, other: PartSegmentationMeter) -> PartSegmentationMeter:
        """Add ``other``'s shapes and points to this meter (same categories required); returns ``self``."""
        if (not isinstance(other, PartSegmentationMeter) or other._names != self._names
                or not torch.equal(other._table, self._table)):
            raise ValueError("can only merge a PartSegmentationMeter built with the same parts_of_category and "
                             "category_names")
        self._state += other._state
        return self

    def compute(self) -> dict:
        """The metrics as Python numbers: ``instance_miou``, ``class_miou``, ``accuracy`` (fractions in [0, 1]),
        ``shapes`` (count) and ``per_category``: name -> ``{"miou": mean shape mIoU, "shapes": count}`` in category
        order, for the categories with at least one shape (the others are also left out of ``class_miou``)."""
        num = len(self._names)
        miou_sum, shapes = self._state[:num], self._state[num:2 * num]
        if shapes.sum() == 0:
            raise ValueError("the meter holds no shapes yet; call update() before compute()")
        present = shapes > 0
        return {
            "instance_miou": float(miou_sum.sum() / shapes.sum()),
            "class_miou": float((miou_sum[present] / shapes[present]).mean()),
            "accuracy": float(self._state[-2] / self._state[-1]),
            "shapes": int(shapes.sum()),
            "per_category": {name: {"miou": total / count, "shapes": int(count)}
                             for name, total, count in zip(self._names, miou_sum.tolist(), shapes.tolist()) if count},
        }


def format_per_category(result: dict) -> str:
    """A fixed-width text table of ``result`` (from :meth:`PartSegmentationMeter.compute`): one row per category with
    its shape count and mIoU, then the class mIoU, instance mIoU and accuracy, as percentages with 2 decimals."""
    missing = sorted({"per_category", "class_miou", "instance_miou", "accuracy", "shapes"} - set(result))
    if missing:
        raise ValueError(f"result lacks {', '.join(missing)}; pass the dict returned by PartSegmentationMeter.compute()")
    rows = [(name, str(row["shapes"]), f"{100 * row['miou']:.2f}") for name, row in result["per_category"].items()]
    summary = [("class mIoU", "", f"{100 * result['class_miou']:.2f}"),
               ("instance mIoU", str(result["shapes"]), f"{100 * result['instance_miou']:.2f}"),
               ("accuracy", "", f"{100 * result['accuracy']:.2f}")]
    width = max(len(name) for name, _, _ in rows + summary + [("category", "", "")])
    lines = [f"{name:<{width}}  {shapes:>6}  {value:>7}" for name, shapes, value in [("category", "shapes", "%")] + rows]
    lines.append("-" * len(lines[0]))
    lines += [f"{name:<{width}}  {shapes:>6}  {value:>7}" for name, shapes, value in summary]
    return "\n".join(lines)
