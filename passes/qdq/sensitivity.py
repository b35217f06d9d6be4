"""max_drop for insert-qdq: rank quantized layers by sensitivity and keep the worst in float until the budget holds.

Sensitivity of a layer = the drop (accuracy loss with labels, else 1 - mean cosine against the
float model; ties by 1 - cosine) when that layer alone is quantized. Layers are then returned to
float most-sensitive first, one more each time and the whole model re-measured, until its drop
is within budget (the search itself is onnxcomp.pipeline.budget's). A model whose only way to meet
the budget is "nothing quantized" is refused with the figures (ToleranceError): the user asked
for INT8, and a float copy is not that.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxcomp.errors import ToleranceError
from onnxcomp.pipeline.budget import BudgetSearch, HoldBack, drop_measure


def choose_float_layers(float_model, build: Callable[[frozenset], object], layers: list[str], data,
                        max_drop: float) -> HoldBack:
    """build(float_nodes) -> quantized ModelProto with those nodes left float; `held_back` = float layers.
    `data`: Samples (each call at the model's own batch size) or a stacked dict."""
    search = BudgetSearch("insert-qdq", build, drop_measure(float_model, data), max_drop)
    result = search.hold_back(layers, rank=lambda fid: (fid.drop, 1.0 - fid.cosine), search="first-fit")
    if not result.met:
        least = result.order[-1]
        raise ToleranceError(
            f"insert-qdq: --max-drop {max_drop} cannot be met with any layer in INT8: all layers quantized drop "
            f"{result.full.drop:.4f}; even the least sensitive layer alone ({least}) drops "
            f"{result.alone[least].drop:.4f}")
    return result


def sensitivity_table(result: HoldBack) -> list[dict]:
    """For the report: each layer's error (1 - cosine) and drop when it alone is quantized, most sensitive first."""
    return [{"node": layer, "error": 1.0 - result.alone[layer].cosine, "drop": result.alone[layer].drop}
            for layer in result.order]
