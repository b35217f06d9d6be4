"""Distillation loss math against hand-written numpy, and feature adapters."""

import itertools

import numpy as np
import pytest
import torch
from helpers import rng_array

from onnxcomp.distill.losses import (
    FeatureAdapter,
    distillation_loss,
    output_loss,
    soft_target_loss,
)
from onnxcomp.distill.options import DistillOptions, parse_feature
from onnxcomp.errors import InputError


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kd(student, teacher, t):
    p, q = np_softmax(teacher / t), np_softmax(student / t)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)) * t * t)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 8.0])
def test_soft_target_loss_is_kl_times_t_squared(t):
    s, te = rng_array((16, 10), 1, 3.0), rng_array((16, 10), 2, 3.0)
    got = float(soft_target_loss(torch.from_numpy(s), torch.from_numpy(te), t))
    assert got == pytest.approx(np_kd(s.astype(np.float64), te.astype(np.float64), t), rel=1e-5)


def test_soft_target_loss_zero_iff_same_logits():
    z = torch.from_numpy(rng_array((8, 10)))
    assert float(soft_target_loss(z, z, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_target_loss(z, z + 5.0, 4.0)) == pytest.approx(0.0, abs=1e-5)  # shift-invariant
    assert float(soft_target_loss(z, 2 * z, 4.0)) > 1e-3


def test_alpha_mixes_kd_and_cross_entropy():
    s, te = torch.from_numpy(rng_array((32, 10), 3)), torch.from_numpy(rng_array((32, 10), 4))
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 10, 32))
    kd = float(soft_target_loss(s, te, 4.0))
    ce = float(torch.nn.functional.cross_entropy(s, labels))
    for alpha in (0.0, 0.3, 0.7, 1.0):
        loss, parts = output_loss(s, te, labels, 4.0, alpha)
        assert float(loss) == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-5)
        assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    loss, parts = output_loss(s, te, None, 4.0, 0.3)  # no labels: pure soft targets whatever alpha says
    assert float(loss) == pytest.approx(kd, rel=1e-5) and "ce" not in parts


def test_gradient_scale_is_comparable_across_temperatures():
    # The T^2 factor keeps soft-target gradients on the same scale at every temperature (Hinton et al.).
    te = torch.from_numpy(rng_array((64, 10), 5, 2.0))
    norms = []
    for t in (2.0, 8.0):
        s = torch.from_numpy(rng_array((64, 10), 6, 0.2)).requires_grad_(True)
        soft_target_loss(s, te, t).backward()
        norms.append(float(s.grad.norm()))
    assert 0.2 < norms[1] / norms[0] < 5.0


def test_non_logit_outputs_use_mse_and_labels_go_to_first_logits():
    seq_s, seq_t = torch.from_numpy(rng_array((2, 4, 8), 1)), torch.from_numpy(rng_array((2, 4, 8), 2))
    loss, parts = distillation_loss([seq_s], [seq_t], None, 4.0, 0.7)
    assert float(loss) == pytest.approx(float(((seq_s - seq_t) ** 2).mean()), rel=1e-6) and "mse" in parts
    logits_s, logits_t = torch.from_numpy(rng_array((2, 10), 3)), torch.from_numpy(rng_array((2, 10), 4))
    labels = torch.tensor([1, 2])
    loss, parts = distillation_loss([seq_s, logits_s], [seq_t, logits_t], labels, 4.0, 0.5)
    expected = float(((seq_s - seq_t) ** 2).mean()) + float(output_loss(logits_s, logits_t, labels, 4.0, 0.5)[0])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_feature_adapter_maps_widths():
    conv = FeatureAdapter((2, 8, 5, 5), (2, 16, 5, 5), "a")
    assert isinstance(conv.proj, torch.nn.Conv2d) and conv.proj.kernel_size == (1, 1)
    assert conv(torch.zeros(2, 8, 5, 5)).shape == (2, 16, 5, 5)
    lin = FeatureAdapter((2, 7, 32), (2, 7, 64), "b")
    assert isinstance(lin.proj, torch.nn.Linear) and lin(torch.zeros(2, 7, 32)).shape == (2, 7, 64)
    same = FeatureAdapter((2, 16), (2, 16), "c")
    assert same.proj is None
    # A 1-D conv map [N, C, L] whose widths differ on axis 1 (a pruned audio UNet's residual join).
    conv1d = FeatureAdapter((2, 48, 75), (2, 64, 75), "f")
    assert isinstance(conv1d.proj, torch.nn.Conv1d) and conv1d(torch.zeros(2, 48, 75)).shape == (2, 64, 75)
    with pytest.raises(InputError, match="only the channel width may differ"):
        FeatureAdapter((2, 8, 5, 5), (2, 16, 3, 3), "d")
    with pytest.raises(InputError, match="different ranks"):
        FeatureAdapter((2, 8), (2, 8, 1, 1), "e")


def test_options_validate_and_features_parse():
    with pytest.raises(InputError, match="alpha"):
        DistillOptions(alpha=1.5)
    with pytest.raises(InputError, match="temperature"):
        DistillOptions(temperature=0)
    with pytest.raises(InputError, match="cache"):
        DistillOptions(cache="gpu")
    assert parse_feature("/layer3/Relu_1_output_0=layer3") == ("/layer3/Relu_1_output_0", "layer3")
    assert parse_feature("x") == ("x", "x")
    with pytest.raises(InputError):
        parse_feature("=b")
    assert DistillOptions(features=[["a", "b"]]).features == (("a", "b"),)


def test_masked_mse_ignores_padding_and_cut_keeps_real_positions():
    from onnxcomp.distill.losses import masked_mse
    from onnxcomp.distill.trainer import cut_like, padding_cut

    s, t = rng_array((2, 5, 3), 1), rng_array((2, 5, 3), 2)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], np.int64)
    want = np.mean(np.concatenate([(s[0, :2] - t[0, :2]) ** 2, (s[1, :3] - t[1, :3]) ** 2]))
    got = masked_mse(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(mask).float())
    assert abs(float(got) - want) < 1e-6
    t_pad = t.copy()
    t_pad[:, 3:] += 100.0  # padded positions of the target do not count
    assert abs(float(masked_mse(torch.from_numpy(s), torch.from_numpy(t_pad), torch.from_numpy(mask).float())) - want) < 1e-6
    ids = np.arange(10).reshape(2, 5)
    (cut_ids, _), weights, lengths = padding_cut([ids, mask], 1, True)
    assert lengths == (5, 3) and cut_ids.shape == (2, 3) and weights.shape == (2, 3)
    assert cut_like([t, np.zeros(2)], lengths)[0].shape == (2, 3, 3)
    assert padding_cut([ids, mask], 1, False)[2] == (5, 5)
    assert float(masked_mse(torch.from_numpy(s[:, :2, 0]), torch.from_numpy(t[:, :2, 0]), None)) > 0


def test_mask_option_must_name_an_input():
    with pytest.raises(InputError, match="mask"):
        DistillOptions(mask="")


def test_by_length_batches_hold_similar_lengths_and_every_sample_once():
    from onnxcomp.distill.trainer import by_length

    lengths = np.random.default_rng(0).integers(1, 64, 100)
    order = by_length(np.random.default_rng(1).permutation(100), lengths, 16, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(100))
    spread = [np.ptp(lengths[order[s:s + 16]]) for s in range(0, 96, 16)]
    assert max(spread) < np.ptp(lengths) / 2  # sorted within the window: each batch a narrow band


def np_cos(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_cosine_output_loss_counts_real_positions_and_ignores_scale():
    from onnxcomp.distill.losses import masked_cosine

    s, t = rng_array((2, 5, 4), 1).astype(np.float64), rng_array((2, 5, 4), 2).astype(np.float64)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], np.float64)
    want = np.mean(np.concatenate([1 - np_cos(s[0, :2], t[0, :2]), 1 - np_cos(s[1, :3], t[1, :3])]))
    ts, tt, tm = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(mask)
    assert float(masked_cosine(ts, tt, tm)) == pytest.approx(want, rel=1e-9)
    t_pad = t.copy()
    t_pad[:, 3:] = -t_pad[:, 3:]  # padding does not count
    assert float(masked_cosine(ts, torch.from_numpy(t_pad), tm)) == pytest.approx(want, rel=1e-9)
    assert float(masked_cosine(3.0 * tt, tt, tm)) == pytest.approx(0.0, abs=1e-9)  # direction, not scale
    loss, parts = output_loss(ts, tt, None, 4.0, 0.7, tm, kind="cosine")
    assert float(loss) == pytest.approx(want, rel=1e-9) and set(parts) == {"cosine_distance"}


def test_cosine_output_loss_without_a_mask_counts_every_position():
    """--output-loss cosine without --mask: 1 - cosine per position over all positions (as the flag says),
    not one cosine of each whole flattened sample."""
    from onnxcomp.distill.losses import masked_cosine

    s, t = rng_array((2, 5, 4), 5).astype(np.float64), rng_array((2, 5, 4), 6).astype(np.float64)
    want = np.mean(1 - np_cos(s, t))
    assert float(masked_cosine(torch.from_numpy(s), torch.from_numpy(t), None)) == pytest.approx(want, rel=1e-9)
    flat = np.mean(1 - np_cos(s.reshape(2, -1), t.reshape(2, -1)))  # a 2-axis output: whole samples
    got = masked_cosine(torch.from_numpy(s.reshape(2, -1)), torch.from_numpy(t.reshape(2, -1)), None)
    assert float(got) == pytest.approx(flat, rel=1e-9)


def test_pooled_term_compares_the_means_over_real_tokens():
    from onnxcomp.distill.losses import pooled_cosine

    s, t = rng_array((2, 5, 4), 3).astype(np.float64), rng_array((2, 5, 4), 4).astype(np.float64)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], np.float64)
    pooled = [(x[0, :2].mean(0), x[1, :4].mean(0)) for x in (s, t)]
    want = np.mean([1 - np_cos(pooled[0][i], pooled[1][i]) for i in range(2)])
    ts, tt, tm = torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(mask)
    assert float(pooled_cosine(ts, tt, tm)) == pytest.approx(want, rel=1e-9)
    # Token states that differ but average to the teacher's mean: the pooled term is zero, the per-token one not.
    shuffled = tt.clone()
    shuffled[1, :4] = tt[1, [3, 2, 1, 0]]
    assert float(pooled_cosine(shuffled, tt, tm)) == pytest.approx(0.0, abs=1e-9)
    loss, parts = output_loss(ts, tt, None, 4.0, 0.7, tm, pooled_weight=0.5)
    mse = float(((ts - tt) ** 2 * tm[..., None]).sum() / (tm.sum() * 4))
    assert float(loss) == pytest.approx(mse + 0.5 * want, rel=1e-9) and set(parts) == {"mse", "pooled_distance"}
    assert pooled_cosine(ts[:, 0], tt[:, 0], tm) is None  # nothing to pool: no term
    assert set(output_loss(ts, tt, None, 4.0, 0.7, None, pooled_weight=0.5)[1]) == {"mse"}


def test_loss_and_schedule_options_are_checked():
    with pytest.raises(InputError, match="output_loss must be one of mse, cosine"):
        DistillOptions(output_loss="l1")
    with pytest.raises(InputError, match="pooled_weight pools over the real tokens: give mask"):
        DistillOptions(pooled_weight=1.0)
    with pytest.raises(InputError, match="warmup"):
        DistillOptions(warmup=1.0)
    assert DistillOptions(pooled_weight=1.0, mask="attention_mask").pooled_weight == 1.0


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_warmup_rises_linearly_then_follows_the_schedule(kind):
    from onnxcomp.distill.trainer import schedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = schedule(opt, kind, 20, 0.2)
    rates = []
    for _ in range(20):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if kind == "cosine":
        assert rates[-1] < 0.05 and all(a >= b for a, b in itertools.pairwise(rates[3:]))
    else:
        assert rates[3:] == pytest.approx([1.0] * 17)
    assert type(schedule(opt, "cosine", 20, 0.0)).__name__ == "CosineAnnealingLR"  # unchanged without warmup
