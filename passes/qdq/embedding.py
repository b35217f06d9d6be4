"""INT8 embedding tables for insert-qdq: a Gather on a constant float table stored as INT8 per row.

An embedding lookup does no arithmetic, so INT8 gains no speed there, but the table is often most of
a transformer's file (MiniLM: 47 of 90 MB). Each row gets its own symmetric scale (|q| <= 127), so
a rare token with large values does not coarsen the others. Two layouts:

- `dequantize` (QDQ, opset 13): DequantizeLinear(table_q, row scales, axis=0) -> Gather. The plain
  QDQ form every QDQ reader understands, but the runtime dequantizes the whole table on every call;
- `gather` (default for ort): Gather(table_q, ids) -> Cast -> Mul(Gather(row scales, ids)): the same
  values, computed for the looked-up rows only, so the lookup costs what it did in float.

TensorRT keeps tables float: it takes INT8 weights only into its weighted layers, and its engine
stores a dequantized table anyway.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import NameGen, node_key
from onnxcomp.passes.qdq.numerics import ratio_db

MIN_TABLE_ELEMENTS = 65536  # smaller tables (token types, short position tables) are not worth an op
_FLOAT = 1  # onnx.TensorProto.FLOAT


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per row: (codes int8 [rows, width], scales float32 [rows]); an all-zero row gets scale 1."""
    amax = np.abs(table).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def table_refusal(node, exclude=None) -> str | None:
    """Why this Gather's table stays float, or None when it can be stored INT8."""
    import onnx_graphsurgeon as gs

    if node.op != "Gather" or len(node.inputs) < 2:
        return "not a Gather"
    table = node.inputs[0]
    if not isinstance(table, gs.Constant) or isinstance(node.inputs[1], gs.Constant):
        return "not a lookup of variable indices in a constant table"
    values = table.values
    if values.ndim != 2 or int(node.attrs.get("axis", 0)) not in (0, -2) or np.dtype(values.dtype) != np.float32:
        return "not a lookup in a float32 [rows, width] table along axis 0"
    if values.size < MIN_TABLE_ELEMENTS:
        return f"table of {values.size} values is below {MIN_TABLE_ELEMENTS}: not worth an op"
    readers = [c for c in table.outputs if c is not node]
    if any(c.op != "Gather" for c in readers):
        other = next(c for c in readers if c.op != "Gather")
        return f"table also read by {other.op} {node_key(other)} (tied weights): kept float"
    if exclude and exclude.reason([node_key(node), table.name], (node.op,)):
        return "excluded by option"
    return None


def eligible_gathers(graph, exclude=None) -> tuple[list, list[tuple[str, str]]]:
    """(Gather nodes whose table can be stored INT8, [(node, reason)] for large tables that cannot)."""
    import onnx_graphsurgeon as gs

    found, skipped = [], []
    for node in graph.nodes:
        if node.op != "Gather":
            continue
        reason = table_refusal(node, exclude)
        if reason is None:
            found.append(node)
        elif isinstance(node.inputs[0], gs.Constant) and np.asarray(node.inputs[0].values).size >= MIN_TABLE_ELEMENTS:
            skipped.append((node_key(node), reason))
    return found, skipped


def quantize_tables(graph, layout: str = "gather", exclude=None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Store every eligible Gather table INT8 per row, in place (the graph is re-sorted after).
    Returns (one row per table, [(node, reason)] for large tables left float)."""
    import onnx_graphsurgeon as gs

    names = NameGen(graph)
    done: dict[str, tuple] = {}  # table name -> (codes, scales) shared by its Gathers
    rows = []
    nodes, skipped = eligible_gathers(graph, exclude)
    for node in nodes:
        table = node.inputs[0]
        if table.name not in done:
            values = np.asarray(table.values, np.float32)
            codes, scale = quantize_rows(values)
            shape = scale.shape if layout == "dequantize" else (-1, 1)  # [rows] for DQ's axis, [rows, 1] to gather
            done[table.name] = (gs.Constant(names(f"{table.name}_quantized"), codes),
                                gs.Constant(names(f"{table.name}_scale"), scale.reshape(shape)))
            rows.append(_table_row(table.name, node, values, codes, scale, layout))
        codes, scale = done[table.name]
        if layout == "dequantize":
            _dequantize_then_gather(graph, node, codes, scale, names)
        else:
            _gather_then_scale(graph, node, codes, scale, names)
    if rows:
        graph.cleanup().toposort()
    return rows, skipped


def _table_row(name: str, node, values: np.ndarray, codes: np.ndarray, scale: np.ndarray, layout: str) -> dict:
    error = values.astype(np.float64) - codes.astype(np.float64) * scale[:, None]
    signal = float(np.sum(values.astype(np.float64) ** 2))
    return {"table": name, "gather": node_key(node), "rows": int(values.shape[0]), "width": int(values.shape[1]),
            "layout": layout, "sqnr_db": round(ratio_db(signal, float(np.sum(error ** 2))), 2),
            "bytes_before": int(values.nbytes), "bytes_after": int(codes.nbytes + scale.nbytes)}


def _dequantize_then_gather(graph, node, codes, scale, names: NameGen) -> None:
    """DequantizeLinear(codes, scale, 0, axis=0) -> Gather (the QDQ form)."""
    import onnx_graphsurgeon as gs

    key = codes.name
    zero = gs.Constant(names(f"{key}_zero_point"), np.zeros(scale.shape, np.int8))
    table = gs.Variable(names(f"{key}_dequantized"), dtype=np.float32, shape=list(codes.shape))
    graph.nodes.append(gs.Node("DequantizeLinear", names(f"{key}_DequantizeLinear"), attrs={"axis": 0},
                               inputs=[codes, scale, zero], outputs=[table]))
    node.inputs[0] = table


def _gather_then_scale(graph, node, codes, scale, names: NameGen) -> None:
    """Gather(codes) -> Cast -> Mul(Gather(scale [rows, 1])): only the looked-up rows are scaled."""
    import onnx_graphsurgeon as gs

    ids, out = node.inputs[1], node.outputs[0]
    key = node_key(node)
    picked = gs.Variable(names(f"{key}_codes"), dtype=np.int8)
    as_float = gs.Variable(names(f"{key}_codes_float"), dtype=np.float32)
    row_scale = gs.Variable(names(f"{key}_row_scale"), dtype=np.float32)
    node.outputs.clear()
    graph.nodes.extend([
        gs.Node("Gather", names(f"{key}_quantized"), attrs={"axis": 0}, inputs=[codes, ids], outputs=[picked]),
        gs.Node("Cast", names(f"{key}_Cast"), attrs={"to": _FLOAT}, inputs=[picked], outputs=[as_float]),
        gs.Node("Gather", names(f"{key}_scale"), attrs={"axis": 0}, inputs=[scale, ids], outputs=[row_scale]),
        gs.Node("Mul", names(f"{key}_Mul"), inputs=[as_float, row_scale], outputs=[out]),
    ])
