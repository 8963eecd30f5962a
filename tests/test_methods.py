"""Method-specific behaviour behind pointgst.wrap: the DeepLA head learns with hybrid supervision, options are
routed to each method's own config and checked, head methods keep their class count. (The contract every method
keeps on every backbone is in test_contract.py.)"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pointgst
from pointgst.adapters import list_methods

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _points(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 256, 3, generator=torch.Generator().manual_seed(seed))


def _backbone(name: str = "point_mae", classes: int = 40, **kw):
    return pointgst.create_backbone(name, num_classes=classes, num_group=32, group_size=16, **kw)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_deepla_head_trains_the_head_only_and_learns_on_real_modelnet40():
    if not (SHARED_DATA / "modelnet40_1024" / "train.npz").is_file():
        pytest.skip("shared ModelNet40 pack absent")
    pack = np.load(SHARED_DATA / "modelnet40_1024" / "train.npz")
    pick = np.random.default_rng(0).choice(len(pack["labels"]), 24, replace=False)
    points = torch.from_numpy(pack["points"][pick][:, :256].copy())
    labels = torch.from_numpy(pack["labels"][pick])
    model = pointgst.wrap(_backbone(), method="deepla_head", hybrid_supervision=True, depths=[1, 1], k=8)
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
    for method in list_methods():
        with torch.device("meta"):
            report = pointgst.parameter_report(pointgst.wrap(pointgst.backbones.PointMAE(40), method=method))
        assert report.method == method and report.trainable > 0
    with pytest.raises(ValueError, match="unknown method"):
        pointgst.wrap(_backbone(), method="pcsa+dcnv4")
    with pytest.raises(ValueError, match="unknown method"):
        pointgst.wrap(_backbone(), method="adapterformer")
    with pytest.raises(ValueError, match="must divide num_group"):
        pointgst.wrap(pointgst.create_backbone("point_mae", num_group=48), method="pcsa")


@pytest.mark.parametrize("method, option, listed", [
    ("lora", "rnak", "rank (default 8)"),
    ("linear", "rank", "linear: none"),
    ("dcnv4", "head_width", "num_points (default 9)"),
    ("deepla_head", "rank", "hybrid_supervision (default False)"),
    ("pcsa+deepla_head", "grops", "pcsa: local_size"),
])
def test_an_unknown_option_lists_the_options_of_the_method(method, option, listed):
    with pytest.raises(ValueError, match=f"(?s)unknown option '{option}'.*{re.escape(listed)}"):
        pointgst.wrap(_backbone(), method=method, **{option: 3})


def test_options_are_routed_to_each_part_and_checked_by_its_config():
    model = pointgst.wrap(_backbone(), method="pcsa+deepla_head", rank=8, width=32, depths=[1], k=8)
    configs = model.peft_config["default"].method_configs()
    assert configs["pcsa"].rank == 8 and configs["deepla_head"].width == 32 and configs["deepla_head"].depths == (1,)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        pointgst.wrap(_backbone(), method="dcnv4", rank=0)
    with pytest.raises(ValueError, match="rank must be divisible by groups"):
        pointgst.wrap(_backbone(), method="dcnv4", rank=10, groups=4)
    with pytest.raises(ValueError, match="unknown distance 'chebyshev'"):
        pointgst.wrap(_backbone(), method="pcsa", distance="chebyshev")


def test_explicit_options_win_over_the_official_preset():
    model = pointgst.wrap(_backbone(), method="pcsa", preset="official", gft_mode="paper")
    config = model.peft_config["default"]
    assert config.method_configs()["pcsa"].gft_mode == "paper"  # explicit
    assert config.method_configs()["pcsa"].distance == "cdist" and config.bn_stats == "update"  # from the preset


def test_head_method_adapter_reloads_with_its_own_number_of_classes(tmp_path):
    _backbone(classes=40).save_pretrained(tmp_path / "weights")  # base weights with a 40-class head
    model = pointgst.wrap(pointgst.create_backbone("point_mae", pretrained=tmp_path / "weights"),
                          method="deepla_head", num_classes=15).eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    loaded = pointgst.load_adapter(tmp_path / "adapter").eval()
    x = _points(2, seed=9)
    with torch.no_grad():
        assert loaded(x).shape == (2, 15) and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("method, options, message", [
    ("lora", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0$"),
    ("lora", {"dropout": True}, r"dropout must be a number in \[0, 1\), got True$"),
    ("dapt", {"adapter_dropout": -0.1}, r"adapter_dropout must be a number in \[0, 1\), got -0.1; the official"),
    ("dapt", {"class_token": 1}, r"class_token must be True or False, got 1$"),
    ("gaprompt", {"perturbation": "0.8"}, r"perturbation must be a number, got '0.8' \(e.g. 0.05\)$"),
    ("gaprompt", {"sample_mixing": "yes"}, r"sample_mixing must be True or False, got 'yes'$"),
])
def test_number_and_flag_options_are_checked_in_one_line(method, options, message):
    """The methods' numeric and boolean options share pointgst.validation's checks: one line naming the option."""
    from pointgst.adapters import METHODS

    with pytest.raises(ValueError, match=message):
        METHODS[method].make_config(options)
