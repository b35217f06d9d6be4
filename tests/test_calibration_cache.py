"""Calibration ranges as a TensorRT calibration cache and as ORT's calibration table: the formats, the
round trip (`calibrate --export-*` then `optimize --calib-cache` gives the very model calibration gives),
and bad files (one line, exit 2, nothing written)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxcomp
from onnxcomp.cli.calibrate import calibrate_shard
from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.calibration.cache_formats import read_cache, write_ort_table, write_trt_cache


def test_trt_cache_holds_the_big_endian_float32_scale_amax_over_127(tmp_path):
    path = write_trt_cache({"x": (-63.5, 10.0), "y": (0.0, 127.0)}, tmp_path / "cache.txt")
    lines = Path(path).read_text().splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("EntropyCalibration2")
    assert lines[1:] == ["x: 3f000000", "y: 3f800000"]  # 0.5 and 1.0 as float32 bits
    assert read_cache(path) == {"x": (-63.5, 63.5), "y": (-127.0, 127.0)}  # symmetric when read back


def test_ort_table_reads_what_onnxruntime_writes(tmp_path):
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    pytest.importorskip("flatbuffers")
    table = {"a": TensorData(lowest=np.float32(-1.25), highest=np.float32(3.5)),
             "b": TensorData(lowest=np.float32(0.0), highest=np.float32(0.75))}
    write_calibration_table(table, dir=str(tmp_path))
    assert read_cache(tmp_path / "calibration.json") == {"a": (-1.25, 3.5), "b": (0.0, 0.75)}
    ours = write_ort_table({"a": (-1.25, 3.5)}, tmp_path / "ours.json")
    assert read_cache(ours) == {"a": (-1.25, 3.5)}


@pytest.mark.parametrize("text, fragment", [("hello\nx: 00", "neither a TensorRT"), ("TRT-8600-X\nx: zz", "8 hex digits"),
                                            ('{"x": [0, "a"]}', "not numbers"), ('{"x": {"low": 1}}', "expected"),
                                            ('{"x": [0, Infinity]}', "not finite")])
def test_a_broken_cache_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=fragment):
        read_cache(path)


@pytest.fixture(scope="module")
def calib_small(models_dir, tmp_path_factory):
    with np.load(models_dir / "digits_calib.npz") as c:
        path = tmp_path_factory.mktemp("cache") / "calib.npz"
        np.savez(path, input=c["input"][:64])
    return path


@pytest.mark.parametrize("target, method, kind", [("tensorrt", "entropy", "trt"), ("ort", "percentile", "ort"),
                                                  ("tensorrt", "minmax", "ort")])
def test_an_exported_cache_reimported_gives_the_identical_qdq_model(digits_cnn, calib_small, tmp_path, target,
                                                                    method, kind):
    flags = {"target": target, "calib_method": method}
    cache = tmp_path / ("cache.txt" if kind == "trt" else "calibration.json")
    calibrate_shard(str(digits_cnn), str(calib_small), str(tmp_path / "s.calib"), None, flags,
                    exports={kind: str(cache)})
    pipeline = f"cleanup,fold-bn,insert-qdq{{target={target},method={method}}}"
    onnxcomp.optimize(str(digits_cnn), str(tmp_path / "calibrated.onnx"), pipeline, data=str(calib_small),
                      check_output=False)
    onnxcomp.optimize(str(digits_cnn), str(tmp_path / "cached.onnx"),
                      f"cleanup,fold-bn,insert-qdq{{target={target},calib_cache={cache}}}", check_output=False)
    calibrated, cached = (tmp_path / "calibrated.onnx").read_bytes(), (tmp_path / "cached.onnx").read_bytes()
    assert b"QuantizeLinear" in cached and calibrated == cached


def test_a_cache_read_through_struct_matches_the_scale_insert_qdq_stores(digits_cnn, calib_small, tmp_path):
    import onnx
    from onnx import numpy_helper

    cache = tmp_path / "cache.txt"
    calibrate_shard(str(digits_cnn), str(calib_small), str(tmp_path / "s.calib"), None, {"target": "tensorrt"},
                    exports={"trt": str(cache)})
    scales = {line.split(": ")[0]: struct.unpack(">f", bytes.fromhex(line.split(": ")[1]))[0]
              for line in cache.read_text().splitlines()[1:]}
    onnxcomp.optimize(str(digits_cnn), str(tmp_path / "q.onnx"), "cleanup,fold-bn,insert-qdq{target=tensorrt}",
                      data=str(calib_small), check_output=False)
    model = onnx.load(tmp_path / "q.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    stored = {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}
    shared = set(stored) & set(scales)
    assert shared and all(stored[t] >= scales[t] for t in shared)  # a range group's scale covers each member's
    assert any(stored[t] == scales[t] for t in shared)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, check=False)


def test_bad_caches_on_the_command_line_exit_2_and_write_nothing(digits_cnn, tmp_path):
    (tmp_path / "in").mkdir()
    garbage, foreign = tmp_path / "in" / "garbage.txt", tmp_path / "in" / "foreign.txt"
    garbage.write_text("not a cache\n")
    write_trt_cache({"no_such_tensor": (-1.0, 1.0)}, foreign)
    out = tmp_path / "out"
    out.mkdir()
    for cache, fragment in ((garbage, "neither a TensorRT"), (foreign, "names none of"),
                            (tmp_path / "missing.txt", "cannot read")):
        result = cli("optimize", digits_cnn, "-o", out / "q.onnx", "--quantize", "int8", "--calib-cache", cache)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and fragment in lines[-1] and "Traceback" not in result.stderr, result.stderr
        if cache != foreign:  # a file's own faults are found before the model is even loaded
            assert len(lines) == 1, result.stderr
    assert list(out.iterdir()) == []
