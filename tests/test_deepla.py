"""DeepLA-Net head: building blocks against hand references, init properties, parameter formula, hybrid deep
supervision, per-cloud independence, degenerate geometry, and a few optimisation steps on real frozen tokens."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters.deepla import (
    FFN,
    VFR,
    DeepLAHead,
    ResLFE,
    StagePositionEmbedding,
    hybrid_weights,
    kemp,
    knn_geometry,
)
from pointgst.geometry import TokenGeometry
from pointgst.ops import farthest_point_sample, gather_points, knn_indices

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def inputs(batch: int = 4, n: int = 64, dim: int = 32, special: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, special + n, dim, generator=g), torch.randn(batch, n, 3, generator=g)


def expected_parameters(in_dim, num_classes, width=128, depths=(2, 2), hidden=256, hybrid=False) -> int:
    """The formula of the DeepLAHead docstring."""
    c, s, d = width, len(depths), sum(depths)
    total = (in_dim * c + 2 * c + s * (712 + 34 * c) + s * (2 * c * c + 3 * c) + d * (3 * c * c + 5 * c)
             + (s - 1) * (2 * c * c + 4 * c) + 2 * c * hidden + hidden * hidden + 4 * hidden
             + hidden * num_classes + num_classes)
    return total + (s * (c * num_classes + 34 * c + 160) if hybrid else 0)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- building blocks


def test_kemp_matches_loop_reference():
    features = torch.randn(2, 10, 4, dtype=torch.float64)
    knn = knn_indices(torch.randn(2, 10, 3), torch.randn(2, 10, 3), 5)
    out = kemp(features, knn)
    ref = torch.empty_like(features)
    for b in range(2):
        for i in range(10):
            for c in range(4):
                ref[b, i, c] = max(features[b, j, c] for j in knn[b, i].tolist()) - features[b, i, c]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: kemp(f, knn), (features,))


def test_kemp_is_non_negative_with_self_in_neighbourhood_and_checks_shapes():
    p = torch.randn(3, 20, 3)
    assert (kemp(torch.randn(3, 20, 8), knn_indices(p, p, 6)) >= 0).all()
    with pytest.raises(ValueError, match="same points"):
        kemp(torch.randn(3, 20, 8), knn_indices(p, p, 6)[:, :10])


def test_knn_geometry_scale_is_per_cloud_and_translation_scale_invariant():
    p = torch.randn(3, 40, 3)
    knn, rel = knn_geometry(p, 8)
    assert knn.shape == (3, 40, 8) and rel.shape == (3, 40, 8, 3)
    assert torch.allclose(rel.norm(dim=-1).mean(dim=(1, 2)), torch.ones(3))  # mean edge length 1 per cloud
    moved = p * torch.tensor([2.0, 0.5, 7.0])[:, None, None] + 3.0
    knn2, rel2 = knn_geometry(moved, 8)
    assert torch.equal(knn, knn2)
    torch.testing.assert_close(rel2, rel, atol=1e-5, rtol=1e-5)


def test_gamma0_initialisation():
    assert torch.all(VFR(8, 8).norm.weight == 0) and torch.all(VFR(8, 8, gamma0=0.3).norm.weight == 0.3)
    assert torch.all(FFN(8).norm.weight == 0) and FFN(8).fc1.out_features == 8  # mlp_ratio 1
    assert torch.all(StagePositionEmbedding(8).norm.weight == 0.2)
    block = ResLFE(8, 2)
    assert torch.all(block.ffn0.norm.weight == 0.2)
    head = DeepLAHead(16, 5)
    down = head.stages[1].downsample
    assert torch.all(down.skip_proj[1].weight == 0.3) and torch.all(down.vfr.norm.weight == 0.3)
    assert head.stages[0].downsample is None
    assert all(torch.all(m.bias == 0) for m in head.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)


@pytest.mark.parametrize("training", [True, False])
def test_reslfe_in_loop_branches_are_zero_at_init(training):
    """A fresh ResLFE returns x + FFN_0(x) + depth * pe exactly (VFR / FFN branches have BN gamma 0)."""
    dim, depth = 12, 3
    block = ResLFE(dim, depth).train(training)
    x, pe = torch.randn(2, 30, dim), torch.randn(2, 30, dim)
    p = torch.randn(2, 30, 3)
    out = block(x, knn_indices(p, p, 5), pe)
    ffn = block.ffn0
    h = F.gelu(x @ ffn.fc1.weight.T + ffn.fc1.bias) @ ffn.fc2.weight.T  # (2, 30, C)
    if training:
        flat = h.reshape(-1, dim)
        h = (h - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + ffn.norm.eps)
    else:
        h = h / math.sqrt(1 + ffn.norm.eps)  # running statistics (0, 1)
    torch.testing.assert_close(out, x + 0.2 * h + depth * pe, atol=1e-5, rtol=1e-5)
    # each iteration adds exactly pe: with pe = 0 the loop is the identity
    torch.testing.assert_close(block(x, knn_indices(p, p, 5), torch.zeros_like(pe)), x + 0.2 * h, atol=1e-5,
                               rtol=1e-5)


def test_reslfe_rejects_bad_drop_rates():
    with pytest.raises(ValueError, match="drop_path"):
        ResLFE(8, 2, [0.1])
    with pytest.raises(ValueError, match="depth"):
        ResLFE(8, 0)


def test_blocks_and_head_live_in_the_deepla_package():
    from pointgst.adapters.deepla import blocks, head

    assert (blocks.FFN, blocks.VFR, blocks.ResLFE, blocks.StagePositionEmbedding, blocks.kemp, blocks.knn_geometry) \
        == (FFN, VFR, ResLFE, StagePositionEmbedding, kemp, knn_geometry)
    assert (head.DeepLAHead, head.hybrid_weights) == (DeepLAHead, hybrid_weights)
    assert (head.COR_DIM, head.LABEL_SMOOTHING) == (32, 0.2)


# --------------------------------------------------------------------------- head


@pytest.mark.parametrize("depths, k", [((2, 2), 16), ((1,), 8), ((1, 1, 1), 8)])
def test_head_shapes(depths, k):
    tokens, centers = inputs()
    head = DeepLAHead(32, 7, width=24, depths=depths, k=k, hidden=20)
    assert head(tokens, TokenGeometry(centers)).shape == (4, 7)
    assert head.eval()(tokens, TokenGeometry(centers)).shape == (4, 7)


def test_leading_special_tokens_are_ignored():
    tokens, centers = inputs(special=1)
    head = DeepLAHead(32, 7, width=24).eval()
    assert torch.equal(head(tokens, TokenGeometry(centers)), head(tokens[:, 1:], TokenGeometry(centers)))


@pytest.mark.parametrize("kwargs", [
    dict(in_dim=384, num_classes=40),
    dict(in_dim=384, num_classes=40, hybrid=True),
    dict(in_dim=384, num_classes=15, width=192, depths=(4,), hidden=256),
    dict(in_dim=768, num_classes=40, width=64, depths=(1, 2, 3), hidden=128, hybrid=True),
])
def test_parameter_count_matches_formula(kwargs):
    assert count(DeepLAHead(**kwargs)) == expected_parameters(**kwargs)


def test_parameter_count_of_defaults():
    assert count(DeepLAHead(384, 40)) == 500_664
    assert count(DeepLAHead(384, 40, hybrid=True)) == 519_928


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=0), "width"),
    (dict(depths=()), "depths"),
    (dict(depths=(2, 0)), "depths"),
    (dict(k=0), "k must"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepLAHead(32, 5, **kwargs)


def test_forward_validation():
    head = DeepLAHead(32, 5)  # 2 stages, k = 16: needs >= 32 tokens
    tokens, centers = inputs()
    with pytest.raises(ValueError, match="in_dim=32"):
        head(torch.randn(4, 64, 31), TokenGeometry(centers))
    with pytest.raises(ValueError, match="centers"):
        head(tokens, TokenGeometry(centers[:3]))
    with pytest.raises(ValueError, match="centers"):
        head(tokens, TokenGeometry(centers[..., :2]))
    with pytest.raises(ValueError, match="only 63 tokens"):
        head(tokens[:, 1:], TokenGeometry(centers))
    with pytest.raises(ValueError, match="at least 32 tokens"):
        head(tokens[:, :31], TokenGeometry(centers[:, :31]))
    bad = tokens.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="tokens contain NaN"):
        head(bad, TokenGeometry(centers))
    bad = centers.clone()
    bad[0, 0, 2] = float("inf")
    with pytest.raises(ValueError, match="centers contain NaN"):
        head(tokens, TokenGeometry(bad))
    with pytest.raises(ValueError, match="at least 2 clouds"):
        head(tokens[:1], TokenGeometry(centers[:1]))
    assert head.eval()(tokens[:1], TokenGeometry(centers[:1])).shape == (1, 5)  # one cloud is fine at inference


def test_eval_logits_are_batch_independent():
    tokens, centers = inputs(batch=5)
    head = DeepLAHead(32, 6, width=24)
    head(tokens, TokenGeometry(centers))  # one training step's worth of BN running statistics
    head.eval()
    batched = head(tokens, TokenGeometry(centers))
    for b in range(5):
        torch.testing.assert_close(head(tokens[b : b + 1], TokenGeometry(centers[b : b + 1])),
                                   batched[b : b + 1], atol=1e-5, rtol=1e-5)
    # another companion cloud does not change cloud 0's logits
    companion = TokenGeometry(torch.cat([centers[:1], centers[3:4] * 0.1]))
    other = head(torch.cat([tokens[:1], tokens[3:4] * 5]), companion)
    torch.testing.assert_close(other[:1], batched[:1], atol=1e-5, rtol=1e-5)


def test_stages_follow_fps_prefix_of_the_centres():
    """With Point-MAE's FPS-ordered centres the re-run FPS keeps the prefix; a permutation of the centres (PointGPT's
    chain order) gives the same subset, hence the same eval logits when the tokens are permuted alike."""
    tokens, centers = inputs(batch=2)
    centers = gather_points(centers, farthest_point_sample(centers, 64))  # Point-MAE: centres in FPS order
    assert torch.equal(farthest_point_sample(centers, 32), torch.arange(32).expand(2, 32))
    head = DeepLAHead(32, 6, width=24).eval()
    perm = torch.cat([torch.tensor([0]), torch.randperm(63) + 1])  # FPS starts at index 0: keep it first
    permuted = head(tokens[:, perm], TokenGeometry(centers[:, perm]))
    torch.testing.assert_close(permuted, head(tokens, TokenGeometry(centers)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_coincident_centres_give_finite_outputs(training):
    tokens, centers = inputs(batch=3, n=32)
    centers[0] = 0.25  # every centre of cloud 0 at one point
    centers[1, :20] = centers[1, :1]  # cloud 1: 20 coincident centres
    head = DeepLAHead(32, 5, depths=(1, 1), hybrid=True).train(training)
    logits = head(tokens, TokenGeometry(centers))
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2])) + head.auxiliary_loss(torch.tensor([0, 1, 2]), 0.0)
    assert torch.isfinite(loss)
    if training:
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_head_takes_a_backbones_token_sequence_and_geometry():
    """The head is called as the backbone's classify handle is, on the full token sequence (special tokens first)
    and the forward's TokenGeometry: the same logits as on the point tokens with a geometry of the same centres."""
    backbone = pointgst.create_backbone("point_mae_tiny", num_classes=5).eval()
    points = torch.rand(2, 1024, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, geometry = backbone.forward_tokens(points)
    assert geometry.num_special_tokens == 1 and tokens.shape[1] == 1 + geometry.num_points
    head = DeepLAHead(backbone.embed_dim, 5, width=24, depths=(1, 1), k=8).eval()
    logits = head(tokens, geometry)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert torch.equal(logits, head(tokens[:, 1:], TokenGeometry(geometry.centers.clone())))


# --------------------------------------------------------------------------- hybrid deep supervision


def test_hybrid_weights_schedule():
    assert hybrid_weights(0.0) == (0.25, 0.25)
    alpha, beta = hybrid_weights(1.0)
    assert alpha == pytest.approx(0.25 * 0.005) and beta == pytest.approx(0.075)
    alpha, beta = hybrid_weights(0.5)
    assert alpha == pytest.approx(0.25 * math.sqrt(0.005)) and beta == pytest.approx(0.25 * math.sqrt(0.3))
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="progress"):
            hybrid_weights(bad)


def test_hybrid_training_loss_and_gradients():
    tokens, centers = inputs()
    labels = torch.tensor([0, 1, 2, 3])
    head = DeepLAHead(32, 5, width=24, depths=(1, 2), hybrid=True).train()
    with pytest.raises(RuntimeError, match="forward"):
        head.auxiliary_loss(labels, 0.0)
    head(tokens, TokenGeometry(centers))
    assert len(head.semantic_logits) == 2 and len(head.spatial_losses) == 2
    assert head.semantic_logits[0].shape == (4, 5)
    aux = head.auxiliary_loss(labels, 0.5)
    alpha, beta = hybrid_weights(0.5)
    manual = alpha * sum(head.spatial_losses) + beta * sum(
        F.cross_entropy(s, labels, label_smoothing=0.2) for s in head.semantic_logits)
    torch.testing.assert_close(aux, manual)
    assert aux > 0
    aux.backward()
    for heads in (head.semantic_heads, head.cor_heads):
        for sub in heads:
            assert sub[-1].weight.grad is not None and sub[-1].weight.grad.abs().sum() > 0
    assert head.classifier[-1].weight.grad is None  # the auxiliary loss never reaches the main classifier
    with pytest.raises(ValueError, match="labels"):
        head.auxiliary_loss(labels[:3], 0.5)


def test_hybrid_is_off_in_eval_mode_and_never_changes_the_main_logits():
    tokens, centers = inputs()
    labels = torch.tensor([0, 1, 2, 3])
    hybrid = DeepLAHead(32, 5, width=24, hybrid=True)
    plain = DeepLAHead(32, 5, width=24)
    result = plain.load_state_dict(hybrid.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(key.startswith(("semantic_heads.", "cor_heads."))
                                          for key in result.unexpected_keys)
    torch.manual_seed(3)
    train_hybrid = hybrid(tokens, TokenGeometry(centers))
    torch.manual_seed(3)
    # same dropout / drop-path draws, same logits
    assert torch.equal(train_hybrid, plain(tokens, TokenGeometry(centers)))
    hybrid.eval(), plain.eval()
    assert torch.equal(hybrid(tokens, TokenGeometry(centers)), plain(tokens, TokenGeometry(centers)))
    assert hybrid.semantic_logits == [] and hybrid.spatial_losses == []  # cleared and not computed in eval
    aux = hybrid.auxiliary_loss(labels, 0.0)
    assert aux.dim() == 0 and aux.item() == 0.0
    plain.train()
    plain(tokens, TokenGeometry(centers))
    assert plain.auxiliary_loss(labels, 0.0).item() == 0.0  # hybrid off


# --------------------------------------------------------------------------- real data


def frozen_tokens(points: torch.Tensor) -> tuple[torch.Tensor, TokenGeometry]:
    """Final point tokens (after the last norm) and their geometry from a randomly initialised, frozen Point-MAE."""
    backbone = pointgst.create_backbone("point_mae", num_classes=40).eval()
    with torch.no_grad():
        tokens, geometry = backbone.forward_tokens(points)
    return tokens[:, geometry.num_special_tokens :], geometry


def test_a_few_steps_on_real_frozen_tokens_reduce_the_loss():
    path = SHARED_DATA / "modelnet40_1024" / "train.npz"
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (the real-data test needs it)")
    data = np.load(path)
    points = torch.from_numpy(np.ascontiguousarray(data["points"][:32])).float()
    labels = torch.from_numpy(np.ascontiguousarray(data["labels"][:32])).long()
    tokens, geometry = frozen_tokens(points)
    assert tokens.shape == (32, 64, 384) and geometry.centers.shape == (32, 64, 3)

    head = DeepLAHead(384, 40, hybrid=True).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def main_loss() -> torch.Tensor:
        torch.manual_seed(123)  # same dropout / drop-path draws before and after training
        return F.cross_entropy(head(tokens, geometry), labels, label_smoothing=0.2)

    with torch.no_grad():
        initial = main_loss().item()
    steps = 10
    for step in range(steps):
        logits = head(tokens, geometry)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.2) + head.auxiliary_loss(labels, step / steps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = main_loss().item()
    assert math.isfinite(initial) and final < initial
