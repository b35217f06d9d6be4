"""The training loop: seeded, deterministic on CPU, validated every epoch, best epoch kept.

Each epoch shuffles with a seeded generator, runs the student on a batch, takes the teacher's
targets for the same samples from the cache, and steps AdamW (or SGD) on the distillation loss
(+ feature matching). Exact zeros in weight tensors are masked after every step so sparsity
survives. After each epoch the student is scored on the validation data (accuracy with labels,
else top-1 agreement with the teacher for logits, else cosine); the best epoch's weights are
restored at the end (ties broken by the lower validation loss).

Under torch.distributed (distributed.py) the student trains inside DistributedDataParallel on this
rank's shard with its share of the effective batch; rank 0 validates and decides the best epoch for
all. With a checkpoint folder the whole state is saved after every epoch and `resume` continues
from it (checkpoint.py).

The student trains on one device (`--device`: the CPU, or under CUDA the GPU of this rank): its
weights, each batch and that batch's teacher targets go there; the teacher's cache, the seeded
shuffles and the loss bookkeeping stay on the CPU, and checkpoints and the weights written back to
ONNX are CPU copies.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from onnxcomp.distill import checkpoint, distributed
from onnxcomp.distill.distributed import SINGLE
from onnxcomp.distill.losses import FeatureAdapter, distillation_loss, feature_loss, masked_kl, self_relation
from onnxcomp.distill.onnx_to_torch import OnnxModule
from onnxcomp.distill.options import DistillOptions, feature_kind
from onnxcomp.distill.taps import Tapped
from onnxcomp.progress import bar, logger, say_to


def seed_all(seed: int, threads: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # cuBLAS is deterministic only with a fixed workspace, set before its first call (no effect on the CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    metric: str = ""
    best_epoch: int = 0
    teacher_seconds_in_training: float = 0.0
    masked_tensors: int = 0
    masked_zeros: int = 0


def zero_masks(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Masks of the weights (rank >= 2) that hold exact zeros: those zeros are sparsity to keep."""
    masks = {}
    for name, p in module.named_parameters():
        if p.dim() >= 2 and bool((p == 0).any()):
            masks[name] = (p != 0).to(p.dtype)
    return masks


def _set_bn_mode(module: torch.nn.Module, mode: str) -> None:
    if mode != "frozen":
        return
    if isinstance(module, OnnxModule):
        module.eval()  # the interpreter's only train/eval difference is BatchNormalization
        return
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(array)


def device_of(module: torch.nn.Module) -> torch.device:
    """Where the module's weights are (the CPU for a module without any)."""
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def place(student: torch.nn.Module, adapters: torch.nn.Module, device: torch.device):
    """Move the student (parameters, buffers, and an interpreted graph's float constants, which are no
    buffers; its integer ones are shapes and axes, read on the CPU) and the feature adapters to `device`;
    returns the undo, which brings them back to the CPU with the constants as they were (write-back
    and export read CPU weights)."""
    consts = student.consts if isinstance(student, OnnxModule) else None
    student.to(device)
    adapters.to(device)
    if consts is not None:
        student.consts = {k: v.to(device) if v.is_floating_point() else v for k, v in consts.items()}

    def back() -> None:
        student.to("cpu")
        adapters.to("cpu")
        if consts is not None:
            student.consts = consts
    return back


def predict(student: torch.nn.Module, inputs: list[np.ndarray], batch_size: int = 256,
            device: torch.device | None = None) -> list[np.ndarray]:
    """Student outputs (eval mode, no gradients) over all samples, run on `device` (default: where the
    student's weights are), returned on the CPU."""
    from onnxcomp.distill.taps import as_output_list

    device = device_of(student) if device is None else device
    student.eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            outs = as_output_list(student(*[_tensor(x[start:start + batch_size]).to(device) for x in inputs]))
            if not chunks:
                chunks = [[] for _ in outs]
            for acc, o in zip(chunks, outs):
                acc.append(o.cpu().numpy())
    return [np.concatenate(c) for c in chunks]


def padding_cut(inputs: list[np.ndarray], mask_at: int | None, cut: bool):
    """(inputs, mask tensor, (full length, kept length)): with a padding mask, the batch cut to its
    longest real sequence along axis 1 (when `cut`), and the mask as a float tensor; else the inputs
    unchanged (and None, None)."""
    if mask_at is None:
        return inputs, None, None
    mask = inputs[mask_at]
    length = mask.shape[1]
    if cut:
        real = np.flatnonzero(mask.any(axis=0))
        length = max(int(real[-1]) + 1 if len(real) else 1, 1)
        inputs = [x[:, :length] if x.ndim >= 2 and x.shape[1] == mask.shape[1] else x for x in inputs]
    return inputs, torch.from_numpy(np.ascontiguousarray(inputs[mask_at] != 0)).float(), (mask.shape[1], length)


def by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, generator) -> np.ndarray:
    """The shuffled order regrouped so each batch holds sequences of similar length (sorted within windows
    of 8 batches, then the batches shuffled): cut batches then carry little padding."""
    window = 8 * batch_size
    batches = []
    for s in range(0, len(order), window):
        part = order[s:s + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    shuffled.sort(key=lambda i: len(batches[i]) < batch_size)  # a short batch last: slicing stays aligned
    return np.concatenate([batches[i] for i in shuffled]) if batches else order


def cut_like(arrays, cut):
    """Teacher targets cut along axis 1 as the batch was (`cut` = (full length, kept length) or None)."""
    if cut is None or cut[0] == cut[1]:
        return arrays
    return [a[:, :cut[1]] if a.ndim >= 2 and a.shape[1] == cut[0] else a for a in arrays]


def cut_to(array: np.ndarray, student: torch.Tensor, cut) -> np.ndarray:
    """A teacher feature cut like the batch on every axis after the first that had the full sequence length
    and is shorter in the student's tensor (attention [B, H, T, T] on both T axes: cut_like cuts axis 1 only).
    The cut keys are padding the teacher gave probability 0, so a distribution over the kept keys is whole."""
    if cut is None or cut[0] == cut[1] or array.ndim != student.dim():
        return array
    index = tuple(slice(0, cut[1]) if i and size == cut[0] and student.shape[i] == cut[1] else slice(None)
                  for i, size in enumerate(array.shape))
    return array[index]


def metric_name(first_output: np.ndarray, has_labels: bool) -> str:
    if first_output.ndim == 2 and first_output.shape[1] > 1:
        return "accuracy" if has_labels else "teacher_top1"
    return "cosine"


def score(name: str, student_out: np.ndarray, teacher_out: np.ndarray, labels) -> float:
    if name == "accuracy":
        return float(np.mean(student_out.argmax(1) == labels))
    if name == "teacher_top1":
        return float(np.mean(student_out.argmax(1) == teacher_out.argmax(1)))
    from onnxcomp.measure.compare import per_sample_cosine

    return float(per_sample_cosine(teacher_out, student_out).mean())


def schedule(opt, kind: str, steps: int, warmup: float):
    """The rate schedule stepped once per batch: cosine decay to zero over `steps` or constant, after a
    linear rise from zero over `warmup` of the steps (none: torch's own CosineAnnealingLR, as before)."""
    if warmup <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if kind == "cosine" else None
    import math

    rise = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < rise:
            return (step + 1) / rise
        if kind != "cosine":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - rise) / max(1, steps - rise)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Trainer:
    """device: where the student trains (a torch device or its name); default the one `options.device`
    gives this rank (distributed.placement: cpu, or cuda:<local rank>). Everything a step computes
    follows it; the teacher's cache, the shuffles and the loss bookkeeping stay on the CPU.
    attention: tensor names of probability maps both models compute in one shape (api._same_shape), matched
    by KL at options.attention_weight; values: value tensors (one shape in both) whose self-relations are
    matched by KL at options.value_weight."""

    def __init__(self, student: torch.nn.Module, input_names: list[str], options: DistillOptions,
                 progress=None, world=SINGLE, device=None, attention=(), values=()):
        self.student, self.input_names, self.options = student, list(input_names), options
        self.world = world
        self.device = torch.device(distributed.placement(world, options.device).device if device is None else device)
        self.progress = say_to(progress)  # one line per epoch; batches show as a bar on a terminal
        self.pairs = [feature_kind(p) for p in options.features]
        self.attention = list(attention) if options.attention_weight > 0 else []
        self.values = list(values) if options.value_weight > 0 else []
        self.tapped = Tapped(student, list(dict.fromkeys([s for _, s, _ in self.pairs] + self.attention + self.values)),
                             "student")
        self.adapters = torch.nn.ModuleDict()

    def _build_adapters(self, inputs, targets) -> None:
        """One adapter per feature pair, sized from a probe batch (widths may differ)."""
        if not self.pairs:
            return
        probe = np.arange(min(2, len(inputs[0])))
        self.student.eval()
        with torch.no_grad():
            _, feats = self.tapped([_tensor(x[probe]) for x in inputs])
        _, t_feats = targets.batch(probe)
        for i, (t_name, s_name, kind) in enumerate(self.pairs):
            if kind == "kl":  # distributions: compared as they are, so the shapes must agree
                if tuple(feats[s_name].shape) != tuple(t_feats[t_name].shape):
                    from onnxcomp.errors import InputError

                    raise InputError(f"feature {t_name} -> {s_name} (kl): student tensor has shape "
                                     f"{list(feats[s_name].shape)}, teacher {list(t_feats[t_name].shape)}; "
                                     "KL needs one shape")
                continue
            self.adapters[f"f{i}"] = FeatureAdapter(tuple(feats[s_name].shape), tuple(t_feats[t_name].shape),
                                                    f"{t_name} -> {s_name}")

    def fit(self, train: dict[str, np.ndarray], targets, labels: np.ndarray | None,
            val: dict[str, np.ndarray] | None = None, val_targets=None, val_labels=None) -> TrainResult:
        """Train on self.device; the student comes back on the CPU holding the best epoch's weights."""
        self._build_adapters([train[n] for n in self.input_names], targets)  # a probe, on the CPU
        # The zeros to keep, found on the CPU before the move: no device round trip per tensor.
        masks = zero_masks(self.student) if self.options.keep_zeros else {}
        back = place(self.student, self.adapters, self.device)
        try:
            result, best_state = self._train(train, targets, labels, val, val_targets, val_labels, masks)
        finally:
            back()
        if best_state is not None:
            self.student.load_state_dict(best_state)
        self.student.eval()
        return result

    def _train(self, train, targets, labels, val, val_targets, val_labels, masks):
        opts, world, device = self.options, self.world, self.device
        result = TrainResult()
        inputs = [train[n] for n in self.input_names]
        n = len(inputs[0])  # this rank's shard
        batch_size = distributed.local_batch(world, opts.batch_size)
        params = list(self.student.parameters()) + list(self.adapters.parameters())
        if opts.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay, nesterov=True)
        else:
            opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
        batches = (n + batch_size - 1) // batch_size
        steps = opts.epochs * batches
        sched = schedule(opt, opts.schedule, steps, opts.warmup)
        named = dict(self.student.named_parameters())
        result.masked_tensors = len(masks)
        result.masked_zeros = int(sum(int((m == 0).sum()) for m in masks.values()))
        masks = {name: m.to(device) for name, m in masks.items()}
        labels_t = None if labels is None else torch.from_numpy(np.asarray(labels).astype(np.int64))
        generator = torch.Generator().manual_seed(opts.seed + world.rank)
        use_teacher = targets is not None  # None: plain cross-entropy, the caller did not run the teacher
        source = getattr(targets, "source", None)
        best_key, best_state = None, None
        val_inputs = [val[k] for k in self.input_names] if val is not None else None
        # Fixed across epochs: converted once, not per validation pass.
        val_teacher_t = None if val_targets is None else [_tensor(o) for o in val_targets.outputs]
        val_labels_t = None if val_labels is None else torch.from_numpy(np.asarray(val_labels, np.int64))
        identity = checkpoint.fingerprint(opts, n * world.size, world.size)
        mask_at = self.input_names.index(opts.mask) if opts.mask else None
        cut = bool(mask_at is not None and getattr(self.student, "any_length", False))
        real_lengths = (np.asarray(inputs[mask_at]) != 0).sum(axis=1) if cut else None
        first = 1
        if opts.resume:
            state = checkpoint.load(opts.checkpoint_dir, identity)
            self.student.load_state_dict(state["student"])
            self.adapters.load_state_dict(state["adapters"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:  # absent when written on the CPU
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            result.history, result.metric = list(state["history"]), state["metric"]
            best_key, result.best_epoch, best_state = state["best_key"], state["best_epoch"], state["best_state"]
            best_key = None if best_key is None else tuple(best_key)
            first = state["epoch"] + 1
            for _ in range(1, first):  # the same shuffles as an uninterrupted run
                order = torch.randperm(n, generator=generator).numpy()
                if cut:
                    by_length(order, real_lengths, batch_size, generator)
            self.progress(f"resuming after epoch {state['epoch']} from {checkpoint.state_path(opts.checkpoint_dir)}")
        self.tapped.call_through(distributed.wrap(world, self.student, device))
        for epoch in bar(range(first, opts.epochs + 1), "distill", total=opts.epochs - first + 1, unit="epoch"):
            t0 = time.perf_counter()
            self.student.train()
            self.adapters.train()
            _set_bn_mode(self.student, opts.bn)
            order = torch.randperm(n, generator=generator).numpy()
            if cut:
                order = by_length(order, real_lengths, batch_size, generator)
            sums: dict[str, float] = {}
            for s in bar(range(0, n, batch_size), f"epoch {epoch}", total=batches, unit="batch"):
                index = order[s:s + batch_size]
                batch, mask, lengths = padding_cut([x[index] for x in inputs], mask_at, cut)
                mask = None if mask is None else mask.to(device)
                outs, feats = self.tapped([_tensor(x).to(device) for x in batch])
                batch_labels = None if labels_t is None else labels_t[index].to(device)
                if use_teacher:  # the cache stays on the CPU; each batch's targets go to the device
                    t_outs, t_feats = targets.batch(index)
                    t_outs = [_tensor(t).to(device) for t in cut_like(t_outs, lengths)]
                    t_feats = dict(zip(t_feats, cut_like(list(t_feats.values()), lengths)))
                else:  # plain cross-entropy: the teacher is not needed
                    t_outs, t_feats = [o.detach() for o in outs], {}
                loss, parts = distillation_loss(outs, t_outs, batch_labels, opts.temperature,
                                                opts.alpha if use_teacher else 0.0, mask, opts.output_loss,
                                                opts.pooled_weight if use_teacher else 0.0)
                if self.pairs and opts.feature_weight > 0:
                    keyed_s = {f"f{i}": feats[s_name] for i, (_, s_name, _) in enumerate(self.pairs)}
                    keyed_t = {f"f{i}": _tensor(cut_to(t_feats[t_name], keyed_s[f"f{i}"], lengths)).to(device)
                               for i, (t_name, _, _) in enumerate(self.pairs)}
                    kinds = {f"f{i}": kind for i, (_, _, kind) in enumerate(self.pairs)}
                    f_loss = feature_loss(self.adapters, list(keyed_s), keyed_s, keyed_t, mask, kinds)
                    loss = loss + opts.feature_weight * f_loss
                    parts["feature"] = float(f_loss.detach())
                if self.attention:
                    a_loss = sum(masked_kl(feats[name], _tensor(cut_to(t_feats[name], feats[name], lengths)).to(device),
                                           mask) for name in self.attention) / len(self.attention)
                    loss = loss + opts.attention_weight * a_loss
                    parts["attention"] = float(a_loss.detach())
                if self.values:
                    v_loss = sum(masked_kl(self_relation(feats[name], mask), self_relation(
                        _tensor(cut_to(t_feats[name], feats[name], lengths)).to(device), mask), mask)
                        for name in self.values) / len(self.values)
                    loss = loss + opts.value_weight * v_loss
                    parts["value_relation"] = float(v_loss.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()  # under DDP this also averages the student's gradients across ranks
                distributed.average_gradients(world, self.adapters.parameters())
                for name, mask in masks.items():
                    if named[name].grad is not None:
                        named[name].grad.mul_(mask)
                opt.step()
                if sched is not None:
                    sched.step()
                with torch.no_grad():
                    for name, mask in masks.items():
                        named[name].mul_(mask)
                weight = len(index)
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * weight
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * weight
            train_seconds = time.perf_counter() - t0
            sums = distributed.sum_across(world, sums)
            row = {"epoch": epoch, **{k: v / (n * world.size) for k, v in sums.items()}, "seconds": train_seconds,
                   "lr": opt.param_groups[0]["lr"]}
            if val_inputs is not None:
                v0 = time.perf_counter()
                v_outs = predict(self.student, val_inputs, batch_size, device)
                teacher_v = val_targets.outputs if val_targets is not None else None
                result.metric = metric_name(v_outs[0], val_labels is not None)
                row[result.metric] = score(result.metric, v_outs[0],
                                           teacher_v[0] if teacher_v is not None else None, val_labels)
                v_student = [torch.from_numpy(o) for o in v_outs]
                v_loss, _ = distillation_loss(v_student, val_teacher_t if val_teacher_t is not None else v_student,
                                              val_labels_t, opts.temperature,
                                              opts.alpha if val_teacher_t is not None else 0.0,
                                              kind=opts.output_loss)
                row["val_loss"] = float(v_loss)
                row["val_seconds"] = time.perf_counter() - v0
                key = (row[result.metric], -row["val_loss"])
            else:
                key = (epoch, 0.0)  # no validation data: the last epoch is kept
            improved = distributed.broadcast_flag(world, best_key is None or key > best_key)
            if improved:
                best_key, result.best_epoch = key, epoch
                if world.main:  # a CPU snapshot: it outlives the device copy and loads anywhere
                    best_state = checkpoint.on_cpu(self.student.state_dict(), copy=True)
                if opts.checkpoint and world.main:
                    _save_checkpoint(best_state, opts.checkpoint)
            row["best"] = improved
            result.history.append(row)
            if opts.checkpoint_dir and world.main:
                checkpoint.save(opts.checkpoint_dir, checkpoint.on_cpu({
                    "fingerprint": identity, "epoch": epoch, "student": self.student.state_dict(),
                    "adapters": self.adapters.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": None if sched is None else sched.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": result.history, "metric": result.metric, "best_key": best_key,
                    "best_epoch": result.best_epoch, "best_state": best_state}))
            if world.main:
                self.progress(_epoch_line(row, opts.epochs, result.metric))
            logger.debug("epoch %d: lr %.3g, %d batches%s", epoch, row["lr"], batches,
                         f", validation {row['val_seconds']:.2f} s, val loss {row['val_loss']:.4f}"
                         if "val_loss" in row else "")
        result.teacher_seconds_in_training = float(targets.seconds) if source == "live" else 0.0
        return result, best_state


def _save_checkpoint(state: dict, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _epoch_line(row: dict, epochs: int, metric: str) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}"]
    for k in ("kd", "ce", "mse", "cosine_distance", "pooled_distance", "feature", "attention", "value_relation"):
        if k in row:
            parts.append(f"{k} {row[k]:.4f}")
    if metric and metric in row:
        parts.append(f"val {metric} {row[metric]:.4f}")
    parts.append(f"{row['seconds']:.1f} s")
    if row.get("best"):
        parts.append("*best")
    return "  ".join(parts)
