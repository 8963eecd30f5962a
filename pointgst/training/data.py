"""The datasets and loaders of a run: train / select / test splits and ``(index, points, label)`` batches."""

from collections.abc import Iterator
from dataclasses import asdict

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from pointgst.data import DatasetError, build_dataset, stratified_split, stratified_subset
from pointgst.recipe import Recipe

from .distributed import Distributed
from .setup import selection_split


class IndexedDataset(Dataset):
    """Items ``(index, points, label)``: the dataset index seeds per-sample augmentation."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        points, label = self.dataset[i]
        return i, points, label


def build_splits(recipe: Recipe, *, with_test: bool = True) -> dict[str, Dataset]:
    """train / select (validation carved from train, or the test split: :func:`selection_split`; none with
    ``train.selection: last``) / test (not even read with ``with_test=False``, which needs a validation split)."""
    data, seed = recipe.data, recipe.train.seed
    train = _dataset(recipe, "train")
    # validation clouds keep their stored point order every epoch (FPS starts at index 0), like the test split
    stored_order = train.with_stored_order()
    if data.max_train_samples:
        kept = stratified_subset(train.labels, data.max_train_samples, seed)
        train, stored_order = subset(train, kept), subset(stored_order, kept)
    splits = {"test": build_test_split(recipe)} if with_test else {}
    if selection_split(recipe) is None:
        splits.update(train=train)
    elif selection_split(recipe) == "test":
        splits.update(train=train, select=splits["test"])
    else:
        train_idx, val_idx = stratified_split(labels_of(train), data.val_fraction, seed)
        if len(val_idx) == 0:
            raise ValueError(f"the validation split is empty: {len(train)} training samples over "
                             f"{data.num_classes} classes leave none at val_fraction {data.val_fraction}; raise "
                             "data.val_fraction or data.max_train_samples, or select on the test split "
                             "(train.selection=test, the official protocol)")
        splits.update(train=subset(train, train_idx), select=subset(stored_order, val_idx))
    return splits


def build_test_split(recipe: Recipe) -> Dataset:
    """The test split (a stratified, seeded subset with ``data.max_test_samples``)."""
    test = _dataset(recipe, "test")
    if recipe.data.max_test_samples:
        test = subset(test, stratified_subset(test.labels, recipe.data.max_test_samples, recipe.train.seed))
    return test


def _dataset(recipe: Recipe, split: str) -> Dataset:
    """One split, checked against the recipe's number of classes (a folder dataset's classes are its subfolders)."""
    dataset = build_dataset({**asdict(recipe.data), "seed": recipe.train.seed}, split)
    if dataset.num_classes != recipe.data.num_classes:
        raise DatasetError(f"the {split} split of {recipe.data.root} has {dataset.num_classes} classes "
                           f"({', '.join(dataset.class_names[:5])}{', ...' if dataset.num_classes > 5 else ''}) but "
                           f"the recipe says data.num_classes={recipe.data.num_classes}; set "
                           f"--set data.num_classes={dataset.num_classes} or fix the class folders")
    return dataset


def base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor(dataset.labels)


def subset(dataset: Dataset, indices) -> Subset:
    return Subset(dataset, [int(i) for i in indices])


class ShardSampler(Sampler[int]):
    """An evaluation shard: indices ``rank, rank + world_size, ...`` in order. Unlike ``DistributedSampler`` it does
    not pad the shards to one length, so metrics summed over processes count every sample once."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset: Dataset, recipe: Recipe, dist: Distributed, *, train: bool) -> DataLoader:
    """A loader of ``(index, points, label)`` batches; every process gets its shard (training: ``DistributedSampler``,
    also with one process, so the shuffling order is the same whatever the number of processes; evaluation:
    :class:`ShardSampler`)."""
    indexed = IndexedDataset(dataset)
    sampler = (DistributedSampler(indexed, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                  seed=recipe.train.seed, drop_last=False) if train else
               ShardSampler(len(indexed), dist.rank, dist.world_size))
    per_rank = max(1, recipe.train.batch_size // dist.world_size)
    return DataLoader(indexed, batch_size=per_rank if train else 2 * per_rank, sampler=sampler,
                      num_workers=recipe.train.num_workers, drop_last=train and len(dataset) > per_rank)
