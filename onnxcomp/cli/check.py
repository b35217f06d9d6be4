"""`onnxcomp check MODEL --target T`: lint a model for a runtime; exit 3 when it would be rejected."""

import json

import click

from onnxcomp.cli.common import verbosity_options
from onnxcomp.pipeline.options import TARGETS


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", type=click.Choice(TARGETS), default="tensorrt", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules for the target and exit.")
@verbosity_options
def command(model, target, as_json, list_rules):
    """Check MODEL against TARGET's rules: one line per finding (severity, rule id, node, why)."""
    from onnxcomp.checks import run_checks
    from onnxcomp.errors import VerificationError
    from onnxcomp.graph.load import load_model
    from onnxcomp.pipeline.rules import all_rules

    if list_rules:
        for r in all_rules().values():
            if target in r.targets:
                click.echo(f"{r.id:8} {r.severity:7} {r.summary}")
        return
    import os

    findings = run_checks(load_model(model, load_external_data=False), target,
                          base_dir=os.path.dirname(os.path.abspath(model)))
    errors = [f for f in findings if f.severity == "error"]
    if as_json:
        click.echo(json.dumps({"target": target, "compatible": not errors,
                               "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            click.echo(f.line())
        warnings = sum(f.severity == "warning" for f in findings)
        click.echo(f"{target}: {len(errors)} error(s), {warnings} warning(s)"
                   + (" - compatible" if not errors else ""))
    if errors:
        raise VerificationError(f"{model} is not compatible with {target}: {len(errors)} error(s)")
