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

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))
sys.path.append(str(REPO / "tests"))


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
