"""``pointgst train`` / ``pointgst eval`` on part segmentation: the real ShapeNetPart samples, a procedural
part-labelled dataset that a short CPU run learns far above chance, and resume after a kill (docs/segmentation.md)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointgst.data.procedural_parts import write_procedural_shapenetpart
from pointgst.data.shapenetpart import ShapeNetPart, category_part_ids
from pointgst.part_metrics import PartSegmentationMeter

from .cli_runs import finish, kill_after_first_checkpoint, run_cli_here, start_cli

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "shapenetpart_samples"
V0 = SAMPLES / "shapenetcore_partanno_segmentation_benchmark_v0"
OFFICIAL_LISTS = SAMPLES / "shapenetcore_partanno_segmentation_benchmark_v0_normal" / "train_test_split"
needs_samples = pytest.mark.skipif(not V0.is_dir(), reason=f"shared ShapeNetPart samples {SAMPLES} absent")

RECIPE = "shapenetpart.point_mae_tiny"
SMALL = ["data.npoints=512", "data.point_all=512", "backbone.num_group=32", "backbone.group_size=16",
         "method.options.local_size=16", "train.batch_size=8", "train.warmup_epochs=1"]


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@needs_samples
def test_train_and_eval_on_the_real_samples_with_the_official_lists(tmp_path, capsys):
    """The 16 v0-layout samples (one per category) with the official split lists: 13 train, 3 test shapes."""
    root = tmp_path / "v0"
    shutil.copytree(V0, root, ignore=shutil.ignore_patterns("train_test_split"))
    shutil.copytree(OFFICIAL_LISTS, root / "train_test_split")
    run = tmp_path / "run"
    out = finish(start_cli("train", RECIPE, run, SMALL + [f"data.root={root}", "train.epochs=2",
                                                          "train.selection=test"]))
    summary = summary_of(run)
    assert "test_instance_miou" in out and summary["selection"] == "test"
    assert sorted(summary["test_per_category"]) == ["Earphone", "Rocket", "Table"]
    assert 0.0 <= summary["test_instance_miou"] <= 1.0 and summary["epochs"] == 2
    code, printed, err = run_cli_here(["eval", run, "--device", "cpu"], capsys)
    assert code == 0, err[-3000:]
    result = json.loads((run / "eval.json").read_text())
    assert result["test_instance_miou"] == pytest.approx(summary["test_instance_miou"], abs=1e-6)
    assert f"{100 * result['test_instance_miou']:.2f}%" in printed


def chance_instance_miou(root: Path, npoints: int) -> float:
    """Instance mIoU of uniformly random parts of each shape's category on the test split (seeded)."""
    test = ShapeNetPart(root, "test", npoints=npoints)
    parts_of = [category_part_ids(name) for name in test.class_names]
    meter = PartSegmentationMeter(parts_of, test.class_names)
    generator = torch.Generator().manual_seed(0)
    for i in range(len(test)):
        _, category, parts = test[i]
        choices = torch.tensor(parts_of[category])
        guess = choices[torch.randint(len(choices), (npoints,), generator=generator)]
        meter.update(guess[None], parts[None], torch.tensor([category]))
    return meter.compute()["instance_miou"]


def test_a_short_cpu_run_learns_procedural_parts_far_above_chance(tmp_path):
    root = write_procedural_shapenetpart(tmp_path / "parts", shapes_per_category=10, points_per_shape=512)
    run = tmp_path / "run"
    finish(start_cli("train", RECIPE, run, SMALL + [f"data.root={root}", "train.epochs=8"]))
    summary = summary_of(run)
    chance = chance_instance_miou(root, 512)
    assert summary["test_instance_miou"] >= chance + 0.25, (summary["test_instance_miou"], chance)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["first_step_loss"]
    assert all("select_instance_miou" in row and "select_class_miou" in row for row in rows)
    check_predict_writes_part_labels(tmp_path, run, root, summary["test_acc"])


def check_predict_writes_part_labels(tmp_path: Path, run: Path, root: Path, test_acc: float) -> None:
    """``pointgst predict`` on the run labels every point of Chair test shapes written as binary PLY files by plyfile
    (not pointgst), about as accurately as the run's test accuracy, into coloured PLY files."""
    from plyfile import PlyData, PlyElement

    test = ShapeNetPart(root, "test", npoints=512)
    chairs = [i for i in range(len(test)) if test.class_names[test.categories[i]] == "Chair"]
    inputs, truth = tmp_path / "chairs", {}
    inputs.mkdir()
    for i in chairs:
        points, parts = test.cloud(i)
        rows = np.array([tuple(p) for p in points.numpy()], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
        PlyData([PlyElement.describe(rows, "vertex")], text=False).write(str(inputs / f"chair{i}.ply"))
        truth[f"chair{i}"] = parts.numpy()
    out = tmp_path / "labelled"
    done = subprocess.run([sys.executable, "-m", "pointgst.cli", "predict", str(run), str(inputs), "--category", "Chair",
                           "--out-dir", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    correct = total = 0
    for stem, parts in truth.items():
        labelled = PlyData.read(str(out / f"{stem}.parts.ply"))["vertex"]
        assert len(labelled["part"]) == len(parts) and set(labelled["part"]) <= {12, 13, 14, 15}
        assert {"red", "green", "blue"} <= set(labelled.data.dtype.names) and stem in printed
        correct, total = correct + int((labelled["part"] == parts).sum()), total + len(parts)
    assert correct / total >= test_acc - 0.15, (correct / total, test_acc)


def test_a_killed_segmentation_run_resumes_to_the_same_weights(tmp_path):
    root = write_procedural_shapenetpart(tmp_path / "parts", shapes_per_category=6, points_per_shape=512)
    settings = SMALL + [f"data.root={root}", "train.epochs=2"]
    finish(start_cli("train", RECIPE, tmp_path / "straight", settings))
    checkpoint = kill_after_first_checkpoint(start_cli("train", RECIPE, tmp_path / "resumed", settings),
                                             tmp_path / "resumed")
    finish(start_cli("train", RECIPE, tmp_path / "resumed", settings, "--resume"))
    a = torch.load(tmp_path / "straight" / "checkpoint-last.pt", weights_only=True)["trainable"]
    b = torch.load(checkpoint, weights_only=True)["trainable"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary_of(tmp_path / "straight")["test_instance_miou"] == summary_of(tmp_path / "resumed")[
        "test_instance_miou"]
