"""What every backbone offers (design contract 1): grouping, tokens, hookable blocks, a head."""

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pointgst.validation import check_point_cloud

from .checkpoint import FOLDER_FORMAT, LoadReport, write_weights_folder
from .grouping import PatchGrouper
from .layers import Handle, classification_head, init_vit_weights


class PointBackbone(nn.Module):
    """Base class of the point-cloud transformers.

    Subclasses set ``group_divider`` (a :class:`PatchGrouper`), implement :meth:`forward_tokens` and :meth:`pool`, and
    keep their transformer blocks in :attr:`transformer_blocks`, each exposing the residual branches
    ``attn_branch`` and ``ffn_branch`` (:class:`~pointgst.backbones.layers.Handle`); the cls token and
    position are read through the ``special_tokens`` handle, and the final tokens reach the head through the
    ``classify`` handle (``classify(tokens, centers) -> logits``), which a head method (DeepLA) can take over. After every forward, :attr:`token_centers`
    holds the centres (B, G, 3) of the point tokens in token order.
    """

    architecture: str = ""
    classifier_name: str = ""
    #: modules trained together with the head in PEFT (the official trainable set beside adapters and tokens)
    head_modules: tuple[str, ...] = ()
    #: the linear layers of the transformer blocks, for LoRA (a regex over module names)
    lora_targets: str = ""
    num_special_tokens: int = 0
    group_divider: PatchGrouper
    cls_token: nn.Parameter
    cls_pos: nn.Parameter

    def __init__(self, arch_config: dict[str, Any]):
        super().__init__()
        self.arch_config = dict(arch_config)
        self.token_centers: Tensor | None = None
        self.name_or_path: str | None = None  # what create_backbone was given; recorded in peft adapter configs
        self.load_report: LoadReport | None = None  # what loading pretrained weights did
        self.tuning_method: str | None = None  # "linear" / "full" after set_tuning
        self.special_tokens = Handle(self._special_tokens)
        self.classify = Handle(self._classify)

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

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Validate ``points`` (B, N, 3) and split them into patches: (neighborhood (B,G,K,3), centers (B,G,3))."""
        check_point_cloud(points, min_points=self.group_divider.min_points)
        neighborhood, centers = self.group_divider(points)
        self.token_centers = centers
        return neighborhood, centers

    def forward_tokens(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (final tokens (B, T, C) after the last norm, special tokens first; centres (B, G, 3))."""
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

    def _classify(self, tokens: Tensor, centers: Tensor) -> Tensor:
        return self.forward_head(self.pool(tokens))

    def forward(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> logits (B, num_classes), through the ``classify`` handle (a head method replaces it)."""
        return self.classify(*self.forward_tokens(points))

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        parent_name, _, attr = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        old = getattr(parent, attr)
        new = classification_head(self.num_features, num_classes)
        setattr(parent, attr, new.to(device=old[0].weight.device, dtype=old[0].weight.dtype))
        self.arch_config["num_classes"] = num_classes

    def set_tuning(self, method: str) -> "PointBackbone":
        """Baselines without adapters: ``"linear"`` trains the head modules only, ``"full"`` everything."""
        if method not in ("linear", "full"):
            raise ValueError(f"set_tuning takes 'linear' or 'full', got {method!r}")
        for name, param in self.named_parameters():
            param.requires_grad_(method == "full" or name.startswith(self._head_prefixes))
        self.tuning_method = method
        return self

    @property
    def _head_prefixes(self) -> tuple[str, ...]:
        return tuple(m + "." for m in self.head_modules)

    def save_pretrained(self, out_dir: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write a weights folder that ``pointgst.load_adapter(out_dir)`` restores: every weight after ``"full"``
        tuning (also loadable with ``create_backbone(arch, pretrained=out_dir)``), only the head modules after
        ``"linear"`` tuning, with the backbone they sit on recorded as ``base``."""
        method = self.tuning_method or "full"
        state = self.state_dict()
        if method == "linear":
            state = {k: v for k, v in state.items() if k.startswith(self._head_prefixes)}
        grouping = {k: self.arch_config[k] for k in ("num_group", "group_size", "skip_near_origin")}
        config = {"format": FOLDER_FORMAT, "architecture": self.architecture, "num_classes": self.num_classes,
                  "tuning_method": method, "base": self.name_or_path if method == "linear" else None,
                  "backbone_options": grouping}
        return write_weights_folder(state, out_dir, config, overwrite=overwrite)

    def init_weights(self) -> None:
        """The official from-scratch initialisation (only used without pretrained weights)."""
        self.apply(init_vit_weights)
