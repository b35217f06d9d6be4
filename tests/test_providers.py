"""--providers: every session a command builds runs on the execution providers it names; CPU by default;
an unknown or uninstalled provider is one line, exit 2, before any work."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from onnxcomp.cli import main
from onnxcomp.errors import InputError
from onnxcomp.measure import runtime
from onnxcomp.measure.runtime import providers, session, set_providers
from onnxcomp.progress import logger

AVAILABLE = ort.get_available_providers()
# A provider of the plain onnxruntime wheel besides CPU, to see the list reach the sessions.
SECOND = next((p for p in AVAILABLE if p != "CPUExecutionProvider"), None)
MISSING = next((p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider")
                if p not in AVAILABLE), None)


@pytest.fixture(autouse=True)
def cpu_afterwards():
    state = (logger.level, list(logger.handlers), logger.propagate)
    yield
    set_providers(["cpu"])
    logger.setLevel(state[0])
    logger.handlers[:] = state[1]
    logger.propagate = state[2]


def onnxcomp(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_short_and_full_names_resolve_and_cpu_is_the_default(models_dir):
    assert providers() == ("CPUExecutionProvider",)
    assert set_providers(["CPU"]) == set_providers(["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    assert session(onnx.load(models_dir / "mlp.onnx")).get_providers() == ["CPUExecutionProvider"]


@pytest.mark.skipif(SECOND is None, reason="this ONNX Runtime has only the CPU provider")
def test_sessions_are_built_on_the_providers_set(models_dir):
    short = SECOND.removesuffix("ExecutionProvider").lower()
    assert set_providers([f" {short}", "cpu "]) == (SECOND, "CPUExecutionProvider")
    assert session(onnx.load(models_dir / "mlp.onnx")).get_providers() == [SECOND, "CPUExecutionProvider"]
    assert session(str(models_dir / "mlp.onnx")).get_providers()[0] == SECOND


@pytest.mark.skipif(MISSING is None, reason="every provider probed is installed")
def test_unknown_or_missing_providers_are_refused_and_change_nothing():
    with pytest.raises(InputError, match=f"{MISSING} is not installed in this ONNX Runtime"):
        set_providers(["cpu", MISSING.removesuffix("ExecutionProvider").lower()])
    with pytest.raises(InputError, match="unknown execution provider 'quantum'; ONNX Runtime's are .*cuda"):
        set_providers(["quantum"])
    with pytest.raises(InputError, match="at least one"):
        set_providers([" ", ""])
    assert providers() == ("CPUExecutionProvider",)


@pytest.mark.skipif("CUDAExecutionProvider" in AVAILABLE, reason="CUDA is installed here")
def test_each_command_refuses_a_provider_that_is_not_installed_in_one_line(capsys, models_dir, tmp_path):
    mlp, calib = models_dir / "mlp.onnx", models_dir / "mlp_calib.npz"
    out = tmp_path / "out"
    for args in (["compare", mlp, mlp], ["optimize", mlp, "-o", out], ["calibrate", mlp, "--data", calib, "-o", out]):
        code, stdout, err = onnxcomp(capsys, *args, "--providers", "cuda,cpu")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and stdout == "", (args, err)
        assert "CUDAExecutionProvider is not installed" in lines[0] and "onnxcomp[gpu]" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_command_sets_its_providers_and_the_next_one_starts_from_cpu(capsys, models_dir, monkeypatch):
    mlp = models_dir / "mlp.onnx"
    seen = []
    built = runtime.session

    def spy(model, *args, **kwargs):
        sess = built(model, *args, **kwargs)
        seen.append(tuple(sess.get_providers()))
        return sess

    monkeypatch.setattr(runtime, "session", spy)  # compare runs its models through runtime.run_model
    chosen = ",".join(p.removesuffix("ExecutionProvider").lower() for p in ([SECOND] if SECOND else []) + ["CPU"])
    code, _, err = onnxcomp(capsys, "compare", mlp, mlp, "--providers", chosen, "-q")
    assert code == 0, err
    assert providers() == tuple(p for p in (SECOND, "CPUExecutionProvider") if p)
    code, _, err = onnxcomp(capsys, "compare", mlp, mlp, "-q")
    assert code == 0, err
    assert providers() == ("CPUExecutionProvider",)
    assert seen[0][0] == (SECOND or "CPUExecutionProvider") and seen[-1] == ("CPUExecutionProvider",)
