"""Accuracy, mean class accuracy, and voting (averaged logits of augmented passes)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pointgst.data.transforms import augment, fps_resample, random_subset

from .distributed import Distributed


@dataclass
class Scores:
    """Overall accuracy, mean class accuracy (fractions) and mean cross-entropy over a split."""

    acc: float
    macc: float
    loss: float
    count: int


def scores_from(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Scores:
    """logits (N, C), labels (N,) -> :class:`Scores`; mean class accuracy over the classes present."""
    pred = logits.argmax(dim=1)
    correct = (pred == labels).float()
    per_class = torch.zeros(num_classes).index_add_(0, labels.cpu(), correct.cpu())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float()
    present = counts > 0
    return Scores(acc=correct.mean().item(), macc=(per_class[present] / counts[present]).mean().item(),
                  loss=F.cross_entropy(logits.float(), labels).item(), count=len(labels))


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader, dist: Distributed, *, npoints: int, vote: int = 0,
                   point_all: int | None = None, augmentation: str = "scale_translate",
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole split (gathered across processes, in dataset order).

    ``vote == 0``: one deterministic pass (FPS to ``npoints`` from index 0, the official test input).
    ``vote == N``: the average of N passes, each an FPS to ``point_all`` points, one random ``npoints`` subset
    and the augmentation (official voting uses scale-and-translate), with a seeded generator.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    all_logits, all_labels, all_index = [], [], []
    for index, points, labels in loader:
        points = points.to(dist.device)
        if vote:
            pool = fps_resample(points, min(point_all or npoints, points.shape[1]))  # deterministic: once per batch
            total = 0
            for _ in range(vote):
                view = random_subset(pool, npoints, generator)
                total = total + model(augment(view, augmentation, generator)).float()
            logits = total / vote
        else:
            logits = model(fps_resample(points, npoints)).float()
        all_logits.append(logits.cpu()), all_labels.append(labels.cpu()), all_index.append(index.cpu())
    logits, labels, index = torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_index)
    if dist.enabled:
        logits, labels, index = _gather(logits, dist), _gather(labels, dist), _gather(index, dist)
        order = torch.sort(index, stable=True).indices
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]  # DistributedSampler pads with repeats
        logits, labels = logits[order][keep], labels[order][keep]
    return logits, labels


def _gather(tensor: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """Concatenate every process's ``tensor`` (rows may differ in number); collectives run on the process device
    (nccl serves CUDA tensors only), the result is on the CPU."""
    import torch.distributed as tdist
    sizes = [torch.zeros(1, dtype=torch.long, device=dist.device) for _ in range(dist.world_size)]
    tdist.all_gather(sizes, torch.tensor([len(tensor)], device=dist.device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=dist.device)
    padded[: len(tensor)] = tensor.to(dist.device)
    out = [torch.zeros_like(padded) for _ in range(dist.world_size)]
    tdist.all_gather(out, padded)
    return torch.cat([o[: int(s)].cpu() for o, s in zip(out, sizes)])
