"""CalibrationStats: the per-tensor running statistics of one calibration run, mergeable and saveable.

Saved as a plain `.npz` (no pickle): one row per tensor in a few arrays, so statistics collected
on several processes or machines can be written, shipped, loaded and merged exactly. The file is
versioned (`FORMAT`) and written byte for byte the same for the same statistics (fixed zip
timestamps), so a merge of shards can be compared with one run over their union by `cmp`.

Statistics made by `onnxcomp calibrate` also carry where they came from: the fingerprint of the
graph they were collected on (fingerprint.py), the pipeline text that made that graph, and the
signature of the data (input names, dtypes, per-sample shapes). A merge refuses parts that
disagree, and insert-qdq{stats=...} refuses statistics of another graph.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.calibration.fingerprint import graph_fingerprint
from onnxcomp.passes.qdq.calibration.histogram import TensorStats

FORMAT = "onnxcomp-calibration-stats/2"
READABLE = ("onnxcomp-calibration-stats/1", FORMAT)  # /1: no batch size, model or inputs
_INT_FIELDS = ("count", "zeros", "outliers", "nans", "exponent", "offset")
_FLOAT_FIELDS = ("min", "max", "raw_min", "raw_max")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the same bytes for the same statistics, whenever written


class CalibrationStats:
    """Per-tensor statistics (name -> TensorStats) plus how many samples and batches made them.

    batch_size: the samples per batch the data was cut into (0: each model call as given, or
    parts cut differently). model: {"fingerprint", "pipeline", "nodes"} of the graph they were
    collected on, or None. inputs: {name: {"dtype", "shape"}} of the data (per-sample shape, None
    for a dim that varied), or None.
    """

    def __init__(self, tensors: dict[str, TensorStats] | None = None, num_bins: int = 2048,
                 samples: int = 0, batches: int = 0, *, batch_size: int = 0, model: dict | None = None,
                 inputs: dict | None = None):
        self.tensors: dict[str, TensorStats] = dict(tensors or {})
        self.num_bins = int(num_bins)
        self.samples = int(samples)
        self.batches = int(batches)
        self.batch_size = int(batch_size)
        self.model = model
        self.inputs = inputs

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def names(self) -> list[str]:
        return list(self.tensors)

    def with_outliers(self) -> list[str]:
        """Tensors that saw NaN, inf or |x| >= EXTREME values (e.g. attention-mask adds)."""
        return [name for name, t in self.tensors.items() if t.outliers]

    def subset(self, names) -> CalibrationStats:
        """The statistics of `names` only, in that order (every name must be present)."""
        return CalibrationStats({n: self.tensors[n] for n in names}, self.num_bins, self.samples, self.batches,
                                batch_size=self.batch_size, model=self.model, inputs=self.inputs)

    # -- where they came from ------------------------------------------------------------------

    def describe_model(self, model, pipeline: str = "") -> None:
        """Record the graph these statistics were collected on (its fingerprint over their tensors)."""
        self.model = {"fingerprint": graph_fingerprint(model, self.tensors), "pipeline": pipeline,
                      "nodes": len(model.graph.node)}

    def check_model(self, model, where: str = "calibration statistics") -> None:
        """One InputError line unless these statistics were collected on `model`'s graph."""
        if self.model is None:
            raise InputError(f"{where}: the file does not say which model it was collected on (written by "
                             "Python without describe_model, or by an older onnxcomp); run `onnxcomp calibrate`")
        produced = _produced(model)
        missing = [n for n in self.tensors if n not in produced]
        if missing or graph_fingerprint(model, self.tensors) != self.model["fingerprint"]:
            why = (f"tensor {missing[0]!r} is not in this graph" if missing
                   else f"the graph differs ({len(model.graph.node)} nodes here, {self.model['nodes']} there)")
            raise InputError(f"{where}: statistics of another model or pipeline: {why}; they were collected "
                             f"through {self.model['pipeline'] or 'no pipeline'!r}: run `onnxcomp calibrate` on "
                             "this model with the same --passes and flags as optimize")

    # -- combining ----------------------------------------------------------------------------

    def merge(self, other: CalibrationStats, *, other_shapes: bool = False) -> CalibrationStats:
        """A new CalibrationStats equal to collecting both inputs' data in one run (exactly); parts of
        another model or other inputs are refused (merge_problem)."""
        problem = merge_problem(self, other, other_shapes=other_shapes)
        if problem:
            raise InputError(f"cannot merge calibration statistics: {problem}")
        merged = {}
        for name in list(self.tensors) + [n for n in other.tensors if n not in self.tensors]:
            a, b = self.tensors.get(name), other.tensors.get(name)
            merged[name] = a.merge(b) if a is not None and b is not None else (a or b).copy()
        return CalibrationStats(merged, self.num_bins, self.samples + other.samples, self.batches + other.batches,
                                batch_size=self.batch_size if self.batch_size == other.batch_size else 0,
                                model=self.model, inputs=_merged_inputs(self.inputs, other.inputs))

    def __eq__(self, other) -> bool:
        if not isinstance(other, CalibrationStats):
            return NotImplemented
        return (self.num_bins == other.num_bins and self.samples == other.samples
                and self.model == other.model and self.inputs == other.inputs
                and list(self.tensors) == list(other.tensors)
                and all(self.tensors[n] == other.tensors[n] for n in self.tensors))

    def __repr__(self) -> str:
        return (f"CalibrationStats({len(self.tensors)} tensors, {self.samples} samples, "
                f"{self.batches} batches, {self.num_bins} bins)")

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename); returns the path written. A path without a
        suffix gets `.npz`; any other is kept (`onnxcomp calibrate` writes `.calib`)."""
        path = Path(path)
        if not path.suffix:
            path = path.with_name(path.name + ".npz")
        rows = list(self.tensors.values())
        arrays = {
            "format": np.array(FORMAT),
            "names": np.array([t.name for t in rows], dtype=str) if rows else np.zeros(0, "U1"),
            "meta": np.array([self.num_bins, self.samples, self.batches, self.batch_size], np.int64),
            "info": np.array(json.dumps({"model": self.model, "inputs": self.inputs}, sort_keys=True)),
            "counts": (np.stack([t.counts for t in rows]) if rows and self.num_bins
                       else np.zeros((len(rows), self.num_bins), np.int64)),
        }
        for field in _INT_FIELDS:
            arrays[field] = np.array([getattr(t, field) for t in rows], np.int64)
        for field in _FLOAT_FIELDS:
            arrays[field] = np.array([getattr(t, field) for t in rows], np.float64)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _write_npz(tmp, arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStats:
        """Read a file `save` wrote; a missing, foreign, newer or damaged file is one InputError line."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such calibration statistics file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
            raise InputError(f"{path}: not a readable calibration statistics file ({exc})") from None
        if not isinstance(arrays, dict) or "format" not in arrays:
            raise InputError(f"{path}: not an onnxcomp calibration statistics file (expected format {FORMAT})")
        found = str(arrays["format"])
        if found not in READABLE:
            newer = found.startswith("onnxcomp-calibration-stats/")
            raise InputError(f"{path}: " + (f"written in format {found}, newer than this onnxcomp reads ({FORMAT})"
                                            if newer else f"not an onnxcomp calibration statistics file "
                                                          f"(expected format {FORMAT})"))
        try:
            return _from_arrays(cls, arrays, found)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise InputError(f"{path}: corrupt calibration statistics file ({exc})") from None


def _from_arrays(cls, arrays: dict, found: str) -> CalibrationStats:
    meta = [int(v) for v in arrays["meta"]]
    num_bins, samples, batches = meta[:3]
    batch_size = meta[3] if len(meta) > 3 else 0
    info = json.loads(str(arrays["info"])) if "info" in arrays else {}
    names = arrays["names"].tolist()
    rows = len(names)
    if len(set(names)) != rows or num_bins < 0 or (0 < num_bins < 16) or min(samples, batches, batch_size) < 0:
        raise ValueError("inconsistent header")
    counts = arrays["counts"]
    if counts.shape != (rows, num_bins) or any(len(arrays[f]) != rows for f in _INT_FIELDS + _FLOAT_FIELDS):
        raise ValueError("arrays of different lengths")
    tensors = {}
    for i, name in enumerate(names):
        t = TensorStats(name, num_bins)
        for field in _INT_FIELDS:
            setattr(t, field, int(arrays[field][i]))
        for field in _FLOAT_FIELDS:
            setattr(t, field, float(arrays[field][i]))
        if num_bins:
            t.counts = counts[i].astype(np.int64)
            if t.counts.min(initial=0) < 0 or int(t.counts.sum()) != t.count:
                raise ValueError(f"histogram of {name!r} does not hold its {t.count} values")
        if min(t.count, t.zeros, t.outliers, t.nans) < 0 or t.zeros > t.count or (t.count and t.min > t.max):
            raise ValueError(f"counts of {name!r} do not add up")
        tensors[name] = t
    return cls(tensors, num_bins, samples, batches, batch_size=batch_size, model=info.get("model"),
               inputs=info.get("inputs"))


def _write_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed's layout (np.load reads it), with fixed timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            archive.writestr(entry, buffer.getvalue())


def _produced(model) -> set[str]:
    graph = model.graph
    return {v.name for v in graph.input} | {o for n in graph.node for o in n.output}


# -- merging parts from several processes or machines --------------------------------------------

def merge_problem(a: CalibrationStats, b: CalibrationStats, *, other_shapes: bool = False) -> str | None:
    """Why `a` and `b` are not parts of one calibration, or None. other_shapes: accept data whose
    per-sample shapes differ (sequences padded per part), not only dims that varied within a part."""
    if a.num_bins != b.num_bins:
        kinds = [f"{n} bins" if n else "min/max only" for n in (a.num_bins, b.num_bins)]
        return f"histograms of {kinds[0]} and {kinds[1]} (calibrated for different methods)"
    if (a.model is None) != (b.model is None):
        return "one part says which model it was collected on and the other does not"
    if a.model is not None and a.model["fingerprint"] != b.model["fingerprint"]:
        return (f"statistics of another model or pipeline (graphs of {a.model['nodes']} and {b.model['nodes']} "
                f"nodes through {a.model['pipeline']!r} and {b.model['pipeline']!r}, fingerprints differ)")
    return _inputs_problem(a.inputs, b.inputs, other_shapes)


def _inputs_problem(a: dict | None, b: dict | None, other_shapes: bool) -> str | None:
    if a is None or b is None:
        return None
    if list(a) != list(b):
        return f"data for other inputs ({', '.join(a)} vs {', '.join(b)})"
    for name in a:
        x, y = a[name], b[name]
        if x["dtype"] != y["dtype"]:
            return f"input {name!r} is {x['dtype']} in one part and {y['dtype']} in the other"
        if x["shape"] is None or y["shape"] is None:
            continue
        if len(x["shape"]) != len(y["shape"]):
            return f"input {name!r} has {len(x['shape'])} dims per sample in one part, {len(y['shape'])} in the other"
        if not other_shapes and any(p is not None and q is not None and p != q for p, q in zip(x["shape"], y["shape"])):
            return (f"input {name!r} holds samples of shape {_dims(x['shape'])} in one part and {_dims(y['shape'])} "
                    "in the other (other preprocessing? for sequences padded per part, merge with --other-shapes)")
    return None


def _dims(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _merged_inputs(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    out = {}
    for name in a:
        x, y = a[name]["shape"], b[name]["shape"]
        shape = None if x is None or y is None else [p if p == q else None for p, q in zip(x, y)]
        out[name] = {"dtype": a[name]["dtype"], "shape": shape}
    return out


def data_signature(samples) -> dict:
    """{input: {"dtype", "shape"}} of Samples: each input's per-sample shape (the call's shape
    without its batch axis where the input stacks on one), None for a dim that varies; "shape"
    itself None when the rank varies."""
    counts = samples.batch_sizes(None)
    out = {}
    for spec in samples.specs:
        stacks = bool(spec.rank) and spec.static(0) is None
        shapes, dtype = [], None
        for call, n in zip(samples, counts):
            array = np.asarray(call[spec.name])
            dtype = dtype or str(array.dtype)
            per_sample = array.shape[1:] if stacks and array.ndim and len(array) == n else array.shape
            shapes.append(tuple(per_sample))
        if not shapes:
            continue
        rank = {len(s) for s in shapes}
        shape = None if len(rank) > 1 else [s[0] if len(set(s)) == 1 else None for s in zip(*shapes)]
        out[spec.name] = {"dtype": dtype, "shape": shape}
    return out


def read_stats(path: str, model, tensors: list[str], method: str) -> CalibrationStats:
    """The statistics in `path` of `tensors`, after checking they belong to `model` and hold what
    `method` reads; one InputError line otherwise."""
    stats = CalibrationStats.load(path)
    stats.check_model(model, str(path))
    missing = [t for t in tensors if t not in stats]
    if missing:
        raise InputError(f"{path}: no statistics of {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                         if len(missing) > 1 else "") + ": they were calibrated for another placement; give "
                         "`onnxcomp calibrate` the same --target, --exclude and --passes as optimize")
    if method != "minmax" and stats.num_bins == 0:
        raise InputError(f"{path}: holds min/max only (calibrated with --calib-method minmax); method {method} "
                         "needs histograms: calibrate again with that --calib-method")
    return stats.subset(tensors)
