"""Interrupting `onnxcomp optimize` (SIGINT/SIGTERM) leaves the old output or none, never a partial one.

The CLI honours ONNXCOMP_TEST_PAUSE=<stage>: it announces the stage on stderr and sleeps, so a
signal lands at a known point — after loading, before the passes, with the output staged but not
yet renamed, and between the data-file and model-file renames (where signals are deferred).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import bad_inputs
import numpy as np
import onnx
import pytest
from helpers import assert_same_outputs

import onnxcomp


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A ~5 MB model saved with external data in its own folder."""
    folder = tmp_path_factory.mktemp("src")
    return onnxcomp.save(bad_inputs.weighty_model(), folder / "model.onnx", external_data=True)


def _start(model: Path, out: Path, stage: str | None, pause: float = 30.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ""}
    if stage:
        env.update(ONNXCOMP_TEST_PAUSE=stage, ONNXCOMP_TEST_PAUSE_SECONDS=str(pause))
    return subprocess.Popen([sys.executable, "-m", "onnxcomp", "optimize", str(model), "-o", str(out), "-q",
                             "--passes", "cleanup,fold-bn", "--external-data"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _signal_at(proc: subprocess.Popen, stage: str, signum: int) -> tuple[int, str]:
    """Wait for the pause announcement of `stage`, deliver `signum`, return (exit code, rest of stderr)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"paused at {stage}" in line:
            break
    else:
        proc.wait()
        pytest.fail(f"never paused at {stage}: {''.join(seen)}")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _write_old_output(source: Path, out: Path) -> dict[str, str]:
    """A previous, different output (cleanup only: BatchNorms still there) in `out`'s folder."""
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(source), "-o", str(out), "-q",
                        "--passes", "cleanup", "--external-data"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    return _listing(out.parent)


@pytest.mark.parametrize("stage,signum", [("loaded", signal.SIGTERM), ("passes", signal.SIGINT),
                                          ("staged", signal.SIGTERM)])
def test_interrupt_without_old_output_leaves_nothing(source, tmp_path, stage, signum):
    before_source = _listing(source.parent)
    code, err = _signal_at(_start(source, tmp_path / "out.onnx", stage), stage, signum)
    assert code == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by" in lines[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output, no .data, no staging folder
    assert _listing(source.parent) == before_source


@pytest.mark.parametrize("stage,signum", [("staged", signal.SIGINT)])
def test_interrupt_keeps_the_old_output_intact(source, tmp_path, stage, signum):
    out = tmp_path / "out.onnx"
    old = _write_old_output(source, out)
    assert set(old) == {"out.onnx", "out.onnx.data"}
    code, err = _signal_at(_start(source, out, stage), stage, signum)
    assert code == 128 + signum, err
    assert _listing(tmp_path) == old
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(out)).graph.node)


def test_signal_between_the_two_renames_is_deferred_until_the_new_output_is_whole(source, tmp_path):
    out = tmp_path / "out.onnx"
    old = _write_old_output(source, out)
    code, err = _signal_at(_start(source, out, "data-renamed", pause=1.0), "data-renamed", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    new = _listing(tmp_path)
    assert set(new) == {"out.onnx", "out.onnx.data"} and new != old
    model = onnxcomp.load_model(out)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert_same_outputs(onnxcomp.load_model(source), model, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("delay", [0.7, 2.0])
def test_sigterm_at_arbitrary_times_never_leaves_a_partial_output(source, tmp_path, delay):
    """Without hooks: whatever the moment, the folder holds the old output (byte-identical) or a complete new one."""
    out = tmp_path / "out.onnx"
    old = _write_old_output(source, out)
    proc = _start(source, out, None)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    now = _listing(tmp_path)
    assert set(now) == {"out.onnx", "out.onnx.data"}, now
    if now != old:
        model = onnxcomp.load_model(out)
        assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
        assert_same_outputs(onnxcomp.load_model(source), model, atol=1e-4, rtol=1e-4)


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ""})


def test_refuses_to_overwrite_the_input_by_any_name(source, tmp_path):
    folder = source.parent
    link = tmp_path / "link.onnx"
    link.symlink_to(source)
    hard = folder / "hard.onnx"
    os.link(source, hard)
    before = _listing(folder)
    spellings = [source, f"{folder}/./model.onnx", f"{folder}/../{folder.name}/model.onnx", link, hard,
                 folder / "model.onnx.data"[: -len(".data")]]
    try:
        for out in spellings:
            r = _run("optimize", source, "-o", out, "-q")
            assert r.returncode == 2, (out, r.stderr)
            assert "refusing to overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        r = _run("optimize", "model.onnx", "-o", "model.onnx", "-q", cwd=folder)
        assert r.returncode == 2 and "refusing" in r.stderr
        assert _listing(folder) == before
    finally:
        hard.unlink()


def test_refuses_an_output_whose_data_file_is_the_inputs_data(tmp_path):
    """Input a.onnx stores its weights in b.onnx.data: writing b.onnx with external data would clobber them."""
    model = bad_inputs.weighty_model(256)
    expected = onnx.numpy_helper.to_array(model.graph.initializer[-1])
    onnx.save_model(model, str(tmp_path / "a.onnx"), save_as_external_data=True, location="b.onnx.data")
    before = _listing(tmp_path)
    r = _run("optimize", tmp_path / "a.onnx", "-o", tmp_path / "b.onnx", "-q", "--external-data")
    assert r.returncode == 2 and "refusing" in r.stderr, r.stderr
    assert _listing(tmp_path) == before
    with pytest.raises(onnxcomp.errors.InputError, match="external data of the input"):
        onnxcomp.save(model, tmp_path / "b.onnx", external_data=True, forbid=tmp_path / "a.onnx")
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(onnxcomp.load_model(tmp_path / "a.onnx").graph.initializer[-1]), expected)
