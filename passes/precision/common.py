"""What the precision passes share: refusing quantized input, reading weights, the max_drop search."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.graph.edit import node_key
from onnxcomp.pipeline.options import Exclusion

# Ops that mean the model is already quantized (integer kernels, Q/DQ, packed weights).
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "MatMulIntegerToFloat", "MatMulNBits",
                 "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "GatherBlockQuantized", "QAttention")
FLOAT_TYPES = (np.float16, np.float32, np.float64)


def refuse_quantized(graph, owner: str) -> None:
    """One InputError line when the model already holds quantized ops: quantize the float model."""
    found = next((n for n in graph.nodes if n.op in QUANTIZED_OPS), None)
    if found is not None:
        raise InputError(f"{owner}: the model is already quantized ({found.op} node {found.name!r}); "
                         "start from the float model")


def exclusion(options, graph, owner: str) -> Exclusion:
    """The options' exclude / exclude_op, checked against the graph (a typo is an error)."""
    found = Exclusion(tuple(options.exclude), tuple(options.exclude_op))
    found.check(owner, graph)
    return found


def excluded(node, exclude: Exclusion) -> str | None:
    """Why `node` is excluded by name or op type, or None."""
    import onnx_graphsurgeon as gs

    names = [node_key(node)] + [t.name for t in node.inputs if isinstance(t, gs.Constant)]
    return exclude.reason(names, [node.op])


def constant_input(node, index: int):
    """Input `index` of `node` when it is a float32 constant: an initializer (a gs.Constant), or the
    value of a Constant node (exporters write weights both ways); else None."""
    import onnx_graphsurgeon as gs

    if index >= len(node.inputs):
        return None
    t = node.inputs[index]
    if not isinstance(t, gs.Constant) and t.inputs and t.inputs[0].op == "Constant":
        value = t.inputs[0].attrs.get("value")
        t = gs.Constant(t.name, value.values) if isinstance(value, gs.Constant) else t
    if not isinstance(t, gs.Constant) or t.values.dtype != np.float32:
        return None
    return t


def proto_constant(name: str, proto):
    """A gs.Constant backed by an onnx TensorProto (types numpy lacks: int4, uint4, bfloat16)."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    proto.name = name
    return gs.Constant(name, LazyValues(proto))


def require_data(ctx, owner: str, why: str):
    """The run's sample data (onnxcomp.measure.samples.Samples), or one InputError line naming `why`."""
    if ctx.data is None:
        raise InputError(f"{owner}: {why} needs sample data: pass --calib FILE.npz (one array per model input, "
                         "first axis = samples) or --calib FILE.py:FUNCTION (feed dicts, one per model call)")
    return ctx.data


def hold_back(owner: str, graph, apply: Callable, units: list[str], ctx, max_drop: float, samples: int):
    """max_drop for a precision pass: which of `units` (node names) to leave as they are.

    apply(graph, held) edits a copy of the graph with the nodes in `held` left alone. Uses the one
    budget driver (onnxcomp.pipeline.budget): all units converted, else the most sensitive held back,
    as few as the budget allows. A budget met only by converting nothing is refused (exit 4).
    """
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.pipeline.budget import BudgetSearch, drop_measure

    data = require_data(ctx, owner, "max_drop").first(samples)
    reference = to_model(graph)

    def build(held):
        trial = to_graph(reference)
        apply(trial, frozenset(held))
        return to_model(trial)

    search = BudgetSearch(owner, build, drop_measure(reference, data), max_drop)
    return refuse_unmet(owner, search.hold_back(list(units), rank=lambda fid: (fid.drop, 1.0 - fid.cosine)), max_drop)


def refuse_unmet(owner: str, result, max_drop: float):
    """`result` (a HoldBack), or ToleranceError (exit 4) when only converting nothing met the budget."""
    if not result.met:
        raise ToleranceError(f"{owner}: --max-drop {max_drop} cannot be met with any node converted: all "
                             f"converted drop {result.full.drop:.4f}")
    return result


def budget_details(result, max_drop: float) -> dict:
    """The report's `budget` object of a precision pass."""
    return {"max_drop": max_drop, "held_back": list(result.held_back), "drop_all": result.full.drop,
            "drop": result.fidelity.drop, "trials": result.trials,
            "sensitivity": {unit: result.alone[unit].drop for unit in result.order}}
