"""Loading and saving models: raw onnx at the edges, onnx-graphsurgeon inside.

Saving is atomic: everything is written to a temporary folder beside the destination,
fsynced, then renamed into place, the model file last, so an interrupted run leaves the
old output or none. The input model is never written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from onnxcomp.errors import InputError

PROTOBUF_LIMIT = 2**31 - 1
# Models whose weights exceed this are saved with external data next to the output.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


def load_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file, turning every way it can be unreadable into one InputError."""
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
        raise InputError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise InputError(f"{path}: the file holds no ONNX graph")
    if not model.opset_import:
        raise InputError(f"{path}: the model declares no opset")
    if load_external_data and _has_external_data(model):
        _check_external_locations(model, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise InputError(f"{path}: cannot read external data ({_first_line(exc)})") from None
    return model


def load(path: str | os.PathLike):
    """Load an ONNX file as an onnx-graphsurgeon graph (the IR the passes edit)."""
    return to_graph(load_model(path))


def to_graph(model: onnx.ModelProto):
    import onnx_graphsurgeon as gs

    try:
        return gs.import_onnx(model)
    except Exception as exc:
        raise InputError(f"cannot import the graph ({_first_line(exc)})") from None


def to_model(graph) -> onnx.ModelProto:
    """Export a graph, reusing initializer protos that were never touched (no weight copy)."""
    import onnx_graphsurgeon as gs

    return gs.export_onnx(graph, do_type_check=False)


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
    `<name>.data` beside the model. `forbid` names a path that must not be overwritten
    (the input model).
    """
    if not isinstance(model, onnx.ModelProto):
        model = to_model(model)
    path = Path(path)
    if forbid is not None and path.exists() and Path(forbid).exists() and path.resolve() == Path(forbid).resolve():
        raise InputError(f"{path}: refusing to overwrite the input model; choose another output path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{folder}: output folder is not writable")
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory")
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        staged = staging / path.name
        if external_data:
            onnx.save_model(model, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            # save_model converts in place; bring the weights back into memory for the caller.
            onnx.external_data_helper.load_external_data_for_model(model, str(staging))
        else:
            with open(staged, "wb") as f:
                f.write(model.SerializeToString())
        for item in staging.iterdir():
            _fsync(item)
        if external_data:
            os.replace(staging / data_name, folder / data_name)
        os.replace(staged, path)
        _fsync_dir(folder)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            raise InputError(f"external data of {tensor.name!r} points outside the model folder: {location!r}")
        if not target.exists():
            raise InputError(f"external data file of {tensor.name!r} is missing: {location}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
