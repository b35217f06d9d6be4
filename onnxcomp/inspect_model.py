"""A model summary for `onnxcomp inspect`: opsets, I/O, ops, parameters, MACs, files."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxcomp.measure.counts import estimate_macs, model_counts
from onnxcomp.report import human_bytes, human_count, table

_DTYPE_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def _value_info(value) -> dict:
    t = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return {"name": value.name, "dtype": _DTYPE_NAMES.get(t.elem_type, str(t.elem_type)), "shape": shape}


def summarize(model: onnx.ModelProto, path: str | os.PathLike | None = None, dims=None) -> dict:
    counts = model_counts(model)
    macs = estimate_macs(model, dims)
    inits = {t.name for t in model.graph.initializer}
    external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    summary = {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in inits],
        "outputs": [_value_info(v) for v in model.graph.output],
        "nodes": counts["nodes"],
        "ops": counts["ops"],
        "initializers": counts["initializers"],
        "params": counts["params"],
        "macs": macs["macs"],
        "flops": macs["flops"],
        "macs_by_op": macs["by_op"],
        "macs_unknown_nodes": len(macs["unknown"]),
    }
    if path is not None:
        p = Path(path)
        summary["file"] = str(p)
        summary["file_size"] = p.stat().st_size if p.exists() else None
        summary["external_data"] = [{"location": loc, "size": (p.parent / loc).stat().st_size
                                     if (p.parent / loc).exists() else None} for loc in external]
    return summary


def format_summary(s: dict) -> str:
    lines = []
    if "file" in s:
        lines.append(f"model      {s['file']} ({human_bytes(s['file_size'])})")
    lines.append(f"opsets     " + ", ".join(f"{k} {v}" for k, v in s["opsets"].items()))
    if s["producer"]:
        lines.append(f"producer   {s['producer']}")
    for kind in ("inputs", "outputs"):
        for v in s[kind]:
            lines.append(f"{kind[:-1]:<10} {v['name']}: {v['dtype']}[{', '.join(map(str, v['shape']))}]")
    lines.append(f"nodes      {s['nodes']}   initializers {s['initializers']}   parameters {human_count(s['params'])} ({s['params']})")
    note = f" ({s['macs_unknown_nodes']} weighted nodes without known shapes)" if s["macs_unknown_nodes"] else ""
    lines.append(f"MACs       {human_count(s['macs'])} per sample, FLOPs {human_count(s['flops'])}{note}")
    for ext in s.get("external_data", []):
        lines.append(f"external   {ext['location']} ({human_bytes(ext['size'])})")
    lines.append("")
    lines.append(table(["op_type", "count"], [[k, v] for k, v in sorted(s["ops"].items(), key=lambda kv: -kv[1])]))
    return "\n".join(lines)
