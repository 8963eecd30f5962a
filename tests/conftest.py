"""Test-wide settings: no network (hub offline), deterministic seeds, small shared fixtures."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # safety net: read by huggingface_hub at import time
# bit-for-bit comparisons across processes: BLAS/LAPACK must not pick their thread counts by machine load
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
os.environ.setdefault("POINTGST_CACHE", os.path.join(os.path.dirname(__file__), ".cache-never-used"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clouds() -> torch.Tensor:
    """Two random clouds of 1024 points, (2, 1024, 3)."""
    return torch.randn(2, 1024, 3, generator=torch.Generator().manual_seed(1))
