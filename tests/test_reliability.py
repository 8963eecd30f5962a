"""Nothing trained is lost: safe saves, guarded runs, strict loads, one clear line for every bad input.

Each test names the failure it guards against. (Exact reloads of every method in a fresh process are in
test_contract.py, the 0.1.0 folders in test_compat_v010.py, bad geometry of single modules in test_dcnv4.py and
test_backbones.py, corrupt checkpoint files in test_checkpoints.py.)
"""

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pointgst
from pointgst.errors import CheckpointError, RunError
from pointgst.recipe import RecipeError, load_recipe
from pointgst.training import Trainer, TrainingDivergedError
from pointgst.training.run_dir import RunLock

from .cli_runs import run_cli_here

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")
#: a run of seconds: point_mae_tiny from scratch, 24 + 6 ModelNet10 training shapes, 10 test shapes, one epoch
QUICK = ["backbone.name=point_mae_tiny", "backbone.pretrained=false", "backbone.num_group=32", "backbone.group_size=16",
         "data.dataset=modelnet10", "data.num_classes=10", "data.max_train_samples=30", "data.max_test_samples=10",
         "data.val_fraction=0.2", f"data.root={SHARED_DATA / 'modelnet40_1024'}", "train.batch_size=8",
         "train.epochs=1", "train.warmup_epochs=0"]


def quick_recipe(*overrides: str):
    return load_recipe("modelnet40-small.cpu", QUICK + list(overrides))


def tiny_model(method: str = "pcsa"):
    torch.manual_seed(0)
    return pointgst.wrap(pointgst.create_backbone("point_mae_tiny", num_classes=5, num_group=32, group_size=16),
                         method=method)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. saves never delete what they did not write; writes are atomic; ordinary file modes -------------------------

@pytest.mark.parametrize("method", ["linear", "full", "pcsa"])
def test_saving_into_a_folder_with_user_files_never_removes_them(tmp_path, method):
    project = tmp_path / "thesis"
    (project / "data").mkdir(parents=True)
    (project / "thesis.tex").write_text("\\documentclass{article}")
    (project / "data" / "scan.npy").write_bytes(b"\x93NUMPY")
    before = snapshot(project)
    model = tiny_model(method)
    with pytest.raises(FileExistsError, match="thesis.tex"):
        model.save_pretrained(project)
    assert snapshot(project) == before  # refused: nothing written, nothing removed
    model.save_pretrained(project, overwrite=True)
    after = snapshot(project)
    assert all(after[name] == content for name, content in before.items())  # the user's files are intact
    assert "pointgst.json" in after and len(after) > len(before)
    pointgst.load_adapter(project, pointgst.create_backbone("point_mae_tiny", num_classes=5, num_group=32,
                                                            group_size=16) if method != "full" else None)


def test_a_file_path_is_refused_and_the_current_folder_works(tmp_path, monkeypatch):
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="is a file"):
        tiny_model("linear").save_pretrained(checkpoint)
    assert checkpoint.read_bytes() == b"precious"
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    tiny_model("pcsa").save_pretrained(".")  # used to fail with EBUSY and leave a ..old folder behind
    assert sorted(p.name for p in here.iterdir() if p.name.startswith(".")) == []
    assert (here / "adapter_model.safetensors").is_file()


def test_an_interrupted_save_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    import pointgst.tuner.peft_model as peft_model

    folder = tmp_path / "adapter"
    model = tiny_model("pcsa")
    model.save_pretrained(folder)
    before = snapshot(folder)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(peft_model, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(folder)
    assert snapshot(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(OSError):
        model.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_every_saved_file_gets_the_ordinary_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        tiny_model("pcsa").save_pretrained(tmp_path / "adapter")
        tiny_model("full").save_pretrained(tmp_path / "full")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for folder in ("adapter", "full")
             for p in (tmp_path / folder).iterdir()}
    assert set(modes.values()) == {0o644}, modes


# -- 3. a non-finite loss stops the run ----------------------------------------------------------------------------

@needs_data
def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path, capsys):
    with pytest.raises(RecipeError, match="train.lr must be a finite number"):
        quick_recipe("train.lr=.inf")
    run = tmp_path / "run"
    code, _, err = run_cli_here(["train", "modelnet40-small.cpu", "--out", run, "--no-progress", "--device", "cpu",
                                 *[a for s in QUICK + ["train.lr=1e30"] for a in ("--set", s)]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the loss is nan at epoch 1, step 2" in err and "train.lr=1e+30" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock", "recipe.yaml"]  # no epoch was saved
    with pytest.raises(TrainingDivergedError):  # the same run in Python
        Trainer(quick_recipe("train.lr=1e30"), run, progress=False).fit()


# -- 4. 5. 6. run folders: the recipe is checked on resume, one process at a time, a dead run restarts -----------

@needs_data
def test_resume_refuses_another_recipe_naming_the_keys(tmp_path):
    run = tmp_path / "run"
    Trainer(quick_recipe(), run, progress=False).fit()
    before = snapshot(run)
    other = quick_recipe("backbone.num_group=16", "train.lr=1e-3", "method.options.local_size=16")
    with pytest.raises(RecipeError, match=r"(?s)backbone\.num_group: 32 -> 16.*method\.options\.local_size.*train\.lr"):
        Trainer(other, run, resume=True, progress=False)
    with pytest.raises(RecipeError, match=r"data\.num_classes: 10 -> 40"):
        Trainer(quick_recipe("data.dataset=modelnet40", "data.num_classes=40"), run, resume=True, progress=False)
    assert snapshot(run) == before
    Trainer(quick_recipe("train.num_workers=0"), run, resume=True, progress=False).fit()  # same recipe: fine


@needs_data
def test_a_run_folder_is_locked_while_a_process_trains_in_it(tmp_path, capsys):
    run = tmp_path / "run"
    lock = RunLock(run)
    try:
        with pytest.raises(RunError, match=f"in use by another pointgst process \\(pid {os.getpid()}\\)"):
            Trainer(quick_recipe(), run, progress=False)
        code, _, err = run_cli_here(["train", "modelnet40-small.cpu", "--out", run, "--resume",
                                     *[a for s in QUICK for a in ("--set", s)]], capsys)
        assert code == 2 and "in use by another pointgst process" in err
    finally:
        lock.release()
    Trainer(quick_recipe(), run, progress=False).fit()  # free again


@needs_data
def test_a_run_that_died_in_its_first_epoch_starts_again(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            Trainer(quick_recipe(), run, progress=False).fit()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "recipe.yaml"]
    summary = Trainer(quick_recipe(), run, progress=False).fit()  # no "already holds a run"
    assert summary["epochs"] == 1
    with pytest.raises(FileExistsError, match="pass --resume"):
        Trainer(quick_recipe(), run, progress=False)
    shutil.rmtree(run)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            Trainer(quick_recipe(), run, progress=False).fit()
    assert Trainer(quick_recipe(), run, resume=True, progress=False).fit()["epochs"] == 1  # --resume restarts it


@needs_data
def test_a_stale_temporary_file_of_a_killed_checkpoint_write_is_removed(tmp_path):
    run = tmp_path / "run"
    Trainer(quick_recipe(), run, progress=False).fit()
    stale = run / ".checkpoint-last.pt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    Trainer(quick_recipe(), run, resume=True, progress=False).fit()
    assert not stale.exists()


# -- 7. weights of another method are refused ----------------------------------------------------------------------

def test_weights_of_another_method_are_an_error_not_a_warning(tmp_path):
    for method in ("pcsa", "dcnv4", "lora"):
        tiny_model(method).save_pretrained(tmp_path / method)

    def backbone():
        return pointgst.create_backbone("point_mae_tiny", num_classes=5, num_group=32, group_size=16)

    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "pcsa", mixed)
    shutil.copy(tmp_path / "dcnv4" / "adapter_model.safetensors", mixed / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="holds dcnv4 weights but .* describes a pcsa adapter"):
        pointgst.load_adapter(mixed, backbone())
    untagged = load_file(str(tmp_path / "dcnv4" / "adapter_model.safetensors"))  # as pointgst 0.1.0 wrote them
    save_file(untagged, str(mixed / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="does not hold the tensors of a pcsa adapter"):
        pointgst.load_adapter(mixed, backbone())
    shutil.copy(tmp_path / "lora" / "adapter_config.json", mixed / "adapter_config.json")
    save_file(load_file(str(tmp_path / "pcsa" / "adapter_model.safetensors")), str(mixed / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="lora"):
        pointgst.load_adapter(mixed, backbone())


# -- 8. crashes that became one clear line ---------------------------------------------------------------------------

def _write_cloud(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path.write_text("\n".join(" ".join(f"{v:.4f}" for v in row) for row in torch.randn(64, 3).tolist()))


def test_a_folder_dataset_whose_classes_do_not_fit_the_recipe(tmp_path, capsys):
    root = tmp_path / "mine"
    for split in ("train", "test"):
        for label in ("chair", "lamp", "table"):
            for i in range(3):
                _write_cloud(root / split / label / f"{i}.txt", hash((split, label, i)) % 1000)
    args = ["train", "modelnet40-small.cpu", "--out", tmp_path / "run", "--no-progress", "--set", "data.dataset=folder",
            "--set", "data.format=null", "--set", f"data.root={root}", "--set", "data.num_classes=4", "--set",
            "data.npoints=64", "--set", "data.point_all=64", "--set", "backbone.num_group=32", "--set",
            "backbone.group_size=16", "--set", "data.max_train_samples=null", "--set", "data.max_test_samples=null"]
    code, _, err = run_cli_here(args, capsys)
    assert code == 2 and "has 3 classes" in err and "data.num_classes=3" in err, err
    (root / "train" / "aaa_empty").mkdir()
    code, _, err = run_cli_here(args, capsys)
    assert code == 2 and "aaa_empty" in err and len(err.strip().splitlines()) == 1, err


@needs_data
def test_eval_of_a_broken_run_folder_says_what_is_wrong(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(quick_recipe(), run, progress=False).fit()
    with pytest.raises(SystemExit):
        run_cli_here(["eval", run, "--vote", "-3"], capsys)
    assert "expected a number >= 0" in capsys.readouterr().err
    best = (run / "best-trainable.pt").read_bytes()
    (run / "best-trainable.pt").write_bytes(best[: len(best) // 2])
    code, _, err = run_cli_here(["eval", run, "--device", "cpu"], capsys)
    assert code == 2 and "best-trainable.pt is corrupt or truncated" in err and len(err.strip().splitlines()) == 1
    (run / "best-trainable.pt").write_bytes(best)
    (run / "recipe.yaml").write_text("backbone: [unclosed\n")
    code, _, err = run_cli_here(["eval", run, "--device", "cpu"], capsys)
    assert code == 2 and "recipe.yaml: not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_files_that_are_not_checkpoints(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not a checkpoint\n")
    code, _, err = run_cli_here(["convert", text, tmp_path / "out"], capsys)
    assert code == 2 and "is not a readable PyTorch checkpoint" in err and not (tmp_path / "out").exists()
    model = tiny_model("pcsa")
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="holds an adapter for point_mae_tiny, but the backbone passed is "
                                              "pointgpt_s"):
        pointgst.load_adapter(tmp_path / "adapter", pointgst.create_backbone("pointgpt_s"))


# -- 9. extreme coordinates stay finite, and do not poison the head's statistics ------------------------------------

@pytest.mark.parametrize("scale", [1e19, 1e20, 1e-30])
def test_extreme_coordinates_train_and_evaluate_finitely(scale):
    """An untrained dcnv4 model used to return NaN at 1e19 (squared distances overflowed float32), and one training
    forward then left NaN in the head's BatchNorm statistics, so normal clouds gave NaN afterwards."""
    model = tiny_model("dcnv4")
    clouds = torch.randn(4, 128, 3, generator=torch.Generator().manual_seed(1))
    model.train()
    logits = model(clouds * scale)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(clouds)).all()  # the head's BatchNorm statistics stayed finite


# -- 10. one clear line for the rest -------------------------------------------------------------------------------

def test_load_adapter_of_a_missing_corrupt_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an adapter folder"):
        pointgst.load_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds neither a peft adapter"):
        pointgst.load_adapter(tmp_path / "empty")
    tiny_model("pcsa").save_pretrained(tmp_path / "adapter")
    config = tmp_path / "adapter" / "adapter_config.json"
    good = config.read_text()
    config.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="adapter_config.json is not a readable adapter config"):
        pointgst.load_adapter(tmp_path / "adapter")
    config.write_text(good)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        pointgst.load_adapter(tmp_path / "adapter", pointgst.create_backbone("point_mae_tiny", num_classes=5,
                                                                             num_group=32, group_size=16))


def test_zero_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        pointgst.wrap("point_mae_tiny", num_classes=0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        pointgst.create_backbone("point_mae_tiny", num_classes=0)
