"""The DeepLA-Net decoder as a part-segmentation head: ``deepla_head`` on a segmentation backbone replaces its
``segment`` step (``docs/methods.md`` §4.4), with hybrid deep supervision in training. Small models: point_mae_tiny_seg
with 32 groups of 16 points, 256-point clouds."""

import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters.deepla import DeepLASegmentationHead, hybrid_weights
from pointgst.ops import gather_points
from pointgst.recipe import load_recipe
from pointgst.tuner import PointGSTConfig
from pointgst.tuner.layer import CarrierLayer, HeadLayer

from .test_contract import pretraining_folder

GROUPING = {"num_group": 32, "group_size": 16}
PARTS = 50
HEAD_PART = "head (replaces the original)"


def seg_backbone(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return pointgst.create_backbone("point_mae_tiny_seg", **{**GROUPING, **options}).eval()


def clouds(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points (B, 256, 3), category (B,), parts (B, 256)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 256, 3, generator=generator), torch.randint(0, 16, (batch,), generator=generator),
            torch.randint(0, PARTS, (batch, 256), generator=generator))


def decoder_of(model: torch.nn.Module, adapter: str = "default") -> DeepLASegmentationHead:
    return model.base_model.model.segment.pointgst_module[adapter]


def test_decoder_gives_logits_for_every_point_that_depend_on_the_category():
    backbone = seg_backbone()
    points, category, _ = clouds(3, seed=1)
    with torch.no_grad():
        tokens, geometry = backbone.forward_tokens(points)
    head = DeepLASegmentationHead(tokens.shape[-1], PARTS, backbone.num_categories, width=32, depths=(1, 1), k=8,
                                  hidden=48)
    assert head(tokens, geometry, points, category).shape == (3, 256, PARTS)  # training mode
    head.eval()
    logits = head(tokens, geometry, points, category)
    assert logits.shape == (3, 256, PARTS) and torch.isfinite(logits).all()
    other = head(tokens, geometry, points, (category + 1) % 16)
    assert all(not torch.allclose(logits[b], other[b]) for b in range(3))


def test_parameter_count_of_the_decoder_on_point_mae_seg():
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # 3 fetched blocks x 384 channels, 50 parts, 16 categories; the formula of the class docstring
    assert count(DeepLASegmentationHead(1152, PARTS, 16)) == 620_610
    assert count(DeepLASegmentationHead(1152, PARTS, 16, hybrid=True)) == 620_610 + 2 * (128 * PARTS + 34 * 128 + 160)


def test_a_head_method_replaces_the_segment_step_and_others_keep_the_carrier():
    model = pointgst.wrap(seg_backbone(), "deepla_head")
    assert model.peft_config["default"].target_modules == ["segment"]
    assert model.peft_config["default"].modules_to_save == []
    segment = model.base_model.model.segment
    assert isinstance(segment, HeadLayer) and isinstance(decoder_of(model), DeepLASegmentationHead)
    report = pointgst.parameter_report(model)
    assert report.breakdown == {HEAD_PART: sum(p.numel() for p in decoder_of(model).parameters())}
    assert isinstance(pointgst.wrap(seg_backbone(), "pcsa").base_model.model.segment, CarrierLayer)


@pytest.mark.parametrize("first, second", [("pcsa", "deepla_head"), ("deepla_head", "pcsa")])
def test_a_head_adapter_and_a_block_adapter_share_one_segmentation_model(first, second):
    points, category, _ = clouds(2, seed=2)
    model = pointgst.wrap(seg_backbone(), first, adapter_name="a").eval()
    with torch.no_grad():
        alone = model(points, category)
    model.add_adapter("b", PointGSTConfig(method=second))
    assert isinstance(model.base_model.model.segment, HeadLayer)
    head_adapter = "b" if second == "deepla_head" else "a"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(points, category), alone)  # "a" is still the active adapter
        model.set_adapter("b")
        switched = model(points, category)
        with model.disable_adapter():
            frozen = model(points, category)
    assert switched.shape == alone.shape and not torch.equal(switched, alone)
    assert set(model.base_model.model.segment.pointgst_module) == {head_adapter}
    assert not torch.equal(frozen, switched if head_adapter == "b" else alone)


def test_one_step_trains_the_decoder_only_and_a_reload_gives_identical_logits(tmp_path):
    source = pretraining_folder("point_mae_tiny_seg", tmp_path / "backbone")
    torch.manual_seed(1)
    backbone = pointgst.create_backbone("point_mae_tiny_seg", pretrained=source, num_classes=PARTS)
    model = pointgst.wrap(backbone, "deepla_head", hybrid_supervision=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".segment.pointgst_module.default." in n for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    points, category, parts = clouds(4, seed=3)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logits = model(points, category)
    loss = F.cross_entropy(logits.flatten(0, 1), parts.flatten()) + decoder_of(model).auxiliary_loss(parts, 0.0)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".segment.pointgst_module.default." in k for k in changed), changed[:3]
    for part in ("proj.", "outputs.1.", "propagation.", "category_embed.", "classifier.", "semantic_heads.1.",
                 "cor_heads.1."):  # the main path and (through the auxiliary loss) the stage heads
        assert any(f".default.{part}" in k for k in changed), part

    model.eval()
    x, c, _ = clouds(3, seed=4)
    with torch.no_grad():
        trained = model(x, c)
    folder = model.save_pretrained(tmp_path / "adapter")
    assert not (folder / "backbone_state.safetensors").exists()  # the replaced head's weights are not needed
    torch.manual_seed(987654)  # not the seed the model was built with
    reloaded = pointgst.load_adapter(folder).eval()
    assert isinstance(decoder_of(reloaded), DeepLASegmentationHead) and decoder_of(reloaded).hybrid
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, c), trained, atol=1e-6, rtol=0)


def test_hybrid_supervision_in_training_only_reaches_the_stage_heads():
    backbone = seg_backbone()
    points, category, parts = clouds(3, seed=5)
    model = pointgst.wrap(backbone, "deepla_head", hybrid_supervision=True).train()
    head = decoder_of(model)
    model(points, category)
    assert [s.shape for s in head.semantic_logits] == [(3, 32, PARTS), (3, 16, PARTS)]
    with torch.no_grad():
        centers = backbone.forward_tokens(points)[1].centers
    # each stage point's label is that of the input point nearest to it (a centre is an input point)
    assert torch.equal(gather_points(points, head.stage_nearest[0]), centers)
    aux = head.auxiliary_loss(parts, 0.25)
    assert aux.dim() == 0 and torch.isfinite(aux) and aux.item() > 0
    alpha, beta = hybrid_weights(0.25)
    manual = alpha * sum(head.spatial_losses) + beta * sum(
        F.cross_entropy(s.flatten(0, 1), parts.gather(1, i).flatten(), label_smoothing=0.2)
        for s, i in zip(head.semantic_logits, head.stage_nearest))
    torch.testing.assert_close(aux, manual)
    aux.backward()
    for heads in (head.semantic_heads, head.cor_heads):
        for stage_head in heads:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage_head.parameters())
    assert head.classifier[-1].weight.grad is None  # the auxiliary loss never reaches the main logits
    with pytest.raises(ValueError, match="parts must be an int64 tensor of shape"):
        head.auxiliary_loss(parts[:, :100], 0.25)

    model.eval()
    model(points, category)
    assert head.semantic_logits == [] and head.spatial_losses == [] and head.stage_nearest == []
    assert head.auxiliary_loss(parts, 0.25).item() == 0.0
    plain = pointgst.wrap(seg_backbone(), "deepla_head").train()  # hybrid_supervision off
    plain(points, category)
    assert decoder_of(plain).auxiliary_loss(parts, 0.25).item() == 0.0


def test_eval_logits_of_a_cloud_do_not_depend_on_the_rest_of_its_batch():
    model = pointgst.wrap(seg_backbone(), "deepla_head", hybrid_supervision=True)
    points, category, _ = clouds(4, seed=6)
    model.train()
    model(points, category)  # one step's worth of BatchNorm statistics
    model.eval()
    with torch.no_grad():
        batched = model(points, category)
        for b in range(4):
            torch.testing.assert_close(model(points[b:b + 1], category[b:b + 1]), batched[b:b + 1],
                                       atol=1e-5, rtol=1e-5)
        companion = model(torch.cat([points[:1], points[2:3] * 0.1]), torch.stack([category[0], category[2] + 1]))
    torch.testing.assert_close(companion[:1], batched[:1], atol=1e-5, rtol=1e-5)


def test_the_segmentation_trainer_adds_the_auxiliary_loss(tmp_path, monkeypatch):
    from pointgst.data.procedural_parts import write_procedural_shapenetpart
    from pointgst.training import train

    calls = []
    original = DeepLASegmentationHead.auxiliary_loss

    def spy(self, parts, progress):
        loss = original(self, parts, progress)
        calls.append((tuple(parts.shape), progress, loss.item()))
        return loss

    monkeypatch.setattr(DeepLASegmentationHead, "auxiliary_loss", spy)
    root = write_procedural_shapenetpart(tmp_path / "parts", shapes_per_category=6, points_per_shape=256)
    recipe = load_recipe("shapenetpart.point_mae_tiny", [
        f"data.root={root}", "method.name=deepla_head", "method.options={hybrid_supervision: true}",
        "backbone.num_group=32", "backbone.group_size=16", "data.npoints=256", "data.point_all=256",
        "train.epochs=2", "train.warmup_epochs=0", "train.batch_size=8", "train.selection=last"])
    summary = train(recipe, tmp_path / "run", device="cpu", progress=False)
    steps = len(calls) // 2
    assert steps and len(calls) == 2 * steps and summary["epochs"] == 2
    assert [progress for _, progress, _ in calls] == [i / (2 * steps) for i in range(2 * steps)]
    assert all(shape == (8, 256) and loss > 0 for shape, _, loss in calls)
