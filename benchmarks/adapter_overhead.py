"""Inference overhead of PointGST adapters over the frozen backbone they wrap.

For each device (CPU, plus CUDA when available) and each setting (point-cloud size, number of groups), the
benchmark times three conditions on the same random batch, all in eval mode under ``torch.no_grad()``:

(a) ``frozen``  -- the plain backbone's forward (grouping + patch encoder + blocks + head), no adapters.
(b) ``wrapped`` -- the same weights wrapped by ``pointgst.wrap(..., method="pcsa")``: the backbone's forward
    plus one PCSA module per block *and* the spectral bases of the token centres (computed once per forward
    by the forward's token geometry, then reused by every block).
(c) ``bases``   -- ``compute_spectral_basis`` alone, on the centres that forward (b) grouped, with the
    wrapped model's ``SpectralOptions``: the eigendecompositions of B global graphs (G x G) and B * G/k local
    graphs (k x k).

The machine may be noisy (few shared cores), so the conditions are interleaved round-robin inside every
repeat (the starting condition rotates from repeat to repeat) and each is summarised by its median over the
repeats, after ``--warmup`` untimed rounds. On CUDA every timed call is bracketed by ``torch.cuda.synchronize``.

How to read the table (times are per forward of one batch, medians over the repeats):

- ``(b)/(a)``: relative cost of running the adapted model instead of the frozen one (1.10 = 10% slower).
- ``(c)/(a)``: the share of that cost due to the spectral bases alone, relative to the frozen forward.
  ``(b)/(a) - 1 - (c)/(a)`` is roughly what the PCSA modules themselves (and the wrapping) cost.
- ``(b)-(a)``: absolute extra time per forward, in ms (a difference of medians, so it can be slightly
  negative when the overhead is below the noise).
- ``bases/fwd``: eigendecompositions per wrapped forward, counted around the token geometry. It must
  be 1 (one shared basis for all blocks); the script prints a warning and exits with status 1 otherwise.
- ``spread``: (max - min) / median over the repeats of each condition; large values mean a noisy machine,
  so take the ratios with a pinch of salt.

On a CPU shared with other processes, multithreaded MKL ``eigh`` of many small matrices can run 10-100x
slower than single-threaded (its threads wait on each other while a core is taken), which inflates (c) and
(b); ``--threads 1`` gives steadier numbers there. The defaults (B=32, 3 repeats + 1 warm-up, both settings)
take under 3 minutes on a 2-core CPU for point_mae (2.5-2.8 min measured on a shared one); PointGPT-B/L
take longer.

The table is printed and written to the ``adapter_overhead`` section of ``benchmarks/RESULTS.md`` (``--no-results``
leaves that file alone). Timings are never asserted. Example::

    python benchmarks/adapter_overhead.py                       # point_mae, both settings, defaults
    python benchmarks/adapter_overhead.py --backbone pointgpt_s --settings scanobjectnn --repeats 10
    python benchmarks/adapter_overhead.py --device cpu --threads 1 --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from results_file import write_section  # benchmarks/results_file.py, beside this script
from torch import Tensor, nn

import pointgst
from pointgst import geometry
from pointgst.spectral import SpectralOptions, compute_spectral_basis


@dataclass(frozen=True)
class Setting:
    """One benchmark setting: a dataset-like point-cloud size and grouping."""

    name: str
    num_points: int
    num_group: int
    group_size: int
    num_classes: int


SETTINGS: dict[str, Setting] = {
    "modelnet40": Setting("modelnet40", num_points=1024, num_group=64, group_size=32, num_classes=40),
    "scanobjectnn": Setting("scanobjectnn", num_points=2048, num_group=128, group_size=32, num_classes=15),
}
CONDITIONS = ("frozen", "wrapped", "bases")


@dataclass
class Result:
    """Timings (seconds) of every condition for one (device, setting), and the basis-computation counts."""

    device: str
    setting: str
    batch_size: int
    num_points: int
    num_group: int
    times: dict[str, list[float]] = field(default_factory=dict)
    computations_per_forward: list[int] = field(default_factory=list)
    same_centers: bool = False
    """Whether the wrapped forward's centres equal those (c) was timed on."""

    def median(self, condition: str) -> float:
        return statistics.median(self.times[condition])

    def spread(self, condition: str) -> float:
        samples = self.times[condition]
        return (max(samples) - min(samples)) / statistics.median(samples)

    def summary(self) -> dict[str, float]:
        a, b, c = (self.median(name) for name in CONDITIONS)
        return {"frozen_ms": 1e3 * a, "wrapped_ms": 1e3 * b, "bases_ms": 1e3 * c, "wrapped_over_frozen": b / a,
                "bases_over_frozen": c / a, "overhead_ms": 1e3 * (b - a)}

    def computations_ok(self) -> bool:
        return bool(self.computations_per_forward) and all(n == 1 for n in self.computations_per_forward)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="point_mae", choices=pointgst.list_backbones(),
                        help="architecture (random weights; timings do not depend on them)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="modelnet40: N=1024, G=64; scanobjectnn: N=2048, G=128 (group size 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each runs every condition once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CPU, then CUDA when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch-size and --repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def devices(choice: str) -> list[torch.device]:
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [torch.device(choice)]


def environment(args: argparse.Namespace) -> dict[str, object]:
    env: dict[str, object] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "pointgst": pointgst.__version__, "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "devices": [str(d) for d in devices(args.device)],
        "backbone": args.backbone, "batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
    return env


def build_models(backbone: str, setting: Setting, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """A frozen backbone and a PCSA-wrapped copy with the same weights, both in eval mode on ``device``.

    ``pointgst.wrap`` modifies its backbone in place, so the wrapped model gets its own backbone.
    """
    kwargs = dict(num_classes=setting.num_classes, num_group=setting.num_group, group_size=setting.group_size)
    frozen = pointgst.create_backbone(backbone, **kwargs)
    to_wrap = pointgst.create_backbone(backbone, **kwargs)
    to_wrap.load_state_dict(frozen.state_dict())
    wrapped = pointgst.wrap(to_wrap, method="pcsa")
    frozen.requires_grad_(False)
    return frozen.to(device).eval(), wrapped.to(device).eval()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def spectral_options(wrapped: nn.Module) -> SpectralOptions:
    return wrapped.peft_config[wrapped.active_adapter].method_configs()["pcsa"].spectral_options()


def run_setting(backbone: str, setting: Setting, device: torch.device, batch_size: int, repeats: int,
                warmup: int, seed: int) -> Result:
    """Time the three conditions round-robin on one random batch."""
    torch.manual_seed(seed)
    frozen, wrapped = build_models(backbone, setting, device)
    points = (torch.rand(batch_size, setting.num_points, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    points = points.to(device)
    counter = BasisCounter()
    options = spectral_options(wrapped)
    with torch.no_grad():
        centers: Tensor = frozen.group_divider(points)[1]  # deterministic: the wrapped model's centres too
    calls: dict[str, Callable[[], object]] = {
        "frozen": lambda: frozen(points),
        "wrapped": lambda: wrapped(points),
        "bases": lambda: compute_spectral_basis(centers, options),
    }
    result = Result(device=str(device), setting=setting.name, batch_size=batch_size,
                    num_points=setting.num_points, num_group=setting.num_group,
                    times={name: [] for name in CONDITIONS})
    with torch.no_grad():
        for round_index in range(warmup + repeats):
            shift = round_index % len(CONDITIONS)
            for name in CONDITIONS[shift:] + CONDITIONS[:shift]:
                before = counter.calls
                seconds = timed(calls[name], device)
                if round_index < warmup:
                    continue
                result.times[name].append(seconds)
                if name == "wrapped":
                    result.computations_per_forward.append(counter.calls - before - (name == "bases"))
    result.same_centers = counter.centers is not None and torch.equal(counter.centers, centers)
    counter.close()
    return result


class BasisCounter:
    """Counts the spectral-basis computations of every forward (the token geometry builds each basis once) and keeps
    the centres of the last one."""

    def __init__(self) -> None:
        self.calls, self.centers = 0, None
        self._original = geometry.spectral_basis_unchecked

        def counting(centers: Tensor, options: SpectralOptions):
            self.calls += 1
            self.centers = centers
            return self._original(centers, options)

        geometry.spectral_basis_unchecked = counting

    def close(self) -> None:
        geometry.spectral_basis_unchecked = self._original


def format_table(results: list[Result]) -> str:
    header = (f"{'device':<6} {'setting':<12} {'B':>3} {'N':>5} {'G':>4} | {'frozen(a)':>10} {'wrapped(b)':>10} "
              f"{'bases(c)':>9} | {'(b)/(a)':>7} {'(c)/(a)':>7} {'(b)-(a)':>9} | {'bases/fwd':>9} | "
              f"{'spread a/b/c':>14}")
    lines = [header, "-" * len(header)]
    for r in results:
        s = r.summary()
        counts = sorted(set(r.computations_per_forward))
        count_text = ",".join(map(str, counts)) + ("" if r.computations_ok() else " !!")
        spread = "/".join(f"{r.spread(name):.0%}" for name in CONDITIONS)
        lines.append(
            f"{r.device:<6} {r.setting:<12} {r.batch_size:>3} {r.num_points:>5} {r.num_group:>4} | "
            f"{s['frozen_ms']:>7.1f} ms {s['wrapped_ms']:>7.1f} ms {s['bases_ms']:>6.1f} ms | "
            f"{s['wrapped_over_frozen']:>7.3f} {s['bases_over_frozen']:>7.3f} {s['overhead_ms']:>6.1f} ms | "
            f"{count_text:>9} | {spread:>14}")
    return "\n".join(lines)


def results_markdown(args: argparse.Namespace, env: dict[str, object], results: list[Result]) -> str:
    invocation = shlex.join(["python", "benchmarks/adapter_overhead.py", *sys.argv[1:]])
    return "\n".join([
        "## Inference overhead of PCSA over the frozen backbone",
        "",
        f"Made by `{invocation}` (benchmarks/adapter_overhead.py) on {platform.machine()}, {env['threads']} CPU "
        f"threads, torch {env['torch']}, devices {', '.join(env['devices'])}. {args.backbone}, eval mode, no "
        f"gradients; medians over {args.repeats} interleaved repeats after {args.warmup} warm-up. (a) frozen "
        "backbone, (b) the same weights wrapped with PCSA, (c) the spectral bases alone.",
        "",
        "```",
        format_table(results),
        "```",
    ]) + "\n"


def write_json(path: Path, env: dict[str, object], results: list[Result]) -> None:
    payload = {"environment": env,
               "results": [{**asdict(r), "summary": r.summary(),
                            "spread": {name: r.spread(name) for name in CONDITIONS}} for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = environment(args)
    print("environment: " + ", ".join(f"{key}={value}" for key, value in env.items()), flush=True)
    results = []
    for device in devices(args.device):
        for name in args.settings:
            print(f"timing {args.backbone} on {device}, {name} ...", flush=True)
            results.append(run_setting(args.backbone, SETTINGS[name], device, args.batch_size, args.repeats,
                                       args.warmup, args.seed))
    print(f"\nmedians over {args.repeats} interleaved repeats ({args.warmup} warm-up), per forward of one batch:")
    print(format_table(results))
    if args.json is not None:
        write_json(args.json, env, results)
        print(f"\nwrote {args.json}")
    if not args.no_results:
        write_section("adapter_overhead", results_markdown(args, env, results))
    for r in results:
        if not r.same_centers:
            print(f"WARNING: {r.device}/{r.setting}: (c) was timed on other centres than the wrapped forward's",
                  file=sys.stderr)
    bad = [r for r in results if not r.computations_ok()]
    for r in bad:
        print(f"WARNING: {r.device}/{r.setting}: basis computations per wrapped forward were "
              f"{r.computations_per_forward}, expected 1 each", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
