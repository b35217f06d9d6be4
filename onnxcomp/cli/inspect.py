"""`onnxcomp inspect MODEL`: a summary of what a model holds."""

import json

import click

from onnxcomp.cli.common import dim_option, verbosity_options


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@dim_option
@verbosity_options
def command(model, as_json, dims):
    """Summarize MODEL: opsets, inputs/outputs, op histogram, parameters, MACs, files."""
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.signature import parse_dims
    from onnxcomp.inspect_model import format_summary, summarize

    summary = summarize(load_model(model, load_external_data=False), model, parse_dims(dims))
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
