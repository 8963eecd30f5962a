"""``pointgst convert``: any official checkpoint -> pointgst folders, reading the file once."""

import logging
import os
from pathlib import Path


def convert_checkpoint(file: str | os.PathLike, out_dir: str | os.PathLike, *, architecture: str | None = None,
                       overwrite: bool = False) -> Path:
    """Convert an official checkpoint (``.pth`` or torch-pointcloud ``model.safetensors``).

    A backbone checkpoint (Point-MAE / ACT / ReCon / PointGPT, pretraining or fine-tuned) becomes a weights
    folder for ``create_backbone(arch, pretrained=out_dir)``; a PointGST fine-tuned checkpoint becomes
    ``out_dir/backbone`` + ``out_dir/adapter`` for ``load_adapter(out_dir / "adapter")``. Nothing is written
    unless the whole conversion succeeds; an existing non-empty ``out_dir`` needs ``overwrite=True``.
    """
    from pointgst.backbones.convert import convert_backbone_state
    from pointgst.backbones.factory import read_official_state

    file = Path(file)
    state = read_official_state(file, architecture)
    if any(".gft_adapter." in key for key in state):
        from pointgst.tuner.official import convert_pointgst_state
        return convert_pointgst_state(state, file, out_dir, architecture=architecture, overwrite=overwrite)
    out, report = convert_backbone_state(state, file, out_dir, architecture=architecture, overwrite=overwrite)
    logging.getLogger("pointgst").info("%s", report)
    return out
