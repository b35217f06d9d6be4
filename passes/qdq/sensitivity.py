"""max_drop for insert-qdq: rank quantized layers by sensitivity and keep the worst in float until the budget holds.

Sensitivity of a layer = the drop (accuracy loss with labels, else 1 - mean cosine against the
float model; ties by 1 - cosine) when that layer alone is quantized. Layers are then returned to
float most-sensitive first until the whole model's drop is within budget (the search itself is
onnxcomp.pipeline.budget's). Building and loading one model per trial took 258 models and 2648 s on
terrain_unet (255 quantized layers), so both the ranking and the count are searched on ONE gated
session (`GatedQdq`: the all-INT8 build with every lossy input blended with its float value by a
gate), and only the counts it picks are built and measured (there: 3 builds, 263 gated runs, 635 s,
the same answer); the answer is always a built model's own trial.
A model whose only way to meet the budget is "nothing quantized" is refused with the figures
(ToleranceError): the user asked for INT8, and a float copy is not that.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxcomp.errors import ToleranceError
from onnxcomp.graph.edit import node_key, producer, replace_input
from onnxcomp.pipeline.budget import BudgetSearch, HoldBack, drop_measure
from onnxcomp.pipeline.gated import GatedSession, blend_inputs

PROBE_SAMPLES = 16  # the ranking (one gated run per layer) is measured on these first samples, as quantize-dynamic's,
RANKING_RUNS = 1024  # or fewer, so that layers x samples stays under this: a gated run costs about a float run
# (terrain_unet, 255 layers: 16 samples take 16 s loaded, 4 samples 4 s), and a ranking needs no more
OUTPUT = ""  # the "node" of an edge into a graph output


class GatedQdq(GatedSession):
    """The drop with some layers quantized, for insert-qdq: each answer is one run of one session.

    A layer kept float changes more than its own inputs (full placement: a Q/DQ'd tensor feeds all its
    readers, and a quantized layer's output is Q/DQ'd too), so a unit is not one gate: every edge the
    all-INT8 build made lossy (an activation's Q/DQ into one reader, a weight or bias DQ) has its own,
    and a candidate turns on exactly the edges `plan_of(float layers)` (the placement the real build
    would use) quantizes. Scales are the all-INT8 build's (a range group that shrinks with the float
    layers keeps its union here): the reason the chosen model is still built and measured.
    `rewrite(graph, float_layers)` is the pass's rewrite in place; `data`: Samples.
    """

    def __init__(self, float_model, rewrite: Callable, plan_of: Callable, units: list[str], data):
        import onnx_graphsurgeon as gs

        from onnxcomp.graph.convert import to_graph, to_model

        self.units, self.plan_of = list(units), plan_of
        plain = to_graph(float_model)  # stays float: where each tensor is read, by edge key
        self._outputs = {t.name for t in plain.outputs}
        self._readers = {}
        for node in plain.nodes:
            for i, t in enumerate(node.inputs):
                self._readers.setdefault(t.name, []).append((node_key(node), i))
        graph = to_graph(float_model)
        keys = {id(n): node_key(n) for n in graph.nodes}
        constants = {(keys[id(n)], i): t for n in graph.nodes for i, t in enumerate(n.inputs)
                     if isinstance(t, gs.Constant)}
        rewrite(graph, frozenset())
        edges, names = _lossy_inputs(graph, keys, constants)
        blend_inputs(graph, edges)
        self.index = {name: i for i, name in enumerate(names)}
        self._start(float_model, to_model(graph), len(edges), data)

    def lossy_edges(self, float_layers) -> set[tuple]:
        """The edges the real build with `float_layers` kept float quantizes (as rewrite.insert_qdq_pairs does)."""
        plan = self.plan_of(frozenset(float_layers))
        found = set()
        for name, spec in plan.activations.items():
            found.update((reader, i) for reader, i in self._readers.get(name, ())
                         if spec.consumers is None or reader in spec.consumers)
            if spec.consumers is None and name in self._outputs:
                found.add((OUTPUT, name))  # (an unfused graph output keeps reading float: no such gate exists)
        found.update((spec.node, spec.index) for spec in plan.weights)
        weighted = {spec.node for spec in plan.weights}
        if plan.scheme == "full":  # int32 biases, where the rewrite can scale them
            found.update((spec.node, spec.index) for spec in plan.biases
                         if spec.activation in plan.activations and spec.node in weighted)
        return found

    def gates(self, rewritten: set) -> set[int]:
        edges = self.lossy_edges(frozenset(self.units) - rewritten)
        return {self.index[e] for e in edges if e in self.index}


def _lossy_inputs(graph, keys: dict, constants: dict) -> tuple[list, list]:
    """The inputs the rewrite made lossy, as blend_inputs edges (node, index, float value), and their
    names: (node key, index), or (OUTPUT, name) for a graph output. keys: id of each original node ->
    its key; constants: (key, index) -> the float weight or bias it read."""
    import onnx_graphsurgeon as gs

    into_output = {}  # Identity node id -> the graph output it now makes
    for out in list(graph.outputs):  # a fused producer's graph output is a DQ's: read it through an Identity
        made = producer(out)
        if made is not None and id(made) not in keys and made.op == "DequantizeLinear":
            lossy = gs.Variable(f"{out.name}_onnxcomp_lossy", dtype=out.dtype, shape=out.shape)
            for reader in list(out.outputs):
                replace_input(reader, out, lossy)
            made.outputs = [lossy]
            graph.nodes.append(gs.Node("Identity", f"{out.name}_onnxcomp_output", inputs=[lossy], outputs=[out]))
            into_output[id(graph.nodes[-1])] = out.name
    edges, names = [], []
    for node in list(graph.nodes):
        if id(node) not in keys and id(node) not in into_output:
            continue
        for i, t in enumerate(node.inputs):
            dq = producer(t)
            if dq is None or id(dq) in keys or dq.op != "DequantizeLinear":
                continue
            q = producer(dq.inputs[0])
            if q is not None and q.op == "QuantizeLinear":
                source = q.inputs[0]  # an activation's float value
            else:  # a weight's or bias's float constant
                source = constants.get((keys.get(id(node)), i))
            if source is not None:
                edges.append((node, i, source))
                names.append((OUTPUT, into_output[id(node)]) if id(node) in into_output else (keys[id(node)], i))
    return edges, names


def choose_float_layers(float_model, build: Callable[[frozenset], object], layers: list[str], data,
                        max_drop: float, rewrite: Callable | None = None, plan_of: Callable | None = None) -> HoldBack:
    """build(float_nodes) -> quantized ModelProto with those nodes left float; `held_back` = float layers.
    With `rewrite` (in place, the same build) and `plan_of` (float_nodes -> the placement), the search
    runs on a GatedQdq and builds only its picks; else it builds every trial (first-fit).
    `data`: Samples (each call at the model's own batch size) or a stacked dict."""
    search = BudgetSearch("insert-qdq", build, drop_measure(float_model, data), max_drop)
    def rank(fid):
        return fid.drop, 1.0 - fid.cosine

    if rewrite is None or plan_of is None:
        result = search.hold_back(layers, rank=rank, search="first-fit")
    else:
        from onnxcomp.measure.samples import as_samples

        data = as_samples(data, float_model)  # (a stacked dict too)
        made = {}

        def probe(few: bool) -> GatedQdq:  # made only once all-INT8 measures over budget
            if "all" not in made:
                made["all"] = GatedQdq(float_model, rewrite, plan_of, layers, data)
                count = ranking_samples(len(layers))
                made["few"] = made["all"].on(data.first(count)) if data.samples > count else made["all"]
            return made["few" if few else "all"]

        result = search.hold_back_estimated(layers, lambda on: probe(False).fidelity(on),
                                            lambda on: probe(True).fidelity(on), rank=rank)
    if not result.met:
        least = result.order[-1]
        raise ToleranceError(
            f"insert-qdq: --max-drop {max_drop} cannot be met with any layer in INT8: all layers quantized drop "
            f"{result.full.drop:.4f}; even the least sensitive layer alone ({least}) drops "
            f"{_alone_drop(search, result, least):.4f}")
    return result


def ranking_samples(layers: int) -> int:
    """How many of the first samples rank the layers: PROBE_SAMPLES, fewer for many layers (at least 2)."""
    return max(2, min(PROBE_SAMPLES, RANKING_RUNS // max(layers, 1)))


def _alone_drop(search: BudgetSearch, result: HoldBack, layer: str) -> float:
    """The layer's drop alone as built, when it was (the last resort of both searches), else its sensitivity."""
    alone = frozenset(result.order) - {layer}
    return next((t.drop for t in search.trials if t.step == alone), result.alone[layer].drop)


def sensitivity_table(result: HoldBack) -> list[dict]:
    """For the report: each layer's error (1 - cosine) and drop when it alone is quantized, most sensitive first."""
    return [{"node": layer, "error": 1.0 - result.alone[layer].cosine, "drop": result.alone[layer].drop}
            for layer in result.order]
