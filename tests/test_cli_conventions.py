"""Conventions every command keeps: -h/--help, -V/--version, -v/-q, messages on stderr and results on
stdout, no progress bar unless a person is watching, and the documented exit codes (1, 3, 4)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

from onnxcomp.cli import main
from onnxcomp.progress import bar, configure, logger

COMMANDS = ["optimize", "inspect", "compare", "passes", "check", "distill"]
BAR_MARKS = ("it/s", "batch/s", "%|", "\r", "\u2588")  # what a tqdm bar would leave in the stream


def cli(*args, cwd=None):
    """The installed entry point in a fresh process; stderr is a pipe, not a terminal."""
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ""})


def in_process(capsys, *args):
    """main() in this process (fast); returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def restore_logger():
    """The CLI configures the process-wide `onnxcomp` logger; leave it as the next test expects."""
    state = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate = state[2]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_short_and_long_help_on_every_command(capsys, command):
    words = [command] if command else []
    code, short, err = in_process(capsys, *words, "-h")
    assert code == 0, err
    assert short.startswith("Usage: onnxcomp" + (f" {command}" if command else ""))
    code, long, _ = in_process(capsys, *words, "--help")
    assert code == 0 and long == short
    if command:
        assert "-v, --verbose" in short and "-q, --quiet" in short
    else:
        assert "-V, --version" in short and all(c in short for c in COMMANDS)


def test_version_names_onnxcomp_and_its_dependencies_without_importing_torch():
    code = ("import sys\nfrom onnxcomp.cli import main\n"
            "try:\n    main(['-V'])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"onnxcomp {version('onnxcomp')}"
    for name in ("onnx", "onnxruntime", "numpy"):
        assert f"{name} {version(name)}" in lines
    assert f"onnx-graphsurgeon {version('onnx_graphsurgeon')}" in lines
    torch_line = next(line for line in lines if line.startswith("torch "))
    assert torch_line.split(" ", 1)[1] in (_installed("torch"), "not installed")
    assert lines[-1] == "torch not imported"
    assert cli("--version").stdout.splitlines() == lines[:-1]


def _installed(name: str) -> str:
    try:
        return version(name)
    except Exception:
        return "not installed"


def test_quiet_silences_progress_and_verbose_adds_debug_while_results_stay_on_stdout(digits_cnn, tmp_path):
    runs = {flag: cli("optimize", digits_cnn, "-o", tmp_path / "out.onnx", *([flag] if flag else []))
            for flag in (None, "-q", "-v")}
    for r in runs.values():
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("pipeline: cleanup,fold-bn\n") and "wrote " in r.stdout
        assert not any(line.startswith("...") for line in r.stdout.splitlines())
    default, quiet, verbose = runs[None].stderr, runs["-q"].stderr, runs["-v"].stderr
    assert "... running fold-bn" in default and "verifying" not in default
    assert quiet == ""
    assert "... running fold-bn" in verbose and "... fold-bn: verifying (structure)" in verbose
    assert set(default.splitlines()) < set(verbose.splitlines())
    # Results do not depend on verbosity (timings aside).
    untimed = {flag: re.sub(r"\d+\.\d+", "#", r.stdout) for flag, r in runs.items()}
    assert untimed[None] == untimed["-q"] == untimed["-v"]


def test_calibration_reports_on_stderr_without_bar_characters_when_not_a_terminal(digits_cnn, models_dir, tmp_path):
    args = ("optimize", digits_cnn, "-o", tmp_path / "q.onnx", "--quantize", "int8",
            "--calib", models_dir / "digits_calib.npz")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "... calibration: " in r.stderr and "int8_nodes=" in r.stdout
    assert not any(mark in r.stderr + r.stdout for mark in BAR_MARKS)
    quiet = cli(*args, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and "int8_nodes=" in quiet.stdout


@pytest.mark.parametrize("args", [("inspect", "{m}", "--json"), ("passes", "--json"),
                                  ("check", "{m}", "--json"), ("compare", "{m}", "{m}", "--json")])
def test_json_results_alone_on_stdout_even_when_verbose(capsys, digits_cnn, args):
    code, out, err = in_process(capsys, *[a.format(m=digits_cnn) for a in args], "-v")
    assert code == 0, err
    json.loads(out)  # nothing but the result: a pipeline can parse it


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_on_a_terminal_unless_quiet(monkeypatch):
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    configure(0)
    assert list(bar(range(3), "calibration", total=3, unit="batch")) == [0, 1, 2]
    assert "calibration:" in screen.getvalue() and "0/3" in screen.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    configure(-1)
    assert list(bar(range(3), "calibration", total=3)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    assert logger.getEffectiveLevel() == logging.WARNING



def test_a_slow_loop_without_a_terminal_logs_a_heartbeat_line_and_a_fast_one_stays_silent(monkeypatch):
    from onnxcomp import progress

    log = io.StringIO()  # not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", log)
    configure(0)
    assert list(bar(range(5), "insert-qdq: sensitivity", total=5)) == list(range(5))
    assert log.getvalue() == ""  # fast: nothing
    clock = iter(range(0, 1000, 20))  # every step takes 20 s
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    assert list(bar(range(5), "insert-qdq: sensitivity", total=5)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert lines and all(line.startswith("... insert-qdq: sensitivity: ") for line in lines)
    assert "/5 done" in lines[0] and not any(mark in log.getvalue() for mark in BAR_MARKS)
    configure(-1)
    log.truncate(0)
    assert list(bar(range(5), "quiet", total=5)) == list(range(5)) and "quiet" not in log.getvalue()

# Test-only passes, registered in a child process (the registry is process-wide), then the real main().
BROKEN_PASSES = '''
import sys

import numpy as np
import onnx_graphsurgeon as gs

import onnxcomp
from onnxcomp.cli import main


@onnxcomp.register_pass
class DanglingOutputPass(onnxcomp.Pass):
    """Test only: points the graph output at a tensor that nothing produces."""

    name = "test-dangling-output"

    def run(self, graph, ctx):
        graph.outputs[0] = gs.Variable("dangling", dtype=np.float32)
        return onnxcomp.PassReport(modified=True)


@onnxcomp.register_pass
class UnknownOpPass(onnxcomp.Pass):
    """Test only: renames a node's op to one no opset defines (only the ONNX checker notices)."""

    name = "test-unknown-op"

    def run(self, graph, ctx):
        graph.nodes[0].op = "NoSuchOperator"
        return onnxcomp.PassReport(modified=True)


@onnxcomp.register_pass
class CrashingPass(onnxcomp.Pass):
    """Test only: a bug inside a pass."""

    name = "test-crash"

    def run(self, graph, ctx):
        raise RuntimeError("boom inside a test pass")


main(sys.argv[1:])
'''


@pytest.fixture()
def with_broken_passes(tmp_path):
    script = tmp_path / "with_broken_passes.py"
    script.write_text(BROKEN_PASSES)

    def run(*args):
        return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})

    return run


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("pipeline, verify, why", [
    ("cleanup,test-dangling-output", "structure", "graph output 'dangling' is produced by nothing"),
    ("test-unknown-op", "checker", "ONNX checker"),
])
def test_exit_3_when_a_pass_breaks_the_graph(with_broken_passes, digits_cnn, tmp_path, pipeline, verify, why):
    out = tmp_path / "out.onnx"
    r = with_broken_passes("optimize", digits_cnn, "-o", out, "--passes", pipeline, "--verify", verify, "-q")
    assert r.returncode == 3, r.stdout + r.stderr
    line = _one_line(r.stderr)
    assert line.startswith("onnxcomp: pass ") and pipeline.split(",")[-1] in line and why in line
    assert r.stdout == "" and not out.exists()


def test_exit_1_on_an_internal_error(with_broken_passes, digits_cnn, tmp_path):
    out = tmp_path / "out.onnx"
    r = with_broken_passes("optimize", digits_cnn, "-o", out, "--passes", "test-crash", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    assert _one_line(r.stderr) == ("onnxcomp: internal error: RuntimeError: boom inside a test pass "
                                   "(run with --debug for the traceback)")
    assert not out.exists()
    debug = with_broken_passes("--debug", "optimize", digits_cnn, "-o", out, "--passes", "test-crash", "-q")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "boom inside a test pass" in debug.stderr


def test_exit_4_when_max_drop_cannot_be_met(digits_cnn, models_dir, tmp_path):
    # Without labels the drop is 1 - cosine, which INT8 never brings to 1e-9, whatever stays float.
    calib = np.load(models_dir / "digits_calib.npz")
    unlabelled = tmp_path / "calib.npz"
    np.savez(unlabelled, input=calib["input"][:32])
    out = tmp_path / "out.onnx"
    r = cli("optimize", digits_cnn, "-o", out, "--quantize", "int8", "--calib", unlabelled,
            "--max-drop", "1e-9", "-q")
    assert r.returncode == 4, r.stdout + r.stderr
    line = _one_line(r.stderr)
    assert line.startswith("onnxcomp: insert-qdq") and re.search(r"max[-_]drop", line) and "1e-09" in line
    assert r.stdout == "" and not out.exists()
