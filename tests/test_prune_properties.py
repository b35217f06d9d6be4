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
from prune_builders import (
    Net,
    attention_model,
    ffn_model,
    folded_rows_model,
    gnn_model,
    head_pooling_model,
    rnn_model,
)

from onnxcomp.graph.convert import to_graph, to_model
from onnxcomp.measure.counts import graph_counts
from onnxcomp.measure.runtime import random_inputs
from onnxcomp.passes.prune.groups import find_channel_groups
from onnxcomp.passes.prune.importance import keep_each_part, keep_whole_ties
from onnxcomp.passes.prune.plan import ConstantTable, apply_plan, build_plan, readers_in


def choose_drops(groups, seed: int) -> dict[int, np.ndarray]:
    """Kept channel indices per prunable group: a random subset, at least one channel kept. Lossy groups
    (a normalization over the channels) are left whole: zero reads do not make their removal exact."""
    rng = np.random.default_rng(seed)
    kept = {}
    for g in groups:
        if g.prunable and not g.lossy:
            n_keep = int(rng.integers(1, g.channels + 1))
            kept[g.id] = keep_whole_ties(g, keep_each_part(g, np.sort(rng.choice(g.channels, n_keep, replace=False))),
                                         rng.random(g.channels))
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
            for rows, columns in _reads(m, values.shape, dropped):
                index = [slice(None)] * values.ndim
                index[0], index[m.axis] = rows, columns
                values[tuple(index)] = 0
            if isinstance(t, gs.Constant):
                t.values = values
            else:
                t.inputs[0].attrs["value"] = gs.Constant(m.tensor, values)
    return to_model(graph)


def _reads(member, shape, dropped):
    """(rows, columns) of a reader's weight that read the dropped channels: every row, or for a grouped Conv
    sliced per conv group (positions are its input channels) the rows of the conv group each one is in."""
    positions = member.mapping.positions(dropped)
    if not member.conv_groups:
        return [(slice(None), positions)]
    size, rows = shape[member.axis], shape[0] // member.conv_groups
    return [(slice(k * rows, (k + 1) * rows), c) for k, c in (divmod(int(p), size) for p in positions)]


def expected_param_drop(model, groups, kept) -> int:
    """From the members alone: every reader of a sliced constant sees it shrunk by the removed positions
    of the groups that slice it for all readers, plus those of private members for itself alone.
    Readers that see the same shape share the constant; otherwise each changed reader has its copy."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            shapes[node.output[0]] = list(onnx.numpy_helper.to_array(node.attribute[0].t).shape)
    readers = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if node.op_type != "Identity":
                readers.setdefault(name, []).append((node.name or node.output[0], i))
    seen: dict[str, dict] = {}  # constant -> reader -> axis -> removed positions
    for g in groups:
        if g.id not in kept:
            continue
        dropped = np.setdiff1d(np.arange(g.channels), kept[g.id])
        for m in g.members:
            if m.kind in ("out", "in", "param") and dropped.size:
                for use in ([m.use] if m.private else readers.get(m.tensor) or [m.use]):
                    axes = seen.setdefault(m.tensor, {}).setdefault(use, {})
                    positions = m.mapping.positions(dropped).tolist()
                    # a weight sliced per conv group loses one column per conv group's input channels
                    axes.setdefault(m.axis, set()).update((m.conv_groups, p) if m.conv_groups else p for p in positions)
    total = 0

    def gone(removed) -> int:
        return sum(1 if isinstance(p, int) else 1 / p[0] for p in removed)

    for name, by_reader in seen.items():
        size = lambda axes, dims=shapes[name]: int(np.prod([d - gone(axes.get(a, ())) for a, d in enumerate(dims)]))
        views = [by_reader.get(use, {}) for use in readers.get(name, by_reader)]
        if all(v == views[0] for v in views):
            total += int(np.prod(shapes[name])) - size(views[0])
        else:
            changed = [v for v in views if v]
            total -= sum(size(v) for v in changed)
            if len(changed) == len(views):
                total += int(np.prod(shapes[name]))
    return total


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def check_exact_removal(model: onnx.ModelProto, seed: int, atol: float = 1e-5, feeds_dims=None) -> int:
    groups = find_channel_groups(to_graph(_copy(model)))
    kept = choose_drops(groups, seed)
    reference = zero_readers(model, groups, kept)
    graph = to_graph(_copy(reference))
    graph_before = to_graph(_copy(reference))
    params_before = graph_counts(graph)["params"]
    plan = build_plan(graph, find_channel_groups(graph), kept)
    apply_plan(graph, plan)
    pruned = to_model(graph.cleanup().toposort())
    onnx.checker.check_model(pruned)
    removed = params_before - graph_counts(graph)["params"]
    assert removed == plan.removed_params(ConstantTable(graph_before).get, readers_in(graph_before))
    assert removed == expected_param_drop(reference, groups, kept)
    for feed_seed in (0, 1):
        feeds = random_inputs(reference, feeds_dims or {"seq": 5, "S": 5}, seed=feed_seed, batch=2)
        want, got = run(reference, feeds), run(pruned, feeds)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)
    return removed


BLOCKS = ["conv", "convbn", "res", "concat", "dw", "scale", "pool", "pad", "split", "slice", "sigmoid", "resize",
          "se", "c2f", "grouped", "shuffle", "groupnorm", "splitgn", "gates", "squeeze", "view", "chpad", "negslice"]


@st.composite
def random_cnn(draw, blocks=tuple(BLOCKS), max_blocks: int = 4):
    net = Net(channels=draw(st.integers(1, 3)), size=4, seed=draw(st.integers(0, 10**6)))
    width = st.integers(2, 6)
    x = net.unary(net.conv(net.x, draw(width)))
    shared_gn = None
    for block in draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=max_blocks)):
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
        elif block == "se":
            x = net.se(x, pool=draw(st.sampled_from(["gap", "mean", "max", "sum"])), fc=draw(st.booleans()),
                       gate=draw(st.sampled_from(["Sigmoid", "HardSigmoid"])))
        elif block == "c2f":
            x = net.c2f(x, draw(width))
        elif block == "grouped":
            g = draw(st.sampled_from([2, 3]))
            x = net.unary(net.conv(net.unary(net.conv(x, g * draw(width))), g * draw(width), group=g))
        elif block == "shuffle":
            g = draw(st.sampled_from([2, 3]))
            x = net.shuffle(net.unary(net.conv(x, g * draw(width))), g)
        elif block == "groupnorm":
            g = draw(st.sampled_from([1, 2, 3]))
            if shared_gn is None:
                shared_gn = net.const_int("gshape", [0, 2, -1])  # one [0, G, -1] for every GroupNorm, as dynamo
            x = net.unary(net.group_norm(net.conv(x, 2 * g), 2, shape=shared_gn))
        elif block == "splitgn":  # GroupNorms sharing shape constants over tensors holding a group in pieces:
            half = draw(width)  # twice, split and swapped, next to another group; each reader counts its own
            z = net.unary(net.conv(x, 2 * half))
            w = net.unary(net.conv(z, 2 * half))
            a, b = net.split(z, [half, half])
            shape, back = net.const_int("gshape", [0, 4 * half, -1]), net.const_int("shape", [-1, 4 * half, 4, 4])
            ys = [net.group_norm(net.concat(parts), 4 * half, shape=shape, back=back) for parts in ([z, z], [z, w])]
            x = net.concat(ys + [net.group_norm(net.concat([b, a]), 2)])
        elif block == "gates":
            x = net.gates(x, draw(width), sizes=draw(st.booleans()))
        elif block == "squeeze":
            x = net.squeeze_path(x)
        elif block == "view":
            x = net.runtime_view(x)
        elif block == "chpad":  # zero channels padded around the group's, read by the next conv
            x = net.unary(net.conv(net.channel_pad(x, draw(st.integers(0, 2)), draw(st.integers(1, 2))), draw(width)))
        elif block == "negslice":  # the last channels by negative bounds, and the rest (TF exports)
            a, b = net.conv(x, draw(width)), net.conv(x, draw(width))
            cat = net.concat([a, b])
            cb = net.channels[b]
            x = net.concat([net.slice(cat, -cb, 2**40), net.unary(net.slice(cat, -2**40, -cb))])
    head = draw(st.sampled_from(["gap", "flatten", "reshape", "-1", "features"]))
    return net.model(net.head(x, flatten=head == "flatten", reshape=head == "reshape",
                              view=head if head in ("-1", "features") else ""))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=random_cnn(), seed=st.integers(0, 2**16))
def test_removing_zero_read_channels_is_exact_on_random_cnns(model, seed):
    check_exact_removal(model, seed)


NEW_BLOCKS = ("se", "c2f", "grouped", "shuffle", "groupnorm", "splitgn", "gates", "squeeze", "view", "chpad", "negslice")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block=st.sampled_from(NEW_BLOCKS), data=st.data(), seed=st.integers(0, 2**16))
def test_new_structures_prune_exactly_and_are_reached(block, data, seed):
    """Each structure real models have (SE, C2f, grouped convs, shuffles, GroupNorm, gates, run-time views),
    between two convs, leaves no group refused but the head's (which reaches the graph output), and prunes
    exactly; mixed at random with the rest, exactness is checked by the test above."""
    model = data.draw(random_cnn(blocks=(block,), max_blocks=1))
    groups = find_channel_groups(to_graph(_copy(model)))
    refused = [g.reason for g in groups if not g.prunable]
    assert all("graph output" in r for r in refused), refused
    check_exact_removal(model, seed)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["LSTM", "GRU", "RNN"]), hidden=st.integers(2, 7), bidirectional=st.booleans(),
       layers=st.integers(1, 2), state=st.sampled_from(["none", "zeros", "filled"]), seed=st.integers(0, 2**16))
def test_removing_zero_read_rnn_hidden_units_is_exact(op, hidden, bidirectional, layers, state, seed):
    model = rnn_model(op, hidden, bidirectional=bidirectional, layers=layers, seed=seed, state=state)
    groups = find_channel_groups(to_graph(_copy(model)))
    assert sum(g.prunable for g in groups) == layers, [g.reason for g in groups]
    assert all(g.prunable for g in groups if any(p.startswith(op.lower()) for p in g.producers))
    check_exact_removal(model, seed, feeds_dims={"T": 3, "N": 2})


@settings(max_examples=10, deadline=None)
@given(heads=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_heads_behind_shape_gather_concat_prune_exactly(heads, seed):
    model = attention_model(16, heads, seed)
    groups = find_channel_groups(to_graph(_copy(model)))
    (group,) = [g for g in groups if g.prunable]
    assert (group.channels, group.width) == (heads, 16 // heads)
    assert check_exact_removal(model, seed) >= 0


@settings(max_examples=10, deadline=None)
@given(hidden=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_gnn_scatter_gather_hidden_features_prune_exactly(hidden, seed):
    """Message passing (Gather by edge, ScatterElements onto nodes, GatherND readout): one group, exact."""
    model = gnn_model(hidden=hidden, seed=seed)
    groups = find_channel_groups(to_graph(_copy(model)))
    assert [g.prunable for g in groups] == [True, False], [g.reason for g in groups]  # fc2 reaches the output
    assert {m.kind for m in groups[0].members} >= {"out", "in", "value"}  # the Expand and zero-start sizes
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


@settings(max_examples=10, deadline=None)
@given(groups=st.sampled_from([2, 3]), per=st.integers(2, 3), out_per=st.integers(2, 3), seed=st.integers(0, 2**16))
def test_shufflenet_units_prune_exactly_in_every_conv_group(groups, per, out_per, seed):
    """A ShuffleNet unit (grouped 1x1, shuffle, depthwise, grouped 1x1) read from the graph input: both grouped
    convs start a group of their own, pruned alike in every conv group (`group` kept), exactly."""
    net = Net(groups * 2, size=4, seed=seed)
    model = net.model(net.head(net.shuffle_unit(net.x, groups, per, out_per)))
    found = find_channel_groups(to_graph(_copy(model)))
    assert sorted(g.unit for g in found if g.prunable) == sorted([f"{groups * groups} repeats", f"{groups} repeats"])
    assert check_exact_removal(model, seed) >= 0


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
def test_depth_to_space_blocks_prune_exactly(mode):
    net = Net(3, size=4)
    c = net.unary(net.conv(net.x, 12))
    shuffled = net.node("DepthToSpace", [c], 3, blocksize=2, mode=mode)
    net.size *= 2
    model = net.model(net.head(net.conv(shuffled, 5)))
    assert sum(g.prunable for g in find_channel_groups(to_graph(_copy(model)))) == 2
    for seed in range(3):
        assert check_exact_removal(model, seed) >= 0


@pytest.mark.parametrize("fold", [2, 4])
def test_rows_folded_into_the_features_prune_exactly(fold):
    """[N, R, C] -> [N, R/q, q*C]: channel c is q features C apart for the reader; the shape entry loses q each."""
    model = folded_rows_model(fold=fold)
    (group,) = [g for g in find_channel_groups(to_graph(_copy(model))) if g.prunable]
    reader = next(m for m in group.members if m.kind == "in")
    assert sorted(reader.mapping.positions([1])) == [1 + 6 * k for k in range(fold)]
    for seed in range(3):
        assert check_exact_removal(model, seed) >= 0


def test_heads_weighed_by_a_score_conv_prune_exactly():
    model = head_pooling_model(heads=3)
    for seed in range(3):
        assert check_exact_removal(model, seed) >= 0


@pytest.mark.parametrize("seed", range(4))
def test_a_shufflenet_stream_prunes_exactly_through_its_concat(seed):
    """The stream [grouped conv's 56 filters, the pooled stem's 12] read by grouped convs in groups of 17: its
    channels go in tied sets (the stem's places in the first grouped conv), with `group` kept, exactly."""
    net = Net(3, size=4, seed=seed)
    model = net.model(net.head(net.shuffle_stream(net.x)))
    stream = next(g for g in find_channel_groups(to_graph(_copy(model))) if len(g.producers) == 3)
    assert stream.prunable and stream.ties
    assert check_exact_removal(model, seed) > 0


@pytest.mark.parametrize("seed", range(3))
def test_gates_sliced_from_one_conv_prune_exactly(seed):
    """conv -> Slice [0:h], [h:2h], [2h:3h] -> gates multiplied together: hidden unit u is channel u of each
    slice (3 repeats), found from the Slices' hint, exactly."""
    net = Net(3, size=4, seed=seed)
    model = net.model(net.head(net.conv(net.sliced_gates(net.unary(net.conv(net.x, 4)), 5), 6)))
    gates = next(g for g in find_channel_groups(to_graph(_copy(model))) if g.width == 3)
    assert gates.prunable and gates.channels == 5
    assert check_exact_removal(model, seed) > 0


def _bottleneck(groups: int, per: int, seed: int):
    net = Net(2 * groups, size=4, seed=seed)
    return net.model(net.head(net.shuffle_bottleneck(net.x, groups, per)))


@settings(max_examples=12, deadline=None)
@given(groups=st.sampled_from([3, 4]), per=st.sampled_from([7, 10]), seed=st.integers(0, 2**16))
def test_shufflenet_bottlenecks_whose_conv_groups_the_shuffle_does_not_divide_prune_exactly(groups, per, seed):
    """The model zoo's stage-2 bottleneck (conv groups of `per` filters, `per` not a multiple of `groups`): after
    the shuffle the second grouped conv reads filter j's copies at different columns of its conv groups, so it
    keeps `group` and slices each conv group on its own; the channels go in sets balanced over its conv groups,
    exactly."""
    model = _bottleneck(groups, per, seed)
    found = find_channel_groups(to_graph(_copy(model)))
    first = next(g for g in found if g.prunable and g.channels == per and g.ties)
    assert any(m.conv_groups == groups for m in first.members)
    assert [g.reason.split()[:3] for g in found if not g.prunable] == [["reaches", "graph", "output"]]
    assert check_exact_removal(model, seed) >= 0


@pytest.mark.parametrize("seed", range(3))
def test_a_bottleneck_sliced_per_conv_group_loses_parameters_exactly(seed):
    """4 conv groups of 10 filters: the sets [2, 7], [0, 3, 5, 8], [1, 4, 6, 9] go whole, with the outputs
    unchanged on the kept channels and the parameter count down by exactly the predicted amount."""
    model = _bottleneck(4, 10, seed)
    first = next(g for g in find_channel_groups(to_graph(_copy(model))) if g.ties)
    assert first.ties == [[2, 7], [0, 3, 5, 8], [1, 4, 6, 9]]
    assert check_exact_removal(model, seed) > 0
