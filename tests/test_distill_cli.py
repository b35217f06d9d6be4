"""`onnxcomp distill` as a user runs it: both modes, the report, and one-line errors with nothing written."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from helpers import make_model, tensor
from onnx import helper, numpy_helper

from onnxcomp.cli import main

FACTORY = textwrap.dedent("""
    import torch.nn as nn

    def make():
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def five_classes():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))

    def not_a_module():
        return 42
""")


@pytest.fixture()
def work(tmp_path, models_dir):
    (tmp_path / "students.py").write_text(FACTORY)
    (tmp_path / "broken.py").write_text("import no_such_package_anywhere\n")
    return tmp_path, models_dir


def cli_in_process(capsys, *args):
    """Run the real entry point in this process (fast); returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_torch_student_from_factory_end_to_end(work):
    tmp, models = work
    out, report = tmp / "student.onnx", tmp / "r.json"
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "distill", "--teacher", models / "mlp.onnx",
                        "--student", "students.py:make", "--data", models / "mlp_calib.npz",
                        "--val", models / "mlp_test.npz", "-o", out, "--epochs", "1", "--lr", "0.01",
                        "--report", report], capture_output=True, text=True, cwd=tmp,
                       env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stderr and "val accuracy" in r.stderr
    assert "wrote" in r.stdout and "exported" in r.stdout and "teacher 0.9" in r.stdout
    assert "accuracy (val, ONNX Runtime on the written model)" in r.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    data = json.loads(report.read_text())
    assert data["mode"] == "torch-student" and len(data["epochs"]) == 1
    assert data["options"]["temperature"] == 4.0 and data["options"]["alpha"] == 0.7
    assert data["teacher"]["targets_source"] == "computed"
    assert data["final"]["ort_vs_torch_max_abs"] < 1e-4


def test_onnx_student_fine_tuned_in_place(work, capsys):
    tmp, models = work
    out = tmp / "tuned.onnx"
    code, stdout, err = cli_in_process(capsys, "distill", "--teacher", models / "mlp.onnx", "--student",
                                       models / "mlp.onnx", "--data", models / "mlp_calib.npz", "-o", out,
                                       "--epochs", "1", "--alpha", "1.0", "-q")
    assert code == 0, err
    assert "fine-tuned in place (same graph)" in stdout and err == ""
    a, b = onnx.load(str(models / "mlp.onnx")), onnx.load(str(out))
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]


def _unsupported_student(path):
    model = make_model([helper.make_node("Flatten", ["input"], ["f"]),
                        helper.make_node("Hardmax", ["f"], ["logits"], name="odd")],
                       [tensor("input", ["batch", 64])], [tensor("logits", ["batch", 64])])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case", ["import-fails", "no-such-function", "not-a-module", "shape-mismatch",
                                  "missing-input", "unsupported-op", "bad-alpha", "output-is-student"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(work, capsys, case):
    tmp, models = work
    out = tmp / "out.onnx"
    student, data, extra = "students.py:make", models / "mlp_calib.npz", []
    expected = {
        "import-fails": "importing broken.py failed (ModuleNotFoundError",
        "no-such-function": "has no attribute 'nothing'",
        "not-a-module": "returned int, not a torch.nn.Module",
        "shape-mismatch": "student output shape [2, 5] does not match the teacher's [2, 10]",
        "missing-input": "missing array(s) for model input(s) input",
        "unsupported-op": "unsupported op(s) for ONNX fine-tuning: Hardmax (e.g. node 'odd')",
        "bad-alpha": "alpha must be in [0, 1]",
        "output-is-student": "refusing to overwrite the student",
    }[case]
    if case == "import-fails":
        student = "broken.py:make"
    elif case == "no-such-function":
        student = "students.py:nothing"
    elif case == "not-a-module":
        student = "students.py:not_a_module"
    elif case == "shape-mismatch":
        student = "students.py:five_classes"
    elif case == "missing-input":
        data = tmp / "wrong.npz"
        np.savez(data, x=np.zeros((4, 64), np.float32))
    elif case == "unsupported-op":
        student = str(_unsupported_student(tmp / "odd.onnx"))
    elif case == "bad-alpha":
        extra = ["--alpha", "1.5"]
    elif case == "output-is-student":
        student = str(tmp / "copy.onnx")
        onnx.save(onnx.load(str(models / "mlp.onnx")), student)
        out = tmp / "copy.onnx"
    before = out.read_bytes() if out.exists() else None
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        code, stdout, err = cli_in_process(capsys, "distill", "--teacher", models / "mlp.onnx", "--student", student,
                                           "--data", data, "-o", out, "--epochs", "1", "-q", *extra)
    finally:
        os.chdir(cwd)
    assert code == 2, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (out.read_bytes() if out.exists() else None) == before
    assert not list(tmp.glob(".out.onnx*"))


def test_onnxcomp_imports_without_torch_and_distill_is_callable():
    code = ("import sys, onnxcomp, onnxcomp.distill; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(onnxcomp.distill) and onnxcomp.distill.DistillOptions().epochs == 10; "
            "from onnxcomp.cli import cli; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _token_case(tmp):
    """A token-model teacher, a half-scale student and 32 sentences in tmp; the distill arguments for them."""
    from token_model import sentences, token_model

    teacher, student, data = tmp / "t.onnx", tmp / "s.onnx", tmp / "ids.npz"
    onnx.save(token_model(0), str(teacher))
    onnx.save(token_model(0, scale=0.5), str(student))
    np.savez(data, **sentences())
    return student, ["distill", "--teacher", teacher, "--student", student, "--data", data, "--epochs", "1",
                     "--batch-size", "8", "-q"]


def test_mask_augment_and_freeze_flags(work, capsys):
    """--mask names the padding input, --augment adds random-token copies, --freeze keeps the table; a mask that
    is not a [batch, seq] input is one line, exit 2."""
    tmp, _ = work
    student, args = _token_case(tmp)
    code, _, err = cli_in_process(capsys, *args, "-o", tmp / "out.onnx", "--mask", "attention_mask",
                                  "--augment", "1", "--freeze", "embeddings", "--report", tmp / "r.json")
    assert code == 0, err
    report = json.loads((tmp / "r.json").read_text())
    assert report["options"]["mask"] == "attention_mask" and report["epochs"][0]["mse"] > 0
    assert report["options"]["augment"] == 1 and report["final"]["samples"] == 2 * 32  # 32 sentences + 1 copy
    tables = [numpy_helper.to_array(t) for m in (student, tmp / "out.onnx") for t in onnx.load(str(m)).graph.initializer
              if t.name == "table"]
    assert np.array_equal(*tables)  # frozen
    code, _, err = cli_in_process(capsys, *args, "-o", tmp / "bad.onnx", "--mask", "input_idz")
    assert code == 2 and "mask 'input_idz'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "bad.onnx").exists()


def test_output_loss_pooled_weight_and_warmup_flags(work, capsys):
    """--output-loss cosine and --pooled-weight reach the loss (their parts are logged), --warmup the rate;
    --pooled-weight without --mask is one line, exit 2, nothing written."""
    tmp, _ = work
    _, args = _token_case(tmp)
    args += ["--pooled-weight", "2"]
    code, _, err = cli_in_process(capsys, *args, "-o", tmp / "out.onnx", "--mask", "attention_mask",
                                  "--output-loss", "cosine", "--warmup", "0.5", "--report", tmp / "r.json")
    assert code == 0, err
    report = json.loads((tmp / "r.json").read_text())
    first = report["epochs"][0]
    assert first["cosine_distance"] > 0 and first["pooled_distance"] > 0 and "mse" not in first
    assert report["options"]["output_loss"] == "cosine" and report["options"]["warmup"] == 0.5
    code, _, err = cli_in_process(capsys, *args, "-o", tmp / "bad.onnx")
    assert code == 2 and "give mask" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "bad.onnx").exists()
