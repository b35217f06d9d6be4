"""What the runtime-support rules know about each value of a model: its element type, its shape,
and when its content is known: at engine build time (a constant), from static shapes only, or only
at run time. Computed once per ModelIndex (ONNX shape inference on a weight-free skeleton).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from onnxcomp.graph.shapes import skeleton

CONSTANT, FROM_SHAPES, RUNTIME = 0, 1, 2  # ordered: a value is as late as its latest input
# Ops whose output is not a function of their inputs' values.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                     "Multinomial"}
_SUBGRAPH_OPS = {"If", "Loop", "Scan", "SequenceMap"}


@dataclass
class ValueFacts:
    types: dict = field(default_factory=dict)   # value -> ONNX element type (TensorProto enum)
    shapes: dict = field(default_factory=dict)  # value -> tuple of int or None (unknown dim)
    origin: dict = field(default_factory=dict)  # value -> CONSTANT / FROM_SHAPES / RUNTIME (memo)


def value_facts(index) -> ValueFacts:
    """The facts of `index`'s model, shared by every rule through index.cache."""
    facts = index.cache.get("value_facts")
    if facts is None:
        facts = index.cache["value_facts"] = _infer(index.model)
    return facts


def _infer(model: onnx.ModelProto) -> ValueFacts:
    facts = ValueFacts()
    sk = skeleton(model)
    inferred = sk
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(sk, data_prop=data_prop)
            break
        except Exception:  # inference is a help here, not a requirement: keep what is declared
            continue
    graph = inferred.graph
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        t = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if t is None:
            continue
        if t.elem_type:
            facts.types[value.name] = t.elem_type
        if t.HasField("shape"):
            facts.shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for init in model.graph.initializer:
        facts.types[init.name] = init.data_type
        facts.shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    facts.types[node.output[0]] = a.t.data_type
                    facts.shapes[node.output[0]] = tuple(a.t.dims)
    return facts


def static_shape(facts: ValueFacts, name: str) -> bool:
    shape = facts.shapes.get(name)
    return shape is not None and all(d is not None for d in shape)


def origin(index, name: str) -> int:
    """When `name`'s content is known: CONSTANT (initializers, Constant nodes and what is computed
    from them alone), FROM_SHAPES (needs only tensor shapes: Shape/Size of a value of dynamic
    shape) or RUNTIME (reads a graph input's values). Iterative, so deep graphs do not recurse."""
    facts = value_facts(index)
    memo = facts.origin
    stack, visiting = [name], set()
    while stack:
        current = stack[-1]
        if current in memo:
            stack.pop()
            continue
        visiting.add(current)
        node = index.producer.get(current)
        if current in index.initializers or (node is not None and node.op_type == "Constant"):
            memo[current] = CONSTANT
        elif node is None or node.op_type in _NONDETERMINISTIC or node.op_type in _SUBGRAPH_OPS:
            memo[current] = RUNTIME
        elif node.op_type in ("Shape", "Size"):
            memo[current] = CONSTANT if static_shape(facts, node.input[0]) else FROM_SHAPES
        else:
            pending = [i for i in node.input if i and i not in memo]
            for i in pending:
                if i in visiting:  # a cycle (an invalid graph): nothing is known about it
                    memo[i] = RUNTIME
            pending = [i for i in pending if i not in memo]
            if pending:
                stack.extend(pending)
                continue
            memo[current] = max((memo[i] for i in node.input if i), default=CONSTANT)
        stack.pop()
    return memo[name]
