"""Few-shot accuracy of every tuning method on ``point_mae_tiny.modelnet40``: writes ``benchmarks/FEWSHOT.md``.

Each (setting, method) is one ``pointgst fewshot fewshot-5w10s.point_mae_tiny --way W --shot K`` run with the method
set by ``--set``, on the same episodes (drawn once per setting from the local ModelNet40 pack into
``OUT/<setting>/episodes``) and one budget for every row: ``--epochs`` epochs (default 50) of the recipe's batch
size, learning rate and schedule, and ``train.selection=last`` (the last epoch is kept and reported: no model
selection, so no per-epoch pass over the test shapes). The command resumes: finished folds are read back, so the
table may be built over several sittings (rerun the same command).

Reported per row: the mean ± std over folds of the test accuracy, the mean last-epoch training accuracy (augmented
batches, dropout on), trainable parameters and the summed training time; per setting, each method's per-fold
difference to the linear probe (the same episodes, so the differences are paired). The budget check trains every
method again on ``--check-folds`` of 5-way 10-shot with twice the epochs: if the accuracy barely moves, the budget
saturates training. Figures are printed and written, never asserted.

Usage (from the project root; about two hours on a 2-core CPU for the defaults)::

    python benchmarks/fewshot_methods.py
    python benchmarks/fewshot_methods.py --settings 5w10s --methods linear,pcsa --folds 0-1 --check-folds 0 \\
        --out /tmp/fs --results /tmp/FS.md
"""

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from modelnet40_methods import ENTRIES  # benchmarks/modelnet40_methods.py: the methods and their overrides

from pointgst.atomic import write_text_atomic
from pointgst.fewshot import draw_episodes
from pointgst.recipe import load_recipe, parse_folds

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "fewshot-5w10s.point_mae_tiny"
METHODS = ("linear", "pcsa", "dcnv4", "deepla_head", "lora", "full")
SETTINGS = {"5w10s": (5, 10), "5w20s": (5, 20), "10w10s": (10, 10), "10w20s": (10, 20)}
CHECK_SETTING = "5w10s"


def command_for(label: str, way: int, shot: int, folds: str, epochs: int, out: Path, episodes: Path) -> list[str]:
    overrides = next(e.overrides for e in ENTRIES if e.label == label)
    budget = (f"train.epochs={epochs}", "train.selection=last")
    return ["pointgst", "fewshot", RECIPE, "--way", str(way), "--shot", str(shot), "--folds", folds,
            "--episodes", str(episodes), "--out", str(out), "--no-progress",
            *[arg for s in (*overrides, *budget) for arg in ("--set", s)]]


def run_row(label: str, setting: str, folds: str, epochs: int, out: Path, run: Path) -> dict:
    """One method on one setting into ``run`` (finished folds are skipped by the command itself); its figures."""
    way, shot = SETTINGS[setting]
    episodes = out / setting / "episodes"  # drawn once per setting by main()
    command = command_for(label, way, shot, folds, epochs, run, episodes)
    print(f"[{time.strftime('%H:%M:%S')}] {setting} {label}, {epochs} epochs: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads((run / "fewshot.json").read_text())
    last_train = [json.loads((run / f"fold{row['fold']}" / "metrics.jsonl").read_text().splitlines()[-1])["train_acc"]
                  for row in result["per_fold"]]
    return {"setting": setting, "method": label, "folds": result["completed_folds"],
            "per_fold": {row["fold"]: row["test_acc_last_epoch"] for row in result["per_fold"]},
            "mean": result["test_acc_last_epoch_mean"], "std": result["test_acc_last_epoch_std"],
            "train_acc": statistics.fmean(last_train), "trainable": result["per_fold"][0]["trainable_parameters"],
            "minutes": sum(row["train_seconds"] for row in result["per_fold"]) / 60}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> str:
    """``mean ± std`` over the common folds of ``a[f] - b[f]``, in percentage points (std 0 for one fold)."""
    values = [a[f] - b[f] for f in sorted(a.keys() & b.keys())]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):+.2f} ± {100 * std:.2f}" if values else ""


def markdown(rows: list[dict], checks: list[tuple[dict, dict]], epochs: int, invocation: str) -> str:
    recipe = load_recipe(RECIPE)
    minutes = sum(r["minutes"] for r in rows) + sum(c[1]["minutes"] for c in checks)
    lines = [
        "# Few-shot: every tuning method on `point_mae_tiny.modelnet40`", "",
        f"Made by `{invocation}` (benchmarks/fewshot_methods.py) on {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, no GPU: "
        f"{minutes:.0f} min of training summed over the runs.", "",
        f"Budget, the same for every row: recipe `{RECIPE}` with {epochs} epochs (batch {recipe.train.batch_size}, "
        f"AdamW lr {recipe.train.lr:g}, cosine schedule with {recipe.train.warmup_epochs} warmup epochs, seed "
        f"{recipe.train.seed}) and `train.selection=last`: the last epoch's model is tested, no epoch is picked on "
        "the test shapes. Episodes drawn from the local ModelNet40 pack (support shapes from its training split, 20 "
        "test shapes a class from its test split), the same episodes for every method. Test accuracy: mean ± std "
        "over folds. Train acc.: the last epoch's accuracy on the augmented support batches with dropout on (the "
        "head's dropout is 0.5), mean over folds.", "",
        "| setting | method | folds | test acc. | vs linear (paired, per fold) | train acc. | trainable params | "
        "train min |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        linear = next((x for x in rows if x["setting"] == r["setting"] and x["method"] == "linear"), None)
        paired = "" if linear is None or r is linear else paired_difference(r["per_fold"], linear["per_fold"])
        lines.append(f"| {r['setting']} | {r['method']} | {r['folds']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f}% "
                     f"| {paired} | {100 * r['train_acc']:.1f}% | {r['trainable']:,} | {r['minutes']:.1f} |")
    if checks:
        folds = ", ".join(str(f) for f in checks[0][1]["per_fold"])
        lines += ["", f"Budget check: the same methods on {CHECK_SETTING}, folds {folds}, with {2 * epochs} epochs "
                      f"instead of {epochs} (the same seed and episodes; per-fold difference in percentage points). "
                      "Differences near zero mean the budget saturates training.", "",
                  f"| method | {epochs} epochs | {2 * epochs} epochs | difference |", "|---|---:|---:|---:|"]
        for base, longer in checks:
            common = longer["per_fold"].keys()
            lines.append(f"| {base['method']} | {100 * statistics.fmean(base['per_fold'][f] for f in common):.2f}% | "
                         f"{100 * longer['mean']:.2f}% | {paired_difference(longer['per_fold'], base['per_fold'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fewshot_methods", help="folder of the runs")
    parser.add_argument("--settings", default="5w10s,10w20s", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method labels")
    parser.add_argument("--folds", default="0-9", help="folds, e.g. 0-9")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs of every run (the budget)")
    parser.add_argument("--check-folds", default="0-2",
                        help=f"folds of {CHECK_SETTING} trained again with twice the epochs ('' = no budget check)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "FEWSHOT.md")
    args = parser.parse_args()
    settings, methods = args.settings.split(","), args.methods.split(",")
    unknown = [s for s in settings if s not in SETTINGS] + [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown settings or methods {unknown}; settings: {', '.join(SETTINGS)}; methods: "
                 f"{', '.join(METHODS)}")
    if args.epochs < 1:
        sys.exit(f"--epochs must be >= 1, got {args.epochs}")
    check_folds = ",".join(str(f) for f in parse_folds(args.check_folds)) if args.check_folds else ""
    folds = ",".join(str(f) for f in parse_folds(args.folds))
    rows, checks = [], []
    for setting in sorted(set(settings) | ({CHECK_SETTING} if check_folds else set()), key=list(SETTINGS).index):
        way, shot = SETTINGS[setting]
        drawn = sorted(set(parse_folds(folds)) | (set(parse_folds(check_folds)) if check_folds else set()))
        sizes = [f"fewshot.way={way}", f"fewshot.shot={shot}", f"fewshot.folds={','.join(map(str, drawn))}"]
        draw_episodes(load_recipe(RECIPE, sizes), args.out / setting / "episodes")
    for setting in settings:
        rows += [run_row(m, setting, folds, args.epochs, args.out, args.out / setting / m) for m in methods]
    for method in methods if check_folds else ():
        longer = run_row(method, CHECK_SETTING, check_folds, 2 * args.epochs, args.out,
                         args.out / "budget-check" / f"{method}-{2 * args.epochs}epochs")
        base = next((r for r in rows if r["setting"] == CHECK_SETTING and r["method"] == method
                     and longer["per_fold"].keys() <= r["per_fold"].keys()), None)
        if base is None:  # the budget itself did not run on these folds: run it too
            base = run_row(method, CHECK_SETTING, check_folds, args.epochs, args.out,
                           args.out / "budget-check" / f"{method}-{args.epochs}epochs")
        checks.append((base, longer))
    invocation = shlex.join(["python", "benchmarks/fewshot_methods.py", *sys.argv[1:]])
    text = markdown(rows, checks, args.epochs, invocation)
    print(text)
    write_text_atomic(args.results, text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
