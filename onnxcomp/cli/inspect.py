"""`onnxcomp inspect MODEL`: a summary of what a model holds."""

import json

import click

from onnxcomp.cli.common import dim_option, input_shapes_option, verbosity_options


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@dim_option
@input_shapes_option
@verbosity_options
def command(model, as_json, dims, input_shapes):
    """Summarize MODEL: opsets, inputs/outputs, op histogram, parameters, MACs, files."""
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.signature import check_input_shapes, input_specs, parse_dims, parse_input_shapes, shape_dims
    from onnxcomp.inspect_model import format_summary, summarize

    dims, shapes = parse_dims(dims), parse_input_shapes(input_shapes)
    loaded = load_model(model, load_external_data=False)
    check_input_shapes(input_specs(loaded), shapes)
    summary = summarize(loaded, model, {**dims, **shape_dims(shapes)})
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
