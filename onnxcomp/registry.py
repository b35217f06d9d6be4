"""The pass registry: passes register themselves by name when onnxcomp.passes is imported."""

from __future__ import annotations

from onnxcomp.errors import InputError

_PASSES: dict[str, type] = {}


def register_pass(cls):
    """Class decorator: make a Pass subclass available under its `name`."""
    name = cls.name
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"pass name {name!r} registered twice")
    _PASSES[name] = cls
    return cls


def _ensure_loaded() -> None:
    import onnxcomp.passes  # noqa: F401  (imports every pass module)


def all_passes() -> dict[str, type]:
    _ensure_loaded()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type:
    passes = all_passes()
    if name not in passes:
        raise InputError(f"unknown pass {name!r}; available: {', '.join(passes)}")
    return passes[name]
