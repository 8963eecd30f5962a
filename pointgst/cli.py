"""The ``pointgst`` command line."""

import argparse
import logging
import sys

from pointgst.commands import (
    convert_command,
    data_convert_command,
    data_convert_fewshot_command,
    data_procedural_parts_command,
    demo_command,
    eval_command,
    fewshot_command,
    params_command,
    predict_command,
    pretrain_command,
    probe_command,
    recipes_command,
    train_command,
)
from pointgst.errors import RunError


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
    convert.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                         help="a method option the checkpoint's shapes do not record (DAPT, IDPT, GAPrompt, PPT "
                              "checkpoints; e.g. --option perturbation=0.8 --option propagation=after_attention for "
                              "GAPrompt on PB_T50_RS); repeatable")
    convert.set_defaults(run=convert_command)
    params = commands.add_parser("params", help="trainable-parameter report of a backbone + tuning method")
    params.add_argument("name", help="architecture or pretrained tag (e.g. point_mae.pretrain), or a recipe (name or "
                                     ".yaml): the model it trains, e.g. scanobjectnn-pb_t50_rs.point_mae.dapt")
    params.add_argument("--method", default="pcsa",
                        help="tuning method, a comma-separated list, or 'all' to compare every method")
    params.add_argument("--num-classes", type=int, help="head size (default: 40 classes, or 50 parts)")
    params.add_argument("--task", choices=["classification", "segmentation"], default="classification",
                        help="segmentation: the backbone's part-segmentation model (the head shown separately)")
    params.add_argument("--preset", choices=["official"], help="configuration preset")
    params.add_argument("--placement", choices=["ffn", "ffn+attn"], help="where adapters go")
    params.set_defaults(run=params_command)

    pretrain_help = ("Point-MAE masked-autoencoder pretraining with a `mae` recipe "
                     "(e.g. pretrain-modelnet40.point_mae_tiny)")
    for name, run, text in [("train", train_command, "fine-tune with a recipe (see `pointgst recipes`)"),
                            ("pretrain", pretrain_command, pretrain_help)]:
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
    fewshot.set_defaults(run=fewshot_command)

    probe = commands.add_parser("probe", help="linear-probe accuracy of a frozen backbone's features (ModelNet pack)")
    probe.add_argument("name", help="pretrained tag (e.g. point_mae_tiny.modelnet40) or architecture (random weights)")
    probe.add_argument("--data", required=True, help="folder of a ModelNet .npz pack (train.npz, test.npz, "
                                                     "shape_names.txt), e.g. ../shared/data/modelnet40_1024")
    probe.add_argument("--dataset", choices=["modelnet40", "modelnet10"], default="modelnet40")
    probe.add_argument("--random-weights", action="store_true", help="the same architecture, randomly initialised")
    probe.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    probe.add_argument("--no-progress", action="store_true", help="no progress bars")
    probe.set_defaults(run=probe_command)

    demo = commands.add_parser("demo", help="fine-tune the shipped point_mae_tiny.modelnet40 with PCSA on the shipped "
                                             "ModelNet10 sample (offline, a few minutes on a CPU)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo, or runs/demo-N if taken)")
    demo.add_argument("--no-compare", action="store_true",
                      help="skip the second run: the same demo on a randomly initialised backbone, for comparison")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=demo_command)

    evaluate = commands.add_parser("eval", help="test accuracy of a run's best epoch (optionally with voting)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--vote", type=_count, help="average the logits of N augmented passes (0: no voting)")
    evaluate.add_argument("--repeats", type=_positive, help="voting runs, reported as mean ± std")
    evaluate.add_argument("--best-of", action="store_true",
                          help="also report the best of the voting runs (the official, optimistic number)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"])
    evaluate.set_defaults(run=eval_command)

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
    predict.add_argument("--category", help="part segmentation: the shapes' ShapeNetPart category (name, index or "
                                            "synset)")
    predict.add_argument("--out-dir", default="predicted_parts",
                         help="part segmentation: where <file>.parts.ply (points coloured by part) go "
                              "(default predicted_parts)")
    predict.set_defaults(run=predict_command)

    recipes = commands.add_parser("recipes", help="list the recipes")
    recipes.set_defaults(run=recipes_command)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    data_convert = data.add_parser("convert", help="official ModelNet40 .dat pickle -> safe .npz pack")
    data_convert.add_argument("dat")
    data_convert.add_argument("out")
    data_convert.add_argument("--allow-pickle", action="store_true",
                              help="required: the .dat file is a pickle, which can run code; only for trusted files")
    data_convert.set_defaults(run=data_convert_command)
    convert_fewshot = data.add_parser("convert-fewshot", help="official ModelNetFewshot pickles -> safe episode packs")
    convert_fewshot.add_argument("root", help="folder holding {way}way_{shot}shot/{fold}.pkl")
    convert_fewshot.add_argument("out")
    convert_fewshot.add_argument("--allow-pickle", action="store_true",
                                 help="required: the files are pickles, which can run code; only for trusted files")
    convert_fewshot.set_defaults(run=data_convert_fewshot_command)
    parts = data.add_parser("procedural-parts", help="write a procedural part-labelled dataset in the ShapeNetPart "
                                                     "layout (16 categories of primitive shapes, 50 parts)")
    parts.add_argument("out", help="a new (or empty) folder")
    parts.add_argument("--shapes-per-category", type=int, default=40, help="shapes of each category (default 40)")
    parts.add_argument("--points", type=int, default=2048, help="points per shape (default 2048)")
    parts.add_argument("--seed", type=int, default=0)
    parts.set_defaults(run=data_procedural_parts_command)
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
