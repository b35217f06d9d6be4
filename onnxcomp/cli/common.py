"""Options shared by several commands."""

from __future__ import annotations

import functools

import click

dim_option = click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE",
    help="Size of a dynamic dimension for generated inputs: a dim name (batch=8) or INPUT:AXIS (input_ids:1=128). "
         "Unset dynamic dims are 1.")

# Sample data: every command that takes some accepts the same sources (onnxcomp.measure.samples).
DATA_METAVAR = "FILE.npz|FILE.npy|FILE.py:FN|DIR"
DATA_FORMS = ("FILE.npz (one array per input, axis 0 = samples, optional 'labels'), FILE.npy (one-input models), "
              "FILE.py:FUNCTION (returns feed dicts, one model call each) or a folder of test_data_set_*/input_*.pb.")


def data_option(flag: str, dest: str, what: str, required: bool = False):
    """A sample-data option (`--calib`, `--val`, `--data`): `what` it is for, then the accepted forms."""
    return click.option(flag, dest, required=required, metavar=DATA_METAVAR, help=f"{what} {DATA_FORMS}")


input_shapes_option = click.option(
    "--input-shapes", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
    help="Fix an input's dynamic dims for this run (generated data, shape inference, verification, how data is "
         "cut into calls), e.g. x:1,3,320,320; repeatable, or several in one value (x:1,3,320,320,mask:1,320).")

make_static_option = click.option(
    "--make-static", is_flag=True,
    help="Write the sizes --input-shapes and --dim give into the output model's inputs (and the output and "
         "intermediate shapes shape inference then finds).")

input_value_option = click.option(
    "--input-value", "input_values", multiple=True, metavar="NAME=VALUE",
    help="Pin an input in generated data: every element VALUE (sr=16000, a scalar or a fill value); repeatable.")


def verbosity_options(command):
    """-v/--verbose (repeatable) and -q/--quiet on a command: they set how much the `onnxcomp` logger
    shows on stderr before the command runs. Results go to stdout either way, so pipes can parse them."""

    @click.option("-v", "--verbose", count=True, help="More messages on stderr (-v: debug details).")
    @click.option("-q", "--quiet", is_flag=True,
                  help="No progress messages or bars, only warnings and errors; results still print.")
    @functools.wraps(command)
    def configured(*args, verbose, quiet, **kwargs):
        from onnxcomp.progress import configure

        configure(-1 if quiet else verbose)
        return command(*args, **kwargs)

    return configured


def providers_option(command):
    """--providers on a command that runs models: every ONNX Runtime session it builds (calibration,
    verification, comparison, latency) uses these execution providers, set once before it runs."""

    @click.option("--providers", default="cpu", show_default=True, metavar="LIST",
                  help="ONNX Runtime execution providers in order of preference, comma-separated: ORT's names "
                       "(CUDAExecutionProvider) or short ones (cuda, tensorrt, openvino, dml, cpu). Each must be "
                       "installed (CUDA and TensorRT come with onnxruntime-gpu: pip install 'onnxcomp[gpu]').")
    @functools.wraps(command)
    def configured(*args, providers, **kwargs):
        from onnxcomp.measure.runtime import set_providers

        set_providers(providers.split(","))
        return command(*args, **kwargs)

    return configured
