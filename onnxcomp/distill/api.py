"""`onnxcomp.distill(teacher, student, data, options) -> DistillResult`: the whole sidecar in one call.

teacher: an .onnx path or ModelProto (run by ONNX Runtime), a torch module, or a factory spec
  (`file.py:fn`, `module:fn`) with optional `teacher_weights` (a state_dict file).
student: an .onnx path or ModelProto (fine-tuned through the interpreter, weights written back into
  the same graph), or a torch module / factory (trained, then exported to ONNX).
data, val_data: an .npz path or a dict of arrays (one per model input, first axis = samples,
  optional `labels`), or any source onnxcomp.measure.samples.as_samples takes (FILE.py:FUNCTION,
  feed dicts, ...) whose calls stack into that layout: training draws its own batches, so data
  for a fixed batch or with per-call constants (RNN state) is refused with one line.

The result holds the output ModelProto (not yet saved: `onnxcomp.save(result.model, path)`), the
per-epoch history, the best epoch, timings, and the final accuracy measured on the written ONNX
model under ONNX Runtime, next to the teacher's.

Under torchrun (WORLD_SIZE > 1, onnxcomp.distill.distributed) every rank trains on its shard and
gets a result, but only rank 0's holds the model (the others' `model` is None).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcomp.distill.options import DistillOptions
from onnxcomp.errors import InputError, require
from onnxcomp.measure.data import LABELS, take, validate
from onnxcomp.progress import logger, say_to


@dataclass
class DistillResult:
    model: onnx.ModelProto
    mode: str  # "onnx-student" (fine-tuned, written back) or "torch-student" (trained, exported)
    options: DistillOptions
    history: list
    metric: str
    best_epoch: int
    seconds: float
    seconds_per_epoch: float
    teacher: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    student_module: object = None
    processes: int = 1

    def as_dict(self) -> dict:
        return {"mode": self.mode, "options": self.options.as_dict(), "metric": self.metric,
                "best_epoch": self.best_epoch, "seconds": self.seconds,
                "seconds_per_epoch": self.seconds_per_epoch, "teacher": self.teacher, "final": self.final,
                "epochs": self.history, "processes": self.processes}


def _data(value, model: onnx.ModelProto | None, where: str) -> dict[str, np.ndarray] | None:
    """Sample data in the stacked layout the trainer draws batches from (checked against `model`)."""
    from onnxcomp.measure.samples import as_samples

    if value is None:
        return None
    if isinstance(value, dict) and model is None:
        return {k: np.asarray(v) for k, v in value.items()}
    samples = as_samples(value, model, where)
    stacked = samples.stacked()
    if stacked is None:
        raise InputError(f"{where}: distillation trains on samples stacked along a dynamic axis 0 and draws its own "
                         f"batches; this data ({samples.describe()}) does not stack that way (a fixed batch, "
                         "per-call constants such as RNN state, or shapes that differ between calls)")
    return stacked


def _check_inputs(data: dict, names: list[str], where: str, models: list[onnx.ModelProto]) -> None:
    for model in models:
        validate(data, model, where)
    missing = [n for n in names if n not in data]
    if missing:
        raise InputError(f"{where}: missing array(s) for model input(s) {', '.join(missing)}; "
                         f"found keys {', '.join(sorted(data)) or 'none'}")
    if LABELS in data and data[LABELS].dtype.kind not in "iu":
        raise InputError(f"{where}: 'labels' must be integer class indices, got dtype {data[LABELS].dtype}")


def _shapes_match(teacher_outs, student_outs) -> None:
    if len(student_outs) != len(teacher_outs):
        raise InputError(f"the student has {len(student_outs)} output(s), the teacher {len(teacher_outs)}")
    for i, (t, s) in enumerate(zip(teacher_outs, student_outs)):
        if tuple(t.shape) != tuple(s.shape):
            raise InputError(f"output {i}: student output shape {list(s.shape)} does not match the teacher's "
                             f"{list(t.shape)}")


def run(teacher, student, data, options: DistillOptions | None = None, *, val_data=None,
        teacher_weights=None, student_weights=None, progress=None, world=None) -> DistillResult:
    """Distill `student` from `teacher` on `data`; see the module docstring.

    Progress lines go to the `onnxcomp` logger, or to `progress(line)` when that is given (rank 0 only).
    world: a distributed.World; default the one torchrun's environment describes (or one process).
    """
    require("torch", feature="distillation", extra="torch")
    from onnxcomp.distill import distributed

    world = distributed.from_env() if world is None else world
    started = world.distributed and not _initialized()
    where = distributed.placement(world, (options or DistillOptions()).device)  # gloo on CPU, NCCL on CUDA
    distributed.start(world, where)
    try:
        return _run(teacher, student, data, options, val_data, teacher_weights, student_weights,
                    progress if world.main else (lambda line: None), world, where.device)
    finally:
        if started:
            distributed.stop(world)


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _run(teacher, student, data, options, val_data, teacher_weights, student_weights, progress, world, device):
    import torch

    from onnxcomp.distill import distributed
    from onnxcomp.distill.freeze import freeze, frozen_initializers
    from onnxcomp.distill.loading import is_onnx_spec, load_onnx, load_torch_module
    from onnxcomp.distill.onnx_to_torch import OnnxModule
    from onnxcomp.distill.renorm import renormalize
    from onnxcomp.distill.teacher import (
        LiveTargets,
        OnnxTeacher,
        TorchTeacher,
        teacher_targets,
    )
    from onnxcomp.distill.trainer import Trainer, predict, seed_all
    from onnxcomp.distill.writeback import dynamic_axes_like, export_student, write_back
    from onnxcomp.graph.signature import input_specs

    options = options or DistillOptions()
    say = say_to(progress)
    start = time.perf_counter()
    threads = distributed.threads_per_process(world, options.threads)
    seed_all(options.seed, threads)

    teacher_model = load_onnx(teacher) if is_onnx_spec(teacher) else None
    student_model = load_onnx(student) if is_onnx_spec(student) else None
    spec_model = teacher_model if teacher_model is not None else student_model
    train = _data(data, spec_model, "data")
    val = _data(val_data, spec_model, "val")
    total = len(next(iter(train.values()))) if train else 0
    distributed.check_same(world, {"training data": total,
                                   "validation data": 0 if not val else len(next(iter(val.values())))})
    if world.distributed:  # this rank's shard; only rank 0 validates
        train = take_rows(train, distributed.shard(world, total, options.seed))
        val = val if world.main else None
    if student_model is not None:
        module = OnnxModule(student_model, "student")
    else:
        module = load_torch_module(student, "student", student_weights)
    if teacher_model is not None:
        input_names = [s.name for s in input_specs(teacher_model)]
    elif student_model is not None:
        input_names = list(module.input_names)
    else:
        input_names = [k for k in train if k != LABELS]
    onnx_models = [m for m in (teacher_model, student_model) if m is not None]
    _check_inputs(train, input_names, "data", onnx_models)
    if options.mask is not None and (options.mask not in input_names or np.ndim(train[options.mask]) != 2):
        raise InputError(f"mask {options.mask!r}: expected a [batch, seq] model input, one of {', '.join(input_names)}")
    if options.augment:
        train = _augmented(train, onnx_models, options)
    if val is not None:
        _check_inputs(val, input_names, "val", onnx_models)
    if student_model is not None and module.input_names != input_names:
        raise InputError(f"the student's inputs ({', '.join(module.input_names)}) differ from the teacher's "
                         f"({', '.join(input_names)})")

    if options.freeze != "none":
        if student_model is None:
            raise InputError(f"freeze {options.freeze}: only for an ONNX student (a torch student freezes its own)")
        frozen = freeze(module, frozen_initializers(student_model, teacher_model, options.freeze))
        if not any(p.requires_grad for p in module.parameters()):
            raise InputError(f"freeze {options.freeze}: every weight of the student would stay fixed; nothing to train")
        say(f"freeze {options.freeze}: {frozen} weight tensor(s) kept fixed")

    t_features = [p[0] for p in options.features]
    attention, value_names = _attention_names(teacher_model, student_model, options)
    t_features += [name for name in attention + value_names if name not in t_features]
    if teacher_model is not None:
        teacher_runner = OnnxTeacher(teacher_model, t_features, threads)
    else:
        teacher_runner = TorchTeacher(load_torch_module(teacher, "teacher", teacher_weights), input_names, t_features)

    # Probe two samples through both: output counts and shapes must agree before any training.
    probe = {k: train[k][:2] for k in input_names}
    t_probe, _ = teacher_runner(probe)
    s_probe = predict(module, [probe[k] for k in input_names])
    _shapes_match(t_probe, s_probe)
    if attention or value_names:
        attention = _same_shape(attention, teacher_runner, module, probe, input_names, say, "Softmax output")
        value_names = _same_shape(value_names, teacher_runner, module, probe, input_names, say, "value tensor")
        teacher_runner.features = [p[0] for p in options.features] + [
            n for n in attention + value_names if n not in {p[0] for p in options.features}]

    labels = train.get(LABELS)
    val_labels = None if val is None else val.get(LABELS)
    classes = t_probe[0].shape[1] if t_probe[0].ndim == 2 else None
    for where, values in (("data", labels), ("val", val_labels)):
        if values is not None and classes is not None and len(values) and (values.min() < 0 or values.max() >= classes):
            raise InputError(f"{where}: 'labels' range over [{values.min()}, {values.max()}] but the teacher "
                             f"has {classes} classes")
    renormalized = None
    if student_model is not None and options.renorm and options.bn == "train":
        renormalized = renormalize(student_model, module, {k: train[k] for k in input_names}, teacher_model)
        if renormalized is not None:
            module = OnnxModule(renormalized.model, "student")
            restored = sum(layer.restored for layer in renormalized.layers)
            say(f"student has no BatchNormalization: training {len(renormalized.layers)} layers with one "
                f"({restored} the teacher's), folded back when written")
    need_teacher = not (labels is not None and options.alpha == 0.0 and not options.features and not attention
                         and not value_names)
    logger.debug("teacher: %s, student: %s, inputs %s, %s", teacher_runner.kind,
                 "onnx" if student_model is not None else "torch", ", ".join(input_names),
                 "soft targets" if need_teacher else "labels only")
    train_inputs = {k: train[k] for k in input_names}
    if not need_teacher:
        targets = None
    elif options.cache == "none":
        targets = LiveTargets(teacher_runner, train_inputs)
    else:
        say(f"teacher: computing targets for {len(train_inputs[input_names[0]])} samples once "
            f"({options.cache} cache)")
        targets = teacher_targets(teacher_runner, train_inputs, options.cache, options.cache_dir)
    val_targets = None
    if val is not None:
        val_targets = teacher_targets(teacher_runner, {k: val[k] for k in input_names}, "memory")
    teacher_info = {"kind": teacher_runner.kind, "cache": options.cache if need_teacher else "unused",
                    "targets_seconds": getattr(targets, "seconds", 0.0) if options.cache != "none" else 0.0,
                    "targets_source": getattr(targets, "source", None), "cache_path": getattr(targets, "path", None)}
    if val_targets is not None and val_labels is not None and val_targets.outputs[0].ndim == 2:
        teacher_info["val_accuracy"] = float(np.mean(val_targets.outputs[0].argmax(1) == val_labels))

    torch.manual_seed(options.seed)
    trainer = Trainer(module, input_names, options, progress=progress, world=world, device=device,
                      attention=attention, values=value_names)
    trained = trainer.fit(train, targets, labels, val, val_targets, val_labels)
    teacher_info["seconds_in_training"] = trained.teacher_seconds_in_training
    epoch_seconds = [row["seconds"] for row in trained.history]
    if not world.main:  # rank 0 writes the model
        return DistillResult(None, "onnx-student" if student_model is not None else "torch-student", options,
                             trained.history, trained.metric, trained.best_epoch, time.perf_counter() - start,
                             float(np.mean(epoch_seconds)) if epoch_seconds else 0.0, teacher_info, {}, module,
                             world.size)

    say("writing the trained weights back into the student graph" if student_model is not None
        else f"exporting the student to ONNX (opset {options.opset})")
    if student_model is not None:
        mode = "onnx-student"
        if renormalized is None:
            out_model = write_back(student_model, module, options.keep_zeros)
        else:
            out_model = renormalized.fold_back(write_back(renormalized.model, module, options.keep_zeros),
                                               student_model)
    else:
        mode = "torch-student"
        output_names = list(teacher_runner.output_names or [f"output_{i}" for i in range(len(t_probe))])
        example = [torch.from_numpy(np.ascontiguousarray(probe[k])) for k in input_names]
        out_model = export_student(module, example, input_names, output_names,
                                   dynamic_axes_like(teacher_model, input_names, output_names), options.opset)
    final = _final_check(out_model, module, input_names, val if val is not None else train,
                         val_targets, threads, options.batch_size)
    final["data"] = "val" if val is not None else "train"
    final["masked_tensors"] = trained.masked_tensors
    final["masked_zeros"] = trained.masked_zeros
    final["renormalized"] = 0 if renormalized is None else len(renormalized.layers)
    seconds = time.perf_counter() - start
    return DistillResult(out_model, mode, options, trained.history, trained.metric, trained.best_epoch, seconds,
                         float(np.mean(epoch_seconds)) if epoch_seconds else 0.0, teacher_info, final, module,
                         world.size)


def _attention_names(teacher_model, student_model, options: DistillOptions) -> tuple[list[str], list[str]]:
    """(Softmax outputs to match with attention_weight, value tensors to relate with value_weight): empty without
    those weights; both models must be ONNX."""
    if options.attention_weight <= 0 and options.value_weight <= 0:
        return [], []
    which = "attention_weight" if options.attention_weight > 0 else "value_weight"
    if teacher_model is None or student_model is None:
        raise InputError(f"{which}: finds the attention distributions by graph; give an ONNX teacher and "
                         "student (or name probability tensors with features=(teacher, student, 'kl'))")
    from onnxcomp.distill.attention import shared_softmax_outputs, shared_values

    names = shared_softmax_outputs(teacher_model, student_model)
    if not names:
        raise InputError(f"{which}: the teacher and the student share no Softmax output over the last "
                         "axis (by tensor name); nothing to match")
    values = shared_values(teacher_model, student_model, names) if options.value_weight > 0 else []
    if options.value_weight > 0 and not values:
        raise InputError("value_weight: no MatMul reads a shared Softmax output with the same value tensor in "
                         "both graphs; nothing to relate")
    return (names if options.attention_weight > 0 else []), values


def _same_shape(names: list[str], teacher_runner, module, probe: dict, input_names: list[str], say,
                what: str) -> list[str]:
    """The names whose tensors have one shape in teacher and student on the probe batch; the others (a student
    with fewer heads) are left out with one line."""
    import torch

    if not names:
        return []

    from onnxcomp.distill.taps import Tapped

    _, t_feats = teacher_runner(probe)
    module.eval()
    with torch.no_grad():
        _, s_feats = Tapped(module, names, "student")([torch.from_numpy(np.ascontiguousarray(probe[k]))
                                                       for k in input_names])
    kept = [n for n in names if tuple(t_feats[n].shape) == tuple(s_feats[n].shape)]
    if len(kept) < len(names):
        first = next(n for n in names if n not in kept)
        say(f"attention: {len(names) - len(kept)} of {len(names)} {what}(s) differ in shape between teacher "
            f"and student (e.g. {first}: {list(t_feats[first].shape)} against {list(s_feats[first].shape)}); "
            + ("matching the others" if kept else f"no {what} matched"))
    else:
        say(f"attention: matching {len(kept)} {what}(s) by KL")
    return kept


def _augmented(train: dict, models: list[onnx.ModelProto], options: DistillOptions) -> dict:
    """The training samples plus `options.augment` copies with random tokens (tokens.py)."""
    from onnxcomp.distill.tokens import augmented
    from onnxcomp.graph.signature import index_limits

    vocab = {}
    for model in models:
        for name, size in index_limits(model).items():
            vocab[name] = min(size, vocab.get(name, size))  # ids both models can look up
    if not vocab:
        raise InputError("augment: no token-id input (an integer input indexing an embedding table) in "
                         + ("the ONNX models" if models else "a torch teacher and student (give an ONNX one)"))
    return augmented(train, vocab, options.augment, options.augment_fraction, options.mask, options.seed)


def take_rows(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The samples at `index` of every array (inputs and labels alike)."""
    return {k: np.asarray(v)[index] for k, v in arrays.items()}


def _final_check(model: onnx.ModelProto, module, input_names, data, val_targets, threads: int,
                 batch_size: int) -> dict:
    """Run the written ONNX model under ONNX Runtime: it must reproduce the trained module; report accuracy.

    Both run `batch_size` samples at a time (the training batch, which fit in memory with gradients):
    the interpreter on thousands of full-length sequences at once would not."""
    from onnxcomp.distill.trainer import predict
    from onnxcomp.measure.runtime import run_batched, session

    # Enough for a stable accuracy, bounded time; without labels only the write-back is checked, which a few
    # hundred samples show as well (thousands of augmented sequences cost minutes there: MiniLM, 2048).
    limit = 4096 if LABELS in data else 256
    sample = take(data, 0, limit)  # run_batched feeds only the model's inputs
    got = run_batched(session(model, threads=threads), sample, batch_size)
    ort_outs = [got[o.name] for o in model.graph.output]
    torch_outs = predict(module, [sample[k] for k in input_names], batch_size)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ort_outs, torch_outs))
    final = {"ort_vs_torch_max_abs": diff, "samples": len(sample[input_names[0]])}
    labels = sample.get(LABELS)
    if labels is not None and ort_outs[0].ndim == 2:
        final["accuracy"] = float(np.mean(ort_outs[0].argmax(1) == labels))
        if val_targets is not None:
            final["teacher_accuracy"] = float(np.mean(val_targets.outputs[0][:limit].argmax(1) == labels))
    return final
