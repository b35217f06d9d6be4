"""The check `optimize --target T` runs on its output before writing it: a model the target would
reject is not written (exit 3) unless the caller allows it, and either way the report says why."""

from __future__ import annotations

from onnxcomp.checks import run_checks
from onnxcomp.checks.tensorrt_table import DEFAULT_RELEASE
from onnxcomp.errors import VerificationError


def target_check(model, target: str, trt_version: str | None = None, allow_incompatible: bool = False,
                 base_dir: str = "") -> dict:
    """The report's `target_check` for `model` against `target`; VerificationError naming the first
    error when the target rejects the model and `allow_incompatible` is false."""
    findings = run_checks(model, target, base_dir, trt_version)
    errors = [f for f in findings if f.severity == "error"]
    report = {"target": target, "compatible": not errors, "allowed_incompatible": bool(errors) and allow_incompatible,
              "errors": len(errors), "warnings": sum(f.severity == "warning" for f in findings),
              "findings": [f.as_dict() for f in findings if f.severity != "info"]}
    if target == "tensorrt":
        report["trt_version"] = trt_version or DEFAULT_RELEASE
    if errors and not allow_incompatible:
        name = f"TensorRT {report['trt_version']}" if target == "tensorrt" else target
        first = errors[0]
        raise VerificationError(f"the output would be rejected by {name}: {len(errors)} error(s), first {first.rule} "
                                f"{first.node}: {first.message} (nothing written; --allow-incompatible writes it)")
    return report
