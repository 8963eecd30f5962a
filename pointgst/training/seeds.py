"""Reproducible randomness: one derived seed per purpose and place, and the global RNG states a checkpoint keeps."""

import random
from typing import Any

import numpy as np
import torch

_STREAM = {"shuffle": 1, "subset": 2, "augment": 3, "dropout": 4, "vote": 5, "mask": 6}


def derived_seed(seed: int, stream: str, *parts: int) -> int:
    """A reproducible seed for one purpose (``stream``) at one place (epoch, step, sample)."""
    value = seed * 1_000_003 + _STREAM[stream]
    for part in parts:
        value = (value * 1_000_033 + part) % (2**62)
    return value


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` reads (tensors, numbers, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       cached), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
