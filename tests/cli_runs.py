"""Running ``pointgst train`` / ``pointgst pretrain`` in a subprocess, and killing it mid-run, for the engine tests."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def start_cli(command: str, recipe: str, out: Path, overrides: list[str], *extra: str,
              **popen) -> subprocess.Popen:
    """``pointgst COMMAND RECIPE --out OUT`` on CPU without progress bars, with ``--set`` overrides."""
    args = [sys.executable, "-m", "pointgst.cli", command, recipe, "--out", str(out), "--no-progress", "--device",
            "cpu"] + [a for s in overrides for a in ("--set", s)] + list(extra)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run_cli_here(args: list[str], capsys) -> tuple[int, str, str]:
    """``pointgst ARGS`` in this process (fast, for commands that fail before any work): (exit code, stdout, stderr)."""
    from pointgst.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def finish(process: subprocess.Popen) -> str:
    """Wait for a run; assert it succeeded; its stdout."""
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return out


def kill_after_first_checkpoint(process: subprocess.Popen, run_dir: Path) -> Path:
    """SIGKILL ``process`` as soon as ``run_dir/checkpoint-last.pt`` exists; check it holds epoch 0; return it."""
    checkpoint = run_dir / "checkpoint-last.pt"
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0  # killed after its first checkpoint
    assert not (run_dir / "summary.json").exists()
    return checkpoint
