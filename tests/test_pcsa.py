"""The Point Cloud Spectral Adapter (PCSA)."""

import pytest
import torch
import torch.nn.functional as F

from pointgst.adapters.pcsa import PCSA, PCSAConfig
from pointgst.geometry import TokenGeometry
from pointgst.spectral import SpectralBasis, SpectralOptions, compute_spectral_basis

DIM, GROUPS, SPECIAL = 48, 64, 2


def random_centers(batch: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, GROUPS, 3, generator=generator) * 2 - 1


def random_tokens(batch: int = 3, seed: int = 1) -> torch.Tensor:
    """(batch, SPECIAL + GROUPS, DIM): special tokens first, then point tokens."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SPECIAL + GROUPS, DIM, generator=generator)


def geometry_of(centers: torch.Tensor) -> TokenGeometry:
    """The token geometry a backbone would pass with ``centers`` and SPECIAL leading tokens."""
    return TokenGeometry(centers, SPECIAL)


def trained_pcsa(dim: int = DIM, seed: int = 2, spectral: SpectralOptions = SpectralOptions()) -> PCSA:
    """A PCSA with every parameter random, as after some training."""
    torch.manual_seed(seed)
    pcsa = PCSA(dim, rank=8, spectral=spectral)
    with torch.no_grad():
        for parameter in pcsa.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return pcsa


def reference_forward(pcsa: PCSA, x: torch.Tensor, basis: SpectralBasis, b: int) -> torch.Tensor:
    """The PCSA formula for sample b, written out with explicit matrices and a loop over local graphs."""
    paper = basis.gft_mode == "paper"

    def forward(u, signal):
        return (u.T if paper else u) @ signal

    def inverse(u, coefficients):
        return (u if paper else u.T) @ coefficients

    def spectral_update(f, norm):
        normed = F.layer_norm(f, (pcsa.rank,), norm.weight, norm.bias)
        return f + F.silu(normed @ pcsa.adapt1.weight.T + pcsa.adapt1.bias)

    g, k = basis.num_nodes, basis.local_size
    h = x[b] @ pcsa.down.weight.T + pcsa.down.bias
    s = h[-g:]
    u = basis.global_basis[b]
    s_global = inverse(u, spectral_update(forward(u, s), pcsa.norm_ly1))
    s_local = torch.zeros_like(s)
    for j in range(g // k):
        chunk = basis.order[b, j * k:(j + 1) * k]
        u_j = basis.local_basis[b, j]
        s_local[chunk] = inverse(u_j, spectral_update(forward(u_j, s[chunk]), pcsa.norm_ly2))
    a = F.silu(h)
    a = torch.cat([a[:-g], a[-g:] + s_global + s_local])
    return a @ pcsa.up.weight.T + pcsa.up.bias


@pytest.mark.parametrize("dim, count", [(384, 29_544), (1024, 76_264)])
def test_parameter_count(dim, count):
    pcsa = PCSA(dim)
    assert sum(p.numel() for p in pcsa.parameters()) == count == 2 * dim * 36 + dim + 36 + 36**2 + 36 + 4 * 36


def test_state_dict_keys_match_official_gft_adapter():
    expected = {f"{name}.{p}" for name in ("down", "up", "adapt1", "norm_ly1", "norm_ly2") for p in ("weight", "bias")}
    assert set(PCSA(384).state_dict()) == expected


def test_output_is_exactly_zero_at_init():
    pcsa = PCSA(DIM)
    out = pcsa(random_tokens(), geometry_of(random_centers()))
    assert out.shape == (3, SPECIAL + GROUPS, DIM)
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_start_at_up_then_reach_adapt1():
    pcsa = PCSA(DIM)
    x, geometry = random_tokens(), geometry_of(random_centers())
    target = torch.randn(3, SPECIAL + GROUPS, DIM)

    def backward() -> None:
        pcsa.zero_grad()
        (pcsa(x, geometry) * target).sum().backward()

    backward()
    assert pcsa.up.weight.grad.abs().sum() > 0
    for parameter in (*pcsa.adapt1.parameters(), *pcsa.down.parameters()):
        assert torch.equal(parameter.grad, torch.zeros_like(parameter))
    torch.optim.SGD(pcsa.up.parameters(), lr=0.1).step()
    backward()
    assert pcsa.adapt1.weight.grad.abs().sum() > 0 and pcsa.adapt1.bias.grad.abs().sum() > 0


def test_special_tokens_only_get_the_bottleneck():
    pcsa = trained_pcsa()
    x, geometry = random_tokens(), geometry_of(random_centers())
    out = pcsa(x, geometry)
    special = x[:, :SPECIAL]
    torch.testing.assert_close(out[:, :SPECIAL], pcsa.up(F.silu(pcsa.down(special))))
    # special tokens are not graph nodes: changing them leaves every point-token output unchanged
    changed = torch.cat([special + torch.randn_like(special), x[:, SPECIAL:]], dim=1)
    assert torch.equal(pcsa(changed, geometry)[:, SPECIAL:], out[:, SPECIAL:])


@pytest.mark.parametrize("gft_mode", ["paper", "official_code"])
def test_matches_loop_reference(gft_mode):
    options = SpectralOptions(gft_mode=gft_mode)
    pcsa = trained_pcsa(spectral=options)
    x, centers = random_tokens(), random_centers()
    basis = compute_spectral_basis(centers, options)  # the basis the geometry builds for the same options
    out = pcsa(x, geometry_of(centers))
    for b in range(3):
        torch.testing.assert_close(out[b], reference_forward(pcsa, x, basis, b), atol=1e-5, rtol=1e-5)


def test_works_without_special_tokens():
    pcsa = trained_pcsa()
    x, centers = random_tokens()[:, SPECIAL:], random_centers()
    basis = compute_spectral_basis(centers, pcsa.spectral)
    out = pcsa(x, TokenGeometry(centers))
    for b in range(3):
        torch.testing.assert_close(out[b], reference_forward(pcsa, x, basis, b), atol=1e-5, rtol=1e-5)


def test_sample_output_does_not_depend_on_its_batch():
    pcsa = trained_pcsa()
    x, centers = random_tokens(), random_centers()
    centers[1:] *= torch.tensor([0.01, 30.0])[:, None, None]
    batched = pcsa(x, geometry_of(centers))
    single = pcsa(x[:1], geometry_of(centers[:1]))
    torch.testing.assert_close(batched[:1], single, atol=1e-6, rtol=0)


def test_coincident_centres_give_finite_outputs_and_gradients():
    pcsa = trained_pcsa()
    centers = random_centers(batch=2)
    centers[0, 1::2] = centers[0, ::2]
    centers[1] = 0.5
    x = random_tokens(batch=2).requires_grad_()
    out = pcsa(x, geometry_of(centers))
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pcsa.parameters())


@pytest.mark.parametrize("shape", [(3, GROUPS - 1, DIM), (3, SPECIAL + GROUPS, DIM + 1), (SPECIAL + GROUPS, DIM)])
def test_bad_token_shapes_raise(shape):
    with pytest.raises(ValueError, match="G=64"):
        PCSA(DIM)(torch.randn(shape), geometry_of(random_centers()))


def test_adapters_share_one_basis_per_forward_and_options():
    """Every PCSA of a forward reads its basis from the geometry: built once per spectral options (a PCSAConfig's
    extra fields do not count), equal to compute_spectral_basis of the centres for those options."""
    x, centers = random_tokens(), random_centers()
    geometry = geometry_of(centers)
    first, second = trained_pcsa(seed=2), trained_pcsa(seed=3, spectral=PCSAConfig(rank=8).spectral_options())
    first(x, geometry)
    second(x, geometry)
    assert geometry.computations == 1
    assert geometry.spectral_basis(PCSAConfig(rank=4)) is geometry.spectral_basis(SpectralOptions())
    official = SpectralOptions(dmin_scope="batch", gft_mode="official_code", distance="cdist")
    out = trained_pcsa(spectral=official)(x, geometry)
    assert geometry.computations == 2
    expected = compute_spectral_basis(centers, official)
    built = geometry.spectral_basis(official)
    for name in ("global_basis", "local_basis", "order"):
        assert torch.equal(getattr(built, name), getattr(expected, name))
    for b in range(3):
        torch.testing.assert_close(out[b], reference_forward(trained_pcsa(spectral=official), x, expected, b),
                                   atol=1e-5, rtol=1e-5)


def test_pcsa_is_exported_from_its_package():
    import pointgst.adapters
    from pointgst.adapters.pcsa import module

    assert pointgst.adapters.PCSA is module.PCSA is PCSA
