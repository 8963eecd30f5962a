"""Turning an official backbone checkpoint into a safetensors weights folder that
``create_backbone(arch, pretrained=OUT_DIR)`` loads (``pointgst convert``)."""

import hashlib
import os
from pathlib import Path

from torch import Tensor

from pointgst.version import __version__

from .checkpoint import (
    FOLDER_FORMAT,
    LoadReport,
    detect_architecture,
    fit_state_dict,
    head_classes,
    write_weights_folder,
)
from .factory import ARCHITECTURES, DEFAULT_NUM_CLASSES


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_backbone_state(state: dict[str, Tensor], file: Path, out_dir: str | os.PathLike, *,
                           architecture: str | None = None, overwrite: bool = False) -> tuple[Path, LoadReport]:
    """Write an official-layout backbone ``state`` (read from ``file``) into ``out_dir/{model.safetensors,
    config.json}``.

    The weights are checked by loading them strictly into the architecture; keys the backbone does not use
    (e.g. Point-MAE's decoder) are left out and listed in the report and in ``config.json``.
    """
    arch = architecture or detect_architecture(state)
    classes = head_classes(state)
    model = ARCHITECTURES[arch](num_classes=classes or DEFAULT_NUM_CLASSES)
    report = fit_state_dict(model, state, strict=True, source=str(file))
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own}
    config = {"format": FOLDER_FORMAT, "architecture": arch, "num_classes": classes,
              "source_file": file.name, "source_sha256": sha256_of(file), "pointgst_version": __version__,
              "missing_keys": report.missing_keys, "skipped_keys": report.unexpected_keys}
    return write_weights_folder(kept, out_dir, config, overwrite=overwrite), report
