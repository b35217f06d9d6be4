"""The one comparator: per-output tolerances, error statistics, the one cosine and accuracy, `onnxcomp compare`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxcomp.errors import InputError
from onnxcomp.measure.compare import (
    Tolerances,
    compare_models,
    compare_outputs,
    cosine,
    measure,
    per_sample_cosine,
    top1_accuracy,
)
from onnxcomp.measure.data import LABELS, model_inputs_only


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], check=False, capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": ""})


def test_per_output_tolerance_decides_each_output_alone():
    rng = np.random.default_rng(0)
    ref = {"a": rng.standard_normal((4, 8)), "b": rng.standard_normal((4, 8))}
    got = {"a": ref["a"] + 1e-3, "b": ref["b"] + 1e-7}
    default = {d.name: d for d in compare_outputs(ref, got)}
    assert not default["a"].within and default["b"].within
    assert default["a"].max_abs == pytest.approx(1e-3)
    loose = {d.name: d for d in compare_outputs(ref, got, Tolerances(per_output={"a": (2e-3, 0.0)}))}
    assert loose["a"].within and (loose["a"].atol, loose["a"].rtol) == (2e-3, 0.0)
    assert loose["b"].within and (loose["b"].atol, loose["b"].rtol) == (1e-5, 1e-4)
    # the default applies to every output the mapping does not name
    tight = {d.name: d for d in compare_outputs(ref, got, Tolerances(1e-9, 0.0, {"a": (2e-3, 0.0)}))}
    assert tight["a"].within and not tight["b"].within


def test_statistic_chooses_how_many_elements_may_miss():
    ref = {"y": np.zeros((10, 100))}
    got = {"y": np.zeros((10, 100))}
    got["y"][3, 7] = 1.0  # one element of 1000 far off, the rest exact
    tol = Tolerances(1e-3, 0.0)
    by_stat = {s: compare_outputs(ref, got, tol, s)[0] for s in ("max", "mean", "median", "p99", "p99.95")}
    assert not by_stat["max"].within and by_stat["max"].tolerance_ratio == pytest.approx(1000)
    assert by_stat["median"].within and by_stat["median"].tolerance_ratio == 0
    assert by_stat["p99"].within
    assert not by_stat["p99.95"].within  # the 0.05 % tail holds the bad element
    assert by_stat["mean"].error_stat == pytest.approx(1e-3) and by_stat["mean"].tolerance_ratio == pytest.approx(1)
    assert all(d.outside_fraction == pytest.approx(1e-3) for d in by_stat.values())
    with pytest.raises(InputError, match="statistic"):
        compare_outputs(ref, got, tol, "p0")


def test_max_statistic_is_the_elementwise_rule_at_the_boundary():
    rng = np.random.default_rng(2)
    atol, rtol = 1e-3, 1e-2
    ref = rng.standard_normal(200)
    tol = atol + rtol * np.abs(ref)
    got = ref + tol * (1 + rng.integers(-3, 4, 200) * np.finfo(np.float64).eps)  # a few ulps either side
    rule = np.abs(got - ref) <= atol + rtol * np.abs(ref)
    assert rule.any() and not rule.all()
    within = [compare_outputs({"y": ref[i:i + 1]}, {"y": got[i:i + 1]}, Tolerances(atol, rtol))[0].within
              for i in range(200)]
    assert within == rule.tolist()


def test_one_cosine_per_sample_and_whole_tensor_for_one_sample():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 4))
    rows = [np.dot(x.ravel(), y.ravel()) / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)]
    assert cosine(a, b) == pytest.approx(np.mean(rows), abs=1e-12)
    one, other = a[:1], b[:1]
    whole = np.dot(one.ravel(), other.ravel()) / (np.linalg.norm(one) * np.linalg.norm(other))
    assert cosine(one, other) == pytest.approx(whole, abs=1e-12)
    assert compare_outputs({"y": a}, {"y": b})[0].cosine == pytest.approx(np.mean(rows), abs=1e-12)
    broken = b.copy()
    broken[2, 0, 0] = np.nan
    assert per_sample_cosine(a, broken)[2] == 0 and per_sample_cosine(a, broken)[1] == pytest.approx(rows[1])
    assert cosine(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0
    both = a.copy()
    both[2, 0, 0] = np.nan  # NaN where the reference has NaN is reproduced, not broken
    assert per_sample_cosine(both, both)[2] == pytest.approx(1.0)
    diff = compare_outputs({"y": both}, {"y": both})[0]
    assert diff.max_abs == 0 and diff.max_rel == 0 and diff.within and per_sample_cosine(both, b)[2] == 0


def test_one_accuracy_is_top1_against_labels():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert top1_accuracy(np.zeros((3, 1)), np.array([0, 0, 0])) is None  # no class axis


@pytest.fixture(scope="module")
def int8_digits(models_dir, tmp_path_factory):
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    model = load_model(models_dir / "digits_cnn.onnx")
    calib = load_data(models_dir / "digits_calib.npz", model)
    result = onnxcomp.optimize(model, None, "cleanup,fold-bn,insert-qdq", data=calib, check_output=False)
    path = tmp_path_factory.mktemp("int8") / "digits_int8.onnx"
    onnx.save(result.model, str(path))
    return model, result.model, path, load_data(models_dir / "digits_test.npz", model)


def test_int8_model_against_float_per_statistic(int8_digits):
    model, int8, _, test = int8_digits
    feeds, labels = model_inputs_only(test), test[LABELS]
    default = compare_models(model, int8, feeds, labels=labels)
    d = default.diffs[0]
    assert d.name == "logits" and not d.within and d.max_abs > 1e-5  # int8 is not exact
    assert d.top1 > 0.95 and 0.99 < d.cosine < 1
    assert default.accuracy[1] >= default.accuracy[0] - 0.02
    assert default.accuracy == (top1_accuracy(default.reference["logits"], labels),
                                top1_accuracy(default.candidate["logits"], labels))
    # The same cosine and accuracy as the lossy passes' fidelity on the same data.
    fid = measure(model, int8, test)
    assert fid.cosine == pytest.approx(d.cosine, abs=1e-12) and fid.accuracy == default.accuracy[1]
    # rtol 0: the statistic of |ref - cand| against atol decides; pick atol between median and max.
    stats = {s: compare_models(model, int8, feeds, Tolerances(1.0, 0.0), s).diffs[0]
             for s in ("median", "p99", "max")}
    assert stats["median"].error_stat < stats["p99"].error_stat < stats["max"].error_stat == d.max_abs
    for diff in stats.values():
        assert diff.tolerance_ratio == pytest.approx(diff.error_stat, rel=1e-9)
    atol = float(np.sqrt(stats["median"].error_stat * stats["p99"].error_stat))
    within = {s: compare_models(model, int8, feeds, Tolerances(atol, 0.0), s).diffs[0].within for s in stats}
    assert within == {"median": True, "p99": False, "max": False}


def test_cli_compare_tolerance_per_output_and_statistic(int8_digits, models_dir, digits_cnn, tmp_path):
    model, int8, path, test = int8_digits
    data = models_dir / "digits_test.npz"
    r = cli("compare", digits_cnn, path, "--data", data, "--json", cwd=tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "outside tolerance" in r.stderr and "Traceback" not in r.stderr
    first = json.loads(r.stdout)
    out = first["outputs"][0]
    assert first["statistic"] == "max" and not out["within"] and out["atol"] == 1e-5
    assert {"max_abs", "max_rel", "cosine", "top1", "within"} <= set(out)
    loose = out["max_abs"] * 1.01
    r = cli("compare", digits_cnn, path, "--data", data, "--atol", f"logits={loose}", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)["outputs"][0]
    assert out["within"] and out["atol"] == pytest.approx(loose) and out["rtol"] == 1e-4
    # Between median and max: the median passes, every element does not.
    median = compare_models(model, int8, model_inputs_only(test), Tolerances(1.0, 0.0), "median").diffs[0]
    atol = median.error_stat * 1.5
    assert atol < out["max_abs"]
    r = cli("compare", digits_cnn, path, "--data", data, "--atol", atol, "--rtol", "0", "--statistic", "median",
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "median err/tol" in r.stdout and "median abs" in r.stdout
    r = cli("compare", digits_cnn, path, "--data", data, "--atol", atol, "--rtol", "0", cwd=tmp_path)
    assert r.returncode == 4, r.stdout + r.stderr


@pytest.mark.parametrize("flags, message", [(["--statistic", "p0"], "statistic"),
                                            (["--atol", "nosuch=1e-3"], "no output 'nosuch'"),
                                            (["--rtol", "-1"], ">= 0")])
def test_cli_compare_bad_tolerance_flags_are_one_line(digits_cnn, tmp_path, flags, message):
    r = cli("compare", digits_cnn, digits_cnn, *flags, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
