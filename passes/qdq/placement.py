"""Which tensors get Q/DQ, per target, and why the other nodes stay float.

Three placements, chosen by target and graph:

- `full` (target `ort`, CNN-like graphs): every supported op runs in INT8 the way ONNX Runtime's
  CPU kernels fuse it: DQ on all inputs of Conv/Gemm/MatMul/Add/Mul/pools/Concat and Q on their
  outputs (after a following ReLU, which ORT folds into the Q when the zero point is 0), int32
  bias. Tensors that commute with quantization (MaxPool, Reshape, Flatten ...) reuse their input's
  scale so ORT drops the Q/DQ around them.
- `inputs` (target `ort`, transformer-like graphs: Softmax or LayerNormalization present): only the
  inputs of MatMul/Gemm are quantized and outputs stay float (ORT runs them as
  MatMulIntegerToFloat/QGemm with float output). Softmax, LayerNorm, GELU, residual and mask Adds
  and embedding Gathers stay float: that is where static INT8 collapses transformers.
- `tensorrt`: TensorRT explicit quantization: Q/DQ on the inputs of weighted ops only, float bias,
  residual Add quantized on the skip branch, Concat inputs sharing one scale, Q/DQ moved before a
  zero Pad that feeds a Conv, nothing on Conv outputs (so Conv+BN+ReLU+Add fuse).

The placement (`QdqPlacement`) is plain data; `rewrite.insert_qdq_pairs` turns it into graph edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import node_key, producer
from onnxcomp.graph.op_facts import BIASED_OPS, WEIGHT_INPUTS, WEIGHTED_OPS
from onnxcomp.passes.qdq.numerics import weight_axis
from onnxcomp.pipeline.options import NO_EXCLUSION, Exclusion

# ORT CPU has QLinear kernels (or QDQ fusions) for these; their outputs are quantized too.
ORT_QLINEAR = ("Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat", "Sigmoid", "LeakyRelu")
# Quantization commutes with these (same scale in and out): ORT drops the Q/DQ around them.
PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
# Folded into a preceding Q when the zero point is the type minimum (ORT ReluQuantFusion).
RELU_LIKE = ("Relu",)
TRANSFORMER_MARKERS = ("Softmax", "LayerNormalization", "SkipLayerNormalization", "Attention")

# Why ops that carry real float work stay float; shape plumbing is not listed.
FLOAT_REASONS = {
    "Softmax": "kept float: softmax outputs need fine resolution near 0 (static INT8 here collapses attention)",
    "LayerNormalization": "kept float: normalization statistics are dominated by outlier channels",
    "ReduceMean": "kept float: part of a normalization (outlier-dominated statistics)",
    "Add": "kept float: residual/bias/attention-mask add (mask values near -3.4e38 wreck a shared range)",
    "Sub": "kept float: elementwise arithmetic of a normalization or mask",
    "Mul": "kept float: elementwise scaling (no int8 gain in this placement)",
    "Div": "kept float: elementwise scaling (no int8 gain in this placement)",
    "Pow": "kept float: part of a normalization",
    "Sqrt": "kept float: part of a normalization",
    "Erf": "kept float: GELU is accurate only in float",
    "Gelu": "kept float: GELU is accurate only in float",
    "FastGelu": "kept float: GELU is accurate only in float",
    "Tanh": "kept float: activation is accurate only in float",
    "Gather": "kept float: embedding/position lookup (a table lookup gains nothing from int8)",
    "BatchNormalization": "kept float: unfolded BatchNormalization (run fold-bn before insert-qdq)",
}


@dataclass
class ActivationSpec:
    """Quantize tensor `name` with the parameters of range group `key`.

    consumers: names of the nodes that read the DQ output; None = every node consumer
    (what ORT's fusions need: a fused producer may feed only its Q).
    """

    key: str
    consumers: set | None = None


@dataclass
class WeightSpec:
    node: str
    index: int
    axis: int | None


@dataclass
class BiasSpec:
    node: str
    index: int
    activation: str  # tensor whose scale (times the weight scale) is the bias scale


@dataclass
class QdqPlacement:
    """Where Q/DQ pairs go: activation tensors, weights and biases of the nodes that run in INT8."""

    scheme: str
    nodes: list[str] = field(default_factory=list)  # nodes that will compute in int8
    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    weights: list[WeightSpec] = field(default_factory=list)
    biases: list[BiasSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    uncalibrated: frozenset = frozenset()  # tensors with no calibration range: never quantized

    def range_groups(self) -> dict[str, list[str]]:
        """Range key -> tensors whose calibrated ranges are merged into its one scale."""
        groups: dict[str, list[str]] = {}
        for name, spec in self.activations.items():
            groups.setdefault(spec.key, []).append(name)
        for key in groups:
            if key not in groups[key]:
                groups[key].append(key)
        return groups


@dataclass(frozen=True)
class PlacementOptions:
    target: str = "ort"
    scheme: str = "auto"  # auto | full | inputs | tensorrt
    per_channel: bool = True
    op_types: tuple = ()  # restrict quantized op types (empty: the scheme's set)
    exclude: Exclusion = NO_EXCLUSION  # node-name globs and op types kept float
    float_nodes: frozenset = frozenset()  # chosen by sensitivity analysis
    site_float: frozenset = frozenset()  # chosen by the measured site choice (site_choice.py)
    uncalibrated: frozenset = frozenset()  # tensors calibration found no range for: nodes reading them stay float


def choose_scheme(graph, options: PlacementOptions) -> str:
    if options.target == "tensorrt":
        return "tensorrt"
    if options.scheme != "auto":
        return options.scheme
    return "inputs" if any(n.op in TRANSFORMER_MARKERS for n in graph.nodes) else "full"


def is_weight_dequantize(node) -> bool:
    """A DequantizeLinear of a constant: a weight the model already stores in INT8 (kept as it is)."""
    import onnx_graphsurgeon as gs

    return node.op == "DequantizeLinear" and bool(node.inputs) and isinstance(node.inputs[0], gs.Constant)


class _Graph:
    """Indexes built once per placement (O(nodes))."""

    def __init__(self, graph):
        import onnx_graphsurgeon as gs

        self.gs = gs
        self.graph = graph
        self.outputs = {t.name for t in graph.outputs}
        self.inputs = {t.name for t in graph.inputs}
        self.floats = _float_tensors(self)  # where a tensor's dtype is not recorded
        self.static = _static_tensors(graph)

    def is_static(self, t) -> bool:
        """Computed from constants and shapes only (a DFT basis, a position table): the same for every
        input, so it is no activation to calibrate; not a stored weight either."""
        return t.name in self.static and not isinstance(t, self.gs.Constant) and not (
            t.inputs and (t.inputs[0].op == "Constant" or is_weight_dequantize(t.inputs[0])))

    def is_constant(self, t) -> bool:
        """A constant, or the model's own already-quantized weight (a DequantizeLinear of a constant)."""
        if isinstance(t, self.gs.Constant):
            return True
        return bool(t.inputs) and (t.inputs[0].op == "Constant" or is_weight_dequantize(t.inputs[0])
                                   or t.name in self.static)

    def is_float(self, t) -> bool:
        dtype = getattr(t, "dtype", None)
        if dtype is None:  # not recorded: what the graph's ops make of it (Shape -> Gather -> Unsqueeze is not)
            return t.name in self.floats
        try:
            return np.dtype(dtype) == np.float32
        except TypeError:
            return False


def _excluded(node, options: PlacementOptions) -> str | None:
    import onnx_graphsurgeon as gs

    if options.exclude:
        names = [node_key(node)] + [t.name for t in node.inputs if isinstance(t, gs.Constant)]
        if options.exclude.reason(names, (node.op,)):
            return "excluded by option"
    if node_key(node) in options.float_nodes:
        return "kept float by the --max-drop sensitivity analysis"
    if node_key(node) in options.site_float:
        return "kept float by the measured site choice: INT8 measured slower here and less accurate"
    if options.op_types and node.op not in options.op_types:
        return f"{node.op} is not in op_types"
    return None


def _weight_input(g: _Graph, node) -> tuple[int, object] | None:
    """Index and tensor of a weighted node's constant weight, if it has one."""
    if node.op not in WEIGHTED_OPS:
        return None
    idx = WEIGHT_INPUTS[node.op][0]  # the op's own weight slot (1 for all of them)
    if len(node.inputs) <= idx:
        return None
    w = node.inputs[idx]
    return (idx, w) if isinstance(w, g.gs.Constant) else None


def _uncalibrated_input(plan: QdqPlacement, node) -> str | None:
    found = next((t.name for t in node.inputs if t.name in plan.uncalibrated), None)
    return None if found is None else f"no calibration range for input {found!r} (calibration never saw it): kept float"


def _weighted_refusal(g: _Graph, node) -> str | None:
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return "Gemm with transA=1 is not quantized"
    if node.op in ("Conv", "ConvTranspose") and not _weight_input(g, node) \
            and not (len(node.inputs) > 1 and node.inputs[1].inputs and is_weight_dequantize(node.inputs[1].inputs[0])):
        return f"{node.op} weight is not a constant initializer (run cleanup to fold it)"
    acts = [t for i, t in enumerate(node.inputs[:2]) if not g.is_constant(t)]
    if node.op == "MatMul" and not acts:
        return "MatMul of two constants (run cleanup to fold it)"
    static = next((t.name for t in node.inputs[:2] if g.is_static(t)), None)
    if static is not None:
        return (f"input {static!r} is computed from shapes and constants only (the same for every input, no "
                "stored weight): kept float")
    if any(not g.is_float(t) for t in acts):
        return "activation input is not float32"
    w = _weight_input(g, node)
    if w is not None and np.dtype(w[1].dtype) != np.float32:
        return "weight is not float32"
    return None


def _follow_relu(g: _Graph, t):
    """The tensor to quantize for a node output: past a single-consumer ReLU chain."""
    while len(t.outputs) == 1 and t.name not in g.outputs and t.outputs[0].op in RELU_LIKE:
        t = t.outputs[0].outputs[0]
    return t


def _add_activation(plan: QdqPlacement, t, key: str | None = None, consumer=None) -> None:
    if t.name in plan.uncalibrated:
        return
    spec = plan.activations.get(t.name)
    if spec is None:
        spec = ActivationSpec(key or t.name, None if consumer is None else set())
        plan.activations[t.name] = spec
    if consumer is None:
        spec.consumers = None
    elif spec.consumers is not None:
        spec.consumers.add(node_key(consumer))


def plan_placement(graph, options: PlacementOptions) -> QdqPlacement:
    g = _Graph(graph)
    scheme = choose_scheme(graph, options)
    plan = QdqPlacement(scheme, uncalibrated=frozenset(options.uncalibrated))
    if scheme == "full":
        _plan_full(g, plan, options)
    elif scheme == "inputs":
        _plan_inputs(g, plan, options)
    else:
        _plan_tensorrt(g, plan, options)
    _note_float_nodes(g, plan, options)
    return plan


def _plan_weighted(g: _Graph, plan: QdqPlacement, node, options: PlacementOptions, all_consumers: bool) -> bool:
    reason = _excluded(node, options) or _weighted_refusal(g, node) or _uncalibrated_input(plan, node)
    if reason:
        plan.skipped.append((node_key(node), reason))
        return False
    plan.nodes.append(node_key(node))
    w = _weight_input(g, node)
    for i, t in enumerate(node.inputs[:2]):
        if w is not None and i == w[0]:
            continue
        if g.is_constant(t):
            continue
        _add_activation(plan, t, consumer=None if all_consumers else node)
    if w is not None:
        idx, weight = w
        plan.weights.append(WeightSpec(node_key(node), idx, _axis(node, weight, options)))
    return True


def _axis(node, weight, options: PlacementOptions) -> int | None:
    if not options.per_channel:
        return None
    return weight_axis(node.op, node.attrs, len(weight.shape))


def _has_bias(g: _Graph, node) -> bool:
    if node.op not in BIASED_OPS or len(node.inputs) < 3:
        return False
    b = node.inputs[2]
    return bool(b.name) and isinstance(b, g.gs.Constant) and b.values.ndim == 1


def _plan_full(g: _Graph, plan: QdqPlacement, options: PlacementOptions) -> None:
    quantized = set()
    for node in g.graph.nodes:
        if node.op in WEIGHTED_OPS:
            if not _plan_weighted(g, plan, node, options, all_consumers=True):
                continue
            quantized.add(id(node))
            if _has_bias(g, node):
                plan.biases.append(BiasSpec(node_key(node), 2, node.inputs[0].name))
            _quantize_output(g, plan, node)
        elif node.op in ORT_QLINEAR:
            reason = _excluded(node, options) or _qlinear_refusal(g, node) or _uncalibrated_input(plan, node)
            if reason:
                plan.skipped.append((node_key(node), reason))
                continue
            plan.nodes.append(node_key(node))
            quantized.add(id(node))
            for t in node.inputs:
                _add_activation(plan, t)
            _quantize_output(g, plan, node)
    _share_pass_through(g, plan)


def _qlinear_refusal(g: _Graph, node) -> str | None:
    if not node.inputs or not node.outputs:
        return "no inputs or outputs"
    if any(g.is_constant(t) for t in node.inputs):
        if node.op == "Concat":
            return "Concat of constants (shape arithmetic)"
        return f"{node.op} with a constant operand is kept float"
    if any(not g.is_float(t) for t in node.inputs) or not g.is_float(node.outputs[0]):
        return "not a float32 tensor op"
    return None


def _quantize_output(g: _Graph, plan: QdqPlacement, node) -> None:
    out = _follow_relu(g, node.outputs[0])
    # Gemm/MatMul emit float directly (QGemm, MatMulIntegerToFloat); the others fuse only with a Q after them.
    if out.outputs or (out.name in g.outputs and node.op not in ("Gemm", "MatMul")):
        _add_activation(plan, out)


def _share_pass_through(g: _Graph, plan: QdqPlacement) -> None:
    """Outputs of MaxPool/Reshape/... take their input's scale (so ORT drops the Q/DQ pair)."""
    for node in g.graph.nodes:  # topological order: chains propagate
        if node.op not in PASS_THROUGH or not node.outputs:
            continue
        out, src = node.outputs[0], node.inputs[0]
        if out.name in plan.activations and src.name in plan.activations:
            plan.activations[out.name].key = plan.activations[src.name].key
        elif src.name in plan.activations and any(c.op in WEIGHTED_OPS + ORT_QLINEAR + PASS_THROUGH
                                                  for c in out.outputs):
            _add_activation(plan, out, key=plan.activations[src.name].key)


def _plan_inputs(g: _Graph, plan: QdqPlacement, options: PlacementOptions) -> None:
    for node in g.graph.nodes:
        if node.op in WEIGHTED_OPS:
            _plan_weighted(g, plan, node, options, all_consumers=False)


def _plan_tensorrt(g: _Graph, plan: QdqPlacement, options: PlacementOptions) -> None:
    depth = _depths(g.graph)
    for node in g.graph.nodes:
        if node.op in WEIGHTED_OPS:
            if not _plan_weighted(g, plan, node, options, all_consumers=False):
                continue
            _move_before_pad(g, plan, node)
        elif node.op == "Add":
            _quantize_skip_branch(g, plan, node, depth, options)
    _share_concat_scales(g, plan)


def _move_before_pad(g: _Graph, plan: QdqPlacement, node) -> None:
    """TRT-18: Q/DQ on a zero Pad's input, not between the Pad and its Conv (Pad commutes with Q at zp 0)."""
    if node.op not in ("Conv", "ConvTranspose"):
        return
    x = node.inputs[0]
    pad = producer(x)
    if pad is None or pad.op != "Pad" or len(x.outputs) != 1 or x.name in g.outputs:
        return
    mode = pad.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        return
    if len(pad.inputs) > 2 and pad.inputs[2].name:
        value = pad.inputs[2]
        if not isinstance(value, g.gs.Constant) or np.any(np.asarray(value.values) != 0):
            return
    spec = plan.activations.pop(x.name, None)
    if spec is None:
        return
    _add_activation(plan, pad.inputs[0], consumer=pad)
    plan.notes.append(f"{node_key(node)}: Q/DQ placed before {node_key(pad)} (no Q/DQ between Pad and Conv)")


def _quantize_skip_branch(g: _Graph, plan: QdqPlacement, add, depth: dict, options: PlacementOptions) -> None:
    """TRT-15: quantize the residual Add's skip input only, so TRT fuses the Conv branch into the Add."""
    if len(add.inputs) != 2 or any(g.is_constant(t) for t in add.inputs) or _excluded(add, options):
        return
    a, b = add.inputs
    from_conv = [_from_weighted(g, t) for t in (a, b)]
    if not any(from_conv):
        return
    if all(from_conv):
        skip = a if depth.get(a.name, 0) < depth.get(b.name, 0) else b
    else:
        skip = b if from_conv[0] else a
    if not g.is_float(skip):
        return
    _add_activation(plan, skip, consumer=add)


def _from_weighted(g: _Graph, t) -> bool:
    """Produced by a Conv/Gemm/MatMul, possibly through an unfolded BatchNormalization."""
    p = producer(t)
    if p is not None and p.op == "BatchNormalization":
        p = producer(p.inputs[0])
    return p is not None and p.op in WEIGHTED_OPS


def _depths(graph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in graph.nodes:
        d = 1 + max((depth.get(t.name, 0) for t in node.inputs), default=0)
        for t in node.outputs:
            depth[t.name] = d
    return depth


def _share_concat_scales(g: _Graph, plan: QdqPlacement) -> None:
    """TRT-16: a quantized Concat output and all its inputs share one scale."""
    for node in g.graph.nodes:
        if node.op != "Concat" or not node.outputs or node.outputs[0].name not in plan.activations:
            continue
        key = plan.activations[node.outputs[0].name].key
        for t in node.inputs:
            if g.is_constant(t) or not g.is_float(t):
                continue
            _add_activation(plan, t, key=key, consumer=node)
            plan.activations[t.name].key = key


# Ops whose outputs are integers/bools whatever they read (shape arithmetic, comparisons).
_NON_FLOAT_OPS = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Equal", "Less", "Greater",
                            "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not", "Xor", "Range", "IsNaN", "IsInf"})
# Ops whose output type is that of one data input (index given).
_TYPE_FROM_INPUT = {"Gather": 0, "GatherElements": 0, "Reshape": 0, "Unsqueeze": 0, "Squeeze": 0, "Slice": 0,
                    "Expand": 0, "Tile": 0, "Transpose": 0, "Flatten": 0, "Where": 1, "ConstantOfShape": None}


_SHAPE_ONLY = frozenset({"Shape", "Size"})  # outputs depend on their input's shape, not its values
_NOT_STATIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                         "Multinomial", "If", "Loop", "Scan"})


def _static_tensors(graph) -> set:
    """Names of tensors no graph input's values reach (O(nodes), in topological order)."""
    import onnx_graphsurgeon as gs

    static = {t.name for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        if node.op in _NOT_STATIC:
            continue
        if node.op in _SHAPE_ONLY or all(not t.name or t.name in static for t in node.inputs):
            static.update(t.name for t in node.outputs)
    return static


def _float_tensors(g: _Graph) -> set:
    """Names of tensors that carry float data, propagated once through the graph (O(nodes)).

    Used only to decide which float-left nodes deserve a skip reason, so shape arithmetic
    (Shape -> Gather -> Concat ...) does not flood the report.
    """
    def known(t):
        dtype = getattr(t, "dtype", None)
        if dtype is None:
            return None
        try:
            return np.dtype(dtype).kind == "f"
        except TypeError:
            return None

    floats = {t.name for t in g.graph.inputs if known(t) is not False}
    is_float = lambda t: t.name in floats or (isinstance(t, g.gs.Constant) and known(t))  # noqa: E731
    for node in g.graph.nodes:
        if node.op in _NON_FLOAT_OPS:
            continue
        if node.op == "Cast":
            to = int(node.attrs.get("to", 0))
            out_float = to in (1, 10, 11, 16)
        elif node.op in _TYPE_FROM_INPUT:
            idx = _TYPE_FROM_INPUT[node.op]
            out_float = idx is not None and len(node.inputs) > idx and is_float(node.inputs[idx])
        else:
            out_float = any(is_float(t) for t in node.inputs)
        if out_float:
            floats.update(t.name for t in node.outputs)
    return floats


def _note_float_nodes(g: _Graph, plan: QdqPlacement, options: PlacementOptions) -> None:
    """Skip reasons for float-carrying nodes the plan leaves in float."""
    done = set(plan.nodes) | {name for name, _ in plan.skipped}
    floats = g.floats
    for node in g.graph.nodes:
        name = node_key(node)
        if name in done or not node.outputs or node.outputs[0].name not in floats:
            continue
        if node.op == "BatchNormalization":
            p = producer(node.inputs[0])
            if p is not None and p.op in BIASED_OPS:
                plan.skipped.append((name, f"unfolded BatchNormalization after {p.op} {node_key(p)}: run fold-bn "
                                           "before insert-qdq (ORT cannot fuse Conv-BN-Q; about half the speedup is lost)"))
                continue
        if plan.scheme == "inputs" and node.op in FLOAT_REASONS:
            plan.skipped.append((name, FLOAT_REASONS[node.op]))
        elif plan.scheme == "full" and node.op not in WEIGHTED_OPS + ORT_QLINEAR + PASS_THROUGH + RELU_LIKE \
                and node.op not in ("Constant", "Identity") and not all(g.is_constant(t) for t in node.inputs):
            plan.skipped.append((name, f"no int8 kernel rule for {node.op}; kept float"))
