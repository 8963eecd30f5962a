"""``pointgst convert``: an official checkpoint -> pointgst folders, reading the file once.

A backbone checkpoint (Point-MAE / ACT / ReCon / PointGPT, pretraining or fine-tuned) becomes a weights folder; an
official PointGST fine-tuned checkpoint (``{"base_model": state_dict}`` with ``gft_adapter`` keys), or one of another
method's official code whose keys carry its registry entry's ``official_marker`` (DAPT, IDPT, GAPrompt, PPT), becomes
``OUT/backbone`` + ``OUT/adapter`` with the ``official`` preset (``docs/checkpoints.md``, "PointGST fine-tuned",
"Other methods' fine-tuned checkpoints").
"""

import logging
import os
import re
from pathlib import Path

from torch import Tensor

from pointgst.adapters import FORWARD, METHODS, MethodSpec
from pointgst.atomic import write_folder
from pointgst.backbones.checkpoint import (
    FOLDER_FORMAT,
    detect_architecture,
    fit_state_dict,
    head_classes,
    write_weights_folder,
)
from pointgst.backbones.convert import convert_backbone_state
from pointgst.backbones.factory import ARCHITECTURES, read_official_state
from pointgst.errors import CheckpointError
from pointgst.tuner.keys import is_adapter_tensor, official_name
from pointgst.wrapping import wrap

_OFFICIAL_ADAPTER_KEY = re.compile(r"^blocks\.(?:blocks|layers)\.\d+\.gft_adapter\.")
BACKBONE_DIR, ADAPTER_DIR = "backbone", "adapter"


def convert_checkpoint(file: str | os.PathLike, out_dir: str | os.PathLike, *, architecture: str | None = None,
                       overwrite: bool = False, options: dict | None = None) -> Path:
    """Convert an official checkpoint (``.pth`` or torch-pointcloud ``model.safetensors``) into ``out_dir``: a
    weights folder for ``create_backbone(arch, pretrained=out_dir)``, or for a PointGST fine-tuned checkpoint
    ``out_dir/backbone`` + ``out_dir/adapter`` for ``load_adapter(out_dir / "adapter")``. Nothing is written unless
    the whole conversion succeeds; a folder holding other files needs ``overwrite=True`` (they are kept).
    ``options``: method options that a DAPT / IDPT / GAPrompt / PPT checkpoint's shapes do not record (they win over
    what the shapes give)."""
    file = Path(file)
    state = read_official_state(file, architecture)
    spec = official_method(state)
    if options and spec is None:
        raise ValueError(f"{file} is not a DAPT, IDPT, GAPrompt or PPT checkpoint: method options do not apply to it; "
                         "convert it without --option")
    if any(_OFFICIAL_ADAPTER_KEY.match(key) for key in state):
        return convert_pointgst_state(state, file, out_dir, architecture=architecture, overwrite=overwrite)
    if spec is not None:
        return convert_method_state(state, spec, file, out_dir, architecture=architecture, overwrite=overwrite,
                                    options=options)
    out, report = convert_backbone_state(state, file, out_dir, architecture=architecture, overwrite=overwrite)
    logging.getLogger("pointgst").info("%s", report)
    return out


def convert_pointgst_state(state: dict[str, Tensor], file: Path, out_dir: str | os.PathLike, *,
                           architecture: str | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/backbone`` (weights folder) and ``out_dir/adapter`` (peft adapter, ``official`` preset) from
    the state of an official PointGST fine-tuned checkpoint ``file``.

    The frozen weights (whose encoder BatchNorm statistics drifted during official training) go to the backbone
    folder; the adapters, the cls token and position, the head (and PointGPT's ``cls_norm``) and the BatchNorm
    statistics go to the adapter, which rebuilds the official graphs (``distance="cdist"``, batch ``d_min``, ``U x``).
    """
    adapters = {k: v for k, v in state.items() if _OFFICIAL_ADAPTER_KEY.match(k)}
    backbone_state = {k: v for k, v in state.items() if k not in adapters}
    arch = architecture or detect_architecture(backbone_state)
    backbone = ARCHITECTURES[arch](num_classes=head_classes(backbone_state) or 40, skip_near_origin=True)
    fit_state_dict(backbone, backbone_state, strict=True, source=str(file))
    clean_state = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.name_or_path = f"../{BACKBONE_DIR}"
    model = wrap(backbone, preset="official")
    targets = {official_name(k): k for k in model.state_dict() if is_adapter_tensor(k) and ".gft_adapter." in
               official_name(k)}
    unknown = sorted(set(adapters) - set(targets))
    if unknown or len(adapters) != len(targets) or any(model.state_dict()[targets[k]].shape != v.shape
                                                       for k, v in adapters.items()):
        rank = model.peft_config["default"].method_configs()["pcsa"].rank
        raise CheckpointError(f"{file}: the adapters do not fit {arch} with PCSA rank {rank} ({len(adapters)} adapter "
                              f"tensors for {len(targets)} expected; unknown: {unknown[:3]})")
    model.load_state_dict({targets[k]: v for k, v in adapters.items()}, strict=False)

    def fill(tmp: Path) -> dict:
        write_weights_folder(clean_state, tmp / BACKBONE_DIR,
                             {"format": FOLDER_FORMAT, "architecture": arch, "num_classes": backbone.num_classes,
                              "source_file": file.name, "note": "frozen weights of a PointGST fine-tuned checkpoint"})
        model.save_pretrained(tmp / ADAPTER_DIR)
        return {"format": "pointgst-converted-pointgst", "source_file": file.name}

    return write_folder(out_dir, fill, overwrite=overwrite)


def official_method(state: dict[str, Tensor]) -> MethodSpec | None:
    """The ``forward`` method whose official fine-tuned checkpoints have keys like ``state``'s, or None."""
    for name in METHODS.names(combinations=False):
        spec = METHODS[name]
        if spec.attaches == FORWARD and spec.official_marker and any(re.search(spec.official_marker, k) for k in state):
            return spec
    return None


def convert_method_state(state: dict[str, Tensor], spec: MethodSpec, file: Path, out_dir: str | os.PathLike, *,
                         architecture: str | None = None, overwrite: bool = False,
                         options: dict | None = None) -> Path:
    """Write ``out_dir/backbone`` and ``out_dir/adapter`` (``official`` preset) from the state of a ``forward``
    method's official fine-tuned checkpoint ``file``.

    Every key the backbone has (with the same shape) goes to the backbone folder, the frozen weights with the
    BatchNorm statistics that drifted in official training; the method module takes its own tensors by its
    ``official_names`` (a retrained backbone layer's copy too), the adapter the cls token and position and the
    statistics. A key neither takes, or a module tensor the file lacks, is an error; a key the module names as a
    second copy of one of its tensors (``official_aliases``) must equal it. ``options`` win over the
    options the file's shapes give.
    """
    arch = architecture or detect_architecture(state)
    backbone = ARCHITECTURES[arch](num_classes=head_classes(state) or 40, skip_near_origin=True)
    own = backbone.state_dict()
    from_file = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    unused = backbone.unused_in_forward  # e.g. PointGPT's generator, which PointGST's DAPT checkpoints lack
    missing = [k for k in own if k not in from_file and not k.startswith(backbone.head_prefixes + unused)]
    if missing:
        raise CheckpointError(f"{file}: not a {spec.name} checkpoint of {arch}: {len(missing)} backbone tensors are "
                              f"missing, e.g. {missing[:3]}; pass the right --arch")
    backbone.load_state_dict(from_file, strict=False)
    clean_state = {k: v.clone() for k, v in backbone.state_dict().items() if k in from_file or k.startswith(unused)}
    backbone.name_or_path = f"../{BACKBONE_DIR}"
    options = {**(spec.options_from_official(state) if spec.options_from_official else {}), **(options or {})}
    model = wrap(backbone, method=spec.name, preset="official", **options)
    module = model.base_model.model.pipeline.pointgst_module["default"]
    names, aliases, own_tensors = module.official_names(), module.official_aliases(), module.state_dict()
    absent = sorted(v for v in names.values() if v not in state)
    unknown = sorted(set(state) - set(from_file) - set(names.values()) - set(aliases))
    wrong = [k for k, v in names.items() if v in state and state[v].shape != own_tensors[k].shape]
    wrong += [a for a, twin in aliases.items() if a in state and not (twin in state and state[a].equal(state[twin]))]
    if absent or unknown or wrong:
        raise CheckpointError(f"{file}: the {spec.name} tensors do not fit {arch} with options {options} (missing: "
                              f"{absent[:3]}; unknown: {unknown[:3]}; other shapes: {wrong[:3]})")
    module.load_state_dict({k: state[v] for k, v in names.items()})

    def fill(tmp: Path) -> dict:
        write_weights_folder(clean_state, tmp / BACKBONE_DIR,
                             {"format": FOLDER_FORMAT, "architecture": arch, "num_classes": backbone.num_classes,
                              "source_file": file.name,
                              "note": f"frozen weights of a {spec.name} fine-tuned checkpoint"})
        model.save_pretrained(tmp / ADAPTER_DIR)
        return {"format": "pointgst-converted-method", "method": spec.name, "source_file": file.name}

    return write_folder(out_dir, fill, overwrite=overwrite)
