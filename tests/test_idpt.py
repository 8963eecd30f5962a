"""IDPT (``docs/peft_methods/idpt.md``): official fidelity (an official fine-tuned checkpoint converts into an adapter
that gives the official model's logits), the official trainable-parameter counts, and the behaviour that matters for
the method: where the prompt enters, what trains, per-sample eval, the errors of bad options."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters import METHODS
from pointgst.adapters.idpt import IDPT, OFFICIAL_MARKER, IDPTConfig, options_from_official
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.converting import official_method
from pointgst.errors import CheckpointError, UnknownNameError

from .cli_runs import run_cli_here
from .reference_idpt import trained_reference
from .test_dapt import assert_eval_is_deterministic_and_per_sample

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")
TINY = dict(num_classes=5, num_group=32, group_size=16)


def modelnet40_test_shapes(count: int) -> torch.Tensor:
    """The first ``count`` shapes of the real ModelNet40 test split, (count, 1024, 3)."""
    return torch.from_numpy(np.load(SHARED_DATA / "modelnet40_1024" / "test.npz")["points"][:count])


def clouds(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 128, 3, generator=torch.Generator().manual_seed(seed))


def tiny_idpt(**options) -> torch.nn.Module:
    """``point_mae_tiny`` (width 192, 4 blocks) + IDPT, 32 groups of 16 points, 5 classes, seeded."""
    torch.manual_seed(3)
    return pointgst.wrap(pointgst.create_backbone("point_mae_tiny", **TINY), method="idpt", **options)


def idpt_module(model: torch.nn.Module) -> IDPT:
    return model.base_model.model.pipeline.pointgst_module["default"]


def convert(reference: torch.nn.Module, tmp_path: Path, capsys) -> Path:
    """Save ``reference`` as an official fine-tuned checkpoint, run ``pointgst convert``; the adapter folder."""
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"base_model": state, "epoch": 300, "metrics": {"acc": 93.3}}, tmp_path / "ckpt-best.pth")
    code, out, err = run_cli_here(["convert", tmp_path / "ckpt-best.pth", tmp_path / "converted"], capsys)
    assert code == 0 and "load_adapter" in out, err
    return tmp_path / "converted" / "adapter"


def prompt_entry(model: torch.nn.Module, layers: torch.nn.ModuleList,
                 index: int) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
    """``model`` (eval) on two clouds: the sequence length each of ``layers`` receives, the generator's input
    (2, G, C) and the output of layer ``index - 1`` (None when ``index`` is 0)."""
    lengths, seen = [], {}
    hooks = [layer.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1])) for layer in layers]
    hooks.append(idpt_module(model).generator.register_forward_pre_hook(
        lambda _, args: seen.update(generator=args[0])))
    if index:
        hooks.append(layers[index - 1].register_forward_hook(lambda _, args, out: seen.update(previous=out)))
    with torch.no_grad():
        model(clouds(2))
    for hook in hooks:
        hook.remove()
    return lengths, seen["generator"], seen.get("previous")


def assert_only_the_module_and_the_cls_tokens_train(model: torch.nn.Module) -> None:
    """The trainable parameters are the IDPT module's, the cls token and its position; one training step gives each
    a non-zero gradient and every other parameter none."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    own = "base_model.model.{}.pointgst_module.default.{}"
    assert trainable == {own.format("pipeline", n) for n, _ in idpt_module(model).named_parameters()} | \
        {own.format("special_tokens", n) for n in ("cls_token", "cls_pos")}
    model.train()
    F.cross_entropy(model(clouds(4)), torch.arange(4) % 5).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


# ------------------------------------------------------------------------------------------------ official fidelity

@needs_data
@pytest.mark.parametrize("classes, groups, cls_type, head_input, batch", [
    (40, 64, "all", "cls+prompt+max", 3),  # the ModelNet40 config
    (15, 128, "promptonly", "prompt", 2),  # the OBJ_BG config (on ModelNet40 shapes)
])
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys, classes, groups, cls_type,
                                                                    head_input, batch):
    reference = trained_reference(classes, groups, prompt_layer=11, cls_type=cls_type)
    points = modelnet40_test_shapes(batch)
    with torch.no_grad():
        expected = reference(points)
    state = reference.state_dict()
    # the generator's 4 BatchNorms are saved twice (bnN and convN.1): 4 convolutions + 2 x 4 x 5 BatchNorm entries
    assert sum(k.startswith("blocks.cls.") for k in state) == 4 + 40 and "prompt_pos" in state
    loaded = pointgst.load_adapter(convert(reference, tmp_path, capsys), num_group=groups).eval()
    config = loaded.peft_config["default"]
    assert config.method == "idpt" and config.preset == "official" and config.bn_stats == "update"
    assert config.method_configs()["idpt"] == IDPTConfig(head_input=head_input)
    with torch.no_grad():
        logits = loaded(points)
    assert logits.shape == (batch, classes) and expected.abs().max().item() > 0.1
    assert (logits - expected).abs().max().item() <= 1e-5


@needs_data
def test_an_obj_only_checkpoint_needs_its_prompt_block_named_at_conversion(tmp_path, capsys):
    """OBJ_ONLY inserts the prompt before block 6, which no tensor shape records: the conversion keeps the default
    (the last block), and ``pointgst convert --option prompt_block=6`` gives the official logits."""
    reference = trained_reference(15, 128, prompt_layer=6, cls_type="all")
    points = modelnet40_test_shapes(2)
    with torch.no_grad():
        expected = reference(points)
    adapter = convert(reference, tmp_path, capsys)
    with torch.no_grad():
        unset = pointgst.load_adapter(adapter, num_group=128).eval()(points)
    assert (unset - expected).abs().max().item() > 1e-3
    code, _, err = run_cli_here(["convert", tmp_path / "ckpt-best.pth", tmp_path / "block6", "--option",
                                 "prompt_block=6"], capsys)
    assert code == 0, err
    loaded = pointgst.load_adapter(tmp_path / "block6" / "adapter", num_group=128).eval()
    assert json.loads((tmp_path / "block6" / "adapter" / "adapter_config.json").read_text())["options"][
        "prompt_block"] == 6
    with torch.no_grad():
        logits = loaded(points)
    assert (logits - expected).abs().max().item() <= 1e-5


def test_options_from_official_read_the_head_layout():
    reference = trained_reference(15, 64, prompt_layer=11, cls_type="all")
    state = dict(reference.state_dict())
    assert options_from_official(state) == {"head_input": "cls+prompt+max"}
    only = trained_reference(15, 64, prompt_layer=11, cls_type="promptonly").state_dict()
    assert options_from_official(dict(only)) == {"head_input": "prompt"}
    two = dict(trained_reference(15, 64, prompt_layer=11, cls_type="promptcls").state_dict())
    with pytest.raises(CheckpointError, match="cannot be told apart by shape"):
        options_from_official(two)


def test_the_twice_saved_norms_are_aliases_that_must_repeat_their_twin(tmp_path, capsys):
    """The generator's BatchNorms are saved as bnN and as convN.1: the module names the second copies as aliases,
    the converter checks each equals its twin and refuses a checkpoint where one differs."""
    reference = trained_reference(15, 64, prompt_layer=11, cls_type="all")
    model = pointgst.wrap(pointgst.create_backbone("point_mae", num_classes=15, num_group=64), method="idpt")
    aliases = model.base_model.model.pipeline.pointgst_module["default"].official_aliases()
    state = reference.state_dict()
    assert set(aliases) == {k for k in state if re.match(r"blocks\.cls\.conv\d\.1\.", k)} and len(aliases) == 20
    assert all(state[twin].equal(state[alias]) for alias, twin in aliases.items())
    tampered = {f"module.{k}": v.clone() for k, v in state.items()}
    tampered["module.blocks.cls.conv2.1.bias"] += 1
    torch.save({"base_model": tampered}, tmp_path / "tampered.pth")
    code, _, err = run_cli_here(["convert", tmp_path / "tampered.pth", tmp_path / "out"], capsys)
    assert code != 0 and "blocks.cls.conv2.1.bias" in err and not (tmp_path / "out").exists(), err


def test_the_official_marker_finds_idpt_checkpoints_only():
    state = trained_reference(40, 64, prompt_layer=11, cls_type="all").state_dict()
    assert official_method(state) is METHODS["idpt"]
    assert re.search(OFFICIAL_MARKER, "blocks.cls.conv5.0.weight")
    others = ["blocks.blocks.0.gft_adapter.down.weight", "blocks.blocks.0.Adapter_MLP.down_proj.weight",
              "prompt_pos_mlp.0.weight", "cls_head_finetune.0.weight", "blocks.blocks.3.mlp.fc1.weight", "prompt_pos",
              "blocks.cls_norm.weight"]
    assert not any(re.search(OFFICIAL_MARKER, key) for key in others)


# ------------------------------------------------------------------------------------------------ parameter counts

@pytest.mark.parametrize("classes, groups, options, expected", [
    (15, 128, {}, 1_696_783),  # ScanObjectNN PB_T50_RS (official figure)
    (40, 64, {}, 1_703_208),  # ModelNet40 (official figure)
    (15, 128, {"prompt_block": 6}, 1_696_783),  # OBJ_ONLY: the block does not change the count
    (15, 128, {"head_input": "prompt"}, 1_500_175),  # OBJ_BG: the head reads one token width
])
def test_trainable_parameters_equal_the_official_counts(classes, groups, options, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES["point_mae"](num_classes=classes, num_group=groups)
        report = pointgst.parameter_report(pointgst.wrap(backbone, method="idpt", **options))
    assert report.trainable == expected
    assert report.breakdown["method: generator"] == 3 * 384 * 768 + 384 * 1152 + 4 * 2 * 384
    assert report.breakdown["cls token + cls position"] == 2 * 384


# ------------------------------------------------------------------------------------------------ behaviour

@pytest.mark.parametrize("prompt_block, index", [(-1, 3), (1, 1), (0, 0), (-4, 0)])
def test_the_prompt_enters_before_its_block_from_the_tokens_that_block_receives(prompt_block, index):
    model = tiny_idpt(prompt_block=prompt_block).eval()
    lengths, generator_input, previous = prompt_entry(model, model.get_base_model().blocks.blocks, index)
    assert lengths == [33] * index + [34] * (4 - index)  # [cls, 32 point tokens], then the prompt joins
    if index:  # the point tokens the block outputs, before the positions are added
        assert torch.equal(generator_input, previous[:, 1:])
    assert generator_input.shape == (2, 32, 192)


def test_eval_forward_is_deterministic_and_per_sample():
    assert_eval_is_deterministic_and_per_sample(tiny_idpt().eval(), clouds(3, seed=4))


def test_only_the_generator_the_head_and_the_cls_tokens_train():
    model = tiny_idpt()
    module = idpt_module(model)
    assert "prompt_pos" in dict(module.named_buffers())  # kept, saved, never trained
    assert_only_the_module_and_the_cls_tokens_train(model)
    assert set(module.official_names()) == set(module.state_dict())


def test_the_official_preset_keeps_the_module_and_lets_the_encoder_statistics_drift():
    statistics = {}
    for preset in (None, "official"):
        model = tiny_idpt(preset=preset)
        assert model.peft_config["default"].method_configs()["idpt"] == IDPTConfig()
        before = {k: v.clone() for k, v in model.state_dict().items() if ".encoder." in k and "running_mean" in k}
        model.train()
        model(clouds(4))
        after = model.state_dict()
        statistics[preset] = any(not torch.equal(v, after[k]) for k, v in before.items())
    assert statistics == {None: False, "official": True}


@pytest.mark.parametrize("options, arch, message", [
    ({"prompt_block": 4}, "point_mae_tiny", r"prompt_block=4 names no block of this 4-block backbone; use -4\.\.3"),
    ({"prompt_block": -5}, "point_mae_tiny", r"prompt_block=-5 names no block"),
    ({"prompt_block": True}, "point_mae_tiny", r"prompt_block must be an int"),
    ({"k": 33}, "point_mae_tiny", r"k=33 feature-space neighbours need at least 33 point tokens.*num_group=32"),
    ({"k": 0}, "point_mae_tiny", r"k must be an int >= 1"),
    ({"head_input": "cls+prompt+mean"}, "point_mae_tiny", r"unknown head_input 'cls\+prompt\+mean'; choose one of"),
    ({}, "point_mae_tiny_seg", r"idpt runs on point_mae.*pointgpt_l backbones.*not on point_mae_tiny_seg"),
])
def test_bad_options_raise_one_clear_error(options, arch, message):
    with pytest.raises(ValueError, match=message) as error:
        pointgst.wrap(pointgst.create_backbone(arch, **TINY), method="idpt", **options)
    assert "\n" not in str(error.value)
    if isinstance(error.value, UnknownNameError):
        assert "'prompt'" in str(error.value)
