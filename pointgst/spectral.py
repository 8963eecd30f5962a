"""Graph-spectral bases of token centres, shared by every spectral adapter of a model.

From the token centres ``(B, G, 3)`` of one forward pass, :func:`compute_spectral_basis` builds

- one *global* graph per sample over all G centres, and
- ``m = G // k`` *local* graphs per sample: the centres sorted along a space-filling curve and cut into
  consecutive chunks of ``k = local_size`` centres,

and returns their Laplacian eigenbases in a :class:`SpectralBasis`, a plain Python object (never a module,
buffer or parameter, so it is never saved and never trained) that also performs the graph Fourier transforms.

Every graph is dense, with the data-dependent inverse-distance weights of the official PointGST code::

    W_ij = 1 / (d_ij / d_min + [i = j]),   i.e.  W_ij = d_min / d_ij (i != j),  W_ii = 1  for exact distances,

where ``d_min`` is the smallest positive centre distance (per sample or over the whole call, see
``SpectralOptions.dmin_scope``). Coincident centres (``d_ij = 0``, ``i != j``), which make the official
weights infinite, get weight 1: the largest off-diagonal weight, as if they were ``d_min`` apart. A sample
whose centres all coincide thus gets the complete graph with unit weights and still a finite basis.
``SpectralOptions.distance="cdist"`` reproduces the official distances, round-off included (:func:`graph_adjacency`).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from pointgst.errors import PointCloudError
from pointgst.ops import curve_key, gather_points
from pointgst.validation import check_choice, check_int, check_point_cloud

CURVES = ("z_order", "hilbert")
LAPLACIANS = ("normalized", "combinatorial")
DMIN_SCOPES = ("sample", "batch")
GFT_MODES = ("paper", "official_code")
DISTANCES = ("exact", "cdist")
EIGH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

_DEGREE_EPS = 1e-6  # added to the degrees before rsqrt, as in the official code


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class SpectralOptions:
    """How the graphs of the token centres and their bases are built; declared once here and reused by every
    method that works in a graph-spectral domain (its config inherits these fields).

    Defaults are the corrected behaviour; the official PointGST code corresponds to ``dmin_scope="batch"``,
    ``gft_mode="official_code"``, ``distance="cdist"`` (quirks Q3, Q1 and Q18 of ``docs/official.md``).
    """

    local_size: int = field(default=32, metadata=_help(
        "centres per local graph (k); the number of centres G must be a multiple of it"))
    curve: str = field(default="z_order", metadata=_help(
        "space-filling curve that orders the centres before they are cut into local graphs: 'z_order' (the "
        "official Morton key) or 'hilbert'"))
    laplacian: str = field(default="normalized", metadata=_help(
        "'normalized': I - D^-1/2 W D^-1/2 (official); 'combinatorial': D - W (the first official release)"))
    dmin_scope: str = field(default="sample", metadata=_help(
        "where d_min is taken: 'sample' (a sample's graph never depends on its batch) or 'batch' (one value over "
        "the whole call, official)"))
    gft_mode: str = field(default="paper", metadata=_help(
        "'paper': forward transform U^T x (the graph Fourier transform); 'official_code': U x (official)"))
    distance: str = field(default="exact", metadata=_help(
        "'exact': centre distances from explicit differences, zero self-distance, d_min the smallest distance "
        "between two centres; 'cdist': torch.cdist and the official formulas op for op, whose round-off on the "
        "diagonal becomes d_min (official; the round-off differs between CPU and GPU)"))
    eigh_dtype: str = field(default="float32", metadata=_help(
        "precision of the Laplacians and their eigendecomposition: 'float32' (official) or 'float64'"))

    def __post_init__(self) -> None:
        check_int("local_size", self.local_size, 1)
        check_choice("curve", self.curve, CURVES)
        check_choice("laplacian", self.laplacian, LAPLACIANS)
        check_choice("dmin_scope", self.dmin_scope, DMIN_SCOPES)
        check_choice("gft_mode", self.gft_mode, GFT_MODES)
        check_choice("distance", self.distance, DISTANCES)
        check_choice("eigh_dtype", self.eigh_dtype, tuple(EIGH_DTYPES))

    def spectral_options(self) -> "SpectralOptions":
        """Only the spectral fields (a subclass's extra fields dropped): the key under which bases are cached."""
        names = [f.name for f in fields(SpectralOptions)]
        return SpectralOptions(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True, eq=False)
class SpectralBasis:
    """Global and local Laplacian eigenbases of one batch of token centres, with their transforms.

    Columns of each basis are eigenvectors, ordered by ascending eigenvalue (low to high frequency).
    Local graph ``j`` of sample ``b`` holds the centres ``order[b, j*k:(j+1)*k]``.
    """

    global_basis: Tensor
    """(B, G, G) eigenvectors of the global graphs."""
    global_eigenvalues: Tensor
    """(B, G) ascending."""
    local_basis: Tensor
    """(B, m, k, k) eigenvectors of the local graphs."""
    local_eigenvalues: Tensor
    """(B, m, k) ascending."""
    order: Tensor
    """(B, G) int64 permutation sorting the centres along the curve."""
    inverse_order: Tensor
    """(B, G) int64 inverse permutation: ``x[b, order[b]][inverse_order[b]] == x[b]``."""
    gft_mode: str = "paper"
    """"paper": forward U^T x, inverse U f; "official_code": forward U x, inverse U^T f."""

    @property
    def batch_size(self) -> int:
        return self.global_basis.shape[0]

    @property
    def num_nodes(self) -> int:
        """G, the number of token centres (point tokens)."""
        return self.global_basis.shape[-1]

    @property
    def local_size(self) -> int:
        """k, the number of nodes per local graph."""
        return self.local_basis.shape[-1]

    def to_spectral_global(self, x: Tensor) -> Tensor:
        """(B, G, C) node signals -> (B, G, C) global spectral coefficients."""
        self._check_signal(x)
        return self._transform(self.global_basis, x, inverse=False)

    def from_spectral_global(self, f: Tensor) -> Tensor:
        """(B, G, C) global spectral coefficients -> (B, G, C) node signals."""
        return self._transform(self.global_basis, f, inverse=True)

    def to_spectral_local(self, x: Tensor) -> Tensor:
        """(B, G, C) node signals -> (B, m, k, C): sorted along the curve, chunked, transformed per chunk."""
        self._check_signal(x)
        chunks = gather_points(x, self.order.unflatten(1, (-1, self.local_size)))
        return self._transform(self.local_basis, chunks, inverse=False)

    def from_spectral_local(self, f: Tensor) -> Tensor:
        """(B, m, k, C) local spectral coefficients -> (B, G, C) node signals in the original node order."""
        b, m, k, c = f.shape
        chunks = self._transform(self.local_basis, f, inverse=True)
        return gather_points(chunks.reshape(b, m * k, c), self.inverse_order)

    def _transform(self, basis: Tensor, x: Tensor, *, inverse: bool) -> Tensor:
        # paper: forward U^T, inverse U; official_code: forward U, inverse U^T.
        transpose = (self.gft_mode == "paper") != inverse
        return (basis.mT if transpose else basis) @ x

    def _check_signal(self, x: Tensor) -> None:
        if x.ndim != 3 or x.shape[0] != self.batch_size or x.shape[1] != self.num_nodes:
            raise ValueError(
                f"expected node signals of shape (B={self.batch_size}, G={self.num_nodes}, C), got "
                f"{tuple(x.shape)}; pass only the point tokens of the batch the basis was computed for"
            )


def compute_spectral_basis(centers: Tensor, options: SpectralOptions = SpectralOptions()) -> SpectralBasis:
    """Spectral bases of the global and local graphs of token centres ``(B, G, 3)``.

    Two batched eigendecompositions (all global graphs, then all local graphs), without gradient.
    Bases and eigenvalues are returned in the dtype of ``centers``.
    """
    _check_centers(centers, options.local_size)
    return spectral_basis_unchecked(centers, options)


def spectral_basis_unchecked(centers: Tensor, options: SpectralOptions) -> SpectralBasis:
    """:func:`compute_spectral_basis` without its input checks, for centres a backbone sampled from points it
    already checked, with a local size checked at injection (no host sync on every forward)."""
    with torch.no_grad(), torch.autocast(centers.device.type, enabled=False):  # bases stay in float32/64
        order = torch.argsort(curve_key(centers, options.curve), dim=1, stable=True)
        inverse_order = torch.argsort(order, dim=1)
        local_centers = gather_points(centers, order.unflatten(1, (-1, options.local_size)))
        global_values, global_basis = _graph_eigh(centers.unsqueeze(1), options)
        local_values, local_basis = _graph_eigh(local_centers, options)
    return SpectralBasis(
        global_basis=global_basis.squeeze(1).to(centers.dtype),
        global_eigenvalues=global_values.squeeze(1).to(centers.dtype),
        local_basis=local_basis.to(centers.dtype),
        local_eigenvalues=local_values.to(centers.dtype),
        order=order,
        inverse_order=inverse_order,
        gft_mode=options.gft_mode,
    )


def pairwise_distances(centers: Tensor, distance: str = "exact") -> Tensor:
    """Distances ``(B, M, n, n)`` between the centres ``(B, M, n, 3)`` of each graph.

    "exact": from explicit coordinate differences, so the diagonal is exactly zero. "cdist": ``torch.cdist`` on the
    ``(B * M, n, 3)`` stack, as the official code calls it; above 25 points it uses the matrix-product formula
    (``|x|^2 + |y|^2 - 2 x.y``, clamped, square root), which leaves round-off on the diagonal.
    """
    check_choice("distance", distance, DISTANCES)
    if distance == "exact":
        return (centers.unsqueeze(-2) - centers.unsqueeze(-3)).square().sum(-1).sqrt()
    stacked = centers.reshape(-1, *centers.shape[-2:])
    return torch.cdist(stacked, stacked).reshape(*centers.shape[:-1], centers.shape[-2])


def graph_adjacency(centers: Tensor, dmin_scope: str = "sample", distance: str = "exact") -> Tensor:
    """Dense adjacency ``(B, M, n, n)`` of ``B`` samples of ``M`` graphs with ``n`` nodes, centres ``(B, M, n, 3)``:
    ``W_ij = 1 / (d_ij / d_min + [i = j])``, with ``d_min`` the smallest positive entry of the distance matrices
    over the M graphs of each sample ("sample") or over the whole tensor ("batch").

    With exact distances (zero diagonal) this is ``d_min / d_ij`` off the diagonal and 1 on it; coincident centres
    get weight 1 (as if ``d_min`` apart) instead of the official infinity, and a sample whose centres all coincide
    (no positive distance) gets unit weights. With ``distance="cdist"`` the official construction is followed op for
    op: the diagonal round-off takes part in ``d_min`` and in the self-loop weights (quirk Q18).
    """
    check_choice("dmin_scope", dmin_scope, DMIN_SCOPES)
    dist = pairwise_distances(centers, distance)
    positive = dist > 0
    dims = (1, 2, 3) if dmin_scope == "sample" else (0, 1, 2, 3)
    d_min = torch.where(positive, dist, torch.inf).amin(dim=dims, keepdim=True)
    d_min = torch.where(torch.isinf(d_min), 1.0, d_min)
    if distance == "cdist":
        eye = torch.eye(dist.shape[-1], dtype=dist.dtype, device=dist.device)
        weights = 1 / (dist / d_min + eye)
        return torch.where(torch.isinf(weights), 1.0, weights)  # coincident centres: finite, as in "exact"
    return torch.where(positive, d_min / torch.where(positive, dist, 1.0), 1.0)


def graph_laplacian(adjacency: Tensor, kind: str = "normalized") -> Tensor:
    """Laplacian ``(..., n, n)`` of dense adjacencies ``(..., n, n)``; degrees include the self-loop.

    "normalized": ``I - D^-1/2 W D^-1/2`` with ``D^-1/2 = rsqrt(D + 1e-6)``; "combinatorial": ``D - W``.
    """
    check_choice("laplacian", kind, LAPLACIANS)
    degree = adjacency.sum(-1)
    if kind == "combinatorial":
        return torch.diag_embed(degree) - adjacency
    inv_sqrt = torch.rsqrt(degree + _DEGREE_EPS)
    eye = torch.eye(adjacency.shape[-1], dtype=adjacency.dtype, device=adjacency.device)
    return eye - inv_sqrt.unsqueeze(-1) * adjacency * inv_sqrt.unsqueeze(-2)


def _graph_eigh(centers: Tensor, options: SpectralOptions) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``(B, M, n)`` ascending and eigenvectors ``(B, M, n, n)`` (columns) of the Laplacians of
    ``B x M`` graphs with centres ``(B, M, n, 3)``, in one batched ``eigh`` call in ``options.eigh_dtype``.

    On the CPU the call runs single-threaded: multithreaded LAPACK may pick its thread count by machine load, which
    changes the last bits of the result (and, for near-degenerate eigenvalues, the eigenvectors) from call to call;
    for these small matrices one thread is also the fastest under load."""
    adjacency = graph_adjacency(centers.to(EIGH_DTYPES[options.eigh_dtype]), options.dmin_scope, options.distance)
    return eigh(graph_laplacian(adjacency, options.laplacian))


def eigh(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of symmetric ``(..., n, n)`` matrices. On the CPU every matrix is decomposed by
    single-threaded LAPACK (see :func:`_graph_eigh`), so the same input gives the same eigenvectors in every process;
    the batch is split over the CPU threads (one chunk each), which changes nothing per matrix."""
    if matrices.device.type != "cpu":
        return torch.linalg.eigh(matrices)
    flat = matrices.reshape(-1, *matrices.shape[-2:])
    threads = torch.get_num_threads()
    chunks = flat.chunk(min(threads, len(flat))) if len(flat) else (flat,)
    torch.set_num_threads(1)
    try:
        if len(chunks) == 1:
            values, vectors = torch.linalg.eigh(flat)
        else:
            results = list(_eigh_pool(len(chunks)).map(torch.linalg.eigh, chunks))
            values, vectors = torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
    finally:
        torch.set_num_threads(threads)
    return values.reshape(matrices.shape[:-1]), vectors.reshape(matrices.shape)


@functools.cache
def _eigh_pool(workers: int) -> ThreadPoolExecutor:
    """Threads for :func:`eigh` (torch releases the GIL inside LAPACK), made once per worker count."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pointgst-eigh")


os.register_at_fork(after_in_child=_eigh_pool.cache_clear)  # a forked child has none of its parent's threads


def _check_centers(centers: Tensor, local_size: int) -> None:
    check_point_cloud(centers, name="centers")
    g = centers.shape[1]
    if g % local_size:
        raise PointCloudError(
            f"G={g} token centres cannot be cut into local graphs of k={local_size} centres (G % k = "
            f"{g % local_size}); use a number of groups G that is a multiple of local_size, or a local_size "
            "that divides G"
        )
