"""Every layer's drop under a lossy rewrite, measured from ONE model: float and rewritten paths side by side.

Measuring each layer alone the plain way builds a model and a session per layer (MiniLM, 36 MatMuls:
346 s). Here one model holds, for every gated place, both its float value and its rewritten one, and
computes y = y_float + g * (y_rewritten - y_float) with g a 0-d graph input. g = 0 gives the float
value exactly, g = 1 the rewritten one (to one float rounding), so any set of layers is one run of the
same session: the float reference, the whole rewrite, each layer alone, a candidate choice. Only the
rewritten values are tapped, with the kernels the real model runs, so the drop is the model's own drop
(propagated through everything after the layer), not a local proxy such as the layer's own SQNR,
which on MiniLM did not single out the layer whose INT8 costs the most.

Two ways to gate: `GatedModel` gives each layer a float twin (a rewrite that replaces nodes, such as
dynamic INT8); `blend_inputs` gates the inputs a rewrite made lossy (insert-qdq's Q/DQ pairs, where
which edges are lossy depends on the whole set of layers kept float: passes/qdq/sensitivity.py).
Both are measured by a `GatedSession`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np

from onnxcomp.graph.edit import node_key
from onnxcomp.measure.compare import Fidelity, fidelity

GATE_PREFIX = "onnxcomp_gate_"


class GatedSession:
    """A gated model's session on fixed sample data; `gates(rewritten)` (the subclass's) says which
    gates are 1 for a set of rewritten units. The reference is the all-gates-0 run: the float model."""

    units: list[str]

    def _start(self, float_model, gated_model, gates: int, data) -> None:
        from onnxcomp.measure.runtime import session

        self.model = float_model
        # The float model decides how calls merge into runs, before any run here or of a built
        # candidate: dynamic INT8 gives other numbers merged, and reference and candidate must agree.
        self.data = data.merge_on(float_model)
        self.labels = data.labels()
        self.gate_names = [f"{GATE_PREFIX}{i}" for i in range(gates)]
        self.session = session(gated_model)
        self.reference = self._run(set())

    def gates(self, rewritten: set) -> set[int]:
        raise NotImplementedError

    def on(self, data) -> GatedSession:
        """The same session measuring on other sample data."""
        view = copy.copy(self)
        view.data, view.labels = data, data.labels()
        view.reference = view._run(set())
        return view

    def outputs(self, rewritten: Iterable[str]) -> dict[str, np.ndarray]:
        """The model's outputs over the data with the units in `rewritten` rewritten, the rest float."""
        return self._run(self.gates(set(rewritten)))

    def _run(self, on: set[int]) -> dict[str, np.ndarray]:
        """The outputs with the gates numbered in `on` at 1 (none: the float model, whatever a rewrite
        does besides its units, such as TensorRT's Q/DQ on a residual Add's skip input)."""
        from onnxcomp.measure.runtime import join_outputs, run

        gates = {name: np.float32(i in on) for i, name in enumerate(self.gate_names)}
        names = [o.name for o in self.session.get_outputs()]
        results, sizes = [], []
        for feeds, size in zip(self.data.batches(64), self.data.batch_sizes(64)):
            results.append(run(self.session, {**feeds, **gates}, names))
            sizes.append(size)
        return join_outputs(results, sizes)

    def fidelity(self, rewritten: Iterable[str]) -> Fidelity:
        return fidelity(self.reference, self.outputs(rewritten), self.labels)

    def alone(self) -> dict[str, float]:
        """Each gated unit's drop with only it rewritten."""
        return {u: self.fidelity([u]).drop for u in self.units}


class GatedModel(GatedSession):
    """One session answering "the drop with these layers rewritten" on fixed sample data.

    `rewrite(graph, held)` edits a graph in place, leaving the nodes named in `held` as they are
    (the precision passes' rewrites). Layers with more than one output (LSTM) are not gated: they
    stay float in every run here.
    """

    def __init__(self, graph, units: Iterable[str], rewrite: Callable, data):
        from onnxcomp.graph.convert import to_graph, to_model

        model = to_model(graph)  # the float model, as given
        trial = to_graph(model)
        nodes = {node_key(n): n for n in trial.nodes}
        self.units = [u for u in units if u in nodes and len(nodes[u].outputs) == 1]
        clones = _tap(trial, [nodes[u] for u in self.units])
        rewrite(trial, frozenset(clones) | (frozenset(nodes) - set(self.units)))
        self._start(model, to_model(trial), len(self.units), data)

    def gates(self, rewritten: set) -> set[int]:
        return {i for i, u in enumerate(self.units) if u in rewritten}


def blend_inputs(graph, edges: list[tuple]) -> None:
    """Gate lossy inputs: edges[i] = (node, input index, plain tensor); the node then reads
    plain + gate_i * (its lossy input - plain), gate i a new 0-d graph input. Gates are numbered
    after those the graph already has."""
    import onnx_graphsurgeon as gs

    first = sum(t.name.startswith(GATE_PREFIX) for t in graph.inputs)
    for i, (node, index, plain) in enumerate(edges, start=first):
        lossy = node.inputs[index]
        y = gs.Variable(f"{lossy.name}_{GATE_PREFIX}{i}_blend", dtype=lossy.dtype)
        _blend(graph, plain, lossy, y, i)
        node.inputs[index] = y
    graph.toposort()


def _blend(graph, plain, rewritten, y, i: int) -> None:
    """y = plain + gate_i * (rewritten - plain), gate_i a new 0-d graph input."""
    import onnx_graphsurgeon as gs

    gate = gs.Variable(f"{GATE_PREFIX}{i}", dtype=np.float32, shape=[])
    graph.inputs.append(gate)
    delta = gs.Variable(f"{y.name}_{GATE_PREFIX}delta", dtype=y.dtype)
    scaled = gs.Variable(f"{y.name}_{GATE_PREFIX}scaled", dtype=y.dtype)
    graph.nodes.extend([gs.Node("Sub", inputs=[rewritten, plain], outputs=[delta]),
                        gs.Node("Mul", inputs=[delta, gate], outputs=[scaled]),
                        gs.Node("Add", inputs=[plain, scaled], outputs=[y])])


def _tap(graph, nodes: list) -> list[str]:
    """Give each node a float twin and blend the two outputs by a gate input; the twins' names."""
    import onnx_graphsurgeon as gs

    twins = []
    for i, node in enumerate(nodes):
        (y,) = node.outputs
        rewritten = gs.Variable(f"{y.name}_{GATE_PREFIX}rewritten", dtype=y.dtype)
        plain = gs.Variable(f"{y.name}_{GATE_PREFIX}float", dtype=y.dtype)
        twin = gs.Node(node.op, f"{node_key(node)}_{GATE_PREFIX}float", attrs=dict(node.attrs),
                       inputs=list(node.inputs), outputs=[plain], domain=node.domain)
        node.outputs = [rewritten]
        graph.nodes.append(twin)
        _blend(graph, plain, rewritten, y, i)
        twins.append(twin.name)
    graph.toposort()
    return twins
