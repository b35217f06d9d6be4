"""What ONNX Runtime's CPU provider makes of a model, read from its own session: the nodes it runs
as integer kernels after its graph optimizations (QDQ groups fused into QLinearConv, QGemm ...),
the compute nodes that stay float, and the Q/DQ nodes left as conversions between the two.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

# Compute ops that run on float data (ORT's fused variants included) and the Q/DQ conversions.
_FLOAT_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul",
                  "NhwcFusedConv", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN", "Einsum"}
_CONVERSIONS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _integer_kernel(op: str) -> bool:
    return op.startswith("QLinear") or op.startswith("QGemm") or op.endswith("Integer") or op in (
        "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM", "MatMulNBits")


def ort_coverage(model: onnx.ModelProto | str | Path) -> dict:
    """{"provider", "integer_nodes", "float_nodes", "conversions", "ops"} of ORT's optimized graph
    for a ModelProto or a path (a path keeps external weights where they are). InputError, one
    line, when ONNX Runtime cannot load the model."""
    from onnxcomp.errors import InputError, first_line
    from onnxcomp.measure.runtime import require_runtime

    require_runtime()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        from onnxcomp.graph.weights import staged

        with staged(model) as path:  # weights kept on disk are read where they are (graph/weights.py)
            try:
                source = str(path) if path else model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
                ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None
        optimized = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    nodes = list(optimized.graph.node)
    return {
        "provider": "CPUExecutionProvider",
        "integer_nodes": [n.name or n.output[0] for n in nodes if _integer_kernel(n.op_type)],
        "float_nodes": [n.name or n.output[0] for n in nodes if n.op_type in _FLOAT_COMPUTE],
        "conversions": sum(n.op_type in _CONVERSIONS for n in nodes),
        "ops": dict(Counter(n.op_type for n in nodes).most_common()),
    }


def coverage_text(coverage: dict) -> str:
    integer, floating = len(coverage["integer_nodes"]), len(coverage["float_nodes"])
    ops = ", ".join(f"{op} {n}" for op, n in coverage["ops"].items())
    lines = [f"ONNX Runtime ({coverage['provider']}) after its graph optimizations: {integer} integer-kernel node(s), "
             f"{floating} float compute node(s), {coverage['conversions']} Q/DQ conversion(s)", f"ops: {ops}"]
    if floating and integer:
        lines.append("float: " + ", ".join(coverage["float_nodes"][:10]) + (" ..." if floating > 10 else ""))
    return "\n".join(lines)
