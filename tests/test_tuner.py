"""pointgst's peft tuner with PCSA: trainable set and counts, batch independence, several adapters, peft's own
loader in a fresh process, unload, shared bases, placement, BatchNorm statistics, bad options. (What every method
guarantees on every backbone is in test_contract.py.)"""

import contextlib
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import pointgst
from pointgst.adapters import PCSA

NUM_POINTS = 256  # >= 64 groups; smaller clouds keep the CPU forwards fast


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls on a loaded CPU run far faster single-threaded; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------

_PRISTINE: dict[tuple[str, int], nn.Module] = {}


def fresh(name: str = "point_mae", num_classes: int = 15) -> nn.Module:
    """A new backbone in eval mode, always with the same weights (a deep copy of a cached one): wrapping mutates
    its backbone in place, so every test wraps its own copy."""
    key = (name, num_classes)
    if key not in _PRISTINE:
        torch.manual_seed(1234)
        _PRISTINE[key] = pointgst.create_backbone(name, num_classes=num_classes).eval()
    return copy.deepcopy(_PRISTINE[key]).eval()


def points(batch: int, seed: int, n: int = NUM_POINTS) -> torch.Tensor:
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def pcsa_modules(model: nn.Module, adapter: str = "default") -> list[PCSA]:
    found = [m for n, m in model.named_modules() if n.endswith(f"pointgst_module.{adapter}") and isinstance(m, PCSA)]
    assert found, f"no PCSA for adapter {adapter!r}"
    return found


def perturb(model: nn.Module, adapter: str = "default", seed: int = 0, std: float = 0.05) -> None:
    """Make an adapter non-trivial: small random ``up`` and ``adapt1`` (both start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in pcsa_modules(model, adapter):
            for layer in (module.up, module.adapt1):
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model).values())


@contextlib.contextmanager
def count_bases():
    """Count the spectral-basis computations inside the block: yields a one-element list filled on exit."""
    import pointgst.geometry as geometry

    original, calls = geometry.spectral_basis_unchecked, []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    geometry.spectral_basis_unchecked = counting
    computed: list[int] = []
    try:
        yield computed
    finally:
        geometry.spectral_basis_unchecked = original
        computed.append(len(calls))


def wrap_on_meta(name: str, num_classes: int, **options) -> nn.Module:
    with torch.device("meta"):
        return pointgst.wrap(pointgst.create_backbone(name, num_classes=num_classes), **options)


# ----------------------------------------------------------------------------------------------------------------
# 1. trainable parameters
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, classes, expected", [
    ("point_mae", 15, 622_831), ("point_mae", 40, 629_256),
    ("pointgpt_l", 15, 2_429_647), ("pointgpt_l", 40, 2_436_072),
    ("pointgpt_s", 15, 623_599),
])
@pytest.mark.parametrize("preset", [None, "official"])
def test_trainable_parameter_count(name, classes, expected, preset):
    model = wrap_on_meta(name, classes, preset=preset)
    assert count_trainable(model) == expected


@pytest.mark.parametrize("name, depth, head", [
    ("point_mae", 12, ("cls_head_finetune",)),
    ("pointgpt_s", 12, ("blocks.cls_head_finetune", "blocks.cls_norm")),
])
@pytest.mark.parametrize("preset", [None, "official"])
def test_trainable_set_is_adapters_tokens_and_head(name, depth, head, preset):
    model = wrap_on_meta(name, 15, preset=preset)
    names = set(trainable(model))
    prefix = "base_model.model."
    assert all(n.startswith(prefix) for n in names)
    names = {n[len(prefix):] for n in names}
    for n in names:
        assert ".pointgst_module.default." in n or ".modules_to_save.default." in n, n
    tokens = {n for n in names if n.startswith("special_tokens.")}
    assert tokens == {"special_tokens.pointgst_module.default.cls_token",
                      "special_tokens.pointgst_module.default.cls_pos"}
    blocks = "blocks.blocks" if name == "point_mae" else "blocks.layers"
    adapters = {n for n in names if ".ffn_branch.pointgst_module.default." in n}
    expected_adapters = {f"{blocks}.{i}.ffn_branch.pointgst_module.default.{m}.{p}" for i in range(depth)
                         for m in ("down", "up", "adapt1", "norm_ly1", "norm_ly2") for p in ("weight", "bias")}
    assert adapters == expected_adapters
    saved = {n for n in names if ".modules_to_save." in n}
    assert {n.split(".modules_to_save.")[0] for n in saved} == set(head)
    assert names == tokens | adapters | saved
    # the official preset's BatchNorm copies are there, but frozen
    bn_copies = [n for n, p in model.named_parameters() if ".encoder." in n and ".pointgst_module." in n]
    assert bool(bn_copies) == (preset == "official")


# ----------------------------------------------------------------------------------------------------------------
# 3. batch independence (default) and the official batch dependence
# ----------------------------------------------------------------------------------------------------------------

def test_default_output_of_a_sample_does_not_depend_on_its_batch():
    model = pointgst.wrap(fresh()).eval()
    perturb(model, seed=3)
    sample = points(1, seed=1)
    others = torch.cat([points(1, seed=2) * 0.01, points(1, seed=5) * 3.0])  # smaller and larger spacings
    alone = run(model, sample)
    in_batch = run(model, torch.cat([others[:1], sample, others[1:]]))[1:2]
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=1e-5)
    # the adapter is not trivial: it moves the output
    with model.disable_adapter():
        frozen = run(model, sample)
    assert (alone - frozen).abs().max() > 1e-3


def test_official_preset_output_depends_on_the_batch():
    model = pointgst.wrap(fresh(), preset="official").eval()
    perturb(model, seed=3)
    sample = points(1, seed=1)
    alone = run(model, sample)
    with_close_cloud = run(model, torch.cat([sample, points(1, seed=2) * 0.01]))[:1]
    assert (with_close_cloud - alone).abs().max() > 1e-4


def _degenerate_clouds() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    three = torch.randn(3, 3, generator=gen)
    dup3 = three[torch.arange(NUM_POINTS) % 3]  # every point one of 3 distinct points: 64 centres on 3 spots
    repeated = torch.randn(NUM_POINTS, 3, generator=gen)
    repeated[: NUM_POINTS - 40] = repeated[0]  # most points equal
    return torch.stack([dup3, repeated])


@pytest.mark.parametrize("preset", [None, "official"])
def test_coincident_centres_give_finite_outputs_and_gradients(preset):
    model = pointgst.wrap(fresh(), preset=preset)
    perturb(model, seed=4)
    model.train()
    logits = model(_degenerate_clouds())
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    params = trainable(model)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert any(p.grad.abs().sum() > 0 for n, p in params.items() if ".adapt1." in n)


# ----------------------------------------------------------------------------------------------------------------
# 4. peft's own loader in a fresh process (the import hook registers the method)
# ----------------------------------------------------------------------------------------------------------------

_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import pointgst

    state_path, adapter_dir, clouds_path, out_path = sys.argv[1:]
    x = torch.load(clouds_path)
    backbone = pointgst.create_backbone("point_mae_tiny", num_classes=15)
    backbone.load_state_dict(torch.load(state_path))
    assert "pointgst.tuner" not in sys.modules
    from peft import PeftModel  # the import hook of `import pointgst` registers the method
    with torch.no_grad():
        torch.save(PeftModel.from_pretrained(backbone, adapter_dir).eval()(x), out_path)
""")


def test_peft_from_pretrained_in_a_fresh_process(tmp_path):
    backbone = fresh("point_mae_tiny")
    torch.save(backbone.state_dict(), tmp_path / "backbone.pt")
    model = pointgst.wrap(backbone).eval()
    perturb(model, seed=2)
    x = points(2, seed=11)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "backbone.pt"), str(tmp_path / "adapter"), str(tmp_path / "x.pt"),
         str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), run(model, x))


# ----------------------------------------------------------------------------------------------------------------
# 6. several adapters on one backbone
# ----------------------------------------------------------------------------------------------------------------

def test_two_adapters_switch_and_disable(tmp_path):
    from pointgst.tuner import PointGSTConfig

    x = points(2, seed=21)
    frozen = run(fresh(), x)
    alone = {}
    for name, seed in (("a", 1), ("b", 2)):
        # saved under the name it is loaded with (see test_adapter_loads_under_another_name)
        single = pointgst.wrap(fresh(), adapter_name=name).eval()
        perturb(single, adapter=name, seed=seed)
        alone[name] = run(single, x)
        single.save_pretrained(str(tmp_path))  # a non-default adapter goes to tmp_path / name
    assert not torch.equal(alone["a"], alone["b"])

    model = pointgst.load_adapter(tmp_path / "a", fresh(), adapter_name="a").eval()
    model.load_adapter(str(tmp_path / "b"), adapter_name="b")
    # explicit targets (see test_add_adapter_with_a_default_config); a new adapter starts as the frozen backbone
    reference = model.peft_config["a"]
    model.add_adapter("c", PointGSTConfig(target_modules=list(reference.target_modules),
                                          modules_to_save=list(reference.modules_to_save)))
    model.eval()
    for name in ("a", "b", "c", "a", "b"):
        model.set_adapter(name)
        with count_bases() as computed:
            out = run(model, x)
        assert computed == [1]
        assert torch.equal(out, frozen if name == "c" else alone[name]), name
    with model.disable_adapter():
        assert torch.equal(run(model, x), frozen)
    assert torch.equal(run(model, x), alone["b"])  # back to the active adapter
    # the new adapter trains on its own, and changing it leaves the others alone
    model.set_adapter("c")
    assert set(trainable(model)) and all(".c." in n for n in trainable(model))
    assert count_trainable(model) == 622_831
    perturb(model, adapter="c", seed=3)
    assert not torch.equal(run(model, x), frozen)
    model.set_adapter("a")
    assert torch.equal(run(model, x), alone["a"])


def test_adapter_loads_under_another_name(tmp_path):
    single = pointgst.wrap(fresh())
    perturb(single, seed=1)
    single.save_pretrained(str(tmp_path))
    loaded = pointgst.load_adapter(tmp_path, fresh(), adapter_name="other")
    for theirs, ours in zip(pcsa_modules(single), pcsa_modules(loaded, "other")):
        assert torch.equal(ours.up.weight, theirs.up.weight)
    # the saved keys carry no adapter name (docs/checkpoints.md §8)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert not any(".default." in k for k in keys), [k for k in keys if ".default." in k][:3]


def test_add_adapter_with_a_default_config():
    from pointgst.tuner import PointGSTConfig

    model = wrap_on_meta("point_mae", 15)
    model.add_adapter("c", PointGSTConfig())
    model.set_adapter("c")
    assert count_trainable(model) == 622_831
    assert all(".c." in n for n in trainable(model))


# ----------------------------------------------------------------------------------------------------------------
# 7. unload / merge
# ----------------------------------------------------------------------------------------------------------------

def test_unload_returns_the_backbone_object_without_tuner_modules():
    backbone = fresh()
    keys = list(backbone.state_dict())
    model = pointgst.wrap(backbone).eval()
    unloaded = model.unload()
    assert unloaded is backbone
    assert list(unloaded.state_dict()) == keys
    assert not any(".pointgst_module" in n or "base_layer" in n or "original_module" in n
                   for n, _ in unloaded.named_modules())


def test_merge_is_refused():
    model = pointgst.wrap(fresh())
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter()


# ----------------------------------------------------------------------------------------------------------------
# 8. bases computed once per forward
# ----------------------------------------------------------------------------------------------------------------

def test_bases_are_computed_once_per_forward():
    model = pointgst.wrap(fresh()).eval()
    assert len(pcsa_modules(model)) == 12
    x = points(2, seed=41)
    with count_bases() as computed:
        run(model, x)
        run(model, x)
        with model.disable_adapter():
            run(model, x)
    assert computed == [2]


# ----------------------------------------------------------------------------------------------------------------
# 9. placement "ffn+attn"
# ----------------------------------------------------------------------------------------------------------------

def test_ffn_and_attention_placement():
    meta = wrap_on_meta("point_mae", 15, placement="ffn+attn")
    assert count_trainable(meta) == 622_831 + 12 * 29_544
    assert len(pcsa_modules(meta)) == 24
    branches = [n.split(".")[-3] for n, m in meta.named_modules() if isinstance(m, PCSA)]
    assert sorted(branches) == ["attn_branch"] * 12 + ["ffn_branch"] * 12
    x = points(2, seed=51)
    backbone = fresh()
    reference = run(backbone, x)
    model = pointgst.wrap(backbone, placement="ffn+attn").eval()
    assert torch.equal(run(model, x), reference)
    perturb(model, seed=6)
    with count_bases() as computed:
        assert not torch.equal(run(model, x), reference)
    assert computed == [1]


# ----------------------------------------------------------------------------------------------------------------
# 10. bn_stats="update" (official BatchNorm drift), saved and restored with the adapter
# ----------------------------------------------------------------------------------------------------------------

def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers() if n.rsplit(".", 1)[1] in ("running_mean", "running_var")}


def test_official_bn_stats_follow_the_data_and_travel_with_the_adapter(tmp_path):
    backbone = fresh()
    model = pointgst.wrap(backbone, preset="official")
    perturb(model, seed=8)
    encoder = backbone.encoder
    copies_before = {n: b for n, b in _bn_buffers(encoder).items() if ".pointgst_module.default." in n}
    own_before = {n: b for n, b in _bn_buffers(encoder).items() if ".base_layer." in n}
    assert len(copies_before) == len(own_before) == 4  # 2 BatchNorm layers x (mean, var)
    model.train()
    with torch.no_grad():
        model(points(2, seed=61))
    after = _bn_buffers(encoder)
    assert all(not torch.equal(after[n], b) for n, b in copies_before.items())
    assert all(torch.equal(after[n], b) for n, b in own_before.items())

    model.eval()
    x = points(2, seed=62)
    expected = run(model, x)
    model.save_pretrained(str(tmp_path))
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as handle:
        saved = {k: handle.get_tensor(k) for k in handle.keys()}
    saved_stats = {k: v for k, v in saved.items() if ".encoder." in k and k.endswith(("running_mean", "running_var"))}
    assert len(saved_stats) == 4
    copies = {n: b for n, b in after.items() if ".pointgst_module.default." in n}
    assert sorted(torch.sum(v).item() for v in saved_stats.values()) == \
        sorted(torch.sum(v).item() for v in copies.values())
    loaded = pointgst.load_adapter(tmp_path, fresh()).eval()
    assert torch.equal(run(loaded, x), expected)


# ----------------------------------------------------------------------------------------------------------------
# 11. bad options
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, choices", [
    ("method", "adapterformer", "'pcsa'"),
    ("preset", "paper", "'official'"),
    ("placement", "attn", "'ffn+attn'"),
    ("gft_mode", "transpose", "'paper'"),
])
def test_unknown_options_name_the_choices(option, value, choices):
    with pytest.raises(ValueError, match=f"(?s){value!r}.*{choices}".replace("+", r"\+")):
        pointgst.wrap(fresh(), **{option: value})


def test_wrapping_something_else_fails_clearly():
    from peft import get_peft_model

    from pointgst.tuner import PointGSTConfig

    with pytest.raises((TypeError, ValueError), match="pointgst backbone"):
        pointgst.wrap(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="not a pointgst backbone"):
        get_peft_model(nn.Sequential(nn.Linear(3, 3)), PointGSTConfig())
