"""Property tests on random small graphs (Conv/Gemm/MatMul/Add/Mul/Relu/Concat/BN/Reshape, plus the
Identity nodes, duplicate constants, constant subgraphs and dead branches cleanup exists for).

For every exact pass: outputs stay within 1e-5 under ONNX Runtime, the ONNX checker passes, and a
second run changes nothing. save -> load round-trips the model byte for byte (inline) and value for
value (external data).
"""

from __future__ import annotations

import numpy as np
import onnx
from helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxcomp
from onnxcomp.graph.convert import to_graph, to_model

EXACT_PIPELINES = ["cleanup", "fold-bn", "cleanup,fold-bn", "fold-bn,cleanup"]


class GraphBuilder:
    """Grows a random graph from x[2,C,H,W]: each step appends one op to the current value."""

    def __init__(self, draw, channels: int, size: int):
        self.draw = draw
        self.nodes, self.inits = [], {}
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.count = 0
        self.current, self.shape = "x", [2, channels, size, size]
        self.pool = [("x", list(self.shape))]  # earlier values for Add/Concat partners

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, shape, scale=0.5, positive=False, reuse=None) -> str:
        if reuse is not None and self.draw(st.booleans()):
            return reuse  # the same initializer read twice
        values = self.rng.standard_normal(shape).astype(np.float32) * scale
        if positive:
            values = np.abs(values) + 0.5
        name = self.name("c")
        if self.inits and self.draw(st.integers(0, 5)) == 0:
            # a duplicate: different name, identical bytes (cleanup merges these)
            twin = next(iter(self.inits.items()))
            if list(twin[1].shape) == list(shape) and twin[1].dtype == np.float32:
                values = twin[1].copy()
        self.inits[name] = values
        return name

    def emit(self, op, inputs, shape, **attrs) -> None:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name("n"), **attrs))
        self.current, self.shape = out, shape
        self.pool.append((out, list(shape)))

    def partner(self) -> str | None:
        same = [n for n, s in self.pool if s == self.shape and n != self.current]
        return self.draw(st.sampled_from(same)) if same else None

    def batchnorm(self) -> None:
        c = self.shape[1]
        stats = [self.const([c], positive=True), self.const([c]), self.const([c]), self.const([c], positive=True)]
        self.emit("BatchNormalization", [self.current] + stats, self.shape,
                  epsilon=self.draw(st.sampled_from([1e-5, 1e-3])))

    def step(self) -> None:
        four_d = len(self.shape) == 4
        ops = ["Relu", "Add", "Mul", "Concat", "BN", "Identity", "ConstFold", "Dead"]
        ops += ["Conv", "Conv", "Flatten"] if four_d else ["Gemm", "Gemm", "MatMul"]
        op = self.draw(st.sampled_from(ops))
        c = self.shape[1]
        if op == "Conv":
            out_c, k = self.draw(st.integers(1, 6)), self.draw(st.sampled_from([1, 3]))
            inputs = [self.current, self.const([out_c, c, k, k])]
            if self.draw(st.booleans()):
                inputs.append(self.const([out_c]))
            self.emit("Conv", inputs, [2, out_c] + self.shape[2:], pads=[k // 2] * 4)
        elif op == "Gemm":
            out_f, trans_b = self.draw(st.integers(1, 8)), self.draw(st.booleans())
            w = self.const([out_f, c] if trans_b else [c, out_f])
            bias = self.draw(st.sampled_from(["none", "vector", "row", "scalar"]))
            inputs = [self.current, w] + ({"none": [], "vector": [self.const([out_f])], "row": [self.const([1, out_f])],
                                           "scalar": [self.const([1])]}[bias])
            self.emit("Gemm", inputs, [2, out_f], transB=int(trans_b),
                      beta=self.draw(st.sampled_from([1.0, 0.5])))
        elif op == "MatMul":
            out_f = self.draw(st.integers(1, 8))
            self.emit("MatMul", [self.current, self.const([c, out_f])], [2, out_f])
        elif op == "BN":
            self.batchnorm()
        elif op == "Relu":
            self.emit("Relu", [self.current], self.shape)
        elif op in ("Add", "Mul"):
            other = self.partner() if self.draw(st.booleans()) else None
            if other is None:
                const_shape = [1, c, 1, 1] if len(self.shape) == 4 else [c]
                other = self.const(const_shape, scale=0.3 if op == "Mul" else 0.5)
            self.emit(op, [self.current, other], self.shape)
        elif op == "Concat":
            other = self.partner() or self.current
            self.emit("Concat", [self.current, other], [2, 2 * c] + self.shape[2:], axis=1)
        elif op == "Identity":
            self.emit("Identity", [self.current], self.shape)
        elif op == "ConstFold":
            # a constant subgraph: shape -> Reshape target computed from constants
            a = self.const([c]) if len(self.shape) == 2 else self.const([1, c, 1, 1])
            b = self.const(self.inits[a].shape)
            folded = self.name("constsum")
            self.nodes.append(helper.make_node("Add", [a, b], [folded], name=self.name("n")))
            self.emit("Add", [self.current, folded], self.shape)
        elif op == "Dead":
            self.nodes.append(helper.make_node("Relu", [self.current], [self.name("dead")], name=self.name("n")))
        else:  # Flatten through Reshape with a constant shape
            target = self.name("shape")
            flat = int(np.prod(self.shape[1:]))
            self.inits[target] = np.array([2, flat], np.int64)
            self.emit("Reshape", [self.current, target], [2, flat])
        if op in ("Conv", "Gemm") and self.draw(st.booleans()):
            self.batchnorm()  # often right behind: the pattern fold-bn exists for

    def model(self, second_output: bool) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info(self.current, TensorProto.FLOAT, self.shape)]
        if second_output and len(self.pool) > 2:
            name, shape = self.pool[len(self.pool) // 2]
            if name not in (self.current, "x"):
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        graph = helper.make_graph(self.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2] + self.pool[0][1][1:])],
                                  outputs, [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


@st.composite
def random_models(draw) -> onnx.ModelProto:
    builder = GraphBuilder(draw, channels=draw(st.integers(1, 4)), size=draw(st.integers(2, 5)))
    for _ in range(draw(st.integers(1, 10))):
        builder.step()
    return builder.model(second_output=draw(st.booleans()))


def _optimize(model: onnx.ModelProto, pipeline: str):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
    records = onnxcomp.PassManager(onnxcomp.parse_pipeline(pipeline), verify="checker").run(graph)
    return to_model(graph), records


def _feeds(model, seed):
    return {"x": np.random.default_rng(seed).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}


def _fingerprint(model: onnx.ModelProto) -> tuple:
    nodes = tuple((n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node)
    inits = tuple(sorted((t.name, numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer))
    return nodes, inits


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(model=random_models(), pipeline=st.sampled_from(EXACT_PIPELINES))
def test_exact_passes_keep_outputs_and_are_idempotent(model, pipeline):
    optimized, records = _optimize(model, pipeline)
    onnx.checker.check_model(optimized, full_check=True)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    for seed in (0, 1):
        feeds = _feeds(model, seed)
        expected, got = run(model, feeds), run(optimized, feeds)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-5, err_msg=f"{pipeline}: {name}")
    again, records2 = _optimize(optimized, pipeline)
    assert not any(r.report.modified for r in records2), [r.report.stats for r in records2]
    assert _fingerprint(again) == _fingerprint(optimized)
    if "fold-bn" in pipeline:
        folded = sum(r.report.stats.get("folded", 0) for r in records)
        skipped = sum(len(r.report.skipped) for r in records if r.name == "fold-bn")
        bns = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
        assert folded + skipped <= bns  # every BN folded or skipped with a reason (cleanup may drop dead ones)
        assert sum(n.op_type == "BatchNormalization" for n in optimized.graph.node) <= bns - folded


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(model=random_models(), external=st.booleans())
def test_save_load_round_trips(model, external, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rt")
    path = onnxcomp.save(model, folder / "m.onnx", external_data=external)
    loaded = onnxcomp.load_model(path)
    if external:
        assert _fingerprint(loaded) == _fingerprint(model)
        assert [o.name for o in loaded.graph.output] == [o.name for o in model.graph.output]
    else:
        assert loaded.SerializeToString() == model.SerializeToString()
    # gs import/export round-trip keeps the computation too
    exported = to_model(to_graph(loaded))
    feeds = _feeds(model, 3)
    expected, got = run(model, feeds), run(exported, feeds)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
