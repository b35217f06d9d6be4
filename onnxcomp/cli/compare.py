"""`onnxcomp compare A B`: both models on the same inputs, per-output error statistics."""

import json

import click

from onnxcomp.cli.common import (
    data_option,
    dim_option,
    input_shapes_option,
    input_value_option,
    providers_option,
    verbosity_options,
)


@click.command("compare")
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@data_option("--data", "data", "Inputs to run both models on (default: seeded random inputs).")
@click.option("--atol", "atols", multiple=True, metavar="[OUTPUT=]TOL",
              help="Absolute tolerance: TOL for every output, OUTPUT=TOL for one (repeatable).  [default: 1e-5]")
@click.option("--rtol", "rtols", multiple=True, metavar="[OUTPUT=]TOL",
              help="Relative tolerance: TOL for every output, OUTPUT=TOL for one (repeatable).  [default: 1e-4]")
@click.option("--statistic", default="max", show_default=True, metavar="max|mean|median|pNN",
              help="Statistic of each element's error over its tolerance that must be <= 1: max (every element), "
                   "mean, median or a percentile such as p99.")
@click.option("--batch", default=8, show_default=True, help="Samples of generated data (when no --data).")
@click.option("--seed", default=0, show_default=True, help="Seed of generated data.")
@click.option("--max-samples", default=1024, show_default=True, help="Use at most this many samples of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--per-layer", is_flag=True,
              help="Compare every intermediate tensor both models compute (matched by name), in graph order: "
                   "SQNR, cosine, and the first node where the error jumps.")
@click.option("--jump-db", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --per-layer: SQNR lost at one node (dB) that counts as a jump.")
@click.option("--floor-db", default=40.0, show_default=True,
              help="With --per-layer: tensors with at least this SQNR (dB) are no jump (float16 rounding alone "
                   "leaves 60-80 dB).")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="With --per-layer: write the error along the graph here, as a self-contained HTML page.")
@dim_option
@input_shapes_option
@input_value_option
@providers_option
@verbosity_options
def command(reference, candidate, data, atols, rtols, statistic, batch, seed, max_samples, as_json, per_layer,
            jump_db, floor_db, plot, dims, input_shapes, input_values):
    """Run REFERENCE and CANDIDATE under ONNX Runtime and compare outputs (exit 4 outside tolerance)."""
    from onnxcomp.errors import InputError, ToleranceError
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.signature import (
        check_input_shapes,
        input_specs,
        parse_dims,
        parse_input_shapes,
        parse_input_values,
        shape_dims,
        with_shapes,
    )
    from onnxcomp.measure.compare import (
        DEFAULT_ATOL,
        DEFAULT_RTOL,
        Tolerances,
        check_statistic,
        compare_models,
        format_diffs,
    )
    from onnxcomp.measure.padding import over_real_tokens
    from onnxcomp.measure.runtime import check_input_values, random_inputs
    from onnxcomp.measure.samples import as_samples, generated_calls

    check_statistic(statistic)
    if plot and not per_layer:
        raise InputError("--plot draws the per-layer errors: give --per-layer too")
    dims, shapes, values = parse_dims(dims), parse_input_shapes(input_shapes), parse_input_values(input_values)
    ref_model = load_model(reference)
    cand_model = load_model(candidate)
    outputs = [o.name for o in ref_model.graph.output]
    atol, per_atol = _tolerance_option("--atol", atols, DEFAULT_ATOL, outputs)
    rtol, per_rtol = _tolerance_option("--rtol", rtols, DEFAULT_RTOL, outputs)
    tolerances = Tolerances(atol, rtol, {name: (per_atol.get(name, atol), per_rtol.get(name, rtol))
                                         for name in {**per_atol, **per_rtol}})
    specs = input_specs(ref_model)
    check_input_shapes(specs, shapes)
    check_input_values(ref_model, values)
    if data:
        feeds = as_samples(data, with_shapes(specs, shapes)).first(max_samples)
        source = f"{feeds.describe()} from {data}"
    else:
        generated = random_inputs(ref_model, {**dims, **shape_dims(shapes)}, seed=seed, batch=batch, values=values)
        feeds = generated_calls(generated, ref_model)
        source = f"seeded random inputs (seed {seed}, batch {batch})"
    if per_layer:
        _per_layer(ref_model, cand_model, feeds, source, jump_db, floor_db, plot, as_json)
        return
    comparison = compare_models(ref_model, cand_model, feeds, tolerances, statistic)
    missing = [name for name in comparison.reference if name not in comparison.candidate]
    if missing:
        raise InputError(f"{candidate}: has no output named {missing[0]!r}")
    diffs = comparison.diffs
    result = {"inputs": source, "atol": atol, "rtol": rtol, "statistic": statistic,
              "outputs": [d.as_dict() for d in diffs]}
    if comparison.accuracy is not None:
        result["accuracy_reference"], result["accuracy_candidate"] = comparison.accuracy
    real = over_real_tokens(ref_model, feeds, comparison, tolerances, statistic) if data else None
    if real is not None:
        result["real_tokens"] = real.as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"inputs: {source}")
        click.echo(format_diffs(diffs))
        if real is not None:
            click.echo(f"over the real tokens only ({real.positions} of {real.of} positions, {real.mask} = 1; "
                       "the tolerance verdict is the one above):")
            click.echo(format_diffs(real.diffs))
        if "accuracy_reference" in result:
            click.echo(f"accuracy: reference {result['accuracy_reference']:.4f}, "
                       f"candidate {result['accuracy_candidate']:.4f}")
    bad = comparison.outside
    if bad:
        raise ToleranceError(f"{len(bad)} of {len(diffs)} outputs outside tolerance "
                             f"(worst max abs diff {max(d.max_abs for d in bad):.3g})")


def _tolerance_option(flag: str, values: tuple, default: float, outputs: list[str]) -> tuple[float, dict]:
    """(global tolerance, {output: tolerance}) from repeated `TOL` / `OUTPUT=TOL` values."""
    from onnxcomp.errors import InputError

    every, per_output = default, {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            tol = float(number)
        except ValueError:
            raise InputError(f"{flag} {value}: {number!r} is not a number") from None
        if not tol >= 0 or tol == float("inf"):
            raise InputError(f"{flag} {value}: a tolerance is a finite number >= 0")
        if not name:
            every = tol
        elif name in outputs:
            per_output[name] = tol
        else:
            raise InputError(f"{flag} {value}: the reference model has no output {name!r} "
                             f"(outputs: {', '.join(outputs)})")
    return every, per_output


def _per_layer(ref_model, cand_model, feeds, source: str, jump_db: float, floor_db: float, plot: str | None,
               as_json: bool) -> None:
    """`--per-layer`: every matching intermediate tensor, in graph order (onnxcomp.measure.layers)."""
    from pathlib import Path

    from onnxcomp.measure.layers import first_jump, format_layers, layer_errors, plot_html

    rows = layer_errors(ref_model, cand_model, feeds, jump_db, floor_db)
    jump = first_jump(rows)
    result = {"inputs": source, "jump_db": jump_db, "floor_db": floor_db, "tensors": [r.as_dict() for r in rows],
              "first_jump": None if jump is None else jump.tensor}
    if plot:
        Path(plot).write_text(plot_html(rows, f"per-layer error: {len(rows)} tensors ({source})"))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"inputs: {source}")
    click.echo(format_layers(rows))
    click.echo("first jump: " + ("none" if jump is None else
                                 f"{jump.tensor} ({jump.op} {jump.node}): {jump.drop_db:.1f} dB lost there, "
                                 f"SQNR {jump.sqnr_db:.1f} dB"))
    if plot:
        click.echo(f"plot: {plot}")
