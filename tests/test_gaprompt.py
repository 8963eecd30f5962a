"""GAPrompt (docs/peft_methods/gaprompt.md): official checkpoints convert to identical logits, the trainable counts are
the official ones, the official preset mixes the samples of a batch and the default does not, and the parts of the
method behave as the official code (sequence lengths, which tensors get gradients, bad options).

The reference model (``tests/reference_gaprompt.py``) is written from the official formulas in the official key
layout, its grouping by pointgst's FPS / kNN ops.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pointgst
from pointgst.adapters import FORWARD, METHODS
from pointgst.backbones.factory import ARCHITECTURES

from .cli_runs import run_cli_here
from .reference_gaprompt import OFFICIAL_TRAINABLE, ReferenceGAPrompt

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")
#: the official per-dataset model settings (cfgs/gaprompt_*.yaml)
PB_T50_RS = dict(point_prompts=5, perturbation=0.80)
OBJ_BG = dict(point_prompts=10, perturbation=0.20, propagation="before_attention")


def modelnet40_test_shapes(count: int) -> torch.Tensor:
    """The first ``count`` shapes of the real ModelNet40 test split, (count, 1024, 3)."""
    return torch.from_numpy(np.load(SHARED_DATA / "modelnet40_1024" / "test.npz")["points"][:count])


def trained_reference(num_classes: int, num_group: int, **options) -> ReferenceGAPrompt:
    """A reference with every tensor non-trivial, as after official training: zero-initialised prompts and
    coordinates, the never-trained scalers (officially 0.5) and BatchNorm statistics included."""
    torch.manual_seed(5)
    model = ReferenceGAPrompt(num_classes, num_group, **options)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(321)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith(("scaler1", "scaler2")):
                tensor.copy_(torch.rand(1, generator=generator) + 0.25)
            elif name in ("point_prompt.points", "prompt_cor"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
            else:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def official_file(reference: ReferenceGAPrompt, path: Path) -> tuple[Path, dict]:
    """The reference saved as an official fine-tuned checkpoint (DataParallel keys); (file, state)."""
    state = reference.state_dict()
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": 300, "metrics": {"acc": 94.2}},
               path)
    return path, state


def module_of(model: torch.nn.Module) -> torch.nn.Module:
    """The GAPrompt module of a wrapped model."""
    return model.base_model.model.pipeline.pointgst_module["default"]


# ------------------------------------------------------------------------------------------------ official fidelity

@needs_data
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys):
    reference = trained_reference(num_classes=40, num_group=64)  # the ModelNet40 config
    points = modelnet40_test_shapes(3)
    with torch.no_grad():
        expected = reference(points)
    file, state = official_file(reference, tmp_path / "Point-MAE-modelnet.pth")
    assert sum(k.startswith("blocks.blocks.") for k in state) == 12 * (11 + 3 + 8 + 5)
    code, out, err = run_cli_here(["convert", file, tmp_path / "converted"], capsys)
    assert code == 0 and "load_adapter" in out, err
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter", num_group=64).eval()
    config = loaded.peft_config["default"]
    assert config.preset == "official" and config.method_configs()["gaprompt"].sample_mixing is True
    with torch.no_grad():
        logits = loaded(points)
    assert math.isfinite(logits.abs().max().item()) and logits.abs().max().item() > 0.1
    assert (logits - expected).abs().max().item() <= 1e-5
    # the per-sample default computes what the reference computes when each sample gathers its own tokens; the
    # official mixing changes the logits of every sample after the first (exercised above with a batch of 3)
    reference.mixing = module_of(loaded).sample_mixing = False
    with torch.no_grad():
        per_sample, expected_per_sample = loaded(points), reference(points)
    assert (per_sample - expected_per_sample).abs().max().item() <= 1e-5
    assert ((per_sample - logits).abs().amax(dim=1) > 1e-3).tolist() == [True, True, True]


@needs_data
def test_obj_bg_config_with_propagation_before_attention_gives_the_official_logits(tmp_path, capsys):
    """OBJ_BG's settings (10 point prompts, perturbation 0.2, propagation before attention) at 128 groups, converted
    by ``pointgst convert --option`` for what the checkpoint's shapes do not record."""
    reference = trained_reference(num_classes=15, num_group=128, point_prompts=10, perturbation=0.2, before=True)
    points = modelnet40_test_shapes(2)
    with torch.no_grad():
        expected = reference(points)
    file, state = official_file(reference, tmp_path / "Point-MAE-objbg.pth")
    assert METHODS["gaprompt"].options_from_official(state) == \
        {"point_prompts": 10, "prompt_tokens": 10, "adapter_dim": 16, "shift_groups": 128}
    code, out, err = run_cli_here(["convert", file, tmp_path / "converted", "--option", "perturbation=0.2",
                                   "--option", "propagation=before_attention"], capsys)
    assert code == 0, err
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter", num_group=128).eval()
    config = loaded.peft_config["default"].method_configs()["gaprompt"]
    assert (config.perturbation, config.propagation, config.point_prompts) == (0.2, "before_attention", 10)
    with torch.no_grad():
        logits = loaded(points)
    assert (logits - expected).abs().max().item() <= 1e-5
    # without the options the file cannot tell, the ModelNet40 defaults give other logits
    code, _, err = run_cli_here(["convert", file, tmp_path / "defaults"], capsys)
    assert code == 0, err
    with torch.no_grad():
        default_logits = pointgst.load_adapter(tmp_path / "defaults" / "adapter", num_group=128).eval()(points)
    assert (default_logits - expected).abs().max().item() > 1e-3


def test_convert_options_only_apply_to_method_checkpoints(tmp_path, capsys):
    backbone = pointgst.create_backbone("point_mae_tiny", num_classes=5)
    torch.save({"base_model": backbone.state_dict()}, tmp_path / "tiny.pth")
    code, out, err = run_cli_here(["convert", tmp_path / "tiny.pth", tmp_path / "out", "--option", "rank=3"], capsys)
    assert code != 0 and "method options do not apply" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_cli_here(["convert", tmp_path / "tiny.pth", tmp_path / "out", "--option", "rank"], capsys)
    assert code != 0 and "NAME=VALUE" in err, err


def test_official_marker_finds_gaprompt_checkpoints_only():
    state = trained_reference(num_classes=15, num_group=64).state_dict()
    marker = re.compile(METHODS["gaprompt"].official_marker)
    assert any(marker.search(k) for k in state)
    others = [n for n in METHODS.names(combinations=False) if n != "gaprompt" and METHODS[n].attaches == FORWARD]
    for name in others:  # the official keys of every other forward method registered
        with torch.device("meta"):
            other = module_of(pointgst.wrap(ARCHITECTURES["point_mae"](num_classes=15), method=name))
        assert not any(marker.search(k) for k in other.official_names().values()), name
    pointgst_keys = [f"blocks.blocks.{i}.gft_adapter.{p}.weight" for i in range(12) for p in ("down", "up", "adapt1")]
    assert not any(marker.search(k) for k in pointgst_keys)


# ------------------------------------------------------------------------------------------------ parameter counts

@pytest.mark.parametrize("num_classes, num_group, options, expected", [
    (15, 128, PB_T50_RS, 628_147),  # ScanObjectNN PB_T50_RS config
    (40, 64, {}, 630_476),  # ModelNet40 config (the defaults)
])
def test_trainable_parameters_equal_the_official_count(num_classes, num_group, options, expected):
    with torch.device("meta"):
        backbone = ARCHITECTURES["point_mae"](num_classes=num_classes, num_group=num_group)
        report = pointgst.parameter_report(pointgst.wrap(backbone, method="gaprompt", **options))
        reference = ReferenceGAPrompt(num_classes, num_group, point_prompts=options.get("point_prompts", 5))
    print(f"gaprompt trainable ({num_classes} classes, {num_group} groups): {report.trainable:,}")
    assert report.trainable == expected
    official = sum(p.numel() for n, p in reference.named_parameters() if any(s in n for s in OFFICIAL_TRAINABLE))
    assert official == expected  # the official rule applied to the official layout


# ------------------------------------------------------------------------------------------------ behaviour

def small_point_mae(**options) -> torch.nn.Module:
    """Full-width, 12-block Point-MAE on a small grouping (32 groups of 16 points) with 10 classes."""
    torch.manual_seed(3)
    return pointgst.create_backbone("point_mae", num_classes=10, num_group=32, group_size=16, **options)


def clouds(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 256, 3, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_official_preset_mixes_the_samples_of_a_batch_and_the_default_does_not():
    x = clouds(3, 1)
    changed = x.clone()
    changed[0] = clouds(1, 2)[0]  # only the first cloud differs
    for preset, mixes in ((None, False), ("official", True)):
        torch.manual_seed(4)
        model = pointgst.wrap("point_mae_tiny", method="gaprompt", num_classes=5, num_group=32, group_size=16,
                              preset=preset).eval()
        assert module_of(model).sample_mixing is mixes
        with torch.no_grad():
            before, after, again = model(x), model(changed), model(x)
        assert torch.equal(before, again)  # deterministic in evaluation mode
        assert (before[0] - after[0]).abs().max().item() > 1e-3
        # sample b of the official gather reads the last prompt_tokens rows of sample b - 1
        moved = (before[1:] - after[1:]).abs().max().item()
        assert moved > 1e-3 if mixes else moved <= 1e-6, (preset, moved)


def test_prompted_blocks_hold_cls_prompts_and_tokens_and_the_rest_cls_and_tokens():
    backbone = small_point_mae()
    model = pointgst.wrap(backbone, method="gaprompt", prompt_tokens=7, prompt_depth=4).eval()
    lengths = []
    for block in backbone.blocks.blocks:
        block.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        model(clouds(2, 3))
    assert lengths == [1 + 7 + 32] * 4 + [1 + 32] * 8
    tiny = pointgst.wrap("point_mae_tiny", method="gaprompt", num_group=32, group_size=16)
    assert module_of(tiny).prompt_depth == 4  # the official 6 clamped to the tiny backbone's 4 blocks


def test_gradients_reach_every_trainable_tensor_but_the_official_unused_ones():
    model = pointgst.wrap(small_point_mae(), method="gaprompt", point_prompts=5).train()
    loss = torch.nn.functional.cross_entropy(model(clouds(4, 5)), torch.arange(4))
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unused = {n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0}
    expected = {n for n in trainable if re.search(r"\.blocks\.([6-9]|1[01])\.prompt_embeddings$", n)
                or n.endswith(".adapter.scale.weight") or n.endswith(".adapter.scale.bias")}
    assert unused == expected
    assert sum(trainable[n].numel() for n in unused) == 6 * 10 * 384 + 12 * (384 + 1) == 27_660
    # the shift reaches the loss through the grouping (centres and patches) and the point prompts too
    assert any(".shift_net.mlp_position." in n for n in trainable if n not in unused)
    assert any(n.endswith("point_prompt.points") for n in trainable if n not in unused)


def test_bad_options_and_backbones_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown propagation 'sideways'; choose one of 'after_attention'"):
        pointgst.wrap(small_point_mae(), method="gaprompt", propagation="sideways")
    with pytest.raises(ValueError, match="point_prompts must be an int >= 1"):
        pointgst.wrap(small_point_mae(), method="gaprompt", point_prompts=0)
    with pytest.raises(ValueError, match="perturbation must be a number"):
        pointgst.wrap(small_point_mae(), method="gaprompt", perturbation="0.8")
    with pytest.raises(ValueError, match="group_size // 2 <= num_group"):
        pointgst.wrap(pointgst.create_backbone("point_mae_tiny", num_group=4, group_size=32), method="gaprompt")
    with pytest.raises(ValueError, match="gaprompt runs on"):
        pointgst.wrap(pointgst.create_backbone("point_mae_tiny_seg", num_group=32, group_size=16), method="gaprompt")
    model = pointgst.wrap(small_point_mae(), method="gaprompt").eval()
    with pytest.raises(ValueError, match="points must have shape"):
        model(torch.zeros(2, 256))
