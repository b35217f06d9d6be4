"""The pass manager catches broken passes and names them, and records per-pass facts."""

from dataclasses import dataclass

import numpy as np
import pytest
from helpers import make_model, rng_array, tensor
from onnx import helper

import onnxcomp
from onnxcomp.errors import ToleranceError, VerificationError
from onnxcomp.graph.convert import to_graph
from onnxcomp.pipeline.pass_base import Pass, PassReport


def small_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    return make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4])], {"w": np.abs(rng_array((4, 4))) + 0.1})


class DropsProducer(Pass):
    """Deletes the MatMul but leaves its consumer reading the orphaned tensor."""

    name = "test-drops-producer"

    def run(self, graph, ctx):
        graph.nodes = [n for n in graph.nodes if n.op != "MatMul"]
        return PassReport(modified=True)


class ScalesWeights(Pass):
    """Claims to be exact but doubles the weights."""

    name = "test-scales-weights"

    def run(self, graph, ctx):
        for node in graph.nodes:
            if node.op == "MatMul":
                node.inputs[1].values = node.inputs[1].values * 2
        return PassReport(modified=True)


def test_structural_failure_names_the_pass_and_its_predecessors():
    graph = to_graph(small_model())
    manager = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup") + [DropsProducer()])
    with pytest.raises(VerificationError) as info:
        manager.run(graph)
    text = str(info.value)
    assert "test-drops-producer" in text and "after cleanup" in text and "produced by nothing" in text


def test_numeric_verification_catches_an_exact_pass_that_changes_outputs():
    graph = to_graph(small_model())
    with pytest.raises(ToleranceError, match="test-scales-weights"):
        onnxcomp.PassManager([ScalesWeights()], verify="numeric").run(graph)


def test_lossy_pass_has_its_error_recorded_not_raised():
    @dataclass(frozen=True)
    class NoOpts:
        pass

    class Lossy(ScalesWeights):
        name = "test-lossy"
        exact = False

    records = onnxcomp.PassManager([Lossy()], verify="numeric").run(to_graph(small_model()))
    assert records[0].numeric and records[0].numeric[0].max_abs > 0


def test_cycle_is_detected():
    from onnxcomp.pipeline.verify import structural_problems

    graph = to_graph(small_model())
    mm = next(n for n in graph.nodes if n.op == "MatMul")
    relu = next(n for n in graph.nodes if n.op == "Relu")
    mm.inputs[0] = relu.outputs[0]
    assert any("cycle" in p for p in structural_problems(graph))


def test_records_counts_and_time():
    records = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup,fold-bn")).run(to_graph(small_model()))
    assert [r.name for r in records] == ["cleanup", "fold-bn"]
    for r in records:
        assert r.seconds >= 0 and r.before["nodes"] == 2 and r.after["params"] == 16
        assert set(r.as_dict()) >= {"name", "seconds", "modified", "stats", "skipped", "before", "after"}
    assert np.isfinite(records[0].seconds)


def test_reproducer_holds_the_model_before_the_failing_pass(tmp_path):
    import onnx
    from helpers import run

    model = small_model()
    path = tmp_path / "before.onnx"
    manager = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup") + [ScalesWeights()], verify="numeric",
                                   reproducer=str(path))
    with pytest.raises(ToleranceError, match="before.onnx"):
        manager.run(to_graph(model))
    saved = onnx.load(str(path))
    x = {"x": rng_array((2, 4), seed=3)}
    np.testing.assert_allclose(run(saved, x)["y"], run(model, x)["y"], atol=1e-6)
