"""Backbone architecture: keys, parameter counts, official forward behaviour, hookable sublayers, bad input."""

import pytest
import torch
from torch import nn

import pointgst
from pointgst.backbones import PointGPT, PointMAE
from pointgst.backbones.grouping import nearest_neighbor_chain
from pointgst.backbones.pointgpt import SinePositionEmbedding
from pointgst.errors import PointCloudError, UnknownNameError
from pointgst.geometry import TokenGeometry
from pointgst.ops import farthest_point_sample, gather_points

from . import official_layout as official


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("classes, total", [(15, 22_093_327), (40, 22_099_752)])
def test_point_mae_keys_and_parameter_count(classes, total):
    with torch.device("meta"):
        model = PointMAE(classes)
    assert _shapes(model) == official.point_mae_finetune(classes)
    assert len(model.state_dict()) == 174
    assert _count(model) == total


@pytest.mark.parametrize("size, entries, total", [("pointgpt_s", 243, 29_232_335), ("pointgpt_b", 250, 120_461_263),
                                                  ("pointgpt_l", 394, 360_457_679)])
def test_pointgpt_keys_and_parameter_count(size, entries, total):
    with torch.device("meta"):
        model = PointGPT(size, 15)
    assert _shapes(model) == official.pointgpt_finetune(size, 15)
    assert len(model.state_dict()) == entries
    assert _count(model) == total


@pytest.mark.parametrize("name", ["point_mae", "pointgpt_s"])
def test_forward_shapes_and_centres(name, clouds):
    """forward_tokens returns the final tokens and a TokenGeometry whose centres are the FPS centres (PointGPT: in
    nearest-neighbour-chain order), detached; the forward is the classify handle on them."""
    model = pointgst.create_backbone(name, num_classes=15).eval()
    with torch.no_grad():
        logits = model(clouds)
        tokens, geometry = model.forward_tokens(clouds)
    assert logits.shape == (2, 15) and torch.isfinite(logits).all()
    assert isinstance(geometry, TokenGeometry)
    assert geometry.centers.shape == (2, 64, 3) and not geometry.centers.requires_grad
    assert (geometry.batch_size, geometry.num_points) == (2, 64)
    assert geometry.num_special_tokens == model.num_special_tokens
    assert tokens.shape == (2, model.num_special_tokens + 64, model.embed_dim)
    expected = gather_points(clouds, farthest_point_sample(clouds, 64))
    if name == "pointgpt_s":
        expected = gather_points(expected, nearest_neighbor_chain(expected))
    assert torch.equal(geometry.centers, expected)
    assert torch.equal(geometry.centers, model.group(clouds)[1])
    with torch.no_grad():
        assert torch.equal(model.classify(tokens, geometry), logits)
    assert model.num_features == 2 * model.embed_dim


def test_point_mae_adds_position_before_every_block(clouds):
    """x = block(x + pos, geometry): every block gets the position and the one geometry of the forward."""
    model = pointgst.create_backbone("point_mae").eval()
    inputs, geometries, outputs = [], [], []

    def record(module, args, output):
        inputs.append(args[0])
        geometries.append(args[1])
        outputs.append(output)

    hooks = [b.register_forward_hook(record) for b in model.transformer_blocks]
    with torch.no_grad():
        model(clouds)
    for h in hooks:
        h.remove()
    geometry = geometries[0]
    assert isinstance(geometry, TokenGeometry) and all(g is geometry for g in geometries)
    pos = torch.cat([model.cls_pos.expand(2, -1, -1), model.pos_embed(geometry.centers)], dim=1)
    for i in range(1, model.depth):
        torch.testing.assert_close(inputs[i], outputs[i - 1] + pos, rtol=0, atol=0)


def test_gpt_block_residual_adds_to_normalised_input():
    block = PointGPT("pointgpt_s").blocks.layers[0].eval()
    x = torch.randn(2, 10, 384)
    with torch.no_grad():
        h = block.ln_1(x)
        causal = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
        h = h + block.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        expected = h + block.mlp(block.ln_2(h))
        torch.testing.assert_close(block(x), expected)


def test_pointgpt_is_causal_and_cls_feature_is_input_independent(clouds):
    model = pointgst.create_backbone("pointgpt_s").eval()
    other = torch.rand(2, 1024, 3) * 3
    with torch.no_grad():
        a, b = model.forward_features(clouds), model.forward_features(other)
    assert torch.equal(a[:, :384], b[:, :384])  # position 1 (cls) only sees sos and cls
    assert not torch.allclose(a[:, 384:], b[:, 384:])
    block = model.blocks.layers[0]
    x = torch.randn(1, 8, 384)
    y = x.clone()
    y[:, 5:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(block(x)[:, :5], block(y)[:, :5])


def test_pointgpt_positions_are_swapped_like_the_official_model(clouds):
    model = pointgst.create_backbone("pointgpt_s").eval()
    seen = []
    hook = model.blocks.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(clouds)
    hook.remove()
    first = seen[0]
    torch.testing.assert_close(first[:, 0], (model.blocks.sos + model.cls_pos[0, 0]).expand(2, -1))
    torch.testing.assert_close(first[:, 1], (model.cls_token[0, 0] + model.sos_pos[0, 0]).expand(2, -1))


def test_nearest_neighbor_chain_order():
    centers = torch.tensor([[[0.0, 0, 0], [5, 0, 0], [1, 0, 0], [3, 0, 0], [2.1, 0, 0]]])
    assert nearest_neighbor_chain(centers).tolist() == [[0, 2, 4, 3, 1]]
    batch = torch.randn(3, 20, 3)
    order = nearest_neighbor_chain(batch)
    assert (order[:, 0] == 0).all()
    assert torch.equal(order.sort(dim=1).values, torch.arange(20).expand(3, -1))


def test_sine_position_embedding_layout():
    xyz = torch.tensor([[[0.1, -0.2, 0.3]]])
    assert torch.equal(SinePositionEmbedding(1024)(xyz), SinePositionEmbedding(1024, temperature=1.0)(xyz))
    pe = SinePositionEmbedding(1024, temperature=10000.0)
    assert pe.per_axis == 340
    emb = pe(xyz)[0, 0]
    assert emb.shape == (1024,) and torch.equal(emb[-4:], torch.zeros(4))
    f = 340
    for axis, u in enumerate([0.1, -0.2, 0.3]):
        for i in (0, 1, 2, 3, 339):
            angle = torch.tensor(u * 2 * torch.pi / 10000 ** (2 * (i // 2) / f))
            expected = angle.sin() if i % 2 == 0 else angle.cos()
            torch.testing.assert_close(emb[axis * f + i], expected, rtol=1e-5, atol=1e-6)


def test_generation_branch(clouds):
    model = pointgst.create_backbone("pointgpt_s").train()
    logits, loss = model.forward_with_generation(clouds)
    assert logits.shape == (2, 40) and loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert model.generator_blocks.increase_dim[0].weight.grad.abs().sum() > 0
    lean = PointGPT("pointgpt_s", with_generator=False)
    assert not any(k.startswith("generator_blocks") for k in lean.state_dict())
    with pytest.raises(ValueError, match="with_generator"):
        lean.forward_with_generation(clouds)


@pytest.mark.parametrize("name", ["point_mae", "pointgpt_s"])
def test_sublayers_are_reachable_without_changing_keys(name, clouds):
    model = pointgst.create_backbone(name).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(clouds)

    class AddOne(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x, geometry):
            return self.base(x, geometry) + torch.linspace(0, 1, x.shape[-1])

    for block in model.transformer_blocks:
        assert {"attn_branch", "ffn_branch"} <= {n for n, _ in block.named_children()}
    block = model.transformer_blocks[-1]
    seen = []
    block.ffn_branch.register_forward_pre_hook(lambda m, a: seen.append(a))
    block.ffn_branch = AddOne(block.ffn_branch)
    with torch.no_grad():
        after = model(clouds)
    assert not torch.allclose(before, after)
    assert [k.replace("ffn_branch.base.", "") for k in model.state_dict()] == keys  # the branch owns no weights
    x, geometry = seen[0]  # the branch is called as ffn_branch(x, geometry)
    assert x.shape[1] == 64 + model.num_special_tokens
    assert isinstance(geometry, TokenGeometry) and geometry.num_points == 64
    assert geometry.num_special_tokens == model.num_special_tokens


def test_reset_classifier(clouds):
    model = pointgst.create_backbone("pointgpt_s", num_classes=15)
    model.reset_classifier(7)
    assert model.get_classifier()[8].out_features == 7 and model.num_classes == 7
    assert model.eval()(clouds).shape == (2, 7)
    with pytest.raises(ValueError):
        model.reset_classifier(0)


def test_official_from_scratch_init():
    model = pointgst.create_backbone("point_mae")
    assert torch.equal(model.blocks.blocks[0].mlp.fc1.bias, torch.zeros(1536))
    assert model.blocks.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("points, message", [
    (torch.randn(1024, 3), "add a batch dimension"),
    (torch.randn(2, 1024, 6), "xyz only"),
    (torch.randn(2, 1024, 3).double().long(), "floating-point"),
    (torch.randn(2, 40, 3), "at least 64"),
    (torch.tensor([[[float("nan"), 0, 0]]]).expand(2, 1024, 3).clone(), "NaN or inf"),
])
def test_bad_input_gives_clear_errors(points, message):
    model = pointgst.create_backbone("point_mae")
    with pytest.raises(PointCloudError, match=message):
        model(points)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(dtype, clouds):
    """float64 / float16 / bfloat16 input is cast to the model's dtype: the same logits as the cast float32 input."""
    model = pointgst.create_backbone("point_mae").eval()
    points = clouds.to(dtype)
    with torch.no_grad():
        logits = model(points)
        expected = model(points.float())
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected)
    assert torch.equal(model.group(points)[1], model.group(points.float())[1])


def test_empty_batch_and_single_cloud_in_training_mode_give_clear_errors(clouds):
    model = pointgst.create_backbone("point_mae")
    with pytest.raises(PointCloudError, match="empty batch"):
        model.eval()(clouds[:0])
    with pytest.raises(PointCloudError, match="at least 2 clouds"):
        model.train()(clouds[:1])
    with torch.no_grad():
        assert model.eval()(clouds[:1]).shape == (1, 40)  # one cloud is fine at inference


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="point_mae.pretrain"):
        pointgst.create_backbone("point_mae.pretrian")
    with pytest.raises(UnknownNameError, match="Architectures"):
        pointgst.create_backbone("resnet50")
    with pytest.raises(ValueError, match="without a tag"):
        pointgst.create_backbone("point_mae", pretrained=True)
    assert "pointgpt_l.post_pretrain" in pointgst.list_backbones(pretrained=True)


def test_cuda_matches_cpu(clouds):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = pointgst.create_backbone("point_mae").eval()
    with torch.no_grad():
        cpu = model(clouds)
        gpu = model.cuda()(clouds.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)


def test_pointgpt_block_attention_in_parts_equals_its_multihead_attention():
    """``attn.out_proj(attend(qkv(x)))``, the parts a method such as DAPT rescales, is the block's causal attention."""
    from pointgst.backbones.pointgpt import GPTBlock

    torch.manual_seed(0)
    block = GPTBlock(96, 4).eval()
    x = torch.randn(2, 19, 96)
    parts = block.attn.out_proj(block.attend(block.qkv(x)))
    assert (parts - block.attn_branch(x, None)).abs().max().item() <= 1e-6
    changed = x.clone()
    changed[:, -1] += 1.0  # causal: the last token cannot change any earlier output
    assert torch.equal(block.attend(block.qkv(changed))[:, :-1], block.attend(block.qkv(x))[:, :-1])
