"""Reading checkpoint files safely and fitting them to a backbone with the official remapping rules.

- ``.pth`` / ``.pt`` / ``.bin`` files are read with ``torch.load(weights_only=True)``: a file whose pickle
  holds anything but tensors and plain containers is refused and nothing in it runs.
- ``.safetensors`` files are read with safetensors.
- Official layouts are unwrapped (``base_model`` / ``model`` / ``state_dict``), ``module.`` is removed
  anywhere in a key, and the prefixes ``MAE_encoder.`` / ``ACT_encoder.`` / ``GPT_Transformer.`` /
  ``base_model.`` are stripped.
- Loading is strict: every backbone key must be present with the right shape. Keys a *pretraining*
  checkpoint cannot have (cls token and position, head, PointGPT's ``cls_norm``) may be missing, and the
  pretraining-only keys (Point-MAE's decoder) may be unexpected; both are reported. ``strict=False`` is the
  official behaviour: load whatever matches and report the rest.
"""

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from pointgst.atomic import write_folder
from pointgst.errors import CheckpointError, UnsafeCheckpointError
from pointgst.version import __version__

from .torch_pointcloud_keys import _PGPT_WIDTH_TO_ARCH

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FOLDER_FORMAT = "pointgst-backbone"  # the "format" field of a converted folder's config.json
_PREFIXES = ("MAE_encoder.", "ACT_encoder.", "GPT_Transformer.", "base_model.")
_WRAPPER_KEYS = ("base_model", "model", "state_dict", "model_state_dict")  # the last: segmentation
# keys a pretraining checkpoint may lack: those only a fine-tuning model has, and PointGPT's extractor
# ``increase_dim``, which the classification forward never uses (torch-pointcloud files leave it out)
_FINETUNE_ONLY = re.compile(
    r"^(cls_token|cls_pos|(blocks\.)?cls_head_finetune\..*|blocks\.cls_norm\..*|blocks\.increase_dim\..*)$")
# keys only a pretraining model has (Point-MAE's decoder side)
_PRETRAIN_ONLY = re.compile(r"^(mask_token|decoder_pos_embed\..*|MAE_decoder\..*|increase_dim\..*)$")
_HEAD = re.compile(r"^(blocks\.)?cls_head_finetune\.")


@dataclass
class LoadReport:
    """What a load did: keys the model kept its own values for, keys of the file that were not used,
    and head keys dropped because the file's head has another number of classes."""

    source: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    dropped_head_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
        lines = [f"loaded {self.source}"]
        if self.missing_keys:
            lines.append(f"  missing (kept the model's own values): {short(self.missing_keys)}")
        if self.unexpected_keys:
            lines.append(f"  unexpected (not used): {short(self.unexpected_keys)}")
        if self.dropped_head_keys:
            lines.append(f"  head dropped (other number of classes): {short(self.dropped_head_keys)}")
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); the file is corrupt or "
                                  "truncated: download or convert it again") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_pickle(path):
            raise _corrupt(path, err) from None
        raise UnsafeCheckpointError(
            f"refused to load {path}: its pickle holds objects other than tensors and plain containers, and "
            "pointgst never executes code from a checkpoint (torch.load weights_only=True). If the file comes "
            "from a source you trust, re-save only its state dict (torch.save(sd, 'clean.pth')) in a separate "
            f"session and convert that. ({_first_line(err)})") from None
    except Exception as err:  # torch.load fails in many ways on a file that is not a checkpoint (KeyError, ...)
        raise _corrupt(path, err) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` is a torch zip archive or a pickle (protocol 2 to 5), as opposed to other bytes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
    return f"{type(err).__name__}: {detail[:200]}"


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)}); the file is corrupt, "
                           "truncated or of another kind: download or write it again")


def unwrap_state_dict(obj: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """Apply the official remapping: take ``base_model`` / ``model`` / ``state_dict`` / ``model_state_dict`` (the
    official segmentation script's) if present, remove ``module.`` anywhere in a key, strip the official prefixes.
    Returns a flat ``{key: tensor}``."""
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; this is not "
                                  "a model state dict (expected a dict of tensors, optionally under 'base_model')")
        key = key.replace("module.", "")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        state[key] = value
    if not state:
        raise CheckpointError(f"{source} holds no tensors")
    return state


def _block_width(state: Mapping[str, Tensor]) -> int | None:
    """Token width of a state dict's transformer blocks (from the first block norm), or None."""
    return next((v.shape[-1] for k, v in state.items() if k.endswith(("norm1.weight", "ln_1.weight"))), None)


def describe_state_dict(state: Mapping[str, Tensor]) -> str:
    """A short description of a state dict's architecture (family, width, depth) for error messages."""
    mae = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.blocks\.(\d+)\.", k))}
    gpt = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.layers\.(\d+)\.", k))}
    width = _block_width(state)
    if mae:
        return f"Point-MAE-style (width {width}, {max(mae) + 1} blocks)"
    if gpt:
        return f"PointGPT-style (width {width}, {max(gpt) + 1} blocks)"
    return "not a Point-MAE or PointGPT backbone"


def detect_architecture(state: Mapping[str, Tensor]) -> str:
    """The architecture name of an (unwrapped, official-layout) state dict, from its block keys and width."""
    width = _block_width(state)
    if any(k.startswith("blocks.blocks.") for k in state):
        return "point_mae_tiny" if width == 192 else "point_mae"
    if any(k.startswith("blocks.layers.") for k in state) and width in _PGPT_WIDTH_TO_ARCH:
        return _PGPT_WIDTH_TO_ARCH[width]
    raise CheckpointError(f"cannot tell the architecture of this checkpoint ({describe_state_dict(state)}); "
                          "pass it explicitly (--arch point_mae|point_mae_tiny|pointgpt_s|pointgpt_b|pointgpt_l)")


def head_classes(state: Mapping[str, Tensor]) -> int | None:
    """Number of classes of the checkpoint's head, or None if it has no head."""
    for key in ("cls_head_finetune.8.weight", "blocks.cls_head_finetune.8.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True,
                   source: str = "checkpoint") -> LoadReport:
    """Load ``state`` (official key layout, already unwrapped) into ``model``; return what happened.

    Shape mismatches of backbone keys always raise (the file is another architecture or size). A head whose
    number of classes differs from the model's is dropped whole and reported (the model keeps its own head).
    """
    own = model.state_dict()
    report = LoadReport(source=source)
    fits = {k: k in own and own[k].shape == v.shape for k, v in state.items()}
    drop_head = any(not fit and k in own and _HEAD.match(k) for k, fit in fits.items())
    usable: dict[str, Tensor] = {}
    mismatched = []
    for key, value in state.items():
        if key not in own:
            report.unexpected_keys.append(key)
        elif drop_head and _HEAD.match(key):
            report.dropped_head_keys.append(key)
        elif fits[key]:
            usable[key] = value
        else:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        arch = getattr(model, "architecture", type(model).__name__)
        raise CheckpointError(
            f"{source} does not fit {arch}: the file is {describe_state_dict(state)}, the model is "
            f"{describe_state_dict(own)}; {len(mismatched)} shapes differ, e.g. {mismatched[0]}. Create the "
            "backbone whose architecture matches the file (e.g. create_backbone('pointgpt_l', pretrained=...)).")
    report.missing_keys = [k for k in own if k not in usable]
    if strict:
        _check_strict(report, model, state, source)
    model.load_state_dict(usable, strict=False)
    return report


def _check_strict(report: LoadReport, model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    head_dropped = set(report.dropped_head_keys)
    head = tuple(getattr(model, "head_prefixes", ()))  # a task head a backbone checkpoint cannot have ...
    if any(k.startswith(head) for k in state):  # ... but a checkpoint with a head must have all of it
        head = ()
    foreign = re.compile(getattr(model, "foreign_checkpoint_keys", None) or r"^$")
    bad_missing = [k for k in report.missing_keys if not _FINETUNE_ONLY.match(k) and k not in head_dropped
                   and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    bad_unexpected = [k for k in report.unexpected_keys if not _PRETRAIN_ONLY.match(k) and not foreign.match(k)]
    if bad_missing or bad_unexpected:
        arch = getattr(model, "architecture", type(model).__name__)
        parts = []
        if bad_missing:
            parts.append(f"{len(bad_missing)} backbone keys are missing (e.g. {bad_missing[:3]})")
        if bad_unexpected:
            parts.append(f"{len(bad_unexpected)} keys are unknown (e.g. {bad_unexpected[:3]})")
        raise CheckpointError(
            f"{source} does not match {arch}: " + "; ".join(parts)  + f". The file is {describe_state_dict(state)}. "
            "Check that the checkpoint belongs to this architecture, or pass strict=False to load what matches "
            "(the official, non-strict behaviour); the report lists everything skipped.")


def write_weights_folder(state: Mapping[str, Tensor], out_dir: str | os.PathLike, config: Mapping[str, Any], *,
                         overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` safely (:func:`pointgst.atomic.write_folder`:
    atomic, and never touching files pointgst did not write)."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> dict[str, Any]:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
        return {"format": FOLDER_FORMAT, "pointgst_version": __version__}

    return write_folder(out_dir, fill, overwrite=overwrite)
