"""The ``pointgst`` command line."""

import argparse
import logging
import sys

from pointgst.errors import RunError


def _convert(args: argparse.Namespace) -> None:
    from pointgst.converting import convert_checkpoint

    out = convert_checkpoint(args.file, args.out_dir, architecture=args.arch, overwrite=args.overwrite)
    if (out / "adapter").is_dir():
        print(f"wrote {out}: a PointGST model; load it with pointgst.load_adapter({str(out / 'adapter')!r})")
    else:
        print(f"wrote {out}; load it with pointgst.create_backbone(ARCH, pretrained={str(out)!r})")


def _params(args: argparse.Namespace) -> None:
    import torch

    import pointgst
    from pointgst.adapters import list_methods
    from pointgst.backbones.factory import ARCHITECTURES, parse_name

    arch, _ = parse_name(args.name)
    methods = list_methods() if args.method == "all" else args.method.split(",")
    options = {k: v for k, v in (("preset", args.preset), ("placement", args.placement)) if v}
    reports = []
    for method in methods:
        with torch.device("meta"):  # counts need no memory and no weights
            backbone = ARCHITECTURES[arch](num_classes=args.num_classes)
            model = pointgst.wrap(backbone, method=method, **(options if method not in ("lora", "full") else {}))
        reports.append(pointgst.parameter_report(model))
    if len(reports) == 1:
        print(reports[0])
        return
    print(f"{arch}, {args.num_classes} classes: trainable parameters by method")
    for report in reports:
        paper = f"   paper: {report.paper_figure}" if report.paper_figure else ""
        print(f"  {report.method:<18} {report.trainable:>12,}  {100 * report.ratio:6.2f}%{paper}")


def _train(args: argparse.Namespace) -> None:
    from pointgst.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)  # bad keys and types fail here, before any work
    from pointgst.training import train
    out = args.out or f"runs/{recipe.name}"
    summary = train(recipe, out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if summary:
        _print_table(summary)
        print(f"run folder: {out}")


def _pretrain(args: argparse.Namespace) -> None:
    from pointgst.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    from pointgst.training.pretrain import BACKBONE_FOLDER, PRETRAIN_CHECKPOINT, pretrain
    out = args.out or f"runs/{recipe.name}"
    summary = pretrain(recipe, out, resume=args.resume, device=args.device, progress=not args.no_progress)
    if summary:
        _print_table(summary)
        print(f"run folder: {out}\nofficial pretraining checkpoint: {out}/{PRETRAIN_CHECKPOINT}\n"
              f"backbone weights: create_backbone({recipe.backbone.name!r}, pretrained='{out}/{BACKBONE_FOLDER}')")


def _fewshot(args: argparse.Namespace) -> None:
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


def _probe(args: argparse.Namespace) -> None:
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


def _demo(args: argparse.Namespace) -> None:
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
    """``key  value`` lines; accuracies (keys with ``acc``, fractions in [0, 1]) as percentages with two decimals
    (``summary.json`` / ``eval.json`` keep the full precision)."""
    width = max(len(k) for k in rows)
    print("\n".join(f"{k:<{width}}  {_readable(k, v)}" for k, v in rows.items()))


def _readable(key: str, value: object) -> object:
    if "acc" in key and isinstance(value, float) and 0.0 <= value <= 1.0:
        return f"{100 * value:.2f}%"
    return value


def _eval(args: argparse.Namespace) -> None:
    from pointgst.training import evaluate_run

    result = evaluate_run(args.run_dir, vote=args.vote, repeats=args.repeats, best_of=args.best_of,
                          device=args.device)
    _print_table(result)


def _predict(args: argparse.Namespace) -> None:
    from pointgst.predict import Predictor, render_predictions

    logging.getLogger("pointgst").setLevel(logging.WARNING)  # stderr: one line per bad file, no weight-loading report
    predictor = Predictor.from_path(args.model, device=args.device)
    predictions = predictor.predict(args.paths, top_k=args.top_k, vote=args.vote, batch_size=args.batch_size,
                                    num_surface_points=args.points)
    for failed in (p for p in predictions if not p.ok):
        print(f"pointgst predict: error: {failed.error}", file=sys.stderr)
    if not any(p.ok for p in predictions):
        raise ValueError(f"none of the {len(predictions)} inputs could be classified (see the errors above)")
    print(render_predictions(predictions, args.format))


def _recipes(args: argparse.Namespace) -> None:
    from pointgst.recipe import list_recipes, load_recipe

    names = list_recipes()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {load_recipe(name).description}")


def _data_convert(args: argparse.Namespace) -> None:
    from pointgst.data import convert_dat_to_npz

    out = convert_dat_to_npz(args.dat, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {out}")


def _data_convert_fewshot(args: argparse.Namespace) -> None:
    from pointgst.fewshot import convert_official_episodes

    folders = convert_official_episodes(args.root, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {len(folders)} episodes under {args.out}; use them with pointgst fewshot RECIPE --episodes {args.out}")


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointgst", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="official .pth -> safetensors weights folder (PointGST "
                                                  "fine-tuned checkpoints: backbone folder + peft adapter)")
    convert.add_argument("file", help="official checkpoint (.pth) or torch-pointcloud model.safetensors")
    convert.add_argument("out_dir", help="folder to write model.safetensors and config.json into")
    convert.add_argument("--arch", choices=["point_mae", "point_mae_tiny", "pointgpt_s", "pointgpt_b", "pointgpt_l"],
                         help="architecture (detected from the keys when omitted)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    convert.set_defaults(run=_convert)
    params = commands.add_parser("params", help="trainable-parameter report of a backbone + tuning method")
    params.add_argument("name", help="architecture or pretrained tag, e.g. point_mae.pretrain")
    params.add_argument("--method", default="pcsa",
                        help="tuning method, a comma-separated list, or 'all' to compare every method")
    params.add_argument("--num-classes", type=int, default=40, help="head size (default: 40)")
    params.add_argument("--preset", choices=["official"], help="configuration preset")
    params.add_argument("--placement", choices=["ffn", "ffn+attn"], help="where adapters go")
    params.set_defaults(run=_params)

    for name, run, text in [("train", _train, "fine-tune with a recipe (see `pointgst recipes`)"),
                            ("pretrain", _pretrain, "Point-MAE masked-autoencoder pretraining with a `mae` recipe "
                                                    "(e.g. pretrain-modelnet40.point_mae_tiny)")]:
        command = commands.add_parser(name, help=text)
        command.add_argument("recipe", help="recipe name or path to a recipe YAML file")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override a recipe key, e.g. --set train.epochs=5 (repeatable)")
        command.add_argument("--out", help="run folder (default: runs/RECIPE)")
        command.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        command.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
        command.add_argument("--no-progress", action="store_true", help="no progress bars")
        command.set_defaults(run=run)

    fewshot = commands.add_parser("fewshot", help="n-way k-shot protocol: one training run per fold, mean ± std")
    fewshot.add_argument("recipe", help="few-shot recipe (pointgst recipes: fewshot-*) or any recipe with --way and "
                                        "--shot: backbone, method, training, and the dataset episodes come from")
    fewshot.add_argument("--way", type=_positive, help="classes per episode (default: the recipe's fewshot.way, 5)")
    fewshot.add_argument("--shot", type=_positive, help="training shapes per class (default: the recipe's, 10)")
    fewshot.add_argument("--query", type=_positive, help="test shapes per class (default: the recipe's, 20)")
    fewshot.add_argument("--folds", help="folds to run: 0-9, 3 or 0,2,5 (default: the recipe's, 0-9)")
    fewshot.add_argument("--episodes", help="folder of converted official or earlier drawn episodes (default: draw "
                                            "them from the recipe's dataset into OUT/episodes)")
    fewshot.add_argument("--episode-seed", type=_count,
                         help="seed of drawn episodes: fold f uses SEED * 1000 + f (default: the recipe's, 0)")
    fewshot.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe key, e.g. --set train.epochs=20 (repeatable)")
    fewshot.add_argument("--out", help="run folder (default: runs/RECIPE-{way}w{shot}s); rerunning the same "
                                       "command resumes it, skipping finished folds")
    fewshot.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    fewshot.add_argument("--no-progress", action="store_true", help="no progress bars")
    fewshot.set_defaults(run=_fewshot)

    probe = commands.add_parser("probe", help="linear-probe accuracy of a frozen backbone's features (ModelNet pack)")
    probe.add_argument("name", help="pretrained tag (e.g. point_mae_tiny.modelnet40) or architecture (random weights)")
    probe.add_argument("--data", required=True, help="folder of a ModelNet .npz pack (train.npz, test.npz, "
                                                     "shape_names.txt), e.g. ../shared/data/modelnet40_1024")
    probe.add_argument("--dataset", choices=["modelnet40", "modelnet10"], default="modelnet40")
    probe.add_argument("--random-weights", action="store_true", help="the same architecture, randomly initialised")
    probe.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    probe.add_argument("--no-progress", action="store_true", help="no progress bars")
    probe.set_defaults(run=_probe)

    demo = commands.add_parser("demo", help="fine-tune the shipped point_mae_tiny.modelnet40 with PCSA on the shipped "
                                             "ModelNet10 sample (offline, a few minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo, or runs/demo-N if taken)")
    demo.add_argument("--no-compare", action="store_true",
                      help="skip the second run: the same demo on a randomly initialised backbone, for comparison")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    evaluate = commands.add_parser("eval", help="test accuracy of a run's best epoch (optionally with voting)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--vote", type=_count, help="average the logits of N augmented passes (0: no voting)")
    evaluate.add_argument("--repeats", type=_positive, help="voting runs, reported as mean ± std")
    evaluate.add_argument("--best-of", action="store_true",
                          help="also report the best of the voting runs (the official, optimistic number)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"])
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="classify point-cloud files with a trained run or adapter folder")
    predict.add_argument("model", metavar="RUN_OR_ADAPTER", help="run folder (pointgst train / demo) or adapter folder")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="files (.npy .npz .txt .xyz .ply .pcd; meshes .off .obj .stl) or folders (every such "
                              "file inside, recursively)")
    predict.add_argument("--top-k", type=_positive, default=5, help="classes shown per file (default 5)")
    predict.add_argument("--vote", type=_count, default=0, help="average the logits of N augmented passes (default 0)")
    predict.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output (default table)")
    predict.add_argument("--batch-size", type=_positive, default=32, help="clouds per forward pass (default 32)")
    predict.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    predict.add_argument("--points", type=_positive, default=8192,
                         help="points sampled on the surface of a mesh (default 8192)")
    predict.set_defaults(run=_predict)

    recipes = commands.add_parser("recipes", help="list the recipes")
    recipes.set_defaults(run=_recipes)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    data_convert = data.add_parser("convert", help="official ModelNet40 .dat pickle -> safe .npz pack")
    data_convert.add_argument("dat")
    data_convert.add_argument("out")
    data_convert.add_argument("--allow-pickle", action="store_true",
                              help="required: the .dat file is a pickle, which can run code; only for trusted files")
    data_convert.set_defaults(run=_data_convert)
    convert_fewshot = data.add_parser("convert-fewshot", help="official ModelNetFewshot pickles -> safe episode packs")
    convert_fewshot.add_argument("root", help="folder holding {way}way_{shot}shot/{fold}.pkl")
    convert_fewshot.add_argument("out")
    convert_fewshot.add_argument("--allow-pickle", action="store_true",
                                 help="required: the files are pickles, which can run code; only for trusted files")
    convert_fewshot.set_defaults(run=_data_convert_fewshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except (ValueError, OSError, RunError) as err:
        print(f"pointgst {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
