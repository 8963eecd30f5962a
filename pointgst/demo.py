"""``pointgst demo``: PCSA fine-tuning of the shipped ``point_mae_tiny.modelnet40`` backbone on the ModelNet10 sample
shipped in the package (``pointgst/sample_data``), offline, in a few minutes on a laptop CPU.

The demo is an ordinary training run (:func:`demo_recipe` is its recipe; the run folder holds ``recipe.yaml``, the
metrics, the best epoch's adapter under ``adapter/`` and ``summary.json``). ``random_weights=True`` runs the same demo
on a randomly initialised backbone of the same architecture: the comparison that shows what pretraining brings.
"""

from pathlib import Path
from typing import Any

from pointgst.recipe import Recipe
from pointgst.report import parameter_report
from pointgst.training import Trainer

DEMO_BACKBONE = "point_mae_tiny.modelnet40"


def sample_data_folder() -> Path:
    """The ModelNet10 sample shipped with pointgst (``train.npz``, ``test.npz``, ``shape_names.txt``, ``README.md``)."""
    from importlib import resources
    return Path(str(resources.files("pointgst") / "sample_data"))


def demo_recipe(*, random_weights: bool = False, epochs: int = 7, seed: int = 0) -> Recipe:
    """PCSA (rank 36, local graphs of 32 patches) on ``point_mae_tiny`` for the 10-class sample: 250 training shapes,
    30 held out (3 a class) to select the best epoch, 100 test shapes."""
    return Recipe.from_dict({
        "description": "pointgst demo: PCSA on point_mae_tiny" + (" (random weights)" if random_weights else
                                                                  ".modelnet40") + ", ModelNet10 sample",
        "backbone": {"name": DEMO_BACKBONE, "pretrained": not random_weights, "num_group": 64, "group_size": 32,
                     "drop_path_rate": 0.1},
        "method": {"name": "pcsa", "options": {"rank": 36, "local_size": 32}},
        "data": {"dataset": "modelnet10", "format": "npz", "root": str(sample_data_folder()), "num_classes": 10,
                 "npoints": 1024, "point_all": 1024, "augmentation": "scale_translate", "val_fraction": 0.1},
        "train": {"epochs": epochs, "warmup_epochs": min(1, epochs - 1), "batch_size": 16, "lr": 2e-3,
                  "schedule": "cosine", "selection": "val", "seed": seed, "num_workers": 0},
    }, name="demo-random-weights" if random_weights else "demo")


def free_run_folder(base: str | Path) -> Path:
    """``base`` if it does not exist yet, else ``base-2``, ``base-3``, ...: a demo never overwrites a saved run."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def run_demo(out_dir: str | Path, *, random_weights: bool = False, epochs: int | None = None, progress: bool = True,
             report: bool = True) -> dict[str, Any]:
    """Train the demo into ``out_dir`` (which must not hold a run); returns the run summary. With ``report``, print
    the trainable-parameter report before training."""
    recipe = demo_recipe(random_weights=random_weights, **({"epochs": epochs} if epochs else {}))
    trainer = Trainer(recipe, out_dir, progress=progress)
    if report:
        print(parameter_report(trainer.model))
    return trainer.fit()
