"""Turn `optimize`'s convenience flags into pass instances, in the order that works best.

Order: cleanup, fold-bn (BN must be folded before QDQ), remove-channels,
sparsify-initializers, insert-qdq (quantize last, so it sees the final weights).
"""

from __future__ import annotations

from onnxcomp.errors import InputError
from onnxcomp.pipeline.options import build_options
from onnxcomp.pipeline.registry import all_passes


def make_pass(name: str, values: dict):
    passes = all_passes()
    if name not in passes:
        raise InputError(f"pass {name!r} is not available in this build; available: {', '.join(passes)}")
    cls = passes[name]
    return cls(build_options(cls.Options, {k: v for k, v in values.items() if v is not None}, name))


def shortcut_passes(*, quantize=None, calib_method=None, target=None, exclude=(), max_drop=None,
                    prune_channels=None, importance=None, round_to=None, global_ranking=False,
                    sparsify=None, sparsify_scope=None) -> list:
    passes = []
    exclude = tuple(exclude) if exclude else None
    if prune_channels is not None:
        passes.append(make_pass("remove-channels", {
            "ratio": prune_channels, "importance": importance, "round_to": round_to,
            "global_ranking": True if global_ranking else None, "exclude": exclude, "max_drop": max_drop}))
    if sparsify is not None:
        passes.append(make_pass("sparsify-initializers", {
            "sparsity": sparsify, "scope": sparsify_scope, "exclude": exclude, "max_drop": max_drop}))
    if quantize is not None:
        if quantize != "int8":
            raise InputError(f"--quantize {quantize!r}: only int8 is supported")
        passes.append(make_pass("insert-qdq", {
            "method": calib_method, "target": target, "exclude": exclude, "max_drop": max_drop}))
    return passes
