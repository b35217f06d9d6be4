"""Sample data files: `.npz`, one array per model input (first axis = samples), optional `labels`.

Loaded with pickling disabled; keys, dtypes, shapes and finiteness are checked against
the model's inputs so a mismatch is one clear line, not a crash deep in a pass.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnx

from onnxcomp.errors import InputError
from onnxcomp.graph.signature import input_specs

LABELS = "labels"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty data file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and magic != b"PK\x05\x06":  # zip local header / empty zip
        kind = "a single .npy array" if magic.startswith(b"\x93NUM") else "not a zip archive"
        raise InputError(f"{path}: not an .npz file ({kind}); save one array per model input with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path}: holds pickled objects, which are refused; save plain numeric arrays") from None
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None


def load_data(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Load and validate sample data for `model`."""
    data = load_npz(path)
    validate(data, model, str(path))
    return data


def validate(data: dict[str, np.ndarray], model: onnx.ModelProto, where: str = "data") -> None:
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InputError(f"{where}: missing array(s) for model input(s) {', '.join(missing)}; "
                         f"found keys {', '.join(sorted(data)) or 'none'}")
    count = None
    for spec in specs:
        array = data[spec.name]
        if array.dtype.kind not in "biuf":
            raise InputError(f"{where}: {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
        if array.dtype.kind != spec.dtype.kind and not (array.dtype.kind in "iu" and spec.dtype.kind in "iu"):
            raise InputError(f"{where}: {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise InputError(f"{where}: {spec.name!r} has {array.ndim} dims {array.shape}, model expects "
                             f"{len(spec.shape)} dims {tuple(spec.shape)}")
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(want, int) and want > 0 and axis > 0 and got != want:
                raise InputError(f"{where}: {spec.name!r} has shape {array.shape}, model expects {tuple(spec.shape)}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InputError(f"{where}: {spec.name!r} contains NaN or Inf")
        if array.shape[0] == 0:
            raise InputError(f"{where}: {spec.name!r} has no samples")
        if count is not None and array.shape[0] != count:
            raise InputError(f"{where}: inputs have different sample counts ({count} vs {array.shape[0]})")
        count = array.shape[0]
    if LABELS in data and (np.ndim(data[LABELS]) == 0 or data[LABELS].dtype.kind not in "biuf"):
        raise InputError(f"{where}: 'labels' must be a 1-D array of class indices, got shape "
                         f"{np.shape(data[LABELS])} dtype {data[LABELS].dtype}")
    if LABELS in data and len(data[LABELS]) != count:
        raise InputError(f"{where}: 'labels' has {len(data[LABELS])} entries for {count} samples")


def sample_count(data: dict[str, np.ndarray]) -> int:
    return len(next(v for k, v in data.items() if k != LABELS))


def take(data: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in data.items()}


def model_inputs_only(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in data.items() if k != LABELS}
