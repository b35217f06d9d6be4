"""Accuracy-aware backing off: leave the most sensitive tensors dense until within max_drop.

Sensitivity of a tensor = output fidelity loss (1 - cosine) when only that tensor is
sparsified, measured on sample data under ONNX Runtime. The smallest number of dense
tensors (most sensitive first) that meets the budget is found by bisection, then the
dense ones are retried one by one, least sensitive first, in case they fit after all.
Every accepted configuration was measured; none is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.errors import ToleranceError
from onnxcomp.measure.fidelity import Fidelity, fidelity, outputs_of


@dataclass
class Trials:
    """Measures the graph with a chosen subset of tensors replaced by their sparse values."""

    graph: object
    constants: dict  # name -> gs.Constant
    dense: dict  # name -> original values
    sparse: dict  # name -> masked values
    data: dict
    labels: np.ndarray | None = None
    reference: dict = field(default_factory=dict)
    count: int = 0

    def __post_init__(self) -> None:
        from onnxcomp.graph.convert import to_model

        self.reference = outputs_of(to_model(self.graph), self.data)

    def measure(self, names) -> Fidelity:
        from onnxcomp.graph.convert import to_model

        self.count += 1
        try:
            for name in names:
                self.constants[name].values = self.sparse[name]
            model = to_model(self.graph)
        finally:
            for name in names:
                self.constants[name].values = self.dense[name]
        return fidelity(self.reference, outputs_of(model, self.data), self.labels)


@dataclass
class BudgetResult:
    sparse: list[str]
    dense: list[str]
    fidelity: Fidelity
    sensitivity: dict[str, float]
    trials: int


def fit_budget(trials: Trials, names: list[str], max_drop: float, say=lambda _m: None,
               max_retries: int = 16) -> BudgetResult:
    """Choose which of `names` to sparsify so that the measured drop is <= max_drop."""
    full = trials.measure(names)
    say(f"all {len(names)} tensors sparse: drop {full.drop:.4f} (budget {max_drop})")
    if full.drop <= max_drop:
        return BudgetResult(list(names), [], full, {}, trials.count)
    sensitivity = {}
    for name in names:
        sensitivity[name] = 1.0 - trials.measure([name]).cosine
    order = sorted(names, key=lambda n: -sensitivity[n])
    say("sensitivity (1 - cosine): " + ", ".join(f"{n} {sensitivity[n]:.2e}" for n in order[:5])
        + (" ..." if len(order) > 5 else ""))
    lo, hi, best = 1, len(order), None
    while lo < hi:
        mid = (lo + hi) // 2
        fid = trials.measure(order[mid:])
        if fid.drop <= max_drop:
            hi, best = mid, fid
        else:
            lo = mid + 1
    if best is None:
        least = order[-1]
        raise ToleranceError(
            f"sparsify-initializers: no tensor can be sparsified within max_drop {max_drop}: all "
            f"{len(order)} sparse drop {full.drop:.4f}; even the least sensitive ({least}) alone exceeds it")
    sparse, dense = list(order[hi:]), list(order[:hi])
    for name in sorted(dense, key=lambda n: sensitivity[n])[:max_retries]:
        fid = trials.measure(sparse + [name])
        if fid.drop <= max_drop:
            sparse.append(name)
            dense.remove(name)
            best = fid
    say(f"left {len(dense)} tensor(s) dense: drop {best.drop:.4f} within {max_drop}")
    return BudgetResult(sparse, dense, best, sensitivity, trials.count)
