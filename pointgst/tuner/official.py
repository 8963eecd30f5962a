"""Converting the official PointGST fine-tuned checkpoints (full state dicts with ``gft_adapter`` keys, released
by the authors) into a backbone weights folder plus a peft adapter folder (``official`` preset)."""

import os
import re
from pathlib import Path
from torch import Tensor

from pointgst.backbones.checkpoint import (FOLDER_FORMAT, atomic_folder, detect_architecture, fit_state_dict,
                                           head_classes, write_weights_folder)
from pointgst.backbones.factory import ARCHITECTURES
from pointgst.errors import CheckpointError

_ADAPTER_KEY = re.compile(r"^(blocks\.(?:blocks|layers)\.\d+)\.gft_adapter\.(.+)$")
BACKBONE_DIR, ADAPTER_DIR = "backbone", "adapter"


def adapter_key(official_key: str, adapter_name: str = "default") -> str:
    """``blocks.blocks.3.gft_adapter.up.weight`` -> the wrapped model's key of the same tensor."""
    match = _ADAPTER_KEY.match(official_key)
    if match is None:
        raise ValueError(f"{official_key!r} is not an official gft_adapter key")
    block, leaf = match.groups()
    return f"base_model.model.{block}.ffn_branch.pointgst_module.{adapter_name}.{leaf}"


def convert_pointgst_state(state: dict[str, Tensor], file: Path, out_dir: str | os.PathLike, *,
                           architecture: str | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/backbone`` (weights folder) and ``out_dir/adapter`` (peft adapter, ``official`` preset)
    from the state of an official PointGST fine-tuned checkpoint ``file``. Load the result with
    ``pointgst.load_adapter(out_dir / "adapter")``.

    The checkpoint's frozen weights (its encoder BatchNorm statistics drifted during official training) go to the
    backbone folder; adapters, cls token and position, head (and PointGPT's ``cls_norm``) and the BatchNorm
    statistics go to the adapter.
    """
    from pointgst.wrapping import wrap

    adapters = {k: v for k, v in state.items() if _ADAPTER_KEY.match(k)}
    if not adapters:
        raise CheckpointError(f"{file} holds no gft_adapter keys: it is not a PointGST fine-tuned checkpoint "
                              "(convert a plain backbone checkpoint without adapters the same way, it is detected)")
    backbone_state = {k: v for k, v in state.items() if k not in adapters}
    arch = architecture or detect_architecture(backbone_state)
    backbone = ARCHITECTURES[arch](num_classes=head_classes(backbone_state) or 40, skip_near_origin=True)
    fit_state_dict(backbone, backbone_state, strict=True, source=str(file))
    clean_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.name_or_path = f"../{BACKBONE_DIR}"
    model = wrap(backbone, preset="official")
    own = model.state_dict()
    mapped = {adapter_key(k): v for k, v in adapters.items()}
    unknown = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    expected = [k for k in own if ".ffn_branch.pointgst_module.default." in k]
    if unknown or len(mapped) != len(expected):
        raise CheckpointError(f"{file}: the adapters do not fit {arch} with PCSA rank "
                              f"{model.peft_config['default'].rank} ({len(mapped)} adapter tensors for "
                              f"{len(expected)} expected; unknown or misshapen: {unknown[:3]})")
    model.load_state_dict(mapped, strict=False)
    with atomic_folder(out_dir, overwrite=overwrite) as tmp:
        write_weights_folder(clean_state, tmp / BACKBONE_DIR,
                             {"format": FOLDER_FORMAT, "architecture": arch, "num_classes": backbone.num_classes,
                              "source_file": file.name, "note": "frozen weights of a PointGST fine-tuned checkpoint"})
        model.save_pretrained(str(tmp / ADAPTER_DIR))
    return Path(out_dir)
