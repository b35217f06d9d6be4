"""onnxcomp compress: the order of the steps, the goals, the budget, label-free use, the reports, bad input;
and the trap it replaces (--prune-channels folding BN first, folded students that would not recover).

Small and fast: the digits CNN, 256 training and 128 validation samples, one epoch.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

import onnxcomp
from onnxcomp.cli import main
from onnxcomp.errors import InputError, ToleranceError

FAST = {"epochs": 1, "threads": 1}


@pytest.fixture(scope="module")
def digits(models_dir):
    with np.load(models_dir / "digits_train.npz") as train, np.load(models_dir / "digits_test.npz") as test:
        return ({k: v[:256] for k, v in train.items()}, {k: v[:128] for k, v in test.items()})


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    """The digits data as .npz files, with and without labels."""
    tmp = tmp_path_factory.mktemp("data")
    train, val = digits
    paths = {"train": tmp / "train.npz", "val": tmp / "val.npz", "train_nolabels": tmp / "train_nl.npz",
             "val_nolabels": tmp / "val_nl.npz", "bad_labels": tmp / "bad_labels.npz", "wrong_key": tmp / "wrong.npz"}
    np.savez(paths["train"], **train)
    np.savez(paths["val"], **val)
    np.savez(paths["train_nolabels"], input=train["input"])
    np.savez(paths["val_nolabels"], input=val["input"])
    np.savez(paths["bad_labels"], input=train["input"], labels=train["labels"] + 10)
    np.savez(paths["wrong_key"], x=train["input"])
    return paths


@pytest.fixture(scope="module")
def features_model(digits_cnn, tmp_path_factory):
    """A model without labels to match: the digits CNN cut before its pooling (a [N, 64, 8, 8] feature map)."""
    model = onnx.load(str(digits_cnn))
    pool = next(i for i, n in enumerate(model.graph.node) if n.op_type == "GlobalAveragePool")
    last = model.graph.node[pool].input[0]
    del model.graph.node[pool:]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, ["batch", 64, 8, 8]))
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("features") / "features.onnx"
    onnx.save(model, str(path))
    return path


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def in_process(capsys, *args):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------- the order, a fixed ratio ----------

def test_a_fixed_ratio_runs_the_steps_in_order_with_bn_kept_while_pruning(digits_cnn, digits):
    train, val = digits
    result = onnxcomp.compress(digits_cnn, train, val, prune=0.5, **FAST)
    names = [s.name for s in result.stages]
    assert names == ["cleanup", "channel block", "search", "distill", "fold-bn", "insert-qdq", "check", "measure"]
    chosen = result.chosen
    assert chosen.ratio == 0.5 and chosen.trained and not chosen.qat
    assert [c.ratio for c in result.candidates if c.trained] == [0.5]  # a fixed ratio: no search, no back-off
    assert "BatchNormalization" in ops(chosen.pruned)  # channels went with BN still there, for distillation
    assert "BatchNormalization" not in ops(result.model) and "QuantizeLinear" in ops(result.model)
    unpruned = next(c for c in result.candidates if c.ratio == 0)
    assert sum(chosen.widths) < sum(unpruned.widths)
    block = result.host["channel_block"]
    pruned_widths = [w for w, full in zip(chosen.widths, unpruned.widths) if w != full]
    assert pruned_widths and all(w % block == 0 for w in pruned_widths)  # rounded to the measured block
    f = result.figures
    assert f["params"]["output"] < f["params"]["original"] and f["macs"]["output"] < f["macs"]["original"]
    assert f["file_size"]["output"] == len(result.model.SerializeToString())
    assert 0.0 <= f["quality"]["output"] <= 1.0 and result.metric == "accuracy"
    assert abs(chosen.drop - (f["quality"]["original"] - f["quality"]["output"])) < 1e-9  # one measure, one data set
    assert result.met and result.check == {"target": "ort", "errors": 0, "warnings": result.check["warnings"]}


# ---------- the CLI: a size goal, the table, the reports ----------

@pytest.fixture(scope="module")
def size_run(digits_cnn, files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("size")
    out = tmp / "small.onnx"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main([str(a) for a in ("compress", digits_cnn, "-o", out, "--data", files["train"], "--val", files["val"],
                                   "--size", "0.2", "--epochs", "1", "--report", tmp / "r.json",
                                   "--report", tmp / "r.html")])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, buffer.getvalue(), out, tmp


def test_a_size_goal_is_met_on_file_bytes(digits_cnn, size_run):
    code, stdout, out, tmp = size_run
    assert code == 0, stdout
    assert out.stat().st_size <= 0.2 * digits_cnn.stat().st_size
    report = json.loads((tmp / "r.json").read_text())
    assert report["met"] and report["goal"]["kind"] == "size"
    measured = [c for c in report["candidates"] if c["size"] is not None]
    assert len(measured) >= 4 and report["chosen"]["size"] <= 0.2
    # The least-pruned candidate that meets the goal was trained: every one keeping more parameters misses it.
    assert all(c["size"] > 0.2 for c in measured if c["params"] > report["chosen"]["params"])


def test_the_run_ends_with_one_table_and_writes_the_json_and_html_reports(size_run):
    _, stdout, _, tmp = size_run
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["original", "output", "ratio"])
    rows = [line.split("  ")[0] for line in lines[header + 2:header + 8]]
    assert rows == ["file size", "parameters", "MACs", "latency b1 (ms)", "latency b8 (ms)", "accuracy"]
    page = (tmp / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "</svg>" in page
    assert page.count("<circle") >= 4 and "goal 0.2x" in page and "chosen" in page
    for fetch in ("<script", "src=", "href=", "@import", "url("):  # self-contained: nothing to fetch
        assert fetch not in page


def test_the_json_report_keeps_its_documented_schema(size_run):
    from test_report_schema import DOC, read_schema, schema_problems

    report = json.loads((size_run[3] / "r.json").read_text())
    problems = schema_problems(report, read_schema(DOC.read_text())["compress"])
    assert not problems, "\n".join(problems)


# ---------- the accuracy budget ----------

def test_max_drop_that_cannot_be_met_is_exit_4_and_nothing_is_written(digits_cnn, files, tmp_path, capsys, monkeypatch):
    # full-range INT8 weights on every host: with the 7-bit weights an AVX2 host gets (host.py), quantizing the
    # 1-epoch student loses nothing measurable, so no quantization-aware fine-tuning is due (compress.lost_nothing)
    from onnxcomp.passes.qdq import insert_qdq

    monkeypatch.setattr(insert_qdq, "host_needs_reduced_range", lambda: False)
    out = tmp_path / "never.onnx"
    code, _, err = in_process(capsys, "compress", digits_cnn, "-o", out, "--data", files["train_nolabels"],
                                   "--val", files["val_nolabels"], "--prune", "0.5", "--max-drop", "0", "--epochs", "1",
                                   "--report", tmp_path / "r.json", "-q")
    assert code == 4, err
    assert len(err.strip().splitlines()) == 1 and "max_drop 0.0 cannot be met" in err and "Traceback" not in err
    assert not out.exists()
    report = json.loads((tmp_path / "r.json").read_text())  # the report still says what was reached
    trained = [c for c in report["candidates"] if c["trained"]]
    assert len(trained) == 1 and trained[0]["qat"] and trained[0]["drop"] > 0


def test_a_missed_budget_backs_off_and_says_what_it_reached(digits_cnn, digits):
    train, val = digits
    result = onnxcomp.compress(digits_cnn, train, val, size=0.2, quantize="none", max_drop=0.0, backoff=0,
                               grid=(0.5, 0.75), **FAST)
    pruned = [c for c in result.candidates if c.trained and c.pruning]
    unpruned = [c for c in result.candidates if c.trained and not c.pruning]
    assert len(pruned) == 1 and pruned[0].drop > 0 and pruned[0].size <= 0.2  # the goal's candidate missed
    assert result.chosen is unpruned[0] and unpruned[0].drop == 0.0  # no pruning, no quantization: exact
    assert not result.met and "size goal not met" in result.message and "less pruning" in result.message


def test_a_goal_no_candidate_reaches_is_exit_4_with_what_was_reached(tmp_path, capsys):
    from helpers import make_model, rng_array, tensor

    model = make_model([onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                       [tensor("x", ["n", 3, 16, 16])], [tensor("y", ["n", 8, 16, 16])],
                       {"w": rng_array((8, 3, 3, 3)), "b": rng_array((8,), 1)})
    onnx.save(model, str(tmp_path / "conv.onnx"))
    np.savez(tmp_path / "data.npz", x=rng_array((32, 3, 16, 16), 2))
    out = tmp_path / "small.onnx"
    code, stdout, err = in_process(capsys, "compress", tmp_path / "conv.onnx", "-o", out, "--data",
                                   tmp_path / "data.npz", "--size", "0.01", "-q")
    assert code == 4, err  # nothing reaches 1% of the input's bytes: what was reached, and why
    assert len(err.strip().splitlines()) == 1 and "size goal not met" in err and "no candidate reaches it" in err
    assert out.exists() and "file size" in stdout  # written anyway: within max-drop (none given)


def test_a_latency_goal_also_searches_without_droppable_residual_branches(digits_cnn, digits):
    train, val = digits
    result = onnxcomp.compress(digits_cnn, train, val, latency=0.01, backoff=0, grid=(0.5,), **FAST)
    dropped = [c for c in result.candidates if c.dropped]
    assert dropped and all(c.dropped == ("/layer1/Add",) for c in dropped)  # the one identity-skip block
    whole = {(c.ratio, c.ranking): c for c in result.candidates if not c.dropped}
    assert all(c.params < whole[c.ratio, c.ranking].params for c in dropped if (c.ratio, c.ranking) in whole)  # the same ratio without the block
    assert all(c.latency is not None for c in result.candidates)
    fastest = min(result.candidates, key=lambda c: c.latency)
    assert result.chosen is fastest and not result.met and "no candidate reaches it" in result.message
    host = result.host
    assert set(host["float_probe_ms"]) == {"int8", "float"} and host["float_convs"] in ([], ["/stem/stem.0/Conv"])
    first = next(n for n in result.model.graph.node if n.op_type in ("Conv", "QuantizeLinear"))
    assert (first.op_type == "Conv") == bool(host["float_convs"])  # a stem kept in float reads the float input


# ---------- label-free ----------

def test_a_model_without_labels_compresses_on_the_cosine_of_its_outputs(features_model, digits):
    train, val = ({"input": d["input"]} for d in digits)
    result = onnxcomp.compress(features_model, train, val, prune=0.5, **FAST)
    assert result.metric == "cosine"
    q = result.figures["quality"]
    assert q["original"] == 1.0 and 0.4 < q["output"] <= 1.0  # 1 epoch: 0.479 on an AVX2 EPYC (no VNNI)
    assert abs(result.chosen.drop - (1.0 - q["output"])) < 1e-9
    assert [d.dim_value or d.dim_param for d in result.model.graph.output[0].type.tensor_type.shape.dim] == \
        ["batch", 64, 8, 8]
    with pytest.raises(InputError, match=r"labels given, but the model's first output has shape \[2, 64, 8, 8\]"):
        onnxcomp.compress(features_model, *digits, prune=0.5, **FAST)


def test_a_model_with_nothing_to_prune_is_still_quantized_towards_a_goal():
    from helpers import make_model, rng_array, tensor

    model = make_model([onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                       [tensor("x", ["n", 3, 16, 16])], [tensor("y", ["n", 8, 16, 16])],
                       {"w": rng_array((8, 3, 3, 3)), "b": rng_array((8,), 1)})
    data = {"x": rng_array((48, 3, 16, 16), 2)}
    result = onnxcomp.compress(model, data, size=0.9, max_drop=0.05, **FAST)
    assert [c.pruning for c in result.candidates] == [False]  # its only channels are the graph output's
    assert result.chosen.trained and "QuantizeLinear" in ops(result.model)
    assert result.data["val_source"] == "held out from data" and result.data["val"] + result.data["train"] == 48


# ---------- bad input: one line, exit 2, nothing written, the input untouched ----------

def test_bad_input_is_one_line_and_exit_2(digits_cnn, features_model, files, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    base = ["compress", digits_cnn, "-o", out, "--data", files["train"], "--val", files["val"]]
    cases = [
        (base + ["--latency", "0.5", "--size", "0.5"], "give one of latency, size and prune, not latency and size"),
        (base + ["--quantize", "none"], "nothing to do"),
        (base + ["--prune", "1.5"], "prune must be in [0, 1)"),
        (["compress", digits_cnn, "-o", out, "--data", files["wrong_key"], "--prune", "0.5"],
         "missing array(s) for model input(s) input"),
        (["compress", digits_cnn, "-o", out, "--data", files["bad_labels"], "--val", files["val"], "--prune", "0.5"],
         "'labels' range over [10, 19] but the model has 10 classes"),
        (["compress", features_model, "-o", out, "--data", files["train"], "--val", files["val"], "--prune", "0.5"],
         "labels given, but the model's first output"),
        (base[:3] + [tmp_path / "missing" / "out.onnx"] + base[4:] + ["--prune", "0.5"], "does not exist"),
        (["compress", digits_cnn, "-o", digits_cnn, "--data", files["train"], "--prune", "0.5"],
         "refusing to overwrite the input model"),
        (base + ["--prune", "0.5", "--report", tmp_path / "r.txt"], "name it .json or .html"),
        (["compress", digits_cnn, "--data", files["train"]], "Missing option '-o'"),
    ]
    before = digest(digits_cnn)
    for args, fragment in cases:
        code, _, err = in_process(capsys, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err, (args, err)
    assert not out.exists() and not (tmp_path / "r.txt").exists()
    assert digest(digits_cnn) == before


# ---------- the trap: shortcut order and folded students ----------

@pytest.mark.parametrize("args, expected", [
    (["--prune-channels", "0.4"], "cleanup,remove-channels{ratio=0.4},fold-bn"),
    (["--prune-channels", "0.4", "--quantize", "int8"],  # the int8 shortcut's own options ride along
     "cleanup,remove-channels{ratio=0.4},fold-bn,insert-qdq{embeddings=true,smooth=true}"),
    (["--passes", "int8-ort", "--prune-channels", "0.4"],
     "cleanup,remove-channels{ratio=0.4},fold-bn,insert-qdq{target=ort}"),
    (["--passes", "cleanup,insert-qdq", "--prune-channels", "0.4", "--sparsify", "2:4"],
     "cleanup,remove-channels{ratio=0.4},sparsify-initializers{sparsity=2:4},insert-qdq"),
    (["--passes", "slim"], "cleanup,remove-channels,fold-bn"),  # the preset (ratio 0.5 and round_to 8: defaults)
])
def test_prune_channels_goes_before_bn_folding(digits_cnn, capsys, args, expected):
    code, stdout, err = in_process(capsys, "optimize", digits_cnn, "--print-pipeline", *args)
    assert code == 0, err
    assert stdout.strip() == expected


def test_a_folded_student_gets_the_teachers_batchnorm_back_and_folds_it_back_exactly(digits_cnn, digits):
    from helpers import run

    from onnxcomp.distill.onnx_to_torch import OnnxModule
    from onnxcomp.distill.renorm import renormalize
    from onnxcomp.distill.writeback import write_back

    teacher = onnx.load(str(digits_cnn))
    x = digits[0]["input"]
    pruned = onnxcomp.optimize(teacher, None, "cleanup,fold-bn,remove-channels{ratio=0.5}", check_output=False).model
    module = OnnxModule(pruned)
    restored = renormalize(pruned, module, {"input": x}, teacher)
    convs = sum(n.op_type == "Conv" for n in pruned.graph.node)
    assert len(restored.layers) == convs and all(layer.restored for layer in restored.layers)  # Gemm head: no
    unfolded = OnnxModule(restored.model).eval()
    with torch.no_grad():
        before = module.eval()(torch.from_numpy(x[:64]))[0].numpy()
        np.testing.assert_allclose(unfolded(torch.from_numpy(x[:64]))[0].numpy(), before, atol=1e-4, rtol=1e-4)
        for p in unfolded.parameters():
            p.mul_(1.01)  # stands in for training
        expected = unfolded(torch.from_numpy(x[:64]))[0].numpy()
    back = restored.fold_back(write_back(restored.model, unfolded), pruned)
    assert [n.SerializeToString() for n in back.graph.node] == [n.SerializeToString() for n in pruned.graph.node]
    assert [i.name for i in back.graph.initializer] == [i.name for i in pruned.graph.initializer]
    np.testing.assert_allclose(run(back, {"input": x[:64]})["logits"], expected, atol=1e-4, rtol=1e-4)
    # Without a teacher to take them from, standard BNs (scale 1, shift 0, measured statistics).
    standard = renormalize(pruned, OnnxModule(pruned), {"input": x})
    assert len(standard.layers) == convs and not any(layer.restored for layer in standard.layers)
    kept = onnxcomp.optimize(teacher, None, "cleanup,remove-channels{ratio=0.5}", check_output=False).model
    assert renormalize(kept, OnnxModule(kept), {"input": x}, teacher) is None  # BN kept: nothing to add


def test_a_folded_student_recovers_with_its_batchnorm_restored(digits_cnn, models_dir):
    """The 3- and 8-epoch comparison with a BN-kept student is in docs/compress.md; here one epoch."""
    with np.load(models_dir / "digits_train.npz") as train, np.load(models_dir / "digits_test.npz") as test:
        train, val = dict(train), {k: v[:256] for k, v in test.items()}
    folded = onnxcomp.optimize(str(digits_cnn), None, "cleanup,fold-bn,remove-channels{ratio=0.5}",
                               check_output=False).model
    options = {"epochs": 1, "threads": 1}
    restored = onnxcomp.distill(str(digits_cnn), folded, train, options, val_data=val)
    plain = onnxcomp.distill(str(digits_cnn), folded, train, dict(options, renorm=False), val_data=val)
    assert restored.final["renormalized"] == 9 and plain.final["renormalized"] == 0
    assert restored.final["ort_vs_torch_max_abs"] < 1e-4
    assert [n.SerializeToString() for n in restored.model.graph.node] == \
        [n.SerializeToString() for n in folded.graph.node]
    assert restored.final["accuracy"] > plain.final["accuracy"] + 0.15, (restored.final, plain.final)


def test_tolerance_error_carries_the_result(digits_cnn, digits):
    train, val = ({"input": d["input"]} for d in digits)
    with pytest.raises(ToleranceError) as info:
        onnxcomp.compress(digits_cnn, train, val, quantize="int8", max_drop=0.0, **FAST)
    assert info.value.result.candidates[0].trained and info.value.result.candidates[0].qat


# ---------- the channel-block probe: repeated, checked against the CPU's flags, kept ----------

@pytest.mark.parametrize("measured,expected,block,probes", [
    ([16], 16, 16, 1),  # the first probe finds what the flags predict: no repeat
    ([4, 16, 16], 16, 16, 3),  # one disturbed probe does not move the block
    ([4, 4], 16, 4, 2),  # a majority measured another block: believed
    ([4, 8, 16], 16, 16, 3),  # no majority: the expected block
    ([8, 8], None, 8, 2),  # flags unreadable: the majority
])
def test_channel_block_believes_another_block_only_by_a_majority(monkeypatch, measured, expected, block, probes):
    from onnxcomp.measure import latency

    answers = iter(measured)
    monkeypatch.setattr(latency, "probe_block", lambda threads, batch: {"block": next(answers), "widths": [64],
                                                                        "ms": [1.0]})
    monkeypatch.setattr(latency, "expected_block", lambda: expected)
    latency.measured_block.cache_clear()
    try:
        got = latency.channel_block(1, 8)
        assert got["block"] == block and len(got["probes"]) == probes and got["expected"] == expected
        assert latency.channel_block(1, 8) == got  # kept for the process: no further probe
    finally:
        latency.measured_block.cache_clear()


def test_latency_with_one_thread_is_cpu_time_and_orders_models_by_work():
    from onnxcomp.measure.latency import conv_pair, interleaved_ms

    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((8, w, 16, 16)).astype(np.float32)} for w in (64, 32)]
    wide, narrow = interleaved_ms([conv_pair(64, 8), conv_pair(32, 8)], feeds, 1, budget_s=0.3)
    assert narrow < 0.6 * wide  # a quarter of the work; CPU time is not inflated by other jobs' turns
