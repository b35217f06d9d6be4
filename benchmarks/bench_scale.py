"""Pass-manager scale: generated graphs of 1k, 10k and 50k nodes through load, cleanup, fold-bn,
structural verification and save, each stage timed; time should grow about linearly with nodes.

`python -m benchmarks scale [-- --sizes 1000,10000,50000 --profile 10000]`

The graph is a chain of small residual blocks (Conv -> BN -> Relu -> Identity -> Add, with a dead
branch and a duplicate bias every block) so every cleanup rule and fold-bn have work at every
size, while weights stay tiny: the figures measure graph handling, not arithmetic.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NODES_PER_BLOCK = 7


def chain_model(nodes: int, channels: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph_nodes, inits = [], []
    current = "x"
    shared_bias = rng.standard_normal(channels).astype(np.float32)
    for b in range(max(1, nodes // NODES_PER_BLOCK)):
        p = f"b{b}_"
        w = (rng.standard_normal((channels, channels, 1, 1)) * 0.3).astype(np.float32)
        stats = [np.abs(rng.standard_normal(channels)).astype(np.float32) + 0.5,
                 rng.standard_normal(channels).astype(np.float32) * 0.1,
                 rng.standard_normal(channels).astype(np.float32) * 0.1,
                 np.abs(rng.standard_normal(channels)).astype(np.float32) + 0.5]
        inits += [numpy_helper.from_array(w, p + "w"), numpy_helper.from_array(shared_bias, p + "bias")]
        inits += [numpy_helper.from_array(v, p + k) for k, v in zip(("g", "beta", "mean", "var"), stats)]
        graph_nodes += [
            helper.make_node("Conv", [current, p + "w", p + "bias"], [p + "c"], name=p + "conv"),
            helper.make_node("BatchNormalization", [p + "c", p + "g", p + "beta", p + "mean", p + "var"],
                             [p + "n"], name=p + "bn"),
            helper.make_node("Relu", [p + "n"], [p + "r"], name=p + "relu"),
            helper.make_node("Identity", [p + "r"], [p + "i"], name=p + "id"),
            helper.make_node("Add", [p + "i", current], [p + "out"], name=p + "add"),
            helper.make_node("Sigmoid", [p + "out"], [p + "dead"], name=p + "dead"),   # nobody reads it
            helper.make_node("Mul", [p + "out", p + "out"], [p + "dead2"], name=p + "dead2"),
        ]
        current = p + "out"
    graph = helper.make_graph(graph_nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, channels, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def measure(nodes: int, folder: Path) -> dict:
    import onnxcomp
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.save import save
    from onnxcomp.pipeline.verify import structural_problems

    source = folder / f"chain{nodes}.onnx"
    onnx.save(chain_model(nodes), str(source))
    times = {}
    t = time.perf_counter()
    graph = to_graph(load_model(source))
    times["load"] = time.perf_counter() - t
    real_nodes = len(graph.nodes)
    for name in ("cleanup", "fold-bn"):
        t = time.perf_counter()
        onnxcomp.PassManager(onnxcomp.parse_pipeline(name), verify="none").run(graph)
        times[name] = time.perf_counter() - t
    t = time.perf_counter()
    problems = structural_problems(graph)
    times["verify"] = time.perf_counter() - t
    assert not problems, problems[:3]
    t = time.perf_counter()
    save(to_model(graph), folder / f"chain{nodes}.opt.onnx")
    times["save"] = time.perf_counter() - t
    times["nodes"] = real_nodes
    times["nodes_after"] = len(graph.nodes)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks scale")
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--profile", type=int, default=0, help="cProfile this size and print the top functions")
    args = parser.parse_args(argv)
    from onnxcomp.report import table

    sizes = [int(s) for s in args.sizes.split(",")]
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(measure, args.profile, Path(tmp))
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        for n in sizes:
            results[n] = measure(n, Path(tmp))
    stages = ["load", "cleanup", "fold-bn", "verify", "save"]
    base = sizes[0]
    for n in sizes:
        r = results[n]
        total = sum(r[s] for s in stages)
        per_node = total / r["nodes"] * 1e6
        base_per_node = sum(results[base][s] for s in stages) / results[base]["nodes"] * 1e6
        rows.append([f"{r['nodes']} -> {r['nodes_after']}"] + [f"{r[s]:.2f}" for s in stages]
                    + [f"{total:.2f}", f"{per_node:.0f}", f"{per_node / base_per_node:.2f}x"])
    print(table(["nodes", "load s", "cleanup s", "fold-bn s", "verify s", "save s", "total s", "us/node",
                 f"us/node vs {base}"], rows))
    print(f"load average {os.getloadavg()[0]:.1f} (2 shared cores); linear growth = us/node ratio near 1")
    return 0
