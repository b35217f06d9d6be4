"""The pass registry: passes register themselves by name when onnxcomp.passes is imported."""

from __future__ import annotations

import importlib

from onnxcomp.errors import InputError

_PASSES: dict[str, type] = {}


def register_pass(cls):
    """Class decorator: make a Pass subclass available under its `name`."""
    name = cls.name
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"pass name {name!r} registered twice")
    _PASSES[name] = cls
    return cls


def load_passes() -> None:
    """Import onnxcomp.passes, whose modules register their passes and rules. By name, not by an
    import statement: the core knows the package exists, never what is in it."""
    importlib.import_module("onnxcomp.passes")


def all_passes() -> dict[str, type]:
    load_passes()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type:
    passes = all_passes()
    if name not in passes:
        raise InputError(f"unknown pass {name!r}; available: {', '.join(passes)}")
    return passes[name]
