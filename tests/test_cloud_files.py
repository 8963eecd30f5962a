"""``pointgst.data.cloud_files.read_cloud``: every format, written by independent writers (numpy, plyfile, trimesh,
PCD and OFF by hand); seeded, area-weighted surface sampling of meshes; one clear error per bad file."""

import sys

import numpy as np
import pytest
import trimesh
from plyfile import PlyData, PlyElement

from pointgst.data.cloud_files import CLOUD_SUFFIXES, find_cloud_files, read_cloud
from pointgst.data.readers import DatasetError

POINTS = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)


def write_ply(path, xyz, *, text, faces=None):
    vertex = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")])
    vertex["x"], vertex["y"], vertex["z"], vertex["intensity"] = *xyz.T, 1.0
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        face = np.empty(len(faces), dtype=[("vertex_indices", "O")])
        face["vertex_indices"] = [np.asarray(f, dtype=np.int32) for f in faces]
        elements.append(PlyElement.describe(face, "face"))
    PlyData(elements, text=text).write(str(path))


def write_pcd(path, xyz, *, binary):
    """A PCD file by hand (PCL's header, fields x y z rgb, one row per point)."""
    n = len(xyz)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\n"
              f"COUNT 1 1 1 1\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
              f"DATA {'binary' if binary else 'ascii'}\n")
    if binary:
        rows = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
        rows["x"], rows["y"], rows["z"], rows["rgb"] = *xyz.T, 0xFF0000
        path.write_bytes(header.encode() + rows.tobytes())
    else:
        path.write_text(header + "".join(f"{x:.9g} {y:.9g} {z:.9g} 16711680\n" for x, y, z in xyz))


def write_off(path, xyz):
    """An OFF point cloud by hand: vertices, zero faces."""
    path.write_text(f"OFF\n{len(xyz)} 0 0\n" + "".join(f"{x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in xyz))


# -- point clouds: the stored points, in file order -----------------------------------------------------------------

def test_every_point_cloud_format_gives_the_stored_points_in_order(tmp_path):
    normals = np.concatenate([POINTS, np.ones_like(POINTS)], axis=1)
    np.save(tmp_path / "a.npy", normals)
    np.savez(tmp_path / "b.npz", points=POINTS, labels=np.arange(3))
    np.savez(tmp_path / "c.npz", cloud=POINTS)  # the only array, whatever its name
    np.savetxt(tmp_path / "d.txt", normals, delimiter=",", fmt="%.9g")  # x,y,z,nx,ny,nz
    np.savetxt(tmp_path / "e.xyz", POINTS, fmt="%.9g")
    write_ply(tmp_path / "f.ply", POINTS, text=True)
    write_ply(tmp_path / "g.ply", POINTS, text=False)
    write_pcd(tmp_path / "h.pcd", POINTS, binary=False)
    write_pcd(tmp_path / "i.pcd", POINTS, binary=True)
    write_off(tmp_path / "j.off", POINTS)
    trimesh.PointCloud(POINTS).export(tmp_path / "k.obj")  # vertices only: a point cloud
    files = sorted(tmp_path.iterdir())
    assert len(files) == 11
    for file in files:
        points = read_cloud(file)
        assert points.dtype == np.float32 and points.shape == (50, 3), file
        np.testing.assert_allclose(points, POINTS, rtol=0, atol=1e-6, err_msg=str(file))


def test_folders_are_searched_recursively_in_sorted_order(tmp_path):
    for name in ("b/z.ply", "a/y.npy", "a/x.pcd", "c.txt", ".hidden/w.npy", "a/.v.npy", "notes.md", "a/u.foo"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in find_cloud_files(tmp_path)] == ["a/x.pcd", "a/y.npy",
                                                                                         "b/z.ply", "c.txt"]


# -- meshes: seeded, area-weighted samples on the surface ----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".stl", ".obj", ".off", ".ply"])
def test_a_cube_mesh_gives_seeded_points_on_its_faces(tmp_path, suffix):
    path = tmp_path / f"cube{suffix}"
    trimesh.creation.box(extents=(1, 1, 1)).export(path)
    points = read_cloud(path, num_surface_points=3000, seed=7)
    assert points.shape == (3000, 3) and points.dtype == np.float32
    np.testing.assert_allclose(np.abs(points).max(axis=1), 0.5, rtol=0, atol=1e-6)  # every point on a face
    assert np.array_equal(points, read_cloud(path, num_surface_points=3000, seed=7))  # reproducible
    assert not np.array_equal(points, read_cloud(path, num_surface_points=3000, seed=8))
    on_face = [(np.abs(points[:, axis] - side * 0.5) < 1e-6).mean() for axis in range(3) for side in (-1, 1)]
    assert min(on_face) > 1 / 6 - 0.04 and max(on_face) < 1 / 6 + 0.04  # 6 equal faces (sd 0.0068, 6 sd)


def test_surface_samples_are_area_weighted_and_uniform_within_a_face(tmp_path):
    path = tmp_path / "slab.stl"
    trimesh.creation.box(extents=(4, 4, 0.25)).export(path)  # faces 16, 16 (z) and four of 1: 32 / 36 on z
    n = 20000
    points = read_cloud(path, num_surface_points=n, seed=0)
    on_z = np.abs(np.abs(points[:, 2]) - 0.125) < 1e-6
    # binomial standard deviation sqrt(p (1 - p) / n) = 0.0022 at p = 32/36: 5 of them
    assert abs(on_z.mean() - 32 / 36) < 5 * np.sqrt(32 / 36 * 4 / 36 / n)
    top = points[on_z]
    assert abs((top[:, 0] < -1).mean() - 0.25) < 0.02  # the first quarter of a face holds a quarter of its points


def test_a_ply_with_polygon_faces_is_sampled_on_its_surface(tmp_path):
    square = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0]], dtype=np.float32)
    write_ply(tmp_path / "quad.ply", square, text=False, faces=[[0, 1, 2, 3]])
    points = read_cloud(tmp_path / "quad.ply", num_surface_points=500, seed=1)
    assert points.shape == (500, 3) and np.all(points[:, 2] == 0)
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= 2 and points[:, 1].min() >= 0 and points[:, 1].max() <= 1
    assert (points[:, 0] > 1).mean() == pytest.approx(0.5, abs=0.1)  # both fan triangles are used


# -- bad files: one DatasetError naming the file, the problem and the fix --------------------------------------------

def _bad_files(tmp_path):
    garbage = bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8))
    files = {}
    for suffix in CLOUD_SUFFIXES:
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        files[f"empty{suffix}"] = "is empty"
    for suffix in (".npy", ".npz", ".txt", ".ply", ".pcd", ".off", ".obj", ".stl"):
        (tmp_path / f"garbage{suffix}").write_bytes(garbage)
        files[f"garbage{suffix}"] = r"is not a readable|not a text file|is not a \.np[yz] file .it does not start"
    nan = POINTS.copy()
    nan[7, 1] = np.nan
    np.savetxt(tmp_path / "nan.txt", nan)
    files["nan.txt"] = "1 of 50 points have NaN or infinite coordinates .first at row 7.; remove"
    np.save(tmp_path / "inf.npy", np.where(np.arange(150).reshape(50, 3) == 4, np.inf, POINTS))
    files["inf.npy"] = "NaN or infinite"
    (tmp_path / "facets.stl").write_text("solid nothing\nendsolid nothing\n")
    files["facets.stl"] = "holds no facets; export the mesh with its triangles"
    (tmp_path / "cloud.las").write_bytes(b"LASF")
    files["cloud.las"] = "unknown point-cloud file type '.las'; supported: .npy, .npz, .txt, .xyz, .ply, .pcd, .off"
    np.savez(tmp_path / "two.npz", a=POINTS, b=POINTS)
    files["two.npz"] = "none named 'points'; save the cloud with numpy.savez"
    np.save(tmp_path / "pack.npy", np.stack([POINTS, POINTS]))
    files["pack.npy"] = r"expected one cloud.*\(2, 50, 3\)"
    return files


def test_each_bad_file_raises_one_line_naming_it(tmp_path):
    for name, problem in _bad_files(tmp_path).items():
        with pytest.raises(DatasetError, match=problem) as caught:
            read_cloud(tmp_path / name)
        message = str(caught.value)
        assert str(tmp_path / name) in message and "\n" not in message, message


def test_too_few_points_and_a_missing_file_are_errors(tmp_path):
    np.save(tmp_path / "ten.npy", POINTS[:10])
    with pytest.raises(DatasetError, match=r"ten.npy holds 10 points, fewer than the 1024 the model needs"):
        read_cloud(tmp_path / "ten.npy", min_points=1024)
    with pytest.raises(FileNotFoundError, match="missing.ply does not exist"):
        read_cloud(tmp_path / "missing.ply")


@pytest.mark.parametrize("module,suffix", [("plyfile", ".ply"), ("pypcd4", ".pcd"), ("trimesh", ".off")])
def test_a_missing_io_library_names_the_extra(tmp_path, monkeypatch, module, suffix):
    path = tmp_path / f"cloud{suffix}"
    path.write_text("anything")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(DatasetError, match=rf"needs the {module} package; install it with pip install \"pointgst\[io\]\""):
        read_cloud(path)
