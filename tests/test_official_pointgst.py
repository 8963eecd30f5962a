"""Official PointGST fine-tuned checkpoints (full state dicts with gft_adapter keys) convert and load."""

import subprocess
import sys

import torch

import pointgst
from pointgst.tuner.official import adapter_key


def _perturb(model) -> None:
    """Give every adapter, token copy and head non-trivial values, as training would."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def _official_layout(model, backbone_keys) -> dict:
    """The full state dict the official code saves for a trained model (frozen weights + BN buffers + adapters +
    cls token/pos + head), written from our wrapped model with the official key names."""
    own = model.state_dict()
    state = {}
    for key in backbone_keys:
        module, _, leaf = key.rpartition(".")
        value = own.get(f"base_model.model.{module}.pointgst_module.default.{leaf}")  # BN copies (drifted stats)
        if key in ("cls_token", "cls_pos"):
            value = own[f"base_model.model.special_tokens.pointgst_module.default.{key}"]
        for head in model.get_base_model().head_modules:
            if key.startswith(head + "."):
                value = own[f"base_model.model.{head}.modules_to_save.default.{key[len(head) + 1:]}"]
        state[key] = own[f"base_model.model.{key}"] if value is None else value
    for key in own:
        if ".ffn_branch.pointgst_module.default." in key:
            block, leaf = key.removeprefix("base_model.model.").split(".ffn_branch.pointgst_module.default.")
            official = f"{block}.gft_adapter.{leaf}"
            assert adapter_key(official) == key
            state[official] = own[key]
    return state


def test_official_pointgst_checkpoint_converts_and_loads(tmp_path, clouds):
    backbone = pointgst.create_backbone("point_mae", num_classes=15, skip_near_origin=True)
    keys = list(backbone.state_dict())
    model = pointgst.wrap(backbone, preset="official")
    _perturb(model)
    model.train()
    with torch.no_grad():
        model(clouds * 0.5)  # official BN statistics drift during training
    model.eval()
    with torch.no_grad():
        expected = model(clouds)
    state = _official_layout(model, keys)
    assert sum(".gft_adapter." in k for k in state) == 12 * 10 and len(state) == 174 + 120
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": 300, "metrics": {"acc": 91.7}},
               tmp_path / "scan_objbg_mae.pth")
    result = subprocess.run([sys.executable, "-m", "pointgst.cli", "convert", str(tmp_path / "scan_objbg_mae.pth"),
                             str(tmp_path / "converted")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "load_adapter" in result.stdout
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter").eval()
    assert loaded.peft_config["default"].preset == "official"
    with torch.no_grad():
        assert torch.equal(loaded(clouds), expected)
