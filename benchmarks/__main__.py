"""Run every benchmark, or the ones named: `python -m benchmarks [quantize prune ...] [-- extra args]`."""

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    names = argv[:argv.index("--")] if "--" in argv else argv
    available = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                       if m.name.startswith("bench_"))
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    from onnxcomp.errors import MissingDependency

    status = 0
    for name in names or available:
        print(f"== {name} ==", flush=True)
        try:
            status |= importlib.import_module(f"benchmarks.bench_{name}").main(extra) or 0
        except MissingDependency as exc:  # one line, and the other benchmarks still run
            print(f"benchmarks {name}: {exc}", file=sys.stderr)
            status |= 2
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
