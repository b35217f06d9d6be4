"""Where an attention block's operands come from, and which projection channel each of their elements is.

The folds of attention_scale.py and attention_bias.py, and smooth-quant's value sites, move a
constant between a projection (x W + b) and a tensor it reaches through head Reshapes/Transposes.
`trace_projection` finds that projection; `channel_ids` says, element by element, which output
channel of the projection a tensor holds - computed on shapes with every dynamic input dim a
different size, so a reshape that mixed the sequence into the heads would show, not pass for a split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.graph.edit import producer

LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")  # they move values, never change them
SHAPE_READERS = ("Shape", "Size")  # they read no values: a scaled tensor is the same to them
_PROBE_SIZES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)


def only_reader(t, outputs: set) -> bool:
    """`t` has one reader of its values (and is not a graph output)."""
    return t.name not in outputs and sum(c.op not in SHAPE_READERS for c in t.outputs) == 1


def constant_index(node) -> int | None:
    """The index of the one constant input of a two-input node, else None."""
    import onnx_graphsurgeon as gs

    found = [i for i, t in enumerate(node.inputs) if isinstance(t, gs.Constant)]
    return found[0] if len(node.inputs) == 2 and len(found) == 1 else None


@dataclass
class Projection:
    """x W (+ b) with a constant 2-D W, reaching an operand through `layout` (first to last)."""

    matmul: object
    bias: tuple | None  # (Add node, index of its constant input)
    layout: list

    @property
    def output(self):
        """The projection's result before the layout ops: the bias Add's output, or the MatMul's."""
        return (self.bias[0] if self.bias else self.matmul).outputs[0]

    @property
    def channels(self) -> int:
        return int(self.matmul.inputs[1].shape[1])


def backward_layout(t, outputs: set) -> tuple | None:
    """(the first node behind `t` that is no layout op, the layout ops passed on the way first to last,
    the tensor that node makes), each tensor on the way read only by the next op; None when the walk
    meets another reader or a graph input."""
    layout = []
    while True:
        if not only_reader(t, outputs):
            return None
        node = producer(t)
        if node is None:
            return None
        if node.op not in LAYOUT_OPS:
            return node, layout, t
        layout.insert(0, node)
        t = node.inputs[0]


def trace_projection(t, outputs: set) -> Projection | None:
    """The projection that makes `t` through layout ops, each tensor on the way read only by the
    next op; None when there is none."""
    import onnx_graphsurgeon as gs

    found = backward_layout(t, outputs)
    if found is None:
        return None
    node, layout, t = found
    bias = None
    if node.op == "Add":
        index = constant_index(node)
        if index is None:
            return None
        bias, t = (node, index), node.inputs[1 - index]
        if not only_reader(t, outputs):
            return None
        node = producer(t)
    if node is None or node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant) \
            or node.inputs[1].values.ndim != 2 or isinstance(node.inputs[0], gs.Constant):
        return None
    return Projection(node, bias, layout)


def channel_bias(proj: Projection) -> np.ndarray | None:
    """The projection's bias as one float32 value per output channel, or None (no bias, or one that
    varies along more than the channels)."""
    if proj.bias is None:
        return None
    b = np.asarray(proj.bias[0].inputs[proj.bias[1]].values)
    if b.dtype != np.float32 or any(d != 1 for d in b.shape[:-1]) or (b.ndim and b.shape[-1] not in (1, proj.channels)):
        return None
    return np.broadcast_to(b.reshape(-1), (proj.channels,)).astype(np.float32)


def forward_layout(t, outputs: set) -> tuple[list, object]:
    """(layout ops that `t` flows through, each tensor read once, first to last; the tensor they end at)."""
    layout = []
    while only_reader(t, outputs):
        node = next(c for c in t.outputs if c.op not in SHAPE_READERS)
        if node.op not in LAYOUT_OPS or node.inputs[0] is not t:
            break
        layout.append(node)
        t = node.outputs[0]
    return layout, t


def probe_shapes(model) -> dict[str, tuple]:
    """Static shapes of every value with each dynamic input dim a different small size (named dims
    share theirs), for `channel_ids`."""
    from onnxcomp.graph.shapes import infer_shapes
    from onnxcomp.graph.signature import input_specs

    dims: dict[str, int] = {}
    for spec in input_specs(model):
        for axis, d in enumerate(spec.shape):
            if spec.static(axis) is None:
                key = d if isinstance(d, str) and d != "?" else f"{spec.name}:{axis}"
                dims.setdefault(key, _PROBE_SIZES[len(dims) % len(_PROBE_SIZES)])
    return infer_shapes(model, dims)


def channel_ids(ids: np.ndarray, layout: list, shapes: dict) -> np.ndarray | None:
    """`ids` (an array shaped like the layout's input) carried through the layout ops as the model
    moves values; None when a shape is unknown."""
    for node in layout:
        if node.op == "Transpose":
            perm = node.attrs.get("perm")
            ids = np.transpose(ids, perm if perm is not None else None)
            continue
        target = shapes.get(node.outputs[0].name)
        if target is None or any(d is None for d in target) or int(np.prod(target)) != ids.size:
            return None
        ids = ids.reshape(target)
    want = shapes.get(layout[-1].outputs[0].name) if layout else None
    return ids if not layout or (want is not None and tuple(ids.shape) == tuple(want)) else None


def projection_ids(proj: Projection, shapes: dict) -> np.ndarray | None:
    """For each element of the operand `proj` makes, the projection output channel it holds."""
    shape = shapes.get(proj.output.name)
    if shape is None or not shape or any(d is None for d in shape) or shape[-1] != proj.channels:
        return None
    return channel_ids(np.broadcast_to(np.arange(proj.channels), shape), proj.layout, shapes)


@dataclass
class ValuePath:
    """`output` = layout(P V), V from `projection`: channel c of `output` is channel c of the
    projection, so a per-channel factor on one is the same factor on the other."""

    projection: Projection
    attention: object  # the MatMul P V
    layout: list  # from the attention output to `output`
    output: object


def value_path(t, shapes: dict, outputs: set) -> ValuePath | None:
    """The ValuePath ending at `t` (a MatMul's data input), or None."""
    import onnx_graphsurgeon as gs

    found = backward_layout(t, outputs)
    if found is None:
        return None
    node, layout, end = found
    if node.op != "MatMul" or any(isinstance(x, gs.Constant) for x in node.inputs):
        return None
    proj = trace_projection(node.inputs[1], outputs)
    if proj is None:
        return None
    v = projection_ids(proj, shapes)
    out_shape = shapes.get(end.name)
    if v is None or v.ndim < 2 or out_shape is None or any(d is None for d in out_shape):
        return None
    if not np.all(v == v[..., :1, :]):  # a value's channel must not change along the axis P sums over
        return None
    try:
        ctx = np.broadcast_to(v[..., :1, :], out_shape)
    except ValueError:
        return None
    ids = channel_ids(ctx, layout, shapes)
    if ids is None or ids.shape[-1] != proj.channels or not np.all(ids == np.arange(proj.channels)):
        return None
    return ValuePath(proj, node, layout, t)
