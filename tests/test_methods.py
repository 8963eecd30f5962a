"""Every tuning method behind pointgst.wrap: exactness at init, what trains, save -> fresh process -> load."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.wrapping import METHODS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _points(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 256, 3, generator=torch.Generator().manual_seed(seed))


def _backbone(name: str = "point_mae", classes: int = 40, **kw):
    return pointgst.create_backbone(name, num_classes=classes, num_group=32, group_size=16, **kw)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["point_mae", "pointgpt_s"])
def test_untrained_dcnv4_is_exact_then_learns_only_trainable_parameters(name):
    backbone = _backbone(name).eval()
    x = _points()
    with torch.no_grad():
        frozen = backbone(x)
    model = pointgst.wrap(backbone, method="dcnv4", rank=16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(_trainable(model).values(), lr=1e-2)
    model.train()
    F.cross_entropy(model(x), torch.arange(4)).backward()
    optimizer.step()
    trainable = set(_trainable(model))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k in trainable or ".modules_to_save." in k for k in changed), changed - trainable
    assert any(".ffn_branch.pointgst_module." in k for k in changed)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), frozen)


def test_deepla_head_trains_the_head_only_and_learns_on_real_modelnet40():
    if not (SHARED_DATA / "modelnet40_1024" / "train.npz").is_file():
        pytest.skip("shared ModelNet40 pack absent")
    pack = np.load(SHARED_DATA / "modelnet40_1024" / "train.npz")
    pick = np.random.default_rng(0).choice(len(pack["labels"]), 24, replace=False)
    points = torch.from_numpy(pack["points"][pick][:, :256].copy())
    labels = torch.from_numpy(pack["labels"][pick])
    model = pointgst.wrap(_backbone(), method="deepla_head", hybrid_supervision=True, head_depths=[1, 1], head_k=8)
    assert all(".classify.pointgst_module." in n for n in _trainable(model))
    assert pointgst.parameter_report(model).trainable == sum(p.numel() for p in _trainable(model).values())
    head = model.base_model.model.classify.pointgst_module["default"]
    optimizer = torch.optim.AdamW(_trainable(model).values(), lr=2e-3)

    def main_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(points), labels).item()

    start = main_loss()
    for step in range(12):
        model.train()
        loss = F.cross_entropy(model(points), labels)
        auxiliary = head.auxiliary_loss(labels, step / 12)
        assert auxiliary.item() > 0 and len(head.semantic_logits) == 2  # per-stage losses while training
        optimizer.zero_grad()
        (loss + auxiliary).backward()
        optimizer.step()
    assert main_loss() < start
    model.eval()
    with torch.no_grad():
        model(points)
    assert head.auxiliary_loss(labels, 1.0).item() == 0.0 and head.semantic_logits == []  # off at evaluation


def test_every_method_in_params_and_bad_options():
    for method in METHODS:
        with torch.device("meta"):
            report = pointgst.parameter_report(pointgst.wrap(pointgst.backbones.PointMAE(40), method=method))
        assert report.method == method and report.trainable > 0
    with pytest.raises(ValueError, match="unknown method"):
        pointgst.wrap(_backbone(), method="pcsa+dcnv4")
    with pytest.raises(ValueError, match="unknown method"):
        pointgst.wrap(_backbone(), method="adapterformer")
    with pytest.raises(TypeError, match="rnak"):
        pointgst.wrap(_backbone(), method="lora", rnak=4)
    with pytest.raises(ValueError, match="must divide num_group"):
        pointgst.wrap(pointgst.create_backbone("point_mae", num_group=48), method="pcsa")
    from pointgst.wrapping import check_method_options
    with pytest.raises(ValueError, match="takes no options"):
        check_method_options("linear", {"rank": 3})


_LOAD_ALL = textwrap.dedent("""
    import sys, torch, pointgst
    root, methods = sys.argv[1], sys.argv[2].split(",")
    x = torch.load(f"{root}/points.pt")
    outs = {}
    for method in methods:
        model = pointgst.load_adapter(f"{root}/{method}").eval()
        with torch.no_grad():
            outs[method] = model(x)
    torch.save(outs, f"{root}/reloaded.pt")
""")


def test_save_fresh_process_load_gives_identical_outputs_for_every_method(tmp_path):
    source = _backbone(classes=15)
    source.save_pretrained(tmp_path / "weights")  # a weights folder the adapters record as their backbone
    x = _points(3, seed=5)
    torch.save(x, tmp_path / "points.pt")
    expected = {}
    for method in METHODS:
        model = pointgst.wrap(pointgst.create_backbone("point_mae", pretrained=tmp_path / "weights", num_group=32,
                                                       group_size=16), method=method)
        with torch.no_grad():
            for param in _trainable(model).values():
                param.add_(0.01 * torch.randn_like(param))
        model.eval()
        with torch.no_grad():
            expected[method] = model(x)
        model.save_pretrained(str(tmp_path / method))
    result = subprocess.run([sys.executable, "-c", _LOAD_ALL, str(tmp_path), ",".join(METHODS)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = torch.load(tmp_path / "reloaded.pt")
    for method in METHODS:
        assert torch.equal(reloaded[method], expected[method]), method


def test_head_method_adapter_reloads_with_its_own_number_of_classes(tmp_path):
    _backbone(classes=40).save_pretrained(tmp_path / "weights")  # base weights with a 40-class head
    model = pointgst.wrap(pointgst.create_backbone("point_mae", pretrained=tmp_path / "weights"),
                          method="deepla_head", num_classes=15).eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    loaded = pointgst.load_adapter(tmp_path / "adapter").eval()
    x = _points(2, seed=9)
    with torch.no_grad():
        assert loaded(x).shape == (2, 15) and torch.equal(loaded(x), model(x))
