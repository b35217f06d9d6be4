"""How an attention block sees the errors of its query, key and value projections (fitted there, not at their outputs).

A head's output is o_i = sum_j p_ij v_j with p_i = softmax(q_i . k_j). Linearized, the error each
projection leaves there is (e: the error of one projection's output, per head):

    query   o_i = A_i e_qi,        A_i = sum_j p_ij v_j k_j^T - vbar_i kbar_i^T   (the p_i-covariance of v and k)
    key     o_i = D_i dW_h q_i,    D_i = sum_j p_ij (v_j - vbar_i) x_j^T          (x: the keys' input rows)
    value   o_i = xbar_i dW_h,     xbar_i = sum_j p_ij x_j                         (the attention-mixed inputs)

and o then goes through the output projection W_o into its LayerNorm (metric S = W_o M W_o^T, M from
norms.py). Each is fitted with one input covariance and one output weight (factors.spectrum), the
expectations over rows taken apart (E[a b] ~ E[a] E[b]): the query keeps its inputs' covariance and gets
the output weight mean A^T S_h A per head; the key gets the input covariance mean D^T S_h D (the keys'
common part, which softmax ignores, drops out) and the output weight mean q q^T per head; the value gets
the mixed inputs' covariance and S. A padded key (p = 0) counts for nothing. Blocks are found in the
graph (score MatMul -> Softmax -> MatMul with the values) and checked on the data: a head layout other
than the usual [B, T, H, d] split of the channels leaves the block to the plain fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.measure.padding import mask_of
from onnxcomp.measure.samples import in_batches
from onnxcomp.passes.lowrank.layers import Layer
from onnxcomp.passes.lowrank.norms import seen_through

HOPS = 4  # elementwise nodes between a projection and the score MatMul, or between the scores and Softmax


@dataclass(frozen=True)
class Attention:
    q: str  # layer nodes
    k: str
    v: str
    o: str | None
    q_heads: str  # tensors: the score MatMul's inputs [B, H, T, d] and [B, H, d, T]
    k_heads: str
    probs: str  # [B, H, T, T]
    v_heads: str  # [B, H, T, d]


def find_attention(graph, layers: list[Layer]) -> list[Attention]:
    """The attention blocks whose query, key and value are factorizable layers."""
    by_output = {}
    for node in graph.nodes:
        key = node.name or node.outputs[0].name
        by_output[node.outputs[0].name] = key
    layers = [layer for layer in layers if layer.op != "Conv"]
    names = {layer.node for layer in layers}
    by_input, inputs = {}, {layer.node: layer.input for layer in layers}
    for layer in layers:
        by_input.setdefault(layer.input, []).append(layer.node)
    blocks = []
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2 or not all(_is_activation(t) for t in node.inputs):
            continue
        softmax = _forward(node.outputs[0], "Softmax")
        if softmax is None or len(softmax.outputs[0].outputs) != 1:
            continue
        pv = softmax.outputs[0].outputs[0]
        if pv.op != "MatMul" or pv.inputs[0] is not softmax.outputs[0]:
            continue
        q, k, v = (_back(t, by_output, names) for t in (node.inputs[0], node.inputs[1], pv.inputs[1]))
        if not (q and k and v) or len({q, k, v}) != 3 or inputs[k] != inputs[v]:
            continue
        o = _o_layer(pv.outputs[0], by_input)
        blocks.append(Attention(q, k, v, o, node.inputs[0].name, node.inputs[1].name, softmax.outputs[0].name,
                                pv.inputs[1].name))
    return blocks


def _is_activation(t) -> bool:
    import onnx_graphsurgeon as gs

    return not isinstance(t, gs.Constant) and bool(t.inputs)


def _forward(t, op: str):
    for _ in range(HOPS):
        if len(t.outputs) != 1:
            return None
        reader = t.outputs[0]
        if reader.op == op:
            return reader
        if reader.op not in ("Mul", "Div", "Add", "Where", "Cast"):
            return None
        t = reader.outputs[0]
    return None


def _back(t, by_output: dict, names: set) -> str | None:
    """The layer a head tensor comes from through Reshape/Transpose and constant Add/Mul/Div, or None."""
    import onnx_graphsurgeon as gs

    for _ in range(HOPS + 1):
        key = by_output.get(t.name)
        if key in names:
            return key
        if not t.inputs or len(t.outputs) != 1:
            return None
        prod = t.inputs[0]
        if prod.op in ("Reshape", "Transpose", "Identity"):
            t = prod.inputs[0]
        elif prod.op in ("Add", "Mul", "Div"):
            moving = [x for x in prod.inputs if not isinstance(x, gs.Constant)]
            if len(moving) != 1:
                return None
            t = moving[0]
        else:
            return None
    return None


def _o_layer(t, by_input: dict) -> str | None:
    for _ in range(HOPS):
        if t.name in by_input and len(by_input[t.name]) == 1:
            return by_input[t.name][0]
        if len(t.outputs) != 1 or t.outputs[0].op not in ("Transpose", "Reshape"):
            return None
        t = t.outputs[0].outputs[0]
    return None


def attention_fits(graph, blocks: list[Attention], layers: list[Layer], weights: dict, out_weights: dict,
                   data, batch: int = 32, mask: str | None = None) -> dict[str, tuple]:
    """{layer node: (input covariance or None to keep the layer's own, output weight)} for the
    query, key and value of every block whose head layout checks out on the data.
    `weights`: {layer node: W (m x n)}; `out_weights`: {layer node: the output weight its norm gives, or None};
    `mask`: the padding mask input (padded queries count for nothing, onnxcomp.measure.padding)."""
    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.edit import add_outputs
    from onnxcomp.measure.runtime import session

    by_node = {layer.node: layer for layer in layers}
    produced = {(n.name or n.outputs[0].name): n.outputs[0].name for n in graph.nodes}
    outputs = {key: produced[key] for b in blocks for key in (b.q, b.k, b.v)}
    names = sorted({n for b in blocks for n in (b.q_heads, b.k_heads, b.probs, b.v_heads, by_node[b.k].input)}
                   | set(outputs.values()))
    sess = session(add_outputs(to_model(graph), names))
    sums = in_batches(data, batch, lambda calls: _sums(sess, names, calls, blocks, outputs, by_node, weights,
                                                       out_weights, mask))
    fits = {}
    for b in blocks:
        s = sums[b.q]
        if not s.ok or s.rows == 0:
            continue
        fits[b.q] = (None, s.q_out / s.rows)
        fits[b.k] = (s.k_in / s.k_rows, s.k_out / s.rows)
        fits[b.v] = (s.v_in / s.rows, _value_metric(b, weights, out_weights, by_node[b.v].n))
    return fits


def _sums(sess, names, calls, blocks, outputs, by_node, weights, out_weights, mask) -> dict:
    from onnxcomp.measure.runtime import run

    sums = {b.q: _Sums() for b in blocks}
    for feeds in calls:
        values = run(sess, feeds, names)
        for b in blocks:
            if sums[b.q].ok:
                _accumulate(sums[b.q], b, values, outputs, by_node, weights, out_weights, _queries(feeds, mask))
    return sums


class _Sums:
    def __init__(self):
        self.ok, self.rows, self.k_rows = True, 0, 0
        self.q_out = self.k_out = self.k_in = self.v_in = 0.0
        self.metric = None


def _heads(values, name: str, keys_last: bool = False) -> np.ndarray:
    x = np.asarray(values[name], dtype=np.float64)
    return np.swapaxes(x, -1, -2) if keys_last else x  # [B, H, T, d]


def _layout_ok(heads: np.ndarray, out: np.ndarray) -> bool:
    """Do the head tensor's values follow the projection's output as channel h * d + j (up to a scale and a shift)?"""
    h, d = heads.shape[1], heads.shape[3]
    if out.shape[-1] != h * d or out.size != heads.size:
        return False
    z = np.transpose(heads, (0, 2, 1, 3)).reshape(-1, h * d)
    y = out.reshape(-1, h * d)
    z, y = z - z.mean(0), y - y.mean(0)
    scale = float(np.sum(z * y)) / max(float(np.sum(y * y)), 1e-30)
    return float(np.sum((z - scale * y) ** 2)) <= 1e-6 * max(float(np.sum(z * z)), 1e-30)


def _head_metric(b: Attention, weights: dict, out_weights: dict, h: int, d: int) -> np.ndarray:
    """S_h = W_o,h M W_o,h^T: how the output projection (and its norm) weighs head h's output (d x d)."""
    if b.o is None or weights[b.o].shape[0] != h * d:
        return np.broadcast_to(np.eye(d), (h, d, d))
    w = weights[b.o].reshape(h, d, -1)
    m = out_weights.get(b.o)
    return np.einsum("hdn,hen->hde", w, w) if m is None else np.einsum("hdn,nk,hek->hde", w, m, w, optimize=True)


def _queries(feeds: dict, mask: str | None) -> np.ndarray | None:
    """[batch, sequence] 0/1 weights of the query positions (the real tokens), or None."""
    m = mask_of(feeds, mask)
    return None if m is None else m.astype(np.float64)


def _accumulate(s: _Sums, b: Attention, values, outputs, by_node, weights, out_weights, queries=None) -> None:
    """`queries`: [batch, positions] 0/1 weights of the query positions (None: all count)."""
    q, k = _heads(values, b.q_heads), _heads(values, b.k_heads, keys_last=True)
    p, v = np.asarray(values[b.probs], dtype=np.float64), _heads(values, b.v_heads)
    if not (q.ndim == k.ndim == v.ndim == p.ndim == 4) or q.shape != k.shape or v.shape != q.shape \
            or not all(_layout_ok(x, np.asarray(values[outputs[key]])) for x, key in ((q, b.q), (k, b.k), (v, b.v))):
        s.ok = False
        return
    nb, h, t, d = q.shape
    real = nb * t
    if queries is not None and queries.shape == (nb, t):  # a padded query's row of p and q is left out
        p, q = p * queries[:, None, :, None], q * queries[:, None, :, None]
        real = float(queries.sum())
    x = np.asarray(values[by_node[b.k].input], dtype=np.float64).reshape(nb, t, -1)
    if s.metric is None:  # the same on every call
        s.metric = _head_metric(b, weights, out_weights, h, d)  # h, d, d
    metric = s.metric
    key_rows = np.zeros((nb, t, t))  # sum over heads of R: the key's input covariance is X^T R X
    mixing = np.zeros((nb, t, t))  # sum over heads of P^T P: the value's mixed inputs are P X
    for i in range(h):  # one head at a time
        ph, kh = p[:, i], k[:, i]
        rows = head_key_rows(ph, v[:, i], metric[i])
        s.q_out = s.q_out + _placed(np.einsum("bjd,bjk,bke->de", kh, rows, kh, optimize=True), i, h)  # sum A^T S A
        qh = q[:, i].reshape(-1, d)
        s.k_out = s.k_out + _placed(qh.T @ qh, i, h)
        key_rows += rows
        mixing += np.swapaxes(ph, 1, 2) @ ph
    s.k_in = s.k_in + np.einsum("btm,bts,bsn->mn", x, key_rows, x, optimize=True)
    s.v_in = s.v_in + np.einsum("btm,bts,bsn->mn", x, mixing, x, optimize=True) / h
    s.k_rows += real * h
    s.rows += real


def head_key_rows(p: np.ndarray, v: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """R[j, j'] = sum_i c_ij^T S c_ij', c_ij = p_ij (v_j - vbar_i), for one head ([B, T, T] from p [B, T, T],
    v [B, T, d], S [d, d]). A_i = sum_j c_ij k_j^T and D_i = sum_j c_ij x_j^T, so the query's sum of A^T S A
    is K^T R K and the key's of D^T S D is X^T R X. Expanded into T x T products (with G = V S V^T,
    B = V S Vbar^T, e_i = vbar_i S vbar_i^T), never the [B, T, T, d] tensor c itself."""
    pt = np.swapaxes(p, 1, 2)
    vs = v @ metric
    vbar = p @ v
    g = vs @ np.swapaxes(v, 1, 2)
    pb = p * (vbar @ np.swapaxes(vs, 1, 2))  # p_ij B_ji
    e = np.sum((vbar @ metric) * vbar, -1)
    return (pt @ p) * g - np.swapaxes(pb, 1, 2) @ p - pt @ pb + pt @ (e[..., None] * p)


def _placed(block: np.ndarray, i: int, h: int) -> np.ndarray:
    """Head i's d x d block inside an (h * d) x (h * d) zero matrix."""
    d = len(block)
    out = np.zeros((h * d, h * d))
    out[i * d:(i + 1) * d, i * d:(i + 1) * d] = block
    return out


def _value_metric(b: Attention, weights: dict, out_weights: dict, n: int) -> np.ndarray | None:
    if b.o is None or weights[b.o].shape[0] != n:
        return None
    return seen_through(weights[b.o], out_weights.get(b.o))
