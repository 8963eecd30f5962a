"""``TokenGeometry``: the geometry of the point tokens of one forward pass, made once and passed to every block.

A backbone creates one at its grouping step and hands it, with the tokens, to each transformer block and to the head;
tunable modules read what they need from it (the centres, a kNN graph of the centres, the spectral bases for given
options). Derived structures are computed on first use and cached on the object, so every module of a forward shares
them, and they vanish with the forward: no hook, no module state, nothing saved or trained.
"""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

import torch
from torch import Tensor

from pointgst.ops import knn_indices
from pointgst.spectral import SpectralBasis, SpectralOptions, spectral_basis_unchecked

T = TypeVar("T")


class TokenGeometry:
    """Centres ``(B, G, 3)`` of the G point tokens, in token order, and what is derived from them.

    ``num_special_tokens`` leading tokens (cls; sos + cls) precede the point tokens in the sequence the blocks see.
    ``computations`` counts the derived structures built so far (tests check that each is built once per forward).
    """

    def __init__(self, centers: Tensor, num_special_tokens: int = 0):
        self.centers = centers.detach()
        self.num_special_tokens = num_special_tokens
        self.computations = 0
        self._cache: dict[Hashable, object] = {}

    @property
    def batch_size(self) -> int:
        return self.centers.shape[0]

    @property
    def num_points(self) -> int:
        """G, the number of point tokens."""
        return self.centers.shape[1]

    def cached(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()`` on the first request of ``key`` in this forward, the same object afterwards."""
        if key not in self._cache:
            self._cache[key] = build()
            self.computations += 1
        return self._cache[key]  # type: ignore[return-value]

    def spectral_basis(self, options: SpectralOptions) -> SpectralBasis:
        """Global and local graph-spectral bases of the centres for ``options`` (only its spectral fields count)."""
        options = options.spectral_options()
        return self.cached(("spectral_basis", options), lambda: spectral_basis_unchecked(self.centers, options))

    def normalized_centers(self) -> Tensor:
        """``(B, G, 3)``: each sample's centres moved to their mean and divided by their largest absolute coordinate
        (1 where all coincide), so every coordinate lies in [-1, 1]. Distances keep their ratios, and squared
        distances cannot overflow, whatever the scale of the input (1e-30 to 1e30)."""
        def build() -> Tensor:
            moved = self.centers - self.centers.mean(dim=1, keepdim=True)
            scale = moved.abs().amax(dim=(1, 2), keepdim=True)
            return moved / torch.where(scale > 0, scale, torch.ones_like(scale))
        return self.cached("normalized_centers", build)

    def knn(self, k: int) -> Tensor:
        """``(B, G, k)`` int64: the k nearest centres of every centre, itself first (ties lowest index first),
        found on :meth:`normalized_centers`."""
        return self.cached(("knn", k), lambda: knn_indices(self.normalized_centers(), self.normalized_centers(), k))

    def __repr__(self) -> str:
        return (f"TokenGeometry(batch={self.batch_size}, points={self.num_points}, "
                f"special_tokens={self.num_special_tokens}, cached={list(self._cache)})")
