"""Rules every target shares: opsets and operator domains."""

from onnxcomp.pipeline.options import TARGETS
from onnxcomp.pipeline.rules import rule

_KNOWN_DOMAINS = {"ai.onnx", "", "com.microsoft", "ai.onnx.ml"}


@rule("GEN-01", targets=TARGETS, severity="error", summary="default-domain opset is supported")
def opset_supported(index):
    version = index.opset.get("ai.onnx")
    if version is None:
        yield ("model", "no default-domain (ai.onnx) opset is declared")
    elif version < 10:
        yield ("model", f"opset {version} is older than 10, which onnxcomp and current runtimes support")


@rule("GEN-02", targets=TARGETS, severity="warning", summary="operators come from known domains")
def known_domains(index):
    for node in index.graph.node:
        domain = node.domain or "ai.onnx"
        if domain not in _KNOWN_DOMAINS:
            yield (node.name or node.op_type, f"{node.op_type} is in custom domain {domain!r}; the target needs a plugin")
