"""Recipes: every paper setting exists with the published hyper-parameters (table below, written from
docs/official.md §4.1 / docs/checkpoints.md §6.1 and docs/official.md §4.2), round trips, overrides, and the error messages."""

import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from pointgst.recipe import (
    BackboneSpec,
    DataSpec,
    EvalSpec,
    FewShotSpec,
    MethodSpec,
    Recipe,
    RecipeError,
    TrainSpec,
    list_recipes,
    load_recipe,
)

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
SECTIONS = {"backbone": BackboneSpec, "method": MethodSpec, "data": DataSpec, "train": TrainSpec, "eval": EvalSpec}

DATASETS = ("scanobjectnn-obj_bg", "scanobjectnn-obj_only", "scanobjectnn-pb_t50_rs", "modelnet40")
PAPER_BACKBONES = ("point_mae", "act", "recon", "pointgpt_l")
POINTGPT_SB = ("pointgpt_s", "pointgpt_b")

# pretrained tag per backbone (docs/checkpoints.md §6.1; PointGPT-L = the post-pretrained file, issue #17)
TAGS = {"point_mae": "point_mae.pretrain", "act": "point_mae.act", "recon": "point_mae.recon",
        "pointgpt_l": "pointgpt_l.post_pretrain", "pointgpt_s": "pointgpt_s.pretrain",
        "pointgpt_b": "pointgpt_b.post_pretrain"}

# per dataset: variant, format, root, classes, npoints, point_all, num_group, group_size, vote
# (docs/official.md §4.1 "Points" / "Groups x size", §4.4 point_all; docs/datasets.md §2; ScanObjectNN numbers without voting)
DATA = {
    "scanobjectnn-obj_bg": ("obj_bg", "h5", "data/ScanObjectNN", 15, 2048, 2048, 128, 32, 0),
    "scanobjectnn-obj_only": ("obj_only", "h5", "data/ScanObjectNN", 15, 2048, 2048, 128, 32, 0),
    "scanobjectnn-pb_t50_rs": ("pb_t50_rs", "h5", "data/ScanObjectNN", 15, 2048, 2048, 128, 32, 0),
    "modelnet40": (None, "normal_resampled", "data/ModelNet/modelnet40_normal_resampled", 40, 1024, 1200, 64, 32, 10),
}

# (backbone, dataset) -> lr, weight decay, epochs, warmup epochs, batch size
# Point-MAE / ACT / ReCon / PointGPT-L: the PointGST configs (docs/official.md §4.1);
# PointGPT-S/B: the official PointGPT fine-tuning configs (docs/official.md §4.2)
OPTIM = {
    ("point_mae", "scanobjectnn-obj_bg"): (5e-4, 0.05, 300, 10, 32),
    ("point_mae", "scanobjectnn-obj_only"): (5e-4, 0.05, 300, 10, 32),
    ("point_mae", "scanobjectnn-pb_t50_rs"): (5e-4, 0.05, 300, 10, 32),
    ("point_mae", "modelnet40"): (5e-4, 0.05, 300, 10, 32),
    ("act", "scanobjectnn-obj_bg"): (5e-4, 0.05, 300, 10, 32),
    ("act", "scanobjectnn-obj_only"): (5e-4, 0.05, 300, 10, 32),
    ("act", "scanobjectnn-pb_t50_rs"): (5e-4, 0.05, 300, 10, 32),
    ("act", "modelnet40"): (5e-4, 0.05, 300, 10, 32),
    ("recon", "scanobjectnn-obj_bg"): (5e-4, 0.05, 300, 10, 32),
    ("recon", "scanobjectnn-obj_only"): (5e-4, 0.05, 300, 10, 32),
    ("recon", "scanobjectnn-pb_t50_rs"): (5e-4, 0.05, 300, 10, 32),
    ("recon", "modelnet40"): (5e-4, 0.05, 300, 10, 32),
    ("pointgpt_l", "scanobjectnn-obj_bg"): (1e-4, 0.05, 50, 10, 64),
    ("pointgpt_l", "scanobjectnn-obj_only"): (1e-4, 0.05, 50, 10, 64),
    ("pointgpt_l", "scanobjectnn-pb_t50_rs"): (1e-4, 0.05, 50, 10, 64),
    ("pointgpt_l", "modelnet40"): (1e-4, 0.05, 50, 10, 128),
    ("pointgpt_s", "scanobjectnn-obj_bg"): (5e-4, 0.05, 300, 10, 32),
    ("pointgpt_s", "scanobjectnn-obj_only"): (5e-4, 0.05, 300, 10, 32),
    ("pointgpt_s", "scanobjectnn-pb_t50_rs"): (1e-4, 0.05, 300, 30, 64),
    ("pointgpt_s", "modelnet40"): (1e-4, 0.05, 300, 10, 128),
    ("pointgpt_b", "scanobjectnn-obj_bg"): (1e-4, 0.05, 30, 10, 64),
    ("pointgpt_b", "scanobjectnn-obj_only"): (1e-4, 0.05, 50, 10, 64),
    ("pointgpt_b", "scanobjectnn-pb_t50_rs"): (1e-4, 0.05, 30, 10, 64),
    ("pointgpt_b", "modelnet40"): (1e-4, 0.05, 50, 10, 128),
}

# augmentation (docs/official.md §4.4, Q9): PointcloudRotate about y for ACT/ReCon on ScanObjectNN, else scale+translate
ROTATE_Y = {(b, d) for b in ("act", "recon") for d in DATASETS if d.startswith("scanobjectnn")}
# drop_path_rate: 0.1 for the 384-d Point-MAE family; unused (null) for PointGPT
DROP_PATH = {"point_mae": 0.1, "act": 0.1, "recon": 0.1, "pointgpt_l": None, "pointgpt_s": None, "pointgpt_b": None}

SETTINGS = sorted(OPTIM)
SMALL = "modelnet40-small.cpu"
#: pointgst's own settings on point_mae_tiny (not paper settings): its pretraining, and the methods benchmark
TINY = {"pretrain-modelnet40.point_mae_tiny", "modelnet40.point_mae_tiny", "fewshot-5w10s.point_mae_tiny"}
#: the four few-shot paper settings (fewshot section: way, shot)
FEWSHOT = {f"fewshot-{w}w{s}s.point_mae": (w, s) for w, s in ((5, 10), (5, 20), (10, 10), (10, 20))}
#: part segmentation: the official Point-MAE setting on the Point-MAE-architecture backbones, and pointgst's CPU one
SEGMENTATION = {f"shapenetpart.{b}" for b in PAPER_BACKBONES + POINTGPT_SB} | {"shapenetpart.point_mae_tiny"}
#: the other papers' methods on Point-MAE at their official settings (tests/test_method_recipes.py)
METHOD_RECIPES = {f"{d}.point_mae.{m}" for m in ("dapt", "gaprompt", "idpt", "ppt") for d in DATASETS} | \
    {f"{d}.pointgpt_l.dapt" for d in DATASETS} | {f"{d}.recon.ppt" for d in DATASETS}


def _name(backbone: str, dataset: str) -> str:
    return f"{dataset}.{backbone}"


def _yaml_files() -> dict[str, Path]:
    return {p.name[: -len(".yaml")]: p for p in RECIPE_DIR.glob("*.yaml")}


# ---------------------------------------------------------------------------------------------------------- files


def test_every_setting_exists():
    expected = {_name(b, d) for b in PAPER_BACKBONES + POINTGPT_SB for d in DATASETS} | {SMALL} | TINY | \
        set(FEWSHOT) | SEGMENTATION | METHOD_RECIPES
    assert len(expected) == 16 + 8 + 1 + 3 + 4 + 7 + 16 + 4 + 4
    assert set(list_recipes()) == expected
    assert list_recipes() == sorted(expected)
    assert set(_yaml_files()) == expected  # no stray file in recipes/
    assert (RECIPE_DIR / "__init__.py").is_file()


@pytest.mark.parametrize("name", sorted(_yaml_files()))
def test_every_file_spells_out_every_field(name):
    """No recipe relies on the dataclass defaults: a reader sees every number in the file."""
    raw = yaml.safe_load(_yaml_files()[name].read_text(encoding="utf-8"))
    few_shot = name.startswith("fewshot-")
    sections = {**SECTIONS, **({"fewshot": FewShotSpec} if few_shot else {})}
    assert set(raw) == {"description", *sections}
    assert isinstance(raw["description"], str) and "\n" not in raw["description"] and raw["description"]
    for section, cls in sections.items():
        assert set(raw[section]) == {f.name for f in fields(cls)}, section


@pytest.mark.parametrize("name", sorted(SEGMENTATION - {"shapenetpart.point_mae_tiny"}))
def test_segmentation_recipes_follow_the_official_segmentation_settings(name):
    """The official segmentation scripts' defaults (docs/segmentation.md §3, §6)."""
    recipe = load_recipe(name)
    tags = {"point_mae": "point_mae.pretrain", "act": "point_mae.act", "recon": "point_mae.recon",
            **{size: f"{size}.pretrain" for size in (*POINTGPT_SB, "pointgpt_l")}}
    assert recipe.backbone.name == tags[name.removeprefix("shapenetpart.")]
    assert (recipe.backbone.num_group, recipe.backbone.group_size, recipe.backbone.drop_path_rate) == (128, 32, 0.1)
    assert (recipe.data.dataset, recipe.data.num_classes, recipe.data.npoints, recipe.data.augmentation) == \
        ("shapenetpart", 50, 2048, "scale_shift")
    t = recipe.train
    # Point-MAE's segmentation/main.py: batch 16, 10 warmup epochs; PointGPT's: batch 32, 30 warmup epochs
    batch, warmup = (32, 30) if name.startswith("shapenetpart.pointgpt") else (16, 10)
    assert (t.epochs, t.warmup_epochs, t.batch_size, t.lr, t.weight_decay, t.grad_clip, t.lr_min) == \
        (300, warmup, batch, 2e-4, 0.05, 10.0, 1e-6)
    assert recipe.eval.vote == 0 and recipe.train.selection == "val"


def test_segmentation_recipe_rules():
    with pytest.raises(RecipeError, match="val_fraction"):
        load_recipe("shapenetpart.point_mae", ["data.val_fraction=0.1"])
    with pytest.raises(RecipeError, match="voting is a classification protocol"):
        load_recipe("shapenetpart.point_mae", ["eval.vote=10"])
    assert load_recipe("shapenetpart.point_mae", ["train.selection=last"]).train.selection == "last"


@pytest.mark.parametrize("name", sorted(FEWSHOT))
def test_fewshot_paper_recipes_follow_the_point_mae_fewshot_config(name):
    """Point-MAE's cfgs/fewshot.yaml (docs/official.md §4.7) on the ModelNet40 paper setting."""
    recipe, paper = load_recipe(name), load_recipe("modelnet40.point_mae")
    way, shot = FEWSHOT[name]
    assert recipe.fewshot == FewShotSpec(way=way, shot=shot, query_per_class=20, folds="0-9", episodes=None,
                                         episode_seed=0)
    assert (recipe.train.epochs, recipe.train.warmup_epochs, recipe.train.lr, recipe.train.weight_decay,
            recipe.train.batch_size, recipe.train.grad_clip) == (150, 10, 5e-4, 0.05, 32, 10.0)
    assert recipe.train.selection == "test" and recipe.data.val_fraction == 0.0 and recipe.eval.vote == 0
    assert recipe.backbone == paper.backbone and recipe.method == paper.method
    assert (recipe.data.npoints, recipe.data.point_all, recipe.data.root) == (1024, 1200, paper.data.root)


@pytest.mark.parametrize("backbone,dataset", SETTINGS)
def test_hyper_parameters_match_the_published_configs(backbone, dataset):
    r = load_recipe(_name(backbone, dataset))
    lr, wd, epochs, warmup, bs = OPTIM[backbone, dataset]
    variant, fmt, root, classes, npoints, point_all, groups, group_size, vote = DATA[dataset]
    assert r.name == _name(backbone, dataset)

    assert r.backbone == BackboneSpec(name=TAGS[backbone], pretrained=True, num_group=groups,
                                      group_size=group_size, drop_path_rate=DROP_PATH[backbone])
    assert r.method == MethodSpec(name="pcsa", options={"rank": 36, "local_size": 32})
    assert r.data == DataSpec(
        dataset="modelnet40" if dataset == "modelnet40" else "scanobjectnn", variant=variant, format=fmt, root=root,
        num_classes=classes, npoints=npoints, point_all=point_all,
        augmentation="rotate_y" if (backbone, dataset) in ROTATE_Y else "scale_translate",
        val_fraction=0.1, max_train_samples=None, max_test_samples=None)
    assert r.train == TrainSpec(epochs=epochs, warmup_epochs=warmup, batch_size=bs, lr=lr, lr_min=1e-6,
                                warmup_lr_init=1e-6, weight_decay=wd, grad_clip=10.0, schedule="official",
                                selection="val", seed=0, num_workers=r.train.num_workers, label_smoothing=0.0)
    assert r.eval == EvalSpec(vote=vote, vote_repeats=1)
    assert isinstance(r.train.lr, float) and isinstance(r.train.grad_clip, float)
    if backbone in POINTGPT_SB:
        assert "PointGST published no" in r.description


def test_hyper_parameter_spot_checks():
    """A few settings written out in full, independent of the tables above."""
    r = load_recipe("scanobjectnn-pb_t50_rs.recon")
    assert (r.backbone.name, r.train.lr, r.train.batch_size, r.train.epochs, r.data.augmentation) == \
        ("point_mae.recon", 0.0005, 32, 300, "rotate_y")
    r = load_recipe("scanobjectnn-obj_only.point_mae")
    assert r.data.augmentation == "scale_translate" and r.backbone.drop_path_rate == 0.1
    r = load_recipe("modelnet40.act")
    assert r.data.augmentation == "scale_translate" and r.eval.vote == 10 and r.backbone.num_group == 64
    r = load_recipe("modelnet40.pointgpt_l")
    assert (r.backbone.name, r.train.lr, r.train.batch_size, r.train.epochs) == \
        ("pointgpt_l.post_pretrain", 0.0001, 128, 50)
    r = load_recipe("scanobjectnn-pb_t50_rs.pointgpt_s")
    assert (r.train.lr, r.train.batch_size, r.train.warmup_epochs) == (0.0001, 64, 30)


def test_small_cpu_recipe():
    r = load_recipe(SMALL)
    assert r.backbone == BackboneSpec(name="point_mae_tiny.modelnet40", pretrained=True, num_group=64, group_size=32,
                                      drop_path_rate=0.1)  # the shipped backbone: learning in minutes, no download
    assert r.method.name == "pcsa"
    d = r.data
    assert (d.dataset, d.variant, d.format, d.root, d.num_classes) == \
        ("modelnet40", None, "npz", "../shared/data/modelnet40_1024", 40)
    assert (d.npoints, d.point_all, d.max_train_samples, d.max_test_samples, d.val_fraction) == \
        (1024, 1024, 1600, 400, 0.1)
    t = r.train
    assert (t.epochs, t.warmup_epochs, t.batch_size, t.lr, t.schedule, t.selection, t.num_workers) == \
        (4, 1, 16, 2e-3, "cosine", "val", 0)
    assert r.eval.vote == 0
    pack = RECIPE_DIR.parent / d.root / "train.npz"
    if not pack.parent.is_dir():
        pytest.skip("local ModelNet40 pack not present")
    assert pack.is_file()


# ------------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("name", [SMALL, "scanobjectnn-obj_bg.act", "modelnet40.pointgpt_b"])
def test_round_trip(name, tmp_path):
    r = load_recipe(name)
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain types only
    assert Recipe.from_dict(d) == r
    assert Recipe.from_dict(json.loads(json.dumps(d))) == r
    d["method"]["options"]["rank"] = 8  # to_dict is a copy
    assert r.method.options["rank"] == 36
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(r.to_dict()))
    assert load_recipe(str(path)) == r  # the dict's name wins over the file stem


def test_all_recipes_round_trip():
    for name in list_recipes():
        r = load_recipe(name)
        assert Recipe.from_dict(r.to_dict()) == r


def test_defaults_and_partial_dicts():
    assert Recipe.from_dict({}) == Recipe()
    assert Recipe().name == "custom"
    r = Recipe.from_dict({"train": {"epochs": 20}, "eval": None}, name="mine")
    assert (r.name, r.train.epochs, r.train.lr, r.eval) == ("mine", 20, TrainSpec().lr, EvalSpec())


def test_load_from_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("description: mine\ntrain: {epochs: 20, lr: 1e-3}\ndata: {root: /x/y}\n")
    r = load_recipe(str(path))
    assert (r.name, r.description, r.train.epochs, r.train.lr, r.data.root) == ("tiny", "mine", 20, 1e-3, "/x/y")
    assert load_recipe(path, ["train.epochs=30"]).train.epochs == 30  # os.PathLike accepted


def test_loading_imports_no_torch():
    code = ("import sys; from pointgst.recipe import load_recipe, list_recipes; "
            "[load_recipe(n) for n in list_recipes()]; "
            "load_recipe('modelnet40.point_mae', ['train.epochs=20']); "
            "bad = [m for m in ('torch', 'numpy', 'peft') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=RECIPE_DIR.parent)


# ------------------------------------------------------------------------------------------------------- overrides


def test_overrides_coerce_and_nest():
    r = load_recipe("scanobjectnn-obj_bg.point_mae", [
        "train.epochs=20", "train.lr=1", "train.weight_decay=0", "data.root=/x/y", "backbone.pretrained=false",
        "data.max_train_samples=100", "data.max_test_samples=null", "backbone.drop_path_rate=null",
        "method.options.rank=16", "method.options.preset=official", "method.options.backbone_options.k=1",
        "eval.vote=10"])
    assert r.train.epochs == 20
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)  # int -> float
    assert r.train.weight_decay == 0.0 and isinstance(r.train.weight_decay, float)
    assert r.data.root == "/x/y"
    assert r.backbone.pretrained is False
    assert (r.data.max_train_samples, r.data.max_test_samples, r.backbone.drop_path_rate) == (100, None, None)
    assert r.method.options == {"rank": 16, "local_size": 32, "preset": "official", "backbone_options": {"k": 1}}
    assert r.eval.vote == 10
    assert r.name == "scanobjectnn-obj_bg.point_mae"
    assert load_recipe("scanobjectnn-obj_bg.point_mae").train.epochs == 300  # the built-in recipe is untouched


def test_override_values():
    def one(override):
        return load_recipe("modelnet40.point_mae", [override])

    assert one("train.lr=5e-4").train.lr == 5e-4  # exponent without a dot is a float (YAML 1.2)
    assert one("train.lr=2.5E-4").train.lr == 2.5e-4
    assert one("backbone.pretrained=weights/pointgpt_l_post").backbone.pretrained == "weights/pointgpt_l_post"
    assert one("backbone.pretrained=true").backbone.pretrained is True
    assert one("data.root=2024").data.root == "2024"  # digits in a text field stay text
    assert one("description=a = b").description == "a = b"  # split at the first '='
    assert one(" train.epochs = 20 ").train.epochs == 20
    assert one("train.grad_clip=null").train.grad_clip is None
    assert one("method.options={rank: 8}").method.options == {"rank": 8}
    r = load_recipe("modelnet40.point_mae", ["train.selection=test", "data.val_fraction=0"])  # official protocol
    assert (r.train.selection, r.data.val_fraction) == ("test", 0.0)
    assert load_recipe("modelnet40.point_mae", ["train.epochs=20", "train.epochs=40"]).train.epochs == 40


# ---------------------------------------------------------------------------------------------------------- errors


def test_recipe_error_is_value_error():
    assert issubclass(RecipeError, ValueError)


@pytest.mark.parametrize("override,needles", [
    ("train.epoch=5", ["'epoch'", "'train'", "did you mean 'epochs'", "warmup_epochs", "batch_size"]),
    ("trian.epochs=5", ["'trian'", "did you mean 'train'", "backbone, method, data, train, eval"]),
    ("data.augmentaton=none", ["'augmentaton'", "did you mean 'augmentation'", "val_fraction"]),
    ("train.epochs=five", ["train.epochs", "must be int", "'five'", "(str)"]),
    ("train.epochs=5.5", ["train.epochs", "must be int", "5.5", "(float)"]),
    ("train.epochs=true", ["train.epochs", "must be int", "True", "(bool)"]),
    ("backbone.num_group=null", ["backbone.num_group", "must be int", "(null)"]),
    ("train.lr=fast", ["train.lr", "must be float", "'fast'"]),
    ("method.options=3", ["method.options", "must be a mapping", "3"]),
    ("backbone.pretrained=[1]", ["backbone.pretrained", "bool or str", "[1]", "(list)"]),
    ("train.epochs.x=1", ["train.epochs is not a mapping"]),
    ("method.options.rank.x=1", ["method.options.rank is 36, not a mapping"]),
    ("method=pcsa", ["name a field of section", "method.<field>", "name, options"]),
    ("description.x=1", ["'description' has no fields"]),
    ("train.lr=[1", ["not valid YAML"]),
])
def test_override_errors(override, needles):
    with pytest.raises(RecipeError) as err:
        load_recipe("modelnet40.point_mae", [override])
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert override in str(err.value)


@pytest.mark.parametrize("override", ["train.epochs", "=5", " =5", "train..lr=1", ".epochs=1", "train.=1", ""])
def test_malformed_overrides(override):
    with pytest.raises(RecipeError, match="malformed override"):
        load_recipe("modelnet40.point_mae", [override])


def test_overrides_must_be_a_sequence_of_strings():
    with pytest.raises(RecipeError, match="wrap it in a list"):
        load_recipe("modelnet40.point_mae", "train.epochs=5")
    with pytest.raises(RecipeError, match="must be a 'key=value' string"):
        load_recipe("modelnet40.point_mae", [5])


@pytest.mark.parametrize("overrides,needles", [
    (["data.val_fraction=1"], ["data.val_fraction", "in [0, 1)"]),
    (["data.val_fraction=-0.1"], ["data.val_fraction", "in [0, 1)"]),
    (["data.val_fraction=0"], ["val_fraction is 0", "train.selection must be 'test' or 'last'"]),
    (["train.selection=last"], ["train.selection=last", "data.val_fraction=0"]),
    (["data.augmentation=rotate"],
     ["data.augmentation", "'scale_translate', 'scale_shift', 'rotate_y', 'none'", "did you mean 'rotate_y'"]),
    (["train.schedule=step"], ["train.schedule", "'cosine', 'official'"]),
    (["train.selection=best"], ["train.selection", "'val', 'test', 'last'"]),
    (["data.dataset=shapenet"],
     ["data.dataset", "'scanobjectnn', 'modelnet40', 'modelnet10', 'pack', 'folder', 'shapenetpart'"]),
    (["data.format=h5"], ["data.format", "'npz', 'normal_resampled', 'dat'"]),
    (["data.variant=obj_bg"], ["data.variant", "null for dataset 'modelnet40'"]),
    (["data.dataset=scanobjectnn", "data.variant=hardest", "data.format=h5", "data.num_classes=15"],
     ["data.variant", "'obj_bg', 'obj_only', 'pb_t50_rs'", "'hardest'"]),
    (["data.dataset=folder"], ["data.format", "null", "'normal_resampled'"]),
    (["data.num_classes=15"], ["data.num_classes", "40 for dataset 'modelnet40'"]),
    (["data.npoints=2048"], ["data.point_all", ">= data.npoints (2048)", "1200"]),
    (["train.epochs=0"], ["train.epochs", "positive"]),
    (["train.epochs=10"], ["train.warmup_epochs", "< train.epochs (10)"]),
    (["train.warmup_epochs=-1"], ["train.warmup_epochs"]),
    (["train.batch_size=0"], ["train.batch_size", "positive"]),
    (["train.lr=0"], ["train.lr", "> 0"]),
    (["train.grad_clip=0"], ["train.grad_clip", "null"]),
    (["train.label_smoothing=1"], ["train.label_smoothing"]),
    (["eval.vote=-1"], ["eval.vote"]),
    (["eval.vote_repeats=0"], ["eval.vote_repeats"]),
    (["backbone.drop_path_rate=1.5"], ["backbone.drop_path_rate"]),
    (["backbone.num_group=2000"], ["backbone.num_group", "<= data.npoints (1024)"]),
    (["backbone.pretrained="], ["backbone.pretrained", "bool or str", "(null)"]),
    (["backbone.name= ''"], ["backbone.name", "non-empty"]),
    (["data.max_train_samples=0"], ["data.max_train_samples", "positive"]),
])
def test_invalid_values(overrides, needles):
    with pytest.raises(RecipeError) as err:
        load_recipe("modelnet40.point_mae", overrides)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


@pytest.mark.parametrize("d,needles", [
    ({"train": {"epoch": 5}}, ["unknown key 'epoch'", "section 'train'", "did you mean 'epochs'", "valid keys"]),
    ({"evaluation": {}}, ["unknown key 'evaluation'", "top level", "did you mean 'eval'"]),
    ({"train": {"epochs": "300"}}, ["train.epochs must be int", "'300'", "(str)"]),
    ({"train": {"epochs": True}}, ["train.epochs must be int", "(bool)"]),
    ({"data": {"root": None}}, ["data.root must be str", "(null)"]),
    ({"method": {"options": {1: 2}}}, ["method.options", "string keys"]),
    ({"data": [1, 2]}, ["section 'data' must be a mapping"]),
    ({"description": 3}, ["description must be str"]),
    ([1, 2], ["must be a mapping"]),
])
def test_from_dict_errors(d, needles):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(d)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_dataclasses_validate_on_construction():
    assert TrainSpec(lr=1).lr == 1.0
    with pytest.raises(RecipeError, match="train.epochs must be int"):
        TrainSpec(epochs="5")
    with pytest.raises(RecipeError, match="val_fraction is 0"):
        Recipe(data=DataSpec(val_fraction=0.0))
    assert Recipe(data=DataSpec(val_fraction=0.0), train=TrainSpec(selection="test")).data.val_fraction == 0.0


@pytest.mark.parametrize("name,close", [
    ("modelnet40.pointmae", "modelnet40.point_mae"),
    ("scanobjectnn-objbg.act", "scanobjectnn-obj_bg.act"),
    ("scanobjectnn-pb_t50_rs.recon2", "scanobjectnn-pb_t50_rs.recon"),
])
def test_unknown_recipe_suggests_close_matches(name, close):
    with pytest.raises(RecipeError) as err:
        load_recipe(name)
    assert f"unknown recipe {name!r}" in str(err.value) and close in str(err.value)


def test_unknown_recipe_without_close_match_lists_all():
    with pytest.raises(RecipeError) as err:
        load_recipe("zzz")
    assert SMALL in str(err.value) and "modelnet40.point_mae" in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(str(empty))
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {epochs: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(broken))
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 5\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(typo))
    assert str(typo) in str(err.value) and "did you mean 'epochs'" in str(err.value)


# ------------------------------------------------------------------------------- finite floats, num_points, files

FLOAT_FIELDS = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)
                if "float" in str(f.type)]


def test_float_fields_are_known():
    assert {"train.lr", "train.grad_clip", "data.val_fraction", "backbone.drop_path_rate"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("key", FLOAT_FIELDS)
@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "nan", "inf", "-Infinity", "1e400"])
def test_float_fields_must_be_finite(key, text):
    override = f"{key}={text}"
    with pytest.raises(RecipeError) as err:
        load_recipe("modelnet40.point_mae", [override])
    message = str(err.value)
    assert f"{key} must be a finite number" in message and override in message, message
    assert "\n" not in message


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_rejected_everywhere(value, tmp_path):
    with pytest.raises(RecipeError, match="train.lr must be a finite number"):
        TrainSpec(lr=value)
    with pytest.raises(RecipeError, match="backbone.drop_path_rate must be a finite number"):
        Recipe.from_dict({"backbone": {"drop_path_rate": value}})
    spec = DataSpec()
    with pytest.raises(RecipeError, match="data.val_fraction must be a finite number"):
        spec.val_fraction = value
    assert spec.val_fraction == 0.1
    path = tmp_path / "inf.yaml"
    path.write_text("train:\n  weight_decay: .inf\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert str(path) in str(err.value) and "train.weight_decay must be a finite number" in str(err.value)


def test_num_points():
    assert DataSpec().num_points is None
    assert load_recipe("modelnet40.point_mae").data.num_points is None
    r = load_recipe("modelnet40.point_mae", ["data.dataset=folder", "data.format=null", "data.root=clouds",
                                             "data.num_classes=3", "data.num_points=2048"])
    assert (r.data.dataset, r.data.num_points) == ("folder", 2048)
    assert asdict(r.data)["num_points"] == 2048  # what the engine hands to build_dataset
    assert Recipe.from_dict(r.to_dict()) == r
    assert load_recipe("modelnet40.point_mae", ["data.num_points=512", "data.num_points=null"]).data.num_points is None
    assert DataSpec(num_points=1).num_points == 1
    description = DataSpec.__pydantic_fields__["num_points"].description
    assert "folder" in description and "normal_resampled" in description


@pytest.mark.parametrize("text,needles", [
    ("0", ["data.num_points", "a positive integer or null", "got 0"]),
    ("-5", ["data.num_points", "a positive integer or null"]),
    ("2.5", ["data.num_points", "must be int or null", "(float)"]),
    ("true", ["data.num_points", "must be int or null", "(bool)"]),
    ("many", ["data.num_points", "must be int or null", "'many' (str)"]),
])
def test_num_points_errors(text, needles):
    with pytest.raises(RecipeError) as err:
        load_recipe("modelnet40.point_mae", [f"data.num_points={text}"])
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_assignment_is_validated():
    r = load_recipe(SMALL)
    r.data.max_train_samples = 80
    r.train.lr = 1
    assert r.data.max_train_samples == 80 and r.train.lr == 1.0 and isinstance(r.train.lr, float)
    for section, key, value, needle in [
        (r.data, "max_train_samples", 0, "data.max_train_samples must be a positive integer or null, got 0"),
        (r.data, "max_train_samples", True, "data.max_train_samples must be int or null, got True (bool)"),
        (r.data, "point_all", 10, "data.point_all must be >= data.npoints (1024), got 10"),  # a model validator
        (r.train, "epochs", "5", "train.epochs must be int, got '5' (str)"),
        (r.data, "max_train_sample", 5, "unknown key 'max_train_sample' in section 'data'; did you mean"),
    ]:
        before = getattr(section, key, None)
        with pytest.raises(RecipeError) as err:
            setattr(section, key, value)
        assert needle in str(err.value), str(err.value)
        assert getattr(section, key, None) == before  # a rejected value does not stay
    with pytest.raises(RecipeError, match="val_fraction is 0"):
        r.data = DataSpec(val_fraction=0.0)
    assert r.data.val_fraction == 0.1


def test_errors_are_one_line_recipe_errors():
    cases = [lambda: TrainSpec(epochs=True), lambda: BackboneSpec(pretrained=[1]), lambda: DataSpec(variant=3),
             lambda: Recipe(data=3), lambda: MethodSpec(options={1: 2}), lambda: EvalSpec(vot=1),
             lambda: load_recipe("modelnet40.point_mae", ["train.lr=.nan", "train.epochs=x"])]
    for case in cases:
        with pytest.raises(RecipeError) as err:
            case()
        assert type(err.value) is RecipeError and err.value.__cause__ is None
        assert "\n" not in str(err.value) and "pydantic" not in str(err.value), str(err.value)


@pytest.mark.parametrize("content,needles", [
    (b"train:\n  epochs: \xff5\n", ["not valid YAML", "not UTF-8", "0xff"]),  # latin-1 / binary
    (b"\xff\xfet\x00r\x00a\x00i\x00n\x00", ["not valid YAML", "not UTF-8"]),  # UTF-16
    (b"train: {epochs: 5}\x00\x01\x02", ["not valid YAML", "#x0000"]),  # NUL bytes
    (b"train:\n  epochs: 5\n\tlr: 1\n", ["not valid YAML", "line 3"]),  # tab indentation
    (b"train: !!python/object:os.system {}\n", ["not valid YAML", "constructor"]),  # unsafe tag
    (b"a: " + b"[" * 3000 + b"]" * 3000, ["not valid YAML"]),  # nested too deeply
])
def test_corrupt_files(tmp_path, content, needles):
    path = tmp_path / "corrupt.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_folder_is_not_a_recipe_file(tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(RecipeError, match="is not a file"):
        load_recipe(str(folder))
