"""Tuner layers: what wraps a backbone handle or module for one or several named adapters.

Every layer keeps its per-adapter modules in ``pointgst_module`` (a ``ModuleDict`` keyed by adapter name), which peft
saves whole (trainable or not), so whatever an adapter's output depends on travels with it.
"""

import copy
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from pointgst.geometry import TokenGeometry


class PointGSTLayer(BaseTunerLayer):
    """Common base. The tuner activates adapters after injection (``set_adapter``), which sets ``requires_grad``;
    an adapter whose module must not train lists it in ``frozen_peft_weight_names``."""

    adapter_layer_names = ("pointgst_module",)

    def _init_layer(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.pointgst_module = nn.ModuleDict()
        self.frozen_peft_weight_names = {}
        self._active_adapter = []
        self.merged_adapters = []
        self._disable_adapters = False

    def _add(self, adapter_name: str, module: nn.Module, *, trainable: bool = True) -> None:
        self.pointgst_module[adapter_name] = module
        if not trainable:
            self.frozen_peft_weight_names[adapter_name] = ("pointgst_module",)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # handles and containers have no .weight: use any parameter of the wrapped module, if it has one
        param = next(base_layer.parameters(), None)
        return (param.device, param.dtype) if param is not None else (None, None)

    def _active_modules(self) -> list[tuple[str, nn.Module]]:
        if self.disable_adapters:
            return []
        return [(name, self.pointgst_module[name]) for name in self.active_adapters if name in self.pointgst_module]


class ModuleLayer(nn.Module, PointGSTLayer):
    """A layer whose adapters are modules a method builds (:class:`ParallelAdapterLayer`, :class:`HeadLayer`)."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str, module: nn.Module) -> None:
        self._add(adapter_name, module)


class ParallelAdapterLayer(ModuleLayer):
    """Wraps a residual branch handle: ``branch(x, geometry) + Σ_active module(x, geometry)``; x (B, T, C)."""

    def forward(self, x: Tensor, geometry: TokenGeometry) -> Tensor:
        out = self.base_layer(x, geometry)
        for _, module in self._active_modules():
            out = out + module(x, geometry)
        return out


class TrainableTokens(nn.Module):
    """One adapter's copies of the backbone's cls token and cls position, each (1, 1, C)."""

    def __init__(self, cls_token: Tensor, cls_pos: Tensor):
        super().__init__()
        self.cls_token = nn.Parameter(cls_token.detach().clone())
        self.cls_pos = nn.Parameter(cls_pos.detach().clone())


class SpecialTokensLayer(nn.Module, PointGSTLayer):
    """Wraps the backbone's ``special_tokens`` handle: each adapter owns copies of the cls token and position (trained
    or frozen, as its method says) and the active adapter's copies are used. The copies are saved with the adapter,
    so a reloaded model never depends on tokens drawn at random when its backbone was built."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str, *, trainable: bool) -> None:
        cls_token, cls_pos = self.base_layer()
        self._add(adapter_name, TrainableTokens(cls_token, cls_pos), trainable=trainable)

    def forward(self) -> tuple[Tensor, Tensor]:
        active = self._active_modules()
        if not active:
            return self.base_layer()
        if len(active) > 1:
            raise ValueError(f"adapters {[n for n, _ in active]} are active at once, but each brings its own cls "
                             "token; activate one with model.set_adapter(name)")
        tokens = active[0][1]
        return tokens.cls_token, tokens.cls_pos


class HeadLayer(ModuleLayer):
    """Wraps the backbone's head handle and replaces the original head by the active adapter's head module, called
    with the handle's arguments: ``classify(tokens (B, T, C), geometry) -> (B, classes)`` or a segmentation model's
    ``segment(tokens (B, G, F), geometry, points (B, N, 3), category (B,)) -> (B, N, parts)``. An active adapter
    without a head module here (another method) gets the original head."""

    def forward(self, *args: Any) -> Tensor:
        active = self._active_modules()
        if not active:
            return self.base_layer(*args)
        return active[-1][1](*args)


class ForwardLayer(ModuleLayer):
    """Wraps the backbone's ``pipeline`` handle and runs the active adapter's ``forward`` method module instead:
    ``module(backbone, points (B, N, 3)) -> logits``, with the backbone that owns the handle. An active adapter without
    a module here (another method) gets the backbone's own computation."""

    def forward(self, points: Tensor) -> Tensor:
        active = self._active_modules()
        if not active:
            return self.base_layer(points)
        return active[-1][1](self.base_layer.owner, points)


class CarrierLayer(nn.Module, PointGSTLayer):
    """Wraps a handle without changing what it computes: the target that marks a model as adapted where no other
    module is (a head-only adapter of a segmentation model, which has no cls token to copy). Owns no parameters; a
    head method's adapter replaces it by a :class:`HeadLayer`."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str) -> None:
        self._add(adapter_name, nn.Module(), trainable=False)

    def forward(self, *args: Any) -> Any:
        return self.base_layer(*args)


class NormStatsLayer(nn.Module, PointGSTLayer):
    """Official BatchNorm drift (``bn_stats="update"``): each adapter owns a frozen copy of a frozen BatchNorm
    layer whose running statistics follow the data in training mode and are saved with the adapter."""

    def __init__(self, base_layer: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self._init_layer(base_layer)

    def update_layer(self, adapter_name: str) -> None:
        self._add(adapter_name, copy.deepcopy(self.base_layer).requires_grad_(False), trainable=False)

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        active = self._active_modules()
        return active[-1][1](x) if active else self.base_layer(x)
