"""Attention-distribution distillation: KL over the last axis of Softmax outputs, real query rows only, found by
graph (attention_weight) or named per pair (features=(teacher, student, "kl"), `--feature T=S:kl`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, tensor
from onnx import helper
from test_distill_trim import SEQ, attention_model, padded, weights

import onnxcomp
from onnxcomp.distill.attention import last_axis_softmax_outputs, shared_softmax_outputs, value_inputs
from onnxcomp.distill.options import DistillOptions, parse_feature
from onnxcomp.errors import InputError

torch = pytest.importorskip("torch")

from onnxcomp.distill.losses import masked_kl, self_relation


def attention_maps(batch=3, heads=2, seq=6, lengths=(6, 4, 2), seed=0):
    """Random attention [B, H, T, T] whose padded keys (past each sample's length) hold probability 0, and its mask."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(seq)[None] < torch.tensor(lengths)[:, None]).float()
    logits = torch.randn(batch, heads, seq, seq, generator=g) - 1e4 * (1 - mask)[:, None, None, :]
    return torch.softmax(logits, -1), mask


def test_kl_is_zero_for_identical_maps_and_positive_otherwise():
    p, mask = attention_maps()
    q, _ = attention_maps(seed=1)
    assert float(masked_kl(p, p, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_kl(p, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_kl(q, p, mask)) > 1e-2
    assert float(masked_kl(q, p)) > 1e-2


def test_kl_ignores_padded_query_rows_and_keys():
    p, mask = attention_maps()
    q, _ = attention_maps(seed=1)
    reference = float(masked_kl(q, p, mask))
    noisy = q.clone()
    noisy[2, :, 2:, :] = torch.softmax(torch.randn(2, 4, 6), -1)  # the padded query rows of sample 2 changed
    assert float(masked_kl(noisy, p, mask)) == pytest.approx(reference, rel=1e-6)
    # The same real rows, the padded rows removed by a cut to the longest real sequence of samples 1 and 2:
    assert float(masked_kl(q[1:, :, :4, :4], p[1:, :, :4, :4], mask[1:, :4])) == pytest.approx(
        float(masked_kl(q[1:], p[1:], mask[1:])), rel=1e-5)
    changed = q.clone()
    changed[0, 0, 0] = torch.softmax(torch.randn(6), -1)  # a real row changed: the loss sees it
    assert float(masked_kl(changed, p, mask)) != pytest.approx(reference, rel=1e-6)


def test_kl_gradient_pulls_the_student_towards_the_teacher():
    p, mask = attention_maps()
    logits = torch.zeros_like(p, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=5.0)
    first = None
    for _ in range(20):
        loss = masked_kl(torch.softmax(logits, -1), p, mask)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_parse_feature_kinds():
    assert parse_feature("a=b") == ("a", "b")
    assert parse_feature("a=b:kl") == ("a", "b", "kl")
    assert parse_feature("a=b:mse") == ("a", "b")
    assert parse_feature("x:0=y:0") == ("x:0", "y:0")  # a TensorFlow-style name keeps its suffix
    assert parse_feature("attn:kl") == ("attn", "attn", "kl")
    assert DistillOptions(features=[("a", "b", "mse")]).features == (("a", "b"),)
    with pytest.raises(InputError, match="feature loss must be one of"):
        DistillOptions(features=[("a", "b", "l1")])
    with pytest.raises(InputError, match="attention_weight"):
        DistillOptions(attention_weight=-1)
    with pytest.raises(InputError, match="value_weight"):
        DistillOptions(value_weight=-0.5)


def _softmax_graph(names_axes, opset=17):
    nodes = [helper.make_node("Softmax", ["x"], [name], **({} if axis is None else {"axis": axis}))
             for name, axis in names_axes]
    return make_model(nodes, [tensor("x", [2, 3])], [tensor(n, [2, 3]) for n, _ in names_axes], opset=opset)


def test_softmax_outputs_are_found_by_graph_over_the_last_axis_only():
    model = _softmax_graph([("p_last", -1), ("p_default", None), ("p_first", 0)])
    assert last_axis_softmax_outputs(model) == ["p_last", "p_default"]
    assert last_axis_softmax_outputs(_softmax_graph([("p_last", -1), ("p_default", None)], opset=11)) == ["p_last"]
    student = _softmax_graph([("p_default", None), ("other", -1)])
    assert shared_softmax_outputs(model, student) == ["p_default"]


def test_value_relation_gives_padded_keys_no_weight():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    rel = self_relation(values, mask)
    assert torch.allclose(rel.sum(-1), torch.ones(2, 3, 5))
    assert float(rel[0, :, :, 3:].abs().max()) == 0.0  # padded keys
    cut = self_relation(values[:1, :, :3], mask[:1, :3])  # the first sample cut to its real length
    assert torch.allclose(rel[0, :, :3, :3], cut[0], atol=1e-6)
    assert value_inputs(attention_model(None, 0), ["attn"]) == {"attn": "x"}  # MatMul(attn, x): x is weighed


def _options(**extra):
    return {"epochs": 1, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "threads": 1,
            "mask": "attention_mask", **extra}


def test_attention_weight_reaches_the_loss_and_the_cut_stays_exact():
    """The Softmax output is found by graph and matched (its part is logged); a batch cut to its real length gives
    the same attention loss and the same step as all padded positions computed."""
    teacher = attention_model(None, 0)
    free, fixed = attention_model(None, 1, scale=0.3), attention_model(SEQ, 1, scale=0.3)
    data = padded()
    lines = []
    cut = onnxcomp.distill(teacher, free, data, _options(attention_weight=1.0), progress=lines.append)
    full = onnxcomp.distill(teacher, fixed, data, _options(attention_weight=1.0))
    assert any("attention: matching 1 Softmax" in line for line in lines), lines
    a, b = cut.history[0], full.history[0]
    assert a["attention"] > 1e-3  # the student's table differs: its attention does too
    for key in ("loss", "mse", "attention"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), key
    np.testing.assert_allclose(weights(cut.model)["table"], weights(full.model)["table"], rtol=1e-5, atol=1e-6)
    plain = onnxcomp.distill(teacher, free, data, _options())
    assert "attention" not in plain.history[0]
    assert not np.allclose(weights(plain.model)["table"], weights(cut.model)["table"])  # the term moved the table


def test_value_weight_reaches_the_loss_and_the_cut_stays_exact():
    teacher = attention_model(None, 0)
    free, fixed = attention_model(None, 1, scale=0.3), attention_model(SEQ, 1, scale=0.3)
    data = padded()
    cut = onnxcomp.distill(teacher, free, data, _options(value_weight=1.0))
    full = onnxcomp.distill(teacher, fixed, data, _options(value_weight=1.0))
    a, b = cut.history[0], full.history[0]
    assert a["value_relation"] > 1e-3 and "attention" not in a
    assert a["value_relation"] == pytest.approx(b["value_relation"], rel=1e-5)
    np.testing.assert_allclose(weights(cut.model)["table"], weights(full.model)["table"], rtol=1e-5, atol=1e-6)


def test_kl_feature_pair_reaches_the_loss():
    teacher, student = attention_model(None, 0), attention_model(None, 1, scale=0.3)
    result = onnxcomp.distill(teacher, student, padded(), _options(features=[("attn", "attn", "kl")]))
    assert result.history[0]["feature"] > 1e-3
    with pytest.raises(InputError, match="KL needs one shape"):
        onnxcomp.distill(teacher, student, padded(), _options(features=[("attn", "x", "kl")]))


def test_attention_weight_without_shared_softmax_is_one_line():
    teacher = attention_model(None, 0)
    student = attention_model(None, 1)
    for node in student.graph.node:  # renamed: no Softmax output the teacher computes under that name
        node.output[:] = ["attn_renamed" if o == "attn" else o for o in node.output]
        node.input[:] = ["attn_renamed" if i == "attn" else i for i in node.input]
    onnx.checker.check_model(student)
    with pytest.raises(InputError, match="share no Softmax output"):
        onnxcomp.distill(teacher, student, padded(), _options(attention_weight=1.0))


def _cli_report(tmp_path, capsys, *flags) -> dict:
    """The JSON report of `onnxcomp distill` on the attention models with `flags` (one epoch)."""
    import json

    from test_distill_cli import cli_in_process

    teacher, student, data = tmp_path / "t.onnx", tmp_path / "s.onnx", tmp_path / "d.npz"
    onnx.save(attention_model(None, 0), str(teacher))
    onnx.save(attention_model(None, 1, scale=0.3), str(student))
    np.savez(data, **padded())
    code, _, err = cli_in_process(capsys, "distill", "--teacher", teacher, "--student", student, "--data", data,
                                  "--epochs", "1", "--batch-size", "16", "--threads", "1", "--mask", "attention_mask",
                                  *flags, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json", "-q")
    assert code == 0, err
    return json.loads((tmp_path / "r.json").read_text())


def test_cli_feature_kl_suffix(tmp_path, capsys):
    """`--feature attn=attn:kl` reaches the KL (the report logs the feature part)."""
    report = _cli_report(tmp_path, capsys, "--feature", "attn=attn:kl")
    assert report["options"]["features"] == [["attn", "attn", "kl"]] and report["epochs"][0]["feature"] > 1e-3


def test_cli_attention_and_value_weights_reach_the_loss(tmp_path, capsys):
    report = _cli_report(tmp_path, capsys, "--attention-weight", "1", "--value-weight", "0.5")
    assert report["options"]["attention_weight"] == 1.0 and report["options"]["value_weight"] == 0.5
    assert report["epochs"][0]["attention"] > 0 and report["epochs"][0]["value_relation"] > 0
