"""Official PointGST fidelity (``docs/official.md``, Q18): the ``official`` preset builds the graphs the official code
builds, and an official fine-tuned checkpoint (a full state dict with ``gft_adapter`` keys) converts into an adapter
that gives the official model's logits.

The reference here is written in this file from the official formulas (``docs/official.md`` §2-§3): distances by
``torch.cdist``, ``d_min`` the smallest positive entry of the whole distance tensor (round-off on the diagonal
included), ``W = 1 / (L / d_min + I)``, ``L = I - D^-1/2 W D^-1/2`` as matrix products with ``rsqrt(D + 1e-6)``,
``eigh`` in float32, forward transform ``U x``; and a Point-MAE + PCSA model in the official key layout with the
official block order and explicit-softmax attention (the Point-MAE parts of ``tests/official_point_mae.py``).
Grouping (FPS, kNN) and the Morton key use pointgst's ops, which have their own reference tests.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pointgst
from pointgst.adapters.pcsa import PCSAConfig
from pointgst.adapters.pcsa.config import OFFICIAL_OPTIONS
from pointgst.ops import farthest_point_sample, gather_points, z_order_key
from pointgst.spectral import compute_spectral_basis, eigh

from . import official_point_mae as mae
from .cli_runs import run_cli_here

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "modelnet40_1024").is_dir(), reason="shared ModelNet40 pack absent")


def modelnet40_test_shapes(count: int = 4) -> torch.Tensor:
    """The first ``count`` shapes of the real ModelNet40 test split, (count, 1024, 3)."""
    return torch.from_numpy(np.load(SHARED_DATA / "modelnet40_1024" / "test.npz")["points"][:count])


# ------------------------------------------------------------------------------------------------ official formulas

def reference_basis(centers: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns) of the official graph of every ``(n, 3)`` set in ``centers`` ``(batch, n, 3)``."""
    distance = torch.cdist(centers, centers)
    d_min = torch.min(distance[distance > 0])  # one value over the whole call, the diagonal round-off included
    eye = torch.eye(distance.shape[-1]).unsqueeze(0)
    weights = 1 / (distance / d_min + eye)
    inv_sqrt = torch.diag_embed(torch.rsqrt(weights.sum(-1) + 1e-6))
    laplacian = torch.eye(distance.shape[-1]) - inv_sqrt @ weights @ inv_sqrt
    return eigh(laplacian)[1]  # the solver call pointgst makes: one LAPACK thread (the count changes eigenvectors)


def reference_local_order(centers: torch.Tensor) -> torch.Tensor:
    """The official order of the centres along the Morton curve, (B, G)."""
    return torch.argsort(z_order_key(centers), dim=1, stable=True)


def reference_local_bases(centers: torch.Tensor, local_size: int) -> torch.Tensor:
    b, g, _ = centers.shape
    ordered = gather_points(centers, reference_local_order(centers))
    return reference_basis(ordered.reshape(b * (g // local_size), local_size, 3)).reshape(b, g // local_size,
                                                                                          local_size, local_size)


def pcsa_forward(adapter: nn.ModuleDict, x: torch.Tensor, basis: torch.Tensor, local: torch.Tensor,
                 order: torch.Tensor) -> torch.Tensor:
    """The official PCSA: bottleneck, global and local branches in the ``U x`` domain, shared ``adapt1``."""
    b, m, k, _ = local.shape
    h = adapter["down"](x)
    s = h[:, -m * k:]
    a = F.silu(h)
    f = basis @ s
    s_global = basis.mT @ (f + F.silu(adapter["adapt1"](adapter["norm_ly1"](f))))
    chunks = gather_points(s, order).reshape(b, m, k, -1)
    f_local = local @ chunks
    s_local = (local.mT @ (f_local + F.silu(adapter["adapt1"](adapter["norm_ly2"](f_local))))).reshape(b, m * k, -1)
    s_local = gather_points(s_local, torch.argsort(order, dim=1))
    a = torch.cat([a[:, :-m * k], a[:, -m * k:] + s_global + s_local], dim=1)
    return adapter["up"](a)


class ReferencePointGST(nn.Module):
    """Point-MAE + PCSA as the official ``PointTransformer_PGST`` computes it, with its state-dict keys."""

    def __init__(self, num_classes: int, num_group: int, dim: int = 384, depth: int = 12, heads: int = 6,
                 rank: int = 36, local_size: int = 32):
        super().__init__()
        self.num_group, self.heads, self.local_size = num_group, heads, local_size
        self.encoder = mae.official_encoder(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = mae.official_pos_embed(dim)

        def add_pcsa(block: nn.Module) -> None:
            block.gft_adapter = nn.ModuleDict(dict(down=nn.Linear(dim, rank), up=nn.Linear(rank, dim),
                                                   adapt1=nn.Linear(rank, rank), norm_ly1=nn.LayerNorm(rank),
                                                   norm_ly2=nn.LayerNorm(rank)))

        self.blocks = mae.official_blocks(dim, depth, add_pcsa)
        self.norm = nn.LayerNorm(dim)
        self.cls_head_finetune = mae.official_head(2 * dim, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens, centers = mae.group_and_encode(self.encoder, points, self.num_group)
        b = points.shape[0]
        basis = reference_basis(centers)
        local = reference_local_bases(centers, self.local_size)
        order = reference_local_order(centers)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        for block in self.blocks.blocks:
            x = x + pos
            x = x + mae.explicit_attention(block.attn, block.norm1(x), self.heads)
            t = pcsa_forward(block.gft_adapter, x, basis, local, order)
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x)))) + t
        x = self.norm(x)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))


def trained_reference(num_classes: int, num_group: int) -> ReferencePointGST:
    """A reference model with every tensor non-trivial, as after official training (drifted BN statistics too)."""
    torch.manual_seed(5)
    model = ReferencePointGST(num_classes, num_group)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("up.weight", "up.bias", "adapt1.weight", "adapt1.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


# ------------------------------------------------------------------------------------------------ tests

@needs_data
@pytest.mark.parametrize("num_group", [64, 128])
def test_official_preset_bases_equal_the_official_formulas_on_real_modelnet40_centres(num_group):
    points = modelnet40_test_shapes(4)
    centers = gather_points(points, farthest_point_sample(points, num_group, skip_near_origin=True))
    basis = compute_spectral_basis(centers, PCSAConfig(**OFFICIAL_OPTIONS))
    assert (basis.global_basis - reference_basis(centers)).abs().max().item() <= 1e-6
    assert (basis.local_basis - reference_local_bases(centers, 32)).abs().max().item() <= 1e-6
    # the official construction is not the exact one: its d_min is diagonal round-off, not a centre distance
    exact = compute_spectral_basis(centers, PCSAConfig(**{**OFFICIAL_OPTIONS, "distance": "exact"}))
    assert (exact.global_basis.abs() - basis.global_basis.abs()).abs().max().item() > 0.1


@needs_data
@pytest.mark.parametrize("num_group, batch", [(64, 4), (128, 4), (64, 1)])
def test_official_checkpoint_converts_and_gives_the_official_logits(tmp_path, capsys, num_group, batch):
    reference = trained_reference(num_classes=40, num_group=num_group)
    points = modelnet40_test_shapes(batch)
    with torch.no_grad():
        expected = reference(points)
    state = reference.state_dict()
    assert sum(".gft_adapter." in k for k in state) == 12 * 10 and len(state) == 174 + 120
    torch.save({"base_model": {f"module.{k}": v for k, v in state.items()}, "epoch": 300, "metrics": {"acc": 93.5}},
               tmp_path / "modelnet_mae.pth")
    code, out, err = run_cli_here(["convert", tmp_path / "modelnet_mae.pth", tmp_path / "converted"], capsys)
    assert code == 0 and "load_adapter" in out, err
    loaded = pointgst.load_adapter(tmp_path / "converted" / "adapter", num_group=num_group).eval()
    config = loaded.peft_config["default"]
    assert config.preset == "official" and config.method_configs()["pcsa"].distance == "cdist"
    with torch.no_grad():
        logits = loaded(points)
    assert math.isfinite(logits.abs().max().item())
    assert (logits - expected).abs().max().item() <= 1e-5
