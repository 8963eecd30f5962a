"""The recipe schema: the five sections and :class:`Recipe`, validated by pydantic v2.

Each section is a pydantic dataclass (``pydantic.dataclasses.dataclass`` with ``extra="forbid"``,
``validate_assignment=True``, ``strict=True``, ``allow_inf_nan=False``): types, ranges (field constraints) and
choices (``Literal``) are checked by pydantic, the rules that tie fields together by model validators. The
sections stay real dataclasses, so ``dataclasses.asdict`` / ``fields`` / ``replace`` keep working (the training
engine builds its datasets from ``asdict(recipe.data)``).

Type rules: an int is accepted, and converted, where a float is expected; a bool is not an int; a text field takes
only text; null only where the field allows it; a mapping needs string keys; every float must be finite.

Every check runs when a section or recipe is built, and assigning a field validates it
(``recipe.data.max_train_samples = 80``; a rejected value leaves the field unchanged). Rules between sections
(``data.val_fraction`` / ``train.selection``, ``backbone.num_group`` <= ``data.npoints``) are checked when the
:class:`Recipe` is built or a whole section is assigned to it. Pydantic's ``ValidationError`` never reaches the
caller: it becomes a one-line :class:`RecipeError` naming the key (``train.epochs must be int, got 'five' (str)``).
"""

import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

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

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RecipeError(ValueError):
    """A recipe (file, dict or override) has an unknown key, a value of the wrong type or an invalid value."""


class _Rule(str):
    """``Annotated`` metadata: the wording of a field's range rule in error messages, where the one derived from
    its constraints says too little (pydantic ignores it)."""


class _Broken(ValueError):
    """Raised by a validator: ``field`` (None: ``tail`` is the whole message) followed by ``tail``."""

    def __init__(self, field: str | None, tail: str):
        super().__init__(tail)
        self.field, self.tail = field, tail

    def message(self, prefix: str) -> str:
        return self.tail if self.field is None else f"{prefix}{self.field}{self.tail}"


# --------------------------------------------------------------------------------------------------------------
# messages


def _kind(value: Any) -> str:
    """The YAML name of a value's type."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "mapping", list: "list"}.get(
        type(value), type(value).__name__)


def _close_match(word: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown_key(section: str, key: Any, valid: Sequence[str]) -> RecipeError:
    where = "at the top level" if section == "" else f"in section {section!r}"
    return RecipeError(f"unknown key {key!r} {where}{_close_match(str(key), valid)} (valid keys: {', '.join(valid)})")


def _check_keys(section: str, keys: Sequence[Any], valid: Sequence[str]) -> None:
    for key in keys:
        if key not in valid:
            raise _unknown_key(section, key, valid)


def _choice_tail(value: Any, choices: Sequence[Any]) -> str:
    hint = _close_match(value, [c for c in choices if c is not None]) if isinstance(value, str) else ""
    options = ", ".join("null" if c is None else repr(c) for c in choices)
    return f" must be one of {options}, got {value!r}{hint}"


def _require(ok: bool, field: str, value: Any, rule: str) -> None:
    if not ok:
        raise _Broken(field, f" must be {rule}, got {value!r}")


def _choice(field: str, value: Any, choices: Sequence[Any], note: str = "") -> None:
    if value not in choices:
        raise _Broken(field, note + _choice_tail(value, choices))


# --------------------------------------------------------------------------------------------------------------
# field introspection


def _members(annotation: Any) -> tuple:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """The Python types a field accepts (``Literal`` choices count as their type, ``dict[str, Any]`` as dict)."""
    out = []
    for member in _members(annotation):
        if member is None or member is type(None):
            out.append(type(None))
        elif get_origin(member) is Literal:
            out.extend(type(choice) for choice in get_args(member))
        else:
            out.append(get_origin(member) or member)
    return tuple(dict.fromkeys(out))


def _type_names(annotation: Any) -> str:
    names = [("null" if t is type(None) else "a mapping" if t is dict else t.__name__)
             for t in _allowed_types(annotation)]
    return " or ".join(names)


def _choices(annotation: Any) -> tuple:
    out: list = []
    for member in _members(annotation):
        out.extend(get_args(member) if get_origin(member) is Literal else [None] if member is type(None) else [])
    return tuple(out)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else repr(x)


def _rule(info: FieldInfo) -> str:
    """The range rule of a field in words (``a positive integer``, ``in [0, 1) or null``)."""
    for item in info.metadata:
        if isinstance(item, _Rule):
            return str(item)
    bounds = {}
    for item in info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                bounds[name] = getattr(item, name)
    allowed = _allowed_types(info.annotation)
    lower = ("ge", bounds["ge"]) if "ge" in bounds else ("gt", bounds["gt"]) if "gt" in bounds else None
    upper = ("le", bounds["le"]) if "le" in bounds else ("lt", bounds["lt"]) if "lt" in bounds else None
    if int in allowed and lower == ("ge", 1) and upper is None:
        text = "a positive integer"
    elif lower and upper:
        text = (f"in {'[' if lower[0] == 'ge' else '('}{_num(lower[1])}, "
                f"{_num(upper[1])}{']' if upper[0] == 'le' else ')'}")
    else:
        symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        text = " and ".join(f"{symbols[op]} {_num(bound)}" for op, bound in filter(None, (lower, upper)))
    return text + (" or null" if type(None) in allowed else "")


def _fields(cls: type) -> dict[str, FieldInfo]:
    return cls.__pydantic_fields__


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------------------------------------------
# pydantic errors -> RecipeError

_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_UNKNOWN_KEY_ERRORS = ("unexpected_keyword_argument", "extra_forbidden", "no_such_attribute")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _non_finite_text(value: Any, allowed: tuple) -> bool:
    """``value`` is text spelling a non-finite number (``nan``, ``inf``) for a float field."""
    if float not in allowed or not isinstance(value, str):
        return False
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def _field_problem(key: str, info: FieldInfo, error: Mapping[str, Any]) -> str:
    """One line for one pydantic error about the field ``key``."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    allowed = _allowed_types(info.annotation)
    if kind == "value_error":
        return f"{key}: {_one_line(error.get('ctx', {}).get('error', error['msg']))}"
    if len(loc) >= 2 and loc[-1] == "[key]":
        return f"{key} must be a mapping with string keys, got key {loc[-2]!r} ({_kind(loc[-2])})"
    if kind in _RANGE_ERRORS:
        return f"{key} must be {_rule(info)}, got {value!r}"
    if kind == "finite_number" or _non_finite_text(value, allowed):
        return f"{key} must be a finite number, got {value!r}"
    if kind == "literal_error":
        return key + _choice_tail(value, _choices(info.annotation))
    if kind.endswith("_type") or kind == "none_required":
        return f"{key} must be {_type_names(info.annotation)}, got {value!r} ({_kind(value)})"
    return f"{key}: {_one_line(error['msg'])}, got {value!r} ({_kind(value)})"


def _recipe_error(err: ValidationError, cls: type) -> RecipeError:
    """The first error of ``err`` (raised by ``cls``) as a one-line :class:`RecipeError` naming the key."""
    error = err.errors(include_url=False)[0]
    section, loc = cls.section, error["loc"]
    prefix = f"{section}." if section else ""
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Broken):
        return RecipeError(cause.message(prefix))
    if error["type"] in _UNKNOWN_KEY_ERRORS and loc:
        return _unknown_key(section, loc[0], _field_names(cls))
    if not loc or loc[0] not in _fields(cls):
        return RecipeError(f"{cls.__name__}: {_one_line(error['msg'])}")
    return RecipeError(_field_problem(f"{prefix}{loc[0]}", _fields(cls)[loc[0]], error))


def _validated(cls: type) -> type:
    """``cls`` as a pydantic dataclass whose construction and assignment raise :class:`RecipeError`."""
    cls = dataclass(config=_CONFIG)(cls)
    init, setattr_ = cls.__init__, cls.__setattr__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            raise _recipe_error(err, cls) from None

    @functools.wraps(setattr_)
    def __setattr__(self, name: str, value: Any) -> None:
        missing = object()
        before = self.__dict__.get(name, missing)
        try:
            setattr_(self, name, value)
        except ValidationError as err:
            # a model validator runs after the value is stored: a rejected value must not stay
            if before is not missing:
                self.__dict__[name] = before
            raise _recipe_error(err, cls) from None

    cls.__init__, cls.__setattr__ = __init__, __setattr__
    return cls


@functools.cache
def _adapter(cls: type, name: str) -> TypeAdapter:
    info = _fields(cls)[name]
    hint = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(hint, config=_CONFIG)


def validate_field(cls: type, name: str, value: Any) -> Any:
    """``value`` checked (type and range, not the rules between fields) for the field ``name`` of the section
    ``cls``, converted as the section would store it; else :class:`RecipeError` naming the key."""
    try:
        return _adapter(cls, name).validate_python(value)
    except ValidationError as err:
        error = err.errors(include_url=False)[0]
        key = f"{cls.section}.{name}" if cls.section else name
        raise RecipeError(_field_problem(key, _fields(cls)[name], error)) from None


# --------------------------------------------------------------------------------------------------------------
# the sections


def _non_empty(field: str, value: str, rule: str) -> str:
    _require(value.strip() != "", field, value, rule)
    return value


@_validated
class BackboneSpec:
    section: ClassVar[str] = "backbone"
    name: str = Field("point_mae.pretrain", description=(
        "architecture (`point_mae`) or pretrained tag (`point_mae.pretrain`, `pointgpt_l.post_pretrain`, ...)"))
    pretrained: bool | str = Field(True, description=(
        "true: the tag's weights; false: random init; a string: a local path or a hub repo id"))
    num_group: int = Field(64, ge=1, description="point patches (FPS centres) per cloud; <= data.npoints")
    group_size: int = Field(32, ge=1, description="points per patch (kNN); <= data.npoints")
    drop_path_rate: float | None = Field(0.1, ge=0.0, lt=1.0, description=(
        "stochastic depth of the (frozen) blocks; Point-MAE family 0.1, null for PointGPT (unused there)"))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _non_empty("name", value, "a non-empty architecture or tag name")

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, value: bool | str) -> bool | str:
        if isinstance(value, str):
            _non_empty("pretrained", value, "true, false, or a non-empty path or hub repo id")
        return value


@_validated
class MethodSpec:
    section: ClassVar[str] = "method"
    name: str = Field("pcsa", description=f"tunable-module name (`pcsa`, ...; `{PRETRAIN_METHOD}`: pretraining)")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "fields of the method's config (`PointGSTConfig` for `pcsa`), checked when the method is built"))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _non_empty("name", value, "a non-empty method name")


@_validated
class DataSpec:
    section: ClassVar[str] = "data"
    dataset: Literal[tuple(DATASET_CLASSES)] = Field("modelnet40", description="dataset family")
    variant: str | None = Field(None, description=(
        f"ScanObjectNN variant ({', '.join(SCANOBJECTNN_VARIANTS)}); null for the other datasets"))
    format: str | None = Field("normal_resampled", description=(
        "file format: `npz` / `normal_resampled` / `dat` (ModelNet), `h5` (ScanObjectNN), null (folder)"))
    root: str = Field("data/ModelNet/modelnet40_normal_resampled", description=(
        "data folder; a relative path is relative to the current directory"))
    num_classes: int = Field(40, ge=1, description="classes; fixed by the dataset except for `folder`")
    npoints: int = Field(1024, ge=1, description="points fed to the model")
    point_all: int = Field(1200, ge=1, description=(
        "points kept by the official pre-model FPS (capped at the cloud size), of which `npoints` are drawn"))
    augmentation: Literal[AUGMENTATIONS] = Field("scale_translate", description=(
        "training augmentation, always explicit (never inferred from paths: official quirk Q9)"))
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "fraction of the training split held out for model selection; 0 only with `train.selection: test`"))
    max_train_samples: int | None = Field(None, ge=1, description=(
        "cap on the training samples for quick runs (stratified by class, seeded); null = all samples"))
    max_test_samples: int | None = Field(None, ge=1, description=(
        "cap on the test samples for quick runs (stratified by class, seeded); null = all samples"))
    axis_order: Literal["stored", "official"] = Field("stored", description=(
        "npz packs only: `stored` (as in the file) or `official` (y and z swapped into the PointNet++ orientation)"))
    allow_pickle: bool = Field(False, description=(
        "`format: dat` reads pickles, which can run code: an explicit opt-in, for trusted files only"))
    num_points: int | None = Field(None, ge=1, description=(
        "points read per cloud, for two layouts only: `dataset: folder` resamples every cloud to this many points "
        "(seeded; needed when the clouds differ in size), and the ModelNet `normal_resampled` text tree keeps the "
        "first this many rows of each file; ignored by the other datasets and formats; null = every point"))

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        return _non_empty("root", value, "a non-empty folder path")

    @model_validator(mode="after")
    def _consistent(self) -> "DataSpec":
        if self.dataset == "scanobjectnn":
            _choice("variant", self.variant, SCANOBJECTNN_VARIANTS)
        else:
            _require(self.variant is None, "variant", self.variant, f"null for dataset {self.dataset!r}")
        _choice("format", self.format, DATASET_FORMATS[self.dataset], note=f" (dataset {self.dataset!r})")
        expected = DATASET_CLASSES[self.dataset]
        if expected is not None:
            _require(self.num_classes == expected, "num_classes", self.num_classes,
                     f"{expected} for dataset {self.dataset!r}")
        _require(self.point_all >= self.npoints, "point_all", self.point_all, f">= data.npoints ({self.npoints})")
        return self


@_validated
class TrainSpec:
    section: ClassVar[str] = "train"
    epochs: int = Field(300, ge=1, description="training epochs")
    warmup_epochs: Annotated[int, _Rule(">= 0 and < train.epochs")] = Field(
        10, ge=0, description="linear warmup epochs; < epochs")
    batch_size: int = Field(32, ge=1, description="samples per optimisation step")
    lr: float = Field(5e-4, gt=0.0, description="peak learning rate")
    lr_min: float = Field(1e-6, ge=0.0, description="final learning rate of the cosine decay; <= lr")
    warmup_lr_init: float = Field(1e-6, ge=0.0, description="learning rate at the start of the warmup; <= lr")
    weight_decay: float = Field(0.05, ge=0.0, description="AdamW weight decay")
    grad_clip: Annotated[float | None, _Rule("> 0 or null (no clipping)")] = Field(10.0, gt=0.0, description=(
        "L2 norm clip over all trainable parameters; null = no clipping"))
    schedule: Literal[SCHEDULES] = Field("cosine", description=(
        "`cosine`: per-step warmup + cosine; `official`: timm epoch-level schedule with the official quirks"))
    selection: Literal[SELECTIONS] = Field("val", description=(
        "`val`: best epoch on the held-out validation split; `test`: best on the test split (official)"))
    seed: int = Field(0, ge=0, description="seed of the splits, subsets, point shuffles and initialisation")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy loss")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSpec":
        _require(self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
                 f">= 0 and < train.epochs ({self.epochs})")
        for name in ("lr_min", "warmup_lr_init"):
            value = getattr(self, name)
            _require(value <= self.lr, name, value, f">= 0 and <= train.lr ({self.lr})")
        return self


@_validated
class EvalSpec:
    section: ClassVar[str] = "eval"
    vote: Annotated[int, _Rule(">= 0 (0 = no voting)")] = Field(0, ge=0, description=(
        "0 = single pass; N = average the logits of N augmented passes"))
    vote_repeats: int = Field(1, ge=1, description="repeated voting runs, reported as mean +- std")


_SECTIONS: dict[str, type] = {"backbone": BackboneSpec, "method": MethodSpec, "data": DataSpec,
                              "train": TrainSpec, "eval": EvalSpec}
_TOP_KEYS = ("name", "description", *_SECTIONS)


# --------------------------------------------------------------------------------------------------------------
# the recipe


@_validated
class Recipe:
    """A complete training and evaluation setting; see :mod:`pointgst.recipe` and ``recipes/*.yaml``."""

    section: ClassVar[str] = ""
    name: str = Field("custom", description="recipe name (a built-in recipe: its file stem)")
    description: str = Field("", description="one line saying what the setting is")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="the backbone and its weights")
    method: MethodSpec = Field(default_factory=MethodSpec, description="the tuning method")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset and its pipeline")
    train: TrainSpec = Field(default_factory=TrainSpec, description="the optimisation schedule")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="the evaluation protocol")

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.data.val_fraction == 0.0 and self.train.selection != "test":
            raise _Broken(None, "data.val_fraction is 0 (no validation split), so train.selection must be 'test', "
                                f"got {self.train.selection!r}; hold out a validation split (e.g. "
                                "data.val_fraction=0.1) or select on the test split (train.selection=test)")
        for name in ("num_group", "group_size"):
            value = getattr(self.backbone, name)
            _require(value <= self.data.npoints, f"backbone.{name}", value, f"<= data.npoints ({self.data.npoints})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON-serialisable) that :meth:`from_dict` turns back into an equal recipe."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({key: dataclasses.asdict(getattr(self, key)) for key in _SECTIONS})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str = "custom") -> "Recipe":
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
