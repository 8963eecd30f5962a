"""The ``forward`` methods (DAPT, IDPT, GAPrompt, PPT) through the whole pipeline of a user: ``pointgst train`` on the
shipped ``point_mae_tiny.modelnet40`` backbone with the method picked by ``--set method.name=...``, then ``pointgst
eval`` of the run folder, which rebuilds the model from the saved adapter and must give the accuracy the run
reported. (Their fidelity to the official code: tests/test_<method>.py; one step, save and fresh-process reload:
tests/test_contract.py.)"""

import json
from pathlib import Path

import pytest

from pointgst.adapters import FORWARD, METHODS

from .cli_runs import finish, run_cli_here, start_cli
from .test_training import TINY, needs_data

FORWARD_METHODS = [name for name in METHODS.names(combinations=False) if METHODS[name].attaches == FORWARD]


def test_every_forward_method_is_listed():
    assert FORWARD_METHODS == ["dapt", "idpt", "gaprompt", "ppt"]


@needs_data
@pytest.mark.parametrize("method", [FORWARD_METHODS[0]] + [pytest.param(m, marks=pytest.mark.slow)
                                                          for m in FORWARD_METHODS[1:]])  # the rest with -m slow
def test_train_on_the_shipped_backbone_then_eval_gives_the_reported_accuracy(method, tmp_path: Path, capsys):
    run = tmp_path / method
    overrides = TINY + ["backbone.name=point_mae_tiny.modelnet40", f"method.name={method}", "method.options={}",
                        "train.epochs=1", "train.warmup_epochs=0", "backbone.group_size=16", "data.npoints=256",
                        "data.point_all=256"]
    out = finish(start_cli("train", "modelnet40-small.cpu", run, overrides))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_parameters"] > 0 and 0 <= summary["test_acc"] <= 1 and "test_acc" in out
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["method"] == method
    code, printed, err = run_cli_here(["eval", run, "--device", "cpu"], capsys)
    assert code == 0, err[-3000:]
    assert json.loads((run / "eval.json").read_text())["test_acc"] == pytest.approx(summary["test_acc"])
