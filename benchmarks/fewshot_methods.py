"""Few-shot accuracy of every tuning method on ``point_mae_tiny.modelnet40``: writes ``benchmarks/FEWSHOT.md``.

Each (setting, method) is one ``pointgst fewshot fewshot-5w10s.point_mae_tiny --way W --shot K`` run with the method
set by ``--set``, on the same episodes (drawn once per setting from the local ModelNet40 pack into
``OUT/<setting>/episodes``) and the recipe's budget for every row. The command resumes: finished folds are read
back, so the table may be built over several sittings (rerun the same command). Reported per row: the mean ± std
over folds of the last epoch's test accuracy (no model selection), the best-on-test accuracy of the official
protocol (optimistic), the mean last-epoch training accuracy (to check that training saturates within the budget),
trainable parameters and the summed training time. Figures are printed and written, never asserted.

Usage (from the project root; about two hours on a 2-core CPU for the defaults)::

    python benchmarks/fewshot_methods.py
    python benchmarks/fewshot_methods.py --settings 5w10s --methods linear,pcsa --folds 0-1 --out /tmp/fs --results /tmp/FS.md
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


def command_for(label: str, way: int, shot: int, folds: str, out: Path, episodes: Path) -> list[str]:
    overrides = next(e.overrides for e in ENTRIES if e.label == label)
    return ["pointgst", "fewshot", RECIPE, "--way", str(way), "--shot", str(shot), "--folds", folds,
            "--episodes", str(episodes), "--out", str(out), "--no-progress",
            *[arg for s in overrides for arg in ("--set", s)]]


def run_row(label: str, setting: str, folds: str, out: Path) -> dict:
    """One method on one setting (finished folds are skipped by the command itself); its figures."""
    way, shot = SETTINGS[setting]
    episodes = out / setting / "episodes"  # drawn once per setting by main()
    run = out / setting / label
    command = command_for(label, way, shot, folds, run, episodes)
    print(f"[{time.strftime('%H:%M:%S')}] {setting} {label}: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads((run / "fewshot.json").read_text())
    last_train = [json.loads((run / f"fold{row['fold']}" / "metrics.jsonl").read_text().splitlines()[-1])["train_acc"]
                  for row in result["per_fold"]]
    return {"setting": setting, "method": label, "folds": result["completed_folds"],
            "mean": result["test_acc_last_epoch_mean"], "std": result["test_acc_last_epoch_std"],
            "best_mean": result["test_acc_best_on_test_mean"], "best_std": result["test_acc_best_on_test_std"],
            "train_acc": statistics.fmean(last_train), "trainable": result["per_fold"][0]["trainable_parameters"],
            "minutes": sum(row["train_seconds"] for row in result["per_fold"]) / 60}


def markdown(rows: list[dict], invocation: str) -> str:
    recipe = load_recipe(RECIPE)
    lines = [
        "# Few-shot: every tuning method on `point_mae_tiny.modelnet40`", "",
        f"Made by `{invocation}` (benchmarks/fewshot_methods.py) on {platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, no GPU: "
        f"{sum(r['minutes'] for r in rows):.0f} min of training summed over the runs.", "",
        f"Setting: recipe `{RECIPE}` for every row ({recipe.train.epochs} epochs, batch {recipe.train.batch_size}, "
        f"AdamW lr {recipe.train.lr:g}, cosine schedule, seed {recipe.train.seed}); episodes drawn from the local "
        "ModelNet40 pack (support from its training split, 20 test shapes a class from its test split), the same "
        "episodes for every method. Accuracy: the last epoch's, mean ± std over folds; best-on-test: the official "
        "protocol's best epoch picked on the same test shapes (optimistic); train acc.: the last epoch's training "
        "accuracy, mean over folds (near 100% = the budget saturates training).", "",
        "| setting | method | folds | test acc. (last epoch) | best-on-test | train acc. | trainable params | "
        "train min |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['method']} | {r['folds']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f}% "
                     f"| {100 * r['best_mean']:.2f} ± {100 * r['best_std']:.2f}% | {100 * r['train_acc']:.1f}% | "
                     f"{r['trainable']:,} | {r['minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fewshot_methods", help="folder of the runs")
    parser.add_argument("--settings", default="5w10s,10w20s", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method labels")
    parser.add_argument("--folds", default="0-9", help="folds, e.g. 0-9")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "FEWSHOT.md")
    args = parser.parse_args()
    settings, methods = args.settings.split(","), args.methods.split(",")
    unknown = [s for s in settings if s not in SETTINGS] + [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown settings or methods {unknown}; settings: {', '.join(SETTINGS)}; methods: "
                 f"{', '.join(METHODS)}")
    parse_folds(args.folds)
    rows = []
    for setting in settings:
        way, shot = SETTINGS[setting]
        sizes = [f"fewshot.way={way}", f"fewshot.shot={shot}", f"fewshot.folds={args.folds}"]
        draw_episodes(load_recipe(RECIPE, sizes), args.out / setting / "episodes")
        rows += [run_row(method, setting, args.folds, args.out) for method in methods]
    invocation = shlex.join(["python", "benchmarks/fewshot_methods.py", *sys.argv[1:]])
    text = markdown(rows, invocation)
    print(text)
    write_text_atomic(args.results, text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
