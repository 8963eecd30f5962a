"""What every backbone offers (``docs/design.md``, "Backbones"): grouping into a token geometry, tokens, blocks whose
residual branches a tuner can reach, a head."""

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry
from pointgst.validation import check_int, model_input

from .checkpoint import FOLDER_FORMAT, LoadReport, write_weights_folder
from .grouping import PatchGrouper
from .layers import BlockStack, Handle, classification_head, init_vit_weights


class PointBackbone(nn.Module):
    """Base class of the point-cloud transformers.

    Subclasses set ``group_divider`` (a :class:`PatchGrouper`), implement :meth:`forward_tokens` and :meth:`pool`, and
    keep their transformer blocks in :attr:`transformer_blocks`. A forward makes one :class:`TokenGeometry` at the
    grouping step and passes it to every block (``block(x, geometry)``) and to the head: each block exposes its
    residual branches as handles ``attn_branch(x, geometry)`` and ``ffn_branch(x, geometry)``
    (:class:`~pointgst.backbones.layers.Handle`), the cls token and position are read through the ``special_tokens``
    handle, and the final tokens reach the head through the ``classify(tokens, geometry) -> logits`` handle, so a
    tuner can add to a branch, swap the tokens or take over the head without copying a line of the backbone; the
    whole classification runs through the ``pipeline(points) -> logits`` handle, which a method that changes the token
    sequence itself (DAPT, IDPT, GAPrompt, PPT) replaces, running the backbone's frozen modules in its own order.
    """

    architecture: str = ""
    #: what the model predicts: ``"classification"`` (a label per cloud) or ``"segmentation"`` (a part per point)
    task: str = "classification"
    classifier_name: str = ""
    #: modules trained together with the head in PEFT (the official trainable set beside adapters and tokens)
    head_modules: tuple[str, ...] = ()
    #: the linear layers of the transformer blocks, for LoRA (a regex over module names)
    lora_targets: str = ""
    num_special_tokens: int = 0
    #: state-dict key prefixes of weights the classification forward never uses (kept for checkpoint compatibility)
    unused_in_forward: tuple[str, ...] = ()
    group_divider: PatchGrouper
    cls_token: nn.Parameter
    cls_pos: nn.Parameter

    def __init__(self, arch_config: dict[str, Any]):
        super().__init__()
        check_int("num_classes", arch_config["num_classes"], 1)
        self.arch_config = dict(arch_config)
        self.name_or_path: str | None = None  # what create_backbone was given; recorded in peft adapter configs
        self.load_report: LoadReport | None = None  # what loading pretrained weights did
        self.tuning_method: str | None = None  # "full" after full fine-tuning (wrap(..., method="full"))
        self.special_tokens = Handle(self._special_tokens)
        self.classify = Handle(self._classify)
        self.pipeline = Handle(self._pipeline)

    def _special_tokens(self) -> tuple[Tensor, Tensor]:
        """The learnable cls token and its position, each (1, 1, C)."""
        return self.cls_token, self.cls_pos

    @property
    def embed_dim(self) -> int:
        return self.arch_config["embed_dim"]

    @property
    def depth(self) -> int:
        return self.arch_config["depth"]

    @property
    def num_classes(self) -> int:
        return self.arch_config["num_classes"]

    @property
    def num_features(self) -> int:
        """Width of the pooled feature fed to the head: [cls output, max over point tokens] = 2C."""
        return 2 * self.embed_dim

    @property
    def transformer_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        """The frozen norm applied to the output of the last block (Point-MAE ``norm``, PointGPT ``blocks.ln_f``)."""
        raise NotImplementedError

    @property
    def head_norm(self) -> nn.Module | None:
        """The norm the head applies to the final tokens before pooling (PointGPT ``blocks.cls_norm``; a fine-tuning
        head module, absent from pretraining checkpoints), or None."""
        return None

    @property
    def lora_target_parameters(self) -> list[str]:
        """Parameters (not modules) LoRA adapts, for projections that are not ``nn.Linear`` modules."""
        return []

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Check ``points`` (B, N, 3) (other float dtypes are cast to the model's) and split them into patches:
        (neighborhood (B, G, K, 3), centers (B, G, 3))."""
        points = model_input(points, min_points=self.group_divider.min_points, dtype=self.dtype, training=self.training)
        return self.group_divider(points)

    def forward_tokens(self, points: Tensor) -> tuple[Tensor, TokenGeometry]:
        """points (B, N, 3) -> (final tokens (B, T, C) after the last norm, special tokens first; their geometry)."""
        raise NotImplementedError

    def pool(self, tokens: Tensor) -> Tensor:
        """final tokens (B, T, C) -> the head's input (B, 2C): [cls output, max over point tokens]."""
        raise NotImplementedError

    def forward_features(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> pooled features (B, 2C)."""
        return self.pool(self.forward_tokens(points)[0])

    def forward_head(self, features: Tensor) -> Tensor:
        """features (B, 2C) -> logits (B, num_classes)."""
        return self.get_classifier()(features)

    def _classify(self, tokens: Tensor, geometry: TokenGeometry) -> Tensor:
        return self.forward_head(self.pool(tokens))

    def _pipeline(self, points: Tensor) -> Tensor:
        return self.classify(*self.forward_tokens(points))

    def forward(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> logits (B, num_classes): ``classify(*forward_tokens(points))`` through the ``pipeline``
        handle (a ``forward`` method such as DAPT replaces the whole computation there) and the ``classify`` handle (a
        head method replaces the head there)."""
        return self.pipeline(points)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs."""
        check_int("num_classes", num_classes, 1)
        parent_name, _, attr = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        old = getattr(parent, attr)
        new = classification_head(self.num_features, num_classes)
        setattr(parent, attr, new.to(device=old[0].weight.device, dtype=old[0].weight.dtype))
        self.arch_config["num_classes"] = num_classes

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the transformer blocks' activations in the backward pass instead of keeping them (less memory,
        one more forward of the blocks per step). Results are identical up to float rounding. The Hugging Face
        convention: a wrapped model forwards the call to its backbone."""
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(isinstance(m, BlockStack) and m.gradient_checkpointing for m in self.modules())

    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, BlockStack):
                module.gradient_checkpointing = enabled

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the head modules (``cls_head_finetune.``, PointGPT's ``blocks.cls_norm.``)."""
        return tuple(m + "." for m in self.head_modules)

    @property
    def grouping_options(self) -> dict[str, Any]:
        """The options a saved model must record to rebuild this backbone's token geometry."""
        return {k: self.arch_config[k] for k in ("num_group", "group_size", "skip_near_origin")}

    def save_pretrained(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write every weight into a weights folder (``model.safetensors`` + ``config.json``) that
        ``pointgst.load_adapter(out_dir)`` and ``create_backbone(arch, pretrained=out_dir)`` restore: the result of
        full fine-tuning. A folder holding files pointgst did not write needs ``overwrite=True``, and even then
        only pointgst's own files are replaced."""
        config = {"format": FOLDER_FORMAT, "architecture": self.architecture, "num_classes": self.num_classes,
                  "tuning_method": self.tuning_method or "full", "backbone_options": self.grouping_options}
        return write_weights_folder(self.state_dict(), out_dir, config, overwrite=overwrite)

    def init_weights(self) -> None:
        """The official from-scratch initialisation (only used without pretrained weights)."""
        self.apply(init_vit_weights)
