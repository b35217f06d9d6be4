"""`onnxcomp optimize MODEL -o OUT`: run a pipeline, verify, save atomically, report."""

from __future__ import annotations

import click

from onnxcomp.cli.common import (
    data_option,
    dim_option,
    input_shapes_option,
    input_value_option,
    make_static_option,
    providers_option,
    verbosity_options,
)
from onnxcomp.cli.check import target_check_options
from onnxcomp.cli.shortcuts import shortcut_options
from onnxcomp.optimize import DEFAULT_PIPELINE
from onnxcomp.pipeline.text import PRESETS


@click.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output model (default: MODEL.opt.onnx beside it).")
@click.option("--passes", "pipeline", metavar="PIPELINE",
              help='Pipeline text, e.g. "cleanup,fold-bn,insert-qdq{method=entropy}", or a preset '
                   f'({", ".join(PRESETS)}). Default: {DEFAULT_PIPELINE}.')
@data_option("--calib", "calib", "Calibration/sample data for lossy passes.")
@data_option("--val", "val", "Held-out data for the final comparison and --verify numeric (default: --calib).")
@shortcut_options
@click.option("--verify", type=click.Choice(["none", "structure", "checker", "numeric"]), default="structure",
              show_default=True, help="Verification after every pass.")
@click.option("--atol", default=1e-5, show_default=True, help="Absolute tolerance for exact passes.")
@click.option("--rtol", default=1e-4, show_default=True, help="Relative tolerance for exact passes.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--external-data/--no-external-data", "external_data", default=None,
              help="Save weights to OUT.data beside the model (default: as the input did, or when over ~2 GB).")
@click.option("--seed", default=0, show_default=True)
@verbosity_options
@click.option("--reproducer", type=click.Path(dir_okay=False),
              help="If a pass fails verification, write the model as it was before that pass here.")
@click.option("--print-pipeline", is_flag=True, help="Print the expanded pipeline (presets, shortcut flags, options) and exit.")
@dim_option
@input_shapes_option
@make_static_option
@input_value_option
@target_check_options
@providers_option
def command(model, output, pipeline, calib, val, verify, atol, rtol, report_path, external_data, seed,
            reproducer, print_pipeline, dims, input_shapes, make_static, input_values, trt_version,
            allow_incompatible, **shortcuts):
    """Optimize MODEL with a pass pipeline; the result is verified against MODEL."""
    from pathlib import Path

    from onnxcomp.cli.shortcuts import apply_shortcuts
    from onnxcomp.errors import InputError
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.signature import parse_dims, parse_input_shapes, parse_input_values
    from onnxcomp.optimize import optimize
    from onnxcomp.pipeline.text import parse_pipeline
    from onnxcomp.report import write_json

    output = output or str(Path(model).with_suffix("")) + ".opt.onnx"
    from onnxcomp.graph.save import input_files, same_file

    # Checked before any work (by file identity: symlinks, hard links, other spellings), and again on save.
    if any(same_file(output, p) or same_file(str(output) + ".data", p) for p in input_files(model)):
        raise InputError(f"{output}: refusing to overwrite the input model or its data; choose another output path")
    if report_path and Path(report_path).resolve() == Path(model).resolve():
        raise InputError(f"{report_path}: refusing to overwrite the input model with the report")
    # Every option is checked here, before the model is even loaded.
    text = pipeline or DEFAULT_PIPELINE
    passes = apply_shortcuts(parse_pipeline(text), shortcuts, text)
    from onnxcomp.cli.check import gate_kwargs

    gate = gate_kwargs(passes, trt_version, allow_incompatible)  # the output is checked against the target
    if print_pipeline:
        from onnxcomp.pipeline.text import format_pipeline

        click.echo(format_pipeline(passes))
        return
    dims, shapes, values = parse_dims(dims), parse_input_shapes(input_shapes), parse_input_values(input_values)
    original = load_model(model)
    # Data is read and checked against the model (and --input-shapes) before any pass runs.
    result = optimize(model, output, passes, data=calib, val_data=val, verify=verify,
                      atol=atol, rtol=rtol, dims=dims, seed=seed, external_data=external_data,
                      preloaded=original, reproducer=reproducer, input_shapes=shapes, make_static=make_static,
                      input_values=values, **gate)
    click.echo(format_result(result))
    if report_path:
        write_json(result.as_dict(), report_path)
        click.echo(f"report: {report_path}")


def format_result(result) -> str:
    from onnxcomp.report import human_bytes, human_count, table

    rows = []
    for r in result.records:
        notes = ", ".join(f"{k}={v}" for k, v in r.report.stats.items() if v)
        if r.report.skipped:
            notes += (", " if notes else "") + f"skipped {len(r.report.skipped)}"
        rows.append([r.name, f"{r.seconds:.3f}", "yes" if r.report.modified else "no",
                     f"{r.before['nodes']} -> {r.after['nodes']}",
                     f"{r.before['initializers']} -> {r.after['initializers']}",
                     f"{human_count(r.before['params'])} -> {human_count(r.after['params'])}", notes or "-"])
    lines = [f"pipeline: {result.pipeline}",
             table(["pass", "seconds", "modified", "nodes", "initializers", "params", "notes"], rows)]
    for r in result.records:
        for s in r.report.skipped[:10]:
            lines.append(f"  {r.name}: left {s.name} alone: {s.reason}")
        if len(r.report.skipped) > 10:
            lines.append(f"  {r.name}: ... and {len(r.report.skipped) - 10} more (see --report)")
    v = result.validation
    if v:
        worst = max(v["outputs"], key=lambda d: d["max_abs"]) if v["outputs"] else None
        if worst:
            top1 = "" if worst["top1"] is None else f", top-1 agreement {worst['top1']:.4f}"
            lines.append(f"validation ({v['inputs']}): max abs diff {worst['max_abs']:.3g}, "
                         f"cosine {worst['cosine']:.6f}{top1}"
                         + (" - within tolerance" if v["exact_pipeline"] else ""))
        real = v.get("real_tokens")
        if real and real["outputs"]:
            worst = max(real["outputs"], key=lambda d: d["max_abs"])
            lines.append(f"validation over the real tokens ({real['positions']} of {real['of']} positions, "
                         f"{real['mask']} = 1): max abs diff {worst['max_abs']:.3g}, cosine {worst['cosine']:.6f}")
        if "accuracy_original" in v:
            lines.append(f"accuracy: original {v['accuracy_original']:.4f}, output {v['accuracy_output']:.4f}")
    ops_in, ops_out = result.input["ops"], result.output["ops"]
    changed = sorted(set(ops_in) | set(ops_out), key=lambda op: -abs(ops_in.get(op, 0) - ops_out.get(op, 0)))
    deltas = [f"{op} {ops_in.get(op, 0)}->{ops_out.get(op, 0)}" for op in changed if ops_in.get(op, 0) != ops_out.get(op, 0)]
    if deltas:
        lines.append("ops: " + ", ".join(deltas[:8]))
    from onnxcomp.cli.check import target_check_lines

    lines += target_check_lines(result.target_check)
    size_in, size_out = result.input.get("file_size"), result.output.get("file_size")
    lines.append(f"wrote {result.output.get('file', '-')} ({human_bytes(size_out)}; input {human_bytes(size_in)}) "
                 f"in {result.seconds:.2f} s")
    return "\n".join(lines)
