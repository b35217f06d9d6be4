"""Options shared by several commands."""

from __future__ import annotations

import functools

import click

dim_option = click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE",
    help="Size of a dynamic dimension for generated inputs: a dim name (batch=8) or INPUT:AXIS (input_ids:1=128). "
         "Unset dynamic dims are 1.")


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
