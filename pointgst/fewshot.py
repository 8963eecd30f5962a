"""The few-shot protocol end to end: episodes on disk, one training run per fold, accuracy as mean ± std.

An n-way k-shot fold trains on k shapes of each of n classes and tests on ``query_per_class`` (20) test shapes of
each (``docs/datasets.md`` §2.3). Episodes come from one of two places, and either way lie on disk in the run
folder, so a run is reproducible and shareable:

- drawn with a recorded seed from the recipe's dataset (:func:`draw_episodes`): support from its training split,
  queries from its test split; fold ``f`` is drawn with seed ``seed * 1000 + f``;
- the official ModelNetFewshot pickles ``ROOT/{way}way_{shot}shot/{fold}.pkl`` (:func:`convert_official_episodes`,
  behind ``allow_pickle``), converted once into the same safe layout.

Layout of an episodes folder: ``EPISODES/{way}way_{shot}shot/fold{f}/`` holding ``train.npz`` and ``test.npz``
(``points`` (M, N, 3), ``labels`` (M,) in ``0..way-1``, ``names`` (M,)), ``shape_names.txt`` (the episode's classes in
label order) and ``episode.json`` (where the fold came from). Each fold is an ordinary training run of a ``pack``
dataset (``RUN/fold{f}``); a fold whose ``summary.json`` exists is not rerun, an interrupted one resumes from its
last checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import statistics
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pointgst.atomic import write_text_atomic
from pointgst.data import build_dataset, few_shot_episode
from pointgst.data.modelnet import MODELNET40_CLASSES
from pointgst.data.modelnet_dat import UnsafeDatasetError, _write_pack
from pointgst.data.readers import DatasetError, check_cloud, pc_normalize
from pointgst.recipe import FewShotSpec, Recipe, RecipeError, parse_folds
from pointgst.training import train

__all__ = ["convert_official_episodes", "draw_episodes", "episode_folder", "fewshot_spec", "fold_recipe", "report",
           "run_fewshot"]

FOLD_LAYOUT = "EPISODES/{way}way_{shot}shot/fold{f}/{train,test}.npz + shape_names.txt"


def episode_folder(episodes: str | os.PathLike, way: int, shot: int, fold: int) -> Path:
    """``EPISODES/{way}way_{shot}shot/fold{fold}``."""
    return Path(episodes) / f"{way}way_{shot}shot" / f"fold{fold}"


def fewshot_spec(recipe: Recipe) -> FewShotSpec:
    """The recipe's few-shot section; ``RecipeError`` naming the fix when it has none."""
    if recipe.fewshot is None:
        raise RecipeError(f"recipe {recipe.name!r} has no fewshot section: add one (way, shot, ...), pass --way and "
                          "--shot, or use a few-shot recipe (pointgst recipes lists fewshot-*)")
    return recipe.fewshot


def draw_episodes(recipe: Recipe, episodes: str | os.PathLike) -> Path:
    """Draw the episodes of the recipe's folds from its dataset into ``episodes`` (folds already there are kept,
    after a check that they were drawn from the same source with the same seed). Returns ``episodes``."""
    spec = fewshot_spec(recipe)
    source = {**asdict(recipe.data), "shuffle_points": False}
    record = {"source": "drawn", "dataset": recipe.data.dataset, "root": str(Path(recipe.data.root).resolve()),
              "way": spec.way, "shot": spec.shot, "query_per_class": spec.query_per_class}
    pools: dict[str, Any] = {}
    for fold in parse_folds(spec.folds):
        folder = episode_folder(episodes, spec.way, spec.shot, fold)
        expected = {**record, "fold": fold, "seed": spec.episode_seed * 1000 + fold}
        if (folder / "episode.json").is_file():
            found = json.loads((folder / "episode.json").read_text())
            differs = {k for k in expected if found.get(k) != expected[k]}
            if differs:
                raise ValueError(f"{folder} holds an episode drawn differently ({', '.join(sorted(differs))}); "
                                 "use another --out, or delete that folder to draw it again")
            continue
        if not pools:
            pools = {split: build_dataset(source, split) for split in ("train", "test")}
        support, query, classes = few_shot_episode(pools["train"].labels, spec.way, spec.shot,
                                                   query_per_class=spec.query_per_class,
                                                   seed=expected["seed"], query_labels=pools["test"].labels)
        names = [pools["train"].class_names[c] for c in classes.tolist()]
        for split, rows in (("train", support), ("test", query)):
            pool = pools[split]
            clouds = np.stack([pool[i][0].numpy() for i in rows.tolist()]).astype(np.float32)
            labels = np.repeat(np.arange(spec.way), len(rows) // spec.way)
            ids = getattr(pool, "shape_ids", None)
            shape_names = [ids[i] if ids else f"{split}_{i}" for i in rows.tolist()]
            _write_pack(folder / f"{split}.npz", clouds, labels, shape_names, names)
        write_text_atomic(folder / "episode.json", json.dumps(
            {**expected, "classes": names, "train_rows": support.tolist(), "test_rows": query.tolist()}, indent=1))
    return Path(episodes)


def convert_official_episodes(root: str | os.PathLike, out: str | os.PathLike, *, allow_pickle: bool = False
                              ) -> list[Path]:
    """Convert the official ModelNetFewshot pickles under ``root`` (``{way}way_{shot}shot/{fold}.pkl``, each a pickle
    of ``{"train": [...], "test": [...]}`` with items ``(points (N, >=3), label, name)``) into the safe layout
    under ``out``. Points keep xyz, centred and scaled to the unit sphere (what the official loader does to every
    item). Returns the fold folders written."""
    root = Path(root)
    files = sorted(root.glob("*way_*shot/*.pkl"))
    if not files:
        raise DatasetError(f"no official few-shot files under {root}: expected {root}/{{way}}way_{{shot}}shot/"
                           "{fold}.pkl (the ModelNetFewshot release)")
    if not allow_pickle:
        raise UnsafeDatasetError(
            f"the official few-shot files under {root} are Python pickles: loading them can run arbitrary code. "
            "Convert them once, only if you trust their source: pointgst data convert-fewshot ROOT OUT "
            "--allow-pickle (or allow_pickle=True), then use the converted folder")
    written = []
    for path in files:
        match = re.fullmatch(r"(\d+)way_(\d+)shot", path.parent.name)
        if not match or not path.stem.isdigit():
            continue
        warnings.warn(f"unpickling {path}: only do this for files from a source you trust", UserWarning,
                      stacklevel=2)
        try:
            with open(path, "rb") as handle:
                content = pickle.load(handle)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
            raise DatasetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
        way, shot = int(match[1]), int(match[2])
        folder = episode_folder(out, way, shot, int(path.stem))
        splits = {split: _official_items(content, split, path) for split in ("train", "test")}
        class_names = _official_class_names(splits, way, path)
        for split, (clouds, labels, names) in splits.items():
            _write_pack(folder / f"{split}.npz", clouds, labels, [str(n) for n in names], class_names)
        write_text_atomic(folder / "episode.json", json.dumps(
            {"source": "official", "file": str(path.resolve()), "way": way, "shot": shot, "fold": int(path.stem),
             "classes": class_names}, indent=1))
        written.append(folder)
    return written


def _official_items(content: Any, split: str, path: Path) -> tuple[np.ndarray, np.ndarray, list]:
    if not isinstance(content, dict) or split not in content or not len(content[split]):
        raise DatasetError(f"{path}: expected a pickle of {{'train': [...], 'test': [...]}} with items "
                           "(points, label, name)")
    clouds, labels, names = [], [], []
    for i, item in enumerate(content[split]):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise DatasetError(f"{path}: item {i} of {split!r} is not (points, label, name)")
        points, label, name = item
        clouds.append(pc_normalize(check_cloud(np.asarray(points, dtype=np.float32), f"{path} ({split} {i})")))
        labels.append(int(np.asarray(label).reshape(-1)[0]))
        names.append(name)
    if len({c.shape for c in clouds}) != 1:
        raise DatasetError(f"{path}: the {split} clouds have different point counts")
    return np.stack(clouds), np.asarray(labels, dtype=np.int64), names


def _official_class_names(splits: dict, way: int, path: Path) -> list[str]:
    """The episode's class names: from the items' third field when it is the original ModelNet40 label (an int) or
    a shape name like ``airplane_0627``, the same for every item of a label; else ``class0`` ... ."""
    found: dict[int, set[str]] = {}
    for _, labels, names in splits.values():
        if labels.min() < 0 or labels.max() >= way:
            raise DatasetError(f"{path}: labels must be 0..{way - 1} (episode labels), got {labels.min()}..."
                               f"{labels.max()}")
        for label, name in zip(labels.tolist(), names):
            if isinstance(name, (int, np.integer)) and 0 <= int(name) < len(MODELNET40_CLASSES):
                found.setdefault(label, set()).add(MODELNET40_CLASSES[int(name)])
            elif isinstance(name, str) and re.fullmatch(r"[a-z_]+_\d+", name):
                found.setdefault(label, set()).add(name.rsplit("_", 1)[0])
            else:
                found.setdefault(label, set()).add("")
    return [next(iter(found[i])) or f"class{i}" if len(found.get(i, ())) == 1 else f"class{i}" for i in range(way)]


def fold_recipe(recipe: Recipe, folder: Path, fold: int) -> Recipe:
    """The recipe of one fold: the recipe's backbone, method and training on the episode pack in ``folder``, model
    selection on the episode's test split (the official protocol; the last epoch's accuracy is reported too), or
    none with ``train.selection: last`` (no per-epoch evaluation)."""
    spec = fewshot_spec(recipe)
    settings = recipe.to_dict()
    del settings["fewshot"]
    settings["name"] = f"{recipe.name}-{spec.way}w{spec.shot}s-fold{fold}"
    settings["data"].update(dataset="pack", variant=None, format="npz", root=str(folder.resolve()),
                            num_classes=spec.way, val_fraction=0.0, max_train_samples=None,
                            max_test_samples=None, allow_pickle=False, num_points=None)
    settings["train"]["selection"] = "last" if recipe.train.selection == "last" else "test"
    return Recipe.from_dict(settings)


def run_fewshot(recipe: Recipe, out: str | os.PathLike, *, device: str | None = None, progress: bool = True
                ) -> dict[str, Any]:
    """Train every fold of the recipe's few-shot section into ``out/fold{f}`` (finished folds are read back, not
    rerun; an interrupted one resumes) and write ``out/fewshot.json``.

    Episodes: ``fewshot.episodes`` (converted official or earlier drawn ones, :data:`FOLD_LAYOUT`), or drawn from
    the recipe's dataset into ``out/episodes``. Returns per-fold accuracies and their mean and std over folds."""
    spec, out = fewshot_spec(recipe), Path(out)
    folds = parse_folds(spec.folds)
    episodes = Path(spec.episodes) if spec.episodes else draw_episodes(recipe, out / "episodes")
    missing = [f for f in folds if not (episode_folder(episodes, spec.way, spec.shot, f) / "test.npz").is_file()]
    if missing:
        raise DatasetError(f"{episodes} has no {spec.way}way_{spec.shot}shot episodes for folds {missing}: expected "
                           f"{FOLD_LAYOUT}")
    rows = []
    for fold in folds:
        run_dir = out / f"fold{fold}"
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            print(f"fold {fold}: finished earlier, {100 * summary['test_acc_last_epoch']:.2f}%", flush=True)
        else:
            resume = (run_dir / "checkpoint-last.pt").is_file()
            print(f"fold {fold}: {'resuming' if resume else 'training'} ({spec.way}-way {spec.shot}-shot)",
                  flush=True)
            fold_folder = episode_folder(episodes, spec.way, spec.shot, fold)
            summary = train(fold_recipe(recipe, fold_folder, fold), run_dir, resume=resume, device=device,
                            progress=progress)
        rows.append({"fold": fold, "test_acc_last_epoch": summary["test_acc_last_epoch"],
                     **({"test_acc_best_on_test": summary["test_acc"]} if summary["selection"] == "test" else {}),
                     "train_seconds": summary.get("train_seconds"),
                     "trainable_parameters": summary.get("trainable_parameters")})
    best_on_test = all("test_acc_best_on_test" in row for row in rows)
    result = {"recipe": recipe.name, **asdict(spec), "episodes": str(episodes), "completed_folds": len(rows),
              **_mean_std(rows, "test_acc_last_epoch"),
              **(_mean_std(rows, "test_acc_best_on_test") if best_on_test else {}),
              "note": "test_acc_last_epoch: the last epoch, no model selection" + (
                  "; test_acc_best_on_test: the best epoch picked on the same test shapes (the official protocol, "
                  "optimistic)" if best_on_test else " (train.selection=last: no per-epoch evaluation)"),
              "per_fold": rows}
    write_text_atomic(out / "fewshot.json", json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict[str, Any]) -> str:
    """The lines ``pointgst fewshot`` prints: every fold, then the mean ± std over folds, as percentages."""
    folds, best_on_test = result["completed_folds"], "test_acc_best_on_test_mean" in result
    lines = [f"\n{result['way']}-way {result['shot']}-shot, {result['recipe']}, {folds} folds"]
    lines += [f"  fold {row['fold']}: {100 * row['test_acc_last_epoch']:6.2f}%" + (
              f"  (best epoch on test: {100 * row['test_acc_best_on_test']:6.2f}%)" if best_on_test else "")
              for row in result["per_fold"]]
    lines.append(f"accuracy, last epoch: {100 * result['test_acc_last_epoch_mean']:.2f} ± "
                 f"{100 * result['test_acc_last_epoch_std']:.2f}%  (mean ± std over {folds} folds)")
    if best_on_test:
        lines.append(f"accuracy, best epoch picked on the test shapes (official protocol, optimistic): "
                     f"{100 * result['test_acc_best_on_test_mean']:.2f} ± "
                     f"{100 * result['test_acc_best_on_test_std']:.2f}%")
    return "\n".join(lines)


def _mean_std(rows: list[dict], key: str) -> dict[str, float]:
    values = [r[key] for r in rows]
    return {f"{key}_mean": statistics.fmean(values),
            f"{key}_std": statistics.stdev(values) if len(values) > 1 else 0.0}
