"""Tests for pointgst.data: datasets in the official formats (generated fixtures in the exact official layout,
plus the real ModelNet40 pack and the 39-shape PointNet++ sample), splits and few-shot episodes."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from pointgst.data import (
    MODELNET10_CLASSES,
    MODELNET40_CLASSES,
    SCANOBJECTNN_CLASSES,
    DatasetError,
    DatasetNotFoundError,
    EpisodeSubset,
    ModelNetDatCache,
    ModelNetNormalResampled,
    ModelNetPack,
    PointCloudFolder,
    ScanObjectNN,
    UnsafeDatasetError,
    build_dataset,
    convert_dat_to_npz,
    few_shot_episode,
    stratified_split,
    stratified_subset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PACK = SHARED_DATA / "modelnet40_1024"
MINI = SHARED_DATA / "modelnet40_normal_resampled_mini"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"shared data folder {SHARED_DATA} is absent (real-data tests need it)")


def official_pc_normalize(pc: np.ndarray) -> np.ndarray:
    """Verbatim logic of the official ``pc_normalize`` (ModelNetDataset.py)."""
    centroid = np.mean(pc, axis=0)
    pc = pc - centroid
    m = np.max(np.sqrt(np.sum(pc**2, axis=1)))
    return pc / m


def sorted_rows(points: torch.Tensor | np.ndarray) -> np.ndarray:
    array = np.asarray(points)
    return array[np.lexsort(array.T[::-1])]


# ============================================================================ ScanObjectNN (generated h5 files)

SCAN_FILES = {  # datasets.md §2.1, written out independently of the loader
    "obj_bg": ("main_split/training_objectdataset.h5", "main_split/test_objectdataset.h5"),
    "obj_only": ("main_split_nobg/training_objectdataset.h5", "main_split_nobg/test_objectdataset.h5"),
    "pb_t50_rs": ("main_split/training_objectdataset_augmentedrot_scale75.h5",
                  "main_split/test_objectdataset_augmentedrot_scale75.h5"),
}


def write_scan_h5(path: Path, n: int, seed: int, label_dtype=np.int8, *, mask: bool = True, **override) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"data": rng.normal(size=(n, 2048, 3)).astype(np.float32),
              "label": rng.integers(0, 15, size=n).astype(label_dtype)}
    if mask:
        arrays["mask"] = rng.integers(-1, 2, size=(n, 2048)).astype(np.int64)
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if value is not None:
                f.create_dataset(key, data=value)
    return arrays


@pytest.fixture(scope="module")
def scan_roots(tmp_path_factory) -> dict:
    """Both official root layouts, every variant and split; returns the written arrays by (layout, variant, split)."""
    base = tmp_path_factory.mktemp("scanobjectnn")
    written = {}
    for layout, prefix, label_dtype in (("pointmae", "", np.int8), ("pointgpt", "h5_files/", np.uint8)):
        for v, variant in enumerate(SCAN_FILES):
            for s, (split, name) in enumerate(zip(("train", "test"), SCAN_FILES[variant])):
                path = base / layout / f"{prefix}{name}"
                written[layout, variant, split] = write_scan_h5(path, 4 + s, seed=10 * v + s, label_dtype=label_dtype)
    return {"base": base, "arrays": written}


@pytest.mark.parametrize("layout", ["pointmae", "pointgpt"])
@pytest.mark.parametrize("variant", list(SCAN_FILES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_scanobjectnn_reads_both_layouts_and_casts(scan_roots, layout, variant, split):
    ds = ScanObjectNN(scan_roots["base"] / layout, variant, split)
    arrays = scan_roots["arrays"][layout, variant, split]
    assert len(ds) == len(arrays["label"])
    assert ds.class_names == SCANOBJECTNN_CLASSES and ds.num_classes == 15
    assert ds.name == f"scanobjectnn-{variant}" and ds.split == split
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == arrays["label"].astype(np.int64).tolist()
    points, label = ds[1]
    assert points.dtype == torch.float32 and points.shape == (2048, 3)
    assert type(label) is int and label == int(arrays["label"][1])
    if split == "test":  # stored order
        assert np.array_equal(points.numpy(), arrays["data"][1])
    else:  # same points, shuffled order
        assert np.array_equal(sorted_rows(points), sorted_rows(arrays["data"][1]))
        assert not np.array_equal(points.numpy(), arrays["data"][1])


def test_scanobjectnn_variant_names_are_forgiving(scan_roots):
    root = scan_roots["base"] / "pointmae"
    assert ScanObjectNN(root, "PB_T50_RS", "test").variant == "pb_t50_rs"
    assert ScanObjectNN(root, "hardest", "test").variant == "pb_t50_rs"
    assert ScanObjectNN(root, "OBJ-ONLY", "test").variant == "obj_only"


def test_scanobjectnn_train_shuffle_is_seeded_per_epoch(scan_roots):
    root = scan_roots["base"] / "pointmae"
    a, b = ScanObjectNN(root, "obj_bg", "train"), ScanObjectNN(root, "obj_bg", "train")
    assert torch.equal(a[0][0], b[0][0])  # same seed, same epoch -> same order, independent of read order
    first = a[0][0]
    a.set_epoch(1)
    assert not torch.equal(a[0][0], first) and np.array_equal(sorted_rows(a[0][0]), sorted_rows(first))
    a.set_epoch(0)
    assert torch.equal(a[0][0], first)
    other_seed = ScanObjectNN(root, "obj_bg", "train", seed=1)
    assert not torch.equal(other_seed[0][0], first)
    stored = ScanObjectNN(root, "obj_bg", "train", shuffle_points=False)
    assert np.array_equal(stored[0][0].numpy(), scan_roots["arrays"]["pointmae", "obj_bg", "train"]["data"][0])
    shuffled_test = ScanObjectNN(root, "obj_bg", "test", shuffle_points=True)
    stored_test = scan_roots["arrays"]["pointmae", "obj_bg", "test"]["data"][0]
    assert not np.array_equal(shuffled_test[0][0].numpy(), stored_test)


def test_scanobjectnn_items_batch_and_do_not_alias_storage(scan_roots):
    ds = ScanObjectNN(scan_roots["base"] / "pointgpt", "obj_only", "test")
    points, labels = next(iter(DataLoader(ds, batch_size=3)))
    assert points.shape == (3, 2048, 3) and points.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == ds.labels[:3].tolist()
    item = ds[0][0]
    item += 100.0  # an in-place augmentation must not corrupt the dataset
    assert not torch.equal(ds[0][0], item)
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0]) and torch.equal(ds[torch.tensor(2)][0], ds[2][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_scanobjectnn_missing_root_and_files(tmp_path, scan_roots):
    with pytest.raises(FileNotFoundError, match="main_split"):
        ScanObjectNN(tmp_path / "nowhere", "obj_bg", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        ScanObjectNN(tmp_path / "empty", "pb_t50_rs", "test")
    message = str(info.value)
    assert "test_objectdataset_augmentedrot_scale75.h5" in message and "h5_files" in message
    with pytest.raises(DatasetError, match="unknown ScanObjectNN variant 'obj'.*obj_bg, obj_only, pb_t50_rs"):
        ScanObjectNN(scan_roots["base"] / "pointmae", "obj", "train")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        ScanObjectNN(scan_roots["base"] / "pointmae", "obj_bg", "val")


@pytest.mark.parametrize("override, message", [
    ({"label": None}, r"missing h5 dataset\(s\) \['label'\]"),
    ({"data": np.zeros((4, 2048, 2), np.float32)}, r"shape \(M, N, >=3\)"),
    ({"data": np.full((4, 2048, 3), np.nan, np.float32)}, "NaN"),
    ({"label": np.array([0, 1, 15, 2], np.int8)}, r"labels must lie in \[0, 15\)"),
    ({"label": np.array([0.5, 1, 2, 3])}, "labels must be integers"),
    ({"label": np.array([0, 1, 2], np.int8)}, "4 clouds but 3 labels"),
])
def test_scanobjectnn_malformed_files_name_the_file(tmp_path, override, message):
    path = tmp_path / "main_split" / "test_objectdataset.h5"
    write_scan_h5(path, 4, seed=0, **override)
    with pytest.raises(DatasetError, match=message) as info:
        ScanObjectNN(tmp_path, "obj_bg", "test")
    assert str(path) in str(info.value)


def test_scanobjectnn_not_an_h5_file(tmp_path):
    path = tmp_path / "main_split_nobg" / "training_objectdataset.h5"
    path.parent.mkdir()
    path.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file") as info:
        ScanObjectNN(tmp_path, "obj_only", "train")
    assert str(path) in str(info.value)


def test_importing_the_data_package_does_not_import_h5py_or_scipy():
    code = "import sys, pointgst.data; assert 'h5py' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ============================================================================ ModelNet40 pack (real data)

COUNTS = {  # datasets.md §1.1 table: label -> (class, train, test)
    0: ("airplane", 626, 100), 1: ("bathtub", 106, 50), 8: ("chair", 889, 100), 13: ("door", 109, 20),
    23: ("night_stand", 200, 86), 35: ("toilet", 344, 100), 39: ("xbox", 103, 20),
}


@pytest.fixture(scope="module")
def real_pack() -> dict:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (real-data tests need it)")
    return {(classes, split): ModelNetPack(PACK, split, classes=classes)
            for classes in ("modelnet40", "modelnet10") for split in ("train", "test")}


@needs_shared
def test_real_pack_modelnet40(real_pack):
    train, test = real_pack["modelnet40", "train"], real_pack["modelnet40", "test"]
    assert (len(train), len(test)) == (9843, 2468)
    assert train.class_names == MODELNET40_CLASSES and train.num_classes == 40 and train.name == "modelnet40"
    assert train.points.shape == (9843, 1024, 3) and train.points.dtype == torch.float32
    for label, (name, n_train, n_test) in COUNTS.items():
        assert train.class_names[label] == name
        assert (int((train.labels == label).sum()), int((test.labels == label).sum())) == (n_train, n_test)
    for ds in (train, test):
        assert all(sid.rpartition("_")[0] == ds.class_names[int(label)] for sid, label in zip(ds.shape_ids, ds.labels))
    official = set((MINI / "modelnet40_train.txt").read_text().split())
    assert set(train.shape_ids) == official
    assert train.shuffle_points and not test.shuffle_points
    points, label = test[0]
    assert torch.equal(points, test.points[0]) and label == 0
    assert abs(float(points.norm(dim=1).max()) - 1.0) < 1e-6


@needs_shared
def test_real_pack_modelnet10(real_pack):
    train, test = real_pack["modelnet10", "train"], real_pack["modelnet10", "test"]
    assert (len(train), len(test)) == (3991, 908)
    assert train.class_names == MODELNET10_CLASSES == (MINI / "modelnet10_shape_names.txt").read_text().split()
    assert train.num_classes == 10 and train.name == "modelnet10"
    for label10, (name, n_train, n_test) in {0: ("bathtub", 106, 50), 6: ("night_stand", 200, 86),
                                             9: ("toilet", 344, 100), 2: ("chair", 889, 100)}.items():
        assert train.class_names[label10] == name
        assert (int((train.labels == label10).sum()), int((test.labels == label10).sum())) == (n_train, n_test)
    for ds, listed in ((train, "modelnet10_train.txt"), (test, "modelnet10_test.txt")):
        assert set(ds.shape_ids) == set((MINI / listed).read_text().split())
        assert all(sid.rpartition("_")[0] == ds.class_names[int(label)] for sid, label in zip(ds.shape_ids, ds.labels))
    forty = real_pack["modelnet40", "test"]
    row = forty.shape_ids.index(test.shape_ids[5])
    assert torch.equal(test.points[5], forty.points[row])


@needs_shared
def test_real_pack_stratified_validation_split(real_pack):
    labels = real_pack["modelnet40", "train"].labels
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    assert len(train_idx) + len(val_idx) == 9843
    val_counts = torch.bincount(labels[val_idx], minlength=40)
    assert val_counts[0] == 63 and val_counts[6] == 6 and val_counts[8] == 89  # round(0.1 * 626 / 64 / 889)


# ============================================================================ ModelNet pack (generated)

def write_pack(root: Path, split: str, labels, *, names=None, points=None, shape_names=MODELNET40_CLASSES, **extra):
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    if points is None:
        points = np.random.default_rng(len(labels)).normal(size=(len(labels), 16, 3)).astype(np.float32)
    if names is None:
        names = np.array([f"{shape_names[label]}_{i:04d}" for i, label in enumerate(labels)])
    arrays = {"points": points, "labels": labels, "names": names, **extra}
    np.savez(root / f"{split}.npz", **{k: v for k, v in arrays.items() if v is not None})
    (root / "shape_names.txt").write_text("".join(f"{c}\n" for c in shape_names))
    return arrays


def test_pack_axis_order_and_modelnet10_remap(tmp_path):
    labels = [0, 1, 2, 8, 35, 23, 1]  # airplane, bathtub, bed, chair, toilet, night_stand, bathtub
    arrays = write_pack(tmp_path, "test", labels)
    stored = ModelNetPack(tmp_path, "test")
    official = ModelNetPack(tmp_path, "test", axis_order="official")
    assert np.array_equal(stored.points.numpy(), arrays["points"])
    assert np.array_equal(official.points.numpy(), arrays["points"][..., [0, 2, 1]])
    assert official[3][0].tolist() == arrays["points"][3][:, [0, 2, 1]].tolist()
    ten = ModelNetPack(tmp_path, "test", classes="modelnet10")
    assert ten.labels.tolist() == [0, 1, 2, 9, 6, 0]
    assert ten.shape_ids == [str(n) for n in arrays["names"][[1, 2, 3, 4, 5, 6]]]
    assert np.array_equal(ten.points.numpy(), arrays["points"][[1, 2, 3, 4, 5, 6]])
    with pytest.raises(DatasetError, match="unknown axis_order 'zyx'"):
        ModelNetPack(tmp_path, "test", axis_order="zyx")
    with pytest.raises(DatasetError, match="unknown ModelNet class set 'modelnet20'"):
        ModelNetPack(tmp_path, "test", classes="modelnet20")


def test_pack_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.npz"):
        ModelNetPack(tmp_path / "nowhere", "train")
    write_pack(tmp_path, "test", [0, 1])
    with pytest.raises(DatasetNotFoundError, match=r"train.npz does not exist \(expected layout"):
        ModelNetPack(tmp_path, "train")
    (tmp_path / "shape_names.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="shape_names.txt"):
        ModelNetPack(tmp_path, "test")


@pytest.mark.parametrize("change, message", [
    ({"labels": None}, r"missing array\(s\) \['labels'\]"),
    ({"points": np.zeros((2, 16), np.float32)}, r"shape \(M, N, >=3\)"),
    ({"points": np.full((2, 16, 3), np.inf, np.float32)}, "NaN or infinite"),
    ({"labels": [0, 40], "names": np.array(["airplane_0001", "airplane_0002"])}, r"labels must lie in \[0, 40\)"),
    ({"names": np.array(["a_1", "b_2", "c_3"])}, "same length"),
    ({"names": np.array([{"a": 1}, None], dtype=object)}, "not a readable .npz file of plain arrays"),
])
def test_pack_malformed_names_the_file(tmp_path, change, message):
    labels = change.pop("labels", [0, 1])
    kwargs = {"names": change.pop("names", None), "points": change.pop("points", None)}
    if labels is None:
        np.savez(tmp_path / "test.npz", points=np.zeros((2, 16, 3), np.float32))
        (tmp_path / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    else:
        write_pack(tmp_path, "test", labels, **kwargs)
    with pytest.raises(DatasetError, match=message) as info:
        ModelNetPack(tmp_path, "test")
    assert str(tmp_path / "test.npz") in str(info.value)


def test_pack_corrupt_zip(tmp_path):
    write_pack(tmp_path, "test", [0])
    (tmp_path / "test.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DatasetError, match="test.npz"):
        ModelNetPack(tmp_path, "test")


# ============================================================================ PointNet++ text tree

@needs_shared
def test_real_normal_resampled_mini_tree():
    test = ModelNetNormalResampled(MINI, "test", skip_missing=True)
    train = ModelNetNormalResampled(MINI, "train", skip_missing=True)
    assert (len(train), len(test)) == (19, 20)
    assert test.class_names == MODELNET40_CLASSES and test.shape_ids[0] == "airplane_0703"
    assert train.shape_ids[0] == "bathtub_0030" and train.labels[0] == 1
    assert test.labels.tolist() == [MODELNET40_CLASSES.index(s.rpartition("_")[0]) for s in test.shape_ids]
    raw = np.loadtxt(MINI / "airplane" / "airplane_0703.txt", delimiter=",").astype(np.float32)
    points, label = test[0]
    assert label == 0 and points.shape == (10000, 3) and points.dtype == torch.float32
    assert np.array_equal(points.numpy(), official_pc_normalize(raw[:, :3]))
    first = ModelNetNormalResampled(MINI, "test", num_points=1024, skip_missing=True)[0][0]
    assert np.array_equal(first.numpy(), official_pc_normalize(raw[:1024, :3]))  # truncate, then normalise
    shuffled = train[0][0]
    assert not torch.equal(shuffled, ModelNetNormalResampled(MINI, "train", skip_missing=True,
                                                             shuffle_points=False)[0][0])
    ten_test = ModelNetNormalResampled(MINI, "test", classes="modelnet10", skip_missing=True)
    ten_train = ModelNetNormalResampled(MINI, "train", classes="modelnet10", skip_missing=True)
    assert ten_test.shape_ids == ["bed_0601", "chair_0962", "desk_0258", "dresser_0240", "monitor_0468", "toilet_0409"]
    assert ten_test.labels.tolist() == [1, 2, 3, 4, 5, 9] and ten_test.class_names == MODELNET10_CLASSES
    assert ten_train.shape_ids == ["bathtub_0030", "night_stand_0080", "sofa_0034", "table_0053"]


@needs_shared
def test_real_normal_resampled_missing_files_are_an_error():
    with pytest.raises(DatasetNotFoundError) as info:
        ModelNetNormalResampled(MINI, "train")
    message = str(info.value)
    assert "9824 of 9843 shape files" in message and "skip_missing=True" in message
    assert str(MINI / "airplane" / "airplane_0001.txt") in message


def write_text_tree(root: Path, shapes: dict[str, np.ndarray], split="train", classes=("cone", "cup")):
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("".join(f"{c}\n" for c in classes))
    (root / f"modelnet40_{split}.txt").write_text("".join(f"{s}\n" for s in shapes))
    for shape_id, rows in shapes.items():
        path = root / shape_id.rpartition("_")[0] / f"{shape_id}.txt"
        path.parent.mkdir(exist_ok=True)
        if isinstance(rows, str):
            path.write_text(rows)
        else:
            path.write_text("".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in rows))


def test_generated_text_tree(tmp_path):
    rng = np.random.default_rng(0)
    shapes = {"cup_0001": rng.normal(size=(50, 6)) * 3 + 1, "cone_0007": rng.normal(size=(40, 6))}
    write_text_tree(tmp_path, shapes)
    ds = ModelNetNormalResampled(tmp_path, "train", shuffle_points=False)
    assert ds.labels.tolist() == [1, 0] and ds.class_names == ["cone", "cup"]
    points, label = ds[0]
    expected = official_pc_normalize(np.loadtxt(tmp_path / "cup" / "cup_0001.txt", delimiter=",",
                                                dtype=np.float32)[:, :3])
    assert label == 1 and np.array_equal(points.numpy(), expected)
    with pytest.raises(DatasetError, match="num_points must be a positive int"):
        ModelNetNormalResampled(tmp_path, "train", num_points=0)


@pytest.mark.parametrize("content, message", [
    ("1,2,3,0,0,1\n1,2,x,0,0,1\n", "non-numeric"),
    ("1,2,3,0,0,1\n1,2,3\n", "different numbers of columns"),
    ("1,2\n3,4\n", r"shape \(N, >=3\)"),
    ("1,2,nan,0,0,1\n", "NaN"),
    ("", "holds no points"),
])
def test_generated_text_tree_malformed_shape_files(tmp_path, content, message):
    write_text_tree(tmp_path, {"cup_0001": content})
    ds = ModelNetNormalResampled(tmp_path, "train")
    with pytest.raises(DatasetError, match=message) as info:
        ds[0]
    assert str(tmp_path / "cup" / "cup_0001.txt") in str(info.value)


def test_generated_text_tree_bad_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="modelnet40_shape_names.txt"):
        ModelNetNormalResampled(tmp_path, "train")
    write_text_tree(tmp_path, {"vase_0001": np.zeros((3, 6))})
    with pytest.raises(DatasetError, match="names class 'vase'") as info:
        ModelNetNormalResampled(tmp_path, "train")
    assert "modelnet40_train.txt" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="modelnet40_test.txt"):
        ModelNetNormalResampled(tmp_path, "test")


# ============================================================================ official .dat caches

def write_dat(path: Path, n: int = 5, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    clouds = [(rng.normal(size=(8192, 6)) * 2 + 0.5).astype(np.float32) for _ in range(n)]
    labels = [np.array([rng.integers(0, 40)], dtype=np.int32) for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump([clouds, labels], f)
    return clouds, labels


@pytest.fixture(scope="module")
def dat_file(tmp_path_factory) -> tuple[Path, list, list]:
    path = tmp_path_factory.mktemp("dat") / "modelnet40_train_8192pts_fps.dat"
    return (path, *write_dat(path))


def test_dat_requires_opt_in(dat_file):
    path = dat_file[0]
    with pytest.raises(UnsafeDatasetError) as info:
        ModelNetDatCache(path)
    message = str(info.value)
    assert str(path) in message and "pickle" in message and "arbitrary code" in message
    assert "allow_pickle=True" in message and "convert_dat_to_npz" in message
    with pytest.raises(UnsafeDatasetError):
        convert_dat_to_npz(path, path.parent / "out" / "train.npz", allow_pickle=False)
    with pytest.raises(FileNotFoundError, match="8192pts_fps.dat"):
        ModelNetDatCache(path.parent / "modelnet40_test_8192pts_fps.dat", allow_pickle=True)


def test_dat_loads_with_opt_in(dat_file):
    path, clouds, labels = dat_file
    with pytest.warns(UserWarning, match="unpickling"):
        ds = ModelNetDatCache(path, allow_pickle=True, shuffle_points=False)
    assert ds.split == "train" and ds.name == "modelnet40" and ds.class_names == MODELNET40_CLASSES
    assert len(ds) == 5 and ds.labels.tolist() == [int(label[0]) for label in labels]
    points, label = ds[2]
    assert points.shape == (8192, 3) and points.dtype == torch.float32 and label == int(labels[2][0])
    assert np.array_equal(points.numpy(), official_pc_normalize(clouds[2][:, :3]))
    assert ds.shape_ids[0] == f"{MODELNET40_CLASSES[int(labels[0][0])]}_dat00000"
    with pytest.warns(UserWarning):
        shuffled = ModelNetDatCache(path, allow_pickle=True)
    assert shuffled.shuffle_points and not torch.equal(shuffled[2][0], points)


def test_convert_dat_to_npz_round_trip(dat_file, tmp_path):
    path, clouds, labels = dat_file
    out = tmp_path / "pack" / "train.npz"
    with pytest.warns(UserWarning):
        assert convert_dat_to_npz(path, out, allow_pickle=True) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["shape_names.txt", "train.npz"]  # no temp files left
    with np.load(out, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["labels", "names", "points"]
        assert npz["points"].dtype == np.float32 and npz["labels"].dtype == np.int64
    pack = ModelNetPack(out.parent, "train", shuffle_points=False)
    assert pack.class_names == MODELNET40_CLASSES and pack.labels.tolist() == [int(label[0]) for label in labels]
    assert np.array_equal(pack[4][0].numpy(), official_pc_normalize(clouds[4][:, :3]))


def test_dat_names_come_from_the_official_list_beside_it(tmp_path):
    path = tmp_path / "modelnet10_test_8192pts_fps.dat"
    with open(path, "wb") as f:
        pickle.dump([[np.ones((8, 6), np.float32) * [1, 2, 3, 0, 0, 1] + np.eye(8, 6, dtype=np.float32)] * 2,
                     [np.array([9], np.int32), np.array([0], np.int32)]], f)
    (tmp_path / "modelnet10_test.txt").write_text("toilet_0345\nbathtub_0107\n")
    with pytest.warns(UserWarning):
        ds = ModelNetDatCache(path, allow_pickle=True)
    assert ds.split == "test" and ds.name == "modelnet10" and ds.class_names == MODELNET10_CLASSES
    assert ds.shape_ids == ["toilet_0345", "bathtub_0107"] and not ds.shuffle_points


@pytest.mark.parametrize("content, message", [
    (b"not a pickle", "not a readable pickle"),
    (pickle.dumps([[np.zeros((8, 6), np.float32)]]), r"\[points_list, labels_list\]"),
    (pickle.dumps([[np.zeros((8, 2), np.float32)], [np.array([1], np.int32)]]), r"shape \(N, >=3\)"),
    (pickle.dumps([[np.ones((8, 6), np.float32), np.ones((9, 6), np.float32)],
                   [np.array([1], np.int32)] * 2]), "different point counts"),
    (pickle.dumps([[np.eye(8, 6, dtype=np.float32)], [np.array([40], np.int32)]]), r"\[0, 40\)"),
    (pickle.dumps([[np.eye(8, 6, dtype=np.float32)], [np.array([], np.int32)]]), r"shape \(1,\)"),
])
def test_dat_malformed(tmp_path, content, message):
    path = tmp_path / "modelnet40_test_8192pts_fps.dat"
    path.write_bytes(content)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=message) as info:
        ModelNetDatCache(path, allow_pickle=True)
    assert str(path) in str(info.value)


def test_dat_split_must_be_known(tmp_path):
    path = tmp_path / "cache.dat"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="pass split="):
        ModelNetDatCache(path, allow_pickle=True)


# ============================================================================ own data: PointCloudFolder

PLY_TYPES = {"f4": "float", "f8": "double", "i4": "int", "u1": "uchar"}


def write_ply(path: Path, xyz: np.ndarray, fmt: str = "ascii", *, faces: bool = True, extra: bool = True):
    """Independent PLY writer: vertex (x, y, z[, red uchar]) then a face element with a list property."""
    endian = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt, "<")
    fields = [("x", endian + "f4"), ("y", endian + "f4"), ("z", endian + "f8")] + ([("red", "u1")] if extra else [])
    table = np.zeros(len(xyz), dtype=fields)
    table["x"], table["y"], table["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    header = ["ply", f"format {fmt} 1.0", "comment made by a test", f"element vertex {len(xyz)}"]
    header += [f"property {PLY_TYPES[t[-2:]]} {n}" for n, t in fields]
    if faces:
        header += ["element face 1", "property list uchar int vertex_indices"]
    header.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        if fmt == "ascii":
            for row in table:
                f.write((" ".join(repr(v.item()) for v in row) + "\n").encode())
            if faces:
                f.write(b"3 0 1 2\n")
        else:
            f.write(table.tobytes())
            if faces:
                f.write(np.array([3], "u1").tobytes() + np.array([0, 1, 2], endian + "i4").tobytes())


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict]:
    """``root/<class>/`` with every supported file type; returns xyz (float32) by relative stem."""
    tmp_path = tmp_path / "own"
    tmp_path.mkdir()
    rng = np.random.default_rng(3)
    clouds = {}

    def cloud(n=30, cols=3):
        return rng.normal(size=(n, cols)).astype(np.float32)

    (tmp_path / "mug").mkdir()
    (tmp_path / "lamp").mkdir()
    (tmp_path / "chair").mkdir()
    c = cloud(cols=6)
    np.save(tmp_path / "chair" / "a.npy", c.astype(np.float64))
    clouds["chair/a"] = c[:, :3]
    c = cloud(cols=4)
    (tmp_path / "chair" / "b.txt").write_text("\n".join(" \t".join(repr(float(v)) for v in r) for r in c) + "\n\n")
    clouds["chair/b"] = c[:, :3]
    c = cloud()
    (tmp_path / "lamp" / "c.txt").write_text("".join(",".join(repr(float(v)) for v in r) + "\n" for r in c))
    clouds["lamp/c"] = c
    for name, fmt in (("d", "ascii"), ("e", "binary_little_endian"), ("f", "binary_big_endian")):
        c = cloud()
        write_ply(tmp_path / "mug" / f"{name}.ply", c, fmt)
        clouds[f"mug/{name}"] = c
    (tmp_path / "mug" / "notes.md").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    return tmp_path, clouds


def test_folder_reads_npy_txt_ply(folder):
    root, clouds = folder
    ds = PointCloudFolder(root)
    assert ds.class_names == ["chair", "lamp", "mug"] and ds.name == "folder" and ds.split is None
    assert ds.shape_ids == ["chair/a", "chair/b", "lamp/c", "mug/d", "mug/e", "mug/f"]
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 2] and not ds.shuffle_points
    for i, sid in enumerate(ds.shape_ids):
        points, label = ds[i]
        assert points.dtype == torch.float32 and np.array_equal(points.numpy(), clouds[sid]), sid
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch[0].shape == (6, 30, 3)


def test_folder_ply_without_faces_or_extra_properties(tmp_path):
    xyz = np.arange(12, dtype=np.float32).reshape(4, 3)
    (tmp_path / "a").mkdir()
    write_ply(tmp_path / "a" / "x.ply", xyz, "binary_little_endian", faces=False, extra=False)
    assert np.array_equal(PointCloudFolder(tmp_path)[0][0].numpy(), xyz)


def test_folder_unequal_counts_need_num_points(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, large = rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=(80, 3)).astype(np.float32)
    np.save(tmp_path / "a" / "small.npy", small)
    np.save(tmp_path / "b" / "large.npy", large)
    with pytest.raises(DatasetError, match="different point counts.*num_points=N") as info:
        PointCloudFolder(tmp_path)
    assert str(tmp_path / "a" / "small.npy") in str(info.value)
    assert "--set data.num_points=N" in str(info.value)  # the recipe key too, for command-line users
    ds = PointCloudFolder(tmp_path, num_points=50)
    assert ds.points.shape == (2, 50, 3)
    up, down = ds[0][0].numpy(), ds[1][0].numpy()
    assert np.array_equal(np.unique(up, axis=0), np.unique(small, axis=0))  # all 20 points kept, repeats added
    assert len(np.unique(down, axis=0)) == 50 and all((large == row).all(1).any() for row in down)
    assert torch.equal(PointCloudFolder(tmp_path, num_points=50).points, ds.points)  # seeded
    assert not torch.equal(PointCloudFolder(tmp_path, num_points=50, seed=1).points, ds.points)


def test_folder_split_layout(tmp_path):
    for split, classes in (("train", ("bowl", "cup", "vase")), ("test", ("cup", "vase"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            np.save(tmp_path / split / cls / "s.npy", np.full((8, 3), len(cls), np.float32))
    train, test = PointCloudFolder(tmp_path, "train"), PointCloudFolder(tmp_path, "test")
    assert train.class_names == test.class_names == ["bowl", "cup", "vase"]
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [1, 2]
    assert train.shuffle_points and not test.shuffle_points
    with pytest.raises(FileNotFoundError, match="val"):
        PointCloudFolder(tmp_path, "val")


def test_folder_missing_or_empty(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere.*expected layout"):
        PointCloudFolder(tmp_path / "nowhere")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.md").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no point files"):
        PointCloudFolder(tmp_path)


def test_folder_empty_class_folder_that_sorts_first_is_an_error(tmp_path):
    """An empty class folder would take label 0 and shift every other label: it must fail at construction."""
    (tmp_path / "aaa_empty").mkdir()
    (tmp_path / "aaa_empty" / "notes.md").write_text("not a cloud")
    (tmp_path / "aaa_empty" / ".hidden.npy").write_bytes(b"")
    for cls in ("bowl", "cup"):
        (tmp_path / cls).mkdir()
        np.save(tmp_path / cls / "s.npy", np.zeros((8, 3), np.float32))
    with pytest.raises(DatasetError, match="no point files") as info:
        PointCloudFolder(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "aaa_empty") in message and "remove it or add .npy/.txt/.ply files" in message
    assert not isinstance(info.value, DatasetNotFoundError)
    with pytest.raises(DatasetError, match="aaa_empty"):
        build_dataset({"dataset": "folder", "root": tmp_path, "num_points": 8}, "train")
    (tmp_path / "aaa_empty" / "notes.md").unlink()
    (tmp_path / "aaa_empty" / ".hidden.npy").unlink()
    (tmp_path / "aaa_empty").rmdir()
    ds = PointCloudFolder(tmp_path)
    assert ds.class_names == ["bowl", "cup"] and ds.labels.tolist() == [0, 1]


def test_folder_empty_class_folder_in_any_split_is_an_error(tmp_path):
    for split, classes in (("train", ("bowl", "cup")), ("test", ("bowl", "cup"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            np.save(tmp_path / split / cls / "s.npy", np.zeros((8, 3), np.float32))
    (tmp_path / "test" / "aaa").mkdir()  # only in test, empty: would add a class and shift train's labels too
    (tmp_path / "train" / "cup" / "s.npy").unlink()
    for split in ("train", "test"):
        with pytest.raises(DatasetError, match="class folders .*aaa.*cup.* hold no point files") as info:
            PointCloudFolder(tmp_path, split)
        assert str(tmp_path / "test" / "aaa") in str(info.value) and str(tmp_path / "train" / "cup") in str(info.value)
        assert "remove them or add .npy/.txt/.ply files" in str(info.value)


def test_build_dataset_folder_passes_num_points(tmp_path):
    for cls, n in (("a", 20), ("b", 80)):
        (tmp_path / cls).mkdir()
        np.save(tmp_path / cls / "s.npy", np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32))
    ds = build_dataset(SimpleNamespace(dataset="folder", root=tmp_path, num_points=32, format=None), "train")
    assert isinstance(ds, PointCloudFolder) and ds.num_points == 32 and ds.points.shape == (2, 32, 3)


PLY_HEAD = "ply\nformat {fmt} 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", "1 2 3\n4 five 6\n", "non-numeric"),
    ("ragged.txt", "1 2 3 4\n5 6 7\n", "different numbers of columns"),
    ("flat.txt", "1 2\n3 4\n", r"shape \(N, >=3\)"),
    ("nan.txt", "1 2 nan\n", "NaN"),
    ("binary.txt", b"\xff\xfe\x00", "not a text file"),
    ("obj.npy", None, "not a plain numeric .npy"),
    ("wide.npy", np.zeros((5, 2), np.float32), r"shape \(N, >=3\)"),
    ("strings.npy", np.array([["a", "b", "c"]]), r"shape \(N, >=3\)"),
    ("inf.npy", np.array([[0, 0, np.inf]]), "NaN"),
    ("garbage.npy", b"\x93NUMPY garbage", "not a plain numeric .npy"),
    ("noply.ply", "hello\n", "not a PLY file"),
    ("noformat.ply", "ply\nelement vertex 1\nproperty float x\nend_header\n", "no supported 'format'"),
    ("weird.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n",
     "unsupported PLY header"),
    ("novertex.ply", "ply\nformat ascii 1.0\nelement face 0\nend_header\n", "no 'vertex' element"),
    ("noz.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n1 2\n",
     "lacks x, y or z"),
    ("short.ply", PLY_HEAD.format(fmt="ascii") + "1 2 3\n", "fewer vertex rows"),
    ("text.ply", PLY_HEAD.format(fmt="ascii") + "1 2 3\n4 x 6\n", "non-numeric"),
    ("trunc.ply", PLY_HEAD.format(fmt="binary_little_endian").encode() + np.zeros(5, "<f4").tobytes(), "truncated"),
    ("listv.ply", "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
                  "property list uchar int idx\nend_header\n1 2 3 0\n", "list properties"),
])
def test_folder_malformed_files_name_the_file(tmp_path, name, content, message):
    (tmp_path / "cls").mkdir()
    path = tmp_path / "cls" / name
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        PointCloudFolder(tmp_path)
    assert str(path) in str(info.value)


# ============================================================================ build_dataset

def test_build_dataset_dispatch(tmp_path, scan_roots, dat_file, folder):
    scan = build_dataset({"dataset": "scanobjectnn", "variant": "obj_bg", "root": scan_roots["base"] / "pointgpt",
                          "format": "h5"}, "test")
    assert isinstance(scan, ScanObjectNN) and scan.variant == "obj_bg"
    scan = build_dataset(SimpleNamespace(dataset="ScanObjectNN", variant="pb_t50_rs", format=None,
                                         root=str(scan_roots["base"] / "pointmae"), seed=3), "train")
    assert scan.variant == "pb_t50_rs" and scan.seed == 3 and scan.shuffle_points
    write_pack(tmp_path / "pack", "train", [0, 1, 8, 35])
    pack = build_dataset({"dataset": "modelnet10", "root": tmp_path / "pack", "axis_order": "official"}, "train")
    assert isinstance(pack, ModelNetPack) and pack.labels.tolist() == [0, 2, 9] and pack.axis_order == "official"
    with pytest.raises(UnsafeDatasetError):
        build_dataset({"dataset": "modelnet40", "format": "dat", "root": dat_file[0].parent}, "train")
    with pytest.warns(UserWarning):
        dat = build_dataset(SimpleNamespace(dataset="modelnet40", format="dat", root=dat_file[0].parent,
                                            allow_pickle=True), "train")
    assert isinstance(dat, ModelNetDatCache) and len(dat) == 5
    with pytest.raises(UnsafeDatasetError):  # detected, still needs the opt-in
        build_dataset({"dataset": "modelnet40", "root": dat_file[0].parent}, "train")
    flat = build_dataset({"dataset": "folder", "root": folder[0]}, "train")
    assert isinstance(flat, PointCloudFolder) and flat.split is None and len(flat) == 6
    with pytest.raises(DatasetError, match="only provides a training set"):
        build_dataset({"dataset": "folder", "root": folder[0]}, "test")


@needs_shared
def test_build_dataset_detects_the_text_tree():
    ds = build_dataset({"dataset": "modelnet10", "root": str(MINI), "skip_missing": True, "num_points": 2048}, "test")
    assert isinstance(ds, ModelNetNormalResampled) and len(ds) == 6 and ds[0][0].shape == (2048, 3)


@pytest.mark.parametrize("data, message", [
    ({"dataset": "shapenet", "root": "x"}, "unknown dataset 'shapenet'; choose one of scanobjectnn, modelnet40"),
    ({"dataset": "modelnet40"}, "needs a 'root'"),
    ({"dataset": "modelnet40", "root": "x", "format": "ply"}, "unknown data format 'ply'"),
    ({"dataset": "modelnet40", "root": "x", "format": "h5"}, "format 'h5' is for ScanObjectNN"),
    ({"dataset": "scanobjectnn", "root": "x", "variant": "obj_bg", "format": "npz"}, "use h5"),
    ({"dataset": "folder", "root": "x", "format": "npz"}, "remove format"),
])
def test_build_dataset_bad_sections(data, message):
    with pytest.raises(DatasetError, match=message):
        build_dataset(data, "train")


def test_build_dataset_undetectable_modelnet_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train.npz \(npz pack\).*normal_resampled.*dat cache"):
        build_dataset({"dataset": "modelnet40", "root": tmp_path}, "train")


# ============================================================================ splits and subsets

def test_stratified_split_properties():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 2)
    train_idx, val_idx = stratified_split(labels, 0.2, seed=5)
    assert train_idx.dtype == val_idx.dtype == torch.int64
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(16))
    assert torch.bincount(labels[val_idx], minlength=4).tolist() == [2, 1, 0, 1]  # >= 1, <= n - 1, singleton kept
    assert torch.equal(train_idx, train_idx.sort().values)
    again = stratified_split(labels.numpy(), 0.2, seed=5)
    assert torch.equal(again[0], train_idx) and torch.equal(again[1], val_idx)
    assert not torch.equal(stratified_split(labels, 0.2, seed=6)[1], val_idx)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            stratified_split(labels, bad, 0)
    with pytest.raises(ValueError, match="non-negative integers"):
        stratified_split([0.5, 1.0], 0.5, 0)


def test_stratified_subset_properties():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    subset = stratified_subset(labels, 20, seed=0)
    assert len(subset) == 20 and len(set(subset.tolist())) == 20
    assert torch.bincount(labels[subset]).tolist() == [12, 6, 2]
    assert torch.equal(stratified_subset(labels, 20, seed=0), subset)
    assert set(labels[stratified_subset(labels, 3, seed=1)].tolist()) == {0, 1, 2}  # every class first
    assert torch.equal(stratified_subset(labels, 500, seed=0), torch.arange(100))
    with pytest.raises(ValueError, match="max_samples"):
        stratified_subset(labels, 0, 0)


def test_subset_of_a_dataset_with_split_indices(scan_roots):
    ds = ScanObjectNN(scan_roots["base"] / "pointmae", "pb_t50_rs", "test")
    train_idx, val_idx = stratified_split(ds.labels, 0.4, seed=0)
    sub = Subset(ds, val_idx)
    points, label = sub[0]
    assert torch.equal(points, ds[int(val_idx[0])][0]) and label == int(ds.labels[val_idx[0]])


# ============================================================================ few-shot episodes

def test_few_shot_episode_protocol():
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 40, 3000), rng.integers(0, 40, 1200)
    support, query, classes = few_shot_episode(train_labels, 5, 10, seed=3, query_labels=test_labels)
    assert classes.shape == (5,) and len(set(classes.tolist())) == 5
    assert len(support) == 50 and len(query) == 100
    assert train_labels[support.numpy()].reshape(5, 10).tolist() == [[c] * 10 for c in classes.tolist()]
    assert test_labels[query.numpy()].reshape(5, 20).tolist() == [[c] * 20 for c in classes.tolist()]
    assert len(set(support.tolist())) == 50 and len(set(query.tolist())) == 100
    again = few_shot_episode(train_labels, 5, 10, seed=3, query_labels=test_labels)
    assert all(torch.equal(a, b) for a, b in zip(again, (support, query, classes)))
    other = few_shot_episode(train_labels, 5, 10, seed=4, query_labels=test_labels)
    assert not torch.equal(other[0], support)


def test_few_shot_episode_single_pool_is_disjoint_and_relabelled(scan_roots):
    labels = torch.arange(10).repeat_interleave(30)
    support, query, classes = few_shot_episode(labels, 10, 20, query_per_class=10, seed=0)
    assert not set(support.tolist()) & set(query.tolist())
    assert sorted(classes.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="only 0 classes"):
        few_shot_episode(labels, 5, 25, seed=0)  # 25 support + 20 query > 30 per class
    with pytest.raises(ValueError, match="k_shot must be a positive int"):
        few_shot_episode(labels, 5, 0, seed=0)
    ds = ScanObjectNN(scan_roots["base"] / "pointmae", "obj_bg", "test")
    present = torch.unique(ds.labels)
    episode = EpisodeSubset(ds, torch.arange(len(ds)), present)
    assert episode.num_classes == len(present) and episode.class_names == [SCANOBJECTNN_CLASSES[c] for c in present]
    assert [episode[i][1] for i in range(len(ds))] == [present.tolist().index(int(label)) for label in ds.labels]
    assert torch.equal(episode[1][0], ds[1][0])
    with pytest.raises(ValueError, match="belong to one of its classes"):
        EpisodeSubset(ds, torch.arange(len(ds)), present[:1])
