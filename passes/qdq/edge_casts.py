"""Casts to UINT8 moved past the layout ops that follow them, towards the network's edge.

TensorRT has UINT8 only at a network's inputs and outputs (TRT-32): a model that casts its result
to UINT8 and then transposes or reshapes it is rejected as exported. Layout ops move elements
without changing them, so Cast -> Transpose equals Transpose -> Cast exactly.
"""

from __future__ import annotations

UINT8 = 2  # onnx.TensorProto.UINT8
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def move_casts_to_edge(graph) -> list[str]:
    """Swap each Cast to UINT8 with the single layout op reading it, repeatedly; one note per move."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.edit import NameGen, node_key

    names = NameGen(graph)
    outputs = {id(t) for t in graph.outputs}
    notes = []
    moved = True
    while moved:
        moved = False
        for cast in list(graph.nodes):
            if cast.op != "Cast" or int(cast.attrs.get("to", 0)) != UINT8 or not cast.outputs:
                continue
            a = cast.outputs[0]
            if len(a.outputs) != 1 or id(a) in outputs or a.outputs[0].op not in LAYOUT_OPS:
                continue
            layout = a.outputs[0]
            if layout.inputs[0] is not a or len(layout.outputs) != 1:
                continue
            x, b = cast.inputs[0], layout.outputs[0]
            moved_t = gs.Variable(names(f"{b.name}_before_cast"), dtype=x.dtype, shape=b.shape)
            layout.inputs[0] = x
            layout.outputs[0] = moved_t
            cast.inputs[0] = moved_t
            cast.outputs[0] = b
            nodes = [n for n in graph.nodes if n is not cast]
            nodes.insert(next(i for i, n in enumerate(nodes) if n is layout) + 1, cast)
            graph.nodes = nodes
            notes.append(f"{node_key(cast)}: Cast to UINT8 moved after {layout.op} {node_key(layout)} "
                         "(TensorRT has UINT8 only at the network's edge)")
            moved = True
    return notes
