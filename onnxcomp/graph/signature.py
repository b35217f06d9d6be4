"""A model's graph inputs as specs (name, dtype, shape) and dim overrides from the command line
(`--dim batch=8`, `--input-shapes x:1,3,224,224`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.errors import InputError

NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    # ints are fixed sizes; strings are symbolic dims (dim_param) or "?" when unnamed.
    shape: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)

    def static(self, axis: int) -> int | None:
        """The fixed size of `axis`, or None when it is dynamic."""
        d = self.shape[axis]
        return d if isinstance(d, int) and d > 0 else None

    @property
    def fully_static(self) -> bool:
        return all(self.static(axis) is not None for axis in range(self.rank))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = NP_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise InputError(f"input {value.name!r}: element type {tensor.elem_type} is not supported for data generation")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


def defaulted_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that also have an initializer in an IR 4+ model: inputs with a default value,
    which every pass folds as constants (as ONNX Runtime's optimizer needs them to be). IR 3 lists
    every initializer among the inputs; there the listing says nothing."""
    if model.ir_version < 4:
        return []
    initializers = {t.name for t in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name in initializers]


def graph_input_specs(graph) -> list[InputSpec]:
    """Input specs of an onnx-graphsurgeon graph (constant inputs, IR 3's initializers, left out)."""
    specs = []
    for value in graph.inputs:
        if value.__class__.__name__ == "Constant":
            continue
        try:
            dtype = np.dtype(value.dtype)
        except TypeError:
            dtype = np.dtype(NP_TYPES.get(value.dtype, np.float32)) if isinstance(value.dtype, int) else None
        if dtype is None:
            raise InputError(f"input {value.name!r}: element type {value.dtype} is not supported for data generation")
        shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else "?")
                      for d in (value.shape or ()))
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def specs_of(source) -> list[InputSpec]:
    """Input specs of a ModelProto or an onnx-graphsurgeon graph, or `source` itself when it
    already is a sequence of specs."""
    if isinstance(source, onnx.ModelProto):
        return input_specs(source)
    if hasattr(source, "inputs") and hasattr(source, "nodes"):
        return graph_input_specs(source)
    specs = list(source)
    if not all(isinstance(s, InputSpec) for s in specs):
        raise TypeError("expected an onnx.ModelProto or a sequence of InputSpec")
    return specs


def with_shapes(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    """Specs with the dims `--input-shapes` fixes written in (shapes checked by check_input_shapes)."""
    return [InputSpec(s.name, s.dtype, tuple(shapes[s.name])) if s.name in shapes else s for s in specs]


def resolve_shape(spec: InputSpec, dims: dict[str, int], batch: int | None = None) -> tuple[int, ...]:
    """Concrete shape: symbolic dims from `dims` (by dim name or `input:axis`), else 1 (or batch on axis 0)."""
    shape = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
            continue
        key_axis = f"{spec.name}:{axis}"
        if key_axis in dims:
            shape.append(int(dims[key_axis]))
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        elif axis == 0 and batch is not None:
            shape.append(batch)
        else:
            shape.append(1)
    return tuple(shape)


def parse_dims(items) -> dict[str, int]:
    """`batch=8`, `input:0=8` → {name: size}."""
    dims = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--dim {item!r}: expected NAME=SIZE (a dim name, or INPUT:AXIS)")
        try:
            size = int(value)
        except ValueError:
            raise InputError(f"--dim {item!r}: size must be an integer") from None
        if size <= 0:
            raise InputError(f"--dim {item!r}: size must be positive")
        dims[key.strip()] = size
    return dims


def parse_input_shapes(items) -> dict[str, tuple[int, ...]]:
    """`x:1,3,320,320` (onnxslim's spelling; several per item separated by spaces, or by a comma
    before the next NAME:) -> {input name: shape}. The name is everything before the last colon,
    so `input:0:1,3` names `input:0`."""
    import re

    shapes = {}
    for item in items or ():
        for token in (t for part in str(item).split() for t in re.split(r",(?=[^\d,][^,]*:)", part)):
            name, colon, dims = token.rpartition(":")
            if not colon or not name:
                raise InputError(f"--input-shapes {token!r}: expected NAME:D1,D2,... (e.g. x:1,3,224,224)")
            try:
                shape = tuple(int(d) for d in dims.split(",")) if dims else ()
            except ValueError:
                raise InputError(f"--input-shapes {token!r}: dims must be integers separated by commas") from None
            if any(d <= 0 for d in shape):
                raise InputError(f"--input-shapes {token!r}: every dim must be positive")
            shapes[name] = shape
    return shapes


def check_input_shapes(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every shape names an input, has its rank and keeps its static dims; else one InputError line."""
    by_name = {s.name: s for s in specs}
    for name, shape in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise InputError(f"--input-shapes: the model has no input {name!r} "
                             f"(inputs: {', '.join(by_name) or 'none'})")
        if len(shape) != spec.rank:
            raise InputError(f"--input-shapes {name}: {len(shape)} dims given, input {name!r} has "
                             f"{spec.rank} {list(spec.shape)}")
        for axis, size in enumerate(shape):
            fixed = spec.static(axis)
            if fixed is not None and fixed != size:
                raise InputError(f"--input-shapes {name}: input {name!r}: dim {axis} is {fixed}, "
                                 f"--input-shapes gives {size}")


def shape_dims(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """`--input-shapes` as `--dim` entries (INPUT:AXIS -> size), so every user of dims sees them."""
    return {f"{name}:{axis}": size for name, shape in shapes.items() for axis, size in enumerate(shape)}


# Ops whose output holds only values of their first input (rearranged, selected, repeated): an
# integer input reaching a Gather through them indexes that Gather's table.
_SAME_VALUES = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice", "Split",
                "Expand", "Tile", "Concat", "Gather", "GatherElements"}
# Ops that leave a constant table's shape as it is (a quantized table dequantized, a cast).
_SAME_SHAPE = {"DequantizeLinear", "Cast", "Identity"}


def index_limits(model: onnx.ModelProto) -> dict[str, int]:
    """input name -> the fewest rows of any constant table it indexes through Gather (directly or
    through Cast/Unsqueeze/Reshape/Slice/...), so generated ids stay in range (token-type ids into a
    2-row table must be 0 or 1). Inputs that index no constant table are absent."""
    return {name: min(tables.values()) for name, tables in indexed_tables(model).items()}


def indexed_tables(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """integer input name -> {constant table it indexes through Gather (as index_limits follows it):
    the table's size on the gathered axis}. Inputs that index no constant table are absent."""
    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None:
                    shapes[node.output[0]] = tuple(attr.t.dims)
        elif node.op_type in _SAME_SHAPE and node.input and node.input[0] in shapes and node.output:
            shapes[node.output[0]] = shapes[node.input[0]]
    consumers: dict[str, list] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))
    found = {}
    for spec in input_specs(model):
        if spec.dtype.kind not in "iu":
            continue
        tables, seen, frontier = {}, set(), [spec.name]
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node, slot in consumers.get(name, ()):
                if node.op_type == "Gather" and slot == 1 and node.input[0] in shapes:
                    table = shapes[node.input[0]]
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if table and -len(table) <= axis < len(table) and table[axis] > 0:
                        tables[node.input[0]] = min(table[axis], tables.get(node.input[0], table[axis]))
                elif node.op_type in _SAME_VALUES and (slot == 0 or node.op_type == "Concat"):
                    frontier.extend(o for o in node.output if o)
        if tables:
            found[spec.name] = tables
    return found


def parse_input_values(items) -> dict[str, float]:
    """`sr=16000`, `scale=0.5`, `flag=true` -> {input: value} (ints stay ints)."""
    values = {}
    for item in items or ():
        name, eq, text = str(item).partition("=")
        if not eq or not name.strip():
            raise InputError(f"--input-value {item!r}: expected NAME=VALUE (e.g. sr=16000)")
        word = text.strip().lower()
        if word in ("true", "false"):
            values[name.strip()] = int(word == "true")
            continue
        try:
            values[name.strip()] = int(word)
        except ValueError:
            try:
                value = float(word)
            except ValueError:
                raise InputError(f"--input-value {item!r}: VALUE must be a number (or true/false)") from None
            if not np.isfinite(value):
                raise InputError(f"--input-value {item!r}: VALUE must be finite")
            values[name.strip()] = value
    return values
