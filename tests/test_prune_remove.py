"""remove-channels as a pass: sizes, rounding, importance, plans, budgets, bad input, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import random_feeds, run, run_pass
from prune_builders import Net, ffn_model

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.measure.counts import estimate_macs, model_counts
from onnxcomp.measure.data import load_npz


@pytest.fixture(scope="module")
def cnn(models_dir):
    return onnx.load_model(models_dir / "digits_cnn.onnx")


def prune(model, options: str = "", **ctx):
    out, records = run_pass(model, f"remove-channels{{{options}}}" if options else "remove-channels", **ctx)
    return out, records[-1].report


def conv_widths(model) -> list[int]:
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [inits[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"]


def test_half_of_the_digits_cnn_channels_go(cnn):
    out, report = prune(cnn, "ratio=0.5")
    onnx.checker.check_model(out, full_check=True)
    assert conv_widths(cnn) == [16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert conv_widths(out) == [8, 8, 8, 16, 16, 16, 32, 32, 32]
    params = model_counts(cnn)["params"], model_counts(out)["params"]
    macs = estimate_macs(cnn)["macs"], estimate_macs(out)["macs"]
    assert params[1] / params[0] < 0.3 and macs[1] / macs[0] <= 0.3
    assert report.stats["macs_before"] == macs[0] and report.stats["macs_after"] == macs[1]
    assert report.details["params"]["removed_predicted"] == params[0] - params[1]
    table = report.details["groups"]
    assert len(table) == 7 and [r["after"] for r in table if r["reason"] is None] == [8, 8, 16, 16, 32, 32]
    assert [s.name for s in report.skipped] == ["/fc/Gemm"] and "graph output" in report.skipped[0].reason
    feeds = random_feeds(cnn)
    assert run(out, feeds)["logits"].shape == run(cnn, feeds)["logits"].shape


def test_rounding_keeps_multiples_of_round_to(cnn):
    out, _ = prune(cnn, "ratio=0.3")
    assert conv_widths(out) == [8, 8, 8, 24, 24, 24, 48, 48, 48]
    out, _ = prune(cnn, "ratio=0.3,round_to=1")
    assert conv_widths(out) == [11, 11, 11, 22, 22, 22, 45, 45, 45]


def test_importance_criteria_choose_different_channels(cnn):
    kept = {}
    for kind in ("l1", "l2", "bn-scale"):
        out, report = prune(cnn, f"ratio=0.5,importance={kind}")
        assert report.details["importance"] == [kind]
        kept[kind] = onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "stem.0.weight"))
    assert not np.array_equal(kept["l2"], kept["bn-scale"])
    folded, _ = run_pass(cnn, "cleanup,fold-bn")
    _, report = prune(folded, "ratio=0.5,importance=bn-scale")
    assert "no BatchNormalization" in report.details["importance"][0]


def test_global_ranking_prunes_layers_unevenly_but_to_the_same_total(cnn):
    uniform, _ = prune(cnn, "ratio=0.3")
    out, report = prune(cnn, "ratio=0.3,global_ranking=true")
    widths = conv_widths(out)
    assert all(w % 8 == 0 for w in widths) and widths != conv_widths(uniform)
    kept = report.details["channels"]
    assert abs(kept["after"] / kept["before"] - 0.7) < 0.1


def test_the_plan_is_json_and_replays_to_the_same_model(cnn, tmp_path):
    path = tmp_path / "plan.json"
    first, _ = prune(cnn, f"ratio=0.5,write_plan={path}")
    plan = json.loads(path.read_text())
    assert plan["version"] == 1 and {"tensor", "axis", "size", "keep"} <= set(plan["slices"][0])
    again, report = prune(cnn, f"plan={path}")
    assert report.modified
    a = {i.name: onnx.numpy_helper.to_array(i) for i in first.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in again.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    folded, _ = run_pass(cnn, "cleanup,fold-bn")
    with pytest.raises(InputError, match="pruning plan"):
        prune(folded, f"plan={path}")  # BN parameters are gone: the plan does not fit


def test_static_value_info_is_rewritten(cnn):
    inferred = onnx.shape_inference.infer_shapes(cnn)
    assert len(inferred.graph.value_info) > 10
    out, _ = prune(inferred, "ratio=0.5")
    onnx.shape_inference.infer_shapes(out, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in out.graph.value_info}
    assert shapes["/stem/stem.2/Relu_output_0"][1] == 8


def test_unfolded_and_folded_bn_prune_to_the_same_function(cnn):
    folded, _ = run_pass(cnn, "cleanup,fold-bn")
    a, _ = prune(cnn, "ratio=0.5,importance=l1")
    b, _ = prune(folded, "ratio=0.5,importance=l1")
    assert conv_widths(a) == conv_widths(b)
    assert model_counts(a)["params"] > model_counts(b)["params"]  # BN parameters still there, sliced too


def test_transformer_ffn_hidden_dim_and_heads_are_pruned(models_dir):
    model = onnx.load_model(models_dir / "transformer_block.onnx")
    out, report = prune(model, "ratio=0.5")
    pruned = [r for r in report.details["groups"] if r["reason"] is None]
    assert sorted((r["channels"], r["after"]) for r in pruned) == [(4, 2), (256, 128)]
    assert len(report.skipped) == 1 and "graph input" in report.skipped[0].reason
    from onnxcomp.measure.runtime import random_inputs

    feeds = random_inputs(model, {"seq": 7}, batch=3)
    assert run(out, feeds)["y"].shape == run(model, feeds)["y"].shape == (3, 7, 64)
    assert report.stats["macs_after"] <= 0.5 * report.stats["macs_before"]


def test_max_drop_backs_off_until_the_budget_fits(cnn, models_dir):
    data = load_npz(models_dir / "digits_calib.npz")
    data = {k: v[:64] for k, v in data.items()}
    out, report = prune(cnn, "ratio=0.5,max_drop=0.02", data=data)
    assert report.stats["measured_drop"] <= 0.02
    assert report.stats["ratio_used"] < 0.5 and len(report.details["backoff"]) > 1
    from onnxcomp.measure.compare import measure

    assert measure(cnn, out, data).drop <= 0.02


def test_max_drop_that_nothing_meets_raises_with_figures(models_dir):
    model = ffn_model(hidden=32)
    data = {"x": np.random.default_rng(0).standard_normal((16, 4, 8)).astype(np.float32)}
    with pytest.raises(ToleranceError, match="no ratio fits max_drop 0"):
        prune(model, "ratio=0.5,max_drop=0,round_to=1", data=data)
    with pytest.raises(InputError, match="needs sample data"):
        prune(model, "ratio=0.5,max_drop=0.1")


@pytest.mark.parametrize("options, message", [
    ("ratio=1.0", r"ratio must be in \[0, 1\)"),
    ("ratio=-0.1", r"ratio must be in \[0, 1\)"),
    ("ratio=0.5,exclude=[nope;stem.0.weight]", "exclude names not in the model: nope"),
    ("ratio=0.5,round_to=0", "round_to must be at least 1"),
])
def test_bad_options_are_one_clear_line(cnn, options, message):
    with pytest.raises(InputError, match=message):
        prune(cnn, options)


def test_no_prunable_group_is_a_clear_error():
    net = Net(3)
    model = net.model(net.conv(net.x, 4))
    with pytest.raises(InputError, match="no prunable channel group.*graph output"):
        prune(model, "ratio=0.5")


def test_exclude_leaves_the_named_group_whole(cnn):
    out, report = prune(cnn, "ratio=0.5,exclude=[/layer3/conv1/Conv]")
    assert conv_widths(out)[6] == 64
    assert any("excluded" in s.reason for s in report.skipped)


def test_ratio_zero_changes_nothing(cnn):
    out, report = prune(cnn, "ratio=0")
    assert not report.modified and conv_widths(out) == conv_widths(cnn)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})


def test_cli_prunes_the_digits_cnn_and_reports_accuracy(digits_cnn, models_dir, tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    r = cli("optimize", digits_cnn, "-o", out, "--prune-channels", "0.5", "--val", models_dir / "digits_test.npz",
            "--report", report)
    assert r.returncode == 0, r.stderr
    assert "remove-channels" in r.stdout and "accuracy" in r.stdout
    data = json.loads(report.read_text())
    rc = next(p for p in data["passes"] if p["name"] == "remove-channels")
    assert rc["stats"]["groups_pruned"] == 6 and len(rc["details"]["groups"]) == 7
    assert [p["name"] for p in data["passes"]] == ["cleanup", "remove-channels", "fold-bn"]  # BN kept while channels go
    r = cli("optimize", digits_cnn, "-o", tmp_path / "bad.onnx", "--prune-channels", "1.5")
    assert r.returncode == 2 and "ratio must be in [0, 1)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.onnx").exists()


def test_a_layernorm_over_the_channels_is_pruned_by_importance():
    """Lossy but valid: the LayerNorm's scale and bias keep the entries of the channels the group keeps,
    which are the ones with the largest weights; the report says the group is lossy."""
    net = Net(3, seed=1)
    c = net.conv(net.x, 16)
    normed = net.channel_norm(c, "LayerNormalization")
    model = net.model(net.head(net.conv(net.unary(normed), 8)))
    w = {i.name: np.array(onnx.numpy_helper.to_array(i)) for i in model.graph.initializer}
    convs = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    weak = [1, 4, 6, 9, 11, 12, 13, 15]
    w[convs[0]][weak] *= 0.01  # eight weak channels: small filters, small reads by the next conv
    w[convs[1]][:, weak] *= 0.01
    del model.graph.initializer[:]
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in w.items())
    out, report = prune(model, "ratio=0.5")
    onnx.checker.check_model(out, full_check=True)
    ln = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    gamma = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}[ln.input[1]]
    original = w[next(n for n in model.graph.node if n.op_type == "LayerNormalization").input[1]]
    np.testing.assert_array_equal(gamma, original[[0, 2, 3, 5, 7, 8, 10, 14]])
    row = next(r for r in report.details["groups"] if r["channels"] == 16)
    assert row["after"] == 8 and row["lossy"] == ["LayerNormalization over the channels"]
    feeds = random_feeds(model)
    assert run(out, feeds)[out.graph.output[0].name].shape == run(model, feeds)[model.graph.output[0].name].shape


def test_a_groupnorm_straddling_two_groups_is_regrouped():
    """A U-Net's GroupNorm after a skip Concat (6 + 10 channels in 4 groups of 4: group 1 holds channels of
    both): neither group loses whole GroupNorm groups, so the kept channels form new groups of the old size
    (lossy); the pruned model is valid and its InstanceNormalization has one scale per new group."""
    from onnxcomp.passes.prune.group_norm import regrouped_count

    assert [regrouped_count(224, 32, k) for k in (112, 120, 7)] == [16, 8, 1]
    net = Net(3, seed=2)
    a, b = net.conv(net.x, 6), net.conv(net.x, 10)
    normed = net.unary(net.group_norm(net.concat([a, b]), 4))
    model = net.model(net.head(net.conv(normed, 8)))
    out, report = prune(model, "ratio=0.5,round_to=1")
    onnx.checker.check_model(out, full_check=True)
    rows = {r["channels"]: r for r in report.details["groups"] if r["channels"] in (6, 10)}
    assert rows[6]["after"] == 3 and rows[10]["after"] == 5
    assert rows[6]["lossy"] == rows[10]["lossy"] == ["GroupNorm regrouped over the kept channels"]
    norm = next(n for n in out.graph.node if n.op_type == "InstanceNormalization")
    scale = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}[norm.input[1]]
    assert scale.shape == (2,)  # 8 kept channels in groups of 4
    feeds = random_feeds(model)
    assert run(out, feeds)[out.graph.output[0].name].shape == run(model, feeds)[model.graph.output[0].name].shape


def test_exact_leaves_the_lossy_groups_whole():
    net = Net(3, seed=1)
    c = net.conv(net.x, 16)
    model = net.model(net.head(net.conv(net.unary(net.channel_norm(c, "Softmax")), 16)))
    _, lossy = prune(model, "ratio=0.5")
    _, exact = prune(model, "ratio=0.5,kept_channels_exact=true")
    assert lossy.stats["groups_pruned"] == 2 and exact.stats["groups_pruned"] == 1
    (skipped,) = [s for s in exact.skipped if "exact search" in s.reason]
    assert "Softmax over the channels" in skipped.reason


def test_a_shufflenet_stream_is_pruned_and_runs():
    """The stream of Net.shuffle_stream (68 channels in conv groups of 17) loses whole tied sets: every grouped
    conv keeps group=4 with as many channels per conv group, and the model runs with the same output."""
    net = Net(3, size=8)
    model = net.model(net.head(net.shuffle_stream(net.x)))
    out, report = prune(model, "ratio=0.5,round_to=1")
    onnx.checker.check_model(out, full_check=True)
    stream = next(r for r in report.details["groups"] if len(r["producers"]) == 3)
    assert stream["after"] < stream["channels"] == 17
    inits = {i.name: tuple(i.dims) for i in out.graph.initializer}
    convs = [(n, inits[n.input[1]]) for n in out.graph.node if n.op_type == "Conv"]
    grouped = [(n, w) for n, w in convs if any(a.name == "group" and a.i == 4 for a in n.attribute)]
    assert len(grouped) == 3 and all(w[0] % 4 == 0 for _, w in grouped)
    assert grouped[1][1][1] * 4 == grouped[2][1][0] == 4 * stream["after"]  # the stream's width, 4 x kept
    feeds = random_feeds(model)
    assert run(out, feeds)["gemm27"].shape == run(model, feeds)["gemm27"].shape


def test_a_bottleneck_sliced_per_conv_group_is_pruned_replayed_and_checked(tmp_path):
    """Net.shuffle_bottleneck (4 conv groups of 10): the plan slices the second grouped conv's weight per conv group
    (`conv_groups`), every grouped conv keeps group=4 with as many channels per conv group, and the model runs. The
    plan replays; a plan keeping unequal columns per conv group is refused in one line."""
    net = Net(8, size=8)
    model = net.model(net.head(net.shuffle_bottleneck(net.x, groups=4, per=10)))
    path = tmp_path / "plan.json"
    out, report = prune(model, f"ratio=0.5,round_to=1,write_plan={path}")
    onnx.checker.check_model(out, full_check=True)
    plan = json.loads(path.read_text())
    (split,) = [s for s in plan["slices"] if "conv_groups" in s]
    assert split["conv_groups"] == 4 and split["size"] == 10 and len(split["keep"]) % 4 == 0
    inits = {i.name: tuple(i.dims) for i in out.graph.initializer}
    convs = {n.name: inits[n.input[1]] for n in out.graph.node if n.op_type == "Conv"}
    first = next(r for r in report.details["groups"] if r["producers"] == ["conv3_node"])
    assert first["after"] < first["channels"] == 10
    assert convs["conv3_node"][0] == convs["conv15_node"][1] * 4 == 4 * first["after"]
    assert report.details["params"]["removed_predicted"] == model_counts(model)["params"] - model_counts(out)["params"]
    feeds = random_feeds(model)
    assert run(out, feeds)["gemm21"].shape == run(model, feeds)["gemm21"].shape
    again, _ = prune(model, f"plan={path}")
    a = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in again.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    split["keep"] = [k for k in split["keep"] if k >= 10] + list(range(10))  # conv group 0 keeps every column
    split["keep"] = sorted(set(split["keep"]))
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError, match="as many columns in each of its 4 conv groups"):
        prune(model, f"plan={path}")


def test_each_conv_group_keeps_its_own_best_channels_in_balanced_sets():
    """The bottleneck's sets of one channel per conv group are formed from the scores: keeping 4 of 10 keeps the
    best of each conv group's pair (1, 3, 6, 8), not whole index-ordered sets; the straddling 2 and 7 go."""
    from test_prune_groups import groups_of

    from onnxcomp.passes.prune.importance import keep_whole_ties

    net = Net(8)
    first = next(g for g in groups_of(net.model(net.head(net.shuffle_bottleneck(net.x, groups=4, per=10))))
                 if g.ties)
    assert first.matched == [[0, 1], [3, 4], [5, 6], [8, 9]]
    score = np.array([1, 5, 0.5, 4, 2, 1, 6, 0.4, 7, 3], dtype=float)
    assert keep_whole_ties(first, np.arange(4), score).tolist() == [1, 3, 6, 8]
