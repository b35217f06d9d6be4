"""The `onnxcomp` command line.

Each command lives in its own module and is imported only when it runs, so `--help` is
instant and heavy imports (onnxruntime, torch) happen only where needed. User mistakes
end in one line on stderr and a documented exit code; tracebacks only with --debug.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

EXIT_CODES = """Exit codes: 0 ok, 1 internal error, 2 usage or bad input,
3 verification failed, 4 outputs outside tolerance or accuracy budget missed."""

# name -> (module, help); a module that is not present yet is simply not listed.
COMMANDS = {
    "optimize": ("onnxcomp.cli.optimize", "Run a pass pipeline on a model, verify it and save the result."),
    "inspect": ("onnxcomp.cli.inspect", "Summarize a model: opsets, I/O, ops, parameters, MACs."),
    "compare": ("onnxcomp.cli.compare", "Run two models on the same inputs and compare their outputs."),
    "passes": ("onnxcomp.cli.passes", "List every registered pass with its options."),
    "check": ("onnxcomp.cli.check", "Lint a model for a target runtime (tensorrt, ort)."),
    "distill": ("onnxcomp.cli.distill", "Train a student from a teacher with knowledge distillation."),
    "calibrate": ("onnxcomp.cli.calibrate", "Collect calibration statistics on a shard of data, or merge shards' files."),
    "compress": ("onnxcomp.cli.compress", "Prune, distill, fold and quantize to a latency or size goal in one command."),
}


# Commands that run models. ONNX Runtime comes from either of two wheels (see
# onnxcomp.measure.runtime.require_runtime), so these check for it once their options are parsed:
# `onnxcomp optimize -h` works without it, `onnxcomp optimize m.onnx` says in one line what to install.
RUNS_MODELS = ("optimize", "compare", "distill", "calibrate")


def _available(name: str) -> bool:
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def _checking_runtime(command: click.Command) -> click.Command:
    """A copy of `command` whose callback first checks that ONNX Runtime is installed."""
    import copy
    import functools

    run = command.callback

    @functools.wraps(run)
    def callback(*args, **kwargs):
        from onnxcomp.measure.runtime import require_runtime

        require_runtime()
        return run(*args, **kwargs)

    checked = copy.copy(command)
    checked.callback = callback
    return checked


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(name):
            return None
        command = importlib.import_module(COMMANDS[name][0]).command
        return _checking_runtime(command) if name in RUNS_MODELS else command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


# Distributions whose versions a bug report needs: label -> the names it may be installed under.
DEPENDENCIES = {
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx-graphsurgeon": ("onnx-graphsurgeon", "onnx_graphsurgeon"),
    "numpy": ("numpy",),
    "torch": ("torch",),
}


def versions() -> list[str]:
    """`onnxcomp X`, Python, then each dependency's installed version, read from package metadata
    (nothing is imported, so this is instant and works when torch is absent)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(names) -> str:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return "not installed"

    lines = [f"onnxcomp {installed(('onnxcomp',))}", f"python {platform.python_version()}"]
    return lines + [f"{label} {installed(names)}" for label, names in DEPENDENCIES.items()]


def _print_versions(ctx, param, value) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo("\n".join(versions()))
    ctx.exit()


@click.group(cls=LazyGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_versions,
              help="Show the versions of onnxcomp, Python and its dependencies, and exit.")
@click.pass_context
def cli(ctx, debug):
    """onnxcomp: compress and verify ONNX models (quantize, prune, sparsify, distill)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C so temporary files are removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    import signal

    from onnxcomp.errors import OnnxcompError, first_line

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(signum, _raise_interrupted)
        except (ValueError, OSError):  # not the main thread (embedded use): keep the defaults
            pass

    try:
        # Not cli.main(): click turns Ctrl-C into Abort after printing a blank line; here an
        # interrupt reaches the handler below with its signal number.
        with cli.make_context("onnxcomp", argv) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("onnxcomp: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"onnxcomp: {exc.format_message()}", err=True)
        sys.exit(2)
    except OnnxcompError as exc:
        if debug:
            raise
        click.echo(f"onnxcomp: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        click.echo(f"onnxcomp: interrupted by {signal.Signals(signum).name}; "
                   "no partial output or temporary file is left", err=True)
        sys.exit(128 + signum)
    except MemoryError:
        click.echo("onnxcomp: out of memory", err=True)
        sys.exit(1)
    except Exception as exc:  # internal error: still one line unless --debug
        if debug:
            raise
        click.echo(f"onnxcomp: internal error: {type(exc).__name__}: {first_line(exc, '')} "
                   "(run with --debug for the traceback)", err=True)
        sys.exit(1)
