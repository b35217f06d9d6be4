"""Every hostile input of the corpus (bad_inputs.py) through the real CLI, in subprocesses.

For each case and command: the documented exit code, exactly one line on stderr (no traceback),
no output file and no temp file left behind, the input files and any file outside the case
(symlink targets, ../ files) unchanged byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import bad_inputs
import numpy as np
import onnx
import pytest


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (symlinks as their target text) with a content hash."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _args(case: bad_inputs.Case, command: str, good: Path, out: Path) -> list[str]:
    if command == "optimize":
        return ["optimize", case.model, "-o", out, "-q"] + (["--calib", case.data] if case.data else [])
    if command == "inspect":
        return ["inspect", case.model]
    if command == "compare":
        return ["compare", case.model, good] + (["--data", case.data] if case.data else [])
    return ["check", case.model, "--target", "ort"]


def _run(args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=120)


# One interpreter imports onnx/onnxruntime once, then forks a child per command line: each child
# is a real `onnxcomp` process (own exit code, own stdout/stderr), ~20x cheaper than a fresh start.
_FORKER = r"""
import json, os, sys
import numpy, onnx, onnx_graphsurgeon, onnxruntime, click
import onnxcomp.cli
jobs = json.load(sys.stdin)
results, running = [None] * len(jobs), {}
def reap():
    pid, status = os.wait()
    results[running.pop(pid)] = os.waitstatus_to_exitcode(status)
for i, (argv, out, err) in enumerate(jobs):
    if len(running) >= 3:
        reap()
    pid = os.fork()
    if pid == 0:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        code = 1
        try:
            onnxcomp.cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    running[pid] = i
while running:
    reap()
json.dump(results, sys.stdout)
"""


def _run_many(argvs: list[list], scratch: Path) -> list[subprocess.CompletedProcess]:
    import json

    scratch.mkdir(exist_ok=True)
    jobs = [([str(a) for a in argv], str(scratch / f"{i}.out"), str(scratch / f"{i}.err"))
            for i, argv in enumerate(argvs)]
    proc = subprocess.run([sys.executable, "-c", _FORKER], input=json.dumps(jobs), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout)
    return [subprocess.CompletedProcess(argv, code, Path(out).read_text(), Path(err).read_text())
            for (argv, out, err), code in zip(jobs, codes)]


def _case_names() -> list[tuple[str, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [(c.name, cmd) for c in bad_inputs.build(Path(tmp)) for cmd in c.exits]


CASES = _case_names()


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    """Build the corpus once and run every (case, command) in parallel subprocesses."""
    root = tmp_path_factory.mktemp("corpus")
    cases = {c.name: c for c in bad_inputs.build(root)}
    good = root / "good.onnx"
    jobs = []
    for name, command in CASES:
        case = cases[name]
        out = root / "outputs" / f"{name}.{command}.onnx"
        jobs.append((name, command, case, out))
    (root / "outputs").mkdir()
    before = _tree(root)
    done = _run_many([_args(job[2], job[1], good, job[3]) for job in jobs], tmp_path_factory.mktemp("logs"))
    results = {}
    for (name, command, case, out), proc in zip(jobs, done):
        results[(name, command)] = (case, out, proc)
    return root, before, results


@pytest.mark.parametrize("name,command", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_case_fails_cleanly(corpus_results, name, command):
    root, before, results = corpus_results
    case, out, proc = results[(name, command)]
    want = case.exits[command]
    detail = f"{name} ({case.why}) via {command}: exit {proc.returncode}\nstderr: {proc.stderr}"
    assert proc.returncode == want, detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    if want != 0:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxcomp: "), detail
        assert len(lines[0]) < 400, detail
        assert not out.exists(), detail


def test_no_file_created_changed_or_left_behind(corpus_results):
    """Across the whole run: inputs byte-identical, guarded files untouched, no temp files, and
    only the successful optimize runs wrote an output."""
    root, before, results = corpus_results
    after = _tree(root)
    expected_new = {str(out.relative_to(root)) for (name, command), (case, out, proc) in results.items()
                    if command == "optimize" and proc.returncode == 0}
    assert set(after) - set(before) == expected_new
    assert all(after[k] == v for k, v in before.items())
    guarded = {str(g.relative_to(root)) for case, _, _ in results.values() for g in case.guarded}
    assert guarded and guarded <= set(before)  # files outside the case folders are covered too


@pytest.mark.parametrize("kind", ["if", "loop", "scan"])
def test_control_flow_outputs_kept_and_subgraphs_intact(corpus_results, kind):
    """Cleanup/fold-bn on If/Loop/Scan models: every branch still computes the same thing."""
    import onnxruntime as ort

    root, _, results = corpus_results
    case, out, proc = results[(f"control_flow_{kind}", "optimize")]
    assert proc.returncode == 0, proc.stderr
    original, optimized = onnx.load(str(case.model)), onnx.load(str(out))
    onnx.checker.check_model(optimized, full_check=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    if kind == "if":
        feeds_list = [{"x": x, "cond": np.array(flag)} for flag in (True, False)]
    elif kind == "loop":
        feeds_list = [{"x": x, "trips": np.array(n, np.int64)} for n in (0, 1, 3)]
    else:
        feeds_list = [{"x": x, "seq": rng.standard_normal((3, 4)).astype(np.float32)}]
    run_a = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    run_b = ort.InferenceSession(optimized.SerializeToString(), providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        for a, b in zip(run_a.run(None, feeds), run_b.run(None, feeds)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    # BatchNormalization inside bodies is left alone, and says so.
    bodies = [a.g for n in optimized.graph.node for a in n.attribute if a.HasField("g")]
    assert sum(n.op_type == "BatchNormalization" for g in bodies for n in g.node) >= 1


def test_control_flow_skips_are_reported(tmp_path):
    """fold-bn names the BatchNormalization nodes it leaves inside subgraphs, with the reason."""
    import onnxcomp

    (tmp_path / "c").mkdir()
    case = next(c for c in bad_inputs.build(tmp_path / "c") if c.name == "control_flow_if")
    result = onnxcomp.optimize(case.model, None, "cleanup,fold-bn")
    fold = result.records[1]
    reasons = {s.name: s.reason for s in fold.report.skipped}
    assert set(reasons) == {"then_bn", "else_bn"}
    assert all("subgraph" in r for r in reasons.values())


def test_debug_flag_shows_the_traceback(tmp_path):
    """--debug is the one way to see a traceback (for bug reports)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    proc = _run(["--debug", "inspect", bad])
    assert proc.returncode != 0 and "Traceback" in proc.stderr
