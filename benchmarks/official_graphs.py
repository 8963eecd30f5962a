"""What the official graph construction does on real data (quirk Q18 of ``docs/official.md``): prints the figures
the README's official-vs-defaults table quotes.

On the ModelNet40 test shapes of the local pack (FPS centres with the official near-origin skip), it compares the
official construction (``distance="cdist"``: ``torch.cdist``, ``d_min`` the smallest positive entry of the whole call)
with pointgst's exact one (``distance="exact"``), both otherwise under the ``official`` preset:

- the round-off ``torch.cdist`` leaves on the diagonal, and the ``d_min`` it yields against the smallest distance
  between two centres (test shape 0, and the worst over ``--shapes`` shapes);
- how far the official off-diagonal weights are from the exact ones (their ratio);
- the largest difference of a basis entry and of an eigenvalue between the two constructions;
- the logits of one official-preset Point-MAE + PCSA (random backbone, adapters given non-zero values) under the two
  constructions, on four shapes.

Usage (from the project root; a few seconds on a CPU)::

    python benchmarks/official_graphs.py [--data ../shared/data/modelnet40_1024] [--groups 64] [--shapes 100]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

import pointgst
from pointgst.adapters.pcsa import PCSAConfig
from pointgst.adapters.pcsa.config import OFFICIAL_OPTIONS
from pointgst.ops import farthest_point_sample, gather_points
from pointgst.spectral import compute_spectral_basis, graph_adjacency, pairwise_distances

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "modelnet40_1024"))
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--shapes", type=int, default=100)
    args = parser.parse_args()
    points = torch.from_numpy(np.load(Path(args.data) / "test.npz")["points"][: args.shapes])
    centers = gather_points(points, farthest_point_sample(points, args.groups, skip_near_origin=True))
    print(f"ModelNet40 test shapes 0-{len(points) - 1}, {args.groups} FPS centres each, torch {torch.__version__}, CPU")

    exact = pairwise_distances(centers[:1].unsqueeze(1), "exact")[0, 0]
    cdist = pairwise_distances(centers[:1].unsqueeze(1), "cdist")[0, 0]
    off = ~torch.eye(args.groups, dtype=torch.bool)
    print(f"shape 0: smallest distance between two centres {exact[off].min().item():.4f}; torch.cdist diagonal "
          f"round-off up to {cdist.diagonal().max().item():.2e}, so the official d_min (smallest positive entry) is "
          f"{cdist[cdist > 0].min().item():.2e}")
    every = pairwise_distances(centers.unsqueeze(1), "cdist")[:, 0]
    print(f"all {len(points)} shapes: diagonal round-off up to {every.diagonal(dim1=-2, dim2=-1).max().item():.2e}")

    official = graph_adjacency(centers[:1].unsqueeze(1), "batch", "cdist")[0, 0]
    corrected = graph_adjacency(centers[:1].unsqueeze(1), "batch", "exact")[0, 0]
    ratio = (official[off] / corrected[off])
    diagonal = official.diagonal()
    print(f"shape 0: official / exact off-diagonal weight, median {ratio.median().item():.2e} "
          f"(range {ratio.min().item():.2e} to {ratio.max().item():.2e}); official self-loop weights "
          f"{diagonal.min().item():.3f} to {diagonal.max().item():.3f} (exact: 1)")

    with_cdist = compute_spectral_basis(centers, PCSAConfig(**OFFICIAL_OPTIONS))
    with_exact = compute_spectral_basis(centers, PCSAConfig(**{**OFFICIAL_OPTIONS, "distance": "exact"}))
    print(f"all shapes, official preset: largest basis-entry difference cdist vs exact "
          f"{(with_cdist.global_basis - with_exact.global_basis).abs().max().item():.3f} (global), "
          f"{(with_cdist.local_basis - with_exact.local_basis).abs().max().item():.3f} (local); largest eigenvalue "
          f"difference {(with_cdist.global_eigenvalues - with_exact.global_eigenvalues).abs().max().item():.3f}")

    torch.manual_seed(0)
    backbone = pointgst.create_backbone("point_mae", num_classes=40, num_group=args.groups, skip_near_origin=True)
    model = pointgst.wrap(backbone, preset="official").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and (".up." in name or ".adapt1." in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        logits = {}
        for distance in ("cdist", "exact"):
            for config in model.base_model.model.modules():
                if hasattr(config, "spectral"):
                    config.spectral = PCSAConfig(**{**OFFICIAL_OPTIONS, "distance": distance}).spectral_options()
            logits[distance] = model(points[:4])
    print(f"official-preset Point-MAE + PCSA on shapes 0-3: logits differ by up to "
          f"{(logits['cdist'] - logits['exact']).abs().max().item():.2e} between the two constructions (logit scale "
          f"{logits['cdist'].abs().max().item():.2f})")


if __name__ == "__main__":
    main()
