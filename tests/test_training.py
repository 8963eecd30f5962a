"""The training engine: parameter groups, schedules, a real CPU run from the CLI, kill + resume, DDP."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pointgst
from pointgst.recipe import load_recipe
from pointgst.training.optim import build_scheduler, official_lr, parameter_groups
from pointgst.tuner.keys import official_name

from .cli_runs import finish, kill_after_first_checkpoint, run_cli_here, start_cli

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")
TINY = ["data.dataset=modelnet10", "data.num_classes=10", "data.max_train_samples=40", "data.max_test_samples=16",
        "data.val_fraction=0.2", "train.batch_size=8",
        "train.epochs=2", "train.warmup_epochs=1", "backbone.num_group=32", f"data.root={SHARED_DATA / 'modelnet40_1024'}"]


def test_official_parameter_groups():
    model = pointgst.wrap(pointgst.create_backbone("point_mae", num_classes=15))
    no_decay, decay = parameter_groups(model, 0.05)
    names = {id(p): official_name(n) for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "cls_pos" in decayed and "cls_token" in kept  # official quirk Q8
    assert "blocks.blocks.0.gft_adapter.down.weight" in decayed
    assert {"blocks.blocks.0.gft_adapter.down.bias", "blocks.blocks.0.gft_adapter.norm_ly1.weight",
            "cls_head_finetune.1.weight"} <= kept
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decayed) + len(kept) == sum(p.requires_grad for p in model.parameters())
    # per block: down.w, up.w, adapt1.w decayed; 3 biases + 2 LN x 2 not; head: 3 weights vs 3 biases + 2 BN x 2
    assert len(decayed) == 12 * 3 + 3 + 1 and len(kept) == 12 * 7 + 7 + 1


def test_official_schedule_quirks():
    kw = dict(lr=5e-4, lr_min=1e-6, warmup_lr_init=1e-6, warmup_epochs=10, epochs=300)
    assert official_lr(0, **kw) == official_lr(1, **kw) == 1e-6  # epochs 0 and 1 both at 1e-6
    assert official_lr(2, **kw) == pytest.approx(1e-6 + (5e-4 - 1e-6) / 10)
    assert official_lr(11, **kw) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + torch.cos(torch.tensor(torch.pi * 10 / 300)).item()))
    assert official_lr(301, **kw) == 1e-6


def test_cosine_schedule_with_warmup_per_step():
    recipe = load_recipe("modelnet40-small.cpu", ["train.epochs=4", "train.warmup_epochs=1", "train.lr=1e-3"])
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=recipe.train.lr)
    scheduler, per = build_scheduler(optimizer, recipe.train, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert per == "step"
    assert lrs[0] == pytest.approx(recipe.train.warmup_lr_init)
    assert lrs[10] == pytest.approx(1e-3)  # end of the linear warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(recipe.train.lr_min)


def _train_cli(out: Path, *extra: str, **popen) -> subprocess.Popen:
    return start_cli("train", "modelnet40-small.cpu", out, TINY, *extra, **popen)


@needs_data
def test_cli_run_writes_everything_and_resume_after_kill_matches(tmp_path, capsys):
    straight = _train_cli(tmp_path / "straight")
    out = finish(straight)
    run = tmp_path / "straight"
    for name in ("recipe.yaml", "metrics.jsonl", "metrics.csv", "checkpoint-last.pt", "best-trainable.pt",
                 "curves.png", "summary.json", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    summary = json.loads((run / "summary.json").read_text())
    # point_mae_tiny + PCSA: 238,152 trainable with 40 classes (pointgst params), 30 fewer head rows of 257 with 10
    assert summary["trainable_parameters"] == 238_152 - 30 * 257 and 0 <= summary["test_acc"] <= 1
    assert "test_acc" in out and (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, printed, err = run_cli_here(["eval", run, "--vote", "2", "--repeats", "2", "--best-of", "--device", "cpu"],
                                      capsys)
    assert code == 0, err[-3000:]
    result = json.loads((run / "eval.json").read_text())
    assert re.search(rf"^test_acc +{100 * result['test_acc']:.2f}%$", printed, re.M), printed  # a percentage
    assert result["test_acc"] == pytest.approx(summary["test_acc"]) and result["vote_repeats"] == 2
    assert 0 <= result["vote_acc_mean"] <= 1 and result["vote_acc_std"] >= 0
    assert result["vote_acc_best_of_repeats_official_optimistic"] >= result["vote_acc_mean"]

    checkpoint = kill_after_first_checkpoint(_train_cli(tmp_path / "resumed"), tmp_path / "resumed")
    finish(_train_cli(tmp_path / "resumed", "--resume"))
    a = torch.load(run / "checkpoint-last.pt", weights_only=True)["trainable"]
    b = torch.load(checkpoint, weights_only=True)["trainable"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_data
def test_bad_input_fails_before_any_work(tmp_path, capsys):
    cases = [(["--set", "train.epochz=3"], "epochz"), (["--set", "train.epochs=many"], "train.epochs"),
             (["--set", "data.root=/no/such/folder"], "/no/such/folder"),
             (["--set", "method.options.gft_mode=sideways"], "gft_mode"),
             (["--set", "method.options.rnak=3"], "rnak")]
    for extra, message in cases:
        code, _, err = run_cli_here(["train", "modelnet40-small.cpu", "--out", tmp_path / "x", *extra], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err[-2000:]
        assert not (tmp_path / "x").exists()
    code, _, err = run_cli_here(["train", "modelnet40-smal.cpu"], capsys)
    assert code == 2 and "modelnet40-small.cpu" in err


@needs_data
def test_two_process_torchrun_agrees_with_one_process_at_the_first_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = _train_cli(tmp_path / "single", "--set", "train.epochs=1", "--set", "train.warmup_epochs=0", env=env)
    finish(single)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pointgst.cli",
            "train", "modelnet40-small.cpu", "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu"]
    args += [a for s in TINY + ["train.epochs=1", "train.warmup_epochs=0"] for a in ("--set", s)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    first = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[0]) for run in ("single", "ddp")]
    assert first[0]["first_step_loss"] == pytest.approx(first[1]["first_step_loss"], rel=1e-5)
    assert abs(first[0]["train_loss"] - first[1]["train_loss"]) < 0.5  # head BatchNorm sees half batches per rank


@needs_data
def test_frozen_batchnorm_statistics_do_not_drift_while_training_the_head(tmp_path):
    from pointgst.training import Trainer

    recipe = load_recipe("modelnet40-small.cpu", TINY + ["train.epochs=1", "train.warmup_epochs=0",
                                                          "method.name=linear", "method.options={}"])
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if ".encoder." in k}
    assert any(k.endswith("running_mean") for k in before)
    trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # first-step probe included


@needs_data
def test_validation_split_is_disjoint_from_training_and_keeps_stored_order():
    from pointgst.training.data import build_splits

    recipe = load_recipe("modelnet40-small.cpu", [f"data.root={SHARED_DATA / 'modelnet40_1024'}"])
    splits = build_splits(recipe)

    def shape_ids(subset):
        """The shape ids a (nested) Subset selects, and the dataset under it."""
        base, chain = subset, []
        while hasattr(base, "indices"):
            chain.append(base.indices)
            base = base.dataset
        ids = list(range(len(base)))
        for layer in reversed(chain):
            ids = [ids[i] for i in layer]
        return {base.shape_ids[i] for i in ids}, base

    train_ids, train_base = shape_ids(splits["train"])
    select_ids, select_base = shape_ids(splits["select"])
    assert len(train_ids) + len(select_ids) == recipe.data.max_train_samples and not train_ids & select_ids
    assert train_base.shuffle_points and not select_base.shuffle_points
    first, _ = splits["select"][0]
    assert torch.equal(first, splits["select"][0][0])  # same order every time


@pytest.mark.parametrize("method", ["pcsa", "lora", "full"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(method):
    def loss_and_grads(checkpointing: bool):
        torch.manual_seed(0)
        backbone = pointgst.create_backbone("point_mae_tiny", num_classes=5, num_group=32, group_size=16)
        model = pointgst.wrap(backbone, method=method)
        if checkpointing:
            model.gradient_checkpointing_enable()  # the Hugging Face convention, through peft to the backbone
            assert backbone.is_gradient_checkpointing
        model.train()
        torch.manual_seed(1)  # the same dropout and stochastic-depth draws
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 128, 3, generator=torch.Generator()
                                                                   .manual_seed(2))), torch.arange(4))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = loss_and_grads(False), loss_and_grads(True)
    assert checkpointed[0] == pytest.approx(plain[0], abs=1e-6)
    assert plain[1].keys() == checkpointed[1].keys() and plain[1]
    assert all(torch.allclose(plain[1][k], checkpointed[1][k], atol=1e-6, rtol=1e-5) for k in plain[1])


@needs_data
def test_bf16_precision_and_checkpointing_train_finitely_and_save_float32(tmp_path):
    from pointgst.training import Trainer

    recipe = load_recipe("modelnet40-small.cpu", TINY + ["train.epochs=1", "train.warmup_epochs=0",
                                                          "backbone.name=point_mae_tiny", "backbone.pretrained=false",
                                                          "train.precision=bf16", "train.gradient_checkpointing=true"])
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    assert trainer.model.get_base_model().is_gradient_checkpointing
    summary = trainer.fit()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["train_loss"]) and 0 <= summary["test_acc"] <= 1
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors").values()
    assert {v.dtype for v in saved if v.is_floating_point()} == {torch.float32}
