"""`onnxcomp compare A B`: both models on the same inputs, per-output error statistics."""

import json

import click

from onnxcomp.cli.common import dim_option


@click.command("compare")
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(dir_okay=False), help=".npz with one array per input (first axis = samples).")
@click.option("--atol", default=1e-5, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", default=1e-4, show_default=True, help="Relative tolerance.")
@click.option("--batch", default=8, show_default=True, help="Samples of generated data (when no --data).")
@click.option("--seed", default=0, show_default=True, help="Seed of generated data.")
@click.option("--max-samples", default=1024, show_default=True, help="Use at most this many samples of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@dim_option
def command(reference, candidate, data, atol, rtol, batch, seed, max_samples, as_json, dims):
    """Run REFERENCE and CANDIDATE under ONNX Runtime and compare outputs (exit 4 outside tolerance)."""
    import numpy as np

    from onnxcomp.errors import InputError, ToleranceError
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.signature import parse_dims
    from onnxcomp.measure.compare import diff_outputs, format_diffs
    from onnxcomp.measure.data import LABELS, load_data, model_inputs_only
    from onnxcomp.measure.runtime import random_inputs, run_batched, session

    ref_model = load_model(reference)
    cand_model = load_model(candidate)
    if data:
        samples = load_data(data, ref_model)
        feeds = {k: v[:max_samples] for k, v in model_inputs_only(samples).items()}
        source = f"{len(next(iter(feeds.values())))} samples from {data}"
    else:
        samples = None
        feeds = random_inputs(ref_model, parse_dims(dims), seed=seed, batch=batch)
        source = f"seeded random inputs (seed {seed}, batch {batch})"
    expected = run_batched(session(ref_model), feeds)
    got = run_batched(session(cand_model), feeds)
    missing = [name for name in expected if name not in got]
    if missing:
        raise InputError(f"{candidate}: has no output named {missing[0]!r}")
    diffs = diff_outputs(expected, got, atol, rtol)
    result = {"inputs": source, "atol": atol, "rtol": rtol, "outputs": [d.as_dict() for d in diffs]}
    if samples is not None and LABELS in samples:
        labels = samples[LABELS][:max_samples]
        first = next(iter(expected))
        if expected[first].ndim == 2:
            result["accuracy_reference"] = float(np.mean(expected[first].argmax(1) == labels))
            result["accuracy_candidate"] = float(np.mean(got[first].argmax(1) == labels))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"inputs: {source}")
        click.echo(format_diffs(diffs))
        if "accuracy_reference" in result:
            click.echo(f"accuracy: reference {result['accuracy_reference']:.4f}, "
                       f"candidate {result['accuracy_candidate']:.4f}")
    bad = [d for d in diffs if not d.within]
    if bad:
        raise ToleranceError(f"{len(bad)} of {len(diffs)} outputs outside tolerance "
                             f"(worst max abs diff {max(d.max_abs for d in bad):.3g})")
