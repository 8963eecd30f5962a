"""The ``pointgst`` command line."""

import argparse
import logging
import sys


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
    from pointgst.backbones.factory import ARCHITECTURES, parse_name
    from pointgst.wrapping import METHODS

    arch, _ = parse_name(args.name)
    methods = METHODS if args.method == "all" else args.method.split(",")
    options = {k: v for k, v in (("preset", args.preset), ("placement", args.placement)) if v}
    reports = []
    for method in methods:
        with torch.device("meta"):  # counts need no memory and no weights
            backbone = ARCHITECTURES[arch](num_classes=args.num_classes)
            model = pointgst.wrap(backbone, method=method, **(options if method not in ("lora", "linear", "full")
                                                              else {}))
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
        width = max(len(k) for k in summary)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
        print(f"run folder: {out}")


def _eval(args: argparse.Namespace) -> None:
    from pointgst.training import evaluate_run

    result = evaluate_run(args.run_dir, vote=args.vote, repeats=args.repeats, best_of=args.best_of,
                          device=args.device)
    width = max(len(k) for k in result)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in result.items()))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointgst", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="official .pth -> safetensors weights folder (PointGST "
                                                  "fine-tuned checkpoints: backbone folder + peft adapter)")
    convert.add_argument("file", help="official checkpoint (.pth) or torch-pointcloud model.safetensors")
    convert.add_argument("out_dir", help="folder to write model.safetensors and config.json into")
    convert.add_argument("--arch", choices=["point_mae", "pointgpt_s", "pointgpt_b", "pointgpt_l"],
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

    train = commands.add_parser("train", help="fine-tune with a recipe (see `pointgst recipes`)")
    train.add_argument("recipe", help="recipe name or path to a recipe YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.epochs=5 (repeatable)")
    train.add_argument("--out", help="run folder (default: runs/RECIPE)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="test accuracy of a run's best epoch (optionally with voting)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--vote", type=int, help="average the logits of N augmented passes")
    evaluate.add_argument("--repeats", type=int, help="voting runs, reported as mean ± std")
    evaluate.add_argument("--best-of", action="store_true",
                          help="also report the best of the voting runs (the official, optimistic number)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"])
    evaluate.set_defaults(run=_eval)

    recipes = commands.add_parser("recipes", help="list the recipes")
    recipes.set_defaults(run=_recipes)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    data_convert = data.add_parser("convert", help="official ModelNet40 .dat pickle -> safe .npz pack")
    data_convert.add_argument("dat")
    data_convert.add_argument("out")
    data_convert.add_argument("--allow-pickle", action="store_true",
                              help="required: the .dat file is a pickle, which can run code; only for trusted files")
    data_convert.set_defaults(run=_data_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"pointgst {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
