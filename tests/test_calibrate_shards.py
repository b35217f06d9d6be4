"""Sharded calibration: `onnxcomp calibrate` per shard, `--merge`, `optimize --calib-stats`.

The merge of shards must equal one calibration over their union bit for bit (the files compare
equal byte for byte), so the quantized model is the one `--calib UNION` gives; statistics of another
model or pipeline, shards with other inputs and damaged files are refused in one line, exit 2,
with nothing written.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from onnxcomp.cli import main
from onnxcomp.passes.qdq.calibration import CalibrationStats, collect_stats
from onnxcomp.progress import logger


@pytest.fixture(autouse=True)
def restore_logger():
    state = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate = state[2]


def onnxcomp(capsys, *args) -> tuple[int, str, str]:
    """main() in this process; (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args] + ["-q"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(result, *fragments) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def digits_shards(models_dir, tmp_path):
    """The digits calibration set as two shards (split at a multiple of the batch size) and their union."""
    x = np.load(models_dir / "digits_calib.npz")["input"][:96]
    paths = {name: tmp_path / f"{name}.npz" for name in ("s1", "s2", "union")}
    np.savez(paths["s1"], input=x[:64])
    np.savez(paths["s2"], input=x[64:])
    np.savez(paths["union"], input=x)
    return paths


def test_two_shards_merged_equal_one_run_over_the_union_and_quantize_identically(capsys, digits_cnn, digits_shards,
                                                                                tmp_path):
    method = ["--calib-method", "entropy"]  # histograms, not only min/max
    for name, data in digits_shards.items():
        code, out, err = onnxcomp(capsys, "calibrate", digits_cnn, "--data", data, "-o", tmp_path / f"{name}.calib",
                                  *method)
        assert code == 0, err
    assert ("calibrated 15 tensors through cleanup,fold-bn,insert-qdq{method=entropy,embeddings=true,smooth=true} "
            "on 96 samples "
            "(6 batches of up to 16)") in out
    merged = tmp_path / "merged.calib"
    code, out, err = onnxcomp(capsys, "calibrate", "--merge", tmp_path / "s1.calib", tmp_path / "s2.calib",
                              "-o", merged)
    assert code == 0 and "merged 2 files: 15 tensors, 96 samples in 6 batches" in out, err
    assert merged.read_bytes() == (tmp_path / "union.calib").read_bytes()
    whole, parts = CalibrationStats.load(tmp_path / "union.calib"), CalibrationStats.load(merged)
    assert parts == whole and whole.num_bins == 2048 and whole.batch_size == 16
    for name in whole:
        assert (parts[name].min, parts[name].max) == (whole[name].min, whole[name].max)
        np.testing.assert_array_equal(parts[name].counts, whole[name].counts)
        assert parts[name].counts.sum() == parts[name].count > 0
    models = {}
    for name, source in [("merged", ["--calib-stats", merged]), ("union", ["--calib", digits_shards["union"]])]:
        models[name] = tmp_path / f"{name}.onnx"
        code, out, err = onnxcomp(capsys, "optimize", digits_cnn, "--quantize", "int8", *method, *source,
                                  "-o", models[name])
        assert code == 0 and "int8_nodes=14" in out, err
    assert models["merged"].read_bytes() == models["union"].read_bytes()
    # the pipeline-text spelling of the same option
    text = tmp_path / "text.onnx"
    code, _, err = onnxcomp(capsys, "optimize", digits_cnn, "--passes",
                            f"cleanup,fold-bn,insert-qdq{{method=entropy,stats={merged}}}", "-o", text)
    assert code == 0 and text.read_bytes() == models["union"].read_bytes(), err


def test_statistics_of_another_model_or_pipeline_are_refused(capsys, models_dir, digits_cnn, digits_shards, tmp_path):
    digits, mlp = tmp_path / "digits.calib", tmp_path / "mlp.calib"
    assert onnxcomp(capsys, "calibrate", digits_cnn, "--data", digits_shards["s1"], "-o", digits)[0] == 0
    assert onnxcomp(capsys, "calibrate", models_dir / "mlp.onnx", "--data", models_dir / "mlp_calib.npz",
                    "-o", mlp)[0] == 0
    out = tmp_path / "out.onnx"
    refused(onnxcomp(capsys, "optimize", models_dir / "mlp.onnx", "--quantize", "int8", "--calib-stats", digits,
                     "-o", out), "digits.calib: statistics of another model or pipeline")
    # the same model through another pipeline (fold-bn left out): another graph
    refused(onnxcomp(capsys, "optimize", digits_cnn, "--passes", "cleanup,insert-qdq", "--calib-stats", digits,
                     "-o", out), "statistics of another model or pipeline", "31 nodes here, 22 there")
    # another checkpoint of the same architecture: same structure, other weights
    import onnx

    other = onnx.load(digits_cnn)
    weight = next(t for t in other.graph.initializer if len(t.dims) == 4)
    array = onnx.numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weight.name))
    onnx.save(other, tmp_path / "retrained.onnx")
    refused(onnxcomp(capsys, "optimize", tmp_path / "retrained.onnx", "--quantize", "int8", "--calib-stats", digits,
                     "-o", out), "statistics of another model or pipeline", "the graph differs")
    merged = tmp_path / "merged.calib"
    refused(onnxcomp(capsys, "calibrate", "--merge", digits, mlp, "-o", merged),
            "mlp.calib: cannot merge with", "statistics of another model or pipeline")
    # statistics without histograms cannot serve a histogram method; --max-drop needs samples
    refused(onnxcomp(capsys, "optimize", digits_cnn, "--quantize", "int8", "--calib-method", "mse",
                     "--calib-stats", digits, "-o", out), "holds min/max only")
    refused(onnxcomp(capsys, "optimize", digits_cnn, "--quantize", "int8", "--max-drop", "0.01",
                     "--calib-stats", digits, "-o", out), "max_drop", "pass --calib data too")
    assert not out.exists() and not merged.exists()


def test_a_shard_with_other_inputs_is_refused(capsys, models_dir, tmp_path):
    model = models_dir / "transformer_block.onnx"
    x = np.load(models_dir / "transformer_calib.npz")["x"]
    np.savez(tmp_path / "long.npz", x=x[:16])
    np.savez(tmp_path / "short.npz", x=x[16:32, :8])  # sequences of another length
    for name in ("long", "short"):
        assert onnxcomp(capsys, "calibrate", model, "--data", tmp_path / f"{name}.npz",
                        "-o", tmp_path / f"{name}.calib")[0] == 0
    merged = tmp_path / "merged.calib"
    refused(onnxcomp(capsys, "calibrate", "--merge", tmp_path / "long.calib", tmp_path / "short.calib", "-o", merged),
            "short.calib: cannot merge with", "input 'x' holds samples of shape [16,64] in one part and [8,64]")
    assert not merged.exists()
    # padded per shard on purpose: accepted, and the dim that differs is recorded as varying
    code, _, err = onnxcomp(capsys, "calibrate", "--merge", "--other-shapes", tmp_path / "long.calib",
                            tmp_path / "short.calib", "-o", merged)
    assert code == 0, err
    stats = CalibrationStats.load(merged)
    assert stats.inputs == {"x": {"dtype": "float32", "shape": [None, 64]}} and stats.samples == 32


def test_a_merge_of_shards_cut_off_the_batch_grid_warns_but_stays_exact(capsys, models_dir, digits_cnn, tmp_path):
    x = np.load(models_dir / "digits_calib.npz")["input"][:64]
    parts = []
    for name, rows in (("a", x[:40]), ("b", x[40:])):  # 40 is not a multiple of the batch size 16
        np.savez(tmp_path / f"{name}.npz", input=rows)
        parts.append(tmp_path / f"{name}.calib")
        assert onnxcomp(capsys, "calibrate", digits_cnn, "--data", tmp_path / f"{name}.npz", "-o", parts[-1])[0] == 0
    code, out, err = onnxcomp(capsys, "calibrate", "--merge", *parts, "-o", tmp_path / "m.calib")
    assert code == 0 and "64 samples" in out
    assert "a.calib holds 40 samples, not a multiple of its batch size" in err and len(err.splitlines()) == 1
    a, b = (CalibrationStats.load(p) for p in parts)
    assert CalibrationStats.load(tmp_path / "m.calib") == a.merge(b) == b.merge(a)


def test_damaged_or_foreign_statistics_files_are_refused(capsys, digits_cnn, digits_shards, tmp_path):
    good = tmp_path / "good.calib"
    assert onnxcomp(capsys, "calibrate", digits_cnn, "--data", digits_shards["s1"], "-o", good)[0] == 0
    blob = good.read_bytes()
    damaged = {
        "truncated": blob[: len(blob) // 2],
        "garbage": b"not a statistics file at all",
        "flipped": blob[:200] + bytes([blob[200] ^ 0xFF]) + blob[201:],  # inside a compressed member: CRC fails
    }
    stats = CalibrationStats.load(good)
    broken = stats.tensors[next(iter(stats))]
    broken.min, broken.max = broken.max + 1, broken.min  # a range that cannot be
    damaged_stats = tmp_path / "inconsistent.calib"
    stats.save(damaged_stats)
    with zipfile.ZipFile(good) as archive:  # a newer format this onnxcomp cannot read
        members = {name: archive.read(name) for name in archive.namelist()}
    newer = tmp_path / "newer.calib"
    with zipfile.ZipFile(newer, "w") as archive:
        for name, data in members.items():
            if name == "format.npy":
                import io

                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.array("onnxcomp-calibration-stats/9"))
                data = buffer.getvalue()
            archive.writestr(name, data)
    for name, data in damaged.items():
        (tmp_path / f"{name}.calib").write_bytes(data)
    out, merged = tmp_path / "out.onnx", tmp_path / "merged.calib"
    expected = {"truncated": "not a readable", "garbage": "not a readable", "flipped": "not a readable",
                "inconsistent": "corrupt calibration statistics file", "newer": "newer than this onnxcomp reads"}
    for name, message in expected.items():
        path = tmp_path / f"{name}.calib"
        refused(onnxcomp(capsys, "calibrate", "--merge", good, path, "-o", merged), f"{name}.calib", message)
        refused(onnxcomp(capsys, "optimize", digits_cnn, "--quantize", "int8", "--calib-stats", path, "-o", out),
                f"{name}.calib", message)
    refused(onnxcomp(capsys, "optimize", digits_cnn, "--quantize", "int8", "--calib-stats", tmp_path / "none.calib",
                     "-o", out), "no such calibration statistics file")
    assert not out.exists() and not merged.exists()


def test_calibrate_usage_mistakes_are_one_line(capsys, digits_cnn, digits_shards, tmp_path):
    out = tmp_path / "s.calib"
    refused(onnxcomp(capsys, "calibrate", digits_cnn, "-o", out), "calibrate needs --data")
    refused(onnxcomp(capsys, "calibrate", digits_cnn, digits_cnn, "--data", digits_shards["s1"], "-o", out),
            "add --merge")
    refused(onnxcomp(capsys, "calibrate", "--merge", out, "--data", digits_shards["s1"], "-o", out), "--data")
    refused(onnxcomp(capsys, "calibrate", digits_cnn, "--data", digits_shards["s1"], "-o", digits_cnn),
            "refusing to overwrite the input model")
    refused(onnxcomp(capsys, "calibrate", digits_cnn, "--data", digits_shards["s1"], "-o", out,
                     "--passes", "cleanup,quantize-dynamic"), "already quantized")
    assert not out.exists()


def test_statistics_files_keep_what_they_describe_and_old_files_still_load(models_dir, tmp_path):
    import onnx

    from onnxcomp.measure.data import load_npz

    model = onnx.load(models_dir / "transformer_block.onnx")
    data = load_npz(models_dir / "transformer_calib.npz")
    stats = collect_stats(model, {k: v[:16] for k, v in data.items()}, batch_size=8)
    assert stats.batch_size == 8 and stats.model is None
    stats.describe_model(model, "cleanup")
    path = stats.save(tmp_path / "part")
    assert path.name == "part.npz"  # no suffix: .npz, as before
    again = CalibrationStats.load(path)
    assert again == stats and again.batch_size == 8 and again.model["pipeline"] == "cleanup"
    again.check_model(model)
    assert stats.save(tmp_path / "a.calib").read_bytes() == stats.save(tmp_path / "b.calib").read_bytes()
    # a file of format /1 (no batch size, model or inputs) reads as statistics of unknown origin
    first = next(iter(stats.tensors.values()))
    np.savez_compressed(tmp_path / "old.npz", format=np.array("onnxcomp-calibration-stats/1"),
                        names=np.array([first.name]), meta=np.array([stats.num_bins, 16, 2], np.int64),
                        counts=first.counts[None], **{f: np.array([getattr(first, f)])
                                                      for f in ("count", "zeros", "outliers", "nans", "exponent",
                                                                "offset", "min", "max", "raw_min", "raw_max")})
    old = CalibrationStats.load(tmp_path / "old.npz")
    assert old.model is None and old[first.name] == first
    from onnxcomp.errors import InputError

    with pytest.raises(InputError, match="does not say which model"):
        old.check_model(model)


def test_the_docs_sharded_example_runs_as_written(models_dir, tmp_path):
    """docs/calibration.md's xargs example, in a folder holding the demo model and its data."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    text = (REPO / "docs" / "calibration.md").read_text()
    block = re.search(r"<!-- sharded-calibration example.*?-->\n```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert block, "the marked example is missing from docs/calibration.md"
    shutil.copy(models_dir / "digits_cnn.onnx", tmp_path / "model.onnx")
    shutil.copy(models_dir / "digits_calib.npz", tmp_path / "calib.npz")
    shutil.copy(models_dir / "digits_test.npz", tmp_path / "val.npz")
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"  # `onnxcomp` and `python`
    env = {**os.environ, "PYTHONPATH": "", "PATH": path}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path, capture_output=True,
                       check=False, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert sorted(p.name for p in tmp_path.glob("shard*.npz.calib")) == [f"shard{i}.npz.calib" for i in range(2)]
    assert "merged 2 files: 15 tensors, 256 samples in 16 batches" in r.stdout
