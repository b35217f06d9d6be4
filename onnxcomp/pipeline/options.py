"""Typed pass options: coercion from text, valid ranges and descriptions, from the dataclass alone.

An option field's annotation decides how text is parsed: bool, int, float, str, Literal[...]
choices, Optional[...] and tuple[str, ...] (written `[a;b]` or `a;b` in pipeline text). Its
metadata may carry "help" (one line for `onnxcomp passes` and the CLI flags), "range" (a Range,
checked whenever the options are built, so a bad value stops the run before any work) and
"metavar" (the value's name in a CLI flag's help).

The vocabulary several passes share is declared here once: the runtimes (`Target`), what
`max_drop` means and its range, and what `exclude` / `exclude_op` match (`Exclusion`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

# `Optional[float]` and `float | None` are the same option type.
_UNIONS = (Union, types.UnionType)

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import node_key

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

# The runtimes an output can be tuned for (insert-qdq's placement, onnxcomp check's rules).
Target = Literal["ort", "tensorrt"]
TARGETS: tuple[str, ...] = get_args(Target)


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: `lo` and `hi` (None: unbounded), inclusive unless open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'greater than' if self.lo_open else 'at least'} {self.lo:g}"
        if self.hi is not None:
            return f"{'less than' if self.hi_open else 'at most'} {self.hi:g}"
        return "any number"


# max_drop, the same for every lossy pass: measured on the sample data (--calib) by
# onnxcomp.measure; 0 asks for no measurable loss, 1 would allow anything.
MAX_DROP_RANGE = Range(0, 1, hi_open=True)
MAX_DROP_HELP = ("largest allowed drop on the sample data, a fraction: accuracy points with labels "
                 "(0.01 = one point), else 1 - cosine of the outputs; the pass backs off (prunes less, "
                 "keeps the most sensitive tensors or layers unchanged) until it fits, else exit 4")
EXCLUDE_HELP = ("node-name patterns left alone: fnmatch globs (conv*, /layer3/*; a plain name is a glob too) "
                "matched against node names and the names of their initializers")
EXCLUDE_OP_HELP = "op types left alone (Conv, MatMul ...)"


# target, the same in every pass that has one (the shared --target flag sets them all).
TARGET_HELP = "runtime the output is for: its formats and kernels (default: the run's target, else ort)"


def target_option():
    return field(default=None, metadata={"help": TARGET_HELP})


def max_drop_option():
    return field(default=None, metadata={"help": MAX_DROP_HELP, "range": MAX_DROP_RANGE, "metavar": "FRACTION"})


def exclude_option():
    return field(default=(), metadata={"help": EXCLUDE_HELP, "metavar": "PATTERN"})


def exclude_op_option():
    return field(default=(), metadata={"help": EXCLUDE_OP_HELP, "metavar": "OP_TYPE"})


def _glob_match(pattern: str, name: str) -> bool:
    return bool(name) and (name == pattern or fnmatch.fnmatchcase(name, pattern))


@dataclass(frozen=True)
class Exclusion:
    """What `exclude` and `exclude_op` mean in every pass that has them: `patterns` are fnmatch
    globs on node names (a node also answers to the names of its initializers), `ops` op types."""

    patterns: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patterns or self.ops)

    def reason(self, names: Iterable[str], ops: Iterable[str]) -> str | None:
        """Why something with these names and op types is left alone, or None when it is not."""
        hit_op = next((op for op in ops if op in self.ops), None)
        if hit_op is not None:
            return f"excluded by op type {hit_op!r}"
        names = list(names)
        hit = next((p for p in self.patterns if any(_glob_match(p, n) for n in names)), None)
        return None if hit is None else f"excluded by {hit!r}"

    def check(self, owner: str, graph) -> None:
        """One InputError line for patterns that match no node or initializer name of `graph`
        (an onnx-graphsurgeon graph) and op types no node has: a typo must not pass unnoticed."""
        if not self:
            return
        import onnx_graphsurgeon as gs

        names = {node_key(n) for n in graph.nodes}
        names |= {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
        missing = [p for p in self.patterns if not any(_glob_match(p, n) for n in names)]
        if missing:
            raise InputError(f"{owner}: exclude names not in the model: {', '.join(missing)}")
        ops = {n.op for n in graph.nodes}
        missing = [op for op in self.ops if op not in ops]
        if missing:
            raise InputError(f"{owner}: exclude_op types not in the model: {', '.join(missing)}")


NO_EXCLUSION = Exclusion()


def option_fields(options_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(options_cls, include_extras=False)
    return [(f, hints[f.name]) for f in dataclasses.fields(options_cls)]


def unwrap_optional(hint: Any) -> Any:
    """X for Optional[X]; any other annotation unchanged."""
    if get_origin(hint) is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def choices_of(hint: Any) -> tuple:
    """The Literal choices of an annotation (through Optional), else ()."""
    hint = unwrap_optional(hint)
    return get_args(hint) if get_origin(hint) is Literal else ()


def type_text(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(hint))
    if origin in _UNIONS:
        args = [a for a in get_args(hint) if a is not type(None)]
        return type_text(args[0]) if len(args) == 1 else "|".join(type_text(a) for a in args)
    if origin in (tuple, list):
        return f"[{type_text(get_args(hint)[0])};...]"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn text (or a Python value) into the annotated type, or raise a one-line InputError."""
    origin = get_origin(hint)
    if origin in _UNIONS:
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


def check_range(f: dataclasses.Field, value: Any, owner: str) -> None:
    """A one-line InputError naming owner.option, the allowed range and the value, when outside it."""
    valid = f.metadata.get("range")
    if valid is not None and value is not None and value not in valid:
        raise InputError(f"{owner}.{f.name} must be {valid}, got {value}")


def check_ranges(options, owner: str) -> None:
    """Every ranged field of an options instance (for __post_init__: the Python API path)."""
    for f in dataclasses.fields(options):
        check_range(f, getattr(options, f.name), owner)


def build_options(options_cls: type, values: dict[str, Any], owner: str):
    """Create an options instance from loose values; unknown names list the valid ones, and a
    value outside its range is one line naming owner.option (before any pass runs)."""
    fields = {f.name: (f, hint) for f, hint in option_fields(options_cls)}
    kwargs = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(fields) or "none"
            raise InputError(f"{owner}: unknown option {key!r}; options: {known}")
        f, hint = fields[name]
        kwargs[name] = coerce(raw, hint, f"{owner}.{name}")
        check_range(f, kwargs[name], owner)
    return _construct(lambda: options_cls(**kwargs), owner)


def with_option(options, name: str, value: Any, owner: str):
    """A copy of `options` with one field set from a loose value, checked like build_options."""
    f, hint = next((f, hint) for f, hint in option_fields(type(options)) if f.name == name)
    coerced = coerce(value, hint, f"{owner}.{name}")
    check_range(f, coerced, owner)
    return _construct(lambda: dataclasses.replace(options, **{name: coerced}), owner)


def _construct(make, owner: str):
    try:
        return make()
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"{owner}: {exc}") from None


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def describe(options_cls: type) -> list[dict[str, Any]]:
    rows = []
    for f, hint in option_fields(options_cls):
        valid = f.metadata.get("range")
        rows.append({"name": f.name, "type": type_text(hint), "default": format_value(default_of(f)),
                     "choices": [str(c) for c in choices_of(hint)], "range": str(valid) if valid else "",
                     "help": f.metadata.get("help", "")})
    return rows


def format_options(options) -> str:
    """Render options back to pipeline text (only values that differ from the default)."""
    parts = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value != default_of(f):
            parts.append(f"{f.name}={format_value(value)}")
    return "{" + ",".join(parts) + "}" if parts else ""


def format_value(value: Any) -> str:
    """A value as pipeline text writes it: true/false, [a;b]."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ";".join(format_value(v) for v in value) + "]"
    return str(value)
