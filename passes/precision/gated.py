"""Every layer's drop under a lossy rewrite, measured from ONE model: float and rewritten paths side by side.

Measuring each layer alone the plain way builds a model and a session per layer (MiniLM, 36 MatMuls:
346 s). Here one model holds, for every gated layer, both its float node and its rewritten form,
and computes y = y_float + g * (y_rewritten - y_float) with g a 0-d graph input. g = 0 gives the float
value exactly, g = 1 the rewritten one (to one float rounding), so any set of layers is one run of the
same session: the float reference, the whole rewrite, each layer alone, a candidate choice. Only the
layers' outputs are tapped, with the kernels the real model runs, so the drop is the model's own drop
(propagated through everything after the layer), not a local proxy such as the layer's own SQNR,
which on MiniLM did not single out the layer whose INT8 costs the most.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np

from onnxcomp.graph.edit import node_key
from onnxcomp.measure.compare import Fidelity, fidelity

GATE_PREFIX = "onnxcomp_gate_"


class GatedModel:
    """One session answering "the drop with these layers rewritten" on fixed sample data.

    `rewrite(graph, held)` edits a graph in place, leaving the nodes named in `held` as they are
    (the precision passes' rewrites). Layers with more than one output (LSTM) are not gated: they
    stay float in every run here.
    """

    def __init__(self, graph, units: Iterable[str], rewrite: Callable, data):
        from onnxcomp.graph.convert import to_graph, to_model
        from onnxcomp.measure.runtime import session

        self.model = model = to_model(graph)  # the float model, as given
        # The float model decides how calls merge into runs, before any run here or of a built
        # candidate: dynamic INT8 gives other numbers merged, and reference and candidate must agree.
        self.data = data.merge_on(model)
        self.labels = data.labels()
        trial = to_graph(model)
        nodes = {node_key(n): n for n in trial.nodes}
        self.units = [u for u in units if u in nodes and len(nodes[u].outputs) == 1]
        clones = _tap(trial, [nodes[u] for u in self.units])
        rewrite(trial, frozenset(clones) | (frozenset(nodes) - set(self.units)))
        self.session = session(to_model(trial))
        self.reference = self.outputs(())

    def on(self, data) -> GatedModel:
        """The same session measuring on other sample data."""
        view = copy.copy(self)
        view.data, view.labels = data, data.labels()
        view.reference = view.outputs(())
        return view

    def outputs(self, rewritten: Iterable[str]) -> dict[str, np.ndarray]:
        """The model's outputs over the data with the layers in `rewritten` rewritten, the rest float."""
        from onnxcomp.measure.runtime import join_outputs, run

        on = set(rewritten)
        gates = {f"{GATE_PREFIX}{i}": np.float32(u in on) for i, u in enumerate(self.units)}
        names = [o.name for o in self.session.get_outputs()]
        results, sizes = [], []
        for feeds, size in zip(self.data.batches(64), self.data.batch_sizes(64)):
            results.append(run(self.session, {**feeds, **gates}, names))
            sizes.append(size)
        return join_outputs(results, sizes)

    def fidelity(self, rewritten: Iterable[str]) -> Fidelity:
        return fidelity(self.reference, self.outputs(rewritten), self.labels)

    def alone(self) -> dict[str, float]:
        """Each gated layer's drop with only it rewritten."""
        return {u: self.fidelity([u]).drop for u in self.units}


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
        gate = gs.Variable(f"{GATE_PREFIX}{i}", dtype=np.float32, shape=[])
        graph.inputs.append(gate)
        delta = gs.Variable(f"{y.name}_{GATE_PREFIX}delta", dtype=y.dtype)
        scaled = gs.Variable(f"{y.name}_{GATE_PREFIX}scaled", dtype=y.dtype)
        graph.nodes.extend([twin, gs.Node("Sub", inputs=[rewritten, plain], outputs=[delta]),
                            gs.Node("Mul", inputs=[delta, gate], outputs=[scaled]),
                            gs.Node("Add", inputs=[plain, scaled], outputs=[y])])
        twins.append(twin.name)
    graph.toposort()
    return twins
