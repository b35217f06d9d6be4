"""Knowledge distillation sidecar (PyTorch): train a student from a teacher, before export or after compression.

    import onnxcomp
    result = onnxcomp.distill("teacher.onnx", "pruned.onnx", "train.npz",
                              {"epochs": 5, "temperature": 4, "alpha": 0.7}, val_data="val.npz")
    onnxcomp.save(result.model, "recovered.onnx")

`onnxcomp.distill` is this package, made callable: calling it is `onnxcomp.distill.run(...)`, and
`import onnxcomp.distill` / `onnxcomp.distill.DistillOptions` keep working. This is the only place in
onnxcomp that imports torch, and only when distillation runs (importing this package does not).
"""

from __future__ import annotations

import sys
import types

from onnxcomp.distill.options import DistillOptions, parse_feature


def run(teacher, student, data, options=None, **kwargs):
    """Distill `student` from `teacher` on `data`; returns a DistillResult (see onnxcomp.distill.api).

    options: a DistillOptions, a dict of its fields, or None for the defaults.
    kwargs: val_data, teacher_weights, student_weights, progress (a callable taking one line).
    """
    from onnxcomp.distill.api import run as run_distillation

    if isinstance(options, dict):
        options = DistillOptions(**options)
    return run_distillation(teacher, student, data, options, **kwargs)


class _CallableModule(types.ModuleType):
    """Lets `onnxcomp.distill(...)` call run() while the name stays this package (Python's documented
    way to customise a module: assigning a ModuleType subclass to its __class__)."""

    def __call__(self, teacher, student, data, options=None, **kwargs):
        return run(teacher, student, data, options, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["DistillOptions", "parse_feature", "run"]
