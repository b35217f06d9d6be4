"""What the pruned channels' readers see on the sample data, gathered once for everything that asks.

Data-aware importance wants E[x_p^2] per channel position of the readers' inputs (activation_importance),
the reader refit wants E[x x^T] of the same inputs (reader_refit), and a budget search with refit wants
those moments for every trial. All are of the model before pruning, which does not change: asked for
together, one run over the data gives both (the energy is the moments' diagonal), and what was gathered
is not gathered again. Rows are the last axis' vectors, the real tokens' only where the data pads
(onnxcomp.measure.padding); a Conv input's channels are its axis 1, every position counted.
"""

from __future__ import annotations

import numpy as np


class ReaderInputs:
    """E[x x^T] and E[x_p^2] of tensors of `model` (the ModelProto before pruning) over `data` (Samples)."""

    def __init__(self, model, data, mask: str | None = None, batch: int = 32):
        self.model, self.data, self.mask, self.batch = model, data, mask, batch
        self._moments: dict[str, np.ndarray] = {}
        self._energy: dict[str, np.ndarray] = {}  # measured alone (no moments asked for)

    def moments(self, names) -> dict[str, np.ndarray]:
        """{tensor: E[x x^T] over the rows of its last axis} for `names`."""
        self.gather(moments=names)
        return {name: self._moments[name] for name in names if name in self._moments}

    def energy(self, names, conv_inputs=frozenset()) -> dict[str, np.ndarray]:
        """{tensor: E[x_p^2] per channel position} for `names` (a Conv input's positions: axis 1)."""
        self.gather(energy=names, conv_inputs=conv_inputs)
        return {name: self._energy[name] if name in conv_inputs or name not in self._moments
                else np.diag(self._moments[name]).copy() for name in names
                if name in self._energy or name in self._moments}

    def gather(self, moments=(), energy=(), conv_inputs=frozenset()) -> None:
        """One run over the data for the moments and energies not gathered yet (an energy beside its
        moments is their diagonal)."""
        from onnxcomp.measure.samples import in_batches

        full = [n for n in dict.fromkeys(moments) if n not in self._moments]
        alone = [n for n in dict.fromkeys(energy) if n not in self._energy
                 and (n in conv_inputs or (n not in self._moments and n not in full))]
        if full or alone:
            found = in_batches(self.data, self.batch, lambda calls: self._run(full, alone, set(conv_inputs), calls))
            self._moments.update(found[0])
            self._energy.update(found[1])

    def _run(self, full: list[str], alone: list[str], conv_inputs: set, calls) -> tuple[dict, dict]:
        from onnxcomp.graph.edit import copy_with_outputs
        from onnxcomp.measure.padding import kept_rows, sequence_tensors
        from onnxcomp.measure.runtime import run, session

        names = sorted(set(full) | set(alone))
        sess = session(copy_with_outputs(self.model, names))
        along = sequence_tensors(self.model, names, self.mask)
        squares, products, rows = {}, {}, {}
        for feeds in calls:
            values = run(sess, feeds, names)
            for name in full:
                flat = kept_rows(np.asarray(values[name], dtype=np.float64), feeds, self.mask, name in along)
                products[name] = products.get(name, 0.0) + flat.T @ flat
                rows[name, 0] = rows.get((name, 0), 0) + len(flat)
            for name in alone:
                x = np.asarray(values[name], dtype=np.float64)
                if name in conv_inputs:  # channels on axis 1, every position counted
                    x = np.moveaxis(x, 1, -1) if x.ndim >= 3 else x
                    flat = x.reshape(-1, x.shape[-1])
                else:
                    flat = kept_rows(x, feeds, self.mask, name in along)
                squares[name] = squares.get(name, 0.0) + np.sum(flat ** 2, axis=0)
                rows[name, 1] = rows.get((name, 1), 0) + len(flat)
        return ({name: s / max(rows[name, 0], 1) for name, s in products.items()},
                {name: s / max(rows[name, 1], 1) for name, s in squares.items()})
