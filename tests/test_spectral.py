"""Graphs, Laplacians, eigenbases and graph Fourier transforms of pointgst.spectral."""

import math

import pytest
import torch

from pointgst.ops import curve_key
from pointgst.spectral import (
    EIGH_DTYPES,
    SpectralOptions,
    compute_spectral_basis,
    eigh,
    graph_adjacency,
    graph_laplacian,
    pairwise_distances,
)

GFT_MODES = ["paper", "official_code"]


def random_centers(batch: int = 3, groups: int = 64, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """(batch, groups, 3) centres in [-scale, scale]^3."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, groups, 3, generator=generator) * 2 - 1) * scale


def assert_identity(matrices: torch.Tensor, atol: float = 1e-5) -> None:
    eye = torch.eye(matrices.shape[-1]).expand_as(matrices)
    torch.testing.assert_close(matrices, eye, atol=atol, rtol=0)


@pytest.mark.parametrize("gft_mode", GFT_MODES)
def test_forward_then_inverse_is_identity(gft_mode):
    basis = compute_spectral_basis(random_centers(), SpectralOptions(gft_mode=gft_mode))
    x = torch.randn(3, 64, 5)
    torch.testing.assert_close(basis.from_spectral_global(basis.to_spectral_global(x)), x, atol=1e-5, rtol=0)
    local = basis.to_spectral_local(x)
    assert local.shape == (3, 2, 32, 5)
    torch.testing.assert_close(basis.from_spectral_local(local), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gft_mode", GFT_MODES)
def test_transform_direction(gft_mode):
    basis = compute_spectral_basis(random_centers(), SpectralOptions(gft_mode=gft_mode))
    u = basis.global_basis
    x = torch.randn(3, 64, 4)
    expected = u.mT @ x if gft_mode == "paper" else u @ x
    torch.testing.assert_close(basis.to_spectral_global(x), expected)


@pytest.mark.parametrize("laplacian", ["normalized", "combinatorial"])
def test_bases_are_orthonormal(laplacian):
    basis = compute_spectral_basis(random_centers(), SpectralOptions(laplacian=laplacian))
    assert basis.global_basis.shape == (3, 64, 64)
    assert basis.local_basis.shape == (3, 2, 32, 32)
    for u in (basis.global_basis, basis.local_basis):
        assert_identity(u.mT @ u)
        assert_identity(u @ u.mT)


def test_eigenvalues_ascending_and_normalized_range():
    basis = compute_spectral_basis(random_centers())
    for values in (basis.global_eigenvalues, basis.local_eigenvalues):
        assert (values.diff(dim=-1) >= 0).all()
        assert values.min() >= -1e-5 and values.max() <= 2 + 1e-5


def test_sample_basis_does_not_depend_on_its_batch():
    alone = random_centers(batch=1, seed=1)
    batch = torch.cat([alone, random_centers(1, seed=2, scale=0.01), random_centers(1, seed=3, scale=50.0)])
    single, batched = compute_spectral_basis(alone), compute_spectral_basis(batch)
    for name in ("global_basis", "global_eigenvalues", "local_basis", "local_eigenvalues"):
        torch.testing.assert_close(getattr(batched, name)[:1], getattr(single, name), atol=1e-6, rtol=0)
    assert torch.equal(batched.order[:1], single.order)


def test_batch_dmin_scope_depends_on_the_batch():
    """Official quirk Q3: one d_min for the whole call, so a denser neighbour changes a sample's graph."""
    options = SpectralOptions(dmin_scope="batch")
    alone = random_centers(batch=1, seed=1)
    batch = torch.cat([alone, random_centers(1, seed=2, scale=0.01)])
    single, batched = compute_spectral_basis(alone, options), compute_spectral_basis(batch, options)
    assert not torch.allclose(batched.global_eigenvalues[:1], single.global_eigenvalues, atol=1e-3)
    assert not torch.allclose(batched.local_eigenvalues[:1], single.local_eigenvalues, atol=1e-3)
    # the per-sample default gives the same basis in both cases
    torch.testing.assert_close(
        compute_spectral_basis(batch).global_eigenvalues[:1], compute_spectral_basis(alone).global_eigenvalues
    )


def test_adjacency_hand_check():
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # d = 1, 2, sqrt(5); d_min = 1
    s5 = 1 / math.sqrt(5)
    expected = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, s5], [0.5, s5, 1.0]])
    torch.testing.assert_close(graph_adjacency(centers[None, None])[0, 0], expected)
    # scaling the cloud leaves W unchanged (d_min scales with it)
    torch.testing.assert_close(graph_adjacency(3 * centers[None, None])[0, 0], expected)


def test_normalized_laplacian_hand_check():
    w = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 0.2], [0.5, 0.2, 1.0]])
    inv_sqrt = 1 / torch.sqrt(w.sum(-1) + 1e-6)
    expected = torch.eye(3) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
    torch.testing.assert_close(graph_laplacian(w), expected)


def test_combinatorial_laplacian_rows_sum_to_zero():
    adjacency = graph_adjacency(random_centers()[:, None])
    laplacian = graph_laplacian(adjacency, "combinatorial")
    torch.testing.assert_close(laplacian.sum(-1), torch.zeros(3, 1, 64), atol=1e-4, rtol=0)
    torch.testing.assert_close(laplacian, laplacian.mT)


@pytest.mark.parametrize("laplacian", ["normalized", "combinatorial"])
def test_coincident_centres_give_finite_bases(laplacian):
    duplicated = random_centers(batch=1)
    duplicated[0, 1::2] = duplicated[0, ::2]  # every centre appears twice
    identical = torch.full((1, 64, 3), 0.25)
    centers = torch.cat([duplicated, identical])
    adjacency = graph_adjacency(centers[:, None])
    assert torch.isfinite(adjacency).all() and adjacency.max() == 1.0
    assert adjacency[0, 0, 0, 1] == 1.0  # a duplicate pair weighs like the closest pair
    basis = compute_spectral_basis(centers, SpectralOptions(laplacian=laplacian))
    for u in (basis.global_basis, basis.local_basis, basis.global_eigenvalues, basis.local_eigenvalues):
        assert torch.isfinite(u).all()
    assert_identity(basis.global_basis.mT @ basis.global_basis)
    assert_identity(basis.local_basis.mT @ basis.local_basis)


def test_order_is_a_permutation_along_the_curve():
    centers = random_centers(groups=128)
    basis = compute_spectral_basis(centers)
    arange = torch.arange(128).expand(3, -1)
    assert torch.equal(basis.order.gather(1, basis.inverse_order), arange)
    assert torch.equal(basis.inverse_order.gather(1, basis.order), arange)
    keys = curve_key(centers, "z_order").gather(1, basis.order)
    assert (keys.diff(dim=1) >= 0).all()


def test_local_graphs_are_consecutive_curve_chunks():
    centers = random_centers(batch=2, groups=128)
    basis = compute_spectral_basis(centers)
    x = torch.randn(2, 128, 6)
    coefficients = basis.to_spectral_local(x)
    for b in range(2):
        chunks = basis.order[b].reshape(4, 32)
        # each chunk's basis is the eigenbasis of the graph over exactly those centres
        laplacian = graph_laplacian(graph_adjacency(centers[b, chunks][None]))[0]
        u = basis.local_basis[b]
        eigenvalues = torch.diag_embed(basis.local_eigenvalues[b])
        torch.testing.assert_close(u.mT @ laplacian @ u, eigenvalues, atol=1e-5, rtol=0)
        for j, chunk in enumerate(chunks):
            torch.testing.assert_close(coefficients[b, j], u[j].mT @ x[b, chunk])


def test_float64_eigh_returns_caller_dtype(monkeypatch):
    eigh_dtypes = []
    eigh = torch.linalg.eigh

    def recording_eigh(matrix):
        eigh_dtypes.append(matrix.dtype)
        return eigh(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", recording_eigh)
    centers = random_centers()
    basis = compute_spectral_basis(centers, SpectralOptions(eigh_dtype="float64"))
    assert set(eigh_dtypes) == {torch.float64} and len(eigh_dtypes) >= 2  # global and local graphs (maybe in chunks)
    assert basis.global_basis.dtype == basis.local_basis.dtype == basis.global_eigenvalues.dtype == torch.float32
    float32 = compute_spectral_basis(centers)
    torch.testing.assert_close(basis.global_eigenvalues, float32.global_eigenvalues, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_eigh_split_over_threads_equals_one_single_threaded_call(batch):
    matrices = torch.randn(batch, 2, 48, 48, generator=torch.Generator().manual_seed(batch))
    matrices = matrices + matrices.mT
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = torch.linalg.eigh(matrices)
    finally:
        torch.set_num_threads(threads)
    values, vectors = eigh(matrices)
    assert torch.equal(values, expected[0]) and torch.equal(vectors, expected[1])
    assert torch.get_num_threads() == threads

def _eigh_values_in_child(queue) -> None:
    torch.set_num_threads(2)
    matrices = torch.eye(8).expand(4, 8, 8) * 2
    queue.put(eigh(matrices)[0].sum().item())


def test_eigh_works_in_a_forked_child_of_a_process_that_used_its_threads():
    """The thread pool is per process: a child forked after the parent's pool started must not wait on threads that
    fork did not copy."""
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eigh(torch.eye(8).expand(4, 8, 8).contiguous())  # the parent's pool of 2 threads now exists
    finally:
        torch.set_num_threads(threads)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_eigh_values_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "eigh hung in the forked child"
    assert queue.get(timeout=5) == pytest.approx(64.0)



def test_no_gradient_reaches_the_centres():
    centers = random_centers().requires_grad_()
    basis = compute_spectral_basis(centers)
    assert not basis.global_basis.requires_grad and not basis.local_basis.requires_grad


@pytest.mark.parametrize("groups", [48, 16])
def test_group_count_not_multiple_of_local_size_raises(groups):
    with pytest.raises(ValueError, match=rf"G={groups}.*k=32.*multiple of local_size"):
        compute_spectral_basis(random_centers(groups=groups))


@pytest.mark.parametrize(
    "centers, match",
    [
        (torch.zeros(64, 3), r"\(B, N, 3\)"),
        (torch.zeros(2, 64, 4), "3 coordinates"),
        (torch.zeros(2, 64, 3, dtype=torch.int64), "floating-point"),
        (torch.full((2, 64, 3), float("nan")), "NaN"),
        (torch.zeros(2, 0, 3), "has 0 points"),
    ],
)
def test_bad_centres_raise(centers, match):
    with pytest.raises(ValueError, match=match):
        compute_spectral_basis(centers)


@pytest.mark.parametrize(
    "field, value",
    [("curve", "peano"), ("laplacian", "random_walk"), ("dmin_scope", "global"), ("gft_mode", "U"),
     ("eigh_dtype", "float16"), ("eigh_dtype", torch.float64), ("distance", "euclidean"), ("local_size", 0)],
)
def test_bad_options_raise(field, value):
    with pytest.raises(ValueError, match=field):
        SpectralOptions(**{field: value})


def test_unknown_option_lists_choices():
    with pytest.raises(ValueError, match="'paper', 'official_code'"):
        SpectralOptions(gft_mode="U")


def test_signal_of_wrong_shape_raises():
    basis = compute_spectral_basis(random_centers())
    with pytest.raises(ValueError, match="G=64"):
        basis.to_spectral_local(torch.randn(3, 65, 4))


def test_eigh_dtypes_are_named():
    """eigh_dtype is a name (a torch dtype is refused above): EIGH_DTYPES maps each name to its dtype."""
    assert EIGH_DTYPES == {"float32": torch.float32, "float64": torch.float64}
    assert SpectralOptions().eigh_dtype == "float32" and SpectralOptions().distance == "exact"


# --------------------------------------------------------------------------- distance: "exact" and "cdist"


def former_adjacency(centers: torch.Tensor, dmin_scope: str) -> torch.Tensor:
    """The adjacency before the distance option, (B, M, n, 3) -> (B, M, n, n): ``d_min / d_ij`` where
    ``d_ij > 0``, 1 on the diagonal and for coincident centres; d_min per sample or over the whole tensor."""
    dist = (centers.unsqueeze(-2) - centers.unsqueeze(-3)).square().sum(-1).sqrt()
    positive = dist > 0
    dims = (1, 2, 3) if dmin_scope == "sample" else (0, 1, 2, 3)
    d_min = torch.where(positive, dist, torch.inf).amin(dim=dims, keepdim=True)
    d_min = torch.where(torch.isinf(d_min), 1.0, d_min)
    return torch.where(positive, d_min / torch.where(positive, dist, 1.0), 1.0)


def single_threaded_eigh(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The solver call the library makes (one LAPACK thread on the CPU: the thread count can change the last bits);
    the reference's formulas above it are this file's own."""
    return eigh(matrices)


@pytest.mark.parametrize("dmin_scope", ["sample", "batch"])
def test_exact_distance_adjacency_is_unchanged(dmin_scope):
    """distance="exact" (the default) keeps the former construction bit for bit, coincident centres included."""
    centers = random_centers(batch=3, groups=64).unflatten(1, (2, 32))  # (B, M, n, 3)
    centers[1, 0, 1::2] = centers[1, 0, ::2]  # coincident pairs
    centers[2] = 0.5  # one sample with every centre at one point
    expected = former_adjacency(centers, dmin_scope)
    assert torch.equal(graph_adjacency(centers, dmin_scope), expected)
    assert torch.equal(graph_adjacency(centers, dmin_scope, distance="exact"), expected)
    # and so are the bases built from it
    options = SpectralOptions(dmin_scope=dmin_scope)
    flat = random_centers(batch=3, groups=64)
    basis = compute_spectral_basis(flat, options)
    values, vectors = single_threaded_eigh(graph_laplacian(former_adjacency(flat[:, None], dmin_scope)))
    assert torch.equal(basis.global_basis, vectors[:, 0]) and torch.equal(basis.global_eigenvalues, values[:, 0])


def official_graph_eigh(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official construction, written from its formulas, for graphs ``(N, n, 3)``: ``L = cdist``, ``d_min`` the
    smallest positive entry of the whole tensor, ``W = 1 / (L / d_min + I)``, ``I - D^-1/2 W D^-1/2`` with
    ``D^-1/2 = diag(rsqrt(rowsum + 1e-6))`` as matrix products, eigh in float32."""
    distances = torch.cdist(stack, stack)
    d_min = distances[distances > 0].min()
    eye = torch.eye(stack.shape[1])
    weights = 1 / (distances / d_min + eye)
    inv_sqrt = torch.diag_embed(torch.rsqrt(weights.sum(-1) + 1e-6))
    return single_threaded_eigh(eye - inv_sqrt @ weights @ inv_sqrt)


def test_cdist_distance_reproduces_the_official_construction():
    """distance="cdist" with dmin_scope="batch": bitwise the bases of the official formulas on the CPU."""
    centers = random_centers(batch=3, groups=64)
    options = SpectralOptions(dmin_scope="batch", distance="cdist")
    basis = compute_spectral_basis(centers, options)

    global_values, global_vectors = official_graph_eigh(centers)  # the (B * 1, G, 3) stack
    order = torch.argsort(curve_key(centers, "z_order"), dim=1, stable=True)
    local_centers = torch.stack([centers[b, order[b]] for b in range(3)]).reshape(3 * 2, 32, 3)
    local_values, local_vectors = official_graph_eigh(local_centers)

    assert torch.equal(basis.order, order)
    assert torch.equal(basis.global_basis, global_vectors)
    assert torch.equal(basis.global_eigenvalues, global_values)
    assert torch.equal(basis.local_basis, local_vectors.reshape(3, 2, 32, 32))
    assert torch.equal(basis.local_eigenvalues, local_values.reshape(3, 2, 32))


def test_cdist_distances_and_round_off():
    """pairwise_distances: "cdist" is torch.cdist on the (B * M, n, 3) stack, whose matrix-product path (above 25
    points) may leave round-off on the diagonal (what makes the official d_min tiny, quirk Q18); "exact" has an
    exactly zero diagonal."""
    centers = random_centers(batch=2, groups=64).unflatten(1, (2, 32))
    cdist = pairwise_distances(centers, "cdist")
    stack = centers.reshape(4, 32, 3)
    assert torch.equal(cdist, torch.cdist(stack, stack).reshape(2, 2, 32, 32))
    exact = pairwise_distances(centers)
    assert torch.equal(exact.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 2, 32))
    torch.testing.assert_close(cdist, exact, atol=1e-3, rtol=0)  # the round-off is small, the diagonal included
    with pytest.raises(ValueError, match="distance"):
        pairwise_distances(centers, "manhattan")
