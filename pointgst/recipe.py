"""Training recipes: one YAML file per (dataset x backbone) setting, read into typed dataclasses.

A recipe holds everything a run needs besides the data itself: the backbone and its weights, the tuning
method, the dataset and its pipeline, the optimisation schedule and the evaluation protocol. Built-in recipes
live in ``recipes/`` (package ``pointgst.recipes``) and are named by their file stem,
``<setting>.<backbone>`` (``scanobjectnn-obj_bg.point_mae``); a path to any YAML file works too.

Every field is type-checked and range-checked when a recipe is built, from a file, a dict, an override
(``train.epochs=5``) or the dataclasses themselves; errors are :class:`RecipeError` naming the key. Loading
imports neither torch nor the data code, so it is instantaneous.

YAML is read with the safe loader, plus YAML 1.2 floats: ``5e-4`` is the float 0.0005 (PyYAML's YAML 1.1
rules would read the string ``"5e-4"``).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

DATASET_CLASSES = {"scanobjectnn": 15, "modelnet40": 40, "modelnet10": 10, "folder": None}
SCANOBJECTNN_VARIANTS = ("obj_bg", "obj_only", "pb_t50_rs")
_MODELNET_FORMATS = ("npz", "normal_resampled", "dat")
DATASET_FORMATS = {"scanobjectnn": ("h5",), "modelnet40": _MODELNET_FORMATS, "modelnet10": _MODELNET_FORMATS,
                   "folder": (None,)}
AUGMENTATIONS = ("scale_translate", "rotate_y", "none")
SCHEDULES = ("cosine", "official")
SELECTIONS = ("val", "test")
#: ``method.name`` of a pretraining recipe (masked autoencoding, ``pointgst pretrain``)
PRETRAIN_METHOD = "mae"


class RecipeError(ValueError):
    """A recipe (file, dict or override) has an unknown key, a value of the wrong type or an invalid value."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``5e-4``) as floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid YAML: {err}") from None


# --------------------------------------------------------------------------------------------------------------
# type and value checks


def _kind(value: Any) -> str:
    """The YAML name of a value's type."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "mapping", list: "list"}.get(
        type(value), type(value).__name__)


def _allowed_types(hint: Any) -> tuple:
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return tuple(get_origin(arg) or arg for arg in args)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the type ``hint`` allows (an int is accepted, and converted, where a float is
    expected; null only where allowed); else :class:`RecipeError` naming key, expected and given type."""
    allowed = _allowed_types(hint)
    if value is None:
        if type(None) in allowed:
            return None
    elif isinstance(value, bool):  # before int: bool is an int subclass
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, dict) and dict in allowed:
        bad = [k for k in value if not isinstance(k, str)]
        if not bad:
            return dict(value)
        raise RecipeError(f"{key} must be a mapping with string keys, got key {bad[0]!r} ({_kind(bad[0])})")
    names = [("null" if t is type(None) else "a mapping" if t is dict else t.__name__) for t in allowed]
    raise RecipeError(f"{key} must be {' or '.join(names)}, got {value!r} ({_kind(value)})")


def _close_match(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _check_keys(section: str, keys: Sequence[str], valid: Sequence[str]) -> None:
    for key in keys:
        if key not in valid:
            where = "at the top level" if section == "" else f"in section {section!r}"
            raise RecipeError(f"unknown key {key!r} {where}{_close_match(str(key), valid)} "
                              f"(valid keys: {', '.join(valid)})")


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise RecipeError(f"{key} must be {rule}, got {value!r}")


def _choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        hint = _close_match(value, [c for c in choices if c is not None]) if isinstance(value, str) else ""
        options = ", ".join("null" if c is None else repr(c) for c in choices)
        raise RecipeError(f"{key} must be one of {options}, got {value!r}{hint}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


# --------------------------------------------------------------------------------------------------------------
# the recipe


class _Section:
    """Base of the recipe sections: type-checks every field on construction, then runs ``_check``."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name in _field_names(type(self)):
            setattr(self, name, _typed(f"{self.section}.{name}", getattr(self, name), hints[name]))
        self._check()

    def _check(self) -> None:
        """Range and choice checks of this section's values (types are already right)."""


@dataclass
class BackboneSpec(_Section):
    section: ClassVar[str] = "backbone"
    #: architecture (``point_mae``) or pretrained tag (``point_mae.pretrain``, ``pointgpt_l.post_pretrain``, ...)
    name: str = "point_mae.pretrain"
    #: ``True``: the tag's weights; ``False``: random init; a string: a local path or a hub repo id
    pretrained: bool | str = True
    num_group: int = 64
    group_size: int = 32
    #: stochastic depth of the (frozen) blocks; Point-MAE family 0.1, ``None`` for PointGPT (unused there)
    drop_path_rate: float | None = 0.1

    def _check(self) -> None:
        _require(self.name.strip() != "", "backbone.name", self.name, "a non-empty architecture or tag name")
        if isinstance(self.pretrained, str):
            _require(self.pretrained.strip() != "", "backbone.pretrained", self.pretrained,
                     "true, false, or a non-empty path or hub repo id")
        _require(self.num_group >= 1, "backbone.num_group", self.num_group, "a positive integer")
        _require(self.group_size >= 1, "backbone.group_size", self.group_size, "a positive integer")
        if self.drop_path_rate is not None:
            _require(0.0 <= self.drop_path_rate < 1.0, "backbone.drop_path_rate", self.drop_path_rate,
                     "in [0, 1) or null")


@dataclass
class MethodSpec(_Section):
    section: ClassVar[str] = "method"
    #: tunable-module name (``pcsa``, ...)
    name: str = "pcsa"
    #: fields of the method's config (``PointGSTConfig`` for ``pcsa``), checked when the method is built
    options: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        _require(self.name.strip() != "", "method.name", self.name, "a non-empty method name")


@dataclass
class DataSpec(_Section):
    section: ClassVar[str] = "data"
    dataset: str = "modelnet40"
    #: ScanObjectNN variant; ``None`` for the other datasets
    variant: str | None = None
    #: file format: ``npz`` / ``normal_resampled`` / ``dat`` (ModelNet), ``h5`` (ScanObjectNN), ``None`` (folder)
    format: str | None = "normal_resampled"
    #: data folder; a relative path is relative to the current directory
    root: str = "data/ModelNet/modelnet40_normal_resampled"
    num_classes: int = 40
    #: points fed to the model
    npoints: int = 1024
    #: points kept by the official pre-model FPS (capped at the cloud size), of which ``npoints`` are drawn
    point_all: int = 1200
    #: training augmentation, always explicit (never inferred from paths: official quirk Q9)
    augmentation: str = "scale_translate"
    #: fraction of the training split held out for model selection; 0 only with ``train.selection: test``
    val_fraction: float = 0.1
    #: optional caps for quick runs (stratified by class, seeded); ``None`` = all samples
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    #: npz packs only: ``stored`` (as in the file) or ``official`` (y and z swapped into the PointNet++ orientation)
    axis_order: str = "stored"
    #: ``format: dat`` reads pickles, which can run code: an explicit opt-in, for trusted files only
    allow_pickle: bool = False

    def _check(self) -> None:
        _choice("data.dataset", self.dataset, tuple(DATASET_CLASSES))
        _choice("data.axis_order", self.axis_order, ("stored", "official"))
        if self.dataset == "scanobjectnn":
            _choice("data.variant", self.variant, SCANOBJECTNN_VARIANTS)
        else:
            _require(self.variant is None, "data.variant", self.variant, f"null for dataset {self.dataset!r}")
        _choice(f"data.format (dataset {self.dataset!r})", self.format, DATASET_FORMATS[self.dataset])
        _require(self.root.strip() != "", "data.root", self.root, "a non-empty folder path")
        expected = DATASET_CLASSES[self.dataset]
        if expected is None:
            _require(self.num_classes >= 1, "data.num_classes", self.num_classes, "a positive integer")
        else:
            _require(self.num_classes == expected, "data.num_classes", self.num_classes,
                     f"{expected} for dataset {self.dataset!r}")
        _require(self.npoints >= 1, "data.npoints", self.npoints, "a positive integer")
        _require(self.point_all >= self.npoints, "data.point_all", self.point_all,
                 f">= data.npoints ({self.npoints})")
        _choice("data.augmentation", self.augmentation, AUGMENTATIONS)
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in [0, 1)")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None:
                _require(value >= 1, f"data.{name}", value, "a positive integer or null")


@dataclass
class TrainSpec(_Section):
    section: ClassVar[str] = "train"
    epochs: int = 300
    warmup_epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    lr_min: float = 1e-6
    warmup_lr_init: float = 1e-6
    weight_decay: float = 0.05
    #: L2 norm clip over all trainable parameters; ``None`` = no clipping
    grad_clip: float | None = 10.0
    #: ``cosine``: per-step warmup + cosine; ``official``: timm epoch-level schedule with the official quirks
    schedule: str = "cosine"
    #: ``val``: best epoch on the held-out validation split; ``test``: best on the test split (official)
    selection: str = "val"
    seed: int = 0
    num_workers: int = 0
    label_smoothing: float = 0.0

    def _check(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "a positive integer")
        _require(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs", self.warmup_epochs,
                 f">= 0 and < train.epochs ({self.epochs})")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "a positive integer")
        _require(self.lr > 0.0, "train.lr", self.lr, "> 0")
        _require(0.0 <= self.lr_min <= self.lr, "train.lr_min", self.lr_min, f">= 0 and <= train.lr ({self.lr})")
        _require(0.0 <= self.warmup_lr_init <= self.lr, "train.warmup_lr_init", self.warmup_lr_init,
                 f">= 0 and <= train.lr ({self.lr})")
        _require(self.weight_decay >= 0.0, "train.weight_decay", self.weight_decay, ">= 0")
        if self.grad_clip is not None:
            _require(self.grad_clip > 0.0, "train.grad_clip", self.grad_clip, "> 0 or null (no clipping)")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.selection", self.selection, SELECTIONS)
        _require(self.seed >= 0, "train.seed", self.seed, ">= 0")
        _require(self.num_workers >= 0, "train.num_workers", self.num_workers, ">= 0")
        _require(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing, "in [0, 1)")


@dataclass
class EvalSpec(_Section):
    section: ClassVar[str] = "eval"
    #: 0 = single pass; N = average the logits of N augmented passes
    vote: int = 0
    #: repeated voting runs, reported as mean +- std
    vote_repeats: int = 1

    def _check(self) -> None:
        _require(self.vote >= 0, "eval.vote", self.vote, ">= 0 (0 = no voting)")
        _require(self.vote_repeats >= 1, "eval.vote_repeats", self.vote_repeats, "a positive integer")


_SECTIONS: dict[str, type[_Section]] = {"backbone": BackboneSpec, "method": MethodSpec, "data": DataSpec,
                                        "train": TrainSpec, "eval": EvalSpec}
_TOP_KEYS = ("name", "description", *_SECTIONS)


@dataclass
class Recipe:
    """A complete training and evaluation setting; see the module docstring and ``recipes/*.yaml``."""

    name: str = "custom"
    description: str = ""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        self.name = _typed("name", self.name, str)
        self.description = _typed("description", self.description, str)
        for key, cls in _SECTIONS.items():
            if not isinstance(getattr(self, key), cls):
                raise RecipeError(f"Recipe.{key} must be a {cls.__name__}, got {type(getattr(self, key)).__name__}")
        if self.data.val_fraction == 0.0 and self.train.selection != "test":
            raise RecipeError("data.val_fraction is 0 (no validation split), so train.selection must be 'test', "
                              f"got {self.train.selection!r}; hold out a validation split (e.g. "
                              "data.val_fraction=0.1) or select on the test split (train.selection=test)")
        for name in ("num_group", "group_size"):
            value = getattr(self.backbone, name)
            _require(value <= self.data.npoints, f"backbone.{name}", value, f"<= data.npoints ({self.data.npoints})")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable) that :meth:`from_dict` turns back into an equal recipe."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({key: asdict(getattr(self, key)) for key in _SECTIONS})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "custom") -> Recipe:
        """Build and validate a recipe. Missing keys take their defaults; the dict's ``name`` key, if any,
        wins over ``name``. Raises :class:`RecipeError` on unknown keys, wrong types and invalid values."""
        if not isinstance(d, Mapping):
            raise RecipeError(f"a recipe must be a mapping with the sections {', '.join(_SECTIONS)}, "
                              f"got {_kind(d)}")
        _check_keys("", list(d), _TOP_KEYS)
        sections = {}
        for key, section_cls in _SECTIONS.items():
            raw = d.get(key)
            raw = {} if raw is None else raw
            if not isinstance(raw, Mapping):
                raise RecipeError(f"section {key!r} must be a mapping of its fields, got {raw!r} ({_kind(raw)})")
            _check_keys(key, list(raw), _field_names(section_cls))
            sections[key] = section_cls(**raw)
        return cls(name=d.get("name", name), description=d.get("description", ""), **sections)


# --------------------------------------------------------------------------------------------------------------
# built-in recipes, files and overrides


def _recipe_files() -> dict[str, Any]:
    folder = resources.files("pointgst.recipes")
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the built-in recipes, sorted (``modelnet40.point_mae``, ``scanobjectnn-obj_bg.act``, ...)."""
    return sorted(_recipe_files())


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or os.sep in name_or_path


def _read_recipe(name_or_path: str) -> tuple[str, str, str]:
    """``(name, source, text)`` of a built-in recipe name or a YAML file path."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        return path.stem, str(path), path.read_text(encoding="utf-8")
    files = _recipe_files()
    if name_or_path not in files:
        close = difflib.get_close_matches(name_or_path, list(files), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"built-in recipes: {', '.join(sorted(files))}"
        raise RecipeError(f"unknown recipe {name_or_path!r}; {hint} (or pass the path of a .yaml file)")
    return name_or_path, f"recipe {name_or_path!r}", files[name_or_path].read_text(encoding="utf-8")


def _apply_override(d: dict[str, Any], override: str) -> None:
    """Set one ``a.b[.c...]=value`` override in the recipe dict ``d`` (the value is parsed as YAML)."""
    if not isinstance(override, str):
        raise RecipeError(f"an override must be a 'key=value' string, got {override!r} ({_kind(override)})")
    key, sep, text = override.partition("=")
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise RecipeError(f"malformed override {override!r}: expected KEY=VALUE with a dotted key, e.g. "
                          "train.epochs=5 or method.options.rank=16")
    try:
        _set_override(d, parts, _parse_yaml(text, "value"), text.strip())
    except RecipeError as err:
        raise RecipeError(f"override {override!r}: {err}") from None


def _set_override(d: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    _check_keys("", parts[:1], _TOP_KEYS)
    if parts[0] in ("name", "description"):
        if len(parts) > 1:
            raise RecipeError(f"{parts[0]!r} has no fields")
        d[parts[0]] = text if type(value) in (bool, int, float) else value
        return
    section_cls = _SECTIONS[parts[0]]
    valid = _field_names(section_cls)
    if len(parts) == 1:
        raise RecipeError(f"name a field of section {parts[0]!r}: {parts[0]}.<field> with <field> one of "
                          f"{', '.join(valid)}")
    _check_keys(parts[0], parts[1:2], valid)
    hint = _hints(section_cls)[parts[1]]
    allowed = _allowed_types(hint)
    if len(parts) > 2:  # into a free mapping (method.options.rank=16)
        if dict not in allowed:
            raise RecipeError(f"{parts[0]}.{parts[1]} is not a mapping, so it has no key {parts[2]!r}")
        target = d.setdefault(parts[0], {}).setdefault(parts[1], {})
        for depth, part in enumerate(parts[2:-1], start=3):
            if target.get(part) is None:
                target[part] = {}
            if not isinstance(target[part], dict):
                raise RecipeError(f"{'.'.join(parts[:depth])} is {target[part]!r}, not a mapping")
            target = target[part]
        target[parts[-1]] = value
        return
    if type(value) in (bool, int, float) and str in allowed and type(value) not in allowed:
        value = text  # a text field given digits or yes/no keeps the text (data.root=2024)
    d.setdefault(parts[0], {})[parts[1]] = _typed(f"{parts[0]}.{parts[1]}", value, hint)


def load_recipe(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """The built-in recipe ``name_or_path`` (see :func:`list_recipes`) or the recipe in a YAML file (a name
    ending in ``.yaml``/``.yml`` or containing a path separator), with ``overrides`` applied in order.

    An override is ``"section.field=value"`` (``"train.epochs=5"``, ``"data.root=/x"``), or
    ``"method.options.<key>=value"`` for the method's options; the value is parsed as YAML
    (``backbone.pretrained=false``, ``data.max_train_samples=null``, ``train.lr=1e-4``).
    Raises :class:`RecipeError` for an unknown recipe (with close matches) or any invalid key or value.
    """
    if isinstance(overrides, str):
        raise RecipeError(f"overrides must be a sequence of 'key=value' strings, got the string {overrides!r}; "
                          "wrap it in a list")
    name, source, text = _read_recipe(os.fspath(name_or_path))
    d = _parse_yaml(text, source)
    if d is None:
        raise RecipeError(f"{source} is empty")
    try:
        recipe = Recipe.from_dict(d, name=name)
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None
    if not overrides:
        return recipe
    d = recipe.to_dict()
    for override in overrides:
        _apply_override(d, override)
    try:
        return Recipe.from_dict(d)
    except RecipeError as err:
        raise RecipeError(f"{source} with overrides {list(overrides)}: {err}") from None
