"""Errors a user can cause, each with the exit code the CLI documents.

Exit codes: 0 ok, 1 internal error, 2 usage or bad input, 3 verification failed,
4 outputs outside tolerance (or an accuracy budget missed).
"""


class OnnxcompError(Exception):
    """A failure the user can act on; the CLI prints it as one line."""

    exit_code = 2


class InputError(OnnxcompError):
    """A model, data file, option or path that cannot be used as given."""

    exit_code = 2


class VerificationError(OnnxcompError):
    """A pass produced a graph that fails structural or checker verification."""

    exit_code = 3


class ToleranceError(OnnxcompError):
    """Outputs differ from the reference by more than the allowed tolerance."""

    exit_code = 4


def first_line(exc: BaseException, fallback: str | None = None) -> str:
    """The first line of an exception's message, for one-line error reports.

    An empty message gives `fallback`, or the exception's type name when no fallback is given.
    """
    text = str(exc).strip().splitlines()
    if text:
        return text[0]
    return type(exc).__name__ if fallback is None else fallback


class MissingDependency(InputError, ImportError):
    """A package a feature needs is not installed. Also an ImportError, so code that already falls
    back on a missing import keeps doing so; the CLI prints it as one line (exit 2)."""


def require(module: str, *, feature: str, extra: str, package: str | None = None, note: str = "") -> None:
    """Raise MissingDependency unless `module` is installed: one line naming `feature`, the missing
    `package` (default: the module) and the command that installs it, `pip install 'onnxcomp[extra]'`,
    then `note` in parentheses.

    Checked with find_spec, without importing, so a command can fail before any work. A bare folder
    without `__init__.py` counts as missing: uninstalling one of two wheels that ship the same module
    (onnxruntime and onnxruntime-gpu) can leave one behind.
    """
    from importlib.util import find_spec

    try:
        spec = find_spec(module)
    except ImportError:  # a dotted name whose parent package is missing
        spec = None
    if spec is None or spec.origin is None:
        raise MissingDependency(f"{feature} needs {package or module}, which is not installed: "
                                f"pip install 'onnxcomp[{extra}]'" + (f" ({note})" if note else ""))
