"""GAPrompt on PointGPT-S/B/L (docs/peft_methods/gaprompt.md §12): the prompted sequence of each family, the causal
placement of the deep prompts, per-sample and deterministic evaluation, which tensors get gradients, the trainable
counts on S/B/L, and ``pointgst convert`` refusing a PointGPT GAPrompt checkpoint (no official one exists).

Full-width PointGPT-S on a small grouping (32 groups of 16 points); B and L on the meta device for the counts.
"""

import copy
import re

import pytest
import torch

import pointgst
from pointgst.backbones.factory import ARCHITECTURES

from .cli_runs import run_cli_here

CLASSES = 5


@pytest.fixture(scope="module")
def small_pointgpt() -> torch.nn.Module:
    """PointGPT-S (width 384, 12 causal blocks) on 32 groups of 16 points, 5 classes; each test wraps a deep copy."""
    torch.manual_seed(3)
    return pointgst.create_backbone("pointgpt_s", num_classes=CLASSES, num_group=32, group_size=16,
                                    with_generator=False)


def clouds(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 128, 3, generator=torch.Generator().manual_seed(seed)) * 0.5


def module_of(model: torch.nn.Module) -> torch.nn.Module:
    """The GAPrompt module of a wrapped model."""
    return model.base_model.model.pipeline.pointgst_module["default"]


def cls_copies(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's trainable cls token and position (1, 1, C) each."""
    copies = model.base_model.model.special_tokens.pointgst_module["default"]
    return copies.cls_token, copies.cls_pos


def seeded_prompts(module: torch.nn.Module) -> None:
    """Non-zero deep prompts (they start at zero), so that where they sit shows."""
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for step in module.blocks:
            step.prompt_embeddings.copy_(torch.randn(step.prompt_embeddings.shape, generator=generator))


# ------------------------------------------------------------------------------------------------ sequence layout

@pytest.mark.parametrize("arch", ["point_mae_tiny", "pointgpt_s"])
def test_prompted_sequence_puts_the_prompts_right_after_the_special_tokens(arch, small_pointgpt):
    """Point-MAE: ``[cls, P_1..P_T, t..]`` with cls + cls_pos; PointGPT: ``[sos, cls, P_1..P_T, t..]`` with the
    official swap (sos + cls_pos, cls + sos_pos); each prompt ``prompt + 0.5 * shape + pos_embed(prompt_cor)``."""
    if arch == "pointgpt_s":
        backbone, specials = copy.deepcopy(small_pointgpt), 2
    else:
        torch.manual_seed(3)
        backbone, specials = pointgst.create_backbone(arch, num_classes=CLASSES, num_group=32, group_size=16), 1
    model = pointgst.wrap(backbone, method="gaprompt", prompt_tokens=7, prompt_depth=3).eval()
    module = module_of(model)
    seeded_prompts(module)
    inputs, shapes = [], []
    for block in backbone.transformer_blocks:
        block.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    module.shape_feature_mlp.register_forward_hook(lambda *args: shapes.append(args[2]))
    with torch.no_grad():
        model(clouds(2, 3))
    depth = len(backbone.transformer_blocks)
    assert [x.shape[1] for x in inputs] == [specials + 7 + 32] * 3 + [specials + 32] * (depth - 3)
    first, shape = inputs[0], shapes[0].unsqueeze(1)  # (B, S + T + G, C), (B, 1, C)
    cls_token, cls_pos = cls_copies(model)
    if arch == "pointgpt_s":
        special = torch.cat([backbone.blocks.sos.view(1, 1, -1) + cls_pos, cls_token + backbone.sos_pos], dim=1)
    else:
        special = cls_token + cls_pos
    prompts = module.blocks[0].prompt_embeddings + 0.5 * shape + backbone.pos_embed(module.prompt_cor)
    assert torch.allclose(first[:, :specials], special.expand(2, -1, -1), atol=1e-6)
    assert torch.allclose(first[:, specials:specials + 7], prompts, atol=1e-5)


def test_causal_prompts_are_seen_by_every_point_token_and_see_none(small_pointgpt):
    """In block 0 the prompts (shape term off) see only sos, cls and earlier prompts, so their outputs are the same
    for any cloud; sos and cls see neither prompts nor points (the cls output is input-independent to the end); every
    point token sees the prompts."""
    backbone = copy.deepcopy(small_pointgpt)
    model = pointgst.wrap(backbone, method="gaprompt").eval()
    module = module_of(model)
    seeded_prompts(module)
    module.blocks[0].scaler1.fill_(0.0)
    outputs, pooled = [], []
    backbone.blocks.layers[0].register_forward_hook(lambda *args: outputs.append(args[2]))
    module.cls_norm.register_forward_hook(lambda *args: pooled.append(args[2]))
    x = clouds(2, 5)
    with torch.no_grad():
        model(x)
        module.blocks[0].prompt_embeddings.add_(torch.randn(10, 384))  # not a constant: ln_1 would remove it
        model(x)
    before, after = outputs  # (B, 2 + T + G, C) each
    assert (before[0, :12] - before[1, :12]).abs().max().item() <= 1e-5  # sos, cls, 10 prompts: cloud-independent
    assert (before[0, 12:] - before[1, 12:]).abs().max().item() > 1e-2
    assert torch.equal(before[:, :2], after[:, :2])  # sos and cls do not see the prompts
    assert (before[:, 12:] - after[:, 12:]).abs().amax(dim=-1).gt(1e-4).all()  # every point token sees them
    assert (pooled[0][0, 1] - pooled[0][1, 1]).abs().max().item() <= 1e-5  # the head's cls feature


# ------------------------------------------------------------------------------------------------ evaluation

@pytest.mark.parametrize("preset, mixes", [(None, False), ("official", True)])
def test_evaluation_is_deterministic_and_per_sample_unless_the_official_gather_mixes(preset, mixes, small_pointgpt):
    torch.manual_seed(4)
    model = pointgst.wrap(copy.deepcopy(small_pointgpt), method="gaprompt", preset=preset).eval()
    assert module_of(model).sample_mixing is mixes
    x = clouds(3, 1)
    changed = x.clone()
    changed[0] = clouds(1, 2)[0]
    with torch.no_grad():
        before, after, again = model(x), model(changed), model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert before.shape == (3, CLASSES) and torch.equal(before, again)
    assert (before[0] - after[0]).abs().max().item() > 1e-3
    moved = (before[1:] - after[1:]).abs().max().item()
    if mixes:  # sample b of the official gather reads rows of sample b - 1
        assert moved > 1e-3
    else:
        assert moved <= 1e-5 and (before - alone).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ training

def test_gradients_reach_every_trainable_tensor_but_the_unused_prompts_and_adapter_scales(small_pointgpt):
    model = pointgst.wrap(copy.deepcopy(small_pointgpt), method="gaprompt").train()
    loss = torch.nn.functional.cross_entropy(model(clouds(4, 5)), torch.arange(4) % CLASSES)
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unused = {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    expected = {n for n in trainable if re.search(r"\.blocks\.([6-9]|1[01])\.prompt_embeddings$", n)
                or re.search(r"\.adapter\.scale\.(weight|bias)$", n)}
    assert unused == expected
    assert sum(trainable[n].numel() for n in unused) == 6 * 10 * 384 + 12 * (384 + 1) == 27_660
    used = set(trainable) - unused
    for part in ("pipeline.pointgst_module.default.cls_norm.weight", "special_tokens.pointgst_module.default.cls_token",
                 "special_tokens.pointgst_module.default.cls_pos", "shift_net.mlp_position.0.weight",
                 "point_prompt.points", "prompt_cor", "blocks.0.out_transform.0.weight"):
        assert any(n.endswith(part) for n in used), part
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.endswith("blocks.cls_norm.weight") for n in frozen)  # the backbone's own head norm stays frozen
    assert all(model.get_parameter(n).grad is None for n in frozen)


def trainable_count(width: int, depth: int, classes: int, groups: int, point_prompts: int) -> int:
    """docs/peft_methods/gaprompt.md §12: cls token + position 2C, prompt_cor 3T, point prompts 3n, ShiftNet 25,371,
    shape-feature MLP (G/2 * 8) * 16 + 16 + 17C, per block TC + 6C + 2rC + r + 1, head 768C + 67,072 + 257K, and
    cls_norm 2C (T = 10 prompt tokens, r = 16)."""
    t, r, c = 10, 16, width
    block = t * c + 6 * c + 2 * r * c + r + 1
    head = 768 * c + 67_072 + 257 * classes
    return 2 * c + 3 * t + 3 * point_prompts + 25_371 + 64 * groups + 16 + 17 * c + depth * block + head + 2 * c


@pytest.mark.parametrize("arch, classes, groups, point_prompts, expected", [
    ("pointgpt_s", 40, 64, 5, 631_244),  # ModelNet40 config
    ("pointgpt_s", 15, 128, 5, 628_915),  # ScanObjectNN PB_T50_RS config
    ("pointgpt_b", 40, 64, 5, 1_155_404),
    ("pointgpt_l", 40, 64, 5, 2_094_872),
    ("pointgpt_l", 15, 128, 10, 2_092_558),  # OBJ_BG / OBJ_ONLY point prompts
])
def test_trainable_counts_on_pointgpt_s_b_l(arch, classes, groups, point_prompts, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES[arch](num_classes=classes, num_group=groups)
        model = pointgst.wrap(backbone, method="gaprompt", point_prompts=point_prompts)
    report = pointgst.parameter_report(model)
    print(f"gaprompt on {arch} ({classes} classes, {groups} groups, {point_prompts} point prompts): "
          f"{report.trainable:,} trainable")
    width, depth = backbone.embed_dim, backbone.depth
    assert report.trainable == trainable_count(width, depth, classes, groups, point_prompts) == expected
    module = module_of(model)
    assert len(module.blocks) == depth and module.prompt_depth == 6  # blocks 0-5 prompted on 12 and on 24 layers


# ------------------------------------------------------------------------------------------------ conversion

def test_convert_refuses_a_pointgpt_gaprompt_checkpoint(small_pointgpt, tmp_path, capsys):
    """GAPrompt's official code has no PointGPT variant: a PointGPT state with GAPrompt's keys is refused in one
    line rather than mapped onto a guessed layout."""
    torch.manual_seed(6)
    backbone = pointgst.create_backbone("pointgpt_s", num_classes=15)
    module = module_of(pointgst.wrap(copy.deepcopy(small_pointgpt), method="gaprompt"))
    # GAPrompt's official Point-MAE layout extended to PointGPT's block keys (blocks.layers.i.prompt_embeddings, ...)
    method_state = {re.sub(r"^blocks\.", "blocks.layers.", k): v for k, v in module.state_dict().items()}
    torch.save({"base_model": {**backbone.state_dict(), **method_state}}, tmp_path / "gaprompt_pointgpt.pth")
    code, _, err = run_cli_here(["convert", tmp_path / "gaprompt_pointgpt.pth", tmp_path / "out"], capsys)
    assert code != 0 and "gaprompt has no official PointGPT checkpoints" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="gaprompt has no official PointGPT checkpoints"):
        module.official_names()  # nor does the module name official keys on PointGPT


def test_a_pointgpt_grouping_the_coarse_levels_cannot_split_fails_in_one_line():
    backbone = pointgst.create_backbone("pointgpt_s", num_group=4, group_size=32, with_generator=False)
    with pytest.raises(ValueError, match="group_size // 2 <= num_group"):
        pointgst.wrap(backbone, method="gaprompt")
