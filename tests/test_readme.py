"""The README's commands exist and the demo's onnxcomp steps run as written in the Makefile."""

import os
import re
import shlex
import subprocess
import sys

from conftest import REPO


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
