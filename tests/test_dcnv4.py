"""DCNv4 in pure PyTorch: the 2-D core op and module against hand-written loop references, and the point layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pointgst.adapters.dcnv4 import DCNv4, DeformablePointLayer, dcnv4_output_size, dcnv4_sample
from pointgst.geometry import TokenGeometry

# --------------------------------------------------------------------------- 2-D references


def grid_points(kernel_size: int, remove_center: bool) -> list[tuple[int, int]]:
    """(i, j) = (x index, y index) of every sampling point, x outer, y inner (the official kernel order)."""
    middle = kernel_size // 2
    return [
        (i, j)
        for i in range(kernel_size)
        for j in range(kernel_size)
        if not (remove_center and i == middle and j == middle)
    ]


def bilinear_zero_padded(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear sample of an (H, W, D) image at pixel coordinates (y, x); corners outside the image count as 0."""
    height, width = image.shape[:2]
    y0, x0 = math.floor(y), math.floor(x)
    acc = torch.zeros(image.shape[2], dtype=image.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                acc = acc + wy * wx * image[yy, xx]
    return acc


def reference_sample(
    value, offset_mask, group, kernel_size=3, stride=1, pad=1, dilation=1, scale=1.0, remove_center=False
):
    """The DCNv4 formula, one output pixel, group and sampling point at a time."""
    batch, height, width, channels = value.shape
    d = channels // group
    c = dilation * (kernel_size - 1) // 2
    h_out = (height + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1
    w_out = (width + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1
    points = grid_points(kernel_size, remove_center)
    k = len(points)
    out = torch.zeros(batch, h_out, w_out, channels, dtype=value.dtype)
    for b in range(batch):
        for yo in range(h_out):
            for xo in range(w_out):
                for g in range(group):
                    base = g * k * 3
                    image = value[b, :, :, g * d : (g + 1) * d]
                    for n, (i, j) in enumerate(points):
                        dx = offset_mask[b, yo, xo, base + 2 * n].item()
                        dy = offset_mask[b, yo, xo, base + 2 * n + 1].item()
                        m = offset_mask[b, yo, xo, base + 2 * k + n].item()
                        x = xo * stride - pad + c + scale * (i * dilation - c + dx)
                        y = yo * stride - pad + c + scale * (j * dilation - c + dy)
                        out[b, yo, xo, g * d : (g + 1) * d] += m * bilinear_zero_padded(image, y, x)
    return out


def random_offset_mask(batch, h_out, w_out, group, k, *, spread=2.5, tail=5, dtype=torch.float64):
    """Random offsets of a few pixels (some land outside the image), random signed masks, garbage padding tail."""
    om = torch.randn(batch, h_out, w_out, group * k * 3 + tail, dtype=dtype)
    per_group = om[..., : group * k * 3].view(batch, h_out, w_out, group, 3 * k)
    per_group[..., : 2 * k] *= spread
    return om


CONFIGS = [  # (kernel_size, stride, pad, dilation, offset_scale, remove_center)
    (3, 1, 1, 1, 1.0, False),
    (3, 1, 1, 1, 2.0, False),
    (3, 2, 1, 1, 1.0, False),
    (3, 1, 2, 2, 0.5, False),
    (3, 1, 1, 1, 1.0, True),
    (5, 1, 2, 1, 1.0, False),
]


@pytest.mark.parametrize("kernel_size, stride, pad, dilation, scale, remove_center", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_matches_loop_reference(kernel_size, stride, pad, dilation, scale, remove_center, dtype):
    group, d, height, width = 2, 3, 5, 4  # non-square: catches x/y swaps
    value = torch.randn(2, height, width, group * d, dtype=torch.float64)
    h_out = dcnv4_output_size(height, kernel_size, stride, pad, dilation)
    w_out = dcnv4_output_size(width, kernel_size, stride, pad, dilation)
    k = kernel_size**2 - remove_center
    om = random_offset_mask(2, h_out, w_out, group, k)
    kwargs = dict(group=group, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation)
    out = dcnv4_sample(value.to(dtype), om.to(dtype), offset_scale=scale, remove_center=remove_center, **kwargs)
    expected = reference_sample(value, om, scale=scale, remove_center=remove_center, **kwargs)
    assert out.shape == expected.shape == (2, h_out, w_out, group * d)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("kernel_size, stride, pad, dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (5, 1, 2, 1)])
def test_zero_offsets_are_a_modulated_grid_sampling(kernel_size, stride, pad, dilation):
    """offsets = 0 -> out = sum_k m_k value[p0 + grid_k]: compare with F.unfold (rows = y, columns = x)."""
    batch, group, d, height, width = 2, 2, 3, 6, 5
    value = torch.randn(batch, height, width, group * d, dtype=torch.float64)
    h_out = dcnv4_output_size(height, kernel_size, stride, pad, dilation)
    w_out = dcnv4_output_size(width, kernel_size, stride, pad, dilation)
    k = kernel_size**2
    mask = torch.randn(batch, h_out, w_out, group, k, dtype=torch.float64)
    om = torch.cat([torch.zeros(batch, h_out, w_out, group, 2 * k, dtype=torch.float64), mask], -1).flatten(-2)
    out = dcnv4_sample(value, om, group=group, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation)

    cols = F.unfold(value.permute(0, 3, 1, 2), kernel_size, dilation=dilation, padding=pad, stride=stride)
    cols = cols.view(batch, group, d, kernel_size, kernel_size, h_out, w_out)  # (..., row j, column i, ...)
    m = mask.view(batch, h_out, w_out, group, kernel_size, kernel_size)  # (..., i (x, outer), j (y, inner))
    expected = torch.einsum("byxgij,bgdjiyx->byxgd", m, cols).reshape(batch, h_out, w_out, group * d)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_offset_scale_scales_grid_and_offsets():
    """q = p0 + s (grid + delta) == p0 + (grid + delta') with delta' = s (grid + delta) - grid."""
    group, k = 2, 9
    value = torch.randn(1, 5, 6, 4, dtype=torch.float64)
    om = random_offset_mask(1, 5, 6, group, k, tail=0)
    grid = torch.tensor([(i - 1, j - 1) for i, j in grid_points(3, False)], dtype=torch.float64)  # (K, 2) as (x, y)
    scale = 1.7
    per_group = om.view(1, 5, 6, group, 3 * k)
    offsets = per_group[..., : 2 * k].reshape(1, 5, 6, group, k, 2)
    unscaled = torch.cat([(scale * (grid + offsets) - grid).flatten(-2), per_group[..., 2 * k :]], -1).flatten(-2)
    torch.testing.assert_close(
        dcnv4_sample(value, om, group=group, offset_scale=scale), dcnv4_sample(value, unscaled, group=group)
    )
    # 1x1 kernel (no grid): the scale multiplies the displacement alone
    om1 = random_offset_mask(1, 5, 6, group, 1, tail=0)
    doubled = om1.view(1, 5, 6, group, 3).clone()
    doubled[..., :2] *= 2
    torch.testing.assert_close(
        dcnv4_sample(value, om1, group=group, kernel_size=1, pad=0, offset_scale=2.0),
        dcnv4_sample(value, doubled.flatten(-2), group=group, kernel_size=1, pad=0),
    )


def grid_sample_reference(value, offset_mask, group, kernel_size, stride, pad, dilation, scale, remove_center):
    """The procedure of the official ``dcnv3_core_pytorch`` (fed raw masks): pad the input, normalised reference
    points and dilation grid, ``F.grid_sample(bilinear, zeros, align_corners=False)``."""
    batch, _, _, channels = value.shape
    d = channels // group
    padded = F.pad(value, [0, 0, pad, pad, pad, pad])
    hp, wp = padded.shape[1:3]
    c = dilation * (kernel_size - 1) // 2
    h_out = (hp - dilation * (kernel_size - 1) - 1) // stride + 1
    w_out = (wp - dilation * (kernel_size - 1) - 1) // stride + 1
    points = grid_points(kernel_size, remove_center)
    k = len(points)
    ref_y = (c + 0.5 + torch.arange(h_out, dtype=value.dtype) * stride) / hp
    ref_x = (c + 0.5 + torch.arange(w_out, dtype=value.dtype) * stride) / wp
    grid_x = torch.tensor([i * dilation - c for i, _ in points], dtype=value.dtype) / wp
    grid_y = torch.tensor([j * dilation - c for _, j in points], dtype=value.dtype) / hp
    per_group = offset_mask[..., : group * k * 3].reshape(batch, h_out, w_out, group, 3 * k)
    offsets = per_group[..., : 2 * k].reshape(batch, h_out, w_out, group, k, 2)
    loc_x = ref_x.view(1, 1, -1, 1, 1) + grid_x * scale + offsets[..., 0] * scale / wp
    loc_y = ref_y.view(1, -1, 1, 1, 1) + grid_y * scale + offsets[..., 1] * scale / hp
    grid = (2 * torch.stack([loc_x, loc_y], -1) - 1).permute(0, 3, 1, 2, 4, 5).reshape(batch * group, -1, k, 2)
    images = padded.reshape(batch, hp, wp, group, d).permute(0, 3, 4, 1, 2).reshape(batch * group, d, hp, wp)
    sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = per_group[..., 2 * k :].permute(0, 3, 1, 2, 4).reshape(batch * group, 1, -1, k)
    out = (sampled * mask).sum(-1).view(batch, group, d, h_out, w_out)
    return out.permute(0, 3, 4, 1, 2).reshape(batch, h_out, w_out, channels)


@pytest.mark.parametrize("kernel_size, stride, pad, dilation, scale, remove_center", CONFIGS)
def test_sample_matches_official_grid_sample_procedure(kernel_size, stride, pad, dilation, scale, remove_center):
    group, height, width = 2, 7, 6
    value = torch.randn(2, height, width, group * 4, dtype=torch.float64)
    h_out = dcnv4_output_size(height, kernel_size, stride, pad, dilation)
    w_out = dcnv4_output_size(width, kernel_size, stride, pad, dilation)
    om = random_offset_mask(2, h_out, w_out, group, kernel_size**2 - remove_center)
    args = (group, kernel_size, stride, pad, dilation, scale, remove_center)
    out = dcnv4_sample(
        value, om, group=group, kernel_size=kernel_size, stride=stride, pad=pad, dilation=dilation,
        offset_scale=scale, remove_center=remove_center,
    )  # fmt: skip
    torch.testing.assert_close(out, grid_sample_reference(value, om, *args), rtol=0, atol=1e-10)


def test_sample_gradients_match_finite_differences():
    value = torch.randn(1, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    om = random_offset_mask(1, 3, 3, 2, 9, tail=0).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, o: dcnv4_sample(v, o, group=2), (value, om))


def randomise(module: torch.nn.Module, std: float = 0.5) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, std)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"remove_center": True, "offset_scale": 0.5},
        {"dilation": 2, "pad": 2, "dw_kernel_size": 3, "center_feature_scale": True, "output_bias": False},
        {"without_pointwise": True, "kernel_size": 5, "pad": 2},
    ],
)
def test_module_matches_reference(options):
    module = DCNv4(channels=32, group=2, **options).double()
    randomise(module)
    x = torch.randn(2, 5, 4, 32, dtype=torch.float64)
    out = module(x)

    value = x if module.without_pointwise else module.value_proj(x)
    source = x
    if module.dw_kernel_size is not None:
        source = module.offset_mask_dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    with torch.no_grad():
        expected = reference_sample(
            value,
            module.offset_mask(source),
            2,
            kernel_size=module.kernel_size,
            pad=module.pad,
            dilation=module.dilation,
            scale=module.offset_scale,
            remove_center=bool(module.remove_center),
        )
        if module.center_feature_scale:
            weight, bias = module.center_feature_scale_proj_weight, module.center_feature_scale_proj_bias
            gate = torch.sigmoid(expected @ weight.T + bias)
            gate = gate.repeat_interleave(16, dim=-1)
            expected = (1 - gate) * expected + gate * value
        if not module.without_pointwise:
            expected = module.output_proj(expected)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    # the official (B, L, C) calling convention gives the same numbers
    torch.testing.assert_close(module(x.reshape(2, 20, 32), shape=(5, 4)), out.reshape(2, 20, 32))


def test_module_official_parameter_names_and_count():
    module = DCNv4(channels=64, group=4)
    padded = math.ceil(3 * 4 * 9 / 8) * 8
    assert module.offset_mask.out_features == padded == 112
    assert set(module.state_dict()) == {
        "offset_mask.weight", "offset_mask.bias", "value_proj.weight", "value_proj.bias",
        "output_proj.weight", "output_proj.bias",
    }  # fmt: skip
    assert sum(p.numel() for p in module.parameters()) == 64 * padded + padded + 2 * (64 * 64 + 64) == 15_600
    full = DCNv4(channels=64, group=4, dw_kernel_size=3, center_feature_scale=True)
    assert {"offset_mask_dw.weight", "center_feature_scale_proj_weight", "center_feature_scale_proj_bias"} <= set(
        full.state_dict()
    )


def test_module_is_zero_at_init_and_masks_get_gradient():
    module = DCNv4(channels=32, group=2)
    x = torch.randn(2, 4, 4, 32)
    out = module(x)
    assert torch.equal(out, torch.zeros_like(out))
    (out * torch.randn_like(out)).sum().backward()
    grad = module.offset_mask.bias.grad[: 2 * 27].view(2, 27)
    assert grad[:, 18:].abs().sum() > 0  # masks learn at step 0
    assert torch.equal(grad[:, :18], torch.zeros_like(grad[:, :18]))  # offsets: gradient is proportional to the mask


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 64, "group": 3}, "divisible by group"),
        ({"channels": 48, "group": 4}, "multiple of 16"),
        ({"channels": 64, "group": 0}, "group must be an int"),
        ({"channels": 64, "stride": 2}, "keep the input size"),
        ({"channels": 64, "pad": 0}, "keep the input size"),
        ({"channels": 64, "kernel_size": 4, "pad": 1, "remove_center": True}, "keep the input size"),
        ({"channels": 64, "dw_kernel_size": 2}, "odd"),
    ],
)
def test_module_rejects_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DCNv4(**kwargs)


def test_module_rejects_misspelled_arguments():
    with pytest.raises(TypeError):
        DCNv4(channels=64, groups=4)  # the official **kwargs silently ignored this (issue #97)


def test_module_rejects_invalid_inputs():
    module = DCNv4(channels=32, group=2)
    with pytest.raises(ValueError, match="image or"):
        module(torch.randn(2, 32))
    with pytest.raises(ValueError, match="C=32"):
        module(torch.randn(2, 4, 4, 16))
    with pytest.raises(ValueError, match="H\\*W = L"):
        module(torch.randn(2, 10, 32))  # L = 10 is not a square and no shape was given
    with pytest.raises(ValueError, match="floating-point"):
        module(torch.ones(2, 4, 4, 32, dtype=torch.int64))


def test_sample_rejects_invalid_inputs():
    value = torch.randn(1, 4, 4, 6)
    om = torch.zeros(1, 4, 4, 2 * 9 * 3)
    with pytest.raises(ValueError, match="divisible by group"):
        dcnv4_sample(value, om, group=4)
    with pytest.raises(ValueError, match="offset_mask must have shape"):
        dcnv4_sample(value, om[:, :3], group=2)
    with pytest.raises(ValueError, match="offset_mask must have shape"):
        dcnv4_sample(value, om[..., :-1], group=2)
    with pytest.raises(ValueError, match="channels-last"):
        dcnv4_sample(value[0], om, group=2)
    with pytest.raises(ValueError, match="odd kernel_size"):
        dcnv4_sample(value, om, group=2, kernel_size=2, pad=0, remove_center=True)


def test_operator_and_point_layer_live_in_the_dcnv4_package():
    from pointgst.adapters.dcnv4 import op, point_layer

    assert (op.DCNv4, op.dcnv4_sample, op.dcnv4_output_size) == (DCNv4, dcnv4_sample, dcnv4_output_size)
    assert point_layer.DeformablePointLayer is DeformablePointLayer


# --------------------------------------------------------------------------- point layer

DIM, SPECIAL, GROUPS = 24, 2, 16  # GROUPS = point tokens per sample


def point_inputs(batch=3, groups=GROUPS, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, SPECIAL + groups, DIM, generator=generator, dtype=dtype)
    centers = torch.rand(batch, groups, 3, generator=generator, dtype=dtype) * 2 - 1
    return x, centers


def geometry_of(centers: torch.Tensor, special: int = SPECIAL) -> TokenGeometry:
    """The token geometry a backbone would pass with ``centers`` and ``special`` leading tokens."""
    return TokenGeometry(centers, special)


def small_layer(**kwargs) -> DeformablePointLayer:
    return DeformablePointLayer(DIM, hidden=8, groups=2, num_points=4, **kwargs).double()


def trained(layer: DeformablePointLayer) -> DeformablePointLayer:
    """Randomise every parameter, offsets of about half the local spacing."""
    randomise(layer, 0.3)
    return layer


def reference_point_layer(layer: DeformablePointLayer, x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The layer's formula for one sample (x (T, C), centers (G, 3)), one token, group and point at a time."""
    t, g = x.shape[0], centers.shape[0]
    k, heads, d, s = layer.num_points, layer.groups, layer.hidden // layer.groups, layer.offset_scale
    v = layer.value_proj(x[t - g :])
    om = layer.offset_mask(v)
    a = torch.zeros(g, layer.hidden, dtype=x.dtype)
    for i in range(g):
        dist = (centers - centers[i]).norm(dim=1)
        refs = sorted(range(g), key=lambda j: (dist[j].item(), j))[:k]
        sigma = dist[refs].mean()
        for h in range(heads):
            row = om[i, h * 4 * k : (h + 1) * 4 * k]
            for n in range(k):
                q = centers[i] + s * ((centers[refs[n]] - centers[i]) + sigma * row[3 * n : 3 * n + 3])
                dq = (centers - q).norm(dim=1)
                near = sorted(range(g), key=lambda j: (dq[j].item(), j))[:3]
                w = torch.stack([1 / (dq[j] ** 2 + layer.eps * sigma**2) for j in near])
                w = w / w.sum()
                f = sum(w[u] * v[j, h * d : (h + 1) * d] for u, j in enumerate(near))
                a[i, h * d : (h + 1) * d] += row[3 * k + n] * f
    return torch.cat([torch.zeros(t - g, layer.dim, dtype=x.dtype), layer.output_proj(a)])


def test_point_layer_is_exactly_zero_at_init_but_learns():
    layer = small_layer()
    x, centers = point_inputs()
    out = layer(x, geometry_of(centers))
    assert torch.equal(out, torch.zeros_like(out))
    target = torch.randn_like(out)
    (out * target).sum().backward()
    assert layer.offset_mask.weight.grad.abs().sum() > 0  # the modulation rows
    assert layer.offset_mask.bias.grad.abs().sum() > 0
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    with torch.no_grad():
        after = layer(x, geometry_of(centers))
    assert after[:, SPECIAL:].abs().amin(dim=-1).gt(0).all()  # every point token moved
    assert torch.equal(after[:, :SPECIAL], torch.zeros_like(after[:, :SPECIAL]))


def test_point_layer_special_tokens_get_zero():
    layer = trained(small_layer())
    x, centers = point_inputs()
    out = layer(x, geometry_of(centers))
    assert torch.equal(out[:, :SPECIAL], torch.zeros_like(out[:, :SPECIAL]))
    assert out[:, SPECIAL:].abs().sum() > 0
    # with no special tokens every token is a point token
    assert layer(x[:, SPECIAL:], geometry_of(centers, 0)).shape == (3, GROUPS, DIM)


@pytest.mark.parametrize("offset_scale", [1.0, 0.5])
def test_point_layer_matches_loop_reference(offset_scale):
    layer = trained(small_layer(offset_scale=offset_scale))
    x, centers = point_inputs()
    with torch.no_grad():
        out = layer(x, geometry_of(centers))
        for b in range(x.shape[0]):
            torch.testing.assert_close(out[b], reference_point_layer(layer, x[b], centers[b]), rtol=0, atol=1e-10)


def test_point_layer_float32_matches_reference():
    layer = trained(small_layer())
    x, centers = point_inputs()
    with torch.no_grad():
        out = layer.float()(x.float(), geometry_of(centers.float()))
        expected = reference_point_layer(layer.double(), x[0], centers[0])
    torch.testing.assert_close(out[0].double(), expected, rtol=0, atol=1e-5)


def test_point_layer_zero_offsets_and_one_hot_self_mask_gather_the_token():
    layer = small_layer(eps=1e-12)
    with torch.no_grad():
        bias = layer.offset_mask.bias.view(2, 16)
        bias[:, 12] = 1.0  # mask of point 0 (the token itself) in both groups
    x, centers = point_inputs()
    with torch.no_grad():
        expected = layer.output_proj(layer.value_proj(x[:, SPECIAL:]))
        torch.testing.assert_close(layer(x, geometry_of(centers))[:, SPECIAL:], expected, rtol=0, atol=1e-10)


def test_point_layer_offsets_get_gradient_once_masks_are_nonzero():
    layer = trained(small_layer())
    x, centers = point_inputs()
    layer(x, geometry_of(centers)).square().sum().backward()
    offset_rows = layer.offset_mask.weight.grad.view(2, 16, 8)[:, :12]
    assert offset_rows.abs().sum() > 0


def test_point_layer_coincident_centres_stay_finite():
    layer = trained(small_layer())
    x, centers = point_inputs()
    centers[0, 8:] = centers[0, 0]  # half the tokens of sample 0 share one centre
    centers[1] = centers[1, :1]  # sample 1: every centre identical (zero local scale)
    x.requires_grad_()
    out = layer(x, geometry_of(centers))
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_point_layer_batch_independence_and_equivariance():
    layer = trained(small_layer())
    x, centers = point_inputs()
    with torch.no_grad():
        batched = layer(x, geometry_of(centers))
        alone = layer(x[1:2], geometry_of(centers[1:2]))
        torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-12)
        # permuting the point tokens together with their centres permutes the output
        perm = torch.randperm(GROUPS)
        order = torch.cat([torch.arange(SPECIAL), SPECIAL + perm])
        permuted = layer(x[:, order], geometry_of(centers[:, perm]))
        torch.testing.assert_close(permuted, batched[:, order], rtol=0, atol=1e-12)
        # translating a cloud leaves the geometry path unchanged
        moved = centers + torch.tensor([0.3, -2.0, 5.0], dtype=x.dtype)
        torch.testing.assert_close(layer(x, geometry_of(moved)), batched)


def test_point_layer_parameter_count():
    def formula(c, r, g, k):
        return 2 * c * r + r + c + 4 * g * k * (r + 1)

    layer = DeformablePointLayer(384)
    assert sum(p.numel() for p in layer.parameters()) == formula(384, 32, 4, 9) == 29_744
    small = small_layer()
    assert sum(p.numel() for p in small.parameters()) == formula(DIM, 8, 2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": 10, "groups": 4}, "divisible by groups"),
        ({"num_points": 0}, "num_points must be an int"),
        ({"eps": 0.0}, "eps must be > 0"),
    ],
)
def test_point_layer_rejects_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeformablePointLayer(DIM, **kwargs)


def test_point_layer_rejects_invalid_inputs():
    layer = small_layer()
    x, centers = point_inputs()
    with pytest.raises(ValueError, match="C=24"):
        layer(x[..., :-1], geometry_of(centers))
    with pytest.raises(ValueError, match="\\(B, T, C"):
        layer(x[0], geometry_of(centers))
    with pytest.raises(ValueError, match="same batch"):
        layer(x, geometry_of(centers[:2]))  # the geometry of another batch
    with pytest.raises(ValueError, match=r"\(B, G, 3\)"):
        layer(x, geometry_of(centers[..., :2]))  # 2-D centres (caught by the geometry's kNN)
    with pytest.raises(ValueError, match="num_points=4 <= G"):
        layer(x[:, :5], geometry_of(centers[:, :3]))  # fewer point tokens than sampling points
    with pytest.raises(ValueError, match="<= T"):
        layer(x[:, :10], geometry_of(centers))  # more centres than tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor", [1e19, 1e-30])
def test_point_layer_is_scale_free_at_extreme_scales(factor, dtype):
    """The geometry is computed on the normalised centres, so centres scaled by 1e19 (squared distances beyond
    float32's range) or 1e-30 (squared distances below its smallest normal) give finite outputs and gradients equal,
    to float tolerance, to those of the unscaled centres."""
    layer = trained(small_layer()).to(dtype)
    x, centers = point_inputs(dtype=dtype)
    with torch.no_grad():
        unscaled = layer(x, geometry_of(centers))
    x.requires_grad_()
    scaled = layer(x, geometry_of(centers * factor))
    assert torch.isfinite(scaled).all()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(scaled.detach(), unscaled, rtol=tolerance, atol=tolerance)
    scaled.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
