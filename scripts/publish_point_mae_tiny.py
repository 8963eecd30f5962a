"""Publish a ``pointgst pretrain`` run of ``point_mae_tiny`` as the shipped ``point_mae_tiny.modelnet40`` weights.

Usage (from the project root, after ``pointgst pretrain pretrain-modelnet40.point_mae_tiny --out runs/point_mae_tiny``)::

    python scripts/publish_point_mae_tiny.py runs/point_mae_tiny --data ../shared/data/modelnet40_1024

Copies the run's ``backbone/`` weights into ``pointgst/weights/point_mae_tiny.modelnet40/`` with its loss curve, runs
the two linear probes (these weights, and the same architecture with random weights, seed 0; the same code as
``pointgst probe``), and writes ``MODEL_CARD.md`` from the run's own files.
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from pointgst.atomic import write_text_atomic
from pointgst.backbones.convert import sha256_of
from pointgst.backbones.factory import create_backbone
from pointgst.probe import probe_modelnet_pack

TAG = "point_mae_tiny.modelnet40"
TARGET = Path(__file__).resolve().parents[1] / "pointgst" / "weights" / TAG


def probe(pretrained: bool, data_root: str) -> tuple[object, str]:
    """The linear probe of the published weights (read from TARGET) or of random weights (seed 0), and the
    ``pointgst probe`` command that reproduces it."""
    torch.manual_seed(0)
    backbone = create_backbone("point_mae_tiny", pretrained=TARGET if pretrained else False)
    result = probe_modelnet_pack(backbone, data_root, progress=True)
    command = f"pointgst probe {TAG if pretrained else 'point_mae_tiny --random-weights'} --data {data_root}"
    print(f"{command}: {result}")
    return result, command


def encoder_parameters() -> int:
    backbone = create_backbone("point_mae_tiny")
    return sum(p.numel() for name, p in backbone.named_parameters() if not name.startswith(backbone.head_modules))


def card(run: Path, summary: dict, rows: list[dict], recipe: dict, probes: list, weights_sha: str,
         data_root: str) -> str:
    pretrained, random = probes
    train, data, options = recipe["train"], recipe["data"], recipe["method"]["options"]
    table = ["| epoch | lr (end of epoch) | train loss | validation loss | seconds |", "|---:|---:|---:|---:|---:|"]
    seconds = sorted(r["epoch_seconds"] for r in rows)
    median = seconds[len(seconds) // 2]
    table += [f"| {r['epoch'] + 1} | {r['lr']:.2e} | {r['train_loss']:.5f} | {r['select_loss']:.5f} | "
              f"{r['epoch_seconds']:.0f} |" for r in rows]
    return "\n".join([
        f"# Model card: `{TAG}`",
        "",
        "pointgst's own small Point-MAE backbone, pretrained by masked autoencoding (Pang et al., ECCV 2022) without "
        "labels on the ModelNet40 training split. It exists so that pointgst runs its main job (`pointgst demo`) and "
        "its methods benchmark offline on a CPU; it is far smaller and less trained than the official Point-MAE.",
        "",
        "```python",
        "import pointgst",
        f"backbone = pointgst.create_backbone(\"{TAG}\", pretrained=True)  # offline: the weights ship in the package",
        "```",
        "",
        "## Architecture",
        "",
        "`point_mae_tiny`: the Point-MAE code path (`PointMAE`) with width 192, 4 blocks, 3 heads, MLP ratio 4, patch "
        "encoder 3-32-64 | 128-128-192, 64 patches of 32 points, drop path 0.1. Pretraining decoder: 2 blocks (not "
        f"shipped). Backbone parameters without the head: {encoder_parameters():,}; pretraining model "
        f"{summary['parameters']:,}. File: `model.safetensors` (float32, sha256 `{weights_sha}`), encoder keys in the "
        "official fine-tuning layout (`cls_token`, `cls_pos` and the head are not pretrained and are reported "
        "missing on load, as with the official pretraining checkpoint).",
        "",
        "## Data",
        "",
        f"The official {data['dataset']} training split, {data['npoints']:,} points per shape (the local pack "
        f"`{data['root']}`, source and terms in `pointgst/sample_data/README.md`); a fraction {data['val_fraction']} of "
        "it held out (stratified, seeded) to score the reconstruction loss, the rest pretrains. No labels and no test "
        "shapes are used.",
        "",
        "## Command",
        "",
        "```",
        f"pointgst pretrain pretrain-modelnet40.point_mae_tiny --out {run}",
        f"python scripts/publish_point_mae_tiny.py {run} --data {data_root}",
        "```",
        "",
        f"Recipe (`recipes/{summary['recipe']}.yaml`, copied into the run folder): masks "
        f"{100 * options.get('mask_ratio', 0.6):.0f}% of the patches, decoder depth {options.get('decoder_depth', 4)}, "
        f"Chamfer-L2 reconstruction, AdamW lr {train['lr']:g}, weight decay {train['weight_decay']:g}, batch "
        f"{train['batch_size']}, {train['epochs']} epochs ({train['warmup_epochs']} warm-up), {train['schedule']} "
        f"schedule, {data['augmentation']} augmentation, seed {train['seed']}.",
        "",
        f"Wall time: {summary['epoch_seconds_total'] / 60:.1f} min of training epochs on a {os.cpu_count()}-core CPU "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads), peak memory "
        f"{summary['peak_memory_mb'] / 1024:.2f} GiB. The median epoch took {median:.0f} s, so the run takes about "
        f"{median * len(rows) / 60:.0f} min on an otherwise idle machine; an epoch that shared the CPU with another job "
        "took longer (see the table).",
        "",
        "## Loss curve",
        "",
        "Chamfer-L2 reconstruction loss of the hidden patches (validation: the held-out shapes, fixed masks, eval "
        "mode). Plot: `loss_curve.png`.",
        "",
        *table,
        "",
        "## Evidence that pretraining worked: linear probe",
        "",
        "Frozen features (the pooled `[cls, max]` tokens the head reads, eval mode, stored point order) of the complete "
        "ModelNet40 split; an L2-regularised logistic regression (weight decay 1e-3, full-batch L-BFGS, standardised "
        f"features) fitted on the {pretrained[0].train_count:,} training shapes and scored on the "
        f"{pretrained[0].test_count:,} test shapes.",
        "",
        "| weights | test accuracy | mean class accuracy | command |",
        "|---|---:|---:|---|",
        f"| `{TAG}` (these) | {100 * pretrained[0].acc:.2f}% | {100 * pretrained[0].macc:.2f}% | `{pretrained[1]}` |",
        f"| random (same architecture, seed 0) | {100 * random[0].acc:.2f}% | {100 * random[0].macc:.2f}% | "
        f"`{random[1]}` |",
        "",
        "## Licence and limits",
        "",
        "pointgst's MIT licence covers the code that made these weights. The weights were learned from ModelNet, "
        "whose models keep their authors' copyright and which is offered for academic research use only; use the "
        "weights under the same terms. The "
        "backbone saw the ModelNet40 training shapes during pretraining, so it is not a fair starting point for "
        "claims of transfer to ModelNet40; use it to try pointgst, not to compare with published numbers.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the pointgst pretrain run folder")
    parser.add_argument("--data", required=True, help="the ModelNet40 .npz pack folder")
    args = parser.parse_args()
    summary = json.loads((args.run / "summary.json").read_text())
    if summary["architecture"] != "point_mae_tiny":
        raise SystemExit(f"{args.run} pretrained {summary['architecture']}, not point_mae_tiny")
    recipe = yaml.safe_load((args.run / "recipe.yaml").read_text())
    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(args.run / "backbone" / name, TARGET / name)
    shutil.copyfile(args.run / "curves.png", TARGET / "loss_curve.png")
    probes = [probe(True, args.data), probe(False, args.data)]
    text = card(args.run, summary, rows, recipe, probes, sha256_of(TARGET / "model.safetensors"), args.data)
    write_text_atomic(TARGET / "MODEL_CARD.md", text)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
