"""Reading ONNX files: every way a file can be unreadable or hostile becomes one InputError."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnxcomp._testhooks import test_pause
from onnxcomp.errors import InputError, first_line
from onnxcomp.report import human_bytes

PROTOBUF_LIMIT = 2**31 - 1


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
        from onnxcomp.graph import weights

        try:
            if external_bytes(model) >= weights.on_disk_min_bytes():
                weights.keep_on_disk(model, path.parent)  # big weights stay in files (graph/weights.py)
                read_in_rest(model, path.parent)
            else:
                onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise InputError(f"{path}: cannot read external data ({first_line(exc)})") from None
    test_pause("loaded")
    return model


def external_bytes(model: onnx.ModelProto) -> int:
    return sum(declared_bytes(t) or 0 for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL)


def read_in_rest(model: onnx.ModelProto, base: Path) -> None:
    """Read into the proto every external tensor the weight store did not take (small ones,
    attribute and subgraph tensors). onnx's own reader maps the whole data file for each."""
    from onnxcomp.graph.weights import in_store

    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not in_store(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            with open(base / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                tensor.raw_data = f.read(int(info["length"]) if "length" in info else -1)
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


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
