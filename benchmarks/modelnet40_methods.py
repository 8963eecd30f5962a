"""Every tuning method on the complete ModelNet40 split, from pointgst's own ``point_mae_tiny.modelnet40`` backbone,
with the same recipe, seed and budget: writes ``benchmarks/RESULTS.md``.

Methods: ``linear`` (head only), ``pcsa``, ``pcsa`` with the ``official`` preset (and the same with exact centre
distances, the preset's graphs before the official ``torch.cdist`` construction was reproduced), ``dcnv4``,
``deepla_head``, ``lora``, ``full``, ``dapt``, ``idpt``, ``gaprompt``, ``ppt`` (their official ModelNet40 options), and
``pcsa`` on a randomly initialised backbone of the same architecture (what pretraining brings). Each is one
``pointgst train modelnet40.point_mae_tiny --set method.name=...`` run in its own process (so its peak memory is its
own), into ``--out/<label>``. A run whose folder already holds a ``summary.json`` is not repeated, so an interrupted
benchmark continues where it stopped (``--fresh`` starts over in a new folder).

Reported per method: test accuracy and mean class accuracy of the **last** epoch (no model selection, so the
numbers are fair to compare and not tuned on the test split), trainable parameters, mean seconds per training epoch,
peak resident memory of the run's process, and the exact command. Timings depend on the machine and on what else runs
on it; they are printed, never asserted.

Usage (from the project root)::

    python benchmarks/modelnet40_methods.py                    # recipe budget (1 epoch), its section of RESULTS.md
    python benchmarks/modelnet40_methods.py --epochs 1 --methods linear,pcsa --results /tmp/r.md
    python benchmarks/modelnet40_methods.py --methods linear,pcsa,dapt,idpt,gaprompt,ppt \
        --section modelnet40_forward_methods   # some rows side by side in one run, in a section of their own
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from results_file import RESULTS, write_section  # benchmarks/results_file.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "modelnet40.point_mae_tiny"


@dataclass(frozen=True)
class Entry:
    label: str
    overrides: tuple[str, ...]
    note: str


ENTRIES = [
    Entry("linear", ("method.name=linear", "method.options={}"), "head only, frozen backbone"),
    Entry("pcsa", ("method.name=pcsa",), "PointGST (rank 36, local 32), pointgst defaults"),
    Entry("pcsa-official", ("method.name=pcsa", "method.options.preset=official"),
          "PointGST with the official code's behaviour (GFT direction, batch d_min, BN statistics, the official "
          "graph construction by torch.cdist: Q18)"),
    Entry("pcsa-official-exact-graphs", ("method.name=pcsa", "method.options.preset=official",
                                         "method.options.distance=exact"),
          "the same with exact centre distances: the official preset as pointgst 0.1.0 built its graphs"),
    Entry("dcnv4", ("method.name=dcnv4", "method.options={}"), "DCNv4-style deformable point layers"),
    Entry("deepla_head", ("method.name=deepla_head", "method.options={}"), "DeepLA-Net head on the frozen tokens"),
    Entry("lora", ("method.name=lora", "method.options={}"), "LoRA on the blocks' linear layers (peft)"),
    Entry("full", ("method.name=full", "method.options={}"), "every weight trained"),
    Entry("dapt", ("method.name=dapt", "method.options={}"),
          "DAPT: dynamic adapters, one internal prompt per block, scale-and-shift factors (official ModelNet40 "
          "options)"),
    Entry("idpt", ("method.name=idpt", "method.options={}"),
          "IDPT: a DGCNN prompt generator before the last block (official ModelNet40 options)"),
    Entry("gaprompt", ("method.name=gaprompt", "method.options={}"),
          "GAPrompt: point prompts, ShiftNet, deep prompts, propagation and adapters (official ModelNet40 options)"),
    Entry("ppt", ("method.name=ppt", "method.options={}"),
          "PPT: positional prompts, retrained first_conv and pos_embed (official ModelNet40 options)"),
    Entry("pcsa-random-weights", ("method.name=pcsa", "backbone.pretrained=false"),
          "PointGST on a randomly initialised point_mae_tiny (no pretraining)"),
]


def command_for(entry: Entry, out: Path, epochs: int | None) -> list[str]:
    """The ``pointgst train`` command of one method, run from ROOT (``out`` shown relative to ROOT where inside)."""
    sets = list(entry.overrides) + ([f"train.epochs={epochs}"] if epochs else [])
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return ["pointgst", "train", RECIPE, "--out", str(shown), "--no-progress",
            *[arg for s in sets for arg in ("--set", s)]]


def run_entry(entry: Entry, out: Path, epochs: int | None) -> dict:
    """Train one method (unless its run folder already finished) and read its results."""
    command = command_for(entry, out, epochs)
    if (out / "summary.json").is_file():
        recorded = yaml.safe_load((out / "recipe.yaml").read_text())["train"]["epochs"]
        if epochs and recorded != epochs:
            sys.exit(f"{out} finished with {recorded} epochs, not {epochs}; pass --fresh (or another --out)")
    else:
        if (out / "checkpoint-last.pt").is_file():  # an interrupted run: continue it
            command.append("--resume")
        elif out.exists():  # stopped before its first epoch ended: nothing to keep
            shutil.rmtree(out)
        print(f"[{time.strftime('%H:%M:%S')}] {entry.label}: {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = {"label": entry.label, "note": entry.note, "command": shlex.join(command_for(entry, out, epochs)),
              "acc": summary["test_acc_last_epoch"], "macc": summary["test_macc_last_epoch"],
              "trainable": summary["trainable_parameters"], "backbone": summary["backbone_parameters"],
              "epoch_seconds": sum(r["epoch_seconds"] for r in rows) / len(rows), "epochs": len(rows),
              "train_seconds": summary["train_seconds"],
              "peak_memory_mb": summary["peak_memory_mb"]}
    print(f"    test acc {100 * result['acc']:.2f}%  mean class {100 * result['macc']:.2f}%  "
          f"trainable {result['trainable']:,}  {result['epoch_seconds']:.0f} s/epoch", flush=True)
    return result


def markdown(results: list[dict], invocation: str, every: bool = True) -> str:
    by_label = {r["label"]: r for r in results}
    minutes = sum(r["train_seconds"] for r in results) / 60
    which = "every tuning method" if every else ", ".join(f"`{r['label']}`" for r in results)
    lines = [
        f"## ModelNet40: {which} on `point_mae_tiny.modelnet40`",
        "",
        f"Made by `{invocation}` (benchmarks/modelnet40_methods.py): {minutes:.0f} min of training, summed over the "
        "runs, on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}.",
        "",
        f"Setting: recipe `{RECIPE}`: the complete ModelNet40 split of the local 1024-point pack (9,843 training / "
        "2,468 test shapes), 1,024 points, 64 patches of 32, scale-and-translate augmentation, AdamW lr 5e-4, weight "
        f"decay 0.05, batch 32, cosine schedule, seed 0, {results[0]['epochs']} training epoch(s) for every method: a "
        "small budget that a 2-core CPU affords for every row, so the numbers compare methods at equal cost, "
        "not converged accuracies. Accuracy is "
        "the **last epoch's** test accuracy (single pass, no voting, no model selection).",
        "",
        "| method | test acc. | mean class acc. | trainable params | trainable % | s / epoch | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {100 * r['acc']:.2f}% | {100 * r['macc']:.2f}% | {r['trainable']:,} | "
                     f"{100 * r['trainable'] / r['backbone']:.2f}% | {r['epoch_seconds']:.0f} | "
                     f"{r['peak_memory_mb'] / 1024:.2f} GiB |")
    lines += ["", "What each row is:", ""]
    lines += [f"- `{r['label']}`: {r['note']}." for r in results]
    if "pcsa" in by_label and "linear" in by_label:
        gap = 100 * (by_label["pcsa"]["acc"] - by_label["linear"]["acc"])
        lines += ["", f"PCSA vs the linear probe (head only): {gap:+.2f} points."]
    if "pcsa-official" in by_label and "pcsa-official-exact-graphs" in by_label:
        gap = 100 * (by_label["pcsa-official"]["acc"] - by_label["pcsa-official-exact-graphs"]["acc"])
        lines += [f"The official graph construction (torch.cdist round-off as d_min, Q18) vs exact distances under the "
                  f"official preset: {gap:+.2f} points."]
    if "pcsa" in by_label and "pcsa-random-weights" in by_label:
        gap = 100 * (by_label["pcsa"]["acc"] - by_label["pcsa-random-weights"]["acc"])
        lines += [f"PCSA on the pretrained vs the random-weight backbone: {gap:+.2f} points."]
    lines += ["", "Why the accuracies are low: every method trains a fresh 3-layer head (BatchNorm, dropout 0.5) for the budget "
              "above, with the learning rate decaying to 1e-6 within it. The same frozen features reach far more "
              "with a converged classifier: see the linear probe in "
              "`pointgst/weights/point_mae_tiny.modelnet40/MODEL_CARD.md` (logistic regression fitted by L-BFGS). "
              "Raise the budget with `--epochs N`; the table then compares converged methods, at N times the cost.",
              "", "Peak memory is the peak resident set size of the run's process (CPU) or the peak CUDA allocation.",
              "", "Commands (one per row, from the project root):", "", "```"]
    lines += [r["command"] for r in results]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/modelnet40_methods", help="folder of the runs (one per method)")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file whose section to (re)write")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (same for every method)")
    parser.add_argument("--methods", help="comma-separated labels (default: all): " +
                        ", ".join(e.label for e in ENTRIES))
    parser.add_argument("--fresh", action="store_true", help="new run folders (a suffix), do not reuse finished ones")
    parser.add_argument("--section", default="modelnet40_methods",
                        help="the section of --results to (re)write (another name keeps the full table beside it)")
    args = parser.parse_args()
    entries = ENTRIES
    if args.methods:
        known = {e.label: e for e in ENTRIES}
        unknown = [m for m in args.methods.split(",") if m not in known]
        if unknown:
            sys.exit(f"unknown method labels {unknown}; known: {', '.join(known)}")
        entries = [known[m] for m in args.methods.split(",")]
    out = ROOT / args.out  # the runs start in ROOT (an absolute --out stays as it is)
    if args.fresh:
        out = out.with_name(f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = [run_entry(entry, out / entry.label, args.epochs) for entry in entries]
    invocation = shlex.join(["python", "benchmarks/modelnet40_methods.py", *sys.argv[1:]])
    write_section(args.section, markdown(results, invocation, every=entries == ENTRIES), Path(args.results))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
