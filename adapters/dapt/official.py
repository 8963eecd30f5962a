"""DAPT's official fine-tuned checkpoints (Point-MAE: ``PointTransformer_DAPT``; PointGPT: PointGST's
``GPT_Transformer_DAPT``): the key of each of pointgst's tensors there, the keys that mark such a checkpoint, and the
options its shapes determine (``docs/peft_methods/dapt.md`` §6, §9)."""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

#: a key only a DAPT checkpoint has: the dynamic adapter of a block (Point-MAE layout, or PointGPT layout)
OFFICIAL_MARKER = r"^blocks\.(?:blocks\.\d+\.Adapter_MLP|layers\.\d+\.adapt_mlp)\."
#: the official head input of every PointGPT DAPT checkpoint: the cls token and the max over all later tokens
GPT_HEAD = {"class_token": True, "prompt_token": "joint", "patch_token": "max"}

#: own scale-and-shift name -> (official module prefix, official index)
_TOP = {"encoder_tfts": ("", 1), "norm_tfts": ("", 2)}
_BLOCK = {"norm1": ("", 1), "norm2": ("", 2), "prompt": ("", 3), "qkv": ("attn.", 1), "proj": ("attn.", 2),
          "fc1": ("mlp.", 1), "fc2": ("mlp.", 2)}
#: own block scale-and-shift name -> official index on PointGPT (``blocks.layers.<i>.tfts_*_<index>``)
_GPT_BLOCK = {"norm1": 1, "norm2": 2, "prompt": 3, "fc1": 4, "fc2": 5}
_ADAPTER = {"norm": "adapter_layer_norm_before", "scale": "scale", "down": "down_proj", "up": "up_proj"}
_OWN_KEY = re.compile(r"(?:blocks\.(?P<block>\d+)\.)?(?P<part>\w+)\.(?P<rest>.+)")


def _adapter_key(prefix: str, rest: str) -> str:
    """Own adapter tensor ``rest`` (e.g. ``down.weight``) -> its official key under the adapter ``prefix``."""
    module, _, tensor = rest.partition(".")
    return f"{prefix}.{_ADAPTER[module]}.{tensor}"


def official_key(key: str) -> str:
    """The official key of one of a :class:`~pointgst.adapters.dapt.DAPT` module's state-dict keys, e.g.
    ``blocks.3.qkv.gamma`` -> ``blocks.blocks.3.attn.tfts_gamma_1``, ``head.1.running_mean`` ->
    ``cls_head_finetune.1.running_mean``."""
    match = _OWN_KEY.fullmatch(key)
    if match is None:
        raise KeyError(f"{key!r} is not a DAPT module key")
    block, part, rest = match["block"], match["part"], match["rest"]
    if block is None and part == "head":
        return f"cls_head_finetune.{rest}"
    if block is not None and part == "adapter":
        return _adapter_key(f"blocks.blocks.{block}.Adapter_MLP", rest)
    table, prefix = (_TOP, "") if block is None else (_BLOCK, f"blocks.blocks.{block}.")
    if part not in table or rest not in ("gamma", "beta"):
        raise KeyError(f"{key!r} is not a DAPT module key")
    module, index = table[part]
    return f"{prefix}{module}tfts_{rest}_{index}"


def gpt_official_key(key: str) -> str:
    """The official key (``GPT_Transformer_DAPT``) of one of a :class:`~pointgst.adapters.dapt.gpt.GPTDAPT`
    module's state-dict keys, e.g. ``blocks.3.fc1.gamma`` -> ``blocks.layers.3.tfts_gamma_4``,
    ``cls_norm.weight`` -> ``blocks.cls_norm.weight``."""
    match = _OWN_KEY.fullmatch(key)
    if match is None:
        raise KeyError(f"{key!r} is not a PointGPT DAPT module key")
    block, part, rest = match["block"], match["part"], match["rest"]
    if block is None and part in ("head", "cls_norm"):
        return f"blocks.{'cls_head_finetune' if part == 'head' else part}.{rest}"
    if block is not None and part == "adapter":
        return _adapter_key(f"blocks.layers.{block}.adapt_mlp", rest)
    if block is None or part not in _GPT_BLOCK or rest not in ("gamma", "beta"):
        raise KeyError(f"{key!r} is not a PointGPT DAPT module key")
    return f"blocks.layers.{block}.tfts_{rest}_{_GPT_BLOCK[part]}"


def options_from_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The DAPT options an official checkpoint's shapes determine: ``rank`` and the head's input layout.

    The head reads 3 parts (cls, mean of prompts, max of patches: the ScanObjectNN OBJ_BG / PB_T50_RS configs),
    2 parts (cls + mean of prompts in a 15-class ScanObjectNN checkpoint, the OBJ_ONLY config; cls + max of patches
    otherwise, the ModelNet40 config) or 1 part (the cls token). Shapes cannot tell a mean from a max: these are the
    poolings of the official configs. A PointGPT checkpoint has one head layout (:data:`GPT_HEAD`, 2 parts).
    """
    if "blocks.layers.0.adapt_mlp.down_proj.weight" in state:
        rank, dim = state["blocks.layers.0.adapt_mlp.down_proj.weight"].shape
        head_in = state["blocks.cls_head_finetune.0.weight"].shape[1]
        if head_in != 2 * dim:
            raise ValueError(f"the PointGPT DAPT head reads {head_in} features, not 2 x {dim} (cls token and max "
                             "over the later tokens); this checkpoint is not an official PointGPT DAPT classifier")
        return {"rank": int(rank), **GPT_HEAD}
    down = state["blocks.blocks.0.Adapter_MLP.down_proj.weight"]  # (rank, C)
    head_in, classes = state["cls_head_finetune.0.weight"].shape[1], state["cls_head_finetune.8.weight"].shape[0]
    rank, dim = down.shape
    parts = head_in // dim
    if head_in % dim or not 1 <= parts <= 3:
        raise ValueError(f"the DAPT head reads {head_in} features, not 1 to 3 parts of width {dim}; this checkpoint "
                         "is not an official DAPT classifier")
    layouts = {3: ("mean", "max"), 2: ("mean", "none") if classes == 15 else ("none", "max"), 1: ("none", "none")}
    prompt, patch = layouts[parts]
    return {"rank": int(rank), "class_token": True, "prompt_token": prompt, "patch_token": patch}
