"""point_mae_tiny, ``pointgst pretrain`` (official layout out, kill + resume, DDP), the linear probe and the shipped
weights and sample."""

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pointgst
from pointgst.backbones.layers import PatchEncoder
from pointgst.backbones.point_mae_pretrain import PointMAEPretrain

from .cli_runs import finish, kill_after_first_checkpoint, run_cli_here, start_cli

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")
SMALL = ["data.max_train_samples=48", "data.val_fraction=0.25", "train.batch_size=12", "train.epochs=2",
         f"data.root={SHARED_DATA / 'modelnet40_1024'}"]
PACKAGE = Path(pointgst.__file__).resolve().parent


def official_conv_forward(encoder: PatchEncoder, neighborhood: torch.Tensor) -> torch.Tensor:
    """The official patch encoder forward: (BG, C, K) through the Conv1d / BatchNorm1d layers."""
    b, g, k, _ = neighborhood.shape
    feat = encoder.first_conv(neighborhood.reshape(b * g, k, 3).transpose(2, 1))
    feat = torch.cat([feat.max(dim=2, keepdim=True).values.expand(-1, -1, k), feat], dim=1)
    return encoder.second_conv(feat).max(dim=2).values.reshape(b, g, -1)


@pytest.mark.parametrize("encoder", [PatchEncoder(192, widths=(32, 64)), PatchEncoder(384), PatchEncoder(64, large=True)],
                         ids=["tiny", "point_mae", "large"])
def test_patch_encoder_matrix_products_equal_the_official_conv1d_forward(encoder):
    """In float64, so that the comparison is tight (in float32 the two reduction orders differ by rounding): eval mode
    in chunks and with gradients, training mode (batch statistics) with and without gradients."""
    torch.manual_seed(0)
    encoder = encoder.double()
    for m in encoder.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    neighborhood = torch.randn(2, 8, 16, 3, dtype=torch.float64)
    twin = copy.deepcopy(encoder)
    encoder.eval(), twin.eval()
    encoder.chunk_rows = 3 * 16  # without gradients, patches go through in chunks of 3 (the last one of 1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(neighborhood), official_conv_forward(twin, neighborhood),
                                   rtol=1e-10, atol=1e-10)
    # eval mode with gradients (BatchNorm folded into the weights; one pass over every patch)
    ours, official = encoder(neighborhood), official_conv_forward(twin, neighborhood)
    ours.square().sum().backward(), official.square().sum().backward()
    for (name, a), b in zip(encoder.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg=name)
    encoder.zero_grad(), twin.zero_grad()
    encoder.train(), twin.train()  # batch statistics over every patch even without gradients (no chunks)
    with torch.no_grad():
        torch.testing.assert_close(encoder(neighborhood), official_conv_forward(twin, neighborhood),
                                   rtol=1e-10, atol=1e-10)
    ours, official = encoder(neighborhood), official_conv_forward(twin, neighborhood)  # running-statistic updates
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-10)
    ours.square().sum().backward(), official.square().sum().backward()
    for (name, a), b in zip(encoder.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg=name)
    for (name, a), b in zip(encoder.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_point_mae_tiny_is_point_mae_with_other_sizes():
    tiny, full = pointgst.create_backbone("point_mae_tiny"), pointgst.create_backbone("point_mae")
    assert tiny.architecture == "point_mae_tiny" and isinstance(tiny, type(full))
    first_four = [k for k in full.state_dict() if not re.match(r"blocks\.blocks\.([4-9]|1\d)\.", k)]
    assert list(tiny.state_dict()) == first_four  # same code path: the keys of Point-MAE's first 4 blocks
    assert tiny.state_dict()["encoder.second_conv.3.weight"].shape == (192, 128, 1)
    assert sum(p.numel() for p in tiny.parameters()) == 2_022_696  # 1,847,040 without the 40-class head (175,656)
    tiny.eval()
    assert tiny(torch.randn(2, 1024, 3)).shape == (2, 40)
    pretrain = PointMAEPretrain.for_architecture("point_mae_tiny")
    assert len(pretrain.MAE_decoder.blocks) == 2 and pretrain.architecture == "point_mae_tiny"
    with pytest.raises(ValueError, match="point_mae_tiny"):
        PointMAEPretrain.for_architecture("pointgpt_s")


def _pretrain_cli(out: Path, *extra: str) -> subprocess.Popen:
    return start_cli("pretrain", "pretrain-modelnet40.point_mae_tiny", out, SMALL, *extra)


@needs_data
def test_pretrain_writes_the_official_layout_and_resume_after_kill_matches(tmp_path):
    out = finish(_pretrain_cli(tmp_path / "straight"))
    run = tmp_path / "straight"
    for name in ("recipe.yaml", "metrics.jsonl", "checkpoint-last.pt", "curves.png", "summary.json", "pretrain.pth",
                 "backbone/model.safetensors", "backbone/config.json"):
        assert (run / name).is_file(), name
    assert "pretrain.pth" in out and "backbone" in out
    from pointgst.recipe import load_recipe
    from pointgst.training.pretrain import build_pretrain_model
    initial = build_pretrain_model(load_recipe("pretrain-modelnet40.point_mae_tiny", SMALL)).state_dict()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(0 < r["select_loss"] < 1 for r in rows)

    official = torch.load(run / "pretrain.pth", weights_only=True)
    state = official["base_model"]
    reference = PointMAEPretrain.for_architecture("point_mae_tiny").state_dict()
    assert list(state) == list(reference) and all(state[k].shape == reference[k].shape for k in state)
    assert any(k.startswith("MAE_encoder.blocks.") for k in state) and "mask_token" in state
    trained = [k for k in state if k.endswith("weight") and not torch.equal(state[k], initial[k])]
    assert len(trained) == sum(k.endswith("weight") for k in state)  # every weight moved: it learned
    backbone = pointgst.create_backbone("point_mae_tiny", pretrained=run / "pretrain.pth")
    report = backbone.load_report
    assert set(report.missing_keys) == {k for k in backbone.state_dict() if k.startswith(("cls_", "cls_head"))}
    assert {k.split(".")[0] for k in report.unexpected_keys} == {"mask_token", "decoder_pos_embed", "MAE_decoder",
                                                                  "increase_dim"}
    assert torch.equal(backbone.state_dict()["blocks.blocks.3.mlp.fc2.weight"],
                       state["MAE_encoder.blocks.blocks.3.mlp.fc2.weight"])
    from_folder = pointgst.create_backbone("point_mae_tiny", pretrained=run / "backbone")
    assert all(torch.equal(from_folder.state_dict()[k], v) for k, v in backbone.state_dict().items()
               if not k.startswith("cls_"))

    kill_after_first_checkpoint(_pretrain_cli(tmp_path / "resumed"), tmp_path / "resumed")
    finish(_pretrain_cli(tmp_path / "resumed", "--resume"))
    resumed = torch.load(tmp_path / "resumed" / "pretrain.pth", weights_only=True)["base_model"]
    assert all(torch.equal(state[k], resumed[k]) for k in state)
    resumed_rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in resumed_rows] == [r["train_loss"] for r in rows]


@needs_data
def test_pretrain_under_torchrun_with_two_processes(tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pointgst.cli",
            "pretrain", "pretrain-modelnet40.point_mae_tiny", "--out", str(tmp_path / "ddp"), "--no-progress",
            "--device", "cpu"] + [a for s in SMALL + ["train.epochs=1", "train.warmup_epochs=0"] for a in ("--set", s)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "pretrain.pth", weights_only=True)["base_model"]
    assert not any(k.startswith("module.") for k in state)  # DDP's wrapper is not saved
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert 0 < summary["final_val_loss"] < 1 and summary["epochs"] == 1
    backbone = pointgst.create_backbone("point_mae_tiny", pretrained=tmp_path / "ddp" / "backbone")
    assert torch.equal(backbone.state_dict()["norm.weight"], state["MAE_encoder.norm.weight"])


@needs_data
def test_pretrain_and_train_refuse_each_others_recipes(tmp_path, capsys):
    cases = [("pretrain", "modelnet40-small.cpu", "method.name 'mae'"),
             ("train", "pretrain-modelnet40.point_mae_tiny", "pointgst pretrain"),
             ("pretrain", "pretrain-modelnet40.point_mae_tiny", "backbone.name must be one of")]
    for command, recipe, message in cases:
        extra = ["--set", "backbone.name=pointgpt_s"] if "backbone" in message else []
        code, _, err = run_cli_here([command, recipe, "--out", tmp_path / "x", "--set",
                                     f"data.root={SHARED_DATA / 'modelnet40_1024'}", *extra], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err[-2000:]
        assert not (tmp_path / "x").exists()


def test_logistic_regression_probe_separates_separable_classes():
    from pointgst.probe import fit_logistic_regression

    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 4
    labels = torch.arange(4).repeat_interleave(50)
    features = centers[labels] + torch.randn(200, 16, generator=generator)
    first = fit_logistic_regression(features, labels, 4)
    again = fit_logistic_regression(features, labels, 4)
    assert (first(features.double()).argmax(1) == labels).all()
    assert torch.equal(first.weight, again.weight)  # deterministic: the figures of the model card reproduce


def test_probe_cli_is_deterministic_and_beats_chance_on_the_sample(capsys):
    from pointgst.demo import sample_data_folder

    args = ["probe", "point_mae_tiny.modelnet40", "--data", str(sample_data_folder()), "--dataset", "modelnet10",
            "--no-progress"]
    first = subprocess.run([sys.executable, "-m", "pointgst.cli", *args], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    code, again, _ = run_cli_here(args, capsys)  # another process, other thread state
    line = first.stdout.strip().splitlines()[-1]
    assert code == 0 and line == again.strip().splitlines()[-1]  # the model card's figures reproduce exactly
    assert "pretrained weights" in line and "280 training / 100 test clouds" in line
    assert float(line.split("test accuracy ")[1].split("%")[0]) > 40.0  # chance: 10%


def test_shipped_weights_load_offline_and_fit_the_budget():
    folder = PACKAGE / "weights" / "point_mae_tiny.modelnet40"
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    card = (folder / "MODEL_CARD.md").read_text()
    assert "pointgst pretrain pretrain-modelnet40.point_mae_tiny" in card and "linear probe" in card.lower()
    code = ("import socket\n"
            "def refuse(*a, **k): raise OSError('network disabled in this test')\n"
            "socket.socket.connect = refuse\n"
            "import pointgst, torch\n"
            "b = pointgst.create_backbone('point_mae_tiny.modelnet40', pretrained=True)\n"
            "b.eval()\n"
            "print(b.load_report.source, b(torch.randn(1, 1024, 3)).shape)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.safetensors" in result.stdout and "torch.Size([1, 40])" in result.stdout


def test_shipped_sample_is_small_real_modelnet10_with_its_terms():
    from pointgst.data import build_dataset
    from pointgst.demo import sample_data_folder

    folder = sample_data_folder()
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 5 * 10**6
    terms = (folder / "README.md").read_text()
    assert "academic research" in terms and "Wu" in terms and "prasadsawant5/PointNet" in terms
    data = {"dataset": "modelnet10", "root": str(folder), "format": "npz"}
    train, test = build_dataset(data, "train"), build_dataset(data, "test")
    assert len(train) == 280 and len(test) == 100
    assert torch.bincount(torch.as_tensor(test.labels), minlength=10).tolist() == [10] * 10
    if (SHARED_DATA / "modelnet40_1024").is_dir():  # the sample is a verbatim copy of pack rows
        import numpy as np
        with np.load(SHARED_DATA / "modelnet40_1024" / "test.npz") as pack, np.load(folder / "test.npz") as sample:
            row = {str(n): i for i, n in enumerate(pack["names"])}[str(sample["names"][0])]
            assert np.array_equal(pack["points"][row], sample["points"][0])


def test_demo_run_saves_an_adapter_that_reproduces_its_test_accuracy(tmp_path):
    from pointgst.data import build_dataset
    from pointgst.demo import free_run_folder, run_demo, sample_data_folder

    summary = run_demo(tmp_path / "demo", epochs=1, progress=False, report=False)
    assert summary["epochs"] == 1 and summary["best_epoch"] == 0
    model = pointgst.load_adapter(tmp_path / "demo" / "adapter")  # rebuilds point_mae_tiny.modelnet40 from the package
    model.eval()
    test = build_dataset({"dataset": "modelnet10", "root": str(sample_data_folder()), "format": "npz"}, "test")
    with torch.no_grad():
        predictions = torch.cat([model(test.points[i:i + 25]).argmax(1) for i in range(0, len(test), 25)])
    accuracy = (predictions == torch.as_tensor(test.labels)).float().mean().item()
    assert abs(accuracy - summary["test_acc"]) <= 0.01 + 1e-9  # at most one of 100 near-tied shapes flips
    assert free_run_folder(tmp_path / "demo") == tmp_path / "demo-2"  # a second demo never overwrites the first


@pytest.mark.slow
def test_demo_cli_offline_beats_chance_and_random_weights(tmp_path):
    code = ("import socket, sys\n"
            "def refuse(*a, **k): raise OSError('network disabled in this test')\n"
            "socket.socket.connect = refuse\n"
            "from pointgst.cli import main\n"
            f"sys.exit(main(['demo', '--out', {str(tmp_path / 'demo')!r}, '--no-progress']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = {line.split(":")[0]: float(line.split("test accuracy ")[1].split("%")[0])
                for line in result.stdout.splitlines() if line.startswith(("pretrained: ", "random weights: "))}
    assert accuracy["pretrained"] > 30.0 and accuracy["pretrained"] > accuracy["random weights"], result.stdout
    assert "trainable parameters" in result.stdout and "adapter saved to" in result.stdout
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_bf16_demo_reaches_the_fp32_demo_accuracy_within_noise(tmp_path):
    """A short real run (the demo: the shipped backbone, 250 ModelNet10 training shapes, 100 test shapes) trained in
    bfloat16 autocast ends within 6 points of the float32 run (one binomial standard deviation at 82% on 100 shapes is
    3.8 points): bf16 changes rounding, not what is learned."""
    from pointgst.demo import demo_recipe
    from pointgst.recipe import Recipe
    from pointgst.training import Trainer

    accuracy = {}
    for precision in ("fp32", "bf16"):
        settings = demo_recipe().to_dict()
        settings["train"]["precision"] = precision
        summary = Trainer(Recipe.from_dict(settings), tmp_path / precision, progress=False).fit()
        assert all(math.isfinite(json.loads(line)["train_loss"])
                   for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines())
        accuracy[precision] = summary["test_acc"]
    print(f"demo test accuracy by precision: {accuracy}")
    assert accuracy["fp32"] > 0.5 and abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.06, accuracy
