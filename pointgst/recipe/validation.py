"""How recipe values are checked and how a check's failure reads: one :class:`RecipeError` line naming the key.

pydantic does the checking (types, ranges, choices); this module holds the shared pydantic config, the decorator that
turns a plain class into a validated pydantic dataclass, the helpers for hand-written rules, and the translation of
pydantic's ``ValidationError`` into a :class:`RecipeError` (``train.epochs must be int, got 'five' (str)``).
"""

import dataclasses
import difflib
import functools
import math
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

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


