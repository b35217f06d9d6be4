"""How far a candidate model's outputs are from a reference's: the one comparator, cosine and accuracy.

Every such number in onnxcomp comes from here: `onnxcomp compare`, optimize()'s final
validation, the pass manager's numeric verification and the budgets of lossy passes.

- Tolerance (as in Polygraphy's comparator): each element's error in units of its own
  tolerance, |ref - cand| / (atol + rtol * |ref|), summarised by a chosen statistic (max, mean,
  median or a percentile such as p99); an output is within tolerance when that figure is at
  most 1. With "max", the default, that is "every element within atol + rtol * |ref|".
  atol/rtol have a default and may differ per output.
- Cosine: the mean over samples (axis 0) of each sample's cosine similarity; an output of
  rank 0 or 1 is one sample, and one sample gives the cosine of the whole tensor.
- Accuracy: top-1 of a [samples, classes] output against integer labels.
- Drop (what every lossy pass's max_drop bounds): the loss in accuracy when the data has
  labels, else 1 - cosine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.measure.data import LABELS, model_inputs_only
from onnxcomp.measure.runtime import run_both, run_model
from onnxcomp.measure.samples import Samples

DEFAULT_ATOL, DEFAULT_RTOL = 1e-5, 1e-4
STATISTICS = "max, mean, median or pNN (a percentile: p90, p99, p99.9)"
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Tolerances:
    """atol/rtol for every output, with exceptions by output name (`--atol logits=1e-3`)."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    per_output: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def of(self, name: str) -> tuple[float, float]:
        atol, rtol = self.per_output.get(name, (self.atol, self.rtol))
        return float(atol), float(rtol)


@dataclass
class OutputDiff:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    cosine: float
    top1: float | None  # agreement of argmax over axis 1 for [samples, classes] outputs
    within: bool
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    statistic: str = "max"
    error_stat: float = 0.0  # the statistic of |ref - cand|
    tolerance_ratio: float = 0.0  # the statistic of |ref - cand| / (atol + rtol * |ref|); within iff <= 1
    outside_fraction: float = 0.0  # share of elements outside atol + rtol * |ref|

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def check_statistic(statistic: str) -> str:
    """`statistic` if it names one (max, mean, median, pNN with 0 < NN <= 100), else InputError."""
    match = _PERCENTILE.fullmatch(statistic)
    if statistic in ("max", "mean", "median") or (match and 0 < float(match.group(1)) <= 100):
        return statistic
    raise InputError(f"unknown error statistic {statistic!r}; use {STATISTICS}")


def statistic_of(values: np.ndarray, statistic: str) -> float:
    """max, mean, median or pNN of `values` (0 for none). Percentiles take an element, never
    interpolate, so an infinite error cannot turn into NaN."""
    if values.size == 0:
        return 0.0
    if statistic == "max":
        return float(values.max())
    if statistic == "mean":
        return float(values.mean())
    if statistic == "median":
        return float(np.median(values))
    return float(np.percentile(values, float(check_statistic(statistic)[1:]), method="higher"))


def per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (slice along axis 0) of two same-shaped outputs.

    Rank 0 and 1 outputs are one sample. Non-finite elements the same in both (+inf and +inf, NaN
    and NaN) are left out; any other NaN or Inf gives its sample 0. Two all-zero samples agree (1).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return np.ones(1)
    rows = len(a) if a.ndim >= 2 else 1
    a, b = a.reshape(rows, -1), b.reshape(rows, -1)
    finite = np.isfinite(a) & np.isfinite(b)
    broken = (~finite & ~same_nonfinite(a, b)).any(axis=1)
    a, b = np.where(finite, a, 0.0), np.where(finite, b, 0.0)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.where(den > 0, den, 1.0)
    cos = np.where(den > 0, cos, np.where((a == b).all(axis=1), 1.0, 0.0))
    return np.where(broken, 0.0, cos)


def same_nonfinite(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elements where both are the same infinity or both NaN: what the reference computes there is
    reproduced (a fully masked attention row gives NaN in the original and in every faithful rewrite)."""
    return (np.isnan(a) & np.isnan(b)) | (~np.isfinite(a) & (a == b))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The one cosine: mean per-sample cosine (see per_sample_cosine)."""
    return float(per_sample_cosine(a, b).mean())


def has_class_axis(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] > 1


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Share of samples whose argmax over classes is the same; None unless [samples, classes]."""
    if not has_class_axis(reference) or reference.shape != candidate.shape:
        return None
    return float(np.mean(reference.argmax(1) == candidate.argmax(1)))


def top1_accuracy(output: np.ndarray, labels: np.ndarray) -> float | None:
    """The one accuracy: share of samples whose argmax over classes is the label; None unless
    the output is [samples, classes]."""
    if not has_class_axis(output):
        return None
    return float(np.mean(output.argmax(1) == np.asarray(labels)))


def accuracy_pair(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                  labels: np.ndarray | None) -> tuple[float, float] | None:
    """(reference, candidate) top-1 accuracy of the first output, when there are labels and it has classes."""
    if labels is None or not reference:
        return None
    first = next(iter(reference))
    ref_acc = top1_accuracy(reference[first], labels)
    if ref_acc is None or first not in candidate:
        return None
    return ref_acc, top1_accuracy(candidate[first], labels)


def diff_output(name: str, ref: np.ndarray, got: np.ndarray, atol: float = DEFAULT_ATOL,
                rtol: float = DEFAULT_RTOL, statistic: str = "max") -> OutputDiff:
    """Every figure of one output; `within` as the module docstring says."""
    shape = tuple(ref.shape)
    if ref.shape != got.shape:
        inf = float("inf")
        return OutputDiff(name, shape, inf, inf, 0.0, None, False, atol, rtol, statistic, inf, inf, 1.0)
    a = ref.astype(np.float64).ravel()
    b = got.astype(np.float64).ravel()
    if a.size == 0:
        return OutputDiff(name, shape, 0.0, 0.0, 1.0, None, True, atol, rtol, statistic)
    finite = np.isfinite(a) & np.isfinite(b)
    err = np.where(same_nonfinite(a, b), 0.0, np.where(finite, np.abs(a - b), np.inf))
    tol = atol + rtol * np.abs(np.where(finite, a, 0.0))
    inside = err <= tol
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
    # Exact at the boundary, so that "max" says what the elementwise rule says.
    ratio = np.where(inside, np.fmin(ratio, 1.0), np.fmax(ratio, np.nextafter(1.0, 2.0)))
    tolerance_ratio = statistic_of(ratio, statistic)
    return OutputDiff(name, shape, float(err.max()), float((err / np.maximum(np.abs(np.where(finite, a, 0.0)), 1e-12)).max()),
                      cosine(ref, got), top1_agreement(ref, got), tolerance_ratio <= 1.0, atol, rtol,
                      statistic, statistic_of(err, statistic), tolerance_ratio, float(1.0 - inside.mean()))


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    tolerances: Tolerances | None = None, statistic: str = "max") -> list[OutputDiff]:
    """One OutputDiff per reference output the candidate also has, in the reference's order."""
    tolerances = tolerances or Tolerances()
    check_statistic(statistic)
    return [diff_output(name, reference[name], candidate[name], *tolerances.of(name), statistic)
            for name in reference if name in candidate]


@dataclass
class Comparison:
    """Both models' outputs on the same feeds, their diffs, and top-1 accuracies when labelled."""

    reference: dict[str, np.ndarray]
    candidate: dict[str, np.ndarray]
    diffs: list[OutputDiff]
    accuracy: tuple[float, float] | None = None  # (reference, candidate)

    @property
    def outside(self) -> list[OutputDiff]:
        return [d for d in self.diffs if not d.within]


def compare_models(reference_model, candidate_model, feeds: Samples | dict[str, np.ndarray],
                   tolerances: Tolerances | None = None, statistic: str = "max", labels: np.ndarray | None = None,
                   batch_size: int | None = 32, reference_outputs: dict[str, np.ndarray] | None = None) -> Comparison:
    """The one feed-run-diff flow: run both models on `feeds` under ONNX Runtime and compare.

    feeds: Samples (each call at the model's own batch size; their labels are used unless `labels`
    is given) or a dict (cut into calls when in the stacked layout). batch_size None runs each
    call as is (a dict: once, whole: axis 0 not a sample axis); `reference_outputs` are the
    reference's outputs on exactly these feeds, if already known.
    """
    check_statistic(statistic)
    if labels is None and isinstance(feeds, Samples):
        labels = feeds.labels()
    expected, got = run_both(reference_model, candidate_model, feeds, batch_size, reference_outputs)
    return Comparison(expected, got, compare_outputs(expected, got, tolerances, statistic),
                      accuracy_pair(expected, got, labels))


def format_diffs(diffs: list[OutputDiff]) -> str:
    from onnxcomp.report import table

    stats = sorted({d.statistic for d in diffs})
    label = stats[0] if len(stats) == 1 else "stat"
    extra = [] if stats in ([], ["max"]) else [f"{label} abs"]
    rows = [[d.name, "x".join(map(str, d.shape)), f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.cosine:.6f}",
             "-" if d.top1 is None else f"{d.top1:.4f}"] + ([f"{d.error_stat:.3g}"] if extra else [])
            + [f"{d.tolerance_ratio:.3g}", "yes" if d.within else "NO"] for d in diffs]
    return table(["output", "shape", "max abs", "max rel", "cosine", "top-1 agree"] + extra
                 + [f"{label} err/tol", "within tol"], rows)


# Fidelity of a changed model, for lossy passes and their budgets (max_drop).


@dataclass
class Fidelity:
    cosine: float  # mean over outputs of the one cosine
    max_abs: float  # over all outputs
    top1: float | None  # agreement on the first output
    accuracy: float | None  # candidate, against labels
    reference_accuracy: float | None

    @property
    def drop(self) -> float:
        if self.accuracy is not None and self.reference_accuracy is not None:
            return self.reference_accuracy - self.accuracy
        return 1.0 - self.cosine

    def as_dict(self) -> dict:
        d = asdict(self)
        d["drop"] = self.drop
        return d


def outputs_of(model, data: Samples | dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Outputs of `model` on sample data (Samples, or a dict in the stacked layout; labels left out)."""
    return run_model(model, data if isinstance(data, Samples) else model_inputs_only(data), batch_size)


def labels_of(data: Samples | dict[str, np.ndarray]) -> np.ndarray | None:
    """The labels of sample data, or None."""
    return data.labels() if isinstance(data, Samples) else data.get(LABELS)


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
             labels: np.ndarray | None = None) -> Fidelity:
    diffs = compare_outputs(reference, candidate)
    accuracy = accuracy_pair(reference, candidate, labels)
    ref_acc, acc = accuracy if accuracy is not None else (None, None)
    return Fidelity(float(np.mean([d.cosine for d in diffs])) if diffs else 0.0,
                    max((d.max_abs for d in diffs), default=float("inf")), diffs[0].top1 if diffs else None,
                    acc, ref_acc)


def measure(reference_model, candidate_model, data: Samples | dict[str, np.ndarray],
            reference_outputs=None) -> Fidelity:
    """Fidelity of candidate against reference on data (Samples or a stacked dict; labels used when present)."""
    feeds = data if isinstance(data, Samples) else model_inputs_only(data)
    ref, got = run_both(reference_model, candidate_model, feeds, 64, reference_outputs)
    return fidelity(ref, got, labels_of(data))
