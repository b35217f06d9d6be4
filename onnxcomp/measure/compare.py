"""Output comparison metrics, in the spirit of Polygraphy's comparator."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class OutputDiff:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None  # agreement of argmax over axis 1 for 2-D class outputs
    within: bool

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def diff_output(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    if ref.shape != got.shape:
        return OutputDiff(name, tuple(ref.shape), float("inf"), float("inf"), 0.0, None, False)
    a = ref.astype(np.float64).ravel()
    b = got.astype(np.float64).ravel()
    if a.size == 0:
        return OutputDiff(name, tuple(ref.shape), 0.0, 0.0, 1.0, None, True)
    err = np.abs(a - b)
    finite = np.isfinite(a) & np.isfinite(b)
    same_nonfinite = (~np.isfinite(a)) & (a == b)
    err = np.where(same_nonfinite, 0.0, np.where(finite, err, np.inf))
    max_abs = float(err.max())
    max_rel = float((err / np.maximum(np.abs(a), 1e-12)).max())
    na, nb = np.linalg.norm(a[finite]), np.linalg.norm(b[finite])
    if na == 0 and nb == 0:
        cosine = 1.0
    elif na == 0 or nb == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(a[finite], b[finite]) / (na * nb))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    within = bool(np.all(err <= atol + rtol * np.abs(np.where(finite, a, 0.0))))
    return OutputDiff(name, tuple(ref.shape), max_abs, max_rel, cosine, top1, within)


def diff_outputs(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], atol: float, rtol: float) -> list[OutputDiff]:
    return [diff_output(name, ref[name], got[name], atol, rtol) for name in ref if name in got]


def format_diffs(diffs: list[OutputDiff]) -> str:
    from onnxcomp.report import table

    rows = [[d.name, "x".join(map(str, d.shape)), f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.cosine:.6f}",
             "-" if d.top1 is None else f"{d.top1:.4f}", "yes" if d.within else "NO"] for d in diffs]
    return table(["output", "shape", "max abs", "max rel", "cosine", "top-1 agree", "within tol"], rows)
