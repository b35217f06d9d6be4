"""Typed pass options: coercion from text and descriptions, from the dataclass alone.

An option field may carry `metadata={"help": "..."}`; its annotation decides how text is
parsed: bool, int, float, str, Literal[...] choices, Optional[...] and tuple[str, ...]
(written `[a;b]` or `a;b` in pipeline text).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Union, get_args, get_origin

from onnxcomp.errors import InputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def option_fields(options_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(options_cls, include_extras=False)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_cls)]


def type_text(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(hint))
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        return type_text(args[0]) if len(args) == 1 else "|".join(type_text(a) for a in args)
    if origin in (tuple, list):
        return f"[{type_text(get_args(hint)[0])};...]"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn text (or a Python value) into the annotated type, or raise a one-line InputError."""
    origin = get_origin(hint)
    if origin is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        errors = []
        for arg in args:
            try:
                return coerce(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0])
    if origin is Literal:
        choices = get_args(hint)
        text = value if not isinstance(value, str) else value.strip()
        for choice in choices:
            if text == choice or str(choice) == str(text):
                return choice
        raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (tuple, list):
        (inner, *_rest) = get_args(hint)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()] if text else []
        else:
            items = list(value)
        return tuple(coerce(item, inner, where) for item in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InputError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise InputError(f"{where}: expected a number, got {value!r}")
        try:
            number = hint(value) if hint is float or not isinstance(value, str) else int(value.strip())
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected {'an integer' if hint is int else 'a number'}, got {value!r}") from None
        if hint is float and number != number:
            raise InputError(f"{where}: NaN is not a valid value")
        return number
    if hint is str:
        return str(value)
    return value


def build_options(options_cls: type, values: dict[str, Any], owner: str):
    """Create an options instance from loose values; unknown names list the valid ones."""
    fields = {f.name: hint for f, hint in option_fields(options_cls)}
    kwargs = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise InputError(f"{owner}: unknown option {key!r}; options: {known}")
        kwargs[name] = coerce(raw, fields[name], f"{owner}.{name}")
    try:
        options = options_cls(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"{owner}: {exc}") from None
    return options


def describe(options_cls: type) -> list[dict[str, str]]:
    rows = []
    for f, hint in option_fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append({"name": f.name, "type": type_text(hint), "default": _fmt(default),
                     "help": f.metadata.get("help", "")})
    return rows


def format_options(options) -> str:
    """Render options back to pipeline text (only values that differ from the default)."""
    parts = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if value != default:
            parts.append(f"{f.name}={_fmt(value)}")
    return "{" + ",".join(parts) + "}" if parts else ""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ";".join(_fmt(v) for v in value) + "]"
    return str(value)
