"""onnxcomp installed the way users install it: a wheel, in a fresh virtualenv, without torch.

The wheel is built offline from a copy of the sources alone (a stale build/lib in the checkout
would otherwise be packed with it) and installed with --no-deps into a virtualenv made without
pip and without the system site-packages. Its dependencies come from this test's own environment,
chosen by the wheel's metadata: for every distribution it requires (base and [cpu]), and for what
those require, a symlink to each of its top-level files, in one folder on PYTHONPATH. torch is
not required by any of them, so it is simply not there (checked, not assumed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution, version
from pathlib import Path

import onnx
import pytest
from conftest import REPO
from packaging.requirements import Requirement

SOURCES = ("pyproject.toml", "README.md", "onnxcomp", "passes")


def _requirements(lines, extra: str) -> list[Requirement]:
    """The requirements that apply when `extra` is asked for ("" = none)."""
    reqs = [Requirement(line) for line in lines or ()]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]


def _closure(reqs: list[Requirement]) -> dict:
    """{name: Distribution} for the requirements and everything they require, as installed here."""
    found, todo = {}, list(reqs)
    while todo:
        req = todo.pop()
        dist = distribution(req.name)
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name not in found:
            found[name] = dist
            todo += _requirements(dist.requires, "")
    return found


def _link_distributions(dists: dict, folder: Path) -> None:
    folder.mkdir()
    for name, dist in dists.items():
        assert dist.files, f"{name}: installed without a file list (RECORD); cannot link it"
        for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
            if not top.endswith(".pth") and not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(src), "-w", str(root / "dist")], check=True, capture_output=True)
    (built,) = (root / "dist").glob("onnxcomp-*.whl")
    return built


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """The fresh virtualenv with the wheel, and environments that show it its dependencies: all
    of them ("full"), or all but ONNX Runtime ("no-ort")."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    dists = _closure(_requirements(_metadata(wheel), "cpu"))
    assert "torch" not in dists
    envs = {}
    for label, chosen in (("full", dists), ("no-ort", {k: v for k, v in dists.items() if k != "onnxruntime"})):
        _link_distributions(chosen, root / label)
        envs[label] = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(root / label),
                       "PYTHONNOUSERSITE": "1", "HOME": str(root), "LC_ALL": "C.UTF-8"}
    return {"bin": env_dir / "bin", "python": python, "root": root, **envs}


def _run(venv, args, env="full"):
    return subprocess.run([str(venv["bin"] / "onnxcomp"), *map(str, args)], capture_output=True, text=True,
                          env=venv[env], cwd=venv["root"], timeout=300, check=False)


def test_the_wheel_ships_every_source_module(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    expected = {f"{package}/{p.relative_to(REPO / folder).as_posix()}"
                for folder, package in (("onnxcomp", "onnxcomp"), ("passes", "onnxcomp/passes"))
                for p in (REPO / folder).rglob("*.py")}
    missing = sorted(expected - shipped)
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing}"


def test_the_wheel_requires_no_runtime_wheel_and_admits_the_users_torch(wheel):
    lines = _metadata(wheel)
    base = {r.name for r in _requirements(lines, "")}
    assert {"onnx", "numpy", "click"} <= base
    assert not base & {"onnxruntime", "onnxruntime-gpu", "torch"}, base
    assert {r.name for r in _requirements(lines, "cpu")} - base == {"onnxruntime"}
    assert {r.name for r in _requirements(lines, "gpu")} - base == {"onnxruntime-gpu"}
    (torch,) = [r for r in _requirements(lines, "torch") if r.name == "torch"]
    assert all(torch.specifier.contains(v) for v in ("2.5.0", "2.13.0", "2.20.1")), torch
    assert not torch.specifier.contains("2.4.1"), torch  # no dynamo= keyword in torch.onnx.export


def test_the_virtualenv_has_the_wheel_and_no_torch(venv):
    code = ("import importlib.util, onnxcomp; print(onnxcomp.__file__); "
            "print(importlib.util.find_spec('torch'))")
    r = subprocess.run([str(venv["python"]), "-c", code], capture_output=True, text=True, env=venv["full"],
                       cwd=venv["root"], check=False)
    assert r.returncode == 0, r.stderr
    location, torch = r.stdout.splitlines()
    assert location.startswith(str(venv["bin"].parent / "lib")), location
    assert torch == "None"


def test_version_lists_the_dependencies_and_says_torch_is_absent(venv):
    r = _run(venv, ["--version"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"onnxcomp {version('onnxcomp')}"
    assert f"onnxruntime {version('onnxruntime')}" in lines and f"onnx {onnx.__version__}" in lines
    assert "torch not installed" in lines


def test_optimize_works_from_the_wheel(venv, digits_cnn, tmp_path):
    out = tmp_path / "out.onnx"
    r = _run(venv, ["optimize", digits_cnn, "-o", out, "--passes", "cleanup,fold-bn", "--verify", "numeric"])
    assert r.returncode == 0, r.stderr
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Conv" in ops and "BatchNormalization" not in ops  # the passes were there and ran


def _one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return lines[0]


def test_distill_without_torch_is_one_line_with_the_install_command(venv, models_dir, tmp_path):
    out = tmp_path / "student.onnx"
    r = _run(venv, ["distill", "--teacher", models_dir / "digits_cnn.onnx", "--student", models_dir / "digits_cnn.onnx",
                    "--data", models_dir / "digits_train.npz", "-o", out, "--epochs", "1"])
    line = _one_line_error(r)
    assert "distillation" in line and line.endswith("pip install 'onnxcomp[torch]'"), line
    assert not out.exists()


def test_without_onnxruntime_model_commands_say_what_to_install(venv, digits_cnn, tmp_path):
    out = tmp_path / "out.onnx"
    line = _one_line_error(_run(venv, ["optimize", digits_cnn, "-o", out], env="no-ort"))
    assert "pip install 'onnxcomp[cpu]'" in line and "onnxcomp[gpu]" in line, line
    assert not out.exists()
    line = _one_line_error(_run(venv, ["compare", digits_cnn, digits_cnn], env="no-ort"))
    assert "pip install 'onnxcomp[cpu]'" in line, line
    # help, versions and the commands that only read the graph work without it
    assert _run(venv, ["optimize", "-h"], env="no-ort").returncode == 0
    r = _run(venv, ["--version"], env="no-ort")
    assert r.returncode == 0 and "onnxruntime not installed" in r.stdout.splitlines(), r.stdout
    for args in (["inspect", digits_cnn], ["passes"]):
        r = _run(venv, args, env="no-ort")
        assert r.returncode == 0, (args, r.stderr)
