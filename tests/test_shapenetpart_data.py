"""Tests for the ShapeNetPart readers (the two real text layouts in the shared samples, a PointNet hdf5_data layout
written here) and for the procedural part-labelled dataset generator."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pointgst.data import DatasetError, DatasetNotFoundError
from pointgst.data.procedural_parts import write_procedural_shapenetpart
from pointgst.data.shapenetpart import (
    NUM_CATEGORIES,
    NUM_PARTS,
    PART_TO_CATEGORY,
    SHAPENETPART_PART_OFFSETS,
    SHAPENETPART_SYNSETS,
    ShapeNetPart,
    category_index,
    category_part_ids,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = SHARED_DATA / "shapenetpart_samples"
NORMAL = SAMPLES / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
V0 = SAMPLES / "shapenetcore_partanno_segmentation_benchmark_v0"
needs_shared = pytest.mark.skipif(not SAMPLES.is_dir(),
                                  reason=f"shared data folder {SAMPLES} is absent (real-data tests need it)")

# the standard table, written out independently of the module: (name, synset, first global part id, parts)
TABLE = [("Airplane", "02691156", 0, 4), ("Bag", "02773838", 4, 2), ("Cap", "02954340", 6, 2),
         ("Car", "02958343", 8, 4), ("Chair", "03001627", 12, 4), ("Earphone", "03261776", 16, 3),
         ("Guitar", "03467517", 19, 3), ("Knife", "03624134", 22, 2), ("Lamp", "03636649", 24, 4),
         ("Laptop", "03642806", 28, 2), ("Motorbike", "03790512", 30, 6), ("Mug", "03797390", 36, 2),
         ("Pistol", "03948459", 38, 3), ("Rocket", "04099429", 41, 3), ("Skateboard", "04225987", 44, 3),
         ("Table", "04379243", 47, 3)]


def official_pc_normalize(pc: np.ndarray) -> np.ndarray:
    """Verbatim logic of the official ``pc_normalize``."""
    pc = pc - np.mean(pc, axis=0)
    return pc / np.max(np.sqrt(np.sum(pc**2, axis=1)))


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ============================================================================ the category table

def test_category_table():
    assert (NUM_CATEGORIES, NUM_PARTS) == (16, 50)
    for index, (name, synset, first, count) in enumerate(TABLE):
        ids = list(range(first, first + count))
        assert category_part_ids(index) == category_part_ids(name.lower()) == category_part_ids(synset) == ids
        assert SHAPENETPART_PART_OFFSETS[index] == first and SHAPENETPART_SYNSETS[index] == synset
        assert all(PART_TO_CATEGORY[i] == index for i in ids)
    with pytest.raises(DatasetError, match="unknown ShapeNetPart category 'Sofa'"):
        category_index("Sofa")
    with pytest.raises(DatasetError):
        category_index(16)


# ============================================================================ real samples, normal layout

@needs_shared
def test_normal_layout_reads_the_listed_shapes():
    with pytest.warns(UserWarning, match="12134 of the 12137 shapes listed in shuffled_train_file_list.json"):
        train = ShapeNetPart(NORMAL, "train")
    assert train.layout == "normal" and len(train) == 3
    assert train.shape_ids == ["04225987/1ad8d7573dc57ebc247a956ed3779e34",
                               "04225987/1c8d5e05c3faa05861be5ced44bc18ac", "04379243/1a2abbc9712e2fffc3bd24f986301745"]
    assert train.categories.tolist() == train.labels.tolist() == [14, 14, 15]
    assert train.class_names[14] == "Skateboard" and train.num_classes == 16 and train.num_parts == 50
    for index, shape_id in enumerate(train.shape_ids):
        raw = np.loadtxt(NORMAL / f"{shape_id}.txt")
        points, parts = train.cloud(index)
        assert points.shape == (len(raw), 3) and points.dtype == torch.float32
        np.testing.assert_allclose(points.numpy(), official_pc_normalize(raw[:, :3]), atol=1e-5)
        assert parts.tolist() == raw[:, -1].astype(int).tolist()
    assert [sorted(set(train.cloud(i)[1].tolist())) for i in range(3)] == [[45], [45], [47, 48, 49]]
    with pytest.warns(UserWarning, match="2873 of the 2874"):
        test = ShapeNetPart(NORMAL, "test")
    assert test.shape_ids == ["04379243/1a00aa6b75362cc5b324368d54a7416f"]
    assert sorted(set(test.cloud(0)[1].tolist())) == [47, 48]
    with pytest.warns(UserWarning, match="14004 of the 14007 shapes listed in shuffled_train_file_list.json, "
                                         "shuffled_val_file_list.json are absent .*; using the 3 present"):
        assert len(ShapeNetPart(NORMAL, "trainval")) == 3  # val lists none of the local shapes


@needs_shared
def test_normal_layout_split_without_local_shapes_fails_in_one_line():
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ShapeNetPart(NORMAL, "val")
    assert "none of the 1870 shapes listed in shuffled_val_file_list.json" in one_line_error(excinfo)


# ============================================================================ real samples, v0 layout

@needs_shared
def test_v0_layout_maps_category_part_numbers_to_global_ids():
    data = ShapeNetPart(V0, "train")  # the sample's own 16-entry list
    assert data.layout == "v0" and data.categories.tolist() == list(range(16))
    for index, shape_id in enumerate(data.shape_ids):
        synset, name = shape_id.split("/")
        seg = np.loadtxt(V0 / synset / "points_label" / f"{name}.seg").astype(int)
        xyz = np.loadtxt(V0 / synset / "points" / f"{name}.pts")
        points, parts = data.cloud(index)
        assert len(points) == len(xyz) == len(seg) and 2209 <= len(points) <= 2834
        assert parts.tolist() == (TABLE[index][2] + seg - 1).tolist()
        assert set(parts.tolist()) <= set(category_part_ids(index))
    all_parts = torch.cat([data.cloud(i)[1] for i in range(len(data))])
    assert set(all_parts.tolist()) == set(range(NUM_PARTS)) - {15, 26}  # the chair has no arm, the lamp no canopy


@needs_shared
def test_v0_layout_with_the_official_split_lists():
    official = NORMAL / "train_test_split"
    with pytest.warns(UserWarning):
        test = ShapeNetPart(V0, "test", split_dir=official)
    assert test.shape_ids == ["03261776/1757fe64e76a9630fc176230c2f2d294", "04099429/15474cf9caa757a528eba1f0b7744e9",
                              "04379243/1011e1c9812b84d2a9ed7bb5b55809f8"]
    assert test.categories.tolist() == [5, 13, 15]
    with pytest.warns(UserWarning):
        assert len(ShapeNetPart(V0, "train", split_dir=official)) == 13
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ShapeNetPart(V0, "test")  # the sample has no test list of its own
    assert "pass split_dir=" in one_line_error(excinfo)


# ============================================================================ hdf5_data layout (written here)

def write_hdf5(root: Path, files: dict[str, int], *, lists: bool = True, seed: int = 0) -> dict[str, dict]:
    """PointNet's hdf5_data: ply_data_<split><n>.h5 (data (M, 2048, 3), label (M, 1) uint8, pid (M, 2048) uint8)."""
    rng, written = np.random.default_rng(seed), {}
    root.mkdir(parents=True, exist_ok=True)
    for name, m in files.items():
        label = rng.integers(0, 16, size=(m, 1)).astype(np.uint8)
        pid = np.stack([rng.choice(category_part_ids(int(c)), 2048) for c in label[:, 0]]).astype(np.uint8)
        data = rng.normal(size=(m, 2048, 3)).astype(np.float32)
        with h5py.File(root / name, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
            f.create_dataset("pid", data=pid)
        written[name] = {"data": data, "label": label[:, 0], "pid": pid}
    if lists:
        for split in ("train", "val", "test"):
            names = [n for n in files if n.startswith(f"ply_data_{split}")]
            (root / f"{split}_hdf5_file_list.txt").write_text("".join(f"{n}\n" for n in names))
    return written


def test_hdf5_layout_reads_parts_and_categories(tmp_path):
    written = write_hdf5(tmp_path, {"ply_data_train0.h5": 5, "ply_data_train1.h5": 3, "ply_data_val0.h5": 2,
                                    "ply_data_test0.h5": 4})
    data = ShapeNetPart(tmp_path, "trainval")
    order = ["ply_data_train0.h5", "ply_data_train1.h5", "ply_data_val0.h5"]
    assert data.layout == "hdf5" and len(data) == 10 and data.shape_ids is None
    assert data.categories.tolist() == np.concatenate([written[n]["label"] for n in order]).tolist()
    clouds = np.concatenate([written[n]["data"] for n in order])
    pids = np.concatenate([written[n]["pid"] for n in order])
    for index in range(len(data)):
        points, parts = data.cloud(index)
        np.testing.assert_allclose(points.numpy(), official_pc_normalize(clouds[index]), atol=1e-5)
        assert parts.tolist() == pids[index].tolist()
    assert len(ShapeNetPart(tmp_path, "test")) == 4
    raw = ShapeNetPart(tmp_path, "train", normalize=False)
    np.testing.assert_array_equal(raw.cloud(6)[0].numpy(), written["ply_data_train1.h5"]["data"][1])


def test_hdf5_layout_without_file_lists_uses_numbered_files(tmp_path):
    written = write_hdf5(tmp_path, {"ply_data_train10.h5": 2, "ply_data_train2.h5": 3}, lists=False)
    data = ShapeNetPart(tmp_path, "train")
    expected = np.concatenate([written["ply_data_train2.h5"]["label"], written["ply_data_train10.h5"]["label"]])
    assert data.categories.tolist() == expected.tolist()
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ShapeNetPart(tmp_path, "test")
    assert "neither test_hdf5_file_list.txt nor ply_data_test<n>.h5" in one_line_error(excinfo)


def test_hdf5_layout_rejects_parts_outside_the_category(tmp_path):
    write_hdf5(tmp_path, {"ply_data_train0.h5": 3})
    with h5py.File(tmp_path / "ply_data_train0.h5", "r+") as f:
        f["label"][1, 0] = 15  # Table
        pid = f["pid"][()]
        pid[1, :] = 48
        pid[1, 7] = 3  # an airplane part
        f["pid"][...] = pid
    with pytest.raises(DatasetError) as excinfo:
        ShapeNetPart(tmp_path, "train")
    assert "shape 1 of the split: part ids [3] lie outside the Table range 47..49" in one_line_error(excinfo)
    with pytest.raises(DatasetError, match="split_dir applies to the text layouts"):
        ShapeNetPart(tmp_path, "train", split_dir=tmp_path)


# ============================================================================ bad input

def test_bad_roots_and_options_fail_in_one_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ShapeNetPart(tmp_path / "missing", "train")
    assert "does not exist" in one_line_error(excinfo)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        ShapeNetPart(tmp_path, "train")
    message = one_line_error(excinfo)
    assert "cannot find ShapeNetPart data" in message and "synsetoffset2category.txt" in message
    assert "points_label" in message and "train_hdf5_file_list.txt" in message
    with pytest.raises(DatasetError, match="unknown ShapeNetPart split 'training'"):
        ShapeNetPart(tmp_path, "training")
    with pytest.raises(DatasetError, match="npoints must be a positive int"):
        ShapeNetPart(tmp_path, "train", npoints=0)


def test_nonstandard_category_file_and_bad_rows(tmp_path):
    root = write_procedural_shapenetpart(tmp_path / "p", shapes_per_category=2, points_per_shape=64,
                                         categories=["Mug"])
    text = (root / "synsetoffset2category.txt").read_text()
    (root / "synsetoffset2category.txt").write_text(text.replace("Mug\t03797390", "Cup\t03797390"))
    with pytest.raises(DatasetError) as excinfo:
        ShapeNetPart(root, "train")
    assert "line 'Cup 03797390' is not in the standard ShapeNetPart table" in one_line_error(excinfo)
    (root / "synsetoffset2category.txt").write_text(text)
    shape = next((root / "03797390").glob("*.txt"))
    shape.write_text(shape.read_text().replace(".000000\n", ".500000\n", 1))
    with pytest.raises(DatasetError) as excinfo:
        ShapeNetPart(root, "train")
    assert "part labels (last column) must be whole numbers" in one_line_error(excinfo)


# ============================================================================ the seeded resampling

@pytest.fixture(scope="module")
def procedural_root(tmp_path_factory) -> Path:
    return write_procedural_shapenetpart(tmp_path_factory.mktemp("procedural"), shapes_per_category=6,
                                         points_per_shape=300)


def test_resampling_is_seeded_by_seed_epoch_and_index(procedural_root):
    data = ShapeNetPart(procedural_root, "train", npoints=512)
    points, category, parts = data[3]
    assert points.shape == (512, 3) and points.dtype == torch.float32 and isinstance(category, int)
    assert parts.shape == (512,) and parts.dtype == torch.int64
    stored_points, stored_parts = data.cloud(3)
    match = (points[:, None, :] == stored_points[None]).all(-1)  # each drawn row is a stored row with its part
    assert match.any(1).all() and (stored_parts[match.float().argmax(1)] == parts).all()
    again = ShapeNetPart(procedural_root, "train", npoints=512)
    assert all(torch.equal(a, b) for a, b in zip(data[3][::2], again[3][::2]))
    assert torch.equal(data[3][0], points)
    data.set_epoch(1)
    epoch1 = data[3][0]
    assert not torch.equal(epoch1, points)
    data.set_epoch(0)
    assert torch.equal(data[3][0], points)
    assert not torch.equal(ShapeNetPart(procedural_root, "train", npoints=512, seed=1)[3][0], points)
    assert torch.equal(data[-1][0], data[len(data) - 1][0])
    with pytest.raises(IndexError):
        data[len(data)]


def test_stored_order_view_and_batches(procedural_root):
    data = ShapeNetPart(procedural_root, "test", npoints=128)
    stored = data.with_stored_order()
    points, category, parts = stored[0]
    assert points.shape == (300, 3) and torch.equal(points, data.cloud(0)[0]) and torch.equal(parts, data.cloud(0)[1])
    assert data.resample and data[0][0].shape == (128, 3)
    points, categories, parts = next(iter(DataLoader(data, batch_size=4)))
    assert points.shape == (4, 128, 3) and categories.shape == (4,) and parts.shape == (4, 128)


# ============================================================================ the procedural generator

def test_procedural_dataset_loads_with_every_part_in_every_shape(procedural_root):
    sizes = {split: len(ShapeNetPart(procedural_root, split)) for split in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 16 * 4, "val": 16 * 1, "test": 16 * 1, "trainval": 16 * 5}
    data = ShapeNetPart(procedural_root, "trainval")
    assert torch.bincount(data.categories, minlength=16).tolist() == [5] * 16
    for index in range(len(data)):
        category = int(data.categories[index])
        assert sorted(set(data.cloud(index)[1].tolist())) == category_part_ids(category)
        assert data.shape_ids[index].startswith(SHAPENETPART_SYNSETS[category])
    raw = np.loadtxt(next((procedural_root / "04379243").glob("*.txt")))
    assert raw.shape == (300, 7)
    np.testing.assert_allclose(np.linalg.norm(raw[:, 3:6], axis=1), 1.0, atol=1e-4)
    lists = json.loads((procedural_root / "train_test_split" / "shuffled_test_file_list.json").read_text())
    assert len(lists) == 16 and all(name.startswith("shape_data/") for name in lists)


def test_procedural_generator_is_deterministic(tmp_path, procedural_root):
    again = write_procedural_shapenetpart(tmp_path / "again", shapes_per_category=6, points_per_shape=300)
    subset = write_procedural_shapenetpart(tmp_path / "subset", shapes_per_category=6, points_per_shape=300,
                                           categories=["Table", 0])
    other = write_procedural_shapenetpart(tmp_path / "other", shapes_per_category=6, points_per_shape=300, seed=1,
                                          categories=["Table"])
    files = sorted(p.relative_to(procedural_root) for p in procedural_root.rglob("*.txt"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.txt"))
    assert all((procedural_root / f).read_bytes() == (again / f).read_bytes() for f in files)
    for path in (subset / "04379243").glob("*.txt"):
        assert path.read_bytes() == (procedural_root / "04379243" / path.name).read_bytes()
        assert path.read_bytes() != (other / "04379243" / path.name).read_bytes()
    assert sorted(p.name for p in subset.iterdir()) == ["02691156", "04379243", "synsetoffset2category.txt",
                                                        "train_test_split"]
    with pytest.raises(DatasetError, match="points_per_shape must be an int >= 32"):
        write_procedural_shapenetpart(tmp_path / "bad", points_per_shape=8)
