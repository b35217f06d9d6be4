"""A short fuzz run of the model loader + exact pipeline and of the pipeline-text parser.

`python -m benchmarks fuzz [-- --seconds 60 --seed 0]`

Models: seeded mutations of valid models, half on raw bytes (bit flips, byte runs, truncation,
splices) and half on the protobuf structure (dims, data types, external-data entries, node inputs,
op types, attributes, opsets), each written to a file and sent through load_model -> to_graph ->
cleanup,fold-bn (structure verification) -> to_model -> save. Pipeline text: hypothesis-generated
strings from the pipeline grammar's alphabet through parse_pipeline.

Every input must end in success or a one-line OnnxcompError; anything else is a finding, printed
and written under build/fuzz/ so it can become a regression test. ONNX Runtime is not called
(its crashes are not ours, and would end the run).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import traceback
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent


def seed_models() -> list[onnx.ModelProto]:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    import bad_inputs

    models = [bad_inputs.good_model(), bad_inputs.weighty_model(32)]
    for kind in ("if", "loop", "scan"):
        models.append(bad_inputs._control_flow(kind))
    return models


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        if not buf:
            break
        i = rng.randrange(len(buf))
        if kind == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif kind == 2:
            del buf[i:i + rng.randint(1, 64)]
        elif kind == 3:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.randint(1, 128)]
        else:
            buf = buf[: rng.randrange(len(buf) + 1)]
    return bytes(buf)


_HOSTILE_INTS = [0, -1, 1, 2**31 - 1, 2**32, 2**40, 2**62, -(2**40)]


def mutate_structure(model: onnx.ModelProto, rng: random.Random) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(11)
        if kind == 0 and g.initializer:
            t = rng.choice(g.initializer)
            if t.dims:
                t.dims[rng.randrange(len(t.dims))] = rng.choice(_HOSTILE_INTS)
            else:
                t.dims.append(rng.choice(_HOSTILE_INTS))
        elif kind == 1 and g.initializer:
            rng.choice(g.initializer).data_type = rng.randrange(0, 26)
        elif kind == 2 and g.initializer:
            t = rng.choice(g.initializer)
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", rng.choice(["w.bin", "../x", "/etc/passwd", "", ".", "a/../../b"])),
                               ("offset", str(rng.choice(_HOSTILE_INTS))),
                               ("length", str(rng.choice(_HOSTILE_INTS)))):
                if rng.random() < 0.8:
                    t.external_data.add(key=key, value=value)
        elif kind == 3 and g.node:
            n = rng.choice(g.node)
            if n.input:
                n.input[rng.randrange(len(n.input))] = rng.choice(
                    [o for x in g.node for o in x.output] + ["", "ghost", n.output[0] if n.output else "y"])
        elif kind == 4 and g.node:
            rng.choice(g.node).op_type = rng.choice(["Conv", "BatchNormalization", "Gemm", "If", "Loop", "Identity",
                                                     "Dropout", "Reshape", "Nope", ""])
        elif kind == 5 and g.node:
            n = rng.choice(g.node)
            n.attribute.append(rng.choice([helper.make_attribute("group", rng.choice(_HOSTILE_INTS)),
                                           helper.make_attribute("transB", rng.choice(_HOSTILE_INTS)),
                                           helper.make_attribute("epsilon", rng.choice([-1.0, 0.0, float("nan"), 1e30])),
                                           helper.make_attribute("training_mode", 1),
                                           helper.make_attribute("axis", rng.choice(_HOSTILE_INTS))]))
        elif kind == 6:
            m.opset_import[0].version = rng.choice([1, 7, 9, 10, 13, 17, 21, 99, -3])
        elif kind == 7 and g.node:
            n = rng.choice(g.node)
            n.output[rng.randrange(len(n.output))] = rng.choice([x for x in g.node for x in x.output] or ["z"])
        elif kind == 8 and len(g.node) > 1:
            nodes = list(g.node)
            rng.shuffle(nodes)
            del g.node[:]
            g.node.extend(nodes)
        elif kind == 9 and g.input:
            dims = g.input[0].type.tensor_type.shape.dim
            if dims:
                dims[rng.randrange(len(dims))].dim_value = rng.choice(_HOSTILE_INTS[1:5])
        elif kind == 10 and g.initializer:
            t = rng.choice(g.initializer)
            if rng.random() < 0.5:
                t.ClearField("raw_data")
            else:
                t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    return m


def run_model_case(data: bytes, folder: Path) -> str:
    """'ok', 'refused', or raise the unexpected exception."""
    import onnxcomp
    from onnxcomp.errors import OnnxcompError
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.save import save

    path = folder / "case.onnx"
    path.write_bytes(data)
    try:
        model = load_model(path)
        graph = to_graph(model)
        onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup,fold-bn"), verify="structure").run(graph)
        save(to_model(graph), folder / "out.onnx", forbid=path)
        return "ok"
    except OnnxcompError:
        return "refused"


def fuzz_models(seconds: float, seed: int, findings_dir: Path) -> dict:
    rng = random.Random(seed)
    seeds = [m.SerializeToString() for m in seed_models()]
    parsed = seed_models()
    counts = {"cases": 0, "ok": 0, "refused": 0, "findings": 0}
    kinds: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        while time.monotonic() < deadline:
            i = rng.randrange(len(seeds))
            data = mutate_bytes(seeds[i], rng) if rng.random() < 0.5 else \
                mutate_structure(parsed[i], rng).SerializeToString()
            counts["cases"] += 1
            try:
                counts[run_model_case(data, folder)] += 1
            except Exception as exc:  # a finding: anything that is not a clear refusal
                counts["findings"] += 1
                key = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                kinds[key] = kinds.get(key, 0) + 1
                if kinds[key] == 1:
                    findings_dir.mkdir(parents=True, exist_ok=True)
                    case = findings_dir / f"model_{len(kinds)}.onnx"
                    case.write_bytes(data)
                    (findings_dir / f"model_{len(kinds)}.txt").write_text(traceback.format_exc())
            for leftover in folder.iterdir():
                leftover.unlink() if leftover.is_file() else None
    counts["kinds"] = kinds
    return counts


def fuzz_pipelines(examples: int, seed: int) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from onnxcomp.errors import OnnxcompError
    from onnxcomp.pipeline.registry import all_passes
    from onnxcomp.pipeline.text import parse_pipeline

    names = sorted(all_passes())
    words = st.sampled_from(names + ["method", "ratio", "true", "false", "0.5", "[a;b]", "=", ",", "{", "}",
                                     "[", "]", ";", " ", "nan", "-1", "1e309", "2:4", "\x00", "é"])
    text = st.one_of(st.text(alphabet=",{}[];=- .:abcdefghijklmnopqrstuvwxyz0123456789", max_size=40),
                     st.lists(words, max_size=12).map("".join))
    counts = {"cases": 0, "ok": 0, "refused": 0, "findings": 0, "kinds": {}}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(text)
    def probe(s):
        counts["cases"] += 1
        try:
            parse_pipeline(s)
            counts["ok"] += 1
        except OnnxcompError:
            counts["refused"] += 1
        except Exception as exc:
            counts["findings"] += 1
            key = f"{type(exc).__name__}: {s!r}"
            counts["kinds"][key] = counts["kinds"].get(key, 0) + 1

    import random as _r

    _r.seed(seed)
    probe()
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks fuzz")
    parser.add_argument("--seconds", type=float, default=60.0, help="time for the model fuzzer")
    parser.add_argument("--pipeline-examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from onnxcomp.report import table

    findings_dir = ROOT / "build" / "fuzz"
    import logging

    logging.disable(logging.WARNING)
    start = time.monotonic()
    models = fuzz_models(args.seconds, args.seed, findings_dir)
    model_seconds = time.monotonic() - start
    start = time.monotonic()
    pipes = fuzz_pipelines(args.pipeline_examples, args.seed)
    pipe_seconds = time.monotonic() - start
    rows = [["loader + cleanup,fold-bn + save", f"{model_seconds:.0f}", models["cases"], models["ok"],
             models["refused"], models["findings"]],
            ["pipeline text parser", f"{pipe_seconds:.0f}", pipes["cases"], pipes["ok"], pipes["refused"],
             pipes["findings"]]]
    print(table(["target", "seconds", "cases", "ok", "refused (one-line error)", "findings"], rows))
    for key, n in list(models["kinds"].items()) + list(pipes["kinds"].items()):
        print(f"  finding x{n}: {key}")
    if models["findings"]:
        print(f"  inputs and tracebacks in {findings_dir}")
    print(f"seed {args.seed}; load average {os.getloadavg()[0]:.1f}")
    return 1 if models["findings"] or pipes["findings"] else 0
