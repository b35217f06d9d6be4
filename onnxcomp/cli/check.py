"""`onnxcomp check MODEL --target T`: lint a model for a runtime; exit 3 when it would be rejected."""

import json

import click

from onnxcomp.checks.tensorrt_table import DEFAULT_RELEASE, RELEASES
from onnxcomp.cli.common import verbosity_options
from onnxcomp.pipeline.options import TARGETS

# Declared once, shared with `optimize` (which checks its output against the same table).
trt_version_option = click.option(
    "--trt-version", type=click.Choice(list(RELEASES)), default=None,
    help=f"TensorRT release whose ONNX parser support table applies (target tensorrt; default {DEFAULT_RELEASE}, "
         "the newest documented).")


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGETS), default="tensorrt", show_default=True)
@trt_version_option
@click.option("--capability", is_flag=True,
              help="Also report what the runtime would take: for tensorrt the graph cut into the subgraphs its "
                   "parser takes and the nodes needing a plugin or another runtime (like Polygraphy's inspect "
                   "capability, without TensorRT); for ort which nodes ONNX Runtime's CPU provider runs as integer "
                   "kernels and which stay float (from its own session).")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules for the target and exit.")
@verbosity_options
def command(model, target, trt_version, capability, as_json, list_rules):
    """Check MODEL against TARGET's rules: one line per finding (severity, rule id, node, why)."""
    from onnxcomp.checks import run_checks
    from onnxcomp.errors import InputError, VerificationError
    from onnxcomp.graph.load import load_model
    from onnxcomp.pipeline.rules import all_rules

    if trt_version is not None and target != "tensorrt":
        raise InputError(f"--trt-version applies to --target tensorrt, not {target}")
    if list_rules:
        for r in all_rules().values():
            if target in r.targets:
                click.echo(f"{r.id:8} {r.severity:7} {r.summary}")
        return
    import os

    loaded = load_model(model, load_external_data=False)
    findings = run_checks(loaded, target, base_dir=os.path.dirname(os.path.abspath(model)), trt_version=trt_version)
    errors = [f for f in findings if f.severity == "error"]
    report = {"target": target, "compatible": not errors, "findings": [f.as_dict() for f in findings]}
    if target == "tensorrt":
        report["trt_version"] = trt_version or DEFAULT_RELEASE
    summary = None
    if capability:
        summary = _capability(loaded, model, target, findings, trt_version)
        report["capability"] = summary[0]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for f in findings:
            click.echo(f.line())
        if summary is not None:
            click.echo(summary[1])
        warnings = sum(f.severity == "warning" for f in findings)
        name = f"tensorrt {report['trt_version']}" if target == "tensorrt" else target
        click.echo(f"{name}: {len(errors)} error(s), {warnings} warning(s)" + (" - compatible" if not errors else ""))
    if errors:
        raise VerificationError(f"{model} is not compatible with {target}: {len(errors)} error(s)")


def _capability(loaded, path, target, findings, trt_version) -> tuple[dict, str]:
    """(JSON, text) of what the runtime would take."""
    if target == "tensorrt":
        from onnxcomp.checks.capability import capability

        result = capability(loaded, findings, trt_version)
        return result.as_dict(), result.text()
    from onnxcomp.checks.ort_coverage import coverage_text, ort_coverage

    coverage = ort_coverage(path)
    return coverage, coverage_text(coverage)


# ---------- `optimize --target T` checks its output (options declared here, once) ----------

def target_check_options(command):
    """--trt-version and --allow-incompatible on `optimize`."""
    command = click.option(
        "--allow-incompatible", is_flag=True,
        help="Write the output even when the target (--target, or the pipeline's insert-qdq target) would reject "
             "it; the findings go to the report. Without it such a run exits 3 and writes nothing.")(command)
    return trt_version_option(command)


def gate_kwargs(passes, trt_version, allow_incompatible) -> dict:
    """optimize()'s check_target, trt_version and allow_incompatible: the output is checked against the
    target the pipeline names (--target sets insert-qdq's), or one InputError line on a misuse."""
    from onnxcomp.errors import InputError

    target = next((p.options.target for p in passes if getattr(p.options, "target", None)), None)
    if target is None and (trt_version or allow_incompatible):
        flag = "--trt-version" if trt_version else "--allow-incompatible"
        raise InputError(f"{flag} needs a target to check the output against: --target (with --quantize or "
                         "a pipeline that has insert-qdq)")
    if trt_version and target != "tensorrt":
        raise InputError(f"--trt-version applies to --target tensorrt, not {target}")
    return {"check_target": target, "trt_version": trt_version, "allow_incompatible": allow_incompatible}


def target_check_lines(report: dict) -> list[str]:
    """The text lines of optimize's target check (nothing when there was none)."""
    if not report:
        return []
    name = f"tensorrt {report['trt_version']}" if "trt_version" in report else report["target"]
    lines = [f"target check ({name}): {report['errors']} error(s), {report['warnings']} warning(s)"
             + (" - written anyway (--allow-incompatible)" if report["allowed_incompatible"] else "")]
    for f in [f for f in report["findings"] if f["severity"] == "error"][:10]:
        lines.append(f"  {f['rule']} {f['node']}: {f['message']}")
    return lines
