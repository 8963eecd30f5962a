"""Tuner layers: what wraps a backbone handle or module for one or several named adapters."""

import copy
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from pointgst.spectral import SpectralOptions

from .context import SpectralContext


class PointGSTLayer(BaseTunerLayer):
    """Common base: per-adapter modules live in ``pointgst_module`` (a ``ModuleDict`` keyed by adapter name).
    The tuner activates adapters after injection (``set_adapter``), which also sets ``requires_grad``."""

    adapter_layer_names = ("pointgst_module",)

    def _init_layer(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.pointgst_module = nn.ModuleDict()
        self.frozen_peft_weight_names = {}
        self._active_adapter = []
        self.merged_adapters = []
        self._disable_adapters = False

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # handles and containers have no .weight: use any parameter of the wrapped module, if it has one
        param = next(base_layer.parameters(), None)
        return (param.device, param.dtype) if param is not None else (None, None)

    def _active_modules(self) -> list[tuple[str, nn.Module]]:
        if self.disable_adapters:
            return []
        return [(name, self.pointgst_module[name]) for name in self.active_adapters if name in self.pointgst_module]


class ParallelAdapterLayer(nn.Module, PointGSTLayer):
    """Wraps a residual branch handle: ``branch(x) + Σ_active adapter(x, geometry)``. x: (B, T, C).

    ``geometry`` is what each adapter consumes (see :mod:`pointgst.adapters`): the shared spectral basis of the
    token centres (computed once per forward) or the centres themselves."""

    other_param_names = ("pointgst_geometry", "pointgst_options")

    def __init__(self, base_layer: nn.Module, context: SpectralContext):
        super().__init__()
        self._init_layer(base_layer)
        self.context = context
        self.pointgst_geometry: dict[str, str] = {}
        self.pointgst_options: dict[str, SpectralOptions] = {}

    def update_layer(self, adapter_name: str, module: nn.Module, geometry: str, options: SpectralOptions) -> None:
        self.pointgst_module[adapter_name] = module
        self.pointgst_geometry[adapter_name] = geometry
        self.pointgst_options[adapter_name] = options

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        out = self.base_layer(x, *args)
        for name, module in self._active_modules():
            if self.pointgst_geometry[name] == "basis":
                geometry = self.context.basis(self.pointgst_options[name])
            else:
                geometry = self.context.centers
            out = out + module(x, geometry)
        return out


class TrainableTokens(nn.Module):
    """Per-adapter copies of the backbone's cls token and cls position, each (1, 1, C)."""

    def __init__(self, cls_token: Tensor, cls_pos: Tensor):
        super().__init__()
        self.cls_token = nn.Parameter(cls_token.detach().clone())
        self.cls_pos = nn.Parameter(cls_pos.detach().clone())


class SpecialTokensLayer(nn.Module, PointGSTLayer):
    """Wraps the backbone's ``special_tokens`` handle and returns the active adapter's trainable copies."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str) -> None:
        cls_token, cls_pos = self.base_layer()
        self.pointgst_module[adapter_name] = TrainableTokens(cls_token, cls_pos)

    def forward(self) -> tuple[Tensor, Tensor]:
        active = self._active_modules()
        if not active:
            return self.base_layer()
        if len(active) > 1:
            raise ValueError(f"adapters {[n for n, _ in active]} are active at once, but each brings its own cls "
                             "token; activate one with model.set_adapter(name)")
        tokens = active[0][1]
        return tokens.cls_token, tokens.cls_pos


class HeadLayer(nn.Module, PointGSTLayer):
    """Wraps the backbone's ``classify`` handle: the active adapter's head module classifies the final point tokens
    (B, G, C) and their centres instead of the original head."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str, module: nn.Module) -> None:
        self.pointgst_module[adapter_name] = module

    def forward(self, tokens: Tensor, centers: Tensor) -> Tensor:
        active = self._active_modules()
        if not active:
            return self.base_layer(tokens, centers)
        return active[-1][1](tokens[:, -centers.shape[1]:], centers)


class NormStatsLayer(nn.Module, PointGSTLayer):
    """Official BatchNorm drift (``bn_stats="update"``): each adapter owns a frozen copy of a frozen BatchNorm
    layer whose running statistics follow the data in training mode and are saved with the adapter."""

    def __init__(self, base_layer: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str) -> None:
        self.pointgst_module[adapter_name] = copy.deepcopy(self.base_layer).requires_grad_(False)
        self.frozen_peft_weight_names[adapter_name] = ("pointgst_module",)

    def forward(self, x: Tensor) -> Tensor:
        active = self._active_modules()
        return active[-1][1](x) if active else self.base_layer(x)
