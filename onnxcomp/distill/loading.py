"""Turning what the user names into models: an ONNX file, a ModelProto, a torch module, or a factory.

A factory is `path/to/file.py:function` or `package.module:function`; it is called without
arguments and must return a torch.nn.Module. Every way this can fail is one InputError.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import onnx

from onnxcomp.errors import InputError, first_line


def is_onnx_spec(spec) -> bool:
    return isinstance(spec, onnx.ModelProto) or (isinstance(spec, (str, os.PathLike))
                                                  and str(spec).lower().endswith(".onnx"))


def load_onnx(spec) -> onnx.ModelProto:
    if isinstance(spec, onnx.ModelProto):
        return spec
    from onnxcomp.graph.load import load_model

    return load_model(spec)


def _first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (import errors need both)."""
    line = first_line(exc, fallback="")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def load_factory(spec: str, role: str):
    """Import `file.py:fn` or `module:fn` and return the callable."""
    target, colon, attr = str(spec).rpartition(":")
    if not colon or not target or not attr or not attr.isidentifier():
        raise InputError(f"{role} {spec!r}: expected an .onnx file or a factory as FILE.py:FUNCTION or MODULE:FUNCTION")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise InputError(f"{role} factory {spec!r}: no such file {target}")
        name = f"_onnxcomp_factory_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise InputError(f"{role} factory {spec!r}: importing {target} failed ({_first_line(exc)})") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise InputError(f"{role} factory {spec!r}: cannot import {target} ({_first_line(exc)})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise InputError(f"{role} factory {spec!r}: {target} has no attribute {attr!r}")
    if not callable(fn):
        raise InputError(f"{role} factory {spec!r}: {attr} is not callable")
    return fn


def load_torch_module(spec, role: str, weights=None):
    """A torch.nn.Module from a module, a factory callable, or a factory spec; optional state_dict file."""
    import torch

    if isinstance(spec, torch.nn.Module):
        module = spec
    else:
        fn = spec if callable(spec) else load_factory(spec, role)
        try:
            module = fn()
        except Exception as exc:
            raise InputError(f"{role} factory {spec!r} raised {_first_line(exc)}") from None
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"{role} factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"{role} weights {weights}: no such file")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            module.load_state_dict(state)
        except Exception as exc:
            raise InputError(f"{role} weights {weights}: cannot load into the module ({_first_line(exc)})") from None
    return module.float()
