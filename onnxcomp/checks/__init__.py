"""`onnxcomp check`'s runner: every registered lint rule for a target, findings sorted by severity.

Rules are declared with `onnxcomp.pipeline.rules.rule`; each technique's wing under passes/ owns
the rules of its own format (qdq: TRT-/ORT-, sparsify: SPARSE-), general.py here holds the
rules that hold for every model (GEN-), and tensorrt_rules.py / tensorrt_limits.py what
TensorRT's ONNX parser takes per release (TRT-30..39, from the table in tensorrt_table.py).
"""

from __future__ import annotations

from onnxcomp.checks import general, tensorrt_limits, tensorrt_rules  # noqa: F401  (register GEN-, TRT-3x)
from onnxcomp.pipeline.rules import SEVERITIES, Finding, ModelIndex, all_rules


def run_checks(model, target: str, base_dir: str = "", trt_version: str | None = None) -> list[Finding]:
    """Findings of every rule for `target`; `base_dir` is the model's folder when its weights
    are external data that was not loaded; `trt_version` picks the TensorRT release whose parser
    the TRT-3x rules apply (default: the newest in the table)."""
    index = ModelIndex(model, base_dir)
    index.cache[tensorrt_rules.RELEASE_KEY] = trt_version
    findings: list[Finding] = []
    for r in all_rules().values():
        if target not in r.targets:
            continue
        for item in r.fn(index) or ():
            if isinstance(item, Finding):
                findings.append(item)
            else:
                node, message, *severity = item
                findings.append(Finding(r.id, severity[0] if severity else r.severity, node, message))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.rule, f.node))
