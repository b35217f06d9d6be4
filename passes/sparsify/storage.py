"""File size of sparse weights: gzip-compressed size, and ONNX sparse_initializer storage.

ONNX Runtime computes with zeros like any other weight, so on CPU a sparse model is not
faster; what shrinks is the compressed file (zeros compress) and, above about two thirds
zeros for float32, the raw file when the tensor is stored as a sparse_initializer (values
plus INT64 linear indices, the only index type the ONNX checker accepts). ONNX Runtime
loads sparse initializers (it densifies them at load time); `to_sparse_storage` keeps
every other initializer as it was.
"""

from __future__ import annotations

import gzip

import numpy as np
import onnx
from onnx import helper, numpy_helper


def gzip_size(model: onnx.ModelProto, level: int = 6) -> int:
    return len(gzip.compress(model.SerializeToString(), compresslevel=level))


def sparse_bytes(values: np.ndarray) -> int:
    """Bytes of a sparse encoding: non-zero values plus one int64 index each."""
    nnz = int(np.count_nonzero(values))
    return nnz * (values.dtype.itemsize + 8)


def to_sparse_storage(model: onnx.ModelProto, min_saving: float = 0.1) -> tuple[onnx.ModelProto, list[dict]]:
    """A copy of `model` with each float initializer stored sparse where that saves >= min_saving of its bytes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_inputs = {i.name for i in out.graph.input}
    kept, rows = [], []
    for init in out.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.name in graph_inputs:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        dense = values.nbytes
        if values.dtype.kind != "f" or values.ndim == 0 or sparse_bytes(values) > (1 - min_saving) * dense:
            kept.append(init)
            continue
        flat = values.ravel()
        index = np.flatnonzero(flat)
        sparse = helper.make_sparse_tensor(numpy_helper.from_array(flat[index], init.name),
                                           numpy_helper.from_array(index.astype(np.int64), init.name + "_indices"),
                                           list(values.shape))
        out.graph.sparse_initializer.append(sparse)
        rows.append({"name": init.name, "dense_bytes": dense, "sparse_bytes": sparse_bytes(values)})
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, rows
