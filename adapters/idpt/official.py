"""IDPT's official fine-tuned checkpoints (``PointTransformer`` with ``prompt_module: dgcnn``): the key that marks
them, and the options their shapes determine (``docs/peft_methods/idpt.md`` §6)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pointgst.errors import CheckpointError

#: a key only an IDPT checkpoint has: the fusing layer of the DGCNN prompt generator
OFFICIAL_MARKER = r"^blocks\.cls\.conv5\."
#: the key prefix of PointGPT's blocks (Point-MAE's are ``blocks.blocks.``)
POINTGPT_BLOCKS = "blocks.layers."


def options_from_official(state: dict[str, Tensor]) -> dict[str, Any]:
    """The IDPT options an official checkpoint's shapes determine: ``head_input`` (3 token widths: cls + prompt +
    max, ``cls_type: all``; 1: the prompt, ``promptonly``).

    ``prompt_block`` (official ``prompt_layer``: 6 on OBJ_ONLY, 11 elsewhere) leaves no trace in the shapes; the
    conversion keeps the default (-1, the last block): convert an OBJ_ONLY checkpoint with
    ``pointgst convert FILE OUT --option prompt_block=6`` (``docs/peft_methods/idpt.md`` §6). A checkpoint in
    PointGPT's layout is refused: the official code has no PointGPT variant (§9).
    """
    if any(key.startswith(POINTGPT_BLOCKS) for key in state):
        raise CheckpointError("this IDPT checkpoint has PointGPT's block keys (blocks.layers.*), but IDPT's official "
                              "code runs on Point-MAE only, so no official PointGPT layout exists to convert; train "
                              "IDPT on PointGPT with pointgst and save it with save_pretrained")
    missing = [key for key in ("prompt_pos", "cls_head_finetune.0.weight") if key not in state]
    if missing:
        raise CheckpointError(f"this IDPT checkpoint lacks {', '.join(missing)}; it is not a complete official "
                              "fine-tuned IDPT checkpoint (a full PointTransformer state dict)")
    dim = state["prompt_pos"].shape[-1]
    head_in = state["cls_head_finetune.0.weight"].shape[1]
    layouts = {3 * dim: "cls+prompt+max", dim: "prompt"}
    if head_in not in layouts:
        raise CheckpointError(f"the IDPT head reads {head_in} features, neither 3 x {dim} (cls_type 'all') nor "
                              f"{dim} ('promptonly'); 2 x {dim} ('promptcls' or 'pointcls', in no official config) "
                              "cannot be told apart by shape: build the model with wrap(..., method='idpt', "
                              "head_input=...) and load the tensors yourself")
    return {"head_input": layouts[head_in]}
