"""quantize-dynamic's float layers: the gated model (every layer's float and INT8 paths in one session),
the default that keeps clear outliers float, and the max_drop search on it. Small models, ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, run, run_pass, tensor
from onnx import helper

from onnxcomp.measure.compare import cosine

SPIKE = 60.0  # one hidden channel this much larger than the rest: per-tensor INT8 of it loses the others


def outlier_chain(spike: float = SPIKE, channels: int = 1) -> onnx.ModelProto:
    """x -> la -> Relu -> lb -> Relu -> lc -> Relu -> ld: lb reads an activation whose first `channels`
    channels are huge (la's columns scaled up, lb's rows scaled down by the same: the float function
    is unchanged)."""
    wa, wb = rng_array((16, 32), 1, 0.3), rng_array((32, 32), 2, 0.2)
    wa[:, :channels] *= spike
    wb[:channels, :] /= spike
    nodes = []
    for i, name in enumerate("abcd"):
        src = "x" if i == 0 else f"r{'abcd'[i - 1]}"
        nodes.append(helper.make_node("MatMul", [src, f"w{name}"], [name if name != "d" else "y"], name=f"l{name}"))
        if name != "d":
            nodes.append(helper.make_node("Relu", [name], [f"r{name}"], name=f"relu_{name}"))
    inits = {"wa": wa, "wb": wb, "wc": rng_array((32, 32), 3, 0.2), "wd": rng_array((32, 8), 4, 0.3)}
    return make_model(nodes, [tensor("x", ["n", 16])], [tensor("y", None)], inits)


def feeds(n=32, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def details(records):
    return next(r for r in records if r.name == "quantize-dynamic").report


def one_minus_cos(a, b, data):
    return 1.0 - cosine(run(a, data)["y"], run(b, data)["y"])


def test_gated_model_gives_the_float_model_and_each_layer_alone_as_built_models_do():
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.precision.quantize_dynamic import DynamicRewrite, QuantizeDynamicOptions
    from onnxcomp.pipeline.gated import GatedModel
    from onnxcomp.pipeline.options import NO_EXCLUSION

    model, data = outlier_chain(), feeds()
    opts = QuantizeDynamicOptions()

    def rewrite(graph, held):
        DynamicRewrite(opts, NO_EXCLUSION, 127, held).apply(graph)

    probe = GatedModel(to_graph(model), ["la", "lb", "lc", "ld"], rewrite, as_samples(data, model))
    np.testing.assert_allclose(probe.reference["y"], run(model, data)["y"], rtol=1e-5, atol=1e-6)
    for unit in probe.units:
        graph = to_graph(model)
        rewrite(graph, frozenset(probe.units) - {unit})
        built = to_model(graph)
        np.testing.assert_allclose(probe.outputs([unit])["y"], run(built, data)["y"], rtol=1e-4, atol=1e-5)
        assert probe.fidelity([unit]).drop == pytest.approx(one_minus_cos(model, built, data), abs=1e-6)


def test_default_runs_the_clear_outlier_int8_with_its_outlier_channel_in_float():
    model = outlier_chain()
    kept, records = run_pass(model, "quantize-dynamic")
    everything, _ = run_pass(model, "quantize-dynamic{keep_outliers=false}")
    found = details(records).details["quantize-dynamic"]["outliers"]
    assert found["split"] == {"lb": [0]} and found["held_back"] == [] and found["samples"] == "8 generated samples"
    assert max(found["sensitivity"], key=found["sensitivity"].get) == "lb"
    assert found["drop"] < 0.1 * found["drop_all"] and found["runs"] == 2 + 4 + 1 + 2
    kinds = [n.op_type for n in kept.graph.node]
    assert kinds.count("MatMulInteger") == 4 and kinds.count("MatMul") == 1  # the one channel's product
    assert details(records).skipped == []
    test = feeds(64, seed=5)  # held-out inputs: the split helps there too
    assert one_minus_cos(model, kept, test) < 0.1 * one_minus_cos(model, everything, test)


def test_default_keeps_the_outlier_layer_float_when_too_many_channels_are_large():
    model = outlier_chain(channels=16)
    kept, records = run_pass(model, "quantize-dynamic")
    found = details(records).details["quantize-dynamic"]["outliers"]
    assert found["held_back"] == ["lb"] and "split" not in found and found["drop"] < found["drop_all"]
    assert [n.op_type for n in kept.graph.node].count("MatMulInteger") == 3
    assert {s.name: s.reason for s in details(records).skipped} == {"lb": "kept float: a clear outlier of INT8 error"}
    everything, _ = run_pass(model, "quantize-dynamic{keep_outliers=false}")
    test = feeds(64, seed=5)
    assert one_minus_cos(model, kept, test) < 0.5 * one_minus_cos(model, everything, test)


def test_default_keeps_nothing_float_without_an_outlier():
    model = outlier_chain(spike=1.0)
    out, records = run_pass(model, "quantize-dynamic")
    found = details(records).details["quantize-dynamic"]["outliers"]
    assert found["held_back"] == [] and [n.op_type for n in out.graph.node].count("MatMulInteger") == 4


def test_max_drop_ranks_on_the_gated_model_and_measures_the_choice_for_real():
    model, data = outlier_chain(), feeds(64, seed=1)
    out, records = run_pass(model, "quantize-dynamic{max_drop=0.002,sensitivity_samples=64}", data=data)
    budget = details(records).details["quantize-dynamic"]["budget"]
    assert budget["held_back"][0] == "lb" and budget["drop"] <= 0.002 < budget["drop_all"]
    assert max(budget["sensitivity"], key=budget["sensitivity"].get) == "lb"
    assert budget["drop"] == pytest.approx(one_minus_cos(model, out, data), abs=1e-6)  # the real model's own drop


def test_the_default_report_fits_the_schema(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO
    from test_report_schema import pass_rows, read_schema, schema_problems

    onnx.save(outlier_chain(), tmp_path / "m.onnx")
    result = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx",
                             "-q", "--quantize", "dynamic", "--report", tmp_path / "r.json"],
                            capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    schema = read_schema((REPO / "docs" / "report-schema.md").read_text())
    record = json.loads((tmp_path / "r.json").read_text())["passes"][-1]
    assert record["name"] == "quantize-dynamic" and "split" in record["details"]["quantize-dynamic"]["outliers"]
    assert schema_problems(record, pass_rows(schema, "quantize-dynamic")) == []
