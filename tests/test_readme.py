"""The README's commands exist, the demo's onnxcomp steps run as written in the Makefile, and every
```python block of the README runs as written."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.DOTALL | re.MULTILINE)


def test_readme_names_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_demo_steps_run(models_dir, tmp_path):
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    steps = re.sub(r"\\\n\s*", " ", recipe).splitlines()
    commands = [s.strip() for s in steps if "$(BIN)/onnxcomp" in s]
    assert len(commands) >= 3
    for command in commands:
        args = command.replace("$(BIN)/onnxcomp", "").replace("$(MODELS)", str(models_dir))
        args = shlex.split(args.replace("$(DEMO)", str(tmp_path)))
        r = subprocess.run([sys.executable, "-m", "onnxcomp", *args], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
        assert r.returncode == 0, (command, r.stdout, r.stderr)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())), ids=lambda i: f"block{i + 1}")
def test_readme_python_block_runs_as_written(index, digits_cnn, tmp_path):
    """In a fresh interpreter, in a folder that holds only the demo model as model.onnx."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(digits_cnn, folder / "model.onnx")
    code = python_blocks()[index]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder,
                       env={**os.environ, "PYTHONPATH": ""}, timeout=300, check=False)
    assert r.returncode == 0, f"README python block {index + 1} failed:\n{code}\n{r.stdout}\n{r.stderr}"
