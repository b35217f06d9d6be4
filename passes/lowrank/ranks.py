"""Share a parameter budget out as ranks: each step goes where it buys the most error per parameter.

Every layer starts at the smallest rank; then, greedily, the layer whose next rank step (or
keeping it whole, once the next rank would not pay) lowers its error most per parameter added
gets it, while the budget lasts. The errors are each layer's relative output error on its real
inputs (whitened) or its relative weight error (plain SVD): the measured sensitivity.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from onnxcomp.errors import InputError
from onnxcomp.passes.lowrank.layers import Layer

WHOLE = 0  # the rank recorded for a layer kept whole


def options(layer: Layer, round_to: int) -> list[int]:
    """Ranks worth considering, smallest first, then WHOLE."""
    ranks, r = [], round_to
    while layer.pays(r) and r < min(layer.m, layer.n):
        ranks.append(r)
        r += round_to
    return ranks + [WHOLE]


def allocate(layers: list[Layer], error: Callable[[Layer, int], float], budget: int, round_to: int,
             owner: str = "factorize-lowrank") -> dict[str, int]:
    """{layer node: rank (WHOLE = kept whole)} with total cost <= budget parameters."""
    choices = {layer.node: options(layer, round_to) for layer in layers}
    at = dict.fromkeys(choices, 0)
    cost = lambda layer, i: layer.params if choices[layer.node][i] == WHOLE else layer.cost(choices[layer.node][i])
    err = lambda layer, i: 0.0 if choices[layer.node][i] == WHOLE else error(layer, choices[layer.node][i])
    spent = sum(cost(layer, 0) for layer in layers)
    if spent > budget:
        raise InputError(f"{owner}: the budget ({budget} parameters) is below the smallest ranks' "
                         f"{spent}; keep a larger fraction")
    heap = []

    def push(layer):
        i = at[layer.node]
        if i + 1 < len(choices[layer.node]):
            extra = cost(layer, i + 1) - cost(layer, i)
            gain = err(layer, i) - err(layer, i + 1)
            heapq.heappush(heap, (-gain / max(extra, 1), layer.node, layer))

    for layer in layers:
        push(layer)
    while heap:
        _, _, layer = heapq.heappop(heap)
        i = at[layer.node]
        extra = cost(layer, i + 1) - cost(layer, i)
        if spent + extra > budget:
            continue  # this layer's next step no longer fits; others' smaller steps may
        spent += extra
        at[layer.node] = i + 1
        push(layer)
    return {node: choices[node][i] for node, i in at.items()}
