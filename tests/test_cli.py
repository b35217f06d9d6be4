"""The CLI end to end, as a user runs it (python -m onnxcomp in a scratch folder)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ""})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_optimize_demo_model_folds_every_bn_and_matches(digits_cnn, models_dir, tmp_path):
    out, report = tmp_path / "opt.onnx", tmp_path / "report.json"
    before = digest(digits_cnn)
    r = cli("optimize", digits_cnn, "-o", out, "--passes", "cleanup,fold-bn", "--verify", "numeric",
            "--val", models_dir / "digits_test.npz", "--report", report, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fold-bn" in r.stdout and "folded=9" in r.stdout and "within tolerance" in r.stdout
    assert digest(digits_cnn) == before
    data = json.loads(report.read_text())
    assert data["input"]["ops"]["BatchNormalization"] == 9
    assert "BatchNormalization" not in data["output"]["ops"]
    assert data["output"]["file_size"] == out.stat().st_size
    fold = data["passes"][1]
    assert fold["name"] == "fold-bn" and fold["modified"] and fold["stats"]["folded"] == 9
    assert data["validation"]["accuracy_output"] == data["validation"]["accuracy_original"]
    r = cli("compare", digits_cnn, out, "--atol", "1e-5", "--rtol", "1e-4", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("compare", digits_cnn, out, "--data", models_dir / "digits_test.npz", "--json", cwd=tmp_path)
    result = json.loads(r.stdout)
    assert result["outputs"][0]["top1"] == 1.0 and result["outputs"][0]["cosine"] > 0.99999


def test_compare_exits_4_outside_tolerance(digits_cnn, models_dir, tmp_path):
    r = cli("compare", digits_cnn, models_dir / "mlp.onnx", cwd=tmp_path)
    assert r.returncode in (2, 4)  # different input shapes: a clear error, never a traceback
    assert "Traceback" not in r.stderr
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(digits_cnn))
    for init in model.graph.initializer:
        if init.name.startswith("fc") and init.name.endswith("bias"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
    shifted = tmp_path / "shifted.onnx"
    onnx.save(model, str(shifted))
    r = cli("compare", digits_cnn, shifted, cwd=tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "outside tolerance" in r.stderr


def test_inspect_json(digits_cnn, tmp_path):
    r = cli("inspect", digits_cnn, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["opsets"]["ai.onnx"] == 17 and s["ops"]["Conv"] == 9
    assert s["inputs"][0]["shape"] == ["batch", 1, 32, 32]
    assert s["params"] > 70000 and s["macs"] > 10_000_000 and s["macs_unknown_nodes"] == 0
    r = cli("inspect", digits_cnn, "--dim", "batch=4", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["macs"] == 4 * s["macs"]


def test_passes_lists_options():
    r = cli("passes", "--json")
    listing = {p["name"]: p for p in json.loads(r.stdout)}
    assert listing["cleanup"]["exact"] and any(o["name"] == "dedupe" for o in listing["cleanup"]["options"])


def bad_inputs(tmp_path: Path, digits_cnn: Path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(2048))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(digits_cnn.read_bytes()[:5000])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return [
        (["optimize", tmp_path / "missing.onnx"], "no such file"),
        (["optimize", garbage], "not a readable ONNX model"),
        (["optimize", truncated], ""),
        (["optimize", empty], "empty file"),
        (["optimize", digits_cnn, "--passes", "cleanup,frobnicate"], "unknown pass 'frobnicate'"),
        (["optimize", digits_cnn, "--passes", "cleanup{depth=3}"], "unknown option 'depth'"),
        (["optimize", digits_cnn, "-o", tmp_path / "no_such_dir" / "out.onnx"], "does not exist"),
        (["optimize", digits_cnn, "-o", digits_cnn], "refusing to overwrite the input"),
        (["optimize", digits_cnn, "--bogus-flag"], "No such option"),
    ]


def test_bad_input_is_one_line_nonzero_and_writes_nothing(digits_cnn, tmp_path):
    before = digest(digits_cnn)
    for args, message in bad_inputs(tmp_path, digits_cnn):
        listing = set(tmp_path.iterdir())
        r = cli(*args, "-q", cwd=tmp_path) if "-o" in args else cli(*args, "-q", "-o", tmp_path / "out.onnx", cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert message in lines[0], (args, lines[0])
        assert set(tmp_path.iterdir()) == listing, args  # no output, no temp file left behind
    assert digest(digits_cnn) == before


def test_output_under_a_regular_file_is_refused(digits_cnn, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    r = cli("optimize", digits_cnn, "-o", blocker / "out.onnx", "-q")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and blocker.read_text() == "a file, not a folder"
