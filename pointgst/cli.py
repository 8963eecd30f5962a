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
    from pointgst.backbones.factory import parse_name, ARCHITECTURES

    arch, _ = parse_name(args.name)
    with torch.device("meta"):  # counts need no memory and no weights
        backbone = ARCHITECTURES[arch](num_classes=args.num_classes)
        options = {k: v for k, v in (("preset", args.preset), ("placement", args.placement)) if v}
        model = pointgst.wrap(backbone, method=args.method, **options)
    print(pointgst.parameter_report(model))


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
    params.add_argument("--method", default="pcsa", help="tuning method (default: pcsa)")
    params.add_argument("--num-classes", type=int, default=40, help="head size (default: 40)")
    params.add_argument("--preset", choices=["official"], help="configuration preset")
    params.add_argument("--placement", choices=["ffn", "ffn+attn"], help="where adapters go")
    params.set_defaults(run=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.run(args)
    except (ValueError, FileExistsError) as err:
        print(f"pointgst {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
