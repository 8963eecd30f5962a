"""DAPT on the PointGPT family (``docs/peft_methods/dapt.md`` §9): official-checkpoint fidelity, the official
trainable counts on PointGPT-S/B/L, the sequence layout per family, causality, and behaviour.

The fidelity reference (``tests/reference_dapt_pointgpt.py``) is written from the formulas of PointGST's official
``GPT_Transformer_DAPT`` in the official key layout; an official-style fine-tuned checkpoint of it converts with
``pointgst convert`` into an adapter that must give its logits on real ModelNet40 shapes.
"""

import re

import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters.dapt import GPTDAPT, DAPTConfig, options_from_official
from pointgst.adapters.dapt.official import GPT_HEAD, OFFICIAL_MARKER
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.backbones.pointgpt import SIZES

from .reference_dapt_pointgpt import ReferenceGPTDAPT, official_trainable, trained_reference
from .test_dapt import (
    assert_checkpointing_keeps_the_gradients,
    assert_eval_is_deterministic_and_per_sample,
    clouds,
    converted_gives_the_reference_logits,
    dapt_module,
    needs_data,
    tiny_model,
)

#: the official PointGPT-L DAPT configs' options (PointGST cfgs/pointgpt/dapt/*.yaml and models/GPT_DAPT.py): the
#: adapter width 64 and dropout 0 are fixed in the code, the head is the cls token + max over every later token
OFFICIAL = dict(rank=64, adapter_dropout=0.0, **GPT_HEAD)
SMALL = dict(num_classes=5, num_group=32, group_size=16)  # the contract matrix's PointGPT setting


def gpt_model(seed: int = 0, **options) -> torch.nn.Module:
    """pointgpt_s (32 groups of 16) + DAPT with every trainable tensor perturbed (as after training), in eval mode."""
    torch.manual_seed(seed)
    return tiny_model(seed, backbone=ARCHITECTURES["pointgpt_s"](**SMALL), **{**OFFICIAL, **options})


def trainable_formula(c: int, depth: int, classes: int, rank: int = 64) -> int:
    """The PointGPT DAPT trainable count (§9): cls token + position 2C; per block the scale-and-shift pairs after
    ln_1, ln_2, mlp[0] (4C), mlp[2] and on the prompt, 2 * 8C = 16C, and the adapter, LN 2C + scale (C + 1) +
    down (rC + r) + up (rC + C); the cls_norm copy 2C; the head 2C*256+256 + 512 + 256*256+256 + 512 + 256*k+k."""
    adapter = 2 * c + (c + 1) + (rank * c + rank) + (rank * c + c)
    head = (2 * c * 256 + 256) + 512 + (256 * 256 + 256) + 512 + (256 * classes + classes)
    return 2 * c + depth * (16 * c + adapter) + 2 * c + head


# ------------------------------------------------------------------------------------------------ official fidelity

@needs_data
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys):
    reference = trained_reference(40, 64)  # PointGPT-S size, the ModelNet40 config's 64 groups of 32
    assert sum(re.search(OFFICIAL_MARKER, k) is not None for k in reference.state_dict()) == 12 * 8
    loaded = converted_gives_the_reference_logits(reference, tmp_path, capsys, epoch=50)
    options = loaded.peft_config["default"].method_configs()["dapt"]
    assert {k: getattr(options, k) for k in ("rank", *GPT_HEAD)} == {"rank": 64, **GPT_HEAD}
    assert isinstance(dapt_module(loaded), GPTDAPT)


def test_official_names_cover_every_tensor_once_and_the_marker_matches_only_adapter_keys():
    module = dapt_module(gpt_model())
    names = module.official_names()
    assert names.keys() == module.state_dict().keys() and len(set(names.values())) == len(names)
    assert names["blocks.0.norm1.gamma"] == "blocks.layers.0.tfts_gamma_1"
    assert names["blocks.3.norm2.beta"] == "blocks.layers.3.tfts_beta_2"
    assert names["blocks.2.prompt.gamma"] == "blocks.layers.2.tfts_gamma_3"
    assert names["blocks.1.fc1.gamma"] == "blocks.layers.1.tfts_gamma_4"
    assert names["blocks.11.fc2.beta"] == "blocks.layers.11.tfts_beta_5"
    assert names["blocks.5.adapter.down.weight"] == "blocks.layers.5.adapt_mlp.down_proj.weight"
    assert names["cls_norm.weight"] == "blocks.cls_norm.weight"
    assert names["head.5.running_var"] == "blocks.cls_head_finetune.5.running_var"
    reference_keys = ReferenceGPTDAPT(5, 32, group_size=16).state_dict().keys()
    assert set(names.values()) <= set(reference_keys)  # the official layout
    marked = {v for v in names.values() if re.search(OFFICIAL_MARKER, v)}
    assert marked == {v for v in names.values() if ".adapt_mlp." in v} and len(marked) == 12 * 8
    others = list(ARCHITECTURES["pointgpt_s"](num_classes=15).state_dict()) + [
        "blocks.layers.0.gft_adapter.down.weight", "blocks.layers.0.Adapter_MLP.down_proj.weight"]
    assert not any(re.search(OFFICIAL_MARKER, k) for k in others)
    assert re.search(OFFICIAL_MARKER, "blocks.blocks.0.Adapter_MLP.down_proj.weight")  # Point-MAE layout still


def test_options_read_from_an_official_pointgpt_checkpoints_shapes():
    state = {"blocks.layers.0.adapt_mlp.down_proj.weight": torch.empty(64, 1024),
             "blocks.cls_head_finetune.0.weight": torch.empty(256, 2 * 1024)}
    assert options_from_official(state) == {"rank": 64, **GPT_HEAD}
    state["blocks.cls_head_finetune.0.weight"] = torch.empty(256, 3 * 1024)
    with pytest.raises(ValueError, match="not an official PointGPT DAPT classifier"):
        options_from_official(state)


# ------------------------------------------------------------------------------------------------ trainable counts

@pytest.mark.parametrize("size", ["pointgpt_s", "pointgpt_b", "pointgpt_l"])
@pytest.mark.parametrize("classes, groups", [(15, 128), (40, 64)])
def test_trainable_counts_follow_the_formula_and_the_official_rule(size, classes, groups):
    spec = SIZES[size]
    with torch.device("meta"):
        model = pointgst.wrap(ARCHITECTURES[size](num_classes=classes, num_group=groups), method="dapt", **OFFICIAL)
        reference = ReferenceGPTDAPT(classes, groups, dim=spec["embed_dim"], depth=spec["depth"],
                                     heads=spec["num_heads"], large_encoder=spec["large_encoder"])
    report = pointgst.parameter_report(model)
    print(f"dapt {size}, {classes} classes: {report.trainable:,} trainable")
    assert report.trainable == trainable_formula(spec["embed_dim"], spec["depth"], classes)
    assert report.trainable == official_trainable(reference)
    assert report.breakdown["cls token + cls position"] == 2 * spec["embed_dim"]


def test_pointgpt_l_counts_of_the_official_configs():
    assert trainable_formula(1024, 24, 40) == 4_244_544  # ModelNet40
    assert trainable_formula(1024, 24, 15) == 4_238_119  # OBJ_BG, OBJ_ONLY, PB_T50_RS


# ------------------------------------------------------------------------------------------------ behaviour

@pytest.mark.parametrize("arch, norm, expected", [
    ("point_mae_tiny", "norm", (2, 1 + 4 + 32, 192)),  # [cls, prompts (depth 4), patches]
    ("pointgpt_s", "blocks.ln_f", (2, 2 + 12 + 32, 384)),  # [sos, cls, prompts (depth 12), patches]
])
def test_the_final_sequence_holds_one_prompt_per_block_per_family(arch, norm, expected):
    torch.manual_seed(0)
    model = tiny_model(backbone=ARCHITECTURES[arch](**SMALL))
    seen = []
    hook = model.get_base_model().get_submodule(norm).register_forward_pre_hook(
        lambda _, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        model(clouds(2, 1))
    hook.remove()
    assert seen == [expected]


@pytest.mark.parametrize("layout", ["end_aligned", "own"])
def test_positions_are_re_added_before_every_block(layout):
    """Official (``end_aligned``): the 2 + L position rows go to the last 2 + L tokens of the growing sequence;
    default (``own``): sos and cls get their rows, every point token its own, the prompts none."""
    model = gpt_model(gpt_positions=layout)
    backbone, module = model.get_base_model(), dapt_module(model)
    inputs = []
    hooks = [layer.ln_1.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
             for layer in backbone.blocks.layers[:3]]
    points = clouds(1, 2)
    with torch.no_grad():
        model(points)
        for hook in hooks:
            hook.remove()
        neighborhood, centers = backbone.group(points)
        x, pos = backbone.sequence(backbone.encoder(neighborhood), centers)  # (1, 2 + 32, C) each
        outputs = [x] + [own(layer, seen) for own, layer, seen in zip(module.blocks, backbone.blocks.layers, inputs)]
    assert [s.shape[1] for s in inputs] == [2 + 32, 3 + 32, 4 + 32]
    for previous, seen in zip(outputs, inputs):  # block i's input: block i-1's output plus the positions
        added = torch.zeros_like(previous)
        if layout == "end_aligned":
            added[:, -pos.shape[1]:] = pos
        else:
            added[:, :2], added[:, -32:] = pos[:, :2], pos[:, 2:]
        assert (seen - previous - added).abs().max().item() <= 1e-6


def test_the_official_preset_reproduces_both_pointgpt_quirks_and_each_changes_the_logits():
    """``gpt_mlp_input`` and ``gpt_positions``: the official preset sets the official code's values; each differs
    from the corrected default in the logits of the same trained tensors."""
    backbone = ARCHITECTURES["pointgpt_s"](**SMALL)
    config = pointgst.wrap(backbone, method="dapt", preset="official").peft_config["default"].method_configs()["dapt"]
    assert (config.gpt_mlp_input, config.gpt_positions) == ("stream", "end_aligned")
    points = clouds(2, 3)
    with torch.no_grad():
        logits = {options: gpt_model(gpt_mlp_input=options[0], gpt_positions=options[1])(points)
                  for options in (("norm", "own"), ("stream", "own"), ("norm", "end_aligned"))}
    default = logits["norm", "own"]
    assert (logits["stream", "own"] - default).abs().max().item() > 1e-4
    assert (logits["norm", "end_aligned"] - default).abs().max().item() > 1e-4


def test_causal_attention_keeps_sos_and_cls_outputs_input_independent_and_prompts_see_every_token():
    model = gpt_model()
    finals = []
    hook = model.get_base_model().blocks.ln_f.register_forward_pre_hook(lambda _, args: finals.append(args[0]))
    with torch.no_grad():
        model(clouds(1, 3))
        model(clouds(1, 4))
    hook.remove()
    first, second = finals
    assert (first[:, :2] - second[:, :2]).abs().max().item() <= 1e-5  # sos and cls see only sos and cls
    assert (first[:, 2:] - second[:, 2:]).abs().amax(dim=-1).min().item() > 1e-3  # every prompt and patch differs


def test_joint_head_pools_prompts_and_patches_together_after_the_cls_token():
    x = torch.randn(2, 2 + 4 + 32, 8)
    joint = GPTDAPT(8, 4, 32, torch.nn.LayerNorm(8), 5, DAPTConfig(**GPT_HEAD))
    assert torch.equal(joint.head_input(x, 32), torch.cat([x[:, 1], x[:, 2:].max(dim=1).values], dim=-1))
    split = GPTDAPT(8, 4, 32, torch.nn.LayerNorm(8), 5, DAPTConfig(prompt_token="mean", patch_token="max"))
    expected = torch.cat([x[:, 1], x[:, 2:6].mean(dim=1), x[:, 6:].max(dim=1).values], dim=-1)
    assert torch.equal(split.head_input(x, 32), expected)
    with pytest.raises(ValueError, match=re.escape("prompt_token='joint' pools the prompts with the patch tokens")):
        DAPTConfig(prompt_token="joint", patch_token="none")


def test_eval_forward_is_deterministic_and_per_sample():
    together = assert_eval_is_deterministic_and_per_sample(gpt_model(), clouds(3, 5))
    assert together.shape == (3, 5)


def test_one_training_step_reaches_every_dapt_tensor_and_no_backbone_weight():
    model = gpt_model(adapter_dropout=0.2).train()
    F.cross_entropy(model(clouds(4, 6)), torch.arange(4) % 5).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(".pipeline.pointgst_module." in n or ".special_tokens.pointgst_module." in n for n in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert sum(".cls_norm." in n for n in trainable) == 2  # the module's own copy of the head norm
    assert not model.get_base_model().blocks.cls_norm.weight.requires_grad


def test_cls_norm_starts_as_the_backbones_and_is_saved_with_the_adapter(tmp_path):
    torch.manual_seed(0)
    backbone = ARCHITECTURES["pointgpt_s"](**SMALL)
    with torch.no_grad():
        backbone.blocks.cls_norm.weight.normal_()
    model = pointgst.wrap(backbone, method="dapt", **OFFICIAL)
    assert torch.equal(dapt_module(model).cls_norm.weight, backbone.blocks.cls_norm.weight)
    model.save_pretrained(tmp_path / "adapter")
    saved = pointgst.load_adapter(tmp_path / "adapter", ARCHITECTURES["pointgpt_s"](**SMALL))
    assert torch.equal(dapt_module(saved).cls_norm.weight, backbone.blocks.cls_norm.weight)


def test_gradient_checkpointing_gives_the_same_gradients():
    assert_checkpointing_keeps_the_gradients(lambda: gpt_model(adapter_dropout=0.2), clouds(2, 8))
