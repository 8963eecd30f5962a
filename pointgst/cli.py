"""The ``pointgst`` command line."""

import argparse
import sys


def _convert(args: argparse.Namespace) -> None:
    from pointgst.backbones.convert import convert_checkpoint
    out, report = convert_checkpoint(args.file, args.out_dir, architecture=args.arch, overwrite=args.overwrite)
    print(report)
    print(f"wrote {out} (load it with pointgst.create_backbone(ARCH, pretrained={str(out)!r}))")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointgst", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="official .pth -> safetensors weights folder")
    convert.add_argument("file", help="official checkpoint (.pth) or torch-pointcloud model.safetensors")
    convert.add_argument("out_dir", help="folder to write model.safetensors and config.json into")
    convert.add_argument("--arch", choices=["point_mae", "pointgpt_s", "pointgpt_b", "pointgpt_l"],
                         help="architecture (detected from the keys when omitted)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileExistsError) as err:
        print(f"pointgst {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
