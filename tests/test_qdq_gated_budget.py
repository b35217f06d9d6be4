"""insert-qdq's --max-drop on one gated session: the gated model answers as the built models do, and
the search builds only the candidates it picks, each answer a built model's own measurement."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.measure.compare import Fidelity
from onnxcomp.pipeline.budget import BudgetSearch

LOSSES = {f"u{i}": loss for i, loss in enumerate([0.4, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005])}


def additive(losses: dict, held) -> Fidelity:
    return Fidelity(1.0 - sum(v for u, v in losses.items() if u not in held), 0.0, None, None, None)


def search_with(max_drop: float, scale: float = 1.0, fixed: float | None = None):
    """A search whose built models lose the sum of their compressed units' losses, and whose estimate
    is that times `scale` (or the constant `fixed`)."""
    built = []

    def build(held):
        built.append(held)
        return held

    search = BudgetSearch("test", build, lambda held: additive(LOSSES, held), max_drop)

    def estimate(compressed):
        if fixed is not None:
            return Fidelity(1.0 - fixed, 0.0, None, None, None)
        loss = scale * sum(LOSSES[u] for u in compressed)
        return Fidelity(1.0 - loss, 0.0, None, None, None)

    return search, built, estimate


def first_fit(max_drop: float) -> list:
    order = sorted(LOSSES, key=LOSSES.get, reverse=True)
    return next(order[:k] for k in range(1, len(order)) if additive(LOSSES, order[:k]).drop <= max_drop)


def test_a_faithful_estimate_builds_only_the_whole_model_and_the_answer():
    search, built, estimate = search_with(0.07)
    result = search.hold_back_estimated(list(LOSSES), estimate)
    assert result.met and result.held_back == first_fit(0.07) == ["u0", "u1", "u2", "u3"]  # the rest lose 0.065
    assert result.trials == len(built) == 3  # all compressed, the chosen count, one fewer (over budget)
    assert result.estimates >= len(LOSSES)
    assert result.fidelity == additive(LOSSES, result.held_back)  # the answer is measured, not estimated


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_a_biased_estimate_is_corrected_by_the_built_models(scale):
    # 0.3: the estimate is optimistic (its first pick misses); 3.0: pessimistic (its first pick holds back too many)
    search, _, estimate = search_with(0.05, scale=scale)
    result = search.hold_back_estimated(list(LOSSES), estimate)
    assert result.met and result.held_back == first_fit(0.05)
    assert search.fits(result.fidelity) and result.fidelity == additive(LOSSES, result.held_back)
    assert 2 < result.trials <= 1 + 4 + 3  # all, at most `checks` picks, at most log2(n) bisections


def test_an_estimate_that_sees_no_difference_falls_back_to_bisecting_built_models():
    search, _, estimate = search_with(0.05, fixed=0.5)
    result = search.hold_back_estimated(list(LOSSES), estimate)
    assert result.met and result.held_back == first_fit(0.05)
    assert result.trials <= 1 + 1 + 3 + 1


def test_unmet_when_even_the_least_sensitive_unit_alone_is_over_budget():
    search, built, estimate = search_with(0.001)
    result = search.hold_back_estimated(list(LOSSES), estimate)
    assert not result.met and result.fidelity is None and result.order[-1] == "u7"
    assert frozenset(result.order[:-1]) in built  # that last resort was built and measured


# --- on models -------------------------------------------------------------------------------------


class Captured(Exception):
    pass


def pass_internals(monkeypatch, models_dir, name: str, calib: str, target: str):
    """What insert-qdq hands its max_drop search: (float model, build, layers, data, rewrite, plan_of)."""
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data
    from onnxcomp.passes.qdq import insert_qdq

    seen = {}

    def capture(float_model, build, layers, data, max_drop, rewrite=None, plan_of=None):
        seen.update(model=float_model, build=build, layers=layers, data=data, rewrite=rewrite, plan_of=plan_of)
        raise Captured

    model = load_model(models_dir / f"{name}.onnx")
    data = {k: v[:32] for k, v in load_data(models_dir / f"{calib}.npz", model).items()}
    base = onnxcomp.optimize(model, None, "cleanup,fold-bn", check_output=False).model
    monkeypatch.setattr(insert_qdq, "choose_float_layers", capture)
    with pytest.raises(Captured):
        onnxcomp.optimize(base, None, f"insert-qdq{{max_drop=1e-9,target={target}}}", data=data, check_output=False)
    return seen


def built_edges(seen, held) -> set:
    """The inputs (node, index) and graph outputs the real build with `held` float reads through a new DQ."""
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.graph.edit import node_key, producer

    graph = to_graph(seen["model"])
    keys = {id(n): node_key(n) for n in graph.nodes}
    seen["rewrite"](graph, frozenset(held))

    def lossy(t):
        made = producer(t)
        return made is not None and made.op == "DequantizeLinear" and id(made) not in keys

    edges = {(keys[id(n)], i) for n in graph.nodes if id(n) in keys for i, t in enumerate(n.inputs) if lossy(t)}
    return edges | {("", t.name) for t in graph.outputs if lossy(t)}


CASES = [("digits_cnn", "digits_calib", "ort"), ("digits_cnn", "digits_calib", "tensorrt"),
         ("transformer_block", "transformer_calib", "ort"), ("mlp", "mlp_calib", "ort")]


@pytest.mark.parametrize("name, calib, target", CASES)
def test_gated_model_turns_on_exactly_what_the_real_build_quantizes(monkeypatch, models_dir, name, calib, target):
    from onnxcomp.passes.qdq.sensitivity import GatedQdq

    seen = pass_internals(monkeypatch, models_dir, name, calib, target)
    probe = GatedQdq(seen["model"], seen["rewrite"], seen["plan_of"], seen["layers"], seen["data"])
    rng = np.random.default_rng(0)
    layers = seen["layers"]
    for held in [frozenset(), frozenset(layers[1:]), frozenset(layers[:-1])] + \
            [frozenset(u for u in layers if rng.random() < 0.5) for _ in range(4)]:
        edges = built_edges(seen, held)
        assert probe.lossy_edges(held) == edges, sorted(held)
        assert edges <= set(probe.index)  # every one of them has a gate


@pytest.mark.parametrize("name, calib, target", CASES)
def test_gated_drops_match_the_built_models(monkeypatch, models_dir, name, calib, target):
    from onnxcomp.measure.compare import fidelity, outputs_of
    from onnxcomp.passes.qdq.sensitivity import GatedQdq

    seen = pass_internals(monkeypatch, models_dir, name, calib, target)
    layers, data = seen["layers"], seen["data"]
    probe = GatedQdq(seen["model"], seen["rewrite"], seen["plan_of"], layers, data)
    reference = outputs_of(seen["model"], data)
    for key, value in reference.items():  # all gates 0: the float model
        np.testing.assert_allclose(probe.reference[key], value, rtol=1e-5, atol=1e-5)
    for held in [frozenset()] + [frozenset(layers) - {u} for u in layers[:4]]:
        real = 1.0 - fidelity(reference, outputs_of(seen["build"](held), data)).cosine  # (digits has labels:
        gated = 1.0 - probe.fidelity(set(layers) - held).cosine  # its drop is accuracy, 0 here)
        assert gated == pytest.approx(real, rel=0.1, abs=1e-7), (sorted(set(layers) - held), real, gated)


def test_max_drop_builds_far_fewer_models_than_layers_and_reports_a_measured_drop(models_dir):
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import LABELS, load_data

    cnn = load_model(models_dir / "digits_cnn.onnx")  # its labels left out: the budget is on 1 - cosine
    data = {k: v[:64] for k, v in load_data(models_dir / "digits_calib.npz", cnn).items() if k != LABELS}
    base = onnxcomp.optimize(cnn, None, "cleanup,fold-bn", check_output=False).model
    full = onnxcomp.optimize(base, None, "insert-qdq", data=data, check_output=False)
    drop_all = onnxcomp.measure.compare.measure(base, full.model, data).drop
    budget = drop_all / 4
    result = onnxcomp.optimize(base, None, f"insert-qdq{{max_drop={budget}}}", data=data, check_output=False)
    info = result.records[-1].report.details["insert-qdq"]["budget"]
    layers = len(info["sensitivity"])
    assert info["float_nodes"] and info["drop"] <= budget
    assert info["trials"] < layers and info["estimated_runs"] >= layers
    assert onnxcomp.measure.compare.measure(base, result.model, data).drop == pytest.approx(info["drop"], abs=1e-6)
