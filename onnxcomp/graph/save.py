"""Saving models atomically, with external data when they are large; the input is never written."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import onnx

from onnxcomp._testhooks import test_pause
from onnxcomp.errors import InputError
from onnxcomp.graph.convert import to_model
from onnxcomp.graph.load import PROTOBUF_LIMIT, all_tensors, declared_bytes
from onnxcomp.graph.weights import bytes_of, in_store, uses_store

# Models whose weights exceed this are saved with external data next to the output.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def fits_protobuf(model: onnx.ModelProto) -> bool:
    """Whether `model` can be serialized in one piece. ByteSize() raises EncodeError past 2 GB
    (upb), so it cannot be compared with the limit; weights are counted instead."""
    return weight_bytes(model) < PROTOBUF_LIMIT - 64 * 1024**2


def weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            length = {e.key: e.value for e in init.external_data}.get("length")
            total += int(length) if length else 0
        else:
            total += len(init.raw_data) or init.ByteSize()
    return total


def save(model, path: str | os.PathLike, external_data: bool | None = None,
         forbid: str | os.PathLike | None = None) -> Path:
    """Write a model (ModelProto or gs.Graph) atomically.

    external_data=None decides by size: weights near the 2 GB protobuf limit go to
    `<name>.data` beside the model. `forbid` names the input model: neither it nor any
    external-data file it reads may be overwritten (checked by file identity, so symlinks,
    hard links and other spellings of the same path are caught).

    Everything is staged in a temporary folder beside the destination and fsynced; the
    renames into place (data file first, model last) run with SIGINT/SIGTERM deferred, so an
    interrupt leaves the complete old output or the complete new one. The caller's model is
    not modified and no second copy of its weights is made: tensors are streamed to the
    data file one at a time.
    """
    if not isinstance(model, onnx.ModelProto):
        model = to_model(model)
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist")
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory")
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    external_data = external_data or uses_store(model)  # weights kept on disk are streamed, never inlined
    data_name = path.name + ".data"
    if forbid is not None:
        protected = input_files(forbid)
        for target in [path] + ([folder / data_name] if external_data else []):
            if any(same_file(target, p) for p in protected):
                what = "the input model" if same_file(target, forbid) else "external data of the input model"
                raise InputError(f"{target}: refusing to overwrite {what}; choose another output path")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: output folder is not writable")
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=folder))
        staged = staging / path.name
        if external_data:
            write_with_external_data(model, staged, staging / data_name, data_name)
        else:
            _write_file(staged, [model.SerializeToString()])
        test_pause("staged")
        with signals_deferred():
            if external_data:
                os.replace(staging / data_name, folder / data_name)
            test_pause("data-renamed")
            os.replace(staged, path)
            _fsync_dir(folder)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and name one file (symlinks, hard links, `./x`, `d/../x`)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_files(model_path: str | os.PathLike) -> list[Path]:
    """The model file and every external-data file it names (what a run must never overwrite)."""
    path = Path(model_path)
    files = [path]
    try:
        if not path.is_file() or path.stat().st_size > 256 * 1024**2:
            return files  # a big file holds its weights inline: no external files to protect
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return files
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location:
                files.append(path.parent / location)
    return files


# Tensors at least this big go to the data file; big ones start at page boundaries so
# runtimes can memory-map them.
_EXTERNAL_MIN_BYTES = 1024


_PAGE = 4096


def write_with_external_data(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Write `model` as a small .onnx plus one data file, one tensor at a time, without touching `model`."""
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip=("graph",))
    _copy_fields(model.graph, shell.graph, skip=("initializer",))
    offset = 0
    with open(data_path, "wb") as f:
        for init in model.graph.initializer:
            if in_store(init):
                chunks, length = bytes_of(init), int({e.key: e.value for e in init.external_data}["length"])
            elif init.data_location == onnx.TensorProto.EXTERNAL:
                raise InputError(f"initializer {init.name!r} still refers to external data that was never loaded")
            else:
                size = declared_bytes(init)
                if size is None or size < _EXTERNAL_MIN_BYTES:
                    shell.graph.initializer.add().CopyFrom(init)
                    continue
                data = init.raw_data if init.HasField("raw_data") else raw_bytes(init)
                chunks, length = [data], len(data)
                del data
            align = _PAGE if length >= 64 * 1024 else 16
            pad = -offset % align
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            for chunk in chunks:
                f.write(chunk)
            stub = shell.graph.initializer.add()
            stub.name, stub.data_type, stub.doc_string = init.name, init.data_type, init.doc_string
            stub.dims.extend(init.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
            offset += length
        f.flush()
        os.fsync(f.fileno())
    _write_file(model_path, [shell.SerializeToString()])


def raw_bytes(init: onnx.TensorProto) -> bytes:
    """The raw_data bytes of a tensor stored in typed fields (float_data, int32_data, ...): little-endian,
    4-bit types packed two to a byte. onnx's from_array does both on any host and any NumPy."""
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init)).raw_data


def _copy_fields(src, dst, skip=()) -> None:
    """Copy every set field of a protobuf message except those named in `skip` (no deep copy of skipped ones)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        target = getattr(dst, field.name)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _write_file(path: Path, chunks) -> None:
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends: the renames that publish an output are never split.

    Done with Python-level handlers, not a thread signal mask: ONNX Runtime's worker threads
    would receive a masked signal and Python would still run the handler in the main thread.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be swapped (and only run) in the main thread
        return
    caught: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda n, frame: caught.append(n))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
