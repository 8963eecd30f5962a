"""``PointGSTModel``: the peft tuner that attaches pointgst's methods to a backbone (``docs/design.md``, "Tuner")."""

from typing import Optional

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from pointgst.adapters import FORWARD, HEAD, METHODS, PARALLEL

from .config import PointGSTConfig
from .layer import (
    CarrierLayer,
    ForwardLayer,
    HeadLayer,
    NormStatsLayer,
    ParallelAdapterLayer,
    PointGSTLayer,
    SpecialTokensLayer,
)

BRANCHES = {"ffn": ("ffn_branch",), "ffn+attn": ("ffn_branch", "attn_branch")}
SPECIAL_TOKENS = "special_tokens"
CLASSIFY = "classify"
SEGMENT = "segment"
PIPELINE = "pipeline"
#: the handle a head method replaces, per backbone task
HEAD_HANDLES = {"classification": CLASSIFY, "segmentation": SEGMENT}


def default_target_modules(model: nn.Module, config: PointGSTConfig) -> list[str]:
    """Names of the handles and modules a config adapts in ``model`` (a pointgst backbone): the branches of every
    transformer block for a parallel method, the head handle of the model's task for a head method (``classify``, or
    a segmentation model's ``segment``), the ``pipeline`` handle for a ``forward`` method, always the cls tokens
    (each adapter owns copies; a segmentation model has none, and its ``segment`` handle is always a target instead,
    so that a head-only adapter has one too), and with ``bn_stats="update"`` every frozen BatchNorm outside the
    head."""
    names = [SPECIAL_TOKENS] if model.num_special_tokens else [SEGMENT]
    if config.part(PARALLEL)[0] is not None:
        blocks = {id(block) for block in model.transformer_blocks}  # the extractor's blocks, not a generator's
        names += [f"{name}.{branch}" for name, module in model.named_modules() if id(module) in blocks
                  for branch in BRANCHES[config.placement]]
    if config.part(FORWARD)[0] is not None:
        names.append(PIPELINE)
    if config.part(HEAD)[0] is not None:
        if HEAD_HANDLES[model.task] not in names:
            names.append(HEAD_HANDLES[model.task])
    if config.bn_stats == "update":
        names += [name for name, module in model.named_modules()
                  if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(model.head_prefixes)]
    return names


class PointGSTModel(BaseTuner):
    """Injects a method's parallel modules beside the residual branches of every block or its head module in place of
    the classification (or segmentation) step, per-adapter cls-token copies, and (official BN drift) per-adapter
    BatchNorm copies. Modules read the token geometry the backbone passes along; the tuner holds no shared state."""

    prefix = "pointgst_"
    tuner_layer_cls = PointGSTLayer
    target_module_mapping: dict = {}

    def _pre_injection_hook(self, model: nn.Module, config: PointGSTConfig, adapter_name: str) -> None:
        if not hasattr(model, "transformer_blocks") or not hasattr(model, SPECIAL_TOKENS):
            raise ValueError(f"{type(model).__name__} is not a pointgst backbone; create one with "
                             "pointgst.create_backbone(name) or pass its name to pointgst.wrap")
        for spec in METHODS.parts(config.method):
            if not spec.supports(model.architecture):
                others = [n for n in METHODS.names(combinations=False) if METHODS[n].supports(model.architecture)]
                raise ValueError(f"{spec.name} runs on {', '.join(spec.backbones)} backbones (ACT and ReCon load as "
                                 f"point_mae), not on {model.architecture}; on it choose one of {', '.join(others)}")

    def _prepare_adapter_config(self, peft_config: PointGSTConfig, model_config: dict) -> PointGSTConfig:
        """Targets, saved modules and the backbone record come from the backbone itself (first adapter and
        ``add_adapter`` alike)."""
        spec, options = peft_config.part(PARALLEL)
        groups = self.model.arch_config["num_group"]
        if options is not None and hasattr(options, "local_size") and groups % options.local_size:
            raise ValueError(f"{spec.name} cuts the {groups} token centres into local graphs of local_size="
                             f"{options.local_size}, which must divide num_group; choose local_size from the "
                             f"divisors of {groups} or another num_group")
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(self.model, peft_config)
        if peft_config.modules_to_save is None:  # a head or forward method has its own head: the old one is unused
            own_head = peft_config.part(HEAD)[0] or peft_config.part(FORWARD)[0]
            peft_config.modules_to_save = [] if own_head else list(self.model.head_modules)
        peft_config.backbone_options = {"architecture": self.model.architecture,
                                        "num_classes": self.model.num_classes, **self.model.grouping_options}
        return peft_config

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Saved keys carry no adapter name: ``...pointgst_module.<name>.down.weight`` -> ``...pointgst_module.down
        .weight`` (peft's default only removes a name in the second-to-last position)."""
        marker = f".{PointGSTLayer.adapter_layer_names[0]}.{adapter_name}."
        if marker in key:
            return key.replace(marker, f".{PointGSTLayer.adapter_layer_names[0]}.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _create_and_replace(self, peft_config: PointGSTConfig, adapter_name: str, target: nn.Module,
                            target_name: str, parent: nn.Module, current_key: str,
                            parameter_name: Optional[str] = None) -> None:
        head = target_name in HEAD_HANDLES.values() and peft_config.part(HEAD)[0] is not None
        if head and isinstance(target, CarrierLayer):  # a head adapter joins adapters that keep the original step
            layer = HeadLayer(target.base_layer)  # which it does for every adapter it holds no head of
        elif isinstance(target, PointGSTLayer):
            layer = target
        elif target_name == SPECIAL_TOKENS:
            layer = SpecialTokensLayer(target)
        elif target_name == PIPELINE:
            layer = ForwardLayer(target)
        elif head:
            layer = HeadLayer(target)
        elif target_name == SEGMENT:
            layer = CarrierLayer(target)
        elif isinstance(target, nn.modules.batchnorm._BatchNorm):
            layer = NormStatsLayer(target)
        else:
            layer = ParallelAdapterLayer(target)
        reference = next(self.model.parameters())
        if isinstance(layer, HeadLayer) and not head:
            pass  # an adapter without a head method keeps the original step (the layer holds no module for it)
        elif isinstance(layer, (ParallelAdapterLayer, HeadLayer, ForwardLayer)):
            kind = {ParallelAdapterLayer: PARALLEL, HeadLayer: HEAD, ForwardLayer: FORWARD}[type(layer)]
            spec, options = peft_config.part(kind)
            layer.update_layer(adapter_name, spec.build(self.model, options).to(reference.device, reference.dtype))
        elif isinstance(layer, SpecialTokensLayer):
            layer.update_layer(adapter_name, trainable=peft_config.train_cls_tokens)
        else:
            layer.update_layer(adapter_name)
        if layer is not target:
            self._replace_module(parent, target_name, layer, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # handles own no weights, so peft's weight-copying and device lookup do not apply; adapters are created on
        # the backbone's device in _create_and_replace
        setattr(parent, child_name, new_module)

    def _check_merge_allowed(self) -> None:
        raise ValueError("pointgst adapters cannot be merged into the backbone: a parallel module's output depends "
                         "on each sample's geometry and is nonlinear, and a head replaces a computation. Keep the "
                         "adapter (it is small) or call unload() to get the plain backbone back.")

    def _unload_and_optionally_merge(self, merge: bool = True, *args, **kwargs) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        return super()._unload_and_optionally_merge(merge=False, *args, **kwargs)


__all__ = ["BRANCHES", "CLASSIFY", "HEAD_HANDLES", "PIPELINE", "PointGSTModel", "SEGMENT", "SPECIAL_TOKENS",
           "default_target_modules"]
