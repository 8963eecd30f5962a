"""``create_backbone``: build an architecture, optionally with pretrained weights from a tag, a local path
or a hub repo id."""

import difflib
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

from pointgst.errors import CheckpointError, UnknownNameError

from .base import PointBackbone
from .checkpoint import (
    CONFIG_FILE,
    FOLDER_FORMAT,
    WEIGHTS_FILE,
    LoadReport,
    fit_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from .point_mae import PointMAE, PointMAETiny
from .pointgpt import SIZES, PointGPT
from .pointgpt_segmentation import PointGPTSegmentation
from .pretrained import PRETRAINED_CFGS, PretrainedCfg, hub_snapshot, resolve_pretrained_file
from .segmentation import PointMAESegmentation, PointMAETinySegmentation
from .torch_pointcloud import convert_torch_pointcloud_state_dict, looks_like_torch_pointcloud

logger = logging.getLogger("pointgst")

ARCHITECTURES: dict[str, Callable[..., PointBackbone]] = {
    "point_mae": PointMAE,
    "point_mae_tiny": PointMAETiny,
    **{size: partial(PointGPT, size) for size in SIZES},
    "point_mae_seg": PointMAESegmentation,
    "point_mae_tiny_seg": PointMAETinySegmentation,
    **{f"{size}_seg": partial(PointGPTSegmentation, size) for size in SIZES},
}
#: the part-segmentation architecture of each backbone architecture (it loads that backbone's weights)
SEGMENTATION_ARCHITECTURES = {"point_mae": "point_mae_seg", "point_mae_tiny": "point_mae_tiny_seg",
                              **{size: f"{size}_seg" for size in SIZES}}
TASKS = ("classification", "segmentation")
DEFAULT_NUM_CLASSES = 40
DEFAULT_NUM_PARTS = 50  # ShapeNetPart


def list_backbones(pretrained: bool = False) -> list[str]:
    """Architecture names, or with ``pretrained=True`` every ``arch.tag`` with known weights."""
    return sorted(PRETRAINED_CFGS) if pretrained else sorted(ARCHITECTURES)


def _unknown(name: str) -> UnknownNameError:
    known = list_backbones() + list_backbones(pretrained=True)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown backbone {name!r}.{hint} Architectures: {', '.join(list_backbones())}; "
                            "pretrained tags: see pointgst.list_backbones(pretrained=True).")


def parse_name(name: str) -> tuple[str, PretrainedCfg | None]:
    """``'point_mae'`` -> ('point_mae', None); ``'point_mae.pretrain'`` -> ('point_mae', its cfg)."""
    if name in ARCHITECTURES:
        return name, None
    if name in PRETRAINED_CFGS:
        cfg = PRETRAINED_CFGS[name]
        return cfg.architecture, cfg
    raise _unknown(name)


def create_backbone(name: str, *, pretrained: bool | str | os.PathLike = False, num_classes: int | None = None,
                    strict: bool = True, task: str = "classification", **model_kwargs: Any) -> PointBackbone:
    """Build a backbone.

    name: an architecture (``point_mae``, ``pointgpt_s``, ``pointgpt_b``, ``pointgpt_l``) or a pretrained tag
        ``arch.tag`` (``point_mae.pretrain``, ``pointgpt_l.post_pretrain``, ...; ``list_backbones(True)``).
    pretrained: False (official from-scratch init), True (the tag's weights), a local ``.pth`` /
        ``.safetensors`` file or converted folder, or a hub repo id ``org/name``.
    num_classes: head size; defaults to the tag's own (fine-tuned tags) or 40. A checkpoint head of another
        size is dropped and reported, and the new head keeps its fresh initialisation.
    strict: require every backbone key (see :func:`pointgst.backbones.checkpoint.fit_state_dict`);
        ``False`` is the official non-strict load, still reported in ``model.load_report``.
    task: ``"classification"``, or ``"segmentation"``: the part-segmentation model of the backbone (``point_mae`` ->
        ``point_mae_seg``), loading the backbone's weights (``num_classes`` then counts parts, default 50).
    model_kwargs: architecture options, e.g. ``num_group=128`` for 2048-point clouds (default: what a weights
        folder written by ``save_pretrained`` records, else the architecture's defaults).
    """
    arch, cfg = parse_name(name)
    arch = task_architecture(arch, task)
    source = None
    if pretrained is True:
        if cfg is None:
            raise ValueError(f"{name!r} is an architecture without a tag, so pretrained=True has nothing to load; "
                             f"use a tag such as {arch}.pretrain or pass a file, folder or hub repo id")
        source = resolve_pretrained_file(cfg)
    elif pretrained is not False and pretrained is not None:
        source = _local_or_hub(pretrained)
    recorded = folder_config(source) if source else {}
    if num_classes is None:  # the weights' own head size, where the weights are of this very architecture
        tagged = cfg.num_classes if cfg and cfg.architecture == arch else None
        saved = recorded.get("num_classes") if recorded.get("architecture", arch) == arch else None
        default = DEFAULT_NUM_PARTS if architecture_task(arch) == "segmentation" else DEFAULT_NUM_CLASSES
        num_classes = tagged or saved or default
    model_kwargs = {**(recorded.get("backbone_options") or {}), **model_kwargs}  # a saved folder's grouping
    model = ARCHITECTURES[arch](num_classes=num_classes, **model_kwargs)
    if source is None:
        model.init_weights()
        return model
    model.name_or_path = str(pretrained) if pretrained is not True else name
    report = load_weights(model, source, strict=strict, config=recorded)
    logger.info("%s", report)
    model.load_report = report
    return model


def architecture_task(arch: str) -> str:
    """What an architecture predicts: ``"segmentation"`` (a part per point) or ``"classification"``."""
    return "segmentation" if arch in SEGMENTATION_ARCHITECTURES.values() else "classification"


def task_architecture(arch: str, task: str) -> str:
    """The architecture that does ``task`` with ``arch``'s weights (``arch`` itself when it already does it)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "classification" or arch in SEGMENTATION_ARCHITECTURES.values():
        return arch
    return SEGMENTATION_ARCHITECTURES[arch]  # every backbone architecture has one


def _local_or_hub(pretrained: str | os.PathLike) -> Path:
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    text = str(pretrained)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).suffix:
        return hub_snapshot(text)
    raise CheckpointError(f"pretrained={text!r} is neither an existing file or folder nor a hub repo id (org/name)")


def load_weights(model: PointBackbone, source: str | os.PathLike, *, strict: bool = True,
                 config: dict[str, Any] | None = None) -> LoadReport:
    """Load a weights file or folder (official ``.pth``, converted safetensors folder, hub snapshot in the
    torch-pointcloud layout) into ``model``. ``config``: the folder's :func:`folder_config`, if already read."""
    path = Path(source)
    if path.is_dir():
        _check_folder_architecture(path, model, folder_config(path) if config is None else config)
    file = weights_file(path)
    family = {seg: arch for arch, seg in SEGMENTATION_ARCHITECTURES.items()}.get(model.architecture,
                                                                               model.architecture)
    state = read_official_state(file, family)  # a hub-layout file is converted by its backbone family
    return fit_state_dict(model, state, strict=strict, source=str(file))


def weights_file(path: Path) -> Path:
    """The weights file of ``path``: the path itself, or a converted/hub folder's ``model.safetensors``."""
    if not path.is_dir():
        return path
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} holds no {WEIGHTS_FILE}; convert an official checkpoint into it with "
                              f"`pointgst convert FILE {path}`")
    return file


def read_official_state(file: Path, architecture: str | None) -> dict:
    """Read ``file`` into the official fine-tuning key layout: official remapping rules, and conversion of
    the torch-pointcloud hub layout (which needs ``architecture``)."""
    state = unwrap_state_dict(read_checkpoint(file), source=str(file))
    if looks_like_torch_pointcloud(state):
        if architecture is None:
            raise CheckpointError(f"{file} is in the torch-pointcloud hub layout; name its architecture "
                                  "(--arch point_mae|pointgpt_s|pointgpt_b|pointgpt_l)")
        # the converter returns the official checkpoint layout (pretrain prefixes included)
        state = unwrap_state_dict(convert_torch_pointcloud_state_dict(state, architecture), source=str(file))
    return state


def folder_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of a folder written by ``pointgst convert``, or {} for anything else."""
    import json
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}); convert the checkpoint again") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object; convert the checkpoint again")
    return config if config.get("format") == FOLDER_FORMAT else {}


def _check_folder_architecture(folder: Path, model: PointBackbone, config: dict[str, Any]) -> None:
    arch = config.get("architecture")
    if arch and arch != model.architecture and SEGMENTATION_ARCHITECTURES.get(arch) != model.architecture:
        raise CheckpointError(f"{folder} holds {arch} weights but the model is {model.architecture}; "
                              f"create_backbone({arch!r}, pretrained={str(folder)!r})")
