"""What each ``pointgst`` command does once its arguments are parsed (:mod:`pointgst.cli` builds the parser). Each
handler imports the library module it needs when it runs, so ``pointgst --help`` loads neither torch nor peft."""

import argparse
import logging
import sys
from pathlib import Path


def convert_command(args: argparse.Namespace) -> None:
    import yaml

    from pointgst.converting import convert_checkpoint

    options = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--option {item!r}: expected NAME=VALUE, e.g. --option perturbation=0.8")
        options[name.strip()] = yaml.safe_load(value)
    out = convert_checkpoint(args.file, args.out_dir, architecture=args.arch, overwrite=args.overwrite,
                             options=options)
    if (out / "adapter").is_dir():
        print(f"wrote {out}: a fine-tuned model; load it with pointgst.load_adapter({str(out / 'adapter')!r})")
    else:
        print(f"wrote {out}; load it with pointgst.create_backbone(ARCH, pretrained={str(out)!r})")


def params_command(args: argparse.Namespace) -> None:
    import torch

    import pointgst
    from pointgst.adapters import METHODS, list_methods
    from pointgst.backbones.factory import (
        ARCHITECTURES,
        DEFAULT_NUM_CLASSES,
        DEFAULT_NUM_PARTS,
        parse_name,
        task_architecture,
    )
    from pointgst.recipe import SEGMENTATION_DATASETS, list_recipes, load_recipe

    if args.name in list_recipes() or args.name.endswith((".yaml", ".yml")):  # the model a recipe trains
        from pointgst.training.setup import wrap_recipe

        recipe = load_recipe(args.name, [])
        with torch.device("meta"):  # the model the recipe trains, without its weights
            model = wrap_recipe(recipe, pretrained=False)
        labels = "parts" if recipe.data.dataset in SEGMENTATION_DATASETS else "classes"
        print(f"recipe {recipe.name}: {recipe.data.num_classes} {labels}, "
              f"{recipe.backbone.num_group} groups of {recipe.backbone.group_size} points")
        print(pointgst.parameter_report(model))
        return
    arch = task_architecture(parse_name(args.name)[0], args.task)
    num_classes = args.num_classes or (DEFAULT_NUM_PARTS if args.task == "segmentation" else DEFAULT_NUM_CLASSES)
    methods = args.method.split(",")
    if args.method == "all":  # every method that runs on this architecture
        methods = [m for m in list_methods() if all(spec.supports(arch) for spec in METHODS.parts(m))]
    options = {k: v for k, v in (("preset", args.preset), ("placement", args.placement)) if v}
    reports = []
    for method in methods:
        with torch.device("meta"):  # counts need no memory and no weights
            backbone = ARCHITECTURES[arch](num_classes=num_classes)
            model = pointgst.wrap(backbone, method=method, **(options if method not in ("lora", "full") else {}))
        reports.append(pointgst.parameter_report(model))
    if len(reports) == 1:
        print(reports[0])
        return
    print(f"{arch}, {num_classes} {'parts' if args.task == 'segmentation' else 'classes'}: trainable parameters by "
          "method")
    for report in reports:
        paper = f"   paper: {report.paper_figure}" if report.paper_figure else ""
        print(f"  {report.method:<18} {report.trainable:>12,}  {100 * report.ratio:6.2f}%{paper}")
    others = [m for m in METHODS.names(combinations=False) if m not in methods] if args.method == "all" else []
    if others:
        print(f"  (not on {arch}: {', '.join(others)})")


def train_command(args: argparse.Namespace) -> None:
    from pointgst.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)  # bad keys and types fail here, before any work
    from pointgst.training import train
    out = args.out or f"runs/{recipe.name}"
    summary = train(recipe, out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if summary:
        _print_table(summary)
        print(f"run folder: {out}")


def pretrain_command(args: argparse.Namespace) -> None:
    from pointgst.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    from pointgst.training.pretrain import BACKBONE_FOLDER, PRETRAIN_CHECKPOINT, pretrain
    out = args.out or f"runs/{recipe.name}"
    summary = pretrain(recipe, out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if summary:
        _print_table(summary)
        print(f"run folder: {out}\nofficial pretraining checkpoint: {out}/{PRETRAIN_CHECKPOINT}\n"
              f"backbone weights: create_backbone({recipe.backbone.name!r}, pretrained='{out}/{BACKBONE_FOLDER}')")


def fewshot_command(args: argparse.Namespace) -> None:
    from pointgst.recipe import load_recipe

    flags = {"way": args.way, "shot": args.shot, "query_per_class": args.query, "folds": args.folds,
             "episodes": args.episodes, "episode_seed": args.episode_seed}
    recipe = load_recipe(args.recipe, args.set + [f"fewshot.{k}={v}" for k, v in flags.items() if v is not None])
    from pointgst.fewshot import fewshot_spec, report, run_fewshot
    spec = fewshot_spec(recipe)
    out = args.out or f"runs/{recipe.name}-{spec.way}w{spec.shot}s"
    result = run_fewshot(recipe, out, device=args.device, progress=not args.no_progress)
    print(report(result))
    print(f"run folder: {out}  (fewshot.json, fold*/, episodes in {result['episodes']})")


def probe_command(args: argparse.Namespace) -> None:
    import torch

    from pointgst.backbones.factory import create_backbone, parse_name
    from pointgst.probe import probe_modelnet_pack

    _, cfg = parse_name(args.name)
    pretrained = cfg is not None and not args.random_weights
    torch.manual_seed(args.seed)  # the random initialisation, where the weights are not pretrained
    backbone = create_backbone(args.name, pretrained=pretrained)
    result = probe_modelnet_pack(backbone, args.data, dataset=args.dataset, progress=not args.no_progress)
    weights = "pretrained weights" if pretrained else f"random weights (seed {args.seed})"
    print(f"{args.name}, {weights}, {args.dataset}: {result}")


def demo_command(args: argparse.Namespace) -> None:
    import time

    from pointgst.demo import DEMO_BACKBONE, free_run_folder, run_demo, sample_data_folder

    started = time.time()
    out = free_run_folder(args.out)
    print(f"pointgst demo: PCSA on {DEMO_BACKBONE} (shipped weights), ModelNet10 sample shipped in the package "
          f"({sample_data_folder()}; its README.md gives the source and terms), offline, CPU")
    runs = [("pretrained", out, False)] + ([] if args.no_compare else [("random weights", out / "random-weights",
                                                                         True)])
    results = {}
    for label, folder, random_weights in runs:
        if random_weights:
            print("\nthe same demo on a randomly initialised point_mae_tiny (no pretraining), for comparison:")
        summary = run_demo(folder, random_weights=random_weights, progress=not args.no_progress,
                           report=not random_weights)
        results[label] = summary
        print(f"{label}: test accuracy {100 * summary['test_acc']:.1f}% (mean class {100 * summary['test_macc']:.1f}%; "
              f"10 classes, chance 10.0%) after {summary['epochs']} epochs, best epoch {summary['best_epoch'] + 1} "
              f"selected on held-out training shapes")
    print(f"\nadapter saved to {out / 'adapter'}  (load: pointgst.load_adapter({str(out / 'adapter')!r}))")
    print(f"run folder: {out}  (recipe.yaml, metrics.csv, curves.png, summary.json)")
    if not args.no_compare:
        gain = 100 * (results["pretrained"]["test_acc"] - results["random weights"]["test_acc"])
        print(f"pretrained vs random weights: {gain:+.1f} points of test accuracy")
    print(f"total time {time.time() - started:.0f} s")


def _print_table(rows: dict) -> None:
    """``key  value`` lines; accuracies and mIoUs (keys with ``acc`` or ``miou``, fractions in [0, 1]) as percentages
    with two decimals (``summary.json`` / ``eval.json`` keep the full precision); a per-category table (segmentation)
    after them, one category a line."""
    flat = {k: v for k, v in rows.items() if not isinstance(v, dict)}
    width = max(len(k) for k in flat)
    print("\n".join(f"{k:<{width}}  {_readable(k, v)}" for k, v in flat.items()))
    for key, table in rows.items():
        if isinstance(table, dict) and all(isinstance(row, dict) and "miou" in row for row in table.values()):
            print(f"{key} (mIoU of the category's shapes):")
            print("\n".join(f"  {name:<12} {100 * row['miou']:6.2f}%  ({row['shapes']} shapes)"
                            for name, row in table.items()))


def _readable(key: str, value: object) -> object:
    if ("acc" in key or "miou" in key) and isinstance(value, float) and 0.0 <= value <= 1.0:
        return f"{100 * value:.2f}%"
    return value


def eval_command(args: argparse.Namespace) -> None:
    from pointgst.training import evaluate_run

    result = evaluate_run(args.run_dir, vote=args.vote, repeats=args.repeats, best_of=args.best_of,
                          device=args.device)
    _print_table(result)


def predict_command(args: argparse.Namespace) -> None:
    from pointgst.predict import Predictor, render_predictions

    logging.getLogger("pointgst").setLevel(logging.WARNING)  # stderr: one line per bad file, no weight-loading report
    if _is_segmentation_run(args.model):
        _predict_parts(args)
        return
    predictor = Predictor.from_path(args.model, device=args.device)
    predictions = predictor.predict(args.paths, top_k=args.top_k, vote=args.vote, batch_size=args.batch_size,
                                    num_surface_points=args.points)
    for failed in (p for p in predictions if not p.ok):
        print(f"pointgst predict: error: {failed.error}", file=sys.stderr)
    if not any(p.ok for p in predictions):
        raise ValueError(f"none of the {len(predictions)} inputs could be classified (see the errors above)")
    print(render_predictions(predictions, args.format))


def _is_segmentation_run(path: str) -> bool:
    from pointgst.recipe import SEGMENTATION_DATASETS
    from pointgst.training.run_files import RECIPE, read_run_recipe

    run = Path(path).expanduser()
    return (run / RECIPE).is_file() and read_run_recipe(run).data.dataset in SEGMENTATION_DATASETS


def _predict_parts(args: argparse.Namespace) -> None:
    from pointgst.predict_parts import PartPredictor, render_part_predictions

    if args.category is None:
        raise ValueError(f"{args.model} segments parts, which needs the shapes' category: pass --category NAME "
                         "(e.g. --category Chair; a ShapeNetPart category name, index or synset)")
    predictor = PartPredictor.from_run(args.model, device=args.device)
    predictions = predictor.predict(args.paths, category=args.category, out_dir=args.out_dir,
                                    num_surface_points=args.points)
    for failed in (p for p in predictions if not p.ok):
        print(f"pointgst predict: error: {failed.error}", file=sys.stderr)
    if not any(p.ok for p in predictions):
        raise ValueError(f"none of the {len(predictions)} inputs could be labelled (see the errors above)")
    print(render_part_predictions(predictions))


def recipes_command(args: argparse.Namespace) -> None:
    from pointgst.recipe import list_recipes, load_recipe

    names = list_recipes()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {load_recipe(name).description}")


def data_convert_command(args: argparse.Namespace) -> None:
    from pointgst.data import convert_dat_to_npz

    out = convert_dat_to_npz(args.dat, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {out}")


def data_convert_fewshot_command(args: argparse.Namespace) -> None:
    from pointgst.fewshot import convert_official_episodes

    folders = convert_official_episodes(args.root, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {len(folders)} episodes under {args.out}; use them with "
          f"pointgst fewshot RECIPE --episodes {args.out}")


def data_procedural_parts_command(args: argparse.Namespace) -> None:
    from pointgst.data.procedural_parts import write_procedural_shapenetpart

    out = write_procedural_shapenetpart(args.out, shapes_per_category=args.shapes_per_category,
                                        points_per_shape=args.points, seed=args.seed)
    print(f"wrote {out} (ShapeNetPart normal layout, 16 categories x {args.shapes_per_category} shapes); train on it "
          f"with: pointgst train shapenetpart.point_mae_tiny --set data.root={out}")
