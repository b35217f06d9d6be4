"""Weights kept on disk (onnxcomp/graph/weights.py): a model whose external data passes the threshold
(lowered here with ONNXCOMP_ON_DISK_BYTES so a 5 MB model takes the path) goes through the CLI with
its weights left in files, and gives what the in-memory path gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bad_inputs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxcomp

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "exact": ["--verify", "numeric"],
    "int8": ["--quantize", "int8", "--target", "ort", "--calib", "{calib}"],
    "prune": ["--prune-channels", "0.25"],
    "sparsify": ["--passes", "cleanup,fold-bn,sparsify-initializers{sparsity=0.5,method=magnitude}"],
    "sparsify-layer": ["--passes", "cleanup,sparsify-initializers{sparsity=2:4,method=magnitude}"],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("src")
    path = onnxcomp.save(bad_inputs.weighty_model(), folder / "m.onnx", external_data=True)
    calib = folder / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    return path, calib


def _optimize(model: Path, out: Path, args: list[str], calib: Path, on_disk: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "ONNXCOMP_ON_DISK_BYTES": "1" if on_disk else str(1 << 60)}
    argv = [sys.executable, "-m", "onnxcomp", "optimize", str(model), "-o", str(out),
            *[a.replace("{calib}", str(calib)) for a in args]]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def _outputs(path: Path) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_on_disk_run_matches_the_in_memory_run(source, tmp_path, command):
    model, calib = source
    before = {p.name: p.read_bytes() for p in model.parent.glob("m.onnx*")}
    disk = _optimize(model, tmp_path / "disk.onnx", COMMANDS[command], calib, on_disk=True)
    memory = _optimize(model, tmp_path / "memory.onnx", COMMANDS[command], calib, on_disk=False)
    assert disk.returncode == 0, disk.stderr
    assert memory.returncode == 0, memory.stderr
    assert {p.name: p.read_bytes() for p in model.parent.glob("m.onnx*")} == before  # input untouched
    onnx.checker.check_model(str(tmp_path / "disk.onnx"))
    a, b = _outputs(tmp_path / "disk.onnx"), _outputs(tmp_path / "memory.onnx")
    if command == "int8":  # calibration sessions differ in graph optimization level: ranges may round apart
        cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.9999
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if command.startswith("sparsify"):  # the same weights zeroed, not only the same outputs
        disk_model = onnx.load(str(tmp_path / "disk.onnx"))
        memory_model = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "memory.onnx")).graph.initializer}
        for t in disk_model.graph.initializer:
            np.testing.assert_array_equal(numpy_helper.to_array(t) == 0, memory_model[t.name] == 0, err_msg=t.name)


def test_weights_are_read_not_held(source):
    """In one process: the graph keeps references into the store; reading gives fresh arrays."""
    from onnxcomp.graph import weights

    model, _ = source
    os.environ["ONNXCOMP_ON_DISK_BYTES"] = "1"
    try:
        loaded = onnxcomp.load_model(model)
    finally:
        del os.environ["ONNXCOMP_ON_DISK_BYTES"]
    assert weights.uses_store(loaded)
    assert all(len(t.raw_data) == 0 for t in loaded.graph.initializer if weights.in_store(t))
    graph = onnxcomp.graph.convert.to_graph(loaded)
    fc2 = graph.tensors()["fc2"]
    first, second = fc2.values, fc2.values
    assert first is not second and np.array_equal(first, second)
    assert fc2._values.__class__.__name__ == "DiskValues"  # nothing cached on the constant
    fc2.values = first * 2
    assert weights.spill(graph) >= first.nbytes
    np.testing.assert_array_equal(fc2.values, first * 2)


def test_global_counts_equal_the_in_memory_masks():
    from types import SimpleNamespace

    from onnxcomp.passes.sparsify.masks import global_masks
    from onnxcomp.passes.sparsify.streaming import global_counts

    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal(s).astype(np.float32)
               for i, s in enumerate([(64, 32, 3, 3), (10, 500), (7,), (256, 256)])}
    candidates = [SimpleNamespace(name=n, constant=SimpleNamespace(values=v), size=v.size) for n, v in tensors.items()]
    for normalize in ("lamp", "rms", "none"):
        for ratio in (0.3, 0.5, 0.9, 0.99):
            masks = global_masks(tensors, ratio, normalize, 0.98)
            expected = {n: int((~m).sum()) for n, m in masks.items()}
            assert global_counts(candidates, ratio, normalize, 0.98) == expected, (normalize, ratio)
