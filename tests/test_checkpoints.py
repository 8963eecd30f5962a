"""Loading official checkpoints: remapping rules, strictness, reports, safety, conversion, hub cache."""

import argparse
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pointgst
from pointgst.atomic import MANIFEST
from pointgst.backbones import PointGPT, PointMAE
from pointgst.backbones.checkpoint import read_checkpoint
from pointgst.errors import CheckpointError, UnsafeCheckpointError, WeightsNotAvailableError

from . import official_layout as official
from .cli_runs import run_cli_here

FINETUNE_ONLY_MAE = {"cls_token", "cls_pos"} | {k for k in official.point_mae_finetune() if k.startswith("cls_head")}


def _pretrain_checkpoint(model: PointMAE, path: Path, data_parallel: bool = True) -> None:
    """Write ``model``'s backbone in the official Point-MAE pretrain layout: ``base_model`` dict,
    ``module.`` (DataParallel) and ``MAE_encoder.`` prefixes, decoder keys, optimizer state."""
    prefix = "module." if data_parallel else ""
    state = {f"{prefix}MAE_encoder.{k}": v for k, v in model.state_dict().items() if k not in FINETUNE_ONLY_MAE}
    state.update({f"{prefix}{k}": torch.randn(shape) if shape else torch.tensor(0)
                  for k, shape in official.point_mae_decoder().items()})
    torch.save({"base_model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 300,
                "metrics": {"acc": 0.0}, "best_metrics": {"acc": 0.0}}, path)


def _copy_finetune_only(source, target, keys) -> None:
    own = source.state_dict()
    target.load_state_dict({k: own[k] for k in keys}, strict=False)


def test_official_pretrain_layout_loads_with_expected_report(tmp_path, clouds):
    source = pointgst.create_backbone("point_mae", num_classes=15).eval()
    path = tmp_path / "pretrain.pth"
    _pretrain_checkpoint(source, path)
    model = pointgst.create_backbone("point_mae", pretrained=path, num_classes=15).eval()
    report = model.load_report
    assert set(report.missing_keys) == FINETUNE_ONLY_MAE
    assert set(report.unexpected_keys) == set(official.point_mae_decoder()) and len(report.unexpected_keys) == 53
    _copy_finetune_only(source, model, FINETUNE_ONLY_MAE)
    with torch.no_grad():
        assert torch.equal(model(clouds), source(clouds))


def test_pointgpt_pretrain_and_post_pretrain_layouts(tmp_path, clouds):
    source = pointgst.create_backbone("pointgpt_s", num_classes=15).eval()
    finetune_only = {"cls_token", "cls_pos"} | {k for k in source.state_dict()
                                                 if k.startswith(("blocks.cls_head_finetune", "blocks.cls_norm"))}
    pretrain = {f"GPT_Transformer.{k}": v for k, v in source.state_dict().items() if k not in finetune_only}
    assert len(pretrain) == 223
    torch.save({"base_model": pretrain}, tmp_path / "pretrain.pth")
    model = pointgst.create_backbone("pointgpt_s", pretrained=tmp_path / "pretrain.pth", num_classes=15).eval()
    assert set(model.load_report.missing_keys) == finetune_only and model.load_report.unexpected_keys == []
    _copy_finetune_only(source, model, finetune_only)
    with torch.no_grad():
        assert torch.equal(model(clouds), source(clouds))

    post = PointGPT("pointgpt_s", num_classes=87).state_dict()  # post-pretrain: a fine-tune model, 87 classes
    torch.save({"base_model": post}, tmp_path / "post.pth")
    model = pointgst.create_backbone("pointgpt_s", pretrained=tmp_path / "post.pth", num_classes=15)
    dropped = set(model.load_report.dropped_head_keys)
    assert dropped == {k for k in post if k.startswith("blocks.cls_head_finetune")}
    assert not set(model.load_report.missing_keys) - dropped - {"blocks.cls_head_finetune.8.weight"}
    assert torch.equal(model.blocks.cls_norm.weight, post["blocks.cls_norm.weight"])
    assert torch.equal(model.cls_token, post["cls_token"])


def test_strict_loading_refuses_missing_backbone_keys_and_unknown_keys(tmp_path, clouds):
    source = PointMAE(15)
    state = source.state_dict()
    del state["blocks.blocks.3.mlp.fc1.weight"]
    torch.save({"base_model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing.*blocks.blocks.3.mlp.fc1.weight.*strict=False"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "partial.pth")
    model = pointgst.create_backbone("point_mae", pretrained=tmp_path / "partial.pth", strict=False, num_classes=15)
    assert model.load_report.missing_keys == ["blocks.blocks.3.mlp.fc1.weight"]
    assert "blocks.blocks.3.mlp.fc1.weight" in str(model.load_report)

    state = source.state_dict()
    state["adapter.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unknown.*adapter.extra.weight"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "extra.pth")


def test_checkpoint_of_another_architecture_or_size(tmp_path):
    torch.save({"base_model": PointGPT("pointgpt_s", with_generator=False).state_dict()}, tmp_path / "gpt.pth")
    with pytest.raises(CheckpointError, match="PointGPT-style"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "gpt.pth")
    torch.save(PointMAE(embed_dim=192, num_heads=3, depth=2).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match=r"width 192, 2 blocks.*width 384, 12 blocks"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "narrow.pth")


def test_corrupt_files(tmp_path):
    torch.save(PointMAE(15).state_dict(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "truncated.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_checkpoint(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pth")


def test_text_and_random_bytes_are_corrupt_files_not_unsafe_pickles(tmp_path):
    """A file that is not a pickle at all is a corrupt checkpoint (CheckpointError, not UnsafeCheckpointError);
    only a real pickle holding non-tensor objects is refused as unsafe."""
    (tmp_path / "notes.pth").write_text("these are not weights\n" * 20)
    noise = random.Random(0).randbytes(4096)
    assert not noise.startswith(b"PK") and noise[0] != 0x80  # neither a zip archive nor a pickle header
    (tmp_path / "noise.pth").write_bytes(noise)
    for name in ("notes.pth", "noise.pth"):
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint") as info:
            read_checkpoint(tmp_path / name)
        assert not isinstance(info.value, UnsafeCheckpointError)
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
            pointgst.create_backbone("point_mae", pretrained=tmp_path / name)
    # real pickles (torch's zip format and a bare pickle) with a harmless non-tensor object: unsafe
    torch.save({"cls_token": torch.zeros(1), "args": argparse.Namespace(lr=1e-3)}, tmp_path / "args.pth")
    (tmp_path / "bare.pth").write_bytes(pickle.dumps({"args": argparse.Namespace(lr=1e-3)}, protocol=2))
    for name in ("args.pth", "bare.pth"):
        with pytest.raises(UnsafeCheckpointError, match="never executes code"):
            read_checkpoint(tmp_path / name)


class _Exploit:
    """Unpickling this object would run ``os.system`` to create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"base_model": {"cls_token": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match="never executes code"):
        pointgst.create_backbone("point_mae", pretrained=tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError):
        pointgst.convert_checkpoint(tmp_path / "evil.pth", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def _fill_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """A pre-filled hub cache: models--org--name/{refs/main, snapshots/<sha>/files} (plain files)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


_OFFLINE_LOAD = textwrap.dedent("""
    import socket, sys
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    import torch, pointgst
    model = pointgst.create_backbone(sys.argv[1], pretrained=sys.argv[2] if sys.argv[2] != "True" else True)
    clouds = torch.load(sys.argv[3])
    with torch.no_grad():
        torch.save(model.eval()(clouds), sys.argv[4])
""")


def _run_offline(tmp_path: Path, cache: Path, name: str, pretrained: str, clouds: torch.Tensor) -> torch.Tensor:
    torch.save(clouds, tmp_path / "clouds.pt")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _OFFLINE_LOAD, name, pretrained, str(tmp_path / "clouds.pt"),
                             str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return torch.load(tmp_path / "out.pt")


def test_convert_cli_then_offline_hub_cache_round_trip(tmp_path, clouds, capsys):
    source = pointgst.create_backbone("point_mae", num_classes=15).eval()
    torch.save({"base_model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "scan_objbg.pth")
    code, _, err = run_cli_here(["convert", tmp_path / "scan_objbg.pth", tmp_path / "converted"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["architecture"] == "point_mae" and config["num_classes"] == 15

    cache = tmp_path / "hub"
    _fill_hub_cache(cache, "someone/point-mae-objbg", tmp_path / "converted")
    with torch.no_grad():
        expected = source(clouds)
    assert torch.equal(_run_offline(tmp_path, cache, "point_mae", "someone/point-mae-objbg", clouds), expected)
    # the same weights behind a registered tag's hub id, fetched with pretrained=True
    cfg = pointgst.backbones.PRETRAINED_CFGS["point_mae.scan_objbg"]
    _fill_hub_cache(cache, cfg.hf_hub_id, tmp_path / "converted")
    assert torch.equal(_run_offline(tmp_path, cache, "point_mae.scan_objbg", "True", clouds), expected)
    # and directly from the folder
    model = pointgst.create_backbone("point_mae", pretrained=tmp_path / "converted").eval()
    with torch.no_grad():
        assert torch.equal(model(clouds), expected)


def test_convert_refuses_foreign_files_and_checks_architecture(tmp_path, capsys):
    """A converted folder carries a manifest of pointgst's files: converting into it again replaces them; a folder
    with a file pointgst did not write is refused (and left untouched) unless overwrite=True, which keeps that
    file; a path that is a file is refused."""
    torch.save({"base_model": PointMAE(15).state_dict()}, tmp_path / "a.pth")
    torch.save({"base_model": PointMAE(15).state_dict()}, tmp_path / "b.pth")  # other random weights
    out = tmp_path / "out"
    pointgst.convert_checkpoint(tmp_path / "a.pth", out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["files"] == ["config.json", "model.safetensors"]
    assert manifest["pointgst_version"] == pointgst.__version__
    first = (out / "model.safetensors").read_bytes()
    pointgst.convert_checkpoint(tmp_path / "b.pth", out)  # only pointgst's own files there: replaced
    second = (out / "model.safetensors").read_bytes()
    assert second != first and sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                                         MANIFEST]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        pointgst.convert_checkpoint(tmp_path / "a.pth", out)
    assert (out / "model.safetensors").read_bytes() == second
    code, _, err = run_cli_here(["convert", tmp_path / "a.pth", out], capsys)
    assert code == 2 and "overwrite" in err
    assert (out / "model.safetensors").read_bytes() == second
    pointgst.convert_checkpoint(tmp_path / "a.pth", out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == first and (out / "notes.txt").read_text() == "mine"
    checkpoint = (tmp_path / "b.pth").read_bytes()
    with pytest.raises(FileExistsError, match="is a file"):
        pointgst.convert_checkpoint(tmp_path / "a.pth", tmp_path / "b.pth")
    assert (tmp_path / "b.pth").read_bytes() == checkpoint
    with pytest.raises(CheckpointError, match="holds point_mae weights"):
        pointgst.create_backbone("pointgpt_s", pretrained=out)


def test_weights_only_on_google_drive_explain_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("POINTGST_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError, match=r"drive.google.com.*pointgst convert FILE OUT_DIR"):
        pointgst.create_backbone("pointgpt_l.post_pretrain", pretrained=True)
    with pytest.raises(WeightsNotAvailableError, match="not in the pointgst cache"):
        pointgst.create_backbone("point_mae.pretrain", pretrained=True)


def test_pretrained_registry_has_provenance():
    cfgs = pointgst.backbones.PRETRAINED_CFGS
    for tag in ["point_mae.pretrain", "point_mae.act", "point_mae.recon", "pointgpt_s.pretrain", "pointgpt_b.pretrain",
                "pointgpt_l.pretrain", "pointgpt_l.post_pretrain"]:
        cfg = cfgs[tag]
        assert cfg.license and cfg.citation and (cfg.hf_hub_id or cfg.url or cfg.manual_url)
        assert tag.startswith(cfg.architecture + ".")


_TAG_ROUND_TRIP = textwrap.dedent("""
    import sys, torch, pointgst
    model = pointgst.wrap("point_mae.scan_objbg", num_group=32).eval()   # pretrained weights from the hub cache
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.01)
    clouds = torch.load(sys.argv[1])
    model.save_pretrained(sys.argv[2])
    loaded = pointgst.load_adapter(sys.argv[2]).eval()     # rebuilds point_mae.scan_objbg with num_group=32
    assert loaded.get_base_model().group_divider.num_group == 32
    with torch.no_grad():
        assert torch.equal(loaded(clouds), model(clouds))
""")


def test_load_adapter_rebuilds_a_tagged_backbone_offline(tmp_path, clouds):
    torch.save({"base_model": PointMAE(15).state_dict()}, tmp_path / "objbg.pth")
    pointgst.convert_checkpoint(tmp_path / "objbg.pth", tmp_path / "converted")
    cache = tmp_path / "hub"
    _fill_hub_cache(cache, pointgst.backbones.PRETRAINED_CFGS["point_mae.scan_objbg"].hf_hub_id,
                    tmp_path / "converted")
    torch.save(clouds, tmp_path / "clouds.pt")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _TAG_ROUND_TRIP, str(tmp_path / "clouds.pt"),
                             str(tmp_path / "adapter")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_a_peft_lora_adapter_reloads_with_the_grouping_it_was_trained_with(tmp_path):
    """peft's LoraConfig records no backbone options; the folder's manifest does, so a LoRA model wrapped with another
    grouping than its weights' source reloads with that grouping (it silently got the source's 64 groups before)."""
    model = pointgst.wrap("point_mae_tiny.modelnet40", "lora", num_group=32, group_size=16).eval()
    clouds = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "lora")
    loaded = pointgst.load_adapter(tmp_path / "lora").eval()
    assert loaded.get_base_model().group_divider.num_group == 32
    with torch.no_grad():
        assert torch.equal(loaded(clouds), model(clouds))
