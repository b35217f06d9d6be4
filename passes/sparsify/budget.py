"""max_drop for sparsify-initializers: leave the most sensitive tensors dense until within budget.

Sensitivity of a tensor = output fidelity loss (1 - cosine) when only that tensor is sparsified,
measured on sample data under ONNX Runtime. The smallest number of dense tensors (most sensitive
first) that meets the budget is found by bisection, then the dense ones are retried one by one,
least sensitive first, in case they fit after all (the search is onnxcomp.pipeline.budget's).
Every accepted configuration was measured; none is assumed. A candidate here is the set of
tensors left dense; it is built by swapping values into the one graph, never by copying it.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxcomp.errors import ToleranceError
from onnxcomp.pipeline.budget import BudgetSearch, HoldBack

MAX_RETRIES = 16


def with_sparse(graph, constants: dict, dense: dict, sparse: dict, names: list[str]) -> Callable[[frozenset], object]:
    """build(left_dense) -> the model with the tensors of `names` not left dense sparsified; the graph is restored."""
    from onnxcomp.graph.convert import to_model

    def build(left_dense: frozenset):
        swapped = [name for name in names if name not in left_dense]
        try:
            for name in swapped:
                constants[name].values = sparse[name]
            return to_model(graph)
        finally:
            for name in swapped:
                constants[name].values = dense[name]

    return build


def choose_dense_tensors(build: Callable[[frozenset], object], measure, names: list[str], max_drop: float) -> HoldBack:
    """Which of `names` to leave dense so that the measured drop is <= max_drop (`held_back`)."""
    search = BudgetSearch("sparsify-initializers", build, measure, max_drop)
    result = search.hold_back(names, search="bisect", retries=MAX_RETRIES)
    if not result.met:
        raise ToleranceError(
            f"sparsify-initializers: no tensor can be sparsified within max_drop {max_drop}: all "
            f"{len(names)} sparse drop {result.full.drop:.4f}; even the least sensitive ({result.order[-1]}) "
            "alone exceeds it")
    return result


def sensitivity(result: HoldBack) -> dict[str, float]:
    """For the report: 1 - cosine of each tensor sparsified alone (empty when all fit at once)."""
    return {name: 1.0 - fid.cosine for name, fid in result.alone.items()}
