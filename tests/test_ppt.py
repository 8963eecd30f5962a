"""PPT (``docs/peft_methods/ppt.md``): an official checkpoint converts into an adapter that gives the official model's
logits on real ModelNet40 shapes, the trainable counts equal the official code's, and the behaviours the method
depends on (prompt patches, the official second encoder pass, which tensors train, per-sample outputs)."""

import copy
import math
import re

import pytest
import torch

import pointgst
from pointgst.adapters import FORWARD, METHODS
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.converting import official_method
from pointgst.ops import farthest_point_sample

from .cli_runs import run_cli_here
from .reference_ppt import OFFICIAL_TRAINABLE, ReferencePPT, trained_reference
from .test_dapt import assert_eval_is_deterministic_and_per_sample
from .test_official_pointgst import ReferencePointGST, modelnet40_test_shapes, needs_data

TINY = {"num_group": 32, "group_size": 16}


def module_of(model: torch.nn.Module, adapter: str = "default") -> torch.nn.Module:
    return model.base_model.model.pipeline.pointgst_module[adapter]


def tiny_model(**options) -> torch.nn.Module:
    torch.manual_seed(3)
    return pointgst.wrap(pointgst.create_backbone("point_mae_tiny", num_classes=5, **TINY), method="ppt", **options)


def clouds(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 128, 3, generator=torch.Generator().manual_seed(seed))


def wrapped_like(reference: ReferencePPT, **options) -> torch.nn.Module:
    """pointgst's PPT holding the reference's tensors, loaded by ``official_names`` (what ``pointgst convert`` does)."""
    state = reference.state_dict()
    backbone = ARCHITECTURES["point_mae"](num_classes=reference.cls_head_finetune[8].out_features,
                                          num_group=reference.num_group, skip_near_origin=True)
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    model = pointgst.wrap(backbone, method="ppt", preset="official", **options)
    module = module_of(model)
    module.load_state_dict({k: state[v] for k, v in module.official_names().items()})
    return model.eval()


def assert_the_module_runs_its_copies_and_all_learn(model: torch.nn.Module, unused: list[torch.Tensor],
                                                    used: torch.Tensor) -> None:
    """In eval, shifting the ``unused`` tensors leaves the logits as they were and shifting ``used`` changes them;
    then one training step gives every trainable tensor a non-zero gradient."""
    x = clouds(3)
    model.eval()
    with torch.no_grad():
        before = model(x)
        for tensor in unused:
            tensor.add_(1.0)
        assert torch.equal(model(x), before)
        used.add_(0.1)
        assert not torch.allclose(model(x), before)
    model.train()
    torch.nn.functional.cross_entropy(model(clouds(4, seed=2)), torch.tensor([0, 1, 2, 3])).backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert silent == []


def assert_checkpointing_keeps_the_gradients(model: torch.nn.Module) -> None:
    """The gradients of ``model`` (train) and of a copy with gradient checkpointing on its backbone, for the same
    seeded stochastic-depth and dropout draws: equal within 1e-5."""
    recomputed = copy.deepcopy(model)
    recomputed.get_base_model().gradient_checkpointing_enable()
    grads = []
    for m in (model, recomputed):
        torch.manual_seed(5)  # the same stochastic depth and dropout draws
        m(clouds(4)).square().sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5) for n in grads[0])


# ------------------------------------------------------------------------------------------------ official fidelity

@needs_data
@pytest.mark.parametrize("num_classes, num_group, batch", [(40, 64, 4), (15, 128, 2)])
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys, num_classes, num_group, batch):
    reference = trained_reference(num_classes, num_group, prompt_groups=num_group)
    points = modelnet40_test_shapes(batch)
    with torch.no_grad():
        expected = reference(points)
    state = reference.state_dict()
    assert len(state) == 174 + 3 * 4 and sum(k.startswith("blocks.prompt_") for k in state) == 12
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": 300}, tmp_path / "ppt.pth")
    code, out, err = run_cli_here(["convert", tmp_path / "ppt.pth", tmp_path / "converted"], capsys)
    assert code == 0 and "load_adapter" in out, err
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter", num_group=num_group).eval()
    config = loaded.peft_config["default"]
    options = config.method_configs()["ppt"]
    assert config.preset == "official" and options.prompt_encoding == "separate" and options.hidden == 256
    with torch.no_grad():
        logits = loaded(points)
    assert math.isfinite(logits.abs().max().item())
    assert (expected[0] - expected[1]).abs().max().item() > 1e-3  # the clouds matter far beyond the tolerance
    assert (logits - expected).abs().max().item() <= 1e-5


@needs_data
@pytest.mark.parametrize("encoding", ["separate", "shared"])
def test_fewer_prompt_patches_are_the_first_fps_patches_as_the_official_second_grouping(encoding):
    points = modelnet40_test_shapes(3)
    full = farthest_point_sample(points, 64, skip_near_origin=True)
    assert torch.equal(farthest_point_sample(points, 24, skip_near_origin=True), full[:, :24])  # FPS is greedy
    reference = trained_reference(40, 64, prompt_groups=24)
    model = wrapped_like(reference, prompt_groups=24, prompt_encoding=encoding)
    with torch.no_grad():
        assert (model(points) - reference(points)).abs().max().item() <= 1e-5  # eval: both encodings are official


def test_the_marker_finds_ppt_checkpoints_only():
    with torch.device("meta"):
        ppt = ReferencePPT(15, 128, 128).state_dict()
        others = [ReferencePointGST(15, 128).state_dict(), ARCHITECTURES["point_mae"](15).state_dict()]
    assert official_method(ppt) is METHODS["ppt"]
    assert all(official_method(state) is None or official_method(state).name != "ppt" for state in others)
    for name in METHODS.names(combinations=False):
        spec = METHODS[name]
        if spec.attaches == FORWARD and name != "ppt":  # another forward method's marker must not take PPT's file
            assert not any(re.search(spec.official_marker, k) for k in ppt), name
    assert METHODS["ppt"].options_from_official(ReferencePPT(15, 128, 128, hidden=48).state_dict()) == {"hidden": 48}


@pytest.mark.parametrize("num_classes, num_group, expected", [(15, 128, 1_042_191), (40, 64, 1_048_616)])
def test_trainable_counts_equal_the_official_code(num_classes, num_group, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES["point_mae"](num_classes=num_classes, num_group=num_group)
        report = pointgst.parameter_report(pointgst.wrap(backbone, method="ppt"))
        official = ReferencePPT(num_classes, num_group, num_group)
    assert report.trainable == expected
    assert sum(p.numel() for n, p in official.named_parameters() if any(s in n for s in OFFICIAL_TRAINABLE)) == expected
    official_total = sum(p.numel() for p in official.parameters())
    assert round(100 * expected / official_total, 1) == 4.6  # the code's ratio; the paper's "1.05%" is 1.05M


# ------------------------------------------------------------------------------------------------ behaviour

def test_sequence_is_cls_points_prompts():
    for options, length in [({}, 1 + 32 + 32), ({"prompt_groups": 8}, 1 + 32 + 8)]:
        model = tiny_model(**options).eval()
        seen = []
        block = model.base_model.model.blocks.blocks[0]
        handle = block.norm1.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
        with torch.no_grad():
            model(clouds(2))
        handle.remove()
        assert seen == [(2, length, 192)]


def test_eval_forward_is_deterministic_and_per_sample():
    assert_eval_is_deterministic_and_per_sample(tiny_model().eval(), clouds(3))


def test_the_module_runs_its_own_encoder_layer_and_positions_and_every_trainable_tensor_learns():
    model = tiny_model()
    module, backbone = module_of(model), model.get_base_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".pipeline.pointgst_module.default." in n or ".special_tokens." in n for n in trainable)
    assert not backbone.encoder.first_conv[0].weight.requires_grad and module.first_conv[0].weight.requires_grad
    unused = [backbone.encoder.first_conv[0].weight, backbone.pos_embed[0].weight]  # the backbone's own copies
    assert_the_module_runs_its_copies_and_all_learn(model, unused, module.pos_embed[0].weight)


def test_official_preset_encodes_the_prompts_again_and_its_statistics_drift_twice():
    model, official = tiny_model(), tiny_model(preset="official")
    assert module_of(official).separate_encoding and not module_of(model).separate_encoding
    assert not module_of(tiny_model(preset="official", prompt_encoding="shared")).separate_encoding  # options win
    x = clouds(3)
    with torch.no_grad():
        assert (model.eval()(x) - official.eval()(x)).abs().max().item() <= 1e-5  # identical in eval mode
        start = module_of(model).first_conv[1].running_mean.clone()
        model.train()(x)
        official.train()(x)
    once, twice = module_of(model).first_conv[1], module_of(official).first_conv[1]
    assert once.num_batches_tracked.item() == 1 and twice.num_batches_tracked.item() == 2
    batch_mean = (once.running_mean - 0.9 * start) / 0.1  # the same patches twice: the same batch mean
    assert torch.allclose(twice.running_mean, 0.81 * start + 0.19 * batch_mean, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    assert_checkpointing_keeps_the_gradients(tiny_model().train())


def test_a_second_official_adapter_copies_the_backbones_own_layers():
    from pointgst.tuner import PointGSTConfig

    model = tiny_model(preset="official")
    model.add_adapter("second", PointGSTConfig(method="ppt", preset="official"))
    second = module_of(model, "second")
    assert set(second.official_names().values()) == set(module_of(model).official_names().values())
    assert set(second.state_dict()) == set(module_of(model).state_dict())


@pytest.mark.parametrize("options, message", [
    ({"prompt_groups": 0}, "prompt_groups must be an int >= 1"),
    ({"prompt_groups": 33}, "prompt_groups=33 exceeds the backbone's num_group=32"),
    ({"prompt_encoding": "twice"}, "unknown prompt_encoding 'twice'; choose one of 'shared', 'separate'"),
    ({"hidden": 0}, "hidden must be an int >= 1"),
])
def test_bad_options_are_one_clear_line(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_model(**options)


def test_segmentation_backbones_are_refused_clearly():  # PointGPT runs it: tests/test_ppt_pointgpt.py
    with pytest.raises(ValueError, match="ppt runs on point_mae.*pointgpt_l.*not on point_mae_tiny_seg"):
        pointgst.wrap(pointgst.create_backbone("point_mae_tiny_seg", num_classes=5, **TINY), method="ppt")
