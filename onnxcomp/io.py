"""Loading and saving models: raw onnx at the edges, onnx-graphsurgeon inside.

Saving is atomic: everything is written to a temporary folder beside the destination,
fsynced, then renamed into place, the model file last, so an interrupted run leaves the
old output or none. The input model is never written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import onnx

from onnxcomp.errors import InputError, first_line
from onnxcomp.report import human_bytes

PROTOBUF_LIMIT = 2**31 - 1
# Models whose weights exceed this are saved with external data next to the output.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def load_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file, turning every way it can be unreadable into one InputError.

    Before any weight is read, every tensor (initializers, Constant attributes, subgraphs) is
    checked: its declared size must match the bytes it holds, and external data must stay inside
    the model's folder (no `../`, absolute paths or symlinks out) and fit in its file. A hostile
    file is refused before anything is allocated for it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage bytes
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise InputError(f"{path}: the file holds no ONNX graph")
    if not model.opset_import:
        raise InputError(f"{path}: the model declares no opset")
    check_names(model)
    external = check_tensors(model, path.parent, need_files=load_external_data,
                             file_size=path.stat().st_size)
    if load_external_data and external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise InputError(f"{path}: cannot read external data ({first_line(exc)})") from None
    test_pause("loaded")
    return model


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of a model: initializers and node attributes, subgraphs included."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def check_names(model: onnx.ModelProto) -> None:
    """Refuse names that are not valid UTF-8 (protobuf hands them over as bytes; every tool then fails)."""
    top = [model.producer_name, model.producer_version, model.domain, model.doc_string]
    if any(not isinstance(v, str) for v in top):
        raise InputError("the model's producer or doc string is not valid UTF-8")
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        values = [graph.name, graph.doc_string]
        values += [x for v in list(graph.input) + list(graph.output) + list(graph.value_info)
                   for x in (v.name, v.doc_string)]
        values += [x for t in graph.initializer for x in (t.name, t.doc_string)]
        for node in graph.node:
            values += [node.op_type, node.name, node.domain, node.doc_string, *node.input, *node.output]
            for attr in node.attribute:
                values.append(attr.name)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        bad = next((v for v in values if not isinstance(v, str)), None)
        if bad is not None:
            raise InputError(f"the model holds a name that is not valid UTF-8: {bytes(bad)[:40]!r}")


# Sub-byte types pack two values per byte; strings have no fixed size.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _element_count(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count


def declared_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's dims and type call for (None for strings and unknown types)."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}")
    count = _element_count(tensor)
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    if tensor.data_type in _PACKED:
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return None
    return count * itemsize


# Reading raw_data copies it (protobuf), so big embedded tensors are only bounded by the file size.
_EXACT_CHECK_BYTES = 64 * 1024**2


def check_tensors(model: onnx.ModelProto, base: Path, need_files: bool = True,
                  file_size: int = PROTOBUF_LIMIT) -> int:
    """Refuse tensors whose sizes lie or whose external data leaves `base`; returns the external count.

    Cheap for big models: a large embedded tensor is only checked against the file's size (so a
    forged shape can never make us allocate more than the file holds), not copied to be measured.
    """
    base = Path(os.path.realpath(base))
    external = 0
    for tensor in all_tensors(model):
        want = declared_bytes(tensor)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external += 1
            _check_external(tensor, base, want, need_files)
        elif tensor.data_type == onnx.TensorProto.STRING:
            if tensor.HasField("raw_data") or len(tensor.string_data) != _element_count(tensor):
                raise InputError(f"string tensor {tensor.name!r} declares shape {list(tensor.dims)} "
                                 f"but holds {len(tensor.string_data)} strings")
        elif want is not None and not tensor.HasField("raw_data"):
            _check_typed_field(tensor, want)
        elif want is not None and tensor.HasField("raw_data") and (
                want > file_size or (want <= _EXACT_CHECK_BYTES and len(tensor.raw_data) != want)):
            raise InputError(f"tensor {tensor.name!r} declares shape {list(tensor.dims)} "
                             f"({human_bytes(want)}) but holds a different number of bytes")
    return external


# Where a tensor's values live when raw_data is not used (the ONNX TensorProto rules).
_FIELD_OF = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.COMPLEX64: "float_data",
             onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.DOUBLE: "double_data",
             onnx.TensorProto.COMPLEX128: "double_data", onnx.TensorProto.UINT32: "uint64_data",
             onnx.TensorProto.UINT64: "uint64_data"}


def _check_typed_field(tensor: onnx.TensorProto, want: int) -> None:
    """Values in a typed field: the field the data type calls for must hold one entry per element."""
    count = _element_count(tensor)
    field = _FIELD_OF.get(tensor.data_type, "int32_data")
    if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        count *= 2
    elif tensor.data_type in _PACKED:
        count = (count + 1) // 2
    held = len(getattr(tensor, field))
    if held != count:
        what = "no data" if not any(len(getattr(tensor, f)) for f in _TYPED_FIELDS) else f"{held} values in {field}"
        raise InputError(f"tensor {tensor.name!r} declares shape {list(tensor.dims)} ({human_bytes(want)}) "
                         f"but holds {what}")


def _check_external(tensor: onnx.TensorProto, base: Path, want: int | None, need_files: bool) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    name = tensor.name
    try:
        target = Path(os.path.realpath(base / location))
        inside = bool(location) and not os.path.isabs(location) and base in target.parents
    except (ValueError, OSError):  # NUL bytes, over-long names
        inside = False
    if not inside:
        raise InputError(f"external data of {name!r} points outside the model folder: {location!r}")
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
    except ValueError:
        raise InputError(f"external data of {name!r} has a non-numeric offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise InputError(f"external data of {name!r} has a negative offset or length")
    if length is not None and want is not None and length != want:
        raise InputError(f"external data of {name!r} claims {length} bytes, its shape {list(tensor.dims)} "
                         f"needs {want}")
    if not need_files:
        return
    if not target.is_file():
        raise InputError(f"external data file of {name!r} is missing: {location}")
    if (base / location).is_symlink():
        raise InputError(f"external data file of {name!r} is a symbolic link ({location}); give the file itself")
    size = target.stat().st_size
    needed = length if length is not None else want
    if needed is not None and offset + needed > size:
        raise InputError(f"external data of {name!r} needs bytes {offset}..{offset + needed} "
                         f"but {location} holds {size}")


def load(path: str | os.PathLike):
    """Load an ONNX file as an onnx-graphsurgeon graph (the IR the passes edit)."""
    return to_graph(load_model(path))


def to_graph(model: onnx.ModelProto):
    import onnx_graphsurgeon as gs

    from onnxcomp.manager import gc_paused

    try:
        with gc_paused():  # import builds one object web; collections while it grows are wasted work
            return gs.import_onnx(model)
    except Exception as exc:
        raise InputError(f"cannot import the graph ({first_line(exc)})") from None


def to_model(graph) -> onnx.ModelProto:
    """Export a graph, reusing initializer protos that were never touched (no weight copy)."""
    import onnx_graphsurgeon as gs

    from onnxcomp.manager import gc_paused

    try:
        with gc_paused():
            return gs.export_onnx(graph, do_type_check=False)
    except Exception as exc:  # graphsurgeon fails on some legal oddities (e.g. untyped subgraph outputs)
        raise InputError(f"cannot export the graph (onnx-graphsurgeon: {type(exc).__name__}: {first_line(exc)})") from None


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
            _write_with_external_data(model, staged, staging / data_name, data_name)
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


def _write_with_external_data(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Write `model` as a small .onnx plus one data file, one tensor at a time, without touching `model`."""
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip=("graph",))
    _copy_fields(model.graph, shell.graph, skip=("initializer",))
    offset = 0
    with open(data_path, "wb") as f:
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise InputError(f"initializer {init.name!r} still refers to external data that was never loaded")
            size = declared_bytes(init)
            if size is None or size < _EXTERNAL_MIN_BYTES:
                shell.graph.initializer.add().CopyFrom(init)
                continue
            data = init.raw_data if init.HasField("raw_data") else \
                onnx.numpy_helper.to_array(init).astype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                                                        ).newbyteorder("<").tobytes()
            align = _PAGE if len(data) >= 64 * 1024 else 16
            pad = -offset % align
            if pad:
                f.write(b"\0" * pad)
                offset += pad
            f.write(data)
            stub = shell.graph.initializer.add()
            stub.name, stub.data_type, stub.doc_string = init.name, init.data_type, init.doc_string
            stub.dims.extend(init.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
            del data
        f.flush()
        os.fsync(f.fileno())
    _write_file(model_path, [shell.SerializeToString()])


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


def test_pause(stage: str) -> None:
    """Test hook: with ONNXCOMP_TEST_PAUSE=<stage>[,<stage>...] set, announce the stage on stderr and
    sleep, so tests can deliver a signal at a known point. Does nothing otherwise."""
    wanted = os.environ.get("ONNXCOMP_TEST_PAUSE")
    if not wanted or stage not in wanted.split(","):
        return
    import sys
    import time

    print(f"onnxcomp-test: paused at {stage}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("ONNXCOMP_TEST_PAUSE_SECONDS", "3")))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

