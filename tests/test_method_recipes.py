"""The recipes ``<dataset>.point_mae.<method>`` of DAPT, IDPT, GAPrompt and PPT, ``<dataset>.pointgpt_l.dapt``
(PointGST's DAPT on PointGPT-L) and ``<dataset>.recon.ppt`` (PPT's ReCon configs): each is the PointGST recipe of the same dataset and backbone with the method's official
options and the official settings that differ (drop path, learning rate, augmentation, batch: the per-dataset tables
of ``docs/peft_methods/``), and ``pointgst params <recipe>`` prints the official code's trainable count (measured
under each repository's own trainable rule, head included)."""

import dataclasses
import re

import pytest

from pointgst.recipe import MethodSpec, load_recipe

from .cli_runs import run_cli_here

DATASETS = ("scanobjectnn-obj_bg", "scanobjectnn-obj_only", "scanobjectnn-pb_t50_rs", "modelnet40")
SCAN = DATASETS[:3]

GPT_DAPT = {"rank": 64, "adapter_dropout": 0.0, "prompt_token": "joint", "patch_token": "max"}
#: (method, dataset) -> (method options, drop_path_rate, lr, augmentation) on point_mae
SETTINGS = {
    **{("dapt", d): (options, drop, 5e-4, "scale_translate") for d, options, drop in (
        ("modelnet40", {"rank": 72, "adapter_dropout": 0.0, "prompt_token": "none", "patch_token": "max"}, 0.1),
        ("scanobjectnn-obj_bg", {"rank": 64, "adapter_dropout": 0.5, "prompt_token": "mean", "patch_token": "max"},
         0.3),
        ("scanobjectnn-obj_only", {"rank": 64, "adapter_dropout": 0.0, "prompt_token": "mean",
                                   "patch_token": "none"}, 0.1),
        ("scanobjectnn-pb_t50_rs", {"rank": 64, "adapter_dropout": 0.2, "prompt_token": "mean",
                                    "patch_token": "max"}, 0.3))},
    ("ppt", "modelnet40"): ({}, 0.3, 1e-4, "scale_translate"),
    **{("ppt", d): ({}, 0.3, 5e-4, "rotate_y") for d in SCAN},
    ("idpt", "modelnet40"): ({}, 0.1, 5e-4, "scale_translate"),
    ("idpt", "scanobjectnn-obj_bg"): ({"head_input": "prompt"}, 0.1, 5e-4, "rotate_y"),
    ("idpt", "scanobjectnn-obj_only"): ({"prompt_block": 6}, 0.1, 5e-4, "rotate_y"),
    ("idpt", "scanobjectnn-pb_t50_rs"): ({}, 0.1, 5e-4, "rotate_y"),
    **{("gaprompt", d): ({"point_prompts": n, "perturbation": shift, "propagation": where}, 0.1, 5e-4, "rotate_y")
       for d, n, shift, where in (("modelnet40", 5, 0.05, "after_attention"),
                                  ("scanobjectnn-obj_bg", 10, 0.2, "before_attention"),
                                  ("scanobjectnn-obj_only", 10, 0.1, "after_attention"),
                                  ("scanobjectnn-pb_t50_rs", 5, 0.8, "after_attention"))},
}

#: trainable parameters of the official code at the paper settings (the PB_T50_RS and ModelNet40 figures are the
#: ones the issue measured; OBJ_BG / OBJ_ONLY follow from their head and option differences, docs/peft_methods/)
COUNTS = {
    ("dapt", "scanobjectnn-pb_t50_rs"): 1_087_771, ("dapt", "scanobjectnn-obj_bg"): 1_087_771,
    ("dapt", "scanobjectnn-obj_only"): 989_467, ("dapt", "modelnet40"): 1_069_716,
    ("ppt", "scanobjectnn-pb_t50_rs"): 1_042_191, ("ppt", "scanobjectnn-obj_bg"): 1_042_191,
    ("ppt", "scanobjectnn-obj_only"): 1_042_191, ("ppt", "modelnet40"): 1_048_616,
    ("idpt", "scanobjectnn-pb_t50_rs"): 1_696_783, ("idpt", "scanobjectnn-obj_bg"): 1_500_175,
    ("idpt", "scanobjectnn-obj_only"): 1_696_783, ("idpt", "modelnet40"): 1_703_208,
    ("gaprompt", "scanobjectnn-pb_t50_rs"): 628_147, ("gaprompt", "scanobjectnn-obj_bg"): 628_162,
    ("gaprompt", "scanobjectnn-obj_only"): 628_162, ("gaprompt", "modelnet40"): 630_476,
}
#: PointGST's DAPT on PointGPT-L under its own trainable rule (docs/peft_methods/dapt.md §9.2)
GPT_L_COUNTS = {"modelnet40": 4_244_544, **{d: 4_238_119 for d in SCAN}}


@pytest.mark.parametrize("dataset", DATASETS)
def test_pointgpt_l_dapt_recipe_is_pointgsts_setting_with_its_dapt_options_and_batch(dataset):
    recipe, pcsa = load_recipe(f"{dataset}.pointgpt_l.dapt"), load_recipe(f"{dataset}.pointgpt_l")
    assert recipe.method == MethodSpec(name="dapt", options=GPT_DAPT)
    assert recipe.train.batch_size == (64 if dataset == "modelnet40" else 32)  # PointGST's DAPT configs' total_bs
    assert recipe.backbone == pcsa.backbone and recipe.data == pcsa.data and recipe.eval == pcsa.eval
    assert dataclasses.replace(recipe.train, batch_size=pcsa.train.batch_size) == pcsa.train


@pytest.mark.parametrize("dataset", DATASETS)
def test_recon_ppt_recipe_is_the_point_mae_one_on_the_recon_weights(dataset):
    """PPT's ReCon configs differ from its Point-MAE ones only in keys that equal the defaults (the prompt grouping)."""
    recipe, point_mae = load_recipe(f"{dataset}.recon.ppt"), load_recipe(f"{dataset}.point_mae.ppt")
    assert recipe.backbone == dataclasses.replace(point_mae.backbone, name="point_mae.recon")
    assert (recipe.method, recipe.data, recipe.train, recipe.eval) == \
        (point_mae.method, point_mae.data, point_mae.train, point_mae.eval)


@pytest.mark.parametrize("method,dataset", sorted(SETTINGS))
def test_method_recipe_is_the_paper_setting_with_the_official_method_settings(method, dataset):
    recipe, pcsa = load_recipe(f"{dataset}.point_mae.{method}"), load_recipe(f"{dataset}.point_mae")
    options, drop_path, lr, augmentation = SETTINGS[method, dataset]
    assert recipe.method == MethodSpec(name=method, options=options)
    assert recipe.backbone.drop_path_rate == drop_path and recipe.train.lr == lr
    assert recipe.data.augmentation == augmentation
    assert recipe.backbone.name == pcsa.backbone.name and recipe.backbone.num_group == pcsa.backbone.num_group
    assert recipe.data.npoints == pcsa.data.npoints and recipe.data.num_classes == pcsa.data.num_classes
    same = ("epochs", "warmup_epochs", "batch_size", "weight_decay", "grad_clip", "lr_min", "schedule", "selection")
    assert all(getattr(recipe.train, f) == getattr(pcsa.train, f) for f in same)
    assert recipe.eval == pcsa.eval and method.upper() in recipe.description.upper()


@pytest.mark.parametrize("recipe", sorted(f"{d}.point_mae.{m}" for m, d in COUNTS) +
                         [f"{d}.pointgpt_l.dapt" for d in DATASETS])
def test_params_of_a_method_recipe_prints_the_official_trainable_count(recipe, capsys):
    dataset, backbone, method = recipe.split(".")
    code, out, err = run_cli_here(["params", recipe], capsys)
    assert code == 0, err
    count = re.search(r"trainable parameters\s+([\d,]+)", out).group(1)
    expected = COUNTS[method, dataset] if backbone == "point_mae" else GPT_L_COUNTS[dataset]
    assert int(count.replace(",", "")) == expected, out
