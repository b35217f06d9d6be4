"""Shared fixtures: the built models/ (built once, cached under build/models) and tmp paths.

Tests import the *installed* onnxcomp (make test installs it; pytest runs from tests/),
so the repository root is appended to sys.path only for the models/ scripts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
sys.path.append(str(REPO / "tests"))

# Hypothesis: CI replays the same examples every run (a red build is reproducible, and print_blob
# prints the @reproduce_failure line); locally every run draws new ones. Tests that set their own
# max_examples keep it; the rest get Hypothesis's usual 100. Loaded here, before any test module.
settings.register_profile("ci", derandomize=True, print_blob=True, database=None, max_examples=100)
settings.register_profile("dev", derandomize=False, print_blob=True, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """build/models with the digits CNN, MLP and transformer block (built if missing or stale)."""
    out = Path(os.environ.get("ONNXCOMP_MODELS", REPO / "build" / "models"))
    subprocess.run([sys.executable, "-m", "models.build", "--out", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def digits_cnn(models_dir) -> Path:
    return models_dir / "digits_cnn.onnx"
