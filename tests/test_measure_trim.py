"""Measuring runs cut after the last real token (onnxcomp.measure.trim): the same real outputs, less padding."""

from __future__ import annotations

import numpy as np
from helpers import make_model, tensor
from onnx import TensorProto, helper
from token_model import SEQ, sentences, token_model

from onnxcomp.measure.runtime import run, session
from onnxcomp.measure.trim import Trim


def _runner(model):
    sess = session(model)
    return lambda feeds: list(run(sess, feeds).values())


def _long_padded(n=12):
    """Sentences of at most SEQ - 3 tokens, padded to 2 * SEQ (the model's length is dynamic)."""
    data = sentences(n, seed=3)
    pad = np.zeros((n, SEQ), np.int64)
    data = {k: np.concatenate([v, pad], 1) for k, v in data.items()}
    data["attention_mask"][:, SEQ - 3:] = 0
    data["input_ids"] *= data["attention_mask"]
    return data


def test_pieces_are_sorted_by_length_cut_after_their_last_real_token_and_give_the_same_real_outputs():
    model, feeds = token_model(), _long_padded()
    runner = _runner(model)
    trim = Trim(model, "attention_mask")
    pieces = trim.pieces(feeds, 4, runner)
    assert trim.ok is True
    assert sum(len(p["input_ids"]) for p in pieces) == len(feeds["input_ids"])
    lengths = feeds["attention_mask"].sum(1)
    for p in pieces:
        assert p["input_ids"].shape[1] == p["attention_mask"].sum(1).max() < feeds["input_ids"].shape[1]
    assert [p["attention_mask"].sum(1).max() for p in pieces] == sorted(p["attention_mask"].sum(1).max()
                                                                         for p in pieces)
    full = runner(feeds)[0]
    order = np.argsort(lengths, kind="stable")
    got = np.concatenate([np.pad(runner(p)[0], ((0, 0), (0, full.shape[1] - p["input_ids"].shape[1]), (0, 0)))
                          for p in pieces])
    np.testing.assert_allclose(got, full[order], atol=1e-6)


def _reads_padding():
    """hidden = (x + mean of x over every position, padding included) times the mask: a cut changes it."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("Add", ["x", "mean"], ["s"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "last"], ["mu"]),
             helper.make_node("Mul", ["s", "mu"], ["hidden"])]
    return make_model(nodes, [tensor("x", ["batch", "seq", 4]), tensor("attention_mask", ["batch", "seq"],
                                                                         TensorProto.INT64)],
                      [tensor("hidden", ["batch", "seq", 4])], {"last": np.array([-1], np.int64)}, opset=17)


def test_a_model_that_reads_its_padding_is_never_cut():
    model = _reads_padding()
    mask = _long_padded()["attention_mask"]
    feeds = {"x": np.random.default_rng(0).standard_normal(mask.shape + (4,)).astype(np.float32) + 3,
             "attention_mask": mask}
    trim = Trim(model, "attention_mask")
    assert trim(feeds, _runner(model)) is feeds and trim.ok is False
    assert all(p["x"].shape[1] == mask.shape[1] for p in trim.pieces(feeds, 4, _runner(model)))


def test_a_fixed_length_or_no_mask_is_left_as_it_is():
    feeds = _long_padded()
    model = token_model()
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[1].dim_value = feeds["input_ids"].shape[1]
    assert Trim(model, "attention_mask")(feeds, _runner(model)) is feeds
    assert Trim(token_model(), None)(feeds, _runner(token_model())) is feeds


def test_the_sensitivities_are_the_same_with_the_padding_cut(monkeypatch):
    from test_lowrank_real_rows import masked_mlp, padded

    from onnxcomp.graph.convert import to_graph
    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.lowrank.factors import spectrum
    from onnxcomp.passes.lowrank.layers import as_matrix, find_layers, from_matrix, weight_source
    from onnxcomp.passes.lowrank.sensitivity import layer_weights

    model, data = masked_mlp(), padded()
    graph = to_graph(model)
    layers, _ = find_layers(graph, 4)
    nodes = {n.name: n for n in graph.nodes}
    sources = {layer.node: weight_source(nodes[layer.node])[1] for layer in layers}
    spectra = {layer.node: spectrum(as_matrix(layer.op, sources[layer.node], layer.attrs)) for layer in layers}
    error = lambda layer, rank: spectra[layer.node].relative_error(rank)
    dense = lambda layer, rank: from_matrix(layer.op, np.matmul(*spectra[layer.node].factors(rank)),
                                            sources[layer.node], layer.attrs)
    samples = as_samples(data, model)
    cut = layer_weights(model, layers, error, samples, 4, sources, dense, mask="attention_mask")
    monkeypatch.setattr(Trim, "pieces", lambda self, feeds, rows, run=None: [feeds])
    whole = layer_weights(model, layers, error, samples, 4, sources, dense, mask="attention_mask")
    assert cut.keys() == whole.keys()
    for node in cut:
        assert abs(cut[node] - whole[node]) <= 1e-4 * abs(whole[node])
