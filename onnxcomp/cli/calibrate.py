"""`onnxcomp calibrate MODEL --data SHARD -o s1.calib` and `onnxcomp calibrate --merge s1.calib ... -o all.calib`.

Calibration split over processes or machines by any job runner (xargs -P, a Slurm array, Ray or
Dask tasks): each shard's activation statistics go to a file, the files merge exactly, and
`optimize --quantize int8 --calib-stats all.calib` quantizes from them. A shard collects what
insert-qdq would collect inside `optimize` given the same pipeline flags: the same passes run
first, the same tensors are fetched together, the data is cut into the same batches. So the merge
equals one calibration over the union of the shards (split at multiples of the batch size), and
the quantized model equals the one `--calib UNION` gives, byte for byte.

`--export-trt cache.txt` / `--export-ort calibration.json` also write the ranges insert-qdq would
choose as a TensorRT calibration cache / ORT's calibration table (passes/qdq/calibration/cache_formats.py),
for trtexec or ORT's TensorRT provider; `optimize --calib-cache FILE` reads either back.
"""

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
from onnxcomp.cli.shortcuts import SHORTCUTS, click_kwargs, param_name
from onnxcomp.optimize import DEFAULT_PIPELINE
from onnxcomp.pipeline.pass_base import Pass, PassReport

# optimize's flags that shape the graph and the placement insert-qdq calibrates; not the ones that
# pick another format (--quantize), search a budget on samples (--max-drop) or read statistics.
PIPELINE_FLAGS = tuple(f for f in SHORTCUTS if f not in ("--quantize", "--max-drop", "--calib-stats", "--calib-cache"))


def pipeline_flags(command):
    for flag in reversed(PIPELINE_FLAGS):
        command = click.option(flag, param_name(flag), **click_kwargs(flag))(command)
    return command


@click.command("calibrate")
@click.argument("inputs", nargs=-1, required=True, metavar="MODEL | --merge FILE...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Statistics file to write (e.g. shard1.calib).")
@data_option("--data", "data", "This shard's calibration data.")
@click.option("--merge", is_flag=True,
              help="Merge the statistics files given as arguments into one: equal to one run over all their data.")
@click.option("--export-trt", "export_trt", type=click.Path(dir_okay=False),
              help="Also write the ranges insert-qdq would choose (--calib-method, --target) as a TensorRT "
                   "calibration cache (for trtexec --calib; symmetric: use with --target tensorrt).")
@click.option("--export-ort", "export_ort", type=click.Path(dir_okay=False),
              help="Also write those ranges as ONNX Runtime's calibration table (calibration.json).")
@click.option("--other-shapes", is_flag=True,
              help="With --merge: accept parts whose samples differ in shape (sequences padded per shard).")
@click.option("--passes", "pipeline", metavar="PIPELINE",
              help=f"The pipeline optimize will run (default: {DEFAULT_PIPELINE},insert-qdq); its passes before "
                   "insert-qdq run first, and insert-qdq's options choose the tensors. Give calibrate the same "
                   "--passes and flags as optimize.")
@pipeline_flags
@dim_option
@input_shapes_option
@make_static_option
@input_value_option
@providers_option
@verbosity_options
def command(inputs, output, data, merge, export_trt, export_ort, other_shapes, pipeline, dims, input_shapes,
            make_static, input_values, **flags):
    """Collect calibration statistics of MODEL on one shard of data, or merge shards' statistics files."""
    from onnxcomp.errors import InputError

    if merge:
        given = [name for name, value in [("--data", data), ("--passes", pipeline), ("--dim", dims),
                                          ("--input-shapes", input_shapes), ("--make-static", make_static),
                                          ("--input-value", input_values), ("--export-trt", export_trt),
                                          ("--export-ort", export_ort)] if value]
        given += [flag for flag in PIPELINE_FLAGS if flags.get(param_name(flag)) not in (None, False, ())]
        if given:
            raise InputError(f"--merge combines statistics files; {given[0]} belongs to calibrating a shard")
        stats, written = merge_files(list(inputs), output, other_shapes)
        click.echo(f"merged {len(inputs)} files: {len(stats)} tensors, {stats.samples} samples in "
                   f"{stats.batches} batches; wrote {written}")
        return
    if len(inputs) != 1:
        raise InputError(f"calibrate takes one MODEL, got {len(inputs)} arguments (to merge statistics files, "
                         "add --merge)")
    if other_shapes:
        raise InputError("--other-shapes applies to --merge only")
    if data is None:
        raise InputError("calibrate needs --data: this shard's calibration samples")
    from onnxcomp.graph.signature import parse_dims, parse_input_shapes, parse_input_values

    exports = {"trt": export_trt, "ort": export_ort}
    for path in filter(None, exports.values()):
        if any(same_path(path, other) for other in [output, *inputs]) or export_trt == export_ort:
            raise InputError(f"{path}: an export must not overwrite the model, the statistics file or the other export")
    stats, written = calibrate_shard(inputs[0], data, output, pipeline, flags, dims=parse_dims(dims),
                            input_shapes=parse_input_shapes(input_shapes), make_static=make_static,
                            input_values=parse_input_values(input_values), exports=exports)
    runs = f"{stats.batches} batch" + ("" if stats.batches == 1 else "es")
    cut = f"{runs} of up to {stats.batch_size}" if stats.batch_size else f"{stats.batches} calls"
    click.echo(f"calibrated {len(stats)} tensors through {stats.model['pipeline']} on {stats.samples} samples "
               f"({cut}); wrote {written}")


def calibrate_shard(model: str, data, output: str, pipeline: str | None = None, flags: dict | None = None,
                    exports: dict | None = None, **run):
    """(statistics, path written): `model`'s statistics on `data` as insert-qdq in `optimize --passes
    PIPELINE FLAGS` would collect them, saved at `output` (`.npz` added when it has no suffix).
    `run`: optimize()'s dims, input_shapes, make_static, input_values. `exports` {"trt": path, "ort": path}:
    the ranges insert-qdq would choose from these statistics, also written in those tools' formats."""
    from onnxcomp.cli.shortcuts import apply_shortcuts
    from onnxcomp.errors import InputError
    from onnxcomp.graph.save import input_files, same_file
    from onnxcomp.optimize import optimize
    from onnxcomp.pipeline.prepare import required_opset
    from onnxcomp.pipeline.text import format_pipeline, parse_pipeline

    if any(same_file(output, p) for p in input_files(model)):
        raise InputError(f"{output}: refusing to overwrite the input model; choose another output path")
    text = pipeline or DEFAULT_PIPELINE
    parsed = parse_pipeline(text)
    values = dict(flags or {})
    if not any(p.name == "insert-qdq" for p in parsed):
        values["quantize"] = "int8"  # as optimize --quantize int8 adds it
    passes = apply_shortcuts(parsed, values, text)
    at = next(i for i, p in enumerate(passes) if p.name == "insert-qdq")
    collector = CollectStats(passes[at].options, format_pipeline(passes[:at + 1]), required_opset(passes))
    result = optimize(model, None, passes[:at] + [collector], data=data, check_output=False, **run)
    stats = result.records[-1].report.details["calibrate"]["stats"]
    written = str(stats.save(output))
    for kind, path in (exports or {}).items():
        if path:
            export_ranges(stats, passes[at].options, kind, path)
            written += f", {path}"
    return stats, written


def export_ranges(stats, options, kind: str, path: str) -> str:
    """Write the ranges insert-qdq{options} chooses from `stats` (per tensor, before range groups are
    joined) as a TensorRT cache (kind "trt") or ORT's calibration table ("ort")."""
    from onnxcomp.passes.qdq.calibration import choose_ranges
    from onnxcomp.passes.qdq.calibration.cache_formats import write_ort_table, write_trt_cache
    from onnxcomp.passes.qdq.numerics import activation_format

    symmetric = activation_format(options.target or "ort").symmetric
    chosen = choose_ranges(stats, method=options.method, percentile=options.percentile, symmetric=symmetric, bits=8)
    ranges = {name: (r.lo, r.hi) for name, r in chosen.items()}
    return (write_trt_cache if kind == "trt" else write_ort_table)(ranges, path)


def same_path(a: str, b: str) -> bool:
    from pathlib import Path

    return Path(a).resolve() == Path(b).resolve()


class CollectStats(Pass):
    """Stands where insert-qdq would run: collects the statistics it would, changes nothing."""

    name = "calibrate"
    exact = True

    def __init__(self, options, pipeline: str, min_opset: int):
        super().__init__(options)
        self.pipeline = pipeline
        self.min_opset = min_opset  # the whole pipeline's, so the model is converted as optimize converts it

    def run(self, graph, ctx) -> PassReport:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.passes.qdq.calibration import collect_stats
        from onnxcomp.passes.qdq.calibration.stats import data_signature
        from onnxcomp.passes.qdq.insert_qdq import calibrated_tensors, histogram_bins, with_default_method

        opts = with_default_method(self.options, self.options.target or ctx.target or "ort")
        tensors = calibrated_tensors(graph, opts, ctx)
        if not tensors:
            from onnxcomp.errors import InputError

            raise InputError(f"calibrate: insert-qdq finds nothing to quantize in this model ({self.pipeline})")
        model = to_model(graph)
        stats = collect_stats(model, ctx.data, tensors=tensors, batch_size=opts.calib_batch_size,
                              num_bins=histogram_bins(opts.method), progress=ctx.progress)
        stats.describe_model(model, self.pipeline)
        stats.inputs = data_signature(ctx.data)
        return PassReport(stats={"tensors": len(stats), "samples": stats.samples},
                          details={"calibrate": {"stats": stats}})


def merge_files(paths: list[str], output: str, other_shapes: bool = False):
    """(merged statistics, path written): the statistics in `paths` merged into one file at `output`;
    nothing is written unless every part loads and belongs with the first (else one InputError line
    naming the file)."""
    import functools

    from onnxcomp.errors import InputError
    from onnxcomp.graph.save import same_file
    from onnxcomp.passes.qdq.calibration import CalibrationStats
    from onnxcomp.passes.qdq.calibration.stats import merge_problem
    from onnxcomp.progress import logger

    if any(same_file(output, p) for p in paths):
        raise InputError(f"{output}: refusing to overwrite one of the files being merged")
    parts = [CalibrationStats.load(p) for p in paths]
    for path, part in zip(paths[1:], parts[1:]):
        problem = merge_problem(parts[0], part, other_shapes=other_shapes)
        if problem:
            raise InputError(f"{path}: cannot merge with {paths[0]}: {problem}")
    sizes = {p.batch_size for p in parts}
    uneven = [path for path, p in zip(paths[:-1], parts[:-1]) if p.batch_size and p.samples % p.batch_size]
    if len(sizes) > 1 or uneven:
        why = (f"{uneven[0]} holds {parts[paths.index(uneven[0])].samples} samples, not a multiple of its batch "
               f"size" if uneven else f"the parts were cut into batches of {', '.join(map(str, sorted(sizes)))}")
        logger.warning(f"merging exactly, but {why}: one run over the union would cut other batches, and ONNX "
                       "Runtime may round a last bit differently for other batch shapes")
    merged = functools.reduce(lambda a, b: a.merge(b, other_shapes=other_shapes), parts)
    return merged, merged.save(output)
