"""Few-shot episodes in the Point-BERT protocol (ModelNet40 ``{5,10}way{10,20}shot``, folds 0..9).

An episode picks ``n_way`` classes, ``k_shot`` support (training) samples and ``query_per_class`` query (test)
samples per picked class, and relabels the picked classes to ``0..n_way-1``. Point-BERT distributes its episodes
as pickles (``data/ModelNetFewshot/{5,10}way{10,20}shot/{0..9}.pkl``) whose internal layout is not documented and
which are not available here; episodes drawn by :func:`few_shot_episode` follow the same protocol with their own
seeded draws, so they are NOT the official episodes and accuracies are not bit-comparable with published tables
(report the mean and std over folds ``seed = 0..9``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pointgst.data.splits import _as_labels

__all__ = ["few_shot_episode", "EpisodeSubset"]


def _draw_per_class(labels: Tensor, classes: Tensor, count: int, generator: torch.Generator,
                    exclude: Tensor | None = None) -> Tensor:
    """``count`` random indices of each class in ``classes`` (in that order), avoiding ``exclude``."""
    available = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        available[exclude] = False
    picked = []
    for c in classes.tolist():  # at most n_way classes
        pool = torch.nonzero((labels == c) & available).squeeze(1)
        picked.append(pool[torch.randperm(len(pool), generator=generator)[:count]])
    return torch.cat(picked)


def few_shot_episode(labels: Tensor | np.ndarray | Sequence[int], n_way: int, k_shot: int, *,
                     query_per_class: int = 20, seed: int = 0,
                     query_labels: Tensor | np.ndarray | Sequence[int] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Draw one ``n_way``-way ``k_shot``-shot episode; the same arguments always give the same episode.

    Args:
        labels: labels of the support pool (the training split), ``(M,)``.
        n_way: classes per episode (5 or 10 in Point-BERT).
        k_shot: support samples per class (10 or 20).
        query_per_class: query samples per class (20 in Point-BERT).
        seed: the episode (Point-BERT uses folds 0..9).
        query_labels: labels of the query pool (the test split, as in Point-BERT); ``None`` draws the queries from
            ``labels`` too, disjoint from the support.

    Returns:
        ``(support_idx, query_idx, classes)``: int64 indices into the support and query pools, grouped by episode
        label (``k_shot`` then ``query_per_class`` per class), and ``classes`` ``(n_way,)``, the original label of
        episode label ``i`` (so the new label of a sample is its position in ``classes``; see
        :class:`EpisodeSubset`).
    """
    support_labels = _as_labels(labels, "labels")
    query_pool = support_labels if query_labels is None else _as_labels(query_labels, "query_labels")
    for name, value in (("n_way", n_way), ("k_shot", k_shot), ("query_per_class", query_per_class)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    support_counts = torch.bincount(support_labels)
    query_counts = torch.bincount(query_pool, minlength=len(support_counts))[: len(support_counts)]
    need_query = query_per_class + (k_shot if query_labels is None else 0)
    eligible = torch.nonzero((support_counts >= k_shot) & (query_counts >= need_query)).squeeze(1)
    if len(eligible) < n_way:
        raise ValueError(f"only {len(eligible)} classes have {k_shot} support and {query_per_class} query samples "
                         f"(disjoint when drawn from one pool); {n_way}-way episodes need {n_way}")
    generator = torch.Generator().manual_seed(int(seed))
    classes = eligible[torch.randperm(len(eligible), generator=generator)[:n_way]]
    support_idx = _draw_per_class(support_labels, classes, k_shot, generator)
    query_idx = _draw_per_class(query_pool, classes, query_per_class, generator,
                                exclude=support_idx if query_labels is None else None)
    return support_idx, query_idx, classes


class EpisodeSubset(Dataset):
    """The samples ``indices`` of ``dataset`` with labels relabelled to their position in ``classes``.

    Items ``(points, episode_label)``; ``class_names``, ``num_classes`` (= ``len(classes)``), ``labels`` and
    ``name`` mirror the dataset API.
    """

    def __init__(self, dataset: Dataset, indices: Tensor | Sequence[int], classes: Tensor | Sequence[int]):
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        self.classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
        mapping = torch.full((int(self.classes.max()) + 1,), -1, dtype=torch.int64)
        mapping[self.classes] = torch.arange(len(self.classes))
        original = torch.as_tensor(dataset.labels)[self.indices]
        if (original > len(mapping) - 1).any() or (mapping[original.clamp(max=len(mapping) - 1)] < 0).any():
            raise ValueError("every sample of the episode must belong to one of its classes")
        self.labels = mapping[original]
        names = getattr(dataset, "class_names", None)
        self.class_names = [names[c] if names else str(c) for c in self.classes.tolist()]
        self.name = f"{getattr(dataset, 'name', 'dataset')}-{len(self.classes)}way"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        points, _ = self.dataset[int(self.indices[index])]
        return points, int(self.labels[index])
