"""``PointGSTConfig``: the peft config of pointgst's tuner, which attaches any registered method.

The method's own options live in ``options`` and are validated by the method's config dataclass
(:data:`pointgst.adapters.METHODS`); the fields here are what the tuner itself needs: where parallel modules go,
what happens to frozen BatchNorm statistics, whether the cls token trains, the preset, and the backbone the adapter
was trained on. Configs saved by pointgst 0.1.0 (every option a field of its own) are migrated on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from peft import PeftConfig

from pointgst.adapters import FORWARD, HEAD, HEAD_ONLY, METHODS, PARALLEL
from pointgst.validation import check_choice

PEFT_TYPE = "POINTGST"
PLACEMENTS = ("ffn", "ffn+attn")
BN_STATS = ("frozen", "update")
#: tuner-level settings of ``preset="official"`` (the method's own come from its registry entry)
OFFICIAL_TUNER_SETTINGS = {"bn_stats": "update"}
PRESETS = ("official",)
#: where the methods this tuner applies attach (LoRA is peft's own tuner, full fine-tuning needs none)
TUNER_ATTACHES = (PARALLEL, HEAD, HEAD_ONLY, FORWARD)

# pointgst 0.1.0 kept every method's options as fields of this config; new name of each, by method
_V010_OPTIONS = {
    "pcsa": {"rank": "rank", "local_size": "local_size", "curve": "curve", "laplacian": "laplacian",
             "dmin_scope": "dmin_scope", "gft_mode": "gft_mode", "eigh_dtype": "eigh_dtype"},
    "dcnv4": {"rank": "rank", "dcnv4_groups": "groups", "dcnv4_points": "num_points"},
    "deepla_head": {"head_width": "width", "head_depths": "depths", "head_k": "k",
                    "hybrid_supervision": "hybrid_supervision"},
}
_V010_FIELDS = {old for names in _V010_OPTIONS.values() for old in names}


def migrate_v010(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved by pointgst 0.1.0 (options as top-level fields) in today's layout; others unchanged."""
    if "options" in kwargs or not _V010_FIELDS & set(kwargs):
        return kwargs
    kwargs = dict(kwargs)
    old = {name: kwargs.pop(name) for name in _V010_FIELDS if name in kwargs}
    method = kwargs.get("method", "pcsa")
    options = {}
    for part in method.split("+"):
        for old_name, new_name in _V010_OPTIONS.get(part, {}).items():
            if old_name in old:
                options[new_name] = old[old_name]
    kwargs["options"] = options
    return kwargs


@dataclass
class PointGSTConfig(PeftConfig):
    """peft config of a pointgst method (``pcsa``, ``dcnv4``, ``deepla_head``, ``linear``, or a parallel module and
    a head joined by ``+``). ``preset="official"`` fills in every official-code setting the options do not name;
    options given explicitly win over the preset."""

    method: str = field(default="pcsa", metadata={"help": "the tuning method (pointgst.adapters.list_methods())"})
    options: dict = field(default_factory=dict, metadata={
        "help": "the method's options (fields of its config dataclass, e.g. rank=16)"})
    placement: str = field(default="ffn", metadata={
        "help": "parallel modules: 'ffn' beside the FFN branch of every block (the paper), or 'ffn+attn' beside "
                "the attention branch too (a deviation from the paper)"})
    bn_stats: Optional[str] = field(default=None, metadata={
        "help": "'frozen': frozen BatchNorm layers stay in eval mode while training; 'update': their statistics "
                "follow the data as in the official code, and are saved with the adapter (default 'frozen', "
                "'update' with the official preset)"})
    train_cls_tokens: Optional[bool] = field(default=None, metadata={
        "help": "train the cls token and position (default: as the method does, e.g. pcsa yes, deepla_head no)"})
    preset: Optional[str] = field(default=None, metadata={"help": "'official': every official-code behaviour"})
    backbone_options: Optional[dict] = field(default=None, metadata={
        "help": "architecture, number of classes and grouping of the backbone the adapter was trained on "
                "(recorded at injection), to rebuild the same backbone when loading"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={
        "help": "module names to adapt; derived from the backbone when None"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None)
    modules_to_save: Optional[list[str]] = field(default=None, metadata={
        "help": "modules trained and saved whole; the backbone's head modules when None (none for a head method)"})
    target_parameters: Optional[list[str]] = field(default=None)
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None)
    layers_pattern: Optional[Union[list[str], str]] = field(default=None)
    bias: str = field(default="none")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        specs = METHODS.parts(self.method)
        if any(spec.attaches not in TUNER_ATTACHES for spec in specs):
            raise ValueError(f"method {self.method!r} is not applied by pointgst's tuner; use pointgst.wrap")
        if self.preset is not None:
            check_choice("preset", self.preset, PRESETS)
            for spec in specs:
                for key, value in spec.official_options.items():
                    self.options.setdefault(key, value)
            for key, value in OFFICIAL_TUNER_SETTINGS.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        self.bn_stats = self.bn_stats or "frozen"
        if self.train_cls_tokens is None:
            self.train_cls_tokens = any(spec.trains_cls_tokens for spec in specs)
        check_choice("placement", self.placement, PLACEMENTS)
        check_choice("bn_stats", self.bn_stats, BN_STATS)
        self.method_configs()  # validates the options

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """Called by ``from_pretrained`` on the saved fields: migrate a 0.1.0 config."""
        return migrate_v010(super().check_kwargs(**kwargs))

    def method_configs(self) -> dict[str, Any]:
        """Method name -> its validated config dataclass, for each part of ``method``."""
        return METHODS.configs(self.method, self.options)

    def part(self, attaches: str) -> tuple[Any, Any] | tuple[None, None]:
        """``(spec, config)`` of the part of ``method`` that attaches at ``attaches``, or ``(None, None)``."""
        configs = self.method_configs()
        for spec in METHODS.parts(self.method):
            if spec.attaches == attaches:
                return spec, configs[spec.name]
        return None, None
