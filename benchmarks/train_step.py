"""Cost of one training step per tuning method, against full fine-tuning: time and peak memory, as ratios.

One step = forward, cross-entropy, backward and AdamW step on the same real batch (the first ``--batch`` shapes of
the ModelNet40 training split, 1024 points, 64 groups of 32), in training mode, on a Point-MAE with random weights
(timing does not depend on the values). Conditions:

- every method (``full``, ``linear``, ``pcsa``, ``dcnv4``, ``deepla_head``, ``lora``) in float32;
- ``pcsa`` and ``full`` with gradient checkpointing (``+gc``) and with bfloat16 autocast (``+bf16``);
- ``official-pcsa``, with ``--official PATH`` (a checkout of jerryfeng2003/PointGST): the authors' own model code
  (``models/PointTransformer.py``, ``models/PGST.py``), run from a temporary folder outside this project with CPU
  stand-ins for its CUDA extensions (pointgst's FPS and kNN) and for the timm helpers it imports, trained as its
  ``optimizer.part: adapt`` rule says (names with ``adapt`` or ``cls``), in its training mode (BatchNorm statistics
  updating). Both models are seeded random initialisations of the same architecture: step time does not depend on
  the values of the weights.

Step times are medians over ``--repeats`` rounds in one process, the conditions interleaved (the starting one
rotating) after a warm-up round. Peak memory is the peak resident set size of a fresh process per condition that
builds the model and runs ``--memory-steps`` steps. Figures depend on the machine; they are printed and written to
the ``train_step`` section of ``benchmarks/RESULTS.md``, never asserted.

Usage (from the project root; about 10 minutes on a 2-core CPU with the official model)::

    git clone https://github.com/jerryfeng2003/PointGST /tmp/PointGST   # the official code, outside the project
    python benchmarks/train_step.py --official /tmp/PointGST
"""

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from results_file import write_section  # benchmarks/results_file.py, beside this script

import pointgst
from pointgst.training.memory import peak_memory_mb

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "modelnet40_1024"
METHODS = ("full", "linear", "pcsa", "dcnv4", "deepla_head", "lora")
VARIANTS = ("pcsa+gc", "pcsa+bf16", "full+gc", "full+bf16")
CLASSES = 40


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` training shapes (B, 1024, 3) and their labels (B,)."""
    pack = np.load(DATA / "train.npz")
    return torch.from_numpy(pack["points"][:size].copy()), torch.from_numpy(pack["labels"][:size].copy())


# ------------------------------------------------------------------------------------------------ the official model

_STUBS = {
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": """
        from torch.nn.init import trunc_normal_
        from pointgst.backbones.layers import DropPath
    """,
    "knn_cuda.py": """
        from pointgst.ops import knn_indices

        class KNN:
            def __init__(self, k, transpose_mode=True):
                self.k = k

            def __call__(self, ref, query):
                return None, knn_indices(query, ref, self.k)
    """,
    "utils/__init__.py": "",
    "utils/misc.py": """
        from pointgst.ops import farthest_point_sample, gather_points

        def fps(data, number):
            return gather_points(data, farthest_point_sample(data, number, skip_near_origin=True))
    """,
    "utils/checkpoint.py": """
        def get_missing_parameters_message(keys):
            return str(keys)

        def get_unexpected_parameters_message(keys):
            return str(keys)
    """,
    "utils/logger.py": """
        def print_log(*args, **kwargs):
            pass
    """,
    "models/__init__.py": "",
    "models/build.py": """
        class _Registry:
            def register_module(self, *args, **kwargs):
                return lambda cls: cls

        MODELS = _Registry()
    """,
}


def official_model(repo: Path, workdir: Path) -> torch.nn.Module:
    """The authors' ``PointTransformer_PGST`` (ModelNet40 configuration), imported from a temporary package built of
    their three model files and the stand-ins above."""
    for relative, text in _STUBS.items():
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for name in ("PointTransformer.py", "PGST.py", "z_order.py"):
        (workdir / "models" / name).write_text((repo / "models" / name).read_text())
    sys.path.insert(0, str(workdir))
    from models.PointTransformer import PointTransformer_PGST  # noqa: E402 (the temporary package)

    config = SimpleNamespace(trans_dim=384, depth=12, drop_path_rate=0.1, cls_dim=CLASSES, num_heads=6, group_size=32,
                             num_group=64, encoder_dims=384, rank=36, local=32, tsne=False)
    model = PointTransformer_PGST(config)
    for name, param in model.named_parameters():
        param.requires_grad_("adapt" in name or "cls" in name)
    return model


# ------------------------------------------------------------------------------------------------ conditions

def build(condition: str, official_repo: Path | None, workdir: Path) -> tuple[torch.nn.Module, str]:
    """A model for ``condition`` and its precision (``fp32`` / ``bf16``)."""
    method, _, variant = condition.partition("+")
    torch.manual_seed(0)
    if method == "official-pcsa":
        return official_model(official_repo, workdir), "fp32"
    model = pointgst.wrap(pointgst.create_backbone("point_mae", num_classes=CLASSES), method=method)
    if variant == "gc":
        model.gradient_checkpointing_enable()
    return model, "bf16" if variant == "bf16" else "fp32"


def stepper(model: torch.nn.Module, precision: str, points: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(points)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_memory(condition: str, official_repo: Path | None, batch_file: Path, steps: int) -> float:
    """Peak resident memory (GiB) of this process after building ``condition`` and running ``steps`` steps on the
    batch saved in ``batch_file`` (only the batch: the whole training split would add to the peak)."""
    points, labels = torch.load(batch_file, weights_only=True)
    with tempfile.TemporaryDirectory() as workdir:
        model, precision = build(condition, official_repo, Path(workdir))
        step = stepper(model, precision, points, labels)
        for _ in range(steps):
            step()
    return peak_memory_mb(torch.device("cpu")) / 1024  # this process's peak RSS (VmHWM), MiB -> GiB


def time_steps(conditions: list[str], official_repo: Path | None, batch_size: int, repeats: int) -> dict[str, float]:
    points, labels = batch(batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        steps = {c: stepper(*build(c, official_repo, Path(workdir) / c.replace("+", "_")), points, labels)
                 for c in conditions}
        times: dict[str, list[float]] = {c: [] for c in conditions}
        for round_index in range(repeats + 1):
            shift = round_index % len(conditions)
            for condition in conditions[shift:] + conditions[:shift]:
                start = time.perf_counter()
                steps[condition]()
                if round_index:  # the first round warms up
                    times[condition].append(time.perf_counter() - start)
                print(f"  round {round_index}: {condition} {time.perf_counter() - start:.2f} s", flush=True)
    return {c: statistics.median(t) for c, t in times.items()}


def markdown(seconds: dict[str, float], memory: dict[str, float], args: argparse.Namespace, invocation: str) -> str:
    full_s, full_m = seconds["full"], memory["full"]
    lines = [
        "## One training step per method, against full fine-tuning",
        "",
        f"Made by `{invocation}` (benchmarks/train_step.py) on {platform.machine()}, {torch.get_num_threads()} CPU "
        f"threads, torch {torch.__version__}, no GPU. Point-MAE (22.1M parameters), {args.batch} real ModelNet40 "
        "shapes of 1,024 points, 64 groups of 32, 40 classes; one step = forward, cross-entropy, backward, AdamW. "
        f"Time: median of {args.repeats} interleaved rounds; memory: peak RSS of a fresh process per condition "
        f"({args.memory_steps} steps).",
        "",
        "| condition | step time | / full | peak memory | / full |",
        "|---|---:|---:|---:|---:|",
    ]
    for condition in seconds:
        lines.append(f"| {condition} | {seconds[condition]:.2f} s | {seconds[condition] / full_s:.2f} | "
                     f"{memory[condition]:.2f} GiB | {memory[condition] / full_m:.2f} |")
    lines += ["", "Conditions: a method name is that method in float32; `+gc` adds gradient checkpointing of the "
              "transformer blocks, `+bf16` bfloat16 autocast; `official-pcsa` is the authors' PointGST model code "
              "(see the script's docstring for how it runs here)."]
    if "official-pcsa" in seconds:
        lines += ["", f"pointgst's PCSA step / the official PointGST step: "
                      f"{seconds['pcsa'] / seconds['official-pcsa']:.2f}."]
    if "pcsa+gc" in seconds:
        lines += [f"Gradient checkpointing: PCSA step time x{seconds['pcsa+gc'] / seconds['pcsa']:.2f}, peak memory "
                  f"x{memory['pcsa+gc'] / memory['pcsa']:.2f} (PCSA with it / full without it: "
                  f"{memory['pcsa+gc'] / full_m:.2f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--official", type=Path, help="a checkout of jerryfeng2003/PointGST (adds official-pcsa)")
    parser.add_argument("--conditions", help="comma-separated subset (default: all)")
    parser.add_argument("--measure-memory", nargs=2, metavar=("CONDITION", "BATCH_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        condition, batch_file = args.measure_memory
        print(json.dumps(measure_memory(condition, args.official, Path(batch_file), args.memory_steps)))
        return
    conditions = list(METHODS + VARIANTS) + (["official-pcsa"] if args.official else [])
    if args.conditions:
        conditions = args.conditions.split(",")
    print(f"timing {len(conditions)} conditions ...", flush=True)
    seconds = time_steps(conditions, args.official, args.batch, args.repeats)
    memory = {}
    with tempfile.TemporaryDirectory() as folder:
        batch_file = Path(folder) / "batch.pt"
        torch.save(batch(args.batch), batch_file)
        for condition in conditions:
            command = [sys.executable, __file__, "--measure-memory", condition, str(batch_file),
                       "--memory-steps", str(args.memory_steps)] + (["--official", str(args.official)]
                                                                    if args.official else [])
            memory[condition] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True,
                                                          cwd=ROOT).stdout.strip().splitlines()[-1])
            print(f"  memory {condition}: {memory[condition]:.2f} GiB", flush=True)
    invocation = shlex.join(["python", "benchmarks/train_step.py", *sys.argv[1:]])
    text = markdown(seconds, memory, args, invocation)
    print(text)
    write_section("train_step", text)


if __name__ == "__main__":
    main()
