"""`onnxcomp compress MODEL -o OUT --data TRAIN`: prune, distill, fold, quantize to a goal, in one command.

Everything a user can get wrong (paths, options, data that does not fit the model) is checked
before any work, in one line with exit 2; nothing is written then. A goal that is missed ends in
exit 4 with what was reached and why: the output is still written when it is within --max-drop
(the most compressed model that is), never when --max-drop cannot be met at all.
"""

from __future__ import annotations

import click

from onnxcomp.cli.common import verbosity_options

REPORT_SUFFIXES = (".json", ".html")


@click.command("compress")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output model.")
@click.option("--data", required=True, metavar="TRAIN",
              help="Training data, as --calib takes it (.npz: one array per model input, optional integer "
                   "'labels'; FILE.py:FUNCTION; a test-data folder); the samples must stack on axis 0.")
@click.option("--val", metavar="VAL",
              help="Held-out data, the same kinds, for the drop and the table (default: a seeded fifth of --data).")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True,
              help="Runtime the QDQ placement and the final check are for (latency is measured under ORT).")
@click.option("--latency", type=float, metavar="F",
              help="Goal: output latency at --batch at most F x the input's, measured under ONNX Runtime here.")
@click.option("--size", type=float, metavar="F", help="Goal: output file at most F x the input's bytes.")
@click.option("--prune", type=float, metavar="R", help="A fixed channel ratio instead of a goal, in [0, 1).")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default="int8", show_default=True,
              help="Static INT8 (QDQ) after pruning and folding.")
@click.option("--sparsify", metavar="S", help="Also sparsify the weights after folding (0.5, 2:4), before quantizing.")
@click.option("--max-drop", type=float, metavar="D",
              help="Most accuracy lost on --val (labels; else 1 - mean cosine); exit 4 when it cannot be met.")
@click.option("--epochs", default=6, show_default=True, help="Distillation epochs per trained candidate.")
@click.option("--batch", default=8, show_default=True, help="Batch size the latency goal is measured at.")
@click.option("--backoff", default=2, show_default=True,
              help="Extra candidates trained (one more within the goal, then towards less pruning) when --max-drop is missed.")
@click.option("--threads", default=1, show_default=True, help="CPU threads for training and for timing.")
@click.option("--seed", default=0, show_default=True)
@click.option("--report", "reports", multiple=True, type=click.Path(dir_okay=False), metavar="r.json|r.html",
              help="Write the report as JSON, or as one self-contained HTML page; repeatable.")
@verbosity_options
def command(model, output, data, val, target, latency, size, prune, quantize, sparsify, max_drop, epochs, batch,
            backoff, threads, seed, reports):
    """Compress MODEL: cleanup, prune with BN kept, distill, fold BN, quantize, check - to a goal."""
    from onnxcomp.compress import compress, save_result
    from onnxcomp.errors import ToleranceError

    _check_paths(model, output, data, val, reports)
    try:
        result = compress(model, data, val, target=target, latency=latency, size=size, prune=prune,
                          quantize=quantize, sparsify=sparsify, max_drop=max_drop, epochs=epochs, batch=batch,
                          threads=threads, seed=seed, backoff=backoff)
    except ToleranceError as exc:
        if getattr(exc, "result", None) is not None:
            _write_reports(exc.result, reports)
        raise
    save_result(result, output, forbid=model)
    click.echo(format_result(result))
    _write_reports(result, reports)
    if not result.met:
        raise ToleranceError(f"{result.message}; wrote {output} anyway (the most compressed model within max-drop)")


def _check_paths(model, output, data, val, reports) -> None:
    """One InputError for any path that cannot work, before anything is loaded or trained."""
    import os
    from pathlib import Path

    from onnxcomp.errors import InputError
    from onnxcomp.graph.save import input_files, same_file

    if not Path(model).is_file():
        raise InputError(f"{model}: no such model file")
    for name, path in (("--data", data), ("--val", val)):
        if path and ":" not in str(path) and not Path(path).exists():
            raise InputError(f"{name} {path}: no such file or folder")
    out = Path(output)
    if any(same_file(output, p) or same_file(f"{output}.data", p) for p in input_files(model)):
        raise InputError(f"{output}: refusing to overwrite the input model or its data; choose another output path")
    for name, path in (("data", data), ("val", val)):
        if path and same_file(out, path):
            raise InputError(f"{output}: refusing to overwrite the {name} file; choose another output path")
    for path in [out, *map(Path, reports)]:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise InputError(f"{path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"{path}: folder {folder} is not writable")
    for path in reports:
        if Path(path).suffix.lower() not in REPORT_SUFFIXES:
            raise InputError(f"--report {path}: name it .json or .html")
        if same_file(path, model) or same_file(path, output):
            raise InputError(f"--report {path}: refusing to overwrite a model with the report")


def _write_reports(result, reports) -> None:
    from pathlib import Path

    from onnxcomp.report import write_json

    for path in reports:
        if Path(path).suffix.lower() == ".json":
            write_json(result.as_dict(), path)
        else:
            from onnxcomp.cli.compress_page import write_page

            write_page(result.as_dict(), path)
        click.echo(f"report: {path}")


def format_result(result) -> str:
    from onnxcomp.compress import figure_rows
    from onnxcomp.report import table

    lines = [f"compress: {result.message}",
             table(["", "original", "output", "ratio"], figure_rows(result.as_dict())),
             f"wrote {result.output} in {result.seconds:.1f} s"]
    return "\n".join(lines)
