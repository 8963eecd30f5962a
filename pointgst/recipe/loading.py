"""Reading recipes: YAML files, the built-in recipes (package ``pointgst.recipes``), ``--set`` overrides,
:func:`load_recipe` and :func:`list_recipes`.

YAML is read with the safe loader, plus YAML 1.2 floats: ``5e-4`` is the float 0.0005 (PyYAML's YAML 1.1
rules would read the string ``"5e-4"``). A file that is not UTF-8 text or not valid YAML is a one-line
:class:`RecipeError` naming the file and the place of the problem.
"""

import difflib
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pointgst.recipe.schema import _OPTIONAL_SECTIONS, _SECTIONS, _TOP_KEYS, Recipe
from pointgst.recipe.validation import (
    RecipeError,
    _allowed_types,
    _check_keys,
    _field_names,
    _fields,
    _kind,
    validate_field,
)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``5e-4``) as floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message in one line: what went wrong and where."""
    if isinstance(err, yaml.MarkedYAMLError):
        what = "; ".join(part for part in (err.context, err.problem) if part) or "syntax error"
        mark = err.problem_mark or err.context_mark
        return what + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    if isinstance(err, yaml.reader.ReaderError):
        return f"unacceptable character #x{err.character:04x}: {err.reason} (position {err.position})"
    return " ".join(str(err).split())


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise RecipeError(f"{source}: not valid YAML: nested too deeply") from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{source}: not valid YAML: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start})") from None


# --------------------------------------------------------------------------------------------------------------
# built-in recipes and files


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
        if not path.exists():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} is not a file")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise RecipeError(f"recipe file {str(path)!r} cannot be read: {err.strerror or err}") from None
        return path.stem, str(path), _decode(data, str(path))
    files = _recipe_files()
    if name_or_path not in files:
        close = difflib.get_close_matches(name_or_path, list(files), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"built-in recipes: {', '.join(sorted(files))}"
        raise RecipeError(f"unknown recipe {name_or_path!r}; {hint} (or pass the path of a .yaml file)")
    source = f"recipe {name_or_path!r}"
    return name_or_path, source, _decode(files[name_or_path].read_bytes(), source)


# --------------------------------------------------------------------------------------------------------------
# overrides


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
    section_cls = {**_SECTIONS, **_OPTIONAL_SECTIONS}[parts[0]]
    valid = _field_names(section_cls)
    if len(parts) == 1:
        raise RecipeError(f"name a field of section {parts[0]!r}: {parts[0]}.<field> with <field> one of "
                          f"{', '.join(valid)}")
    _check_keys(parts[0], parts[1:2], valid)
    allowed = _allowed_types(_fields(section_cls)[parts[1]].annotation)
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
    # type and range now (the error names this override); rules between fields once all overrides are in
    d.setdefault(parts[0], {})[parts[1]] = validate_field(section_cls, parts[1], value)


def load_recipe(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
    """The built-in recipe ``name_or_path`` (see :func:`list_recipes`) or the recipe in a YAML file (a name
    ending in ``.yaml``/``.yml`` or containing a path separator), with ``overrides`` applied in order.

    An override is ``"section.field=value"`` (``"train.epochs=5"``, ``"data.root=/x"``), or
    ``"method.options.<key>=value"`` for the method's options; the value is parsed as YAML
    (``backbone.pretrained=false``, ``data.max_train_samples=null``, ``train.lr=1e-4``).
    Raises :class:`RecipeError` for an unknown recipe (with close matches), an unreadable, non-UTF-8 or invalid
    YAML file, or any invalid key or value.
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
