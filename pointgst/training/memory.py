"""Peak memory of a training or evaluation process: CUDA allocations, or the process's resident set."""

import resource
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocation, or the process's peak resident set size (``VmHWM`` on Linux: unlike ``ru_maxrss`` it
    does not include the memory of the parent this process was forked from)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
