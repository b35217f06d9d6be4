"""Sample data in the stacked layout: one array per model input, first axis = samples, optional `labels`.

That is what `.npz` files (and a single `.npy` for one-input models) hold. Loaded with pickling
disabled; `layout` checks the arrays against the model's input specs and says how they map onto
model calls, so a mismatch is one clear line, not a crash deep in a pass:

- an array stacks samples on axis 0 (a fixed axis 0 of N means calls of exactly N samples);
- an array of exactly one call's worth (the input's full static shape, a fixed axis 0 when the
  other inputs hold more samples, a 0-d array for a 0-d input) is a constant fed to every call:
  RNN state, a sample rate;
- a 1-D array for a 0-d input holds one scalar per call.

Inputs this cannot express (state whose batch axis is not 0 next to a dynamic batch, per-call
shapes) come as one feed dict per call instead: see onnxcomp.measure.samples.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.signature import InputSpec, specs_of

LABELS = "labels"
LOADER_HINT = "give a FILE.py:FUNCTION data loader (one feed dict per model call) instead"


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


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """One array from a `.npy` file (pickling disabled)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path}: holds pickled objects, which are refused; save plain numeric arrays") from None
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None


def load_data(path: str | os.PathLike, model) -> dict[str, np.ndarray]:
    """Load and validate stacked sample data for `model`."""
    data = load_npz(path)
    validate(data, model, str(path))
    return data


def validate(data: dict[str, np.ndarray], model, where: str = "data") -> None:
    """InputError unless `data` fits `model` (a ModelProto or its input specs) in the stacked layout."""
    layout(data, specs_of(model), where)


def checked_array(spec: InputSpec, value, where: str) -> np.ndarray:
    """`value` as an array of the input's dtype: same kind only (float data for a float input, any
    integer for an integer one), cast when the width differs; NaN/Inf refused."""
    array = np.asarray(value)
    kind, want = array.dtype.kind, spec.dtype.kind
    if kind not in "biuf" or (kind != want and not (kind in "iu" and want in "iu")):
        raise InputError(f"{where}: {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
    if kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{where}: {spec.name!r} contains NaN or Inf")
    return array if array.dtype == spec.dtype else array.astype(spec.dtype)


def dim_mismatch(spec: InputSpec, shape: tuple, axes=None) -> str | None:
    """`input 'x': dim 0 is 1, data has 16` for the first static dim `shape` breaks, else None."""
    for axis in range(len(shape)) if axes is None else axes:
        want = spec.static(axis)
        if want is not None and shape[axis] != want:
            return f"input {spec.name!r}: dim {axis} is {want}, data has {shape[axis]}"
    return None


@dataclass
class Layout:
    """How stacked arrays map onto model calls (see the module docstring)."""

    arrays: dict[str, np.ndarray]  # every model input's array, checked and cast
    stacked: list[str] = field(default_factory=list)  # axis 0 holds samples
    constant: list[str] = field(default_factory=list)  # fed whole to every call
    per_call: list[str] = field(default_factory=list)  # 0-d inputs, one value per call
    samples: int = 0  # along axis 0 of the stacked arrays
    call_size: int = 1  # samples per call: the inputs' fixed axis 0, else 1
    calls: int = 1
    labels: np.ndarray | None = None


def layout(data: dict, specs: list[InputSpec], where: str = "data") -> Layout:
    """Check `data` against `specs` and say which array is samples, a constant or per-call scalars."""
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InputError(f"{where}: missing array(s) for model input(s) {', '.join(missing)}; "
                         f"found keys {', '.join(sorted(data)) or 'none'}")
    out = Layout({})
    one_call: dict[str, int] = {}  # fixed axis 0 and exactly that many rows: samples or a constant
    counts: dict[str, int] = {}
    for spec in specs:
        array = out.arrays[spec.name] = checked_array(spec, data[spec.name], where)
        if spec.rank == 0:
            if array.ndim > 1 or (array.ndim == 1 and len(array) == 0):
                raise InputError(f"{where}: input {spec.name!r} is a scalar (0-d); data has shape {array.shape}: "
                                 "give one value, or a 1-D array of one value per call")
            (out.per_call if array.ndim == 1 else out.constant).append(spec.name)
            continue
        if array.ndim != spec.rank:
            raise InputError(f"{where}: {spec.name!r} has {array.ndim} dims {array.shape}, model expects "
                             f"{spec.rank} dims {tuple(spec.shape)}")
        problem = dim_mismatch(spec, array.shape, range(1, spec.rank))
        if problem:
            raise InputError(f"{where}: {problem} (shape {array.shape}, model expects {tuple(spec.shape)})")
        if array.shape[0] == 0:
            raise InputError(f"{where}: {spec.name!r} has no samples")
        fixed = spec.static(0)
        if fixed is not None and array.shape[0] < fixed:
            raise InputError(f"{where}: {dim_mismatch(spec, array.shape)} (fewer samples than one call takes)")
        if fixed is not None and array.shape[0] == fixed:
            one_call[spec.name] = fixed
        else:
            counts[spec.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        (a, n) = next(iter(counts.items()))
        (b, m) = next(item for item in counts.items() if item[1] != n)
        raise InputError(f"{where}: inputs have different sample counts ({a} has {n}, {b} has {m}); for inputs "
                         f"whose batch axis is not axis 0 (RNN state), {LOADER_HINT}")
    samples = next(iter(counts.values()), 0)
    if not counts and len(set(one_call.values())) == 1:
        samples = next(iter(one_call.values()))  # nothing but one call's worth: that one call
    for name, rows in one_call.items():
        if rows != samples:
            out.constant.append(name)
    out.stacked = [s.name for s in specs if s.name in counts or (s.name in one_call and one_call[s.name] == samples)]
    fixed_sizes = {s.name: s.static(0) for s in specs if s.name in out.stacked and s.static(0) is not None}
    if len(set(fixed_sizes.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in fixed_sizes.items())
        raise InputError(f"{where}: inputs have different fixed batch sizes ({shown}); {LOADER_HINT}")
    out.samples = samples if out.stacked else 0
    out.call_size = next(iter(fixed_sizes.values()), 1)
    if out.stacked:
        out.calls = out.samples // out.call_size
    elif out.per_call:
        out.calls = len(out.arrays[out.per_call[0]])
    for name in out.per_call:
        if len(out.arrays[name]) != out.calls:
            raise InputError(f"{where}: input {name!r} (0-d) has {len(out.arrays[name])} values for "
                             f"{out.calls} calls; give one value per call, or a single 0-d value for all")
    if LABELS in data:
        labels = np.asarray(data[LABELS])
        if labels.ndim == 0 or labels.dtype.kind not in "biuf":
            raise InputError(f"{where}: 'labels' must be a 1-D array of class indices, got shape "
                             f"{labels.shape} dtype {labels.dtype}")
        expected = out.samples if out.stacked else out.calls
        if len(labels) != expected:
            raise InputError(f"{where}: 'labels' has {len(labels)} entries for {expected} samples")
        out.labels = labels
    return out


def sample_count(data: dict[str, np.ndarray]) -> int:
    return len(next(v for k, v in data.items() if k != LABELS))


def take(data: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in data.items()}


def model_inputs_only(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in data.items() if k != LABELS}
