"""Options declared once: every range, choice and help comes from the pass Options dataclasses, and
the optimize shortcut flags, pipeline text and `onnxcomp passes` agree with them.

Error cases run the real command line (exit code, exactly one stderr line, nothing written); the
flag -> pipeline cases parse the flags with the optimize command itself, in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import click
import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, tensor
from onnx import helper, numpy_helper

import onnxcomp
from onnxcomp.cli.optimize import command as optimize_command
from onnxcomp.cli.shortcuts import ADDING, SHORTCUTS, apply_shortcuts, passes_with
from onnxcomp.errors import InputError
from onnxcomp.optimize import DEFAULT_PIPELINE
from onnxcomp.pipeline.options import MAX_DROP_RANGE, Range
from onnxcomp.pipeline.registry import all_passes
from onnxcomp.pipeline.text import format_pipeline, parse_pipeline


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, check=False)


def cli_many(arg_lists):
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args), arg_lists))


def assert_one_line_exit_2(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr  # nothing ran: no progress lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def shortcut_pipeline(*args) -> list:
    """The passes `onnxcomp optimize MODEL ARGS` would run: click parses the flags, as the command does."""
    ctx = optimize_command.make_context("optimize", ["model.onnx", *map(str, args)])
    params = dict(ctx.params)
    text = params.pop("pipeline") or DEFAULT_PIPELINE
    return apply_shortcuts(parse_pipeline(text), params, text)


def ranged_options():
    """(pass, field, Range) for every option of every registered pass that declares a range."""
    return [(name, f.name, f.metadata["range"]) for name, cls in all_passes().items()
            for f in dataclasses.fields(cls.Options) if "range" in f.metadata]


def outside(valid: Range) -> list:
    """Values just outside each bound of a range."""
    bad = []
    if valid.lo is not None:
        bad.append(valid.lo if valid.lo_open else valid.lo - 1)
    if valid.hi is not None:
        bad.append(valid.hi if valid.hi_open else valid.hi + 1)
    return bad


# ---------- ranges: one line naming pass.option, the range and the value; checked before any work ----------

def test_every_lossy_pass_declares_the_same_max_drop_and_exclusion():
    lossy = sorted(name for name, cls in all_passes().items() if not cls.exact)
    for option in ("max_drop", "exclude", "exclude_op"):
        having = passes_with(option)
        # Every lossy pass has a budget and exclusions; an exact pass may take exclusions too (smooth-quant).
        assert having == lossy if option == "max_drop" else set(lossy) <= set(having)
        fields = [next(f for f in dataclasses.fields(all_passes()[n].Options) if f.name == option) for n in having]
        assert all(f.metadata == fields[0].metadata and f.default == fields[0].default for f in fields), option
    assert MAX_DROP_RANGE.lo == 0 and MAX_DROP_RANGE.hi == 1 and MAX_DROP_RANGE.hi_open
    assert len(ranged_options()) >= 10


def test_every_bound_of_every_ranged_option_is_refused_by_pipeline_text():
    for name, option, valid in ranged_options():
        for value in outside(valid):
            with pytest.raises(InputError) as info:
                parse_pipeline(f"{name}{{{option}={value}}}")
            message = str(info.value)
            assert message.startswith(f"{name}.{option} must be {valid}, got ") and "\n" not in message
        for bound, is_open in ((valid.lo, valid.lo_open), (valid.hi, valid.hi_open)):
            if bound is not None and not is_open:
                parse_pipeline(f"{name}{{{option}={bound}}}")  # an inclusive bound itself is accepted


def test_bad_values_exit_2_with_one_line_before_any_work(digits_cnn, tmp_path):
    cases = [(["--passes", f"cleanup,{name}{{{option}={outside(valid)[-1]}}}"], f"{name}.{option} must be {valid}")
             for name, option, valid in ranged_options()]
    cases += [
        (["--prune-channels", "1.5"], "--prune-channels: remove-channels.ratio must be in [0, 1), got 1.5"),
        (["--prune-channels", "-0.5"], "remove-channels.ratio must be in [0, 1)"),
        (["--prune-channels", "0.5", "--round-to", "0"], "--round-to: remove-channels.round_to must be at least 1"),
        (["--quantize", "int8", "--max-drop", "1"], "--max-drop: insert-qdq.max_drop must be in [0, 1), got 1"),
        (["--sparsify", "0.5", "--max-drop", "-0.01"], "sparsify-initializers.max_drop must be in [0, 1)"),
        (["--sparsify", "1.5"], "sparsity '1.5' must be in [0, 1)"),
        (["--passes", "remove-channels{ratio=1.5}"], "remove-channels.ratio must be in [0, 1), got 1.5"),
    ]
    out = tmp_path / "out.onnx"
    results = cli_many([["optimize", digits_cnn, "-o", out, *args] for args, _ in cases])
    for (args, message), result in zip(cases, results):
        assert_one_line_exit_2(result, message)
    assert list(tmp_path.iterdir()) == []


# ---------- shortcut flags need their pass; a pass is never added twice ----------

OPTION_FLAG_VALUES = {"--importance": "l1", "--round-to": "4", "--global": None, "--sparsify-scope": "layer",
                      "--calib-method": "entropy", "--calib-stats": "all.calib", "--calib-cache": "cache.txt", "--objective": "latency", "--target": "tensorrt", "--exclude": "x",
                      "--exclude-op": "Conv", "--max-drop": "0.1",
                      "--quantize-embeddings": None, "--bias-correction": None}


def test_every_option_flag_without_its_pass_exits_2(digits_cnn, tmp_path):
    assert set(OPTION_FLAG_VALUES) == set(SHORTCUTS) - set(ADDING)  # a new flag must be added here
    cases = []
    for flag, value in OPTION_FLAG_VALUES.items():
        name = SHORTCUTS[flag][0]
        given = [flag] + ([] if value is None else [value])
        cases.append((given, [flag, "no pass in the pipeline" if name is None else f"has no {name}"]))
        if name == "insert-qdq":  # a --passes text without insert-qdq is the same mistake
            cases.append((["--passes", "cleanup,remove-channels", *given], [flag, "has no insert-qdq"]))
    out = tmp_path / "out.onnx"
    results = cli_many([["optimize", digits_cnn, "-o", out, *args] for args, _ in cases])
    for (_, fragments), result in zip(cases, results):
        assert_one_line_exit_2(result, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("preset, flag", [("int8-ort", ["--quantize", "int8"]), ("slim", ["--prune-channels", "0.3"]),
                                          ("sparse-2of4", ["--sparsify", "2:4"])])
def test_a_preset_and_its_adding_flag_are_not_doubled(digits_cnn, tmp_path, preset, flag):
    name = SHORTCUTS[flag[0]][0]
    result = cli("optimize", digits_cnn, "-o", tmp_path / "out.onnx", "--passes", preset, *flag)
    assert_one_line_exit_2(result, flag[0], repr(preset), f"already has {name}")
    assert not (tmp_path / "out.onnx").exists()


def test_a_flag_contradicting_the_pipeline_text_is_refused():
    with pytest.raises(InputError, match=r"--target tensorrt contradicts insert-qdq\{target=ort\}"):
        shortcut_pipeline("--passes", "int8-ort", "--target", "tensorrt")
    assert format_pipeline(shortcut_pipeline("--passes", "int8-ort", "--target", "ort")) == \
        "cleanup,fold-bn,insert-qdq{target=ort}"  # the same value twice is no contradiction


# ---------- --print-pipeline shows what every shortcut sets ----------

@pytest.mark.parametrize("args, expected", [
    (["--quantize", "int8"], "insert-qdq{embeddings=true,smooth=true}"),  # int8 sets both
    (["--quantize", "int8", "--calib-method", "entropy"], "insert-qdq{method=entropy,embeddings=true,smooth=true}"),
    (["--quantize", "int8", "--target", "tensorrt"], "insert-qdq{target=tensorrt,embeddings=true,smooth=true}"),
    (["--prune-channels", "0.3"], "remove-channels{ratio=0.3}"),
    (["--prune-channels", "0.3", "--importance", "l1", "--round-to", "4", "--global"],
     "remove-channels{ratio=0.3,importance=l1,round_to=4,global_ranking=true}"),
    (["--sparsify", "2:4"], "sparsify-initializers{sparsity=2:4}"),
    (["--sparsify", "0.7", "--sparsify-scope", "layer"], "sparsify-initializers{sparsity=0.7,scope=layer}"),
    (["--sparsify", "2:4", "--exclude", "conv*", "--exclude-op", "Gemm", "--max-drop", "0.05"],
     "sparsify-initializers{sparsity=2:4,exclude=[conv*],exclude_op=[Gemm],max_drop=0.05}"),
    (["--prune-channels", "0.4", "--quantize", "int8", "--exclude", "a", "--exclude", "b*"],
     "remove-channels{ratio=0.4,exclude=[a;b*]},insert-qdq{exclude=[a;b*],embeddings=true,smooth=true}"),
    (["--sparsify", "2:4", "--prune-channels", "0.4", "--quantize", "int8"],  # prune, sparsify, then quantize
     "remove-channels{ratio=0.4},sparsify-initializers{sparsity=2:4},insert-qdq{embeddings=true,smooth=true}"),
    (["--passes", "int8-tensorrt", "--calib-method", "mse", "--max-drop", "0.02"],
     "insert-qdq{method=mse,target=tensorrt,max_drop=0.02}"),
    (["--passes", "cleanup,remove-channels", "--global", "--exclude-op", "Gemm"],
     "remove-channels{global_ranking=true,exclude_op=[Gemm]}"),
])
def test_print_pipeline_of_each_shortcut(args, expected):
    text = format_pipeline(shortcut_pipeline(*args))
    if "--passes" in args and "cleanup,remove-channels" in args:
        assert text == "cleanup," + expected
    elif expected.startswith("remove-channels"):  # pruning goes before fold-bn: BN is kept while channels go
        prune, _, rest = expected.partition("},")
        assert text == "cleanup," + (f"{prune}}},fold-bn,{rest}" if rest else f"{expected},fold-bn")
    else:
        assert text == "cleanup,fold-bn," + expected
    assert format_pipeline(parse_pipeline(text)) == text  # what it prints is pipeline text that means the same


def test_print_pipeline_on_the_command_line(digits_cnn):
    r = cli("optimize", digits_cnn, "--print-pipeline", "--passes", "int8-ort", "--calib-method", "entropy",
            "--prune-channels", "0.25", "--exclude", "/fc/*")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("cleanup,remove-channels{ratio=0.25,exclude=[/fc/*]},"
                                "fold-bn,insert-qdq{method=entropy,target=ort,exclude=[/fc/*]}")


# ---------- `onnxcomp passes` and the click flags come from the same fields ----------

def test_passes_json_and_the_optimize_flags_agree():
    r = cli("passes", "--json")
    assert r.returncode == 0, r.stderr
    listing = {p["name"]: p for p in json.loads(r.stdout)}
    params = {p.opts[0]: p for p in optimize_command.params if isinstance(p, click.Option)}
    assert set(SHORTCUTS) <= set(params)
    for flag, (name, option) in SHORTCUTS.items():
        param = params[flag]
        if option is None:
            assert listing[name]["flag"] == flag
            continue
        for pass_name in [name] if name else passes_with(option):
            row = next(o for o in listing[pass_name]["options"] if o["name"] == option)
            assert row["flag"] == flag
            choices = list(param.type.choices) if isinstance(param.type, click.Choice) else []
            assert choices == row["choices"], (flag, pass_name)
            assert row["help"] and param.help.lower().startswith(row["help"].lower()), flag
            assert (f"Must be {row['range']}." in param.help) == bool(row["range"]), flag
    assert listing["insert-qdq"]["options"][0]["choices"] == ["minmax", "percentile", "entropy", "mse", "auto"]
    from onnxcomp.passes.qdq.calibration.ranges import METHODS
    from onnxcomp.pipeline.options import TARGETS

    assert list(params["--calib-method"].type.choices) == list(METHODS)
    assert list(params["--target"].type.choices) == list(TARGETS)


def test_passes_text_lists_ranges_and_flags():
    r = cli("passes")
    assert r.returncode == 0, r.stderr
    ratio = next(line for line in r.stdout.splitlines() if line.strip().startswith("ratio="))
    assert "in [0, 1)" in ratio and "[--prune-channels]" in ratio
    assert "(optimize --quantize)" in next(line for line in r.stdout.splitlines() if line.startswith("insert-qdq"))


# ---------- --exclude (node-name globs) and --exclude-op (op types) mean the same in every pass ----------

def conv_mlp():
    """conv_a -> relu -> conv_b -> relu -> GAP -> flatten -> fc1 -> relu -> fc2: only the two Conv node
    names start with "conv", and no initializer does."""
    values = {"wa": rng_array((16, 4, 3, 3), 1, 0.3), "ba": rng_array((16,), 2, 0.1),
              "wb": rng_array((16, 16, 3, 3), 3, 0.3), "bb": rng_array((16,), 4, 0.1),
              "w1": rng_array((32, 16), 5, 0.3), "b1": rng_array((32,), 6, 0.1),
              "w2": rng_array((10, 32), 7, 0.3), "b2": rng_array((10,), 8, 0.1)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="conv_b", pads=[1] * 4),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("GlobalAveragePool", ["rb"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["rh"], name="relu_h"),
             helper.make_node("Gemm", ["rh", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [tensor("x", ["N", 4, 8, 8])], [tensor("y", None)], values)


def weights(model) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dequantized_inputs(model) -> dict:
    """Node name -> how many of its inputs come from a DequantizeLinear."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: sum(i in dq for i in n.input) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


@pytest.mark.parametrize("flags", [["--quantize", "int8"], ["--prune-channels", "0.5"], ["--sparsify", "0.5"]])
def test_exclude_glob_and_exclude_op_leave_the_same_nodes_alone(tmp_path, flags):
    model = conv_mlp()
    data = {"x": np.random.default_rng(0).standard_normal((32, 4, 8, 8)).astype(np.float32)}

    def run(*more):
        passes = shortcut_pipeline(*flags, *more)
        return onnxcomp.optimize(model, None, passes, data=data, check_output=False).model

    by_name, by_op, neither = run("--exclude", "conv*"), run("--exclude-op", "Conv"), run()
    assert [(n.op_type, n.name) for n in by_name.graph.node] == [(n.op_type, n.name) for n in by_op.graph.node]
    named, typed = weights(by_name), weights(by_op)
    assert named.keys() == typed.keys() and all(np.array_equal(named[k], typed[k]) for k in named)
    before, kept, changed = weights(model), weights(by_name), weights(neither)
    if flags[0] == "--quantize":
        assert {k: v for k, v in dequantized_inputs(by_name).items() if k.startswith("conv")} == \
            {"conv_a": 0, "conv_b": 0}
        assert dequantized_inputs(by_name)["fc1"] > 0 and dequantized_inputs(neither)["conv_b"] > 0
    else:
        for name in ("wa", "wb"):  # the Conv weights: untouched when excluded, changed otherwise
            assert np.array_equal(kept[name], before[name])
            assert not np.array_equal(changed[name], before[name])
        assert not np.array_equal(kept["w1"], before["w1"])  # ... while the Gemm still is pruned/sparsified
    onnx.checker.check_model(by_name)


@pytest.mark.parametrize("pipeline", ["insert-qdq", "remove-channels", "sparsify-initializers"])
def test_exclude_that_matches_nothing_is_one_clear_error(pipeline):
    model = conv_mlp()
    data = {"x": np.zeros((4, 4, 8, 8), np.float32)}
    for options, message in [("exclude=[Conv]", "exclude names not in the model: Conv"),
                             ("exclude_op=[conv_a]", "exclude_op types not in the model: conv_a")]:
        with pytest.raises(InputError, match=f"{pipeline}: {message}"):
            onnxcomp.optimize(model, None, f"{pipeline}{{{options}}}", data=data, check_output=False)
