"""AdamW with the official parameter groups, and the learning-rate schedules."""

import math

import torch
from torch import nn

from pointgst.tuner.keys import official_name


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official two groups (``tools/builder.py``): no weight decay for 1-D parameters, names ending in
    ``.bias`` and names containing ``token``; ``weight_decay`` for the rest (so ``cls_pos`` is decayed, quirk Q8).
    The rule is applied to the official names of the trainable parameters; frozen ones are skipped."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        official = official_name(name)
        (no_decay if param.ndim <= 1 or official.endswith(".bias") or "token" in official else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def official_lr(epoch: int, *, lr: float, lr_min: float, warmup_lr_init: float, warmup_epochs: int,
                epochs: int) -> float:
    """The learning rate the official runner trains epoch ``epoch`` with (timm ``CosineLRScheduler``, stepped at
    the end of each epoch): epoch 0 at ``warmup_lr_init``, epoch e >= 1 at f(e - 1) with linear warmup to
    ``warmup_epochs``, then cosine over ``epochs`` (t not shifted by the warmup), ``lr_min`` from ``epochs`` on."""
    if epoch == 0:
        return warmup_lr_init
    t = epoch - 1
    if t < warmup_epochs:
        return warmup_lr_init + t * (lr - warmup_lr_init) / warmup_epochs
    if t >= epochs:
        return lr_min
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / epochs))


def build_scheduler(optimizer: torch.optim.Optimizer, train, steps_per_epoch: int):
    """``(scheduler, per)``: ``per`` is ``"step"`` (call ``scheduler.step()`` after every optimiser step) or
    ``"epoch"`` (after every epoch).

    ``cosine``: linear warmup from ``warmup_lr_init`` over ``warmup_epochs`` epochs, then cosine to ``lr_min``,
    per step (torch ``LinearLR`` + ``CosineAnnealingLR``). ``official``: the official epoch-level schedule
    (:func:`official_lr`), which runs ``epochs + 1`` epochs (see :func:`num_epochs`).
    """
    if train.schedule == "official":
        def factor(epoch: int) -> float:
            return official_lr(epoch, lr=train.lr, lr_min=train.lr_min, warmup_lr_init=train.warmup_lr_init,
                               warmup_epochs=train.warmup_epochs, epochs=train.epochs) / train.lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "epoch"
    warmup = train.warmup_epochs * steps_per_epoch
    total = train.epochs * steps_per_epoch
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=train.lr_min)
    if warmup == 0:
        return cosine, "step"
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=train.warmup_lr_init / train.lr,
                                               end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup]), "step"


def num_epochs(train) -> int:
    """Epochs to run: the official loop runs ``max_epoch + 1`` epochs (quirk Q12)."""
    return train.epochs + 1 if train.schedule == "official" else train.epochs
