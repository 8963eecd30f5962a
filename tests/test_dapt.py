"""DAPT (``docs/peft_methods/dapt.md``): official-checkpoint fidelity, the official trainable counts, and behaviour.

The fidelity reference (``tests/reference_dapt.py``) is written from the official formulas in the official key
layout; an official-style fine-tuned checkpoint of it converts with ``pointgst convert`` into an adapter that must
give its logits on real ModelNet40 shapes.
"""

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters import METHODS
from pointgst.adapters.dapt import DAPT, DAPTConfig, options_from_official
from pointgst.adapters.dapt.official import OFFICIAL_MARKER
from pointgst.backbones.factory import ARCHITECTURES

from .cli_runs import run_cli_here
from .reference_dapt import trained_reference

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")

#: the official configs' DAPT options (cfgs/finetune_*_dapt.yaml), by dataset
OFFICIAL = {
    "modelnet40": dict(rank=72, adapter_dropout=0.0, class_token=True, prompt_token="none", patch_token="max"),
    "obj_bg": dict(rank=64, adapter_dropout=0.5, class_token=True, prompt_token="mean", patch_token="max"),
    "obj_only": dict(rank=64, adapter_dropout=0.0, class_token=True, prompt_token="mean", patch_token="none"),
    "pb_t50_rs": dict(rank=64, adapter_dropout=0.2, class_token=True, prompt_token="mean", patch_token="max"),
}
#: the same head layouts as the official config keys (class_token, prompt_token, patch_token)
OFFICIAL_HEAD = {"modelnet40": ("use", "None", "max"), "obj_only": ("use", "mean", "None"),
                 "pb_t50_rs": ("use", "mean", "max")}
TINY = dict(num_classes=5, num_group=32, group_size=16)  # the contract matrix's point_mae_tiny setting


def modelnet40_test_shapes(count: int) -> torch.Tensor:
    """The first ``count`` shapes of the real ModelNet40 test split, (count, 1024, 3)."""
    return torch.from_numpy(np.load(SHARED_DATA / "modelnet40_1024" / "test.npz")["points"][:count])


def clouds(batch: int, seed: int, points: int = 128) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ARCHITECTURES["point_mae_tiny"](**TINY)


def tiny_model(seed: int = 0, backbone: torch.nn.Module | None = None, **options) -> torch.nn.Module:
    """point_mae_tiny + DAPT with every trainable tensor perturbed (as after training), in eval mode."""
    model = pointgst.wrap(backbone or tiny_backbone(seed), method="dapt", **options)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def dapt_module(model: torch.nn.Module) -> DAPT:
    return model.base_model.model.pipeline.pointgst_module["default"]


def converted_gives_the_reference_logits(reference: torch.nn.Module, tmp_path: Path, capsys,
                                         epoch: int) -> torch.nn.Module:
    """Save ``reference`` (64 groups) as an official fine-tuned checkpoint, ``pointgst convert`` it, load the adapter;
    checks the official DAPT config and the reference's logits on 3 real ModelNet40 shapes. The loaded model."""
    points = modelnet40_test_shapes(3)
    with torch.no_grad():
        expected = reference(points)
    state = reference.state_dict()
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": epoch}, tmp_path / "dapt.pth")
    code, out, err = run_cli_here(["convert", tmp_path / "dapt.pth", tmp_path / "converted"], capsys)
    assert code == 0 and "load_adapter" in out, err
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter", num_group=64).eval()
    config = loaded.peft_config["default"]
    assert config.method == "dapt" and config.preset == "official" and config.bn_stats == "update"
    with torch.no_grad():
        logits = loaded(points)
    assert math.isfinite(logits.abs().max().item()) and logits.abs().max().item() > 0.1
    assert (logits - expected).abs().max().item() <= 1e-5
    return loaded


def assert_eval_is_deterministic_and_per_sample(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    """``model`` (eval) on ``points`` (B, N, 3) twice: equal; one cloud at a time: within 1e-5. The logits."""
    with torch.no_grad():
        together, again = model(points), model(points)
        alone = torch.cat([model(points[i:i + 1]) for i in range(len(points))])
    assert torch.equal(together, again)
    assert (together - alone).abs().max().item() <= 1e-5
    return together


def assert_checkpointing_keeps_the_gradients(build: Callable[[], torch.nn.Module], points: torch.Tensor) -> None:
    """The gradients of one cross-entropy step of ``build()`` on ``points``, without and with gradient checkpointing
    (the same seeded drop-path and dropout draws): non-zero and equal within 1e-6."""
    grads = []
    for recompute in (False, True):
        model = build().train()
        if recompute:
            model.gradient_checkpointing_enable()
        torch.manual_seed(7)  # the same drop-path and dropout draws in both runs
        F.cross_entropy(model(points), torch.arange(len(points)) % 5).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().max() > 0 and (grads[0] - grads[1]).abs().max().item() <= 1e-6


# ------------------------------------------------------------------------------------------------ official fidelity

@needs_data
@pytest.mark.parametrize("dataset", ["modelnet40", "pb_t50_rs", "obj_only"])
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys, dataset):
    classes = 40 if dataset == "modelnet40" else 15
    reference = trained_reference(classes, 64, rank=OFFICIAL[dataset]["rank"], head=OFFICIAL_HEAD[dataset])
    assert sum(".Adapter_MLP." in k for k in reference.state_dict()) == 12 * 8
    loaded = converted_gives_the_reference_logits(reference, tmp_path, capsys, epoch=300)
    options = loaded.peft_config["default"].method_configs()["dapt"]
    assert {k: getattr(options, k) for k in OFFICIAL[dataset] if k != "adapter_dropout"} == \
        {k: v for k, v in OFFICIAL[dataset].items() if k != "adapter_dropout"}


def test_official_names_cover_every_tensor_once_and_only_dapt_keys_carry_the_marker():
    module = dapt_module(tiny_model())
    names = module.official_names()
    assert names.keys() == module.state_dict().keys() and len(set(names.values())) == len(names)
    assert names["encoder_tfts.gamma"] == "tfts_gamma_1" and names["norm_tfts.beta"] == "tfts_beta_2"
    assert names["blocks.3.qkv.gamma"] == "blocks.blocks.3.attn.tfts_gamma_1"
    assert names["blocks.0.fc1.beta"] == "blocks.blocks.0.mlp.tfts_beta_1"
    assert names["blocks.2.prompt.gamma"] == "blocks.blocks.2.tfts_gamma_3"
    assert names["blocks.1.adapter.norm.weight"] == "blocks.blocks.1.Adapter_MLP.adapter_layer_norm_before.weight"
    assert names["head.5.running_var"] == "cls_head_finetune.5.running_var"
    marked = {v for v in names.values() if re.search(OFFICIAL_MARKER, v)}
    assert marked == {v for v in names.values() if ".Adapter_MLP." in v} and len(marked) == 4 * 8
    others = list(ARCHITECTURES["point_mae"](num_classes=15).state_dict()) + [
        "blocks.blocks.0.gft_adapter.down.weight", "blocks.layers.0.Adapter_MLP.down_proj.weight"]
    assert not any(re.search(OFFICIAL_MARKER, k) for k in others)


@pytest.mark.parametrize("dataset", ["modelnet40", "obj_bg", "obj_only", "pb_t50_rs"])
def test_options_read_from_an_official_checkpoints_shapes(dataset):
    rank, official = OFFICIAL[dataset]["rank"], OFFICIAL[dataset]
    parts = 1 + (official["prompt_token"] != "none") + (official["patch_token"] != "none")
    state = {"blocks.blocks.0.Adapter_MLP.down_proj.weight": torch.empty(rank, 384),
             "cls_head_finetune.0.weight": torch.empty(256, parts * 384),
             "cls_head_finetune.8.weight": torch.empty(40 if dataset == "modelnet40" else 15, 256)}
    assert options_from_official(state) == {k: v for k, v in official.items() if k != "adapter_dropout"}
    state["cls_head_finetune.0.weight"] = torch.empty(256, 4 * 384)
    with pytest.raises(ValueError, match="not an official DAPT classifier"):
        options_from_official(state)


# ------------------------------------------------------------------------------------------------ trainable counts

@pytest.mark.parametrize("classes, groups, dataset, expected", [(15, 128, "pb_t50_rs", 1_087_771),
                                                                 (40, 64, "modelnet40", 1_069_716)])
def test_trainable_counts_equal_the_official_code(classes, groups, dataset, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES["point_mae"](num_classes=classes, num_group=groups)
        model = pointgst.wrap(backbone, method="dapt", **OFFICIAL[dataset])
    report = pointgst.parameter_report(model)
    print(f"dapt {dataset}: {report.trainable:,} trainable")
    assert report.trainable == expected
    assert report.breakdown["cls token + cls position"] == 2 * 384


# ------------------------------------------------------------------------------------------------ behaviour

def test_every_block_inserts_one_prompt_after_the_cls_token():
    model = tiny_model()
    seen = []
    hook = model.get_base_model().norm.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    with torch.no_grad():
        model(clouds(2, 1))
    hook.remove()
    assert seen == [torch.Size([2, 1 + 4 + 32, 192])]  # cls, one prompt per block (depth 4), 32 patch tokens


def test_at_init_the_adapter_adds_nothing_and_each_prompt_is_its_shift():
    backbone = tiny_backbone().eval()
    module = METHODS["dapt"].build(backbone, DAPTConfig())
    own, block = module.blocks[1], backbone.blocks.blocks[1]
    x = torch.randn(2, 9, 192)
    with torch.no_grad():
        assert torch.equal(own.adapter(x), torch.zeros_like(x))
        out = own(block, x)
    assert out.shape == (2, 10, 192) and torch.equal(out[:, 1], own.prompt.beta.expand(2, -1))
    gammas = torch.cat([p for n, p in module.named_parameters() if n.endswith("gamma")])
    assert abs(gammas.mean().item() - 1) < 0.01 and abs(gammas.std().item() - 0.02) < 0.005


def test_head_input_slices_the_cls_token_the_prompts_and_the_patches():
    x = torch.randn(2, 1 + 4 + 32, 8)
    module = DAPT(8, 4, 32, 5, DAPTConfig(prompt_token="max", patch_token="mean"))
    expected = torch.cat([x[:, 0], x[:, 1:5].max(dim=1).values, x[:, 5:].mean(dim=1)], dim=-1)
    assert torch.equal(module.head_input(x, 32), expected)
    only_prompts = DAPT(8, 4, 32, 5, DAPTConfig(class_token=False, prompt_token="mean", patch_token="none"))
    assert torch.equal(only_prompts.head_input(x, 32), x[:, 1:5].mean(dim=1))
    joint = DAPT(8, 4, 32, 5, DAPTConfig(prompt_token="joint", patch_token="max"))
    assert torch.equal(joint.head_input(x, 32), torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))


def test_eval_forward_is_deterministic_and_per_sample():
    assert_eval_is_deterministic_and_per_sample(tiny_model(**OFFICIAL["pb_t50_rs"]), clouds(3, 2))


def test_one_training_step_reaches_every_dapt_tensor_and_no_backbone_weight():
    model = tiny_model(**OFFICIAL["obj_bg"]).train()
    F.cross_entropy(model(clouds(4, 3)), torch.arange(4) % 5).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(".pipeline.pointgst_module." in n or ".special_tokens.pointgst_module." in n for n in trainable)
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert sum(".adapter.up." in n and p.grad.abs().sum() > 0 for n, p in trainable.items()) == 4 * 2


def encoder_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [v.clone() for k, v in model.state_dict().items() if ".encoder." in k and "running_" in k]


def test_official_preset_lets_the_frozen_encoder_statistics_drift_and_the_default_does_not():
    for preset, drifts in ((None, False), ("official", True)):
        model = pointgst.wrap(tiny_backbone(), method="dapt", preset=preset).train()
        before = encoder_statistics(model)
        with torch.no_grad():
            model(clouds(4, 4))
        assert any(not torch.equal(a, b) for a, b in zip(before, encoder_statistics(model))) == drifts, preset


def test_save_reload_gives_identical_logits_and_unload_returns_the_backbone(tmp_path):
    backbone = tiny_backbone()
    pristine = copy.deepcopy(backbone)
    model = tiny_model(backbone=backbone, **OFFICIAL["pb_t50_rs"])
    with torch.no_grad():
        expected = model(clouds(2, 5))
    model.save_pretrained(tmp_path / "adapter")
    reloaded = pointgst.load_adapter(tmp_path / "adapter", copy.deepcopy(pristine)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(clouds(2, 5)), expected)
    unloaded = model.unload().state_dict()
    assert all(torch.equal(unloaded[k], v) for k, v in pristine.state_dict().items())


@pytest.mark.parametrize("options, message", [
    (dict(rank=0), "rank must be an int >= 1"),
    (dict(adapter_dropout=1.0), "adapter_dropout must be a number in"),
    (dict(prompt_token="avg"), "unknown prompt_token pooling 'avg'"),
    (dict(class_token="use"), "class_token must be True or False"),
    (dict(class_token=False, patch_token="none"), "turn at least one on"),
])
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pointgst.wrap(ARCHITECTURES["point_mae_tiny"](**TINY), method="dapt", **options)


def test_a_segmentation_backbone_is_refused_with_the_alternatives():
    segmentation = ARCHITECTURES["point_mae_tiny_seg"](num_group=32, group_size=16)
    with pytest.raises(ValueError, match=r"dapt runs on point_mae, .*pointgpt_l .*not on point_mae_tiny_seg; .*pcsa"):
        pointgst.wrap(segmentation, method="dapt")


def test_gradient_checkpointing_gives_the_same_gradients():
    assert_checkpointing_keeps_the_gradients(lambda: tiny_model(**OFFICIAL["obj_bg"]), clouds(4, 6))
