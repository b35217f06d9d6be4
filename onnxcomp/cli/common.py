"""Options shared by several commands."""

from __future__ import annotations

import click

dim_option = click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE",
    help="Size of a dynamic dimension for generated inputs: a dim name (batch=8) or INPUT:AXIS (input_ids:1=128). "
         "Unset dynamic dims are 1.")
