"""Shapes for the channel search: ONNX shape inference, or, where it leaves intermediate sizes unknown,
one ONNX Runtime run that reads them off.

Exports with Shape/Range position ids (real BERT exports) defeat static inference: every tensor
after the embeddings has unknown batch and sequence sizes, and so do the attention reshapes. One
run on seeded inputs, with symbolic dims set to small distinct sizes (2, 3, 5, ...: a size 1 would
look like broadcasting; 1 only for a model that runs at no other size, as inference assumes too),
gives every shape; the search only needs them consistent with each other. A model that does not run at
those sizes (a detector whose upsampled features must meet the skip connections) gets a second run at
multiples of 32.
"""

from __future__ import annotations

PROBE_SIZES = (2, 3, 5, 7, 11, 13)
# Then sizes a detector or U-Net takes (its strided stages and upsampled skips must line up): multiples of
# 32, still distinct; a batch dim stays 2 so the run stays small.
STRIDED_SIZES = tuple(32 * s for s in PROBE_SIZES)


def search_shapes(model, dims: dict | None = None) -> dict[str, tuple]:
    """infer_shapes(model, dims), replaced by probed shapes when inference leaves computed tensors unsized."""
    from onnxcomp.graph.shapes import infer_shapes

    shapes = infer_shapes(model, dims)
    computed = [o for n in model.graph.node for o in n.output if o]
    if all(shapes.get(name) is not None and None not in shapes[name] for name in computed):
        return shapes
    probed = probe_shapes(model, dims)
    if probed is None:
        probed = probe_shapes(model, {**_strided(_symbolic(model)), **(dims or {})})
    if probed is None and not dims:  # a model that only runs at size 1 (a batch baked into a view)
        probed = probe_shapes(model, {name: 1 for name in _symbolic(model)})
    return probed if probed is not None else shapes


def _strided(names: list[str]) -> dict[str, int]:
    sizes = {}
    for i, name in enumerate(names):
        sizes[name] = 2 if "batch" in name.lower() or name in ("N", "B") else STRIDED_SIZES[i % len(STRIDED_SIZES)]
    return sizes


def _symbolic(model) -> list[str]:
    from onnxcomp.graph.signature import input_specs

    return sorted({d for s in input_specs(model) for d in s.shape if isinstance(d, str)})


def probe_shapes(model, dims: dict | None = None) -> dict[str, tuple] | None:
    """Every value's shape from one ONNX Runtime run, or None when the model does not run that way."""
    import numpy as np

    from onnxcomp.graph.edit import copy_with_outputs
    from onnxcomp.measure.runtime import random_inputs, session

    symbolic = _symbolic(model)
    sizes = {**{name: PROBE_SIZES[i % len(PROBE_SIZES)] for i, name in enumerate(symbolic)}, **(dims or {})}
    outputs = {o.name for o in model.graph.output}
    names = [o for n in model.graph.node for o in n.output if o and o not in outputs]
    copy = copy_with_outputs(model, names)
    try:
        sess = session(copy)
        feeds = random_inputs(model, sizes, seed=0)
        values = sess.run(None, feeds)
    except Exception:  # noqa: BLE001 - a model that does not run at these sizes keeps the inferred shapes
        return None
    shapes = {o.name: tuple(np.shape(v)) for o, v in zip(sess.get_outputs(), values)}
    shapes.update({name: tuple(np.shape(v)) for name, v in feeds.items()})
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes
