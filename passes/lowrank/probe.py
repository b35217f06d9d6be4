"""One session of a model whose chosen constant inputs are graph inputs: candidates are measured by feeding them.

Measuring each layer alone (sensitivity.py) or each refitted LayerNorm in turn (norm_refit.py) would
otherwise copy, rewrite and load the whole model once per candidate; on the real MiniLM (36 layers, 13
norms, 90 MB) that was most of the time of the pass. A factorized candidate is fed as the dense product
P Q of its factors, which the two-factor graph computes up to float rounding.
"""

from __future__ import annotations

import numpy as np


class Probe:
    """The model with the node inputs in `slots` ({(node key, input index): value}) fed, not constant."""

    def __init__(self, model, slots: dict[tuple[str, int], np.ndarray], outputs: list[str] = ()):
        import onnx

        from onnxcomp.graph.edit import add_outputs
        from onnxcomp.measure.runtime import session

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        taken = {t for n in copy.graph.node for t in list(n.input) + list(n.output)} | {
            i.name for i in copy.graph.input}
        nodes = {(n.name or n.output[0]): n for n in copy.graph.node}
        self.names, self.values = {}, {}
        for (node, index), value in slots.items():
            name = f"{node}/probe_{index}"
            while name in taken:
                name += "_"
            taken.add(name)
            value = np.ascontiguousarray(value)
            nodes[node].input[index] = name
            copy.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
            self.names[node, index], self.values[name] = name, value
        self.session = session(add_outputs(copy, list(outputs)))

    def set(self, slot: tuple[str, int], value: np.ndarray) -> None:
        """Feed `value` at `slot` from now on."""
        name = self.names[slot]
        self.values[name] = np.ascontiguousarray(value, dtype=self.values[name].dtype)

    def run(self, feeds: dict, replaced: dict | None = None, outputs: list[str] | None = None) -> list[np.ndarray]:
        """The outputs (the model's, or `outputs`) on `feeds`, with {slot: value} put in for this run only."""
        values = dict(self.values)
        for slot, value in (replaced or {}).items():
            name = self.names[slot]
            values[name] = np.ascontiguousarray(value, dtype=self.values[name].dtype)
        from onnxcomp.measure.runtime import run

        return list(run(self.session, dict(feeds) | values, outputs).values())  # a failure: one line (InputError)
