"""``pointgst.Predictor`` and ``pointgst predict`` on a freshly trained demo run: test shapes written to files by
independent writers get the predictions of the run's own test evaluation; class names are recorded by the run (and
fall back to indices for older folders); every bad file is one line on stderr while the others are classified."""

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from pointgst.data import MODELNET10_CLASSES, ModelNetNormalResampled, ModelNetPack, PointCloudFolder, build_dataset
from pointgst.data.cloud_files import read_cloud
from pointgst.data.readers import pc_normalize
from pointgst.demo import demo_recipe, run_demo, sample_data_folder
from pointgst.errors import CheckpointError
from pointgst.predict import Predictor
from pointgst.preprocessing import Preprocessing
from pointgst.recipe import Recipe
from pointgst.training.data import build_test_split, make_loader, subset
from pointgst.training.distributed import Distributed
from pointgst.training.evaluate import collect_logits
from pointgst.training.run_files import BEST_STATE, load_run_file, load_trainable_state, read_run_recipe
from pointgst.training.setup import build_model

from .cli_runs import run_cli_here
from .test_cloud_files import write_off, write_pcd, write_ply

SHAPES = list(range(4, 100, 8))  # 12 of the sample's 100 ModelNet10 test shapes
FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_0"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "demo"
    run_demo(out, epochs=1, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def evaluation(run):
    """The run's own evaluation, its model rebuilt as ``evaluate_run`` does: logits ``(12, 10)`` of the stored test
    shapes through the test loader (of those 12 shapes), and of the same shapes after ``pc_normalize`` (what predict applies to a ModelNet
    run's files) through the same code; the shapes ``(12, 1024, 3)`` as ``build_dataset`` reads them."""
    recipe = read_run_recipe(run)
    model = build_model(recipe)
    load_trainable_state(model, load_run_file(run / BEST_STATE))
    dist = Distributed()
    loader = make_loader(subset(build_test_split(recipe), SHAPES), recipe, dist, train=False)
    stored, _ = collect_logits(model, loader, dist, npoints=recipe.data.npoints)
    test = build_dataset({"dataset": "modelnet10", "root": str(sample_data_folder()), "format": "npz"}, "test")
    shapes = np.stack([test[i][0].numpy() for i in SHAPES])
    batch = torch.from_numpy(np.stack([pc_normalize(s) for s in shapes]))
    normalised, _ = collect_logits(model, [(torch.tensor(SHAPES), batch, torch.zeros(len(SHAPES)))], dist,
                                   npoints=recipe.data.npoints)
    return stored, normalised, shapes


WRITERS = {
    "binary.ply": lambda path, xyz: write_ply(path, xyz, text=False),
    "ascii.ply": lambda path, xyz: write_ply(path, xyz, text=True),
    "ascii.pcd": lambda path, xyz: write_pcd(path, xyz, binary=False),
    "binary.pcd": lambda path, xyz: write_pcd(path, xyz, binary=True),
    "cloud.off": write_off,
}


def write_shapes(folder: Path, shapes: np.ndarray) -> list[Path]:
    """Every shape in every format: ``folder/shape{i}/{binary.ply, ascii.ply, ascii.pcd, binary.pcd, cloud.off}``."""
    files = []
    for i, xyz in enumerate(shapes):
        (folder / f"shape{i:02d}").mkdir(parents=True)
        for name, write in WRITERS.items():
            write(folder / f"shape{i:02d}" / name, xyz)
            files.append(folder / f"shape{i:02d}" / name)
    return files


def test_files_get_the_predictions_of_the_runs_own_evaluation(run, evaluation, tmp_path, capsys):
    stored, normalised, shapes = evaluation
    files = write_shapes(tmp_path / "clouds", shapes)
    predictor = Predictor.from_path(run, device="cpu")
    predictions = predictor.predict(files, top_k=3)
    expected = [MODELNET10_CLASSES[i] for i in stored.argmax(1).tolist() for _ in WRITERS]
    assert [p.label for p in predictions] == expected
    assert normalised.argmax(1).tolist() == stored.argmax(1).tolist()
    probabilities = torch.softmax(normalised, dim=1)
    for p, row in zip(predictions, probabilities.repeat_interleave(len(WRITERS), dim=0)):
        top = row.topk(3)
        assert [name for name, _ in p.top_k] == [MODELNET10_CLASSES[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([v for _, v in p.top_k], top.values.numpy(), rtol=0, atol=1e-6)
    logits = predictor.logits([predictor.preprocessing.apply(read_cloud(f)) for f in files if f.suffix == ".off"])
    torch.testing.assert_close(logits, normalised, rtol=0, atol=1e-5)
    # pc_normalize of the stored (already normalised) shapes moves them by float rounding (~4e-6) only
    torch.testing.assert_close(logits, stored, rtol=0, atol=1e-4)

    code, out, err = run_cli_here(["predict", run, tmp_path / "clouds", "--format", "json", "--device", "cpu"], capsys)
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [row["path"] for row in rows] == sorted(map(str, files))  # the folder, recursively, sorted
    assert [row["class"] for row in rows] == expected


def test_the_run_records_its_class_names_and_preprocessing(run, evaluation, tmp_path):
    for folder in (run, run / "adapter"):
        record = json.loads((folder / "inference.json").read_text())
        assert record["class_names"] == MODELNET10_CLASSES
        assert record["preprocessing"] == {"npoints": 1024, "point_all": 1024, "normalize": True, "swap_yz": False,
                                           "first_rows": None, "resample_to": None, "seed": 0, "precision": "fp32"}
    assert "inference.json" in json.loads((run / "adapter" / "pointgst.json").read_text())["files"]
    stored, normalised, shapes = evaluation
    from_run = Predictor.from_path(run, device="cpu").predict(list(shapes), top_k=10)
    from_adapter = Predictor.from_path(run / "adapter", device="cpu").predict(list(shapes), top_k=10)
    assert [p.label for p in from_adapter] == [p.label for p in from_run] == [MODELNET10_CLASSES[i] for i in
                                                                              stored.argmax(1).tolist()]
    for a, b in zip(from_run, from_adapter):
        assert [n for n, _ in a.top_k] == [n for n, _ in b.top_k]
        np.testing.assert_allclose([v for _, v in a.top_k], [v for _, v in b.top_k], rtol=0, atol=1e-5)


def test_older_folders_fall_back_to_class_indices(run, evaluation, tmp_path):
    stored, shapes = evaluation[0][:4], evaluation[2][:4]
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "inference.json").unlink()
    (old / "adapter" / "inference.json").unlink()
    expected = [f"class {i}" for i in stored.argmax(1).tolist()]
    assert [p.label for p in Predictor.from_path(old, device="cpu").predict(list(shapes))] == expected
    assert [p.label for p in Predictor.from_path(old / "adapter", device="cpu").predict(list(shapes))] == expected
    v010 = Predictor.from_path(FIXTURES / "run_pcsa", device="cpu").predict(list(shapes[:2]), top_k=10)
    assert all(sorted(n for n, _ in p.top_k) == sorted(f"class {i}" for i in range(10)) for p in v010)
    alone = shutil.copytree(old / "adapter", tmp_path / "alone")
    with pytest.raises(CheckpointError, match=r"alone records no test-time preprocessing \(no inference.json"):
        Predictor.from_path(alone)


def test_each_bad_file_is_one_line_and_the_others_are_classified(run, evaluation, tmp_path, capsys):
    shapes = evaluation[2]
    write_ply(tmp_path / "good.ply", shapes[0], text=False)
    trimesh.creation.box(extents=(1, 2, 3)).export(tmp_path / "box.obj")  # a mesh: surface samples
    (tmp_path / "empty.ply").write_bytes(b"")
    (tmp_path / "garbage.pcd").write_bytes(bytes(range(256)) * 2)
    nan = shapes[1].copy()
    nan[5] = np.nan
    np.savetxt(tmp_path / "nan.txt", nan)
    np.save(tmp_path / "ten.npy", shapes[2][:10])
    (tmp_path / "facets.stl").write_text("solid nothing\nendsolid nothing\n")
    (tmp_path / "cloud.las").write_bytes(b"LASF")
    bad = {"empty.ply": "is empty", "garbage.pcd": "is not a readable PCD file",
           "nan.txt": "1 of 1024 points have NaN", "ten.npy": "holds 10 points, fewer than the 1024 the model needs",
           "facets.stl": "holds no facets", "cloud.las": "unknown point-cloud file type '.las'; supported: .npy"}
    order = ["empty.ply", "good.ply", "garbage.pcd", "nan.txt", "box.obj", "ten.npy", "facets.stl", "cloud.las"]
    code, out, err = run_cli_here(["predict", run, *[tmp_path / n for n in order], "--points", "2048", "--top-k", "2",
                                   "--device", "cpu"], capsys)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == len(bad)
    for line, name in zip(lines, [n for n in order if n in bad]):
        assert line.startswith(f"pointgst predict: error: {tmp_path / name}") and bad[name] in line, line
    table = out.strip().splitlines()
    assert table[0].split() == ["path", "class", "top", "classes"] and len(table) == 3
    for line, name in zip(table[1:], ["good.ply", "box.obj"]):
        path, label, *top = line.split()
        assert path == str(tmp_path / name) and label in MODELNET10_CLASSES and top[0] == label
        assert len(top) == 4 and all(re.fullmatch(r"\d{1,3}\.\d%", v) for v in top[1::2])

    code, out, err = run_cli_here(["predict", run, *[tmp_path / n for n in bad], "--device", "cpu"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == len(bad) + 1 and "none of the 6 inputs could be classified" in err


def test_json_and_csv_outputs_parse_and_hold_the_class_names(run, evaluation, tmp_path, capsys):
    stored, _, shapes = evaluation
    for i in range(3):
        write_off(tmp_path / f"s{i}.off", shapes[i])
    expected = [MODELNET10_CLASSES[i] for i in stored[:3].argmax(1).tolist()]
    code, out, _ = run_cli_here(["predict", run, tmp_path, "--format", "csv", "--top-k", "3", "--device", "cpu"],
                                capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["path"], r["rank"]) for r in rows] == [(str(tmp_path / f"s{i}.off"), str(k)) for i in range(3)
                                                      for k in (1, 2, 3)]
    assert [r["class"] for r in rows if r["rank"] == "1"] == expected
    assert all(r["class"] in MODELNET10_CLASSES for r in rows)
    for i in range(3):
        probabilities = [float(r["probability"]) for r in rows[3 * i: 3 * i + 3]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    code, out, _ = run_cli_here(["predict", run, tmp_path, "--format", "json", "--top-k", "3", "--device", "cpu"],
                                capsys)
    parsed = json.loads(out)
    assert [p["class"] for p in parsed] == expected
    assert [[t["class"] for t in p["top_k"]] for p in parsed] == [[r["class"] for r in rows[3 * i: 3 * i + 3]]
                                                                  for i in range(3)]


def test_voting_is_seeded_and_averages_augmented_passes(run, evaluation):
    shapes = list(evaluation[2][:2])
    predictor = Predictor.from_path(run, device="cpu")
    voted = [p.top_k for p in predictor.predict(shapes, vote=2, top_k=10)]
    assert voted == [p.top_k for p in predictor.predict(shapes, vote=2, top_k=10)]  # the same draws
    plain = [p.top_k for p in predictor.predict(shapes, top_k=10)]
    assert all(dict(v) != pytest.approx(dict(p), abs=1e-4) for v, p in zip(voted, plain))  # augmented views


def _recipe(**data) -> Recipe:
    settings = demo_recipe().to_dict()
    settings["data"].update(data)
    return Recipe.from_dict(settings)


def test_preprocessing_reproduces_each_datasets_test_clouds(tmp_path):
    rng = np.random.default_rng(5)
    # the ModelNet text tree: the first data.num_points rows, then pc_normalize
    (tmp_path / "tree" / "chair").mkdir(parents=True)
    (tmp_path / "tree" / "modelnet10_shape_names.txt").write_text("chair\n")
    (tmp_path / "tree" / "modelnet10_test.txt").write_text("chair_0001\n")
    rows = np.concatenate([rng.normal(3, 2, size=(1500, 3)), rng.normal(size=(1500, 3))], axis=1)
    np.savetxt(tmp_path / "tree" / "chair" / "chair_0001.txt", rows, delimiter=",", fmt="%.6f")
    tree = Preprocessing.from_recipe(_recipe(format="normal_resampled", num_points=1200, root=str(tmp_path / "tree")))
    assert (tree.first_rows, tree.normalize, tree.swap_yz, tree.resample_to) == (1200, True, False, None)
    expected = ModelNetNormalResampled(tmp_path / "tree", "test", classes="modelnet10", num_points=1200)[0][0]
    assert torch.equal(tree.apply(read_cloud(tmp_path / "tree" / "chair" / "chair_0001.txt")), expected)
    # a folder of your own: clouds as stored, resampled to data.num_points with the run's seed
    (tmp_path / "own" / "test" / "mug").mkdir(parents=True)
    np.save(tmp_path / "own" / "test" / "mug" / "a.npy", rng.normal(size=(1300, 3)).astype(np.float32))
    own = Preprocessing.from_recipe(_recipe(dataset="folder", format=None, num_classes=1, num_points=1100,
                                            root=str(tmp_path / "own")))
    assert (own.first_rows, own.normalize, own.resample_to, own.min_points) == (None, False, 1100, 1)
    expected = PointCloudFolder(tmp_path / "own", "test", num_points=1100, seed=own.seed)[0][0]
    assert torch.equal(own.apply(read_cloud(tmp_path / "own" / "test" / "mug" / "a.npy")), expected)
    # the npz pack with axis_order official: y and z swapped after the normalisation the pack's clouds carry
    pack = Preprocessing.from_recipe(_recipe(axis_order="official"))
    assert (pack.normalize, pack.swap_yz, pack.first_rows) == (True, True, None)
    stored = ModelNetPack(sample_data_folder(), "test", classes="modelnet10")[3][0].numpy()
    official = ModelNetPack(sample_data_folder(), "test", classes="modelnet10", axis_order="official")[3][0]
    torch.testing.assert_close(pack.apply(stored), official, rtol=0, atol=1e-5)
    assert not torch.allclose(pack.apply(stored), torch.from_numpy(stored), atol=1e-2)
