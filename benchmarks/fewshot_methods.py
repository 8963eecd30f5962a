"""Few-shot accuracy of every tuning method on ``point_mae_tiny.modelnet40``: writes ``benchmarks/FEWSHOT.md``.

Each (setting, method) is one ``pointgst fewshot fewshot-5w10s.point_mae_tiny --way W --shot K`` run with the method
set by ``--set``, on the same episodes (drawn once per setting from the local ModelNet40 pack into
``OUT/<setting>/episodes``). One budget for every row: ``--steps`` optimiser steps (default 250) of the recipe's batch
size, learning rate and cosine schedule (so 50 epochs of 5-way 10-shot's 50 support shapes and 13 epochs of 10-way
20-shot's 200: the same number of updates and of shapes seen), about 10 warmup steps, and ``train.selection=last``
(the last epoch is kept and reported: no model selection, so no per-epoch pass over the test shapes). The command
resumes: finished folds are read back, so the table may be built over several sittings (rerun the same command).

Reported per row: the mean ± std over folds of the test accuracy, the mean last-epoch training accuracy (augmented
batches, dropout on), trainable parameters and the summed training time; per setting, each method's per-fold
difference to the linear probe (the same episodes, so the differences are paired). The budget check trains every
method again on ``--check-folds`` of every setting with twice the steps: if the accuracy barely moves, the budget
saturates training. Figures are printed and written, never asserted.

Usage (from the project root; about 1.5 hours on a 2-core CPU for the defaults)::

    python benchmarks/fewshot_methods.py
    python benchmarks/fewshot_methods.py --settings 5w10s --methods linear,pcsa --folds 0-1 --check-folds 0 \\
        --out /tmp/fs --results /tmp/FS.md
"""

import argparse
import json
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from modelnet40_methods import ENTRIES  # benchmarks/modelnet40_methods.py: the methods and their overrides

from pointgst.atomic import write_text_atomic
from pointgst.fewshot import draw_episodes
from pointgst.recipe import load_recipe, parse_folds

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "fewshot-5w10s.point_mae_tiny"
METHODS = ("linear", "pcsa", "dcnv4", "deepla_head", "lora", "full", "dapt", "idpt", "gaprompt", "ppt")
SETTINGS = {"5w10s": (5, 10), "5w20s": (5, 20), "10w10s": (10, 10), "10w20s": (10, 20)}
WARMUP_STEPS = 10


@dataclass(frozen=True)
class Budget:
    """Epochs and warmup epochs of a setting for about ``steps`` optimiser steps of ``batch`` shapes."""

    epochs: int
    warmup_epochs: int
    steps: int

    @classmethod
    def of(cls, way: int, shot: int, steps: int, batch: int) -> "Budget":
        per_epoch = math.ceil(way * shot / batch)
        epochs = math.ceil(steps / per_epoch)
        return cls(epochs, min(epochs - 1, math.ceil(WARMUP_STEPS / per_epoch)), epochs * per_epoch)

    def overrides(self) -> tuple[str, ...]:
        return (f"train.epochs={self.epochs}", f"train.warmup_epochs={self.warmup_epochs}", "train.selection=last")


def run_row(label: str, setting: str, folds: str, budget: Budget, out: Path, run: Path) -> dict:
    """One method on one setting into ``run`` (finished folds are skipped by the command itself); its figures."""
    way, shot = SETTINGS[setting]
    episodes = out / setting / "episodes"  # drawn once per setting by main()
    overrides = next(e.overrides for e in ENTRIES if e.label == label) + budget.overrides()
    command = ["pointgst", "fewshot", RECIPE, "--way", str(way), "--shot", str(shot), "--folds", folds,
               "--episodes", str(episodes), "--out", str(run), "--no-progress",
               *[arg for s in overrides for arg in ("--set", s)]]
    print(f"[{time.strftime('%H:%M:%S')}] {setting} {label}, {budget.epochs} epochs: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads((run / "fewshot.json").read_text())
    last_train = [json.loads((run / f"fold{row['fold']}" / "metrics.jsonl").read_text().splitlines()[-1])["train_acc"]
                  for row in result["per_fold"]]
    return {"setting": setting, "method": label, "folds": result["completed_folds"], "budget": budget,
            "per_fold": {row["fold"]: row["test_acc_last_epoch"] for row in result["per_fold"]},
            "mean": result["test_acc_last_epoch_mean"], "std": result["test_acc_last_epoch_std"],
            "train_acc": statistics.fmean(last_train), "trainable": result["per_fold"][0]["trainable_parameters"],
            "minutes": sum(row["train_seconds"] for row in result["per_fold"]) / 60}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> str:
    """``mean ± std`` over the common folds of ``a[f] - b[f]``, in percentage points (std 0 for one fold)."""
    values = [a[f] - b[f] for f in sorted(a.keys() & b.keys())]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):+.2f} ± {100 * std:.2f}" if values else ""


def markdown(rows: list[dict], checks: list[tuple[dict, dict]], steps: int, invocation: str) -> str:
    recipe = load_recipe(RECIPE)
    minutes = sum(r["minutes"] for r in rows) + sum(c[1]["minutes"] for c in checks)
    budgets = {r["setting"]: r["budget"] for r in rows}
    lines = [
        "# Few-shot: every tuning method on `point_mae_tiny.modelnet40`", "",
        f"Made by `{invocation}` (benchmarks/fewshot_methods.py) on {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, no GPU: "
        f"{minutes:.0f} min of training summed over the runs.", "",
        f"Budget, the same for every row: about {steps} optimiser steps of batch {recipe.train.batch_size} (AdamW lr "
        f"{recipe.train.lr:g}, cosine schedule after about {WARMUP_STEPS} warmup steps, seed {recipe.train.seed}, "
        f"recipe `{RECIPE}`): " + ", ".join(f"{s}: {b.epochs} epochs = {b.steps} steps, {b.warmup_epochs} warmup"
                                            for s, b in budgets.items()) +
        "; `train.selection=last`: the last epoch's model is tested, no epoch is picked on the test shapes. Episodes "
        "drawn from the local ModelNet40 pack (support shapes from its training split, 20 test shapes a class from "
        "its test split), the same episodes for every method. Test accuracy: mean ± std over folds. vs linear: the "
        "per-fold difference to the linear probe on the same episode, mean ± std in percentage points. Train acc.: "
        "the last epoch's accuracy on the augmented support batches with dropout on (the head's dropout is 0.5), "
        "mean over folds.", "",
        "| setting | method | folds | test acc. | vs linear | train acc. | trainable params | train min |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        linear = next((x for x in rows if x["setting"] == r["setting"] and x["method"] == "linear"), None)
        paired = "" if linear is None or r is linear else paired_difference(r["per_fold"], linear["per_fold"])
        lines.append(f"| {r['setting']} | {r['method']} | {r['folds']} | "
                     f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}% | {paired} | {100 * r['train_acc']:.1f}% | {r['trainable']:,} | {r['minutes']:.1f} |")
    if checks:
        lines += ["", "Budget check: the same methods and episodes trained with twice the steps (per-fold difference "
                      "in percentage points; differences near zero mean the budget saturates training).", "",
                  "| setting | folds | method | budget | twice the steps | difference |",
                  "|---|---|---|---:|---:|---:|"]
        for base, longer in checks:
            common = sorted(longer["per_fold"])
            lines.append(f"| {base['setting']} | {', '.join(map(str, common))} | {base['method']} | "
                         f"{100 * statistics.fmean(base['per_fold'][f] for f in common):.2f}% | "
                         f"{100 * longer['mean']:.2f}% | {paired_difference(longer['per_fold'], base['per_fold'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fewshot_methods", help="folder of the runs")
    parser.add_argument("--settings", default="5w10s,10w20s", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method labels")
    parser.add_argument("--folds", default="0-9", help="folds, e.g. 0-9")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps of every run (the budget)")
    parser.add_argument("--check-folds", default="0",
                        help="folds of every setting trained again with twice the steps ('' = no budget check)")
    parser.add_argument("--check-methods", help="methods of the budget check (default: every method of --methods)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "FEWSHOT.md")
    args = parser.parse_args()
    settings, methods = args.settings.split(","), args.methods.split(",")
    checked = args.check_methods.split(",") if args.check_methods else methods
    unknown = [s for s in settings if s not in SETTINGS] + [m for m in methods + checked if m not in METHODS]
    if unknown:
        sys.exit(f"unknown settings or methods {unknown}; settings: {', '.join(SETTINGS)}; methods: "
                 f"{', '.join(METHODS)}")
    if args.steps < 2:
        sys.exit(f"--steps must be >= 2, got {args.steps}")
    folds = ",".join(str(f) for f in parse_folds(args.folds))
    check_folds = ",".join(str(f) for f in parse_folds(args.check_folds)) if args.check_folds else ""
    batch = load_recipe(RECIPE).train.batch_size
    rows, checks = [], []
    for setting in settings:
        way, shot = SETTINGS[setting]
        drawn = sorted(set(parse_folds(folds)) | (set(parse_folds(check_folds)) if check_folds else set()))
        sizes = [f"fewshot.way={way}", f"fewshot.shot={shot}", f"fewshot.folds={','.join(map(str, drawn))}"]
        draw_episodes(load_recipe(RECIPE, sizes), args.out / setting / "episodes")
        budget = Budget.of(way, shot, args.steps, batch)
        rows += [run_row(m, setting, folds, budget, args.out, args.out / setting / m) for m in methods]
    for setting in settings if check_folds else ():
        way, shot = SETTINGS[setting]
        budget, longer = Budget.of(way, shot, args.steps, batch), Budget.of(way, shot, 2 * args.steps, batch)
        for method in checked:
            twice = run_row(method, setting, check_folds, longer, args.out,
                            args.out / "budget-check" / f"{setting}-{method}-{longer.epochs}epochs")
            base = next(r for r in rows if r["setting"] == setting and r["method"] == method)
            if not twice["per_fold"].keys() <= base["per_fold"].keys():  # the budget did not run on these folds
                base = run_row(method, setting, check_folds, budget, args.out,
                               args.out / "budget-check" / f"{setting}-{method}-{budget.epochs}epochs")
            checks.append((base, twice))
    invocation = shlex.join(["python", "benchmarks/fewshot_methods.py", *sys.argv[1:]])
    text = markdown(rows, checks, args.steps, invocation)
    print(text)
    write_text_atomic(args.results, text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
