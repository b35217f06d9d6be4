"""The trainer on the device it is given: the CPU bit for bit as before, and placement proven on "meta".

This host has no GPU. A meta tensor has a shape and a device but no values. CUDA refuses a CPU tensor
of any size in its ops; meta refuses one only in elementwise ops (a matmul or index_select takes it),
so a training run on "meta" fails at some places the trainer forgets to move a tensor, and the devices
each op saw (_mixed) show the rest. A dispatch mode (MetaStandIn) answers the few value reads (a loss
as a float, a copy back to the CPU) with zeros, so the whole fit runs, and records the device of every
op so the test can check that all the computing happened on the device.
"""

from collections import Counter

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from onnxcomp.distill import DistillOptions, checkpoint
from onnxcomp.distill.onnx_to_torch import OnnxModule
from onnxcomp.distill.teacher import Targets
from onnxcomp.distill.trainer import Trainer, seed_all

aten = torch.ops.aten
CPU = torch.device("cpu")
# Ops the trainer may run on the CPU on purpose: the seeded shuffle, the labels gathered per batch before
# the move, the zero masks found before the move, the final load of the best weights, and the moves.
CPU_ON_PURPOSE = {"randperm", "index", "eq", "any", "ne", "sum", "copy_", "_to_copy", "lift_fresh", "detach",
                  "alias", "view", "clone"}


class MetaStandIn(TorchDispatchMode):
    """Meta tensors have no values: reading one (item) or copying it to the CPU gives zeros. Counts
    every op from the first shuffle on by the devices of its tensors (of rank >= 1: a 0-d CPU scalar
    may join any device's op). Before it is the setup, on the CPU by design: the adapters' seeded
    initialisation and the probe through the student that sizes them."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()
        self.training = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func is aten._local_scalar_dense.default and first.is_meta:
            return False if first.dtype == torch.bool else 0.0 if first.is_floating_point() else 0
        if func is aten._to_copy.default and first.is_meta and kwargs.get("device") == CPU:
            return torch.zeros(first.shape, dtype=kwargs.get("dtype") or first.dtype)
        out = func(*args, **kwargs)
        self.training = self.training or func is aten.randperm.generator
        if not self.training:
            return out
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor) and t.dim()}
        self.ops[(func.__name__.split(".")[0], tuple(sorted(devices)))] += 1
        return out


def _mixed(mode) -> set:
    """Ops that met CPU and meta tensors (of rank >= 1), besides the moves themselves: meta refuses that
    only in elementwise ops (a matmul or index_select takes a CPU operand), CUDA in every op."""
    return {op for (op, devices), _ in mode.ops.items()
            if devices == ("cpu", "meta") and op not in ("_to_copy", "copy_")}


def _case(models_dir, n=32, features=False):
    """The MLP as an interpreted student (or a small torch student with a feature adapter) and cached targets."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    labels = rng.integers(0, 10, n).astype(np.int64)
    if features:
        student = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
        feats = {"t": rng.standard_normal((n, 20)).astype(np.float32)}  # wider than the student's 12
    else:
        student, feats = OnnxModule(onnx.load(models_dir / "mlp.onnx")), {}
    targets = Targets([rng.standard_normal((n, 10)).astype(np.float32)], feats, 0.0, "computed")
    return student, {"input": x}, targets, labels


def _options(**extra):
    return DistillOptions(**{"epochs": 2, "batch_size": 16, "lr": 0.01, "threads": 1, **extra})


def _fit(student, train, targets, labels, options, val=True, **trainer_kw):
    seed_all(options.seed, options.threads)
    trainer = Trainer(student, ["input"], options, **trainer_kw)
    if not val:
        return trainer.fit(train, targets, labels)
    v = {"input": train["input"][:8]}
    return trainer.fit(train, targets, labels, v, Targets([targets.outputs[0][:8]], {}, 0.0, "computed"), labels[:8])


def _no_seconds(history):
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


@pytest.mark.parametrize("features", [False, True])
def test_cpu_given_explicitly_trains_bit_for_bit_like_the_default(models_dir, features):
    runs = []
    for device in (None, "cpu", CPU):
        seed_all(0, 1)
        student, train, targets, labels = _case(models_dir, features=features)
        options = _options(features=(("t", "0"),) if features else (), feature_weight=0.5)
        result = _fit(student, train, targets, labels, options, device=device)
        runs.append((_no_seconds(result.history), student.state_dict()))
    (history, weights), *others = runs
    assert len(history) == 2 and history[0]["loss"] != history[1]["loss"]  # it trained
    for other_history, other_weights in others:
        assert other_history == history
        assert all(torch.equal(weights[k], other_weights[k]) for k in weights)


@pytest.mark.parametrize("features", [False, True])
def test_every_tensor_a_step_computes_is_on_the_trainer_device(models_dir, tmp_path, features):
    student, train, targets, labels = _case(models_dir, features=features)
    seen = []
    options = _options(checkpoint_dir=str(tmp_path), features=(("t", "0"),) if features else (), feature_weight=0.5)
    trainer_kw = {"device": "meta", "progress": lambda line: seen.append(
        {t.device.type for t in list(student.parameters()) + list(student.buffers())})}
    mode = MetaStandIn()
    with mode:
        _fit(student, train, targets, labels, options, val=False, **trainer_kw)
    assert seen == [{"meta"}, {"meta"}]  # during training, every weight and buffer is on the device
    on_cpu = {op for (op, devices), _ in mode.ops.items() if devices == ("cpu",)}
    assert on_cpu <= CPU_ON_PURPOSE, sorted(on_cpu - CPU_ON_PURPOSE)
    assert not _mixed(mode), _mixed(mode)
    on_meta = {op for (op, devices), _ in mode.ops.items() if "meta" in devices}
    assert {"_log_softmax", "nll_loss_forward", "threshold_backward"} <= on_meta  # forward, loss, backward
    assert "addcdiv_" in on_meta  # the AdamW step
    # Afterwards the student is back on the CPU (write-back and export read it there), constants too.
    assert {t.device.type for t in list(student.parameters()) + list(student.buffers())} == {"cpu"}
    if isinstance(student, OnnxModule):
        assert {t.device.type for t in student.consts.values()} <= {"cpu"}
    saved = torch.load(checkpoint.state_path(tmp_path), weights_only=True)  # no map_location: as written
    assert {t.device.type for t in tree_leaves(saved) if isinstance(t, torch.Tensor)} == {"cpu"}


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # a meta weight keeps no value
def test_a_checkpoint_from_one_device_resumes_on_the_other(models_dir, tmp_path):
    student, train, targets, labels = _case(models_dir)
    options = _options(epochs=3, checkpoint_dir=str(tmp_path))

    def stop_after(epoch):
        def progress(line):
            if line.startswith(f"epoch {epoch}/"):
                raise KeyboardInterrupt
        return progress
    with MetaStandIn(), pytest.raises(KeyboardInterrupt):  # written on the device after epoch 1 ...
        _fit(student, train, targets, labels, options, val=False, device="meta", progress=stop_after(1))
    lines = []
    with pytest.raises(KeyboardInterrupt):  # ... continued on the CPU, which writes epoch 2 ...
        _fit(student, train, targets, labels, _options(epochs=3, checkpoint_dir=str(tmp_path), resume=True),
             val=False, device="cpu", progress=lambda line: (lines.append(line), stop_after(2)(line)))
    assert lines[0].startswith("resuming after epoch 1")
    assert {p.device.type for p in student.parameters()} == {"cpu"}  # back on the CPU, even when stopped
    with MetaStandIn():  # ... and the device finishes the run
        done = _fit(student, train, targets, labels, _options(epochs=3, checkpoint_dir=str(tmp_path), resume=True),
                    val=False, device="meta")
    assert [r["epoch"] for r in done.history] == [1, 2, 3]


def test_cuda_without_a_gpu_is_one_line_from_the_trainer(models_dir, monkeypatch):
    from onnxcomp.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    student, *_ = _case(models_dir)
    with pytest.raises(InputError, match="no CUDA device"):
        Trainer(student, ["input"], _options(device="cuda"))


@pytest.mark.parametrize("name", ["transformer_block", "minilm"])
def test_an_interpreted_graph_with_shape_arithmetic_trains_on_the_device(models_dir, name):
    """Shape, Range and Constant make CPU tensors inside the graph (a BERT attention mask from a Range):
    where they meet the device's tensors they join them, and shapes stay CPU numbers."""
    from onnxcomp.distill.trainer import place
    from onnxcomp.graph.signature import input_specs

    path = models_dir / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"build/models/{name}.onnx is built with the bench extra")
    model = onnx.load(path)
    student = OnnxModule(model)
    feeds = []
    for spec in input_specs(model):
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in spec.shape]
        feeds.append(torch.ones(shape, dtype=torch.int64) if "int" in str(spec.dtype) else torch.randn(shape))
    place(student, torch.nn.Module(), torch.device("meta"))
    mode = MetaStandIn()
    mode.training = True  # count every op of the forward and backward
    with mode:
        outputs = student(*[f.to("meta") for f in feeds])
        sum(o.float().sum() for o in outputs).backward()
    assert {o.device.type for o in outputs} == {"meta"}
    assert not _mixed(mode), _mixed(mode)
    grads = [p.grad for p in student.parameters()]
    assert grads and all(g is not None and g.is_meta for g in grads)


def test_distill_trains_where_placement_puts_it_and_writes_cpu_weights(models_dir, monkeypatch):
    """onnxcomp.distill with device "cuda" no longer stops in api.run: the trainer takes the device that
    distributed.placement chooses (here "meta" stands in for cuda:0) and the model is written from CPU copies."""
    import onnxcomp
    from onnxcomp.distill import distributed

    chosen = []

    def placement(world, device="cpu", cuda_devices=None):
        chosen.append(device)
        return distributed.Placement("meta", distributed.NCCL) if device == "cuda" else distributed.ON_CPU
    monkeypatch.setattr(distributed, "placement", placement)
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((32, 64)).astype(np.float32), "labels": rng.integers(0, 10, 32)}
    mode = MetaStandIn()
    with mode:
        result = onnxcomp.distill(models_dir / "mlp.onnx", models_dir / "mlp.onnx", data,
                                  _options(epochs=1, device="cuda"))
    assert "cuda" in chosen and ("addcdiv_", ("meta",)) in mode.ops  # the AdamW step ran on the device
    assert {t.device.type for t in result.student_module.state_dict().values()} == {"cpu"}
    assert len(result.model.graph.initializer) == len(onnx.load(models_dir / "mlp.onnx").graph.initializer)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_ops_that_read_shapes_or_build_indices_run_on_the_device(mode):
    """Pad builds its reflect/edge source positions itself, and ReduceMax/ReduceMin and Clip read their
    axes and bounds as numbers: on the device the positions follow the data and the numbers stay CPU
    values (a meta tensor read as a number would give 0: the wrong axis)."""
    from onnx import TensorProto, helper, numpy_helper

    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"], mode=mode),
         helper.make_node("Clip", ["p", "low", "high"], ["c"]),
         helper.make_node("ReduceMax", ["c", "axes"], ["hi"], keepdims=0),
         helper.make_node("ReduceMin", ["c", "axes"], ["lo"], keepdims=0),
         helper.make_node("Sub", ["hi", "lo"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [ints("pads", [0, 0, 1, 0, 0, 2]), ints("axes", [2]),
         numpy_helper.from_array(np.array(-0.5, np.float32), "low"),
         numpy_helper.from_array(np.array(0.5, np.float32), "high")])
    student = OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    x = torch.randn(2, 3, 4)
    expected = student(x)[0]
    assert expected.shape == (2, 3)
    mode = MetaStandIn()
    mode.training = True  # count every op of the forward
    with mode:
        (got,) = student(x.to("meta"))
    assert got.is_meta and got.shape == expected.shape
    assert not _mixed(mode), _mixed(mode)  # as CUDA, which refuses a CPU index into its tensor
