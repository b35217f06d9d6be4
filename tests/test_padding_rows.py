"""The real tokens' rows of an activation (onnxcomp.measure.padding.kept_rows), the mask checks, and the one run
over the data that data-aware importance and the reader refit share (passes/prune/input_statistics.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_model, run_pass, tensor
from onnx import TensorProto, helper

from onnxcomp.errors import InputError


def heads_beside_tokens(t=4, m=8, seed=0):
    """x [B, T, m] and h [B, 4 heads, m] (4 fixed: as many as the positions in the data) each read by a MatMul;
    r = Relu(h) declared [B, 4, m] as value_info, the shape inference leaves beside the graph."""
    rng = np.random.default_rng(seed)
    inits = {"wx": rng.standard_normal((m, 3)).astype(np.float32), "wh": rng.standard_normal((m, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "wx"], ["yx"], name="fx"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "wh"], ["yh"], name="fh"),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT)]
    model = make_model(nodes, [tensor("x", ["B", "T", m]), tensor("h", ["B", t, m]),
                               tensor("attention_mask", ["B", "T"], TensorProto.INT64)],
                       [tensor("yx", None), tensor("yh", None), tensor("mf", None)], inits)
    model.graph.value_info.append(tensor("r", ["B", t, m]))
    return model


def padded_feeds(n=6, t=4, m=8, seed=1):
    rng = np.random.default_rng(seed)
    mask = (np.arange(t)[None] < rng.integers(1, t, n)[:, None]).astype(np.int64)
    return {"x": rng.standard_normal((n, t, m)).astype(np.float32),
            "h": np.abs(rng.standard_normal((n, t, m))).astype(np.float32), "attention_mask": mask}


def test_kept_rows_are_the_real_tokens_rows_of_a_batch_sequence_activation():
    from onnxcomp.measure.padding import kept_rows

    feeds = padded_feeds()
    keep = feeds["attention_mask"].astype(bool)
    assert np.array_equal(kept_rows(feeds["x"], feeds, "attention_mask"), feeds["x"][keep])
    assert np.array_equal(kept_rows(feeds["x"], feeds, None), feeds["x"].reshape(-1, 8))
    flat = feeds["x"].reshape(-1, 8)  # [batch * sequence, channels]
    assert np.array_equal(kept_rows(flat, feeds, "attention_mask"), flat[keep.reshape(-1)])
    per_head = np.repeat(feeds["x"][:, :, None], 2, axis=2)  # [batch, sequence, heads, channels]
    assert len(kept_rows(per_head, feeds, "attention_mask")) == 2 * keep.sum()


def test_an_axis_declared_otherwise_than_the_sequence_is_not_read_by_the_mask_however_long():
    """h and r are [B, 4, m] with 4 fixed while the mask's sequence is symbolic: every row counts, though the
    data's sequences are 4 long; x (declared [B, T, m]) keeps its real tokens' rows."""
    from onnxcomp.measure.padding import kept_rows, row_keep, sequence_tensors

    model, feeds = heads_beside_tokens(), padded_feeds()
    along = sequence_tensors(model, ["x", "h", "r", "unknown"], "attention_mask")
    assert along == {"x", "unknown"}  # not declared: it may be
    assert sequence_tensors(model, ["h"], None) == {"h"}
    assert row_keep(feeds, "attention_mask", feeds["h"].shape, sequence=False) is None
    assert len(kept_rows(feeds["h"], feeds, "attention_mask", "h" in along)) == feeds["h"].shape[0] * 4


def test_the_reader_statistics_keep_every_row_of_a_heads_activation():
    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.prune.input_statistics import ReaderInputs

    model, feeds = heads_beside_tokens(), padded_feeds()
    moments = ReaderInputs(model, as_samples(feeds, model), "attention_mask").moments(["x", "r"])
    keep = feeds["attention_mask"].astype(bool)
    x, r = feeds["x"][keep].astype(np.float64), np.maximum(feeds["h"], 0).reshape(-1, 8).astype(np.float64)
    assert np.allclose(moments["x"], x.T @ x / len(x)) and np.allclose(moments["r"], r.T @ r / len(r))


def test_energy_beside_the_moments_is_their_diagonal_from_one_run(monkeypatch):
    from onnxcomp.measure import runtime
    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.prune.input_statistics import ReaderInputs

    model, feeds = heads_beside_tokens(), padded_feeds()
    alone = ReaderInputs(model, as_samples(feeds, model), "attention_mask").energy(["x", "r"])
    sessions = []
    made = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a, **k: sessions.append(1) or made(*a, **k))
    both = ReaderInputs(model, as_samples(feeds, model), "attention_mask")
    both.gather(moments=["x", "r"], energy=["x", "r"])
    energy, moments = both.energy(["x", "r"]), both.moments(["x"])
    assert len(sessions) == 1  # one run served both, and nothing was gathered twice
    for name in ("x", "r"):
        assert np.allclose(energy[name], alone[name], rtol=1e-12)
    assert np.allclose(np.diag(moments["x"]), alone["x"], rtol=1e-12)


@pytest.mark.parametrize("budget", ["", ",max_drop=0.05"])
def test_activation_importance_with_refit_runs_the_model_over_the_data_once(monkeypatch, budget):
    """remove-channels importance=activation,refit=true: the energy, the refit's moments and (max_drop) every
    refitted trial's from one run over the data."""
    from test_prune_activation import echoed

    from onnxcomp.passes.prune import input_statistics

    runs = []
    real = input_statistics.ReaderInputs._run
    monkeypatch.setattr(input_statistics.ReaderInputs, "_run", lambda self, *a: runs.append(a[0]) or real(self, *a))
    x = np.random.default_rng(4).standard_normal((64, 6)).astype(np.float32)
    _, records = run_pass(echoed(), f"remove-channels{{ratio=0.75,round_to=1,importance=activation,refit=true{budget}}}",
                          data={"x": x})
    report = records[0].report
    assert report.stats["readers_refitted"] >= 1 and report.details["importance"] == ["activation"]
    assert len(report.details.get("backoff", [None])) >= (2 if budget else 1)
    assert len(runs) == 1, runs


def test_a_named_mask_the_data_does_not_hold_is_one_clear_line():
    from onnxcomp.measure.padding import check_mask

    feeds = padded_feeds()
    without = [{k: v for k, v in feeds.items() if k != "attention_mask"}]
    inputs = ["x", "h", "attention_mask"]
    with pytest.raises(InputError, match="'attention_mask' is not in the sample data"):
        check_mask("attention_mask", inputs, without, "factorize-lowrank")
    with pytest.raises(InputError, match="not a 0/1"):
        check_mask("x", inputs, [feeds], "factorize-lowrank")
    check_mask("attention_mask", inputs, [feeds], "factorize-lowrank")  # a real mask passes
