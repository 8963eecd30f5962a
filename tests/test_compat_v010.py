"""What pointgst 0.1.0 saved still loads and gives the outputs it gave then (``tests/fixtures/v0_1_0``, written by
0.1.0 before the redesign; ``make_fixtures.py`` there says how)."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pointgst
from pointgst.demo import sample_data_folder
from pointgst.training import evaluate_run
from pointgst.training.run_files import load_run_file, load_trainable_state, read_run_recipe
from pointgst.training.setup import build_model

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1_0"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
EXPECTED = load_file(str(FIXTURES / "expected.safetensors"))
#: 0.1.0 saved the cls token and position only for the methods that train them
SAVED_TOKENS = {"pcsa", "dcnv4", "pcsa+deepla_head"}


def sample_points() -> torch.Tensor:
    return torch.from_numpy(np.load(sample_data_folder() / "test.npz")["points"][:4])


def load(method: str, seed: int) -> tuple[torch.Tensor, list[str]]:
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pointgst.load_adapter(FIXTURES / MANIFEST["adapters"][method]["folder"]).eval()
    with torch.no_grad():
        logits = model(sample_points())
    return logits, [str(w.message) for w in caught if "0.1.0" in str(w.message)]


@pytest.mark.parametrize("method", sorted(SAVED_TOKENS))
def test_adapters_that_saved_everything_reproduce_under_any_seed(method):
    logits, warned = load(method, seed=12345)
    assert (logits - EXPECTED[method]).abs().max().item() <= 1e-6
    assert not warned


@pytest.mark.parametrize("method", sorted(set(MANIFEST["adapters"]) - SAVED_TOKENS))
def test_adapters_without_their_cls_token_warn_and_reproduce_with_the_run_seed(method):
    logits, warned = load(method, seed=MANIFEST["seed"])
    assert (logits - EXPECTED[method]).abs().max().item() <= 1e-6
    assert len(warned) == 1 and "torch.manual_seed" in warned[0] and "cls token" in warned[0]
    if method != "deepla_head":  # its fixture's logits barely depend on the tokens (it reads the point tokens)
        other, _ = load(method, seed=MANIFEST["seed"] + 1)
        assert not torch.allclose(other, EXPECTED[method], atol=1e-6)  # the tokens matter: the seed recovers them


def test_a_run_folder_evaluates_and_rebuilds_its_model(tmp_path):
    run = tmp_path / "run_pcsa"
    shutil.copytree(FIXTURES / "run_pcsa", run)
    recipe_file = run / "recipe.yaml"  # 0.1.0 recorded the absolute path of the checkout that made it
    text = recipe_file.read_text()
    recorded_root = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                         if line.strip().startswith("root:"))
    recipe_file.write_text(text.replace(recorded_root, str(sample_data_folder())))
    recipe = read_run_recipe(run)
    model = build_model(recipe).eval()
    load_trainable_state(model, load_run_file(run / "best-trainable.pt"))
    with torch.no_grad():
        assert (model(sample_points()) - EXPECTED["run_pcsa"]).abs().max().item() <= 1e-6
    result = evaluate_run(run, device="cpu")
    assert result["count"] == MANIFEST["run_pcsa"]["count"]
    assert result["test_acc"] == pytest.approx(MANIFEST["run_pcsa"]["test_acc"], abs=1e-6)
