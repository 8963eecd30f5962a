"""Wall time and accuracies of ``pointgst demo`` (both runs) against another installation of pointgst, side by side.

Each pair runs the baseline installation's demo, then this checkout's (the order alternating from pair to pair), each
as a fresh process in its own new run folder, with ``HF_HUB_OFFLINE=1`` (the demo needs no network). It prints every
run's wall time and the test accuracies the demo printed, then the median ratio this / baseline; with ``--results`` the table goes to the ``demo_time`` section of
``benchmarks/RESULTS.md``. Nothing is asserted.

Usage (from the project root; a baseline installed in its own virtual environment, e.g. pointgst 0.1.0)::

    python -m venv /tmp/venv010 && /tmp/venv010/bin/pip install torch==2.13.0 ./path/to/pointgst-0.1.0
    python benchmarks/demo_time.py --baseline /tmp/venv010/bin/python --results
"""

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_file import write_section  # benchmarks/results_file.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def version(python: str) -> str:
    return subprocess.run([python, "-c", "import pointgst; print(pointgst.__version__)"], check=True,
                          capture_output=True, text=True, cwd=tempfile.gettempdir()).stdout.strip()


def run_demo(python: str, out: Path) -> tuple[float, list[str]]:
    """Wall seconds of ``python -m pointgst.cli demo --out OUT --no-progress`` and the accuracy lines it printed.

    Runs from a temporary folder, so that a baseline interpreter imports its own pointgst, not this checkout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([python, "-m", "pointgst.cli", "demo", "--out", str(out), "--no-progress"], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the demo of {python} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    accuracies = [line.strip() for line in done.stdout.splitlines() if re.search(r"test accuracy", line)]
    return seconds, accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="python interpreter of the baseline installation")
    parser.add_argument("--pairs", type=int, default=1, help="baseline + this checkout runs (default 1)")
    parser.add_argument("--results", action="store_true", help="write the demo_time section of RESULTS.md")
    args = parser.parse_args()
    interpreters = {"baseline": args.baseline, "this": sys.executable}
    versions = {name: version(python) for name, python in interpreters.items()}
    seconds: dict[str, list[float]] = {name: [] for name in interpreters}
    printed: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for pair in range(args.pairs):
            order = ["baseline", "this"] if pair % 2 == 0 else ["this", "baseline"]
            for name in order:
                took, printed[name] = run_demo(interpreters[name], Path(folder) / f"{name}-{pair}")
                seconds[name].append(took)
                print(f"pair {pair}: {name} (pointgst {versions[name]}) {took:.0f} s", flush=True)
                for line in printed[name]:
                    print(f"    {line}")
    ratio = statistics.median(t / b for t, b in zip(seconds["this"], seconds["baseline"]))
    invocation = shlex.join(["python", "benchmarks/demo_time.py", *sys.argv[1:]])
    lines = ["## `pointgst demo` against a baseline installation", "",
             f"Made by `{invocation}` (benchmarks/demo_time.py) on {platform.machine()}, {torch.get_num_threads()} "
             f"CPU threads, torch {torch.__version__}; {args.pairs} pair(s) of runs, alternating. Each run is the "
             "whole demo: the shipped backbone, then the random-weight comparison.", "",
             "| installation | wall time (each run) | accuracy lines it printed (last run) |", "|---|---|---|"]
    for name in interpreters:
        times = ", ".join(f"{t:.0f} s" for t in seconds[name])
        lines.append(f"| {name}: pointgst {versions[name]} | {times} | {'; '.join(printed[name])} |")
    lines += ["", f"This checkout / baseline, median over the pairs: {ratio:.2f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        write_section("demo_time", text)


if __name__ == "__main__":
    main()
