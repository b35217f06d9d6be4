"""--max-drop: rank quantized layers by sensitivity and keep the worst in float until the budget holds.

Sensitivity of a layer = output error (1 - mean cosine against the float model) when that layer
alone is quantized. Layers are then returned to float most-sensitive first, re-measuring the whole
model each time, until its drop (onnxcomp.fidelity: accuracy loss with labels, else 1 - cosine)
is within budget. A model whose only way to meet the budget is "nothing quantized" is refused
with the figures (ToleranceError): the user asked for INT8, and a float copy is not that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from onnxcomp.errors import ToleranceError
from onnxcomp.measure.fidelity import Fidelity, fidelity, outputs_of


@dataclass
class BudgetResult:
    float_nodes: list[str]
    fidelity: Fidelity
    full_fidelity: Fidelity
    sensitivity: list[dict] = field(default_factory=list)
    trials: int = 0


def fit_budget(float_model, build: Callable[[frozenset], object], units: list[str], data: dict, max_drop: float,
               say: Callable[[str], None] = lambda m: None) -> BudgetResult:
    """build(float_nodes) -> quantized ModelProto with those nodes left float."""
    from onnxcomp.measure.data import LABELS

    labels = data.get(LABELS)
    reference = outputs_of(float_model, data)

    def measure(float_nodes: frozenset) -> Fidelity:
        return fidelity(reference, outputs_of(build(float_nodes), data), labels)

    full = measure(frozenset())
    say(f"insert-qdq: all {len(units)} layers int8: drop {full.drop:.4f} (budget {max_drop})")
    if full.drop <= max_drop:
        return BudgetResult([], full, full, trials=1)
    everything = frozenset(units)
    scores = []
    for i, unit in enumerate(units):
        fid = measure(everything - {unit})
        scores.append({"node": unit, "error": 1.0 - fid.cosine, "drop": fid.drop})
        say(f"insert-qdq: sensitivity {i + 1}/{len(units)}: {unit}: 1-cos {1.0 - fid.cosine:.2e}")
    scores.sort(key=lambda s: (s["drop"], s["error"]), reverse=True)
    kept: list[str] = []
    trials = 1 + len(units)
    for s in scores[:-1]:
        kept.append(s["node"])
        fid = measure(frozenset(kept))
        trials += 1
        say(f"insert-qdq: {len(kept)} layer(s) float: drop {fid.drop:.4f}")
        if fid.drop <= max_drop:
            return BudgetResult(kept, fid, full, scores, trials)
    least = scores[-1]
    raise ToleranceError(
        f"insert-qdq: --max-drop {max_drop} cannot be met with any layer in INT8: all layers quantized drop "
        f"{full.drop:.4f}; even the least sensitive layer alone ({least['node']}) drops {least['drop']:.4f}")
