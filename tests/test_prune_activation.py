"""remove-channels importance=activation: channels ranked by the output energy they feed their readers on the data."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_model, run, run_pass, tensor
from onnx import TensorProto, helper

from onnxcomp.errors import InputError


def dead_and_live(m=8, hidden=16, n=4, seed=0):
    """x [B, T, m] -> MatMul (hidden) -> Relu -> MatMul (n): hidden units 0-7 have large weights on inputs
    the data never sets (dead on it), units 8-15 small weights on the inputs it does."""
    rng = np.random.default_rng(seed)
    w0 = np.zeros((m, hidden), np.float32)
    w0[: m // 2, : hidden // 2] = 5 * rng.standard_normal((m // 2, hidden // 2))
    w0[m // 2:, hidden // 2:] = 0.5 * rng.standard_normal((m // 2, hidden // 2))
    w1 = rng.standard_normal((hidden, n)).astype(np.float32)
    w1[: hidden // 2] *= 5
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["y"], name="fc1")]
    return make_model(nodes, [tensor("x", ["B", "T", m])], [tensor("y", None)], {"w0": w0, "w1": w1})


def live_inputs(n=32, t=5, m=8, seed=1):
    x = np.random.default_rng(seed).standard_normal((n, t, m)).astype(np.float32)
    x[..., : m // 2] = 0  # the inputs the large weights read
    return {"x": x}


def _error(model, out, data) -> float:
    want, got = run(model, data)["y"], run(out, data)["y"]
    return float(np.sum((want - got) ** 2) / np.sum(want ** 2))


def test_activation_importance_keeps_the_channels_the_data_uses_where_magnitude_keeps_dead_ones():
    model, calib, test = dead_and_live(), live_inputs(seed=1), live_inputs(seed=2)
    errors = {}
    for importance in ("l2", "activation"):
        out, records = run_pass(model, f"remove-channels{{ratio=0.5,round_to=1,importance={importance}}}", data=calib)
        assert records[0].report.details["importance"] == [importance]
        errors[importance] = _error(model, out, test)
    assert errors["activation"] < 1e-6 < 0.5 < errors["l2"], errors  # the dead units carry nothing on this data


def test_activation_importance_counts_the_real_tokens_only():
    """Padded positions that set the dead units' inputs do not make them important."""
    model = dead_and_live()
    data = live_inputs(seed=1)
    mask = np.ones(data["x"].shape[:2], np.int64)
    mask[:, 3:] = 0
    data["x"][:, 3:, :4] = 50.0  # only the padding drives the dead units
    graph_mask = helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT)
    model.graph.node.append(graph_mask)
    model.graph.input.append(tensor("attention_mask", ["B", "T"], TensorProto.INT64))
    model.graph.output.append(tensor("mf", None))
    out, _ = run_pass(model, "remove-channels{ratio=0.5,round_to=1,importance=activation}",
                      data=dict(data, attention_mask=mask))
    test = dict(live_inputs(seed=2), attention_mask=np.ones((32, 5), np.int64))
    assert _error(model, out, test) < 1e-6


def test_activation_importance_without_data_is_one_clear_line():
    with pytest.raises(InputError, match="needs sample data"):
        run_pass(dead_and_live(), "remove-channels{ratio=0.5,importance=activation}")


def echoed(m=6, n=5, seed=3):
    """x -> MatMul (8 hidden) -> Relu -> MatMul: hidden units 4-7 are 0.9 x units 0-3 (the same signal),
    read by other (smaller) weights of the second layer: after pruning them the kept units can do their work."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((m, 4)).astype(np.float32)
    w0 = np.concatenate([base, 0.9 * base], 1)
    w1 = rng.standard_normal((8, n)).astype(np.float32)
    w1[4:] *= 0.2  # so the echoes are the ones removed
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["y"], name="fc1")]
    return make_model(nodes, [tensor("x", ["B", m])], [tensor("y", None)], {"w0": w0, "w1": w1})


def test_refit_gives_the_removed_channels_work_to_the_kept_ones_that_carry_the_same_signal():
    model = echoed()
    rng = np.random.default_rng(4)
    calib, test = ({"x": rng.standard_normal((n, 6)).astype(np.float32)} for n in (256, 64))
    errors = {}
    for refit in ("false", "true"):
        out, records = run_pass(model, f"remove-channels{{ratio=0.5,round_to=1,importance=activation,refit={refit}}}",
                                data=calib)
        errors[refit] = _error(model, out, test)
    assert records[0].report.stats["readers_refitted"] == 1
    assert errors["true"] < 0.25 * errors["false"], errors
    with pytest.raises(InputError, match="refit needs sample data"):
        run_pass(model, "remove-channels{ratio=0.5,refit=true}")


def test_with_refit_the_budget_measures_the_refitted_model():
    """max_drop judges the model the pass gives out: measured_drop is the refitted output's drop on the data."""
    from onnxcomp.measure.samples import as_samples
    from onnxcomp.pipeline.budget import drop_measure

    model = echoed()
    calib = {"x": np.random.default_rng(4).standard_normal((256, 6)).astype(np.float32)}
    out, records = run_pass(model, "remove-channels{ratio=0.5,round_to=1,importance=activation,refit=true,max_drop=0.9}",
                            data=as_samples(calib, model))
    measured = records[0].report.stats["measured_drop"]
    actual = drop_measure(model, as_samples(calib, model))(out).drop
    assert np.isclose(measured, actual, atol=1e-6), (measured, actual)


def test_the_report_names_l2_where_no_reader_could_be_measured():
    """The second layer reads its weight through an Identity: nothing lines up with an activation, the group
    keeps its l2 score, and the report says l2, not activation."""
    model = dead_and_live()
    model.graph.node.insert(0, helper.make_node("Identity", ["w1"], ["w1_read"]))
    model.graph.node[-1].input[1] = "w1_read"
    _, records = run_pass(model, "remove-channels{ratio=0.5,round_to=1,importance=activation}", data=live_inputs())
    assert records[0].report.details["importance"] == ["l2"]


def skip_and_normed(c=8, size=4, seed=5):
    """x -> 1x1 Conv (8 channels, 1000x the input) read twice, as a U-Net block reads its residual stream: raw by
    a skip 1x1 Conv (out_skip) and behind a GroupNorm (Reshape [0, 8, -1], InstanceNormalization, Reshape back,
    affine) by another 1x1 Conv (out_normed). The skip reads channels 0-3 a little more than 4-7; the normed
    reader reads almost only 4-7. Each output is judged relative to its own size."""
    rng = np.random.default_rng(seed)
    w_skip = np.ones((4, c, 1, 1), np.float32)
    w_skip[:, c // 2:] = 0.9
    w_normed = 0.1 * np.ones((4, c, 1, 1), np.float32)
    w_normed[:, c // 2:] = 1.0
    inits = {"w0": (1000 * np.eye(c) + 10 * rng.standard_normal((c, c))).astype(np.float32)[:, :, None, None],
             "w_skip": w_skip * rng.uniform(0.95, 1.05, w_skip.shape).astype(np.float32),
             "w_normed": w_normed * rng.uniform(0.95, 1.05, w_normed.shape).astype(np.float32),
             "grouped": np.array([0, c, -1], np.int64), "back": np.array([-1, c, size, size], np.int64),
             "ones": np.ones(c, np.float32), "zeros": np.zeros(c, np.float32),
             "gamma": np.ones((c, 1, 1), np.float32), "beta": np.zeros((c, 1, 1), np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], name="stream"),
             helper.make_node("Conv", ["h", "w_skip"], ["out_skip"], name="skip"),
             helper.make_node("Reshape", ["h", "grouped"], ["hg"]),
             helper.make_node("InstanceNormalization", ["hg", "ones", "zeros"], ["hn"]),
             helper.make_node("Reshape", ["hn", "back"], ["hb"]),
             helper.make_node("Mul", ["hb", "gamma"], ["hs"]),
             helper.make_node("Add", ["hs", "beta"], ["gn"]),
             helper.make_node("Conv", ["gn", "w_normed"], ["out_normed"], name="normed")]
    return make_model(nodes, [tensor("x", ["B", c, size, size])],
                      [tensor("out_skip", None), tensor("out_normed", None)], inits)


def test_a_reader_of_the_raw_stream_does_not_outvote_one_behind_a_groupnorm():
    """Summed raw, the skip's energy (~1e6 per channel) alone would rank the channels and keep 0-3, which the
    normed reader barely reads (its output almost all lost); as shares of each reader's output, removing 0-3
    costs the skip ~55% of its output and the normed reader ~1%, removing 4-7 ~45% and ~99%: 0-3 go."""
    model = skip_and_normed()
    rng = np.random.default_rng(6)
    calib, test = ({"x": rng.standard_normal((n, 8, 4, 4)).astype(np.float32)} for n in (64, 16))
    out, records = run_pass(model, "remove-channels{ratio=0.5,round_to=1,importance=activation}", data=calib)
    assert records[0].report.details["importance"] == ["activation"]
    (kept,) = [r["after"] for r in records[0].report.details["groups"] if r["producers"] == ["stream"]]
    assert kept == 4
    want, got = run(model, test), run(out, test)
    relative = {k: float(np.sum((want[k] - got[k]) ** 2) / np.sum(want[k] ** 2)) for k in want}
    assert relative["out_normed"] < 0.1 and relative["out_skip"] < 0.7, relative
