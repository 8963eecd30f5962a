"""The method registry: one :class:`MethodSpec` per tuning method, and the routing of options to method configs.

A method is a plugin (``docs/design.md``, "Methods"): a folder holding its config dataclass (only its own fields,
each with help text, validated on construction), its module(s), and a ``METHOD`` spec; ``adapters/__init__.py`` lists
the specs, one line each. Nothing here knows a particular backbone or the peft tuner: a spec says what its module is
and where it attaches, and the tuner does the attaching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pointgst.errors import UnknownNameError

#: where a method attaches (how the tuner applies it)
PARALLEL = "parallel"  # a module beside the residual branches of every block: module(x (B, T, C), geometry)
HEAD = "head"  # a module that replaces the classification step: module(tokens (B, T, C), geometry) -> logits
HEAD_ONLY = "head_only"  # no module: a trainable copy of the backbone's own head (linear probing)
LORA = "lora"  # peft's LoRA on the blocks' linear layers, with a trainable head copy
FULL = "full"  # no adapter: every backbone weight trains
#: a module that runs the whole classification forward over the frozen backbone's modules, with its own tokens,
#: scale-and-shift factors and head: module(backbone, points (B, N, 3)) -> logits (DAPT, IDPT, GAPrompt, PPT)
FORWARD = "forward"
ATTACH_POINTS = (PARALLEL, HEAD, HEAD_ONLY, LORA, FULL, FORWARD)


@dataclass(frozen=True)
class MethodSpec:
    """One tuning method.

    ``build(backbone, config)``: the module of a ``parallel``, ``head`` or ``forward`` method (it may read the
    backbone's public attributes: ``embed_dim``, ``num_classes``, ...), or the peft config of a ``lora`` method;
    ``None`` otherwise.
    ``exact_at_init``: an untrained wrapped model gives the frozen backbone's outputs exactly (a ``head`` method
    replaces the head, so it is never exact). ``trains_cls_tokens``: the cls token and position train with the
    method (each adapter then owns a copy). ``official_options``: what ``preset="official"`` sets in this method's
    config. ``official_marker``: a regular expression found in the keys of the method's official fine-tuned
    checkpoints (``pointgst convert`` recognises them by it); ``options_from_official(state)``: the method's options
    that the shapes of such a checkpoint determine (e.g. a bottleneck width). ``backbones``: the architectures the
    method runs on (empty: every one).
    """

    name: str
    config_class: type
    attaches: str
    exact_at_init: bool
    trains_cls_tokens: bool
    summary: str
    build: Callable[[Any, Any], Any] | None = None
    official_options: Mapping[str, Any] = field(default_factory=dict)
    official_marker: str = ""
    options_from_official: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    backbones: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.attaches not in ATTACH_POINTS:
            raise ValueError(f"method {self.name!r}: attaches must be one of {ATTACH_POINTS}, got {self.attaches!r}")
        if not dataclasses.is_dataclass(self.config_class):
            raise TypeError(f"method {self.name!r}: config_class must be a dataclass")

    def supports(self, architecture: str) -> bool:
        """Whether the method runs on backbones of ``architecture``."""
        return not self.backbones or architecture in self.backbones

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def make_config(self, options: Mapping[str, Any]) -> Any:
        """The method's config from ``options`` (validated by the config itself); unknown names are an error that
        lists the method's options."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise UnknownNameError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                   f"for method {self.name!r}; its options are: {describe_options(self)}")
        return self.config_class(**options)


def describe_options(spec: MethodSpec) -> str:
    """``name (default)`` of every option of a method, or "none"."""
    parts = []
    for f in dataclasses.fields(spec.config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name} (default {default!r})")
    return ", ".join(parts) or "none"


def help_text(spec: MethodSpec) -> dict[str, str]:
    """Option name -> its help text (the ``help`` metadata of the config fields)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(spec.config_class)}


class Registry:
    """Name -> :class:`MethodSpec`, with combinations ``parallel+head`` (e.g. ``pcsa+deepla_head``)."""

    def __init__(self, specs: list[MethodSpec]):
        self._specs = {spec.name: spec for spec in specs}
        if len(self._specs) != len(specs):
            raise ValueError("two methods share a name")

    def names(self, *, combinations: bool = True) -> list[str]:
        """Registered names; with ``combinations``, also every ``parallel+head`` pair."""
        names = list(self._specs)
        if combinations:
            parallel = [n for n, s in self._specs.items() if s.attaches == PARALLEL]
            heads = [n for n, s in self._specs.items() if s.attaches == HEAD]
            names += [f"{p}+{h}" for p in parallel for h in heads]
        return names

    def __contains__(self, name: object) -> bool:
        try:
            self.parts(str(name))
        except UnknownNameError:
            return False
        return True

    def __getitem__(self, name: str) -> MethodSpec:
        if name not in self._specs:
            raise UnknownNameError(f"unknown method {name!r}; choose one of {', '.join(map(repr, self.names()))}")
        return self._specs[name]

    def parts(self, method: str) -> list[MethodSpec]:
        """The specs a method name stands for: one, or a parallel module and a head joined by ``+``."""
        if not isinstance(method, str) or not method:
            raise UnknownNameError(f"method must be a name such as 'pcsa', got {method!r}")
        names = method.split("+")
        specs = [self._specs.get(n) for n in names]
        kinds = [s.attaches if s else None for s in specs]
        if None in specs or (len(specs) == 2 and kinds != [PARALLEL, HEAD]) or len(specs) > 2:
            raise UnknownNameError(f"unknown method {method!r}; choose one of {', '.join(map(repr, self.names()))} "
                                   "(a combination "
                                   "is one parallel module and one head joined by '+', e.g. 'pcsa+deepla_head')")
        return specs  # type: ignore[return-value]

    def configs(self, method: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Method name -> its config, for every part of ``method``; each option goes to the part that declares it."""
        specs = self.parts(method)
        routed: dict[str, dict[str, Any]] = {spec.name: {} for spec in specs}
        for key, value in options.items():
            owners = [spec.name for spec in specs if key in spec.option_names]
            if not owners:
                known = "; ".join(f"{spec.name}: {describe_options(spec)}" for spec in specs)
                raise UnknownNameError(f"unknown option {key!r} for method {method!r}; its options are {known}")
            for owner in owners:
                routed[owner][key] = value
        return {spec.name: spec.make_config(routed[spec.name]) for spec in specs}
