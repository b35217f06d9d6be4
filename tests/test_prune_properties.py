"""The exactness property of channel removal, on random small graphs and on the models/ models.

If every reader of the channels chosen for removal already reads them with zero weight, the
channels carry nothing to the outputs: removing them (and all their coupled weights) must
leave the outputs unchanged to float tolerance, and the parameter count must drop by exactly
what the group members predict.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prune_builders import Net, ffn_model

from onnxcomp.graph.convert import to_graph, to_model
from onnxcomp.measure.counts import graph_counts
from onnxcomp.measure.runtime import random_inputs
from onnxcomp.passes.prune.groups import find_channel_groups
from onnxcomp.passes.prune.plan import apply_plan, build_plan


def choose_drops(groups, seed: int) -> dict[int, np.ndarray]:
    """Kept channel indices per prunable group: a random subset, at least one channel kept."""
    rng = np.random.default_rng(seed)
    kept = {}
    for g in groups:
        if g.prunable:
            n_keep = int(rng.integers(1, g.channels + 1))
            kept[g.id] = np.sort(rng.choice(g.channels, n_keep, replace=False))
    return kept


def zero_readers(model: onnx.ModelProto, groups, kept) -> onnx.ModelProto:
    """A copy where every reader ('in' member) of a dropped channel reads it with weight 0."""
    import onnx_graphsurgeon as gs

    graph = to_graph(_copy(model))
    tensors = graph.tensors()
    for g in groups:
        if g.id not in kept:
            continue
        dropped = np.setdiff1d(np.arange(g.channels), kept[g.id])
        for m in g.members:
            if m.kind != "in" or dropped.size == 0:
                continue
            t = tensors[m.tensor]
            values = np.array(t.values if isinstance(t, gs.Constant) else t.inputs[0].attrs["value"].values)
            index = [slice(None)] * values.ndim
            index[m.axis] = m.mapping.positions(dropped)
            values[tuple(index)] = 0
            if isinstance(t, gs.Constant):
                t.values = values
            else:
                t.inputs[0].attrs["value"] = gs.Constant(m.tensor, values)
    return to_model(graph)


def expected_param_drop(model, groups, kept) -> int:
    """From the members alone: shrink each sliced constant axis by the union of removed positions."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            shapes[node.output[0]] = list(onnx.numpy_helper.to_array(node.attribute[0].t).shape)
    removed: dict[tuple[str, int], set] = {}
    for g in groups:
        if g.id in kept:
            dropped = np.setdiff1d(np.arange(g.channels), kept[g.id])
            for m in g.members:
                if m.kind in ("out", "in", "param"):
                    removed.setdefault((m.tensor, m.axis), set()).update(m.mapping.positions(dropped).tolist())
    new_shapes = {k: list(v) for k, v in shapes.items()}
    for (name, axis), pos in removed.items():
        new_shapes[name][axis] -= len(pos)
    return sum(int(np.prod(shapes[n])) - int(np.prod(new_shapes[n])) for n in {n for n, _ in removed})


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def check_exact_removal(model: onnx.ModelProto, seed: int, atol: float = 1e-5) -> int:
    groups = find_channel_groups(to_graph(_copy(model)))
    kept = choose_drops(groups, seed)
    reference = zero_readers(model, groups, kept)
    graph = to_graph(_copy(reference))
    params_before = graph_counts(graph)["params"]
    plan = build_plan(graph, find_channel_groups(graph), kept)
    apply_plan(graph, plan)
    pruned = to_model(graph.cleanup().toposort())
    onnx.checker.check_model(pruned)
    removed = params_before - graph_counts(graph)["params"]
    assert removed == expected_param_drop(reference, groups, kept)
    for feed_seed in (0, 1):
        feeds = random_inputs(reference, {"seq": 5, "S": 5}, seed=feed_seed, batch=2)
        want, got = run(reference, feeds), run(pruned, feeds)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)
    return removed


@st.composite
def random_cnn(draw):
    net = Net(channels=draw(st.integers(1, 3)), size=4, seed=draw(st.integers(0, 10**6)))
    width = st.integers(2, 6)
    x = net.unary(net.conv(net.x, draw(width)))
    for block in draw(st.lists(st.sampled_from(
            ["conv", "convbn", "res", "concat", "dw", "scale", "pool", "pad", "split", "slice", "sigmoid", "resize"]), min_size=1, max_size=4)):
        c = net.channels[x]
        if block == "conv":
            x = net.unary(net.conv(x, draw(width), k=draw(st.sampled_from([1, 3]))))
        elif block == "convbn":
            x = net.unary(net.bn(net.conv(x, draw(width), bias=False)))
        elif block == "res":
            x = net.unary(net.add(net.bn(net.conv(net.unary(net.conv(x, draw(width))), c)), x))
        elif block == "concat":
            x = net.concat([net.unary(net.conv(x, draw(width))), net.conv(x, draw(width))])
        elif block == "dw":
            x = net.unary(net.conv(x, c, group=c))
        elif block == "scale":
            x = net.scale(x)
        elif block == "pool":
            x = net.maxpool(x)
        elif block == "pad":
            x = net.pad(x)
        elif block == "split":
            a, b = net.conv(x, draw(width)), net.conv(x, draw(width))
            p, q = net.split(net.concat([a, b]), [net.channels[a], net.channels[b]])
            x = net.concat([net.unary(q), net.unary(p)])
        elif block == "slice":
            a, b = net.conv(x, draw(width)), net.conv(x, draw(width))
            cat = net.concat([a, b])
            ca = net.channels[a]
            x = net.concat([net.slice(cat, ca, 2**40), net.unary(net.slice(cat, 0, ca))])
        elif block == "resize":
            x = net.resize(x, sizes=draw(st.booleans()))
        elif block == "sigmoid":
            x = net.node("Mul", [x, net.unary(x, "Sigmoid")], c)  # SiLU
    head = draw(st.sampled_from(["gap", "flatten", "reshape", "-1", "features"]))
    return net.model(net.head(x, flatten=head == "flatten", reshape=head == "reshape",
                              view=head if head in ("-1", "features") else ""))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_cnn(), seed=st.integers(0, 2**16))
def test_removing_zero_read_channels_is_exact_on_random_cnns(model, seed):
    check_exact_removal(model, seed)


@settings(max_examples=10, deadline=None)
@given(hidden=st.integers(2, 40), gelu=st.booleans(), seed=st.integers(0, 2**16))
def test_removing_zero_read_ffn_features_is_exact(hidden, gelu, seed):
    assert check_exact_removal(ffn_model(hidden=hidden, gelu=gelu, seed=seed), seed) >= 0


@pytest.mark.parametrize("name", ["digits_cnn", "mlp", "transformer_block"])
@pytest.mark.parametrize("fold", [False, True])
def test_removing_zero_read_channels_is_exact_on_models(models_dir, name, fold):
    model = onnx.load_model(models_dir / f"{name}.onnx")
    if fold:
        from helpers import run_pass

        model, _ = run_pass(model, "cleanup,fold-bn")
    for seed in (0, 1):
        assert check_exact_removal(model, seed, atol=1e-4 if name == "digits_cnn" else 1e-5) > 0


def test_inferred_head_count_is_exact(models_dir):
    """Reshape [b, s, -1, D]: heads are still found, nothing to rewrite, removal stays exact."""
    model = onnx.load_model(models_dir / "transformer_block.onnx")
    node = next(n for n in model.graph.node if n.output[0] == "/Constant_2_output_0")
    assert int(onnx.numpy_helper.to_array(node.attribute[0].t)) == 4
    node.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(-1, dtype=np.int64)))
    groups = find_channel_groups(to_graph(_copy(model)))
    heads = [g for g in groups if g.width == 16]
    assert len(heads) == 1 and heads[0].prunable
    assert not any(m.kind == "value" for m in heads[0].members)
    for seed in (0, 1):
        check_exact_removal(model, seed)
