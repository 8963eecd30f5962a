"""PPT on PointGPT-S/B/L (``docs/peft_methods/ppt.md`` §8): the sequence ``[sos, cls, prompts, points]`` under causal
attention (every point token sees every prompt), the prompt patches of a second chained grouping, the PointGPT block
and head order, which tensors train, and the trainable counts. No official PointGPT PPT exists:
the path is tested by behaviour and counts, and ``pointgst convert`` refuses a PointGPT PPT checkpoint."""

import copy
from pathlib import Path

import pytest
import torch

import pointgst
from pointgst.adapters import METHODS
from pointgst.adapters.ppt.prompts import prompt_indices, take
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.backbones.grouping import PatchGrouper
from pointgst.converting import convert_method_state, official_method
from pointgst.ops import farthest_point_sample

from .reference_ppt import OFFICIAL_TRAINABLE
from .test_dapt import assert_eval_is_deterministic_and_per_sample
from .test_official_pointgst import modelnet40_test_shapes, needs_data
from .test_ppt import (
    assert_checkpointing_keeps_the_gradients,
    assert_the_module_runs_its_copies_and_all_learn,
    clouds,
    module_of,
)

TINY = {"num_group": 32, "group_size": 16}
S = 2  # PointGPT's special tokens: [sos, cls]


@pytest.fixture(scope="module")
def gpt_backbone() -> torch.nn.Module:
    torch.manual_seed(3)
    return pointgst.create_backbone("pointgpt_s", num_classes=5, **TINY)


def wrapped(backbone: torch.nn.Module, **options) -> torch.nn.Module:
    torch.manual_seed(4)
    return pointgst.wrap(copy.deepcopy(backbone), method="ppt", **options)


def captured(model: torch.nn.Module, points: torch.Tensor, hooks: dict) -> dict:
    """Run ``model(points)`` without gradients with forward hooks ``{name: module}``; each module's output by name."""
    seen = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, n=name: seen.__setitem__(n, out))
               for name, m in hooks.items()]
    with torch.no_grad():
        seen["logits"] = model(points)
    for handle in handles:
        handle.remove()
    return seen


# ------------------------------------------------------------------------------------------------ sequence

@pytest.mark.parametrize("arch, special", [("point_mae_tiny", 1), ("pointgpt_s", 2)])
@pytest.mark.parametrize("prompt_groups", [None, 8])
def test_sequence_layout_on_each_family(gpt_backbone, arch, special, prompt_groups):
    torch.manual_seed(3)
    backbone = gpt_backbone if arch == "pointgpt_s" else pointgst.create_backbone(arch, num_classes=5, **TINY)
    model = wrapped(backbone, prompt_groups=prompt_groups).eval()
    module, base = module_of(model), model.get_base_model()
    with torch.no_grad():  # no prompt MLP before the first block: its input is the sequence plus the positions
        for mlp in (module.prompt_mlp, module.prompt_pos_mlp):
            mlp[2].weight.zero_()
            mlp[2].bias.zero_()
    block = base.transformer_blocks[0]
    first_norm = block.ln_1 if arch == "pointgpt_s" else block.norm1
    inputs = []
    handle = first_norm.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    seen = captured(model, clouds(2), {"group": base.group_divider})
    handle.remove()
    x, (_, centers) = inputs[0], seen["group"]
    p = prompt_groups or 32
    assert x.shape == (2, special + 32 + p, base.embed_dim)
    if arch == "pointgpt_s":  # [sos, cls, prompts, points]
        prompts, points = x[:, special:special + p], x[:, special + p:]
    else:  # [cls, points, prompts], the official order
        points, prompts = x[:, special:special + 32], x[:, special + 32:]
    cls_token, cls_pos = base.special_tokens()
    if arch == "pointgpt_s":  # the official swap: sos at cls_pos, cls at sos_pos
        assert torch.allclose(x[:, 0], (base.blocks.sos + cls_pos[0, 0]).expand(2, -1))
        assert torch.allclose(x[:, 1], (cls_token + base.sos_pos)[0].expand(2, -1))
    else:
        assert torch.allclose(x[:, 0], (cls_token + cls_pos)[0].expand(2, -1))
    pick = prompt_indices(centers, p, chained=arch == "pointgpt_s")
    assert torch.equal(prompts, take(points, pick))  # the prompt patches' tokens and positions
    if prompt_groups:  # Point-MAE: the first FPS patches; PointGPT: spread along its chain
        assert torch.equal(pick, torch.arange(p).expand(2, -1)) == (arch == "point_mae_tiny")


@pytest.mark.parametrize("count", [8, 20, 32])
def test_prompt_patches_are_a_second_chained_grouping(count):
    points = clouds(3, seed=9)
    neighborhood, centers = PatchGrouper(32, 16, order="nn_chain")(points)
    second, second_centers = PatchGrouper(count, 16, order="nn_chain")(points)
    pick = prompt_indices(centers, count, chained=True)
    assert torch.equal(take(centers, pick), second_centers) and torch.equal(take(neighborhood, pick), second)


@needs_data
@pytest.mark.parametrize("count", [16, 40])
def test_prompt_patches_are_a_second_chained_grouping_on_modelnet40(count):
    points = modelnet40_test_shapes(4)
    neighborhood, centers = PatchGrouper(64, 32, order="nn_chain", skip_near_origin=True)(points)
    second, second_centers = PatchGrouper(count, 32, order="nn_chain", skip_near_origin=True)(points)
    pick = prompt_indices(centers, count, chained=True)
    assert torch.equal(take(centers, pick), second_centers) and torch.equal(take(neighborhood, pick), second)
    firsts = farthest_point_sample(points, count, skip_near_origin=True)  # the first FPS centres, not chain 0..P-1
    assert not torch.equal(take(centers, torch.arange(count).expand(4, -1)), take(points, firsts))


# ------------------------------------------------------------------------------------------------ causal placement

def test_every_point_token_sees_every_prompt_and_cls_sees_only_sos(gpt_backbone):
    model = wrapped(gpt_backbone, prompt_groups=8).eval()
    base = model.get_base_model()
    x = clouds(2)
    full = captured(model, x, {"out": base.blocks.ln_f})["out"]  # (2, 2 + 8 + 32, C)
    other = captured(model, clouds(2, seed=7), {"out": base.blocks.ln_f})["out"]
    assert torch.allclose(other[:, :S], full[:, :S], atol=1e-6)  # sos and cls see only sos and cls (official)
    assert (other[:, S:] - full[:, S:]).abs().amax(dim=-1).min().item() > 1e-4  # prompts and points: the cloud

    def nudge_last_prompt(_m, args):  # not a constant: ln_1 would remove it
        shifted = args[0].clone()
        shifted[:, S + 7] += torch.randn(shifted.shape[-1], generator=torch.Generator().manual_seed(0))
        return (shifted,)

    handle = base.transformer_blocks[0].ln_1.register_forward_pre_hook(nudge_last_prompt)
    nudged = captured(model, x, {"out": base.blocks.ln_f})["out"]
    handle.remove()
    assert torch.equal(nudged[:, :S + 7], full[:, :S + 7])  # no earlier token sees the last prompt
    change = (nudged - full)[:, S + 7:].abs().amax(dim=-1)  # the last prompt and every point token
    assert change.shape == (2, 1 + 32) and change.min().item() > 1e-4


def test_with_its_mlps_at_zero_the_prompts_are_pointgpts_own_tokens_and_the_head_reads_cls_and_two_means(
        gpt_backbone):
    model = wrapped(gpt_backbone).eval()  # 32 prompts: the prompt patches are the point patches, in chain order
    module, base = module_of(model), model.get_base_model()
    with torch.no_grad():
        for mlp in (module.prompt_mlp, module.prompt_pos_mlp, module.prompt_all_mlp):
            mlp[2].weight.zero_()
            mlp[2].bias.zero_()
    x = clouds(3)
    seen = captured(model, x, {"out": base.blocks.ln_f})
    with torch.no_grad():  # PointGPT's layers (ln_1, causal attention, MLP), positions re-added before each, ln_f
        own = base.forward_tokens(x)[0]  # (3, 2 + 32, C): [sos, cls, t_1..t_32]
        h = module.cls_norm(seen["out"])  # (3, 2 + 32 + 32, C): [sos, cls, prompts, points]
        logits = module.head(torch.cat([h[:, 1], h[:, S + 32:].mean(dim=1), h[:, S:S + 32].mean(dim=1)], dim=-1))
    assert (seen["out"][:, :S + 32] - own).abs().max().item() <= 1e-5  # the prompts see no point token
    assert (seen["out"][:, S + 32:] - own[:, S:]).abs().max().item() > 1e-3  # the points see the prompts
    assert torch.equal(seen["logits"], logits)


def test_eval_forward_is_deterministic_and_per_sample(gpt_backbone):
    batch = assert_eval_is_deterministic_and_per_sample(wrapped(gpt_backbone).eval(), clouds(3))
    assert (batch[0] - batch[1]).abs().max().item() > 1e-4


def test_the_official_second_encoder_pass_gives_the_same_eval_outputs_with_fewer_prompts(gpt_backbone):
    shared = wrapped(gpt_backbone, prompt_groups=8).eval()
    official = wrapped(gpt_backbone, preset="official", prompt_groups=8).eval()
    assert module_of(official).separate_encoding and not module_of(shared).separate_encoding
    official.load_state_dict(shared.state_dict(), strict=False)  # the official preset adds BatchNorm statistics
    x = clouds(3)
    with torch.no_grad():
        assert (shared(x) - official(x)).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------ what trains

def test_trainable_tensors_and_their_gradients(gpt_backbone):
    model = wrapped(gpt_backbone)
    module, base = module_of(model), model.get_base_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    parts = {n.split(".pointgst_module.default.")[1].split(".")[0] for n in trainable}
    assert parts == {"cls_token", "cls_pos", "first_conv", "prompt_mlp", "prompt_pos_mlp", "prompt_all_mlp",
                     "cls_norm", "head"}
    assert module.pos_embed is None and not any(base.pos_embed.parameters())  # the sine embedding: nothing to train
    frozen = [base.blocks.sos, base.sos_pos, base.encoder.first_conv[0].weight, base.blocks.cls_norm.weight]
    assert not any(p.requires_grad for p in frozen)
    # the backbone's own copies are unused; this module's cls_norm copy is the head's norm
    unused = [base.encoder.first_conv[0].weight, base.blocks.cls_norm.weight, base.get_classifier()[0].weight]
    assert_the_module_runs_its_copies_and_all_learn(model, unused, module.cls_norm.bias)


def test_gradient_checkpointing_gives_the_same_gradients(gpt_backbone):
    assert_checkpointing_keeps_the_gradients(wrapped(gpt_backbone).train())


# first_conv of the patch encoder: S 3-128(BN)-256; B/L 3-256(BN)-512(BN)-1024 (Conv1d weights + biases, BN affine)
FIRST_CONV = {"pointgpt_s": 3 * 128 + 128 + 2 * 128 + 128 * 256 + 256,
              "pointgpt_b": 3 * 256 + 256 + 2 * 256 + 256 * 512 + 512 + 2 * 512 + 512 * 1024 + 1024}
FIRST_CONV["pointgpt_l"] = FIRST_CONV["pointgpt_b"]


def ppt_trainable(dim: int, first_conv: int, classes: int, hidden: int = 256) -> int:
    """cls token + position 2C, the retrained first_conv, three prompt MLPs C-h-C, cls_norm 2C, the GELU head
    3C-256(BN)-256(BN)-classes: ``4C + first_conv + 3(2Ch + h + C) + 768C + 67,072 + 257 classes``."""
    head = 3 * dim * 256 + 256 + 2 * 256 + 256 * 256 + 256 + 2 * 256 + 256 * classes + classes
    return 2 * dim + first_conv + 3 * (2 * dim * hidden + hidden + dim) + 2 * dim + head


@pytest.mark.parametrize("arch, classes, expected", [
    ("pointgpt_s", 15, 992_911), ("pointgpt_s", 40, 999_336), ("pointgpt_b", 15, 2_505_999),
    ("pointgpt_b", 40, 2_512_424), ("pointgpt_l", 15, 3_097_615), ("pointgpt_l", 40, 3_104_040)])
def test_trainable_counts(arch, classes, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES[arch](num_classes=classes)
        rule = sum(p.numel() for n, p in backbone.named_parameters()  # PPT's name rule on PointGPT's keys
                   if any(s in n for s in OFFICIAL_TRAINABLE) and "cls_head_finetune" not in n)
        report = pointgst.parameter_report(pointgst.wrap(backbone, method="ppt"))
    dim = backbone.embed_dim
    assert rule == 4 * dim + FIRST_CONV[arch]  # cls_token, cls_pos, blocks.cls_norm, encoder.first_conv
    assert report.trainable == ppt_trainable(dim, FIRST_CONV[arch], classes) == expected
    print(f"{arch} + ppt, {classes} classes: {report.trainable:,} trainable of a {report.backbone_total:,} "
          f"backbone ({100 * report.ratio:.2f} %)")


# ------------------------------------------------------------------------------------------------ conversion, options

def test_convert_refuses_a_pointgpt_ppt_checkpoint_clearly(tmp_path, gpt_backbone):
    state = dict(gpt_backbone.state_dict())
    for name in ("prompt_mlp", "prompt_pos_mlp", "prompt_all_mlp"):  # what a PPT-on-PointGPT export would add
        state.update({f"blocks.{name}.0.weight": torch.zeros(256, 384), f"blocks.{name}.0.bias": torch.zeros(256),
                      f"blocks.{name}.2.weight": torch.zeros(384, 256), f"blocks.{name}.2.bias": torch.zeros(384)})
    assert official_method(state) is METHODS["ppt"]
    with pytest.raises(ValueError, match="official PPT code runs on Point-MAE only.*load_adapter"):
        convert_method_state(state, METHODS["ppt"], Path("ppt_pointgpt.pth"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_too_many_prompt_groups_is_one_clear_line(gpt_backbone):
    with pytest.raises(ValueError, match="prompt_groups=33 exceeds the backbone's num_group=32"):
        wrapped(gpt_backbone, prompt_groups=33)
