"""Per-tensor overrides for insert-qdq, from a JSON or TOML file (the idea of ORT's TensorQuantOverrides).

    {"/conv1/Relu_output_0": {"rmin": 0.0, "rmax": 6.0},
     "x": {"dtype": "int8", "symmetric": true},
     "fc.weight": {"axis": null},
     "/head/Add_output_0": {"scale": 0.05, "zero_point": 128}}

Keys: `dtype` (int8 or uint8; activations), `symmetric`, `axis` (weights: the per-channel axis,
null for one scale), `rmin`/`rmax` (a fixed range instead of the calibrated one; for a weight,
the range its symmetric scale covers), `scale` with `zero_point` (fixed parameters; a weight
takes a scale, or one per channel). ORT's form, a list holding one such object, is read too.
An activation shares its scale with the tensors of its range group (a Concat's inputs, tensors
that commute with quantization): its override sets the group's. A name the model does not have,
or a key or value that makes no sense, is one InputError line before any work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.numerics import scale_zero_point

KEYS = ("dtype", "symmetric", "axis", "rmin", "rmax", "scale", "zero_point")
DTYPES = {"int8": np.int8, "uint8": np.uint8, "QInt8": np.int8, "QUInt8": np.uint8}


@dataclass(frozen=True)
class TensorOverride:
    name: str
    dtype: type | None = None
    symmetric: bool | None = None
    axis: int | None | str = "unset"  # "unset": not given; None: per tensor
    rmin: float | None = None
    rmax: float | None = None
    scale: tuple | None = None
    zero_point: int | None = None


def load_overrides(path: str) -> dict[str, TensorOverride]:
    """Read and check the file: {tensor name: TensorOverride}."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"insert-qdq.overrides: {path}: no such file")
    text = file.read_text()
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ImportError:
        raise InputError(f"insert-qdq.overrides: {path}: TOML needs Python 3.11 or newer; write it as JSON") from None
    except ValueError as exc:
        raise InputError(f"insert-qdq.overrides: {path}: not valid {'TOML' if file.suffix == '.toml' else 'JSON'} "
                         f"({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InputError(f"insert-qdq.overrides: {path}: expected an object of tensor name -> override")
    return {name: _parse(name, spec, path) for name, spec in raw.items()}


def _parse(name: str, spec, path: str) -> TensorOverride:
    where = f"insert-qdq.overrides: {path}: {name!r}"
    if isinstance(spec, list):
        if len(spec) != 1:
            raise InputError(f"{where}: give one override per tensor (per-consumer overrides are not supported)")
        spec = spec[0]
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected an object with keys among {', '.join(KEYS)}")
    unknown = [k for k in spec if k not in KEYS and k != "quant_type"]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(KEYS)}")
    dtype = spec.get("dtype", spec.get("quant_type"))
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"{where}: dtype {dtype!r} is not int8 or uint8")
    numbers = {}
    for key in ("rmin", "rmax", "zero_point"):
        if key in spec:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{where}: {key} must be a finite number, got {value!r}")
            numbers[key] = value
    if ("rmin" in spec) != ("rmax" in spec):
        raise InputError(f"{where}: give rmin and rmax together")
    if "rmin" in spec and numbers["rmin"] > numbers["rmax"]:
        raise InputError(f"{where}: rmin {numbers['rmin']} > rmax {numbers['rmax']}")
    scale = spec.get("scale")
    if scale is not None:
        values = scale if isinstance(scale, list) else [scale]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and v > 0 for v in values):
            raise InputError(f"{where}: scale must be a positive number (or a list of them), got {scale!r}")
        if "rmin" in spec:
            raise InputError(f"{where}: give a fixed range (rmin/rmax) or fixed parameters (scale), not both")
        scale = tuple(float(v) for v in values)
    if "zero_point" in spec and (scale is None or int(numbers["zero_point"]) != numbers["zero_point"]):
        raise InputError(f"{where}: zero_point is an integer given with scale")
    axis = spec.get("axis", "unset")
    if axis not in ("unset", None) and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise InputError(f"{where}: axis must be an integer or null, got {axis!r}")
    symmetric = spec.get("symmetric")
    if symmetric is not None and not isinstance(symmetric, bool):
        raise InputError(f"{where}: symmetric must be true or false, got {symmetric!r}")
    return TensorOverride(name, DTYPES[dtype] if dtype else None, symmetric, axis, numbers.get("rmin"),
                          numbers.get("rmax"), scale,
                          int(numbers["zero_point"]) if "zero_point" in numbers else None)


def check_names(overrides: dict[str, TensorOverride], graph) -> None:
    """One line for names that are no tensor of the model (a typo must not pass unnoticed)."""
    known = set(graph.tensors())
    missing = [n for n in overrides if n not in known]
    if missing:
        raise InputError(f"insert-qdq.overrides: tensor(s) not in the model: {', '.join(missing)}")


def activation_params(o: TensorOverride, lo: float, hi: float, fmt) -> tuple[np.float32, np.integer, str]:
    """(scale, zero point, what was overridden) for an activation range group, from its calibrated [lo, hi]."""
    if o.axis not in ("unset", None):
        raise InputError(f"insert-qdq.overrides: {o.name!r}: activations take one scale; axis is for weights")
    dtype = o.dtype or fmt.dtype
    signed = dtype == np.int8
    symmetric = fmt.symmetric if o.symmetric is None else o.symmetric
    info = np.iinfo(dtype)
    if o.scale is not None:
        if len(o.scale) != 1:
            raise InputError(f"insert-qdq.overrides: {o.name!r}: an activation takes one scale, got {len(o.scale)}")
        zp = o.zero_point if o.zero_point is not None else (0 if signed else None)
        if zp is None:
            raise InputError(f"insert-qdq.overrides: {o.name!r}: uint8 with a fixed scale needs its zero_point")
        if not info.min <= zp <= info.max:
            raise InputError(f"insert-qdq.overrides: {o.name!r}: zero_point {zp} outside {np.dtype(dtype)}")
        return np.float32(o.scale[0]), dtype(zp), "scale"
    what = "range" if o.rmin is not None else "format"
    if o.rmin is not None:
        lo, hi = o.rmin, o.rmax
    bits = 8
    if symmetric:
        scale, zp = scale_zero_point(lo, hi, symmetric=True, bits=bits)
        zp = 0 if signed else 128  # uint8 symmetric: zero at the middle code
    else:
        scale, zp = scale_zero_point(lo, hi, symmetric=False, bits=bits)
        if signed:
            zp -= 128  # the same grid on signed codes
    return np.float32(scale), dtype(zp), what


def weight_scale(o: TensorOverride, values: np.ndarray, axis: int | None, qmax: int) -> np.ndarray | None:
    """A weight's fixed scale(s) (float32, one per channel of `axis`), or None to compute them as usual."""
    if o.dtype not in (None, np.int8) or o.symmetric is False or o.zero_point not in (None, 0):
        raise InputError(f"insert-qdq.overrides: {o.name!r}: weights are symmetric int8 (zero point 0)")
    channels = 1 if axis is None else values.shape[axis]
    if o.scale is not None:
        if len(o.scale) not in (1, channels):
            raise InputError(f"insert-qdq.overrides: {o.name!r}: {len(o.scale)} scales for {channels} channels")
        return np.broadcast_to(np.asarray(o.scale, np.float32), (channels,)).copy() if axis is not None \
            else np.asarray(o.scale[0], np.float32)
    if o.rmin is not None:
        amax = max(abs(o.rmin), abs(o.rmax)) or 1.0
        scale = np.float32(amax / qmax)
        return np.full(channels, scale, np.float32) if axis is not None else np.asarray(scale, np.float32)
    return None


def weight_axis(o: TensorOverride, values: np.ndarray, default: int | None) -> int | None:
    if o.axis == "unset":
        return default
    if o.axis is not None and not -values.ndim <= o.axis < values.ndim:
        raise InputError(f"insert-qdq.overrides: {o.name!r}: axis {o.axis} outside a rank-{values.ndim} weight")
    return None if o.axis is None else o.axis % values.ndim


def quantize_with_scale(values: np.ndarray, scale: np.ndarray, axis: int | None, qmax: int):
    """Symmetric INT8 codes of a weight under a fixed scale (per channel of `axis`, or one)."""
    from onnxcomp.passes.qdq.numerics import QuantizedWeight, per_axis, sqnr_db

    w = np.asarray(values, np.float32)
    broadcast = per_axis(np.asarray(scale, np.float32), w, axis) if axis is not None else np.float32(scale)
    q = np.clip(np.rint(w / broadcast), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(q, np.asarray(scale, np.float32), axis, sqnr_db(w, q.astype(np.float32) * broadcast))
