"""Build every model into a folder (default build/models), skipping when already up to date.

    python -m models.build [--out build/models] [--force]

Up to date means: every expected file exists and the stamp matches a hash of the
models/ sources, so editing a script rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = ["digits_cnn.onnx", "digits_calib.npz", "digits_test.npz", "digits_train.npz", "digits_cnn.pt",
            "mlp.onnx", "mlp_calib.npz", "mlp_test.npz", "transformer_block.onnx", "transformer_calib.npz"]


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_all(out: Path, force: bool = False, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "stamp.json"
    digest = source_hash()
    if not force and stamp.exists() and all((out / name).exists() for name in EXPECTED):
        info = json.loads(stamp.read_text())
        if info.get("sources") == digest:
            log(f"models in {out} are up to date")
            return info
    from models import digits_cnn, mlp, transformer_block

    start = time.time()
    info = {"sources": digest}
    info.update(digits_cnn.build(out, log=log))
    info.update(mlp.build(out, log=log))
    info.update(transformer_block.build(out, log=log))
    info["seconds"] = round(time.time() - start, 1)
    stamp.write_text(json.dumps(info, indent=2))
    log(f"built models in {out} ({info['seconds']} s)")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description="Build onnxcomp's test and demo models.")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    build_all(args.out, args.force)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
