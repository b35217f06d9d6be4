"""Weights kept on disk for models too big to hold twice (issue 16: 2.4 GB at <= 1.5x its weights).

Held in memory, a model with external data costs its weights once as protobuf, again as the
graph's arrays, again per exported copy and per ONNX Runtime session: about 5x. Here every big
tensor of such a model lives in one store folder instead: the input's data files are copied (disk to
disk) into it, a tensor a pass rewrites is appended to a spill file after
the pass, and what holds the model - protos, the graph, sessions - holds only references
(offset and length) into the store. Reading a tensor reads its bytes from disk each time; no
array stays behind. ONNX Runtime reads the store through a model file written into the same
folder (it refuses external data outside the model's folder, symlinks included) and maps it.

Only models whose external data reaches `ON_DISK_MIN_BYTES` take this path (environment
ONNXCOMP_ON_DISK_BYTES overrides it, for tests); everything else is loaded as before.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

ON_DISK_MIN_BYTES = 1024**3
TENSOR_MIN_BYTES = 64 * 1024  # smaller tensors are read into the proto: shape constants, biases
_PAGE = 4096
_PREFIX = "onnxcomp-store-"


def on_disk_min_bytes() -> int:
    value = os.environ.get("ONNXCOMP_ON_DISK_BYTES")
    return int(value) if value and value.isdigit() else ON_DISK_MIN_BYTES


class Store:
    """One folder per process holding every on-disk tensor; removed when the process exits."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self.files: dict[str, Path] = {}  # location -> file in self.dir
        self._linked: dict[str, str] = {}  # real path of an input's data file -> its location here
        self._spill = None
        self._spill_name = ""
        self._spill_size = 0
        self._names = itertools.count()
        atexit.register(shutil.rmtree, self.dir, True)

    def adopt(self, source: Path) -> str:
        """The store's location for an input data file (copied in once)."""
        real = os.path.realpath(source)
        if real in self._linked:
            return self._linked[real]
        location = f"{_PREFIX}{os.getpid()}-in{next(self._names)}.data"
        target = self.dir / location
        # A copy, disk to disk (sendfile: page cache, not this process's memory). Not a hard link:
        # onnx and ONNX Runtime refuse data files with several links, the user's input included.
        shutil.copyfile(real, target)
        self.files[location] = target
        self._linked[real] = location
        return location

    def write(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """Append an array to the spill file; returns the external TensorProto that refers to it."""
        if self._spill is None:
            self._spill_name = f"{_PREFIX}{os.getpid()}-spill{next(self._names)}.data"
            self.files[self._spill_name] = self.dir / self._spill_name
            self._spill = open(self.files[self._spill_name], "wb")
            self._spill_size = 0
        data = np.ascontiguousarray(array)
        if data.dtype.byteorder == ">":
            data = data.astype(data.dtype.newbyteorder("<"))
        pad = -self._spill_size % _PAGE
        if pad:
            self._spill.write(b"\0" * pad)
            self._spill_size += pad
        offset = self._spill_size
        self._spill.write(memoryview(data.reshape(-1).view(np.uint8)))
        self._spill.flush()
        self._spill_size += data.nbytes
        return external_stub(name, onnx.helper.np_dtype_to_tensor_dtype(data.dtype), data.shape,
                             self._spill_name, offset, data.nbytes)

    def new_path(self, kind: str, suffix: str) -> Path:
        """A fresh file name in the store folder."""
        return self.dir / f"{_PREFIX}{kind}{next(self._names)}{suffix}"

    def path(self, location: str) -> Path:
        return self.files[location]



_store: Store | None = None


@contextlib.contextmanager
def staged(model):
    """A path for ONNX Runtime or the checker to open `model` by when its weights are in the store
    (written into the store folder, where its data is, and deleted after), else None: callers then
    use the model as they would."""
    if not isinstance(model, onnx.ModelProto) or not uses_store(model):
        yield None
        return
    path = store().new_path("model", ".onnx")
    path.write_bytes(model.SerializeToString())
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def store() -> Store:
    global _store
    if _store is None:
        _store = Store()
    return _store


def external_stub(name: str, data_type: int, dims, location: str, offset: int, length: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims), data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def in_store(tensor: onnx.TensorProto) -> bool:
    return (_store is not None and tensor.data_location == onnx.TensorProto.EXTERNAL
            and _external(tensor).get("location", "") in _store.files)


def uses_store(model: onnx.ModelProto) -> bool:
    """Whether some initializer of `model` (subgraphs included) refers to the store."""
    if _store is None:
        return False
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        if any(in_store(t) for t in graph.initializer):
            return True
        graphs.extend(a.g for n in graph.node for a in n.attribute if a.HasField("g"))
    return False


def keep_on_disk(model: onnx.ModelProto, base: Path) -> int:
    """Point the big external initializers of the main graph of `model` (just loaded without its
    data) into the store; returns their bytes. The caller reads the other external tensors in."""
    on_disk = 0
    for tensor in model.graph.initializer:  # the main graph's: what saving streams
        if tensor.data_location != onnx.TensorProto.EXTERNAL or not _plain(tensor.data_type):
            continue
        size = int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if size >= TENSOR_MIN_BYTES:
            location = store().adopt(base / _external(tensor)["location"])
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
            on_disk += size
    return on_disk


def _plain(data_type: int) -> bool:
    """Types whose bytes on disk are their NumPy array (not packed 4-bit, not strings, not bfloat16/float8)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:
        return False
    return dtype.kind in "fiub" and onnx.helper.np_dtype_to_tensor_dtype(dtype) == data_type


def read(tensor: onnx.TensorProto) -> np.ndarray:
    """A store tensor's values, read from disk now (a new array each call)."""
    info = _external(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    array = np.fromfile(store().path(info["location"]), dtype=dtype.newbyteorder("<"), count=count,
                        offset=int(info.get("offset", 0)))
    return array.astype(dtype, copy=False).reshape(tuple(tensor.dims))


def bytes_of(tensor: onnx.TensorProto, chunk: int = 64 * 1024**2):
    """A store tensor's bytes in chunks (for writing an output without holding the tensor)."""
    info = _external(tensor)
    left = int(info["length"])
    with open(store().path(info["location"]), "rb") as f:
        f.seek(int(info.get("offset", 0)))
        while left > 0:
            part = f.read(min(chunk, left))
            if not part:
                raise OSError(f"store file of {tensor.name!r} ends early")
            left -= len(part)
            yield part


# ---- the graph side: Constants whose values stay on disk --------------------------------------

@functools.cache
def _classes() -> tuple[type, type]:
    """(DiskValues, DiskConstant), made on first use: onnx-graphsurgeon is imported only by commands
    that edit graphs."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    class DiskValues(LazyValues):
        """Values of a store tensor: read on each access, never kept."""

        def load(self):
            return read(self.tensor)

    class DiskConstant(gs.Constant):
        """A Constant whose DiskValues are read each time `values` is asked for, never cached: a pass
        reading every weight once must not end up holding them all."""

        @property
        def values(self):
            return self._values.load() if isinstance(self._values, DiskValues) else self._values

        @values.setter
        def values(self, values):
            self._values = values

        def copy(self):
            return DiskConstant(self.name, self._values, export_dtype=self._export_dtype)

    return DiskValues, DiskConstant


def _on_disk_values(constant, tensor: onnx.TensorProto) -> None:
    """Make `constant` read `tensor` (a store tensor) on each access."""
    disk_values, disk_constant = _classes()
    constant._values = disk_values(tensor)
    constant.__class__ = disk_constant


def _constants(graph):
    import onnx_graphsurgeon as gs

    for g in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant):
                yield tensor


def attach(graph) -> int:
    """Make the graph's store Constants read from disk on each access; returns how many."""
    if _store is None:
        return 0
    from onnx_graphsurgeon.ir.tensor import LazyValues

    count = 0
    disk_values = _classes()[0]
    for c in _constants(graph):
        if isinstance(c._values, LazyValues) and (isinstance(c._values, disk_values) or in_store(c._values.tensor)):
            _on_disk_values(c, c._values.tensor)
            count += 1
    if count:
        graph._weights_on_disk = True  # noqa: SLF001 - read by on_disk() only; a pass may replace every weight
    return count


def on_disk(graph) -> bool:
    if _store is None:
        return False
    disk_values = _classes()[0]
    return getattr(graph, "_weights_on_disk", False) or any(isinstance(c._values, disk_values) for c in _constants(graph))


def spill(graph) -> int:
    """Write every big array a pass left in the graph to the store and keep only its reference;
    returns the bytes written. Does nothing for a graph that is not on disk."""
    if not on_disk(graph):
        return 0
    return sum(_write_out(c, c._values) for c in _constants(graph))


def store_values(constant, array: np.ndarray) -> None:
    """Give a Constant new values; in a graph whose weights stay on disk a big array goes to the
    store at once, so a pass rewriting every weight holds one at a time, not all of them."""
    constant.values = array
    if _store is not None:
        _write_out(constant, array)


def _write_out(constant, values) -> int:
    """Move a big plain array into the store and make `constant` refer to it; the bytes written (0 for
    anything else)."""
    if not (isinstance(values, np.ndarray) and values.nbytes >= TENSOR_MIN_BYTES and _plain_dtype(values.dtype)):
        return 0
    _on_disk_values(constant, store().write(constant.name, values))
    return values.nbytes


def _plain_dtype(dtype) -> bool:
    try:
        return _plain(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except Exception:
        return False
