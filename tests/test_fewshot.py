"""``pointgst fewshot``: episodes drawn and written to disk, the official pickles behind allow_pickle, folds that
resume and are not rerun once finished."""

import json
import pickle

import numpy as np
import pytest
import torch

from pointgst.data import build_dataset
from pointgst.data.modelnet import MODELNET40_CLASSES
from pointgst.data.modelnet_dat import UnsafeDatasetError
from pointgst.fewshot import convert_official_episodes, draw_episodes, episode_folder
from pointgst.recipe import load_recipe, parse_folds

from .cli_runs import finish, kill_after_first_checkpoint, run_cli_here, start_cli

CLASSES = [f"shape{i}" for i in range(6)]


def write_source_pack(root, train_per_class=12, test_per_class=25, points=64):
    """A pack of 6 classes whose clouds are boxes of class-dependent proportions (learnable in a few steps)."""
    generator = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        scale = np.stack([1 + labels, 6 - labels, np.ones_like(labels)], 1)[:, None, :] / 6
        clouds = (generator.uniform(-1, 1, (len(labels), points, 3)) * scale).astype(np.float32)
        names = np.array([f"{CLASSES[c]}_{split}_{i:03d}" for i, c in enumerate(labels)])
        np.savez(root / f"{split}.npz", points=clouds, labels=labels, names=names)
    (root / "shape_names.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


def source_overrides(root):
    return [f"data.root={root}", "data.dataset=pack", "data.num_classes=6", "data.npoints=64", "data.point_all=64",
            "backbone.num_group=16", "backbone.group_size=8", "train.epochs=2", "train.warmup_epochs=1",
            "train.batch_size=6", "method.options.local_size=8"]


@pytest.mark.parametrize("text,folds", [("0-9", list(range(10))), ("3", [3]), ("0,2,5", [0, 2, 5]),
                                        ("4-5,1", [1, 4, 5])])
def test_parse_folds(text, folds):
    assert parse_folds(text) == folds


@pytest.mark.parametrize("text", ["", "a", "5-2", "1-", "-3"])
def test_parse_folds_refuses_nonsense(text):
    with pytest.raises(ValueError, match="folds must look like"):
        parse_folds(text)


def test_drawn_episodes_follow_the_protocol_and_are_reproducible(tmp_path):
    root = write_source_pack(tmp_path / "source")
    overrides = source_overrides(root) + ["fewshot.way=3", "fewshot.shot=4", "fewshot.query_per_class=5"]
    recipe = load_recipe("fewshot-5w10s.point_mae_tiny", overrides + ["fewshot.folds=0-1"])
    source = {split: np.load(root / f"{split}.npz") for split in ("train", "test")}
    draw_episodes(recipe, tmp_path / "a")
    draw_episodes(load_recipe("fewshot-5w10s.point_mae_tiny", overrides + ["fewshot.folds=1"]), tmp_path / "b")
    classes = []
    for fold in (0, 1):
        folder = episode_folder(tmp_path / "a", 3, 4, fold)
        record = json.loads((folder / "episode.json").read_text())
        assert record["seed"] == fold and record["source"] == "drawn" and record["way"] == 3
        names = (folder / "shape_names.txt").read_text().split()
        assert names == record["classes"] and len(set(names)) == 3
        classes.append(names)
        for split, count in (("train", 4), ("test", 5)):
            pack = np.load(folder / f"{split}.npz")
            assert pack["labels"].tolist() == [c for c in range(3) for _ in range(count)]
            rows = record[f"{split}_rows"]
            assert np.array_equal(pack["points"], source[split]["points"][rows])  # the source's clouds, unchanged
            assert [str(n).split("_")[0] for n in pack["names"]] == [names[label] for label in pack["labels"]]
            assert len(set(rows)) == len(rows)
    assert classes[0] != classes[1]
    for split in ("train", "test"):  # the same fold drawn again elsewhere: the same episode
        a = np.load(episode_folder(tmp_path / "a", 3, 4, 1) / f"{split}.npz")
        b = np.load(episode_folder(tmp_path / "b", 3, 4, 1) / f"{split}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in ("points", "labels", "names"))
    with pytest.raises(ValueError, match="drawn differently"):
        draw_episodes(load_recipe("fewshot-5w10s.point_mae_tiny", overrides + ["fewshot.episode_seed=1"]),
                      tmp_path / "a")
    episode = build_dataset({"dataset": "pack", "root": episode_folder(tmp_path / "a", 3, 4, 0)}, "test")
    assert episode.num_classes == 3 and episode.class_names == classes[0] and len(episode) == 15


def write_official_pickles(root, way=5, shot=10, folds=(0, 1), points=32):
    """The official ModelNetFewshot layout: ROOT/{way}way_{shot}shot/{fold}.pkl, {"train": [...], "test": [...]}
    of (points (N, 6), episode label, third field): fold 0 carries the original ModelNet40 label, fold 1 a shape
    name."""
    generator = np.random.default_rng(1)
    for fold in folds:
        picked = [3 * fold + 2 * i for i in range(way)]  # original ModelNet40 labels
        content = {}
        for split, count in (("train", shot), ("test", 20)):
            items = []
            for label, original in enumerate(picked):
                for i in range(count):
                    cloud = generator.normal(size=(points, 6)) * 3 + 5  # not normalised, with normals
                    third = original if fold == 0 else f"{MODELNET40_CLASSES[original]}_{i:04d}"
                    items.append((cloud, label, third))
            content[split] = items
        folder = root / f"{way}way_{shot}shot"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{fold}.pkl", "wb") as handle:
            pickle.dump(content, handle)
    return root


def test_official_pickles_are_read_only_with_allow_pickle_and_converted(tmp_path, capsys):
    root = write_official_pickles(tmp_path / "ModelNetFewshot")
    with pytest.raises(UnsafeDatasetError, match="--allow-pickle"):
        convert_official_episodes(root, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
    code, out, err = run_cli_here(["data", "convert-fewshot", root, tmp_path / "converted"], capsys)
    assert code == 2 and "pickle" in err and err.count("\n") == 1
    with pytest.warns(UserWarning, match="unpickling"):
        code, out, err = run_cli_here(["data", "convert-fewshot", root, tmp_path / "converted", "--allow-pickle"],
                                      capsys)
    assert code == 0 and "wrote 2 episodes" in out
    for fold in (0, 1):
        folder = episode_folder(tmp_path / "converted", 5, 10, fold)
        expected = [MODELNET40_CLASSES[3 * fold + 2 * i] for i in range(5)]
        assert (folder / "shape_names.txt").read_text().split() == expected
        with open(root / "5way_10shot" / f"{fold}.pkl", "rb") as handle:
            original = pickle.load(handle)
        for split in ("train", "test"):
            dataset = build_dataset({"dataset": "pack", "root": folder, "shuffle_points": False}, split)
            assert dataset.labels.tolist() == [item[1] for item in original[split]]
            first = original[split][0][0][:, :3]
            centred = first - first.mean(0)
            expected_cloud = centred / np.sqrt((centred ** 2).sum(1)).max()  # the official pc_normalize
            torch.testing.assert_close(dataset.points[0], torch.from_numpy(expected_cloud).float(), atol=1e-6, rtol=0)


def test_fewshot_cli_resumes_after_a_kill_without_rerunning_finished_folds(tmp_path):
    root = write_source_pack(tmp_path / "source")
    out = tmp_path / "run"
    extra = ["--way", "3", "--shot", "4", "--query", "5", "--folds", "0-1"]
    process = start_cli("fewshot", "fewshot-5w10s.point_mae_tiny", out, source_overrides(root), *extra)
    kill_after_first_checkpoint(process, out / "fold1")  # fold 0 finished, fold 1 has one epoch
    finished = (out / "fold0" / "summary.json").read_bytes()
    stamp = (out / "fold0" / "summary.json").stat().st_mtime_ns
    text = finish(start_cli("fewshot", "fewshot-5w10s.point_mae_tiny", out, source_overrides(root), *extra))
    assert "fold 0: finished earlier" in text and "fold 1: resuming" in text
    assert (out / "fold0" / "summary.json").read_bytes() == finished
    assert (out / "fold0" / "summary.json").stat().st_mtime_ns == stamp
    result = json.loads((out / "fewshot.json").read_text())
    accuracies = [row["test_acc_last_epoch"] for row in result["per_fold"]]
    assert result["completed_folds"] == 2 and [row["fold"] for row in result["per_fold"]] == [0, 1]
    assert result["test_acc_last_epoch_mean"] == pytest.approx(np.mean(accuracies))
    assert result["test_acc_last_epoch_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert f"{100 * result['test_acc_last_epoch_mean']:.2f} ± {100 * result['test_acc_last_epoch_std']:.2f}%" in text
    rows = [json.loads(line) for line in (out / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # the killed fold continued from its checkpoint


def test_a_recipe_without_a_fewshot_section_needs_way_and_shot(tmp_path, capsys):
    code, _, err = run_cli_here(["fewshot", "modelnet40.point_mae_tiny", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "no fewshot section" in err and "--way" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_fewshot_recipe(tmp_path, capsys):
    code, _, err = run_cli_here(["train", "fewshot-5w10s.point_mae_tiny", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "pointgst fewshot fewshot-5w10s.point_mae_tiny" in err and err.count("\n") == 1


def test_selection_last_skips_the_per_epoch_evaluation_and_keeps_the_same_last_epoch(tmp_path, capsys):
    """``train.selection=last``: no epoch is evaluated or selected, and the last epoch is the one the official
    protocol's run reports as its last epoch (evaluating between epochs draws no random numbers)."""
    root = write_source_pack(tmp_path / "source")
    extra = ["--way", "3", "--shot", "4", "--query", "5", "--folds", "0", "--no-progress"]
    runs = {}
    for selection in ("test", "last"):
        out = tmp_path / selection
        code, printed, err = run_cli_here(["fewshot", "fewshot-5w10s.point_mae_tiny", "--out", out, *extra,
                                           *[a for s in source_overrides(root) + [f"train.selection={selection}"]
                                             for a in ("--set", s)]], capsys)
        assert code == 0, err[-3000:]
        runs[selection] = (out, printed, json.loads((out / "fewshot.json").read_text()))
    (test_out, _, with_test), (last_out, printed, with_last) = runs["test"], runs["last"]
    assert with_last["test_acc_last_epoch_mean"] == with_test["test_acc_last_epoch_mean"]
    assert "test_acc_best_on_test_mean" in with_test and "test_acc_best_on_test_mean" not in with_last
    assert "best epoch" not in printed and "selection=last" in with_last["note"]
    summary = json.loads((last_out / "fold0" / "summary.json").read_text())
    assert summary["selection"] == "last" and summary["best_epoch"] == 1
    assert summary["test_acc"] == summary["test_acc_last_epoch"]
    rows = [json.loads(line) for line in (last_out / "fold0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and not any("select_acc" in r for r in rows)
    assert not (last_out / "fold0" / "best-trainable.pt").exists()
    a = torch.load(test_out / "fold0" / "checkpoint-last.pt", weights_only=True)["trainable"]
    b = torch.load(last_out / "fold0" / "checkpoint-last.pt", weights_only=True)["trainable"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
