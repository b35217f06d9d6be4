"""The bad-input corpus, built by code into a folder: every way a model or data file can be hostile.

`build(folder)` writes each case and returns `Case`s saying which file is the model, which is
the data file (for data cases) and the exit code each command must end with. Nothing binary is
committed; every case is regenerated from this file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class Case:
    name: str
    model: Path
    data: Path | None = None
    # command -> expected exit code; commands not listed are not run for this case.
    exits: dict = field(default_factory=dict)
    why: str = ""
    # files outside the case folder the command must never touch (symlink targets, ../ files).
    guarded: tuple = ()


def _model(nodes, inputs, outputs, inits=(), opset=OPSET, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bad", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def good_model() -> onnx.ModelProto:
    """A tiny valid Conv -> BN -> Relu -> Flatten -> Gemm model with input x[N,3,8,8]."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w": f(4, 3, 3, 3), "b": f(4), "g": np.abs(f(4)) + 0.5, "beta": f(4), "mean": f(4),
        "var": np.abs(f(4)) + 0.5, "fc": f(10, 256), "fcb": f(10)}.items()]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], name="fc", transB=1)]
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 10])], inits)


def weighty_model(width: int = 1024) -> onnx.ModelProto:
    """A valid model with a few MB of weights (Conv+BN, Gemm, MatMul) for external-data and interrupt tests.

    Input x[N,3,16,16]; width=1024 gives about 5 MB of float32 weights.
    """
    rng = np.random.default_rng(2)
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    inits = {"w1": f(32, 3, 3, 3), "g1": np.abs(f(32)) + 0.5, "b1": f(32), "m1": f(32), "v1": np.abs(f(32)) + 0.5,
             "w2": f(64, 32, 3, 3), "g2": np.abs(f(64)) + 0.5, "b2": f(64), "m2": f(64), "v2": np.abs(f(64)) + 0.5,
             "fc1": f(width, 64), "fc1b": f(width), "fc2": f(width, width), "head": f(width, 10)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], name="bn2"),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc1", "fc1b"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu3"),
             helper.make_node("MatMul", ["a1", "fc2"], ["h2"], name="fc2"),
             helper.make_node("Identity", ["h2"], ["h2_id"], name="noop"),
             helper.make_node("MatMul", ["h2_id", "head"], ["y"], name="head")]
    return _model(nodes, [_vi("x", ["N", 3, 16, 16])], [_vi("y", ["N", 10])],
                  [numpy_helper.from_array(v, k) for k, v in inits.items()])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _external(folder: Path, name: str, location_of) -> Path:
    """good_model() saved with external data, then each location rewritten by location_of(tensor name)."""
    model = good_model()
    sub = folder / name
    sub.mkdir()
    onnx.save_model(model, str(sub / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    m = onnx.load(str(sub / "model.onnx"), load_external_data=False)
    for init in m.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                new = location_of(init.name)
                if new is not None:
                    entry.value = new
    return _save(m, sub / "model.onnx")


def _absurd_initializer() -> onnx.ModelProto:
    """An initializer declaring 2**40 floats (4 TiB) but holding no data."""
    m = good_model()
    big = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[2**40])
    m.graph.initializer.append(big)
    m.graph.node.append(helper.make_node("ReduceSum", ["huge"], ["s"], name="sum", keepdims=0))
    m.graph.output.append(_vi("s", []))
    return m


def _absurd_external_length(folder: Path) -> Path:
    """External data whose `length` claims a petabyte in a file of a few KB."""
    path = _external(folder, "ext_huge_length", lambda name: None)
    m = onnx.load(str(path), load_external_data=False)
    init = m.graph.initializer[0]
    for entry in init.external_data:
        if entry.key == "length":
            entry.value = str(2**50)
    return _save(m, path)


def _absurd_external_shape(folder: Path) -> Path:
    """An external tensor whose shape and length agree on 1 TiB that the data file does not hold."""
    path = _external(folder, "ext_huge_shape", lambda name: None)
    m = onnx.load(str(path), load_external_data=False)
    init = m.graph.initializer[0]
    del init.dims[:]
    init.dims.extend([2**38])
    for entry in init.external_data:
        if entry.key == "length":
            entry.value = str(2**40)
    return _save(m, path)


def _control_flow(kind: str) -> onnx.ModelProto:
    """If / Loop / Scan whose bodies hold a Conv+BN, an Identity and read an outer-scope tensor."""
    rng = np.random.default_rng(1)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    outer_inits = [numpy_helper.from_array(f(4), "bias_outer")]

    def body(prefix, inputs, outputs, src):
        inits = [numpy_helper.from_array(v, f"{prefix}_{k}") for k, v in {
            "w": f(4, 4, 1, 1), "g": np.abs(f(4)) + 0.5, "beta": f(4), "mean": f(4), "var": np.abs(f(4)) + 0.5}.items()]
        nodes = [helper.make_node("Conv", [src, f"{prefix}_w"], [f"{prefix}_c"], name=f"{prefix}_conv"),
                 helper.make_node("BatchNormalization", [f"{prefix}_c"] + [f"{prefix}_{k}" for k in ("g", "beta", "mean", "var")],
                                  [f"{prefix}_n"], name=f"{prefix}_bn"),
                 helper.make_node("Identity", [f"{prefix}_n"], [f"{prefix}_i"], name=f"{prefix}_id"),
                 helper.make_node("Add", [f"{prefix}_i", "bias4"], [outputs[-1].name], name=f"{prefix}_add")]
        return helper.make_graph(nodes, prefix, inputs, outputs, inits)

    pre = [helper.make_node("Reshape", ["bias_outer", "shape4"], ["bias4"], name="reshape_bias"),
           helper.make_node("Identity", ["x"], ["x_id"], name="outer_id")]
    shape4 = numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "shape4")
    if kind == "if":
        then = body("then", [], [_vi("then_out", [1, 4, 5, 5])], "x_id")
        other = body("else", [], [_vi("else_out", [1, 4, 5, 5])], "x_id")
        nodes = pre + [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
        inputs = [_vi("x", [1, 4, 5, 5]), _vi("cond", [], TensorProto.BOOL)]
    elif kind == "loop":
        loop_body = body("loop", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
                                  _vi("state", [1, 4, 5, 5])],
                         [_vi("cond_out", [], TensorProto.BOOL), _vi("state_out", [1, 4, 5, 5])], "state")
        loop_body.node.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"))
        nodes = pre + [helper.make_node("Loop", ["trips", "", "x_id"], ["y"], name="loop", body=loop_body)]
        inputs = [_vi("x", [1, 4, 5, 5]), _vi("trips", [], TensorProto.INT64)]
    else:
        scan_body = body("scan", [_vi("carry", [1, 4, 5, 5]), _vi("elem", [4])],
                         [_vi("carry_out", [1, 4, 5, 5])], "carry")
        scan_body.node.append(helper.make_node("Reshape", ["elem", "shape4"], ["elem4"], name="scan_reshape"))
        scan_body.node.append(helper.make_node("Add", ["carry_out", "elem4"], ["scan_seen"], name="scan_seen_add"))
        scan_body.output.append(_vi("scan_seen", [1, 4, 5, 5]))
        nodes = pre + [helper.make_node("Scan", ["x_id", "seq"], ["y", "ys"], name="scan", body=scan_body,
                                        num_scan_inputs=1)]
        inputs = [_vi("x", [1, 4, 5, 5]), _vi("seq", [3, 4])]
    outputs = [_vi("y", [1, 4, 5, 5])] + ([_vi("ys", [3, 1, 4, 5, 5])] if kind == "scan" else [])
    return _model(nodes, inputs, outputs, outer_inits + [shape4])


MODEL_COMMANDS = ("optimize", "inspect", "compare", "check")


def _unreadable(name, path, why) -> Case:
    # Every command reads models through the same loader; optimize and inspect cover both its modes.
    return Case(name, path, exits={"optimize": 2, "inspect": 2}, why=why)


def build(folder: Path) -> list[Case]:
    """Write every case into `folder` (which must exist) and describe it."""
    folder = Path(folder)
    cases: list[Case] = []
    good = _save(good_model(), folder / "good.onnx")
    raw = good.read_bytes()

    cases.append(_unreadable("empty", _write(folder / "empty.onnx", b""), "zero bytes"))
    cases.append(_unreadable("random_bytes", _write(folder / "random.onnx", np.random.default_rng(7).bytes(4096)),
                             "4 KB of random bytes"))
    cases.append(_unreadable("truncated", _write(folder / "truncated.onnx", raw[: len(raw) // 2]), "first half of a model"))
    tensor = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "t")
    cases.append(_unreadable("not_a_model", _write(folder / "tensor.onnx", tensor.SerializeToString()),
                             "a serialized TensorProto"))
    no_graph = onnx.ModelProto(ir_version=8, producer_name="x")
    no_graph.opset_import.add().version = OPSET
    cases.append(_unreadable("no_graph", _save(no_graph, folder / "no_graph.onnx"), "ModelProto without a graph"))
    cases.append(_unreadable("directory", _mkdir(folder / "dir.onnx"), "a folder named like a model"))

    # Structurally broken graphs: readable, but no pass may run on them.
    dup = good_model()
    dup.graph.node[2].output[0] = "c"  # Relu writes 'c', which Conv already produces
    dup.graph.node[3].input[0] = "c"
    cases.append(Case("duplicate_tensor_names", _save(dup, folder / "duplicate.onnx"),
                      exits={"optimize": 2, "inspect": 0}, why="two nodes produce 'c'"))
    cyc = _model([helper.make_node("Add", ["x", "b2"], ["a"], name="a"), helper.make_node("Relu", ["a"], ["b2"], name="b"),
                  helper.make_node("Identity", ["a"], ["y"], name="out")], [_vi("x", [2])], [_vi("y", [2])])
    cases.append(Case("cycle", _save(cyc, folder / "cycle.onnx"), exits={"optimize": 2, "inspect": 0, "compare": 2},
                      why="a -> b -> a"))
    ghost = good_model()
    ghost.graph.node[2].input[0] = "nobody_makes_this"
    cases.append(Case("dangling_input", _save(ghost, folder / "dangling.onnx"),
                      exits={"optimize": 2, "inspect": 0, "compare": 2}, why="Relu reads a tensor nobody produces"))
    custom = good_model()
    custom.graph.node[2].op_type = "FancyRelu"
    custom.graph.node[2].domain = "com.example"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    cases.append(Case("unknown_domain", _save(custom, folder / "custom_domain.onnx"),
                      exits={"optimize": 2, "inspect": 0, "compare": 2},
                      why="an op from a domain no runtime here knows"))
    old = good_model()
    old.opset_import[0].version = 8
    cases.append(Case("opset_too_old", _save(old, folder / "opset8.onnx"), exits={"optimize": 0, "inspect": 0},
                      why="opset 8 (< 10): converted to the pipeline's opset, not refused"))
    unconvertible = good_model()
    unconvertible.opset_import[0].version = 8
    unconvertible.graph.node[2].op_type = "FancyRelu"
    cases.append(Case("opset_unconvertible", _save(unconvertible, folder / "opset8_unknown_op.onnx"),
                      exits={"optimize": 2, "inspect": 0}, why="opset 8 with an op the version converter cannot know"))
    cases.append(Case("absurd_initializer", _save(_absurd_initializer(), folder / "absurd.onnx"),
                      exits={"optimize": 2, "compare": 2, "inspect": 2}, why="dims [2**40], no data"))
    huge_input = good_model()
    huge_input.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2**40
    cases.append(Case("absurd_input", _save(huge_input, folder / "absurd_input.onnx"),
                      exits={"optimize": 2, "compare": 2, "inspect": 0}, why="input declares 2**40 samples"))

    # External data.
    missing = _external(folder, "ext_missing", lambda name: None)
    (missing.parent / "model.onnx.data").unlink()
    cases.append(Case("external_missing", missing, exits={"optimize": 2, "compare": 2}, why="the .data file is gone"))
    secret = folder / "outside_secret.bin"
    secret.write_bytes(np.random.default_rng(3).bytes(64 * 1024))
    cases.append(Case("external_dotdot", _external(folder, "ext_dotdot", lambda n: "../outside_secret.bin"),
                      exits={c: 2 for c in MODEL_COMMANDS}, why="location ../outside_secret.bin", guarded=(secret,)))
    cases.append(Case("external_absolute", _external(folder, "ext_abs", lambda n: str(secret.resolve())),
                      exits={c: 2 for c in MODEL_COMMANDS}, why="absolute location", guarded=(secret,)))
    link = _external(folder, "ext_symlink", lambda n: "model.onnx.data")
    (link.parent / "model.onnx.data").unlink()
    os.symlink(secret, link.parent / "model.onnx.data")
    cases.append(Case("external_symlink_out", link, exits={c: 2 for c in MODEL_COMMANDS},
                      why="model.onnx.data is a symlink out of the folder", guarded=(secret,)))
    cases.append(Case("external_huge_length", _absurd_external_length(folder),
                      exits={"optimize": 2, "compare": 2}, why="length 2**50 in a small file"))
    cases.append(Case("external_huge_shape", _absurd_external_shape(folder),
                      exits={"optimize": 2, "compare": 2}, why="shape [2**38] whose bytes the file does not hold"))
    constant_escape = good_model()
    value = TensorProto(name="leak", data_type=TensorProto.UINT8, dims=[16], data_location=TensorProto.EXTERNAL)
    value.external_data.add(key="location", value="../outside_secret.bin")
    constant_escape.graph.node.insert(0, helper.make_node("Constant", [], ["leak"], name="leak", value=value))
    sub = folder / "const_escape"
    sub.mkdir()
    cases.append(Case("external_in_constant_node", _save(constant_escape, sub / "model.onnx"),
                      exits={c: 2 for c in MODEL_COMMANDS}, why="a Constant node's value reads ../", guarded=(secret,)))

    # Control flow: handled (exit 0), subgraphs left intact.
    for kind in ("if", "loop", "scan"):
        cases.append(Case(f"control_flow_{kind}", _save(_control_flow(kind), folder / f"cf_{kind}.onnx"),
                          exits={"optimize": 0, "inspect": 0}, why=f"{kind} with Conv+BN and Identity in its body"))

    # Data files for the good model (input x[N,3,8,8] float32).
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)

    def data_case(name, write, why, compare=False):
        path = folder / f"{name}.npz"
        write(path)
        exits = {"optimize": 2, "compare": 2} if compare else {"optimize": 2}
        cases.append(Case(name, good, data=path, exits=exits, why=why))

    data_case("npz_pickled", lambda p: np.savez(p, x=np.array([{"a": 1}] * 4, dtype=object)), "object array (pickle)",
              compare=True)
    data_case("npz_wrong_key", lambda p: np.savez(p, input=x), "key 'input' instead of 'x'", compare=True)
    data_case("npz_wrong_shape", lambda p: np.savez(p, x=x[:, :, :4]), "x[4,3,4,8]")
    data_case("npz_wrong_rank", lambda p: np.savez(p, x=x[0]), "x of rank 3")
    data_case("npz_wrong_dtype", lambda p: np.savez(p, x=x.astype(np.int32)), "int32 instead of float32")
    data_case("npz_strings", lambda p: np.savez(p, x=np.array(["a", "b"])), "unicode strings")
    data_case("npz_nan", lambda p: np.savez(p, x=np.where(x > 1, np.nan, x)), "NaN values", compare=True)
    data_case("npz_inf", lambda p: np.savez(p, x=np.where(x > 1, np.inf, x)), "Inf values")
    data_case("npz_empty", lambda p: np.savez(p), "no arrays at all")
    data_case("npz_zero_samples", lambda p: np.savez(p, x=x[:0]), "x with 0 samples")
    data_case("npz_scalar", lambda p: np.savez(p, x=np.float32(1.0)), "x is a 0-d scalar")
    data_case("npz_bad_labels", lambda p: np.savez(p, x=x, labels=np.int64(3)), "labels is a scalar", compare=True)
    data_case("npz_is_npy", lambda p: p.write_bytes(_npy_bytes(x)), "a plain .npy file named .npz", compare=True)
    data_case("npz_random_bytes", lambda p: p.write_bytes(np.random.default_rng(5).bytes(2048)), "random bytes")
    data_case("npz_zero_bytes", lambda p: p.write_bytes(b""), "zero bytes")
    return cases


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
