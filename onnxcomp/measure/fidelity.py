"""Output fidelity of a changed model against a reference, for lossy passes and budgets.

One definition of "drop" for every lossy pass: with labels in the data, the loss in
top-1 accuracy (0.01 = one point); without labels, 1 - mean cosine similarity of the
outputs (per sample, averaged over samples and outputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from onnxcomp.measure.data import LABELS, model_inputs_only


@dataclass
class Fidelity:
    cosine: float
    max_abs: float
    top1: float | None
    accuracy: float | None
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


def outputs_of(model, data: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    from onnxcomp.measure.runtime import run_batched, session

    return run_batched(session(model), model_inputs_only(data), batch_size)


def per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), np.where(np.linalg.norm(a - b, axis=1) == 0, 1.0, 0.0))


def fidelity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
             labels: np.ndarray | None = None) -> Fidelity:
    cosines, max_abs, top1 = [], 0.0, None
    for name, ref in reference.items():
        got = candidate[name]
        cosines.append(float(per_sample_cosine(ref, got).mean()))
        max_abs = max(max_abs, float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0)
    first = next(iter(reference))
    ref, got = reference[first], candidate[first]
    acc = ref_acc = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
        if labels is not None:
            acc = float(np.mean(got.argmax(1) == labels))
            ref_acc = float(np.mean(ref.argmax(1) == labels))
    return Fidelity(float(np.mean(cosines)), max_abs, top1, acc, ref_acc)


def measure(reference_model, candidate_model, data: dict[str, np.ndarray], reference_outputs=None) -> Fidelity:
    """Fidelity of candidate against reference on data (labels used when present)."""
    ref = reference_outputs if reference_outputs is not None else outputs_of(reference_model, data)
    return fidelity(ref, outputs_of(candidate_model, data), data.get(LABELS))
