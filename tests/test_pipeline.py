"""Pipeline text: typed options, clear one-line errors, round-trip through format_pipeline."""

import dataclasses

import pytest

import onnxcomp
from onnxcomp.errors import InputError
from onnxcomp.pipeline.text import format_pipeline, parse_pipeline


def test_parses_passes_and_typed_options():
    passes = parse_pipeline(" cleanup{fold_constants=false,fold_size_limit_mb=8}, fold-bn ")
    assert [p.name for p in passes] == ["cleanup", "fold-bn"]
    assert passes[0].options.fold_constants is False and passes[0].options.fold_size_limit_mb == 8.0
    assert dataclasses.is_dataclass(passes[0].options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        passes[0].options.dedupe = False


def test_round_trip():
    text = "cleanup{fold_constants=false},fold-bn"
    assert format_pipeline(parse_pipeline(text)) == text


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown pass 'nope'; available: cleanup"),
    ("cleanup{bogus=1}", "unknown option 'bogus'; options: fold_constants"),
    ("cleanup{dedupe=perhaps}", "expected true or false"),
    ("cleanup{fold_size_limit_mb=big}", "expected a number"),
    ("cleanup{dedupe}", "must be key=value"),
    ("cleanup{dedupe=true", "unclosed"),
    ("", "empty"),
    ("cleanup,,fold-bn", "empty entry"),
    ("remove-channels{ratio=1.5}", "remove-channels.ratio must be in [0, 1), got 1.5"),
    ("insert-qdq{method=kl}", "insert-qdq.method: 'kl' is not one of minmax, percentile, entropy, mse, auto"),
])
def test_errors_are_one_line(text, message):
    with pytest.raises(InputError) as info:
        parse_pipeline(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_registry_and_public_api():
    names = onnxcomp.all_passes()
    assert {"cleanup", "fold-bn"} <= set(names)
    for cls in names.values():
        assert cls.name == cls.name.lower() and " " not in cls.name
        assert cls.description()
        assert dataclasses.is_dataclass(cls.Options)
    for attr in ("load", "save", "PassManager", "Pass", "parse_pipeline", "optimize", "get_pass"):
        assert hasattr(onnxcomp, attr)


def test_passes_import_from_a_regular_install_not_the_source_tree(tmp_path):
    """A wheel install (not editable) ships passes/ as onnxcomp.passes with every pass registered."""
    import subprocess
    import sys

    from conftest import REPO

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO)], check=True, capture_output=True)
    code = ("import onnxcomp, onnxcomp.passes as p; from onnxcomp.pipeline.registry import all_passes; "
            "print(p.__file__); print(','.join(sorted(all_passes())))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    location, names = r.stdout.splitlines()
    assert location.startswith(str(target)) and location.endswith("onnxcomp/passes/__init__.py")
    assert {"cleanup", "fold-bn"} <= set(names.split(","))


def test_presets_expand_and_print_pipeline_shows_the_expansion(digits_cnn):
    import subprocess
    import sys

    from onnxcomp.pipeline.text import expand_presets, format_pipeline, parse_pipeline

    assert expand_presets("default") == "cleanup,fold-bn"
    assert format_pipeline(parse_pipeline("default")) == format_pipeline(parse_pipeline("cleanup,fold-bn"))
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(digits_cnn), "--passes", "default",
                        "--print-pipeline"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("cleanup"), r.stderr
    assert "fold-bn" in r.stdout
