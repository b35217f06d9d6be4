"""Activation ranges in the files other tools read: a TensorRT calibration cache and ORT's calibration table.

A deployment pipeline hands calibrated ranges to trtexec (`--calib=cache.txt`) or to ONNX Runtime's
TensorRT execution provider, and can bring ranges made elsewhere into `insert-qdq{calib_cache=...}`.

- TensorRT cache (text): a header line `TRT-<version>-<calibrator>`, then one `tensor: <hex>` line per
  tensor, the hex being the big-endian bits of the float32 scale, scale = amax / 127. Symmetric only:
  read back, a tensor's range is [-127 scale, 127 scale].
- ORT calibration table (`calibration.json`, what onnxruntime.quantization's write_calibration_table
  writes): {tensor: {"lowest": min, "highest": max, "CLS": "TensorData"}}. Also read: its TensorsData
  form ({"CLS": "TensorsData", "data": {...}}) and plain {tensor: [min, max]}.

The ranges written are per tensor, as calibration chose them, so a file re-imported gives the same
Q/DQ parameters as the calibration that made it (for the TensorRT cache: when the ranges were
symmetric, as they are for target tensorrt).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from onnxcomp.errors import InputError

TRT_HEADER = "TRT-8600-EntropyCalibration2"  # what TensorRT 8.6's IInt8EntropyCalibrator2 writes
TRT_QMAX = 127


def trt_scale_hex(amax: float) -> str:
    """The cache's text of one tensor: the big-endian float32 bits of amax / 127."""
    return struct.pack(">f", amax / TRT_QMAX).hex()


def write_trt_cache(ranges: Mapping[str, tuple[float, float]], path: str, header: str = TRT_HEADER) -> str:
    """Write {tensor: (lo, hi)} as a TensorRT calibration cache (amax = max |lo|, |hi|); returns the path."""
    lines = [header] + [f"{name}: {trt_scale_hex(max(abs(float(lo)), abs(float(hi))))}"
                        for name, (lo, hi) in sorted(ranges.items())]
    return _write_text(path, "\n".join(lines) + "\n")


def write_ort_table(ranges: Mapping[str, tuple[float, float]], path: str) -> str:
    """Write {tensor: (lo, hi)} as ORT's calibration.json; returns the path."""
    table = {name: {"lowest": float(lo), "highest": float(hi), "CLS": "TensorData"}
             for name, (lo, hi) in sorted(ranges.items())}
    return _write_text(path, json.dumps(table, indent=1) + "\n")


def read_cache(path: str) -> dict[str, tuple[float, float]]:
    """{tensor: (lo, hi)} from a TensorRT cache or an ORT calibration table (told apart by content);
    one InputError line when it is neither or a value is not a finite number."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the calibration cache: {exc}") from None
    ranges = _read_ort(text, path) if text.lstrip().startswith("{") else _read_trt(text, path)
    bad = next((name for name, (lo, hi) in ranges.items() if not (math.isfinite(lo) and math.isfinite(hi))), None)
    if bad is not None:
        raise InputError(f"{path}: the range of {bad!r} is not finite: {ranges[bad]}")
    if not ranges:
        raise InputError(f"{path}: the calibration cache holds no tensor")
    return ranges


def _read_trt(text: str, path: str) -> dict[str, tuple[float, float]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise InputError(f"{path}: neither a TensorRT calibration cache (first line TRT-<version>-<calibrator>) "
                         "nor an ORT calibration table (JSON)")
    ranges = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        try:
            if not sep or not name.strip():
                raise ValueError
            (scale,) = struct.unpack(">f", bytes.fromhex(value.strip().rjust(8, "0")))
        except (ValueError, struct.error):
            raise InputError(f"{path}:{number}: expected 'tensor: <8 hex digits>', got {line[:80]!r}") from None
        amax = float(scale) * TRT_QMAX
        ranges[name.strip()] = (-amax, amax)
    return ranges


def _read_ort(text: str, path: str) -> dict[str, tuple[float, float]]:
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(table, dict) and table.get("CLS") == "TensorsData":
        table = table.get("data", {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: an ORT calibration table is a JSON object of tensor -> range")
    ranges = {}
    for name, value in table.items():
        if isinstance(value, dict) and "lowest" in value and "highest" in value:
            lo, hi = value["lowest"], value["highest"]
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            lo, hi = value
        else:
            raise InputError(f"{path}: {name!r}: expected {{\"lowest\": min, \"highest\": max}} or [min, max], "
                             f"got {json.dumps(value)[:80]}")
        try:
            ranges[name] = (float(_number(lo)), float(_number(hi)))
        except (TypeError, ValueError):
            raise InputError(f"{path}: {name!r}: the range is not numbers: {json.dumps(value)[:80]}") from None
    return ranges


def _number(value):
    """ORT's encoder writes a numpy value as {"data": ..., "CLS": "numpy.array"}."""
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _write_text(path: str, text: str) -> str:
    """Atomically: a temporary file beside `path`, then renamed."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)
    return str(target)


def cached_ranges(path: str, tensors: list[str]) -> dict:
    """insert-qdq's ranges (name -> TensorRange) of `tensors` from a cache file: tensors the file lacks
    are left float by the placement, names the model lacks are ignored (TensorRT caches hold its own
    layer names too); a file naming none of `tensors` is one InputError line."""
    from onnxcomp.passes.qdq.calibration.ranges import TensorRange

    ranges = read_cache(path)
    found = {t: TensorRange(t, ranges[t][0], ranges[t][1], "cache", math.nan, math.nan,
                            symmetric=ranges[t][0] == -ranges[t][1], min=ranges[t][0], max=ranges[t][1])
             for t in tensors if t in ranges}
    if tensors and not found:
        raise InputError(f"{path}: the calibration cache names none of the {len(tensors)} tensors insert-qdq "
                         f"quantizes (e.g. {tensors[0]!r}); was it made for this model and --passes?")
    return found
