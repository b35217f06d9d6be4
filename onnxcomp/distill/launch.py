"""`onnxcomp distill --nproc N`: the same command as N processes on this machine, started by torch's
elastic launcher (what `torchrun --standalone --nproc_per_node N` runs), each a subprocess.

The workers print their own messages (rank 0 only, see distributed.py); a worker that fails ends
the others, and the launch returns that worker's exit code (2 for bad input, already reported by
the worker in one line) instead of the launcher's failure report.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m onnxcomp distill ARGS` as `nproc` workers; their exit code (0 when all succeed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the agent's warnings repeat what the failed worker said
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each worker sets its own torch threads
    try:
        elastic_launch(config, sys.executable)("-m", "onnxcomp", "distill", *args)
        return 0
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    finally:
        quiet.setLevel(level)
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def command_line(ctx, drop: tuple[str, ...]) -> list[str]:
    """The options the user gave on the command line (not defaults), back as arguments, minus `drop`."""
    import click
    from click.core import ParameterSource

    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in drop:
            continue
        if ctx.get_parameter_source(param.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = ctx.params[param.name]
        flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        if param.count:
            args += [flag] * int(value)
        elif param.is_flag:
            args += [flag] if value else param.secondary_opts[:1]
        elif param.multiple:
            for item in value:
                args += [flag, str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return args
