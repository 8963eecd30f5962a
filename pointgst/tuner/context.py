"""The spectral context shared by every adapter of a model (design contract 3)."""

from torch import Tensor

from pointgst.spectral import SpectralBasis, SpectralOptions, spectral_basis_unchecked


class SpectralContext:
    """Token centres of the current forward and their spectral bases, computed once per forward.

    A plain Python object (never a module, buffer or parameter, so never saved or trained). A forward hook on
    the backbone's grouping module calls :meth:`update` with the centres (B, G, 3); adapters ask for
    :meth:`basis`, which is computed on first use and cached until the next forward. ``computations`` counts
    the eigendecompositions for tests and benchmarks.
    """

    def __init__(self) -> None:
        self.centers: Tensor | None = None
        self._bases: dict[SpectralOptions, SpectralBasis] = {}
        self.computations = 0

    def update(self, centers: Tensor) -> None:
        self.centers = centers.detach()
        self._bases.clear()

    def basis(self, options: SpectralOptions) -> SpectralBasis:
        if self.centers is None:
            raise RuntimeError("no token centres yet: adapters can only run inside the backbone's forward, after "
                               "its grouping step")
        if options not in self._bases:
            self._bases[options] = spectral_basis_unchecked(self.centers, options)
            self.computations += 1
        return self._bases[options]
