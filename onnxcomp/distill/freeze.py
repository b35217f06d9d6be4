"""Which initializers of an ONNX student stay fixed during fine-tuning (DistillOptions.freeze).

"embeddings": the tables token-id inputs index. Compression leaves them as they were, and a few
hundred sentences would move only the rows of the ids they use; every step still pays a dense
gradient and an optimizer update of the whole table (on MiniLM, 30522 x 384: an epoch ~40% faster
frozen, same accuracy). "unchanged": every initializer whose name and values are the teacher's, so
only what compression changed (factors, narrowed weights) trains.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.errors import InputError
from onnxcomp.graph.signature import indexed_tables


def frozen_initializers(student: onnx.ModelProto, teacher: onnx.ModelProto | None, mode: str) -> set[str]:
    """The initializer names `mode` keeps fixed. "embeddings" on a student without a token-id input is
    refused: the run would train every weight while the user believes the tables fixed."""
    if mode == "none":
        return set()
    if mode == "embeddings":
        weights = {init.name for init in student.graph.initializer}
        tables = {table for found in indexed_tables(student).values() for table in found if table in weights}
        if not tables:
            raise InputError("freeze embeddings: the student has no embedding table (a constant table "
                             "an integer input indexes)")
        return tables
    if teacher is None:
        raise InputError("freeze unchanged: needs an ONNX teacher to compare the student's weights with")
    theirs = {t.name: t for t in teacher.graph.initializer}
    same = set()
    for init in student.graph.initializer:
        other = theirs.get(init.name)
        if other is not None and list(other.dims) == list(init.dims) and other.data_type == init.data_type \
                and np.array_equal(numpy_helper.to_array(other), numpy_helper.to_array(init)):
            same.add(init.name)
    return same


def freeze(module, names: set[str]) -> int:
    """Stop the gradients of the module's parameters for these initializers; returns how many were frozen."""
    count = 0
    for name in names:
        kind, key = module.key_of.get(name, ("const", None))
        if kind in ("param", "qparam"):
            module.params[key].requires_grad_(False)
            count += 1
    return count
