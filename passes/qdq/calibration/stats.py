"""CalibrationStats: the per-tensor running statistics of one calibration run, mergeable and saveable.

Saved as a plain `.npz` (no pickle): one row per tensor in a few arrays, so statistics collected
on several processes or machines can be written, shipped, loaded and merged exactly.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.calibration.histogram import TensorStats

FORMAT = "onnxcomp-calibration-stats/1"
_INT_FIELDS = ("count", "zeros", "outliers", "nans", "exponent", "offset")
_FLOAT_FIELDS = ("min", "max", "raw_min", "raw_max")


class CalibrationStats:
    """Per-tensor statistics (name -> TensorStats) plus how many samples and batches made them."""

    def __init__(self, tensors: dict[str, TensorStats] | None = None, num_bins: int = 2048,
                 samples: int = 0, batches: int = 0):
        self.tensors: dict[str, TensorStats] = dict(tensors or {})
        self.num_bins = int(num_bins)
        self.samples = int(samples)
        self.batches = int(batches)

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

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """A new CalibrationStats equal to collecting both inputs' data in one run (exactly)."""
        if other.num_bins != self.num_bins:
            raise InputError(f"cannot merge calibration statistics with {self.num_bins} and {other.num_bins} bins")
        merged = {}
        for name in list(self.tensors) + [n for n in other.tensors if n not in self.tensors]:
            a, b = self.tensors.get(name), other.tensors.get(name)
            merged[name] = a.merge(b) if a is not None and b is not None else (a or b).copy()
        return CalibrationStats(merged, self.num_bins, self.samples + other.samples, self.batches + other.batches)

    def __eq__(self, other) -> bool:
        if not isinstance(other, CalibrationStats):
            return NotImplemented
        return (self.num_bins == other.num_bins and self.samples == other.samples
                and list(self.tensors) == list(other.tensors)
                and all(self.tensors[n] == other.tensors[n] for n in self.tensors))

    def __repr__(self) -> str:
        return (f"CalibrationStats({len(self.tensors)} tensors, {self.samples} samples, "
                f"{self.batches} batches, {self.num_bins} bins)")

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `.npz` atomically (temp file + rename); returns the path written."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        rows = list(self.tensors.values())
        arrays = {
            "format": np.array(FORMAT),
            "names": np.array([t.name for t in rows], dtype=str) if rows else np.zeros(0, "U1"),
            "meta": np.array([self.num_bins, self.samples, self.batches], np.int64),
            "counts": (np.stack([t.counts for t in rows]) if rows and self.num_bins
                       else np.zeros((len(rows), self.num_bins), np.int64)),
        }
        for field in _INT_FIELDS:
            arrays[field] = np.array([getattr(t, field) for t in rows], np.int64)
        for field in _FLOAT_FIELDS:
            arrays[field] = np.array([getattr(t, field) for t in rows], np.float64)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        try:
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStats:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such calibration statistics file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"{path}: not a readable calibration statistics file ({exc})") from None
        if "format" not in arrays or str(arrays["format"]) != FORMAT:
            raise InputError(f"{path}: not an onnxcomp calibration statistics file (expected format {FORMAT})")
        num_bins, samples, batches = (int(v) for v in arrays["meta"])
        tensors = {}
        for i, name in enumerate(arrays["names"].tolist()):
            t = TensorStats(name, num_bins)
            for field in _INT_FIELDS:
                setattr(t, field, int(arrays[field][i]))
            for field in _FLOAT_FIELDS:
                setattr(t, field, float(arrays[field][i]))
            if num_bins:
                t.counts = arrays["counts"][i].astype(np.int64)
            tensors[name] = t
        return cls(tensors, num_bins, samples, batches)
