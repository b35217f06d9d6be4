"""Cutting padded batches to their longest real sequence must not change what is learnt: on a masked-attention
encoder (padding keys get -1e4 before the Softmax, as BERT exports do) the loss of a batch and the weights
after a step are the same whether the trainer computes all padded positions or only the real ones."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_model, tensor
from onnx import TensorProto, helper, numpy_helper

import onnxcomp

torch = pytest.importorskip("torch")

VOCAB, WIDTH, SEQ = 40, 8, 12


def attention_model(seq, seed: int = 0, scale: float = 1.0):
    """ids -> table -> one self-attention over the unmasked keys -> MatMul -> Tanh; `seq` None leaves the
    sequence axis free (the trainer may cut it), an int fixes it (the trainer may not)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x"]),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["dots"]),
             helper.make_node("Mul", ["dots", "inv_sqrt"], ["scaled"]),
             helper.make_node("Unsqueeze", ["attention_mask", "axes"], ["m"]),
             helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["hidden_keys"]),
             helper.make_node("Mul", ["hidden_keys", "minus_big"], ["bias"]),
             helper.make_node("Add", ["scaled", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["attn"], axis=-1),
             helper.make_node("MatMul", ["attn", "x"], ["ctx"]),
             helper.make_node("MatMul", ["ctx", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["hidden"])]
    inits = {"table": rng.normal(size=(VOCAB, WIDTH)).astype(np.float32),
             "w": (rng.normal(size=(WIDTH, WIDTH)) * scale).astype(np.float32),
             "axes": np.array([1], np.int64), "one": np.array(1.0, np.float32),
             "minus_big": np.array(-1e4, np.float32), "inv_sqrt": np.array(WIDTH ** -0.5, np.float32)}
    dims = ["batch", seq or "seq"]
    return make_model(nodes, [tensor("input_ids", dims, TensorProto.INT64),
                              tensor("attention_mask", dims, TensorProto.INT64)],
                      [tensor("hidden", [*dims, WIDTH])], inits)


def padded(n: int = 16, seed: int = 0, longest: int = 7) -> dict[str, np.ndarray]:
    """Sentences of 2..`longest` real tokens padded with zeros to SEQ: the last SEQ - longest columns pad only."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, longest + 1, n)
    lengths[0] = longest
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, (n, SEQ)) * mask
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


def weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("extra", [{}, {"output_loss": "cosine", "pooled_weight": 1.0}],
                         ids=["mse", "cosine+pooled"])
def test_cut_batches_give_the_same_loss_and_step_as_full_ones(extra):
    teacher = attention_model(None, 0)
    free, fixed = attention_model(None, 0, scale=0.3), attention_model(SEQ, 0, scale=0.3)
    data = padded()
    options = {"epochs": 1, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "threads": 1,
               "mask": "attention_mask", "features": [("ctx", "ctx")], **extra}
    cut = onnxcomp.distill(teacher, free, data, options)  # one batch of 16, cut to 7 of 12 columns
    full = onnxcomp.distill(teacher, fixed, data, options)  # the same batch, all 12 columns computed
    a, b = cut.history[0], full.history[0]
    assert a["loss"] > 1e-3  # the student starts off the teacher: the comparison is not 0 == 0
    for key in ("loss", "mse", "cosine_distance", "pooled_distance", "feature"):
        if key in a or key in b:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), key
    wa, wb = weights(cut.model), weights(full.model)
    assert not np.array_equal(wa["w"], weights(free)["w"])  # the step moved the weights ...
    np.testing.assert_allclose(wa["w"], wb["w"], rtol=1e-5, atol=1e-6)  # ... the same way with and without the cut
    np.testing.assert_allclose(wa["table"], wb["table"], rtol=1e-5, atol=1e-6)


def test_padding_cut_drops_only_columns_that_pad_every_sample():
    from onnxcomp.distill.trainer import padding_cut

    data = padded(longest=7)
    other = np.zeros((16, 3), np.float32)  # [B, 3]: not the sequence axis, left alone
    (ids, mask_in, kept), mask, lengths = padding_cut([data["input_ids"], data["attention_mask"], other], 1, True)
    assert lengths == (SEQ, 7) and ids.shape == (16, 7) and mask_in.shape == (16, 7) and kept.shape == (16, 3)
    assert int(mask.sum()) == int(data["attention_mask"].sum())  # no real token lost
