"""The frozen teacher and its cached targets.

The teacher is the original ONNX model run by ONNX Runtime (exactly what is deployed) or a
torch module in eval mode. Its outputs, and the intermediate tensors named for feature
matching, are computed once per sample before training and then indexed per batch, so an
epoch costs only the student's forward and backward. With cache="disk" they are kept as .npy
files keyed by a hash of the teacher and the data, so later runs (other seeds, other
hyperparameters) skip the teacher entirely. Within reuse_targets() the in-memory targets are also
kept for the process: compress trains several students from one teacher on the same data.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import copy_with_outputs
from onnxcomp.measure.data import take


class OnnxTeacher:
    """An ONNX model under ONNX Runtime; `features` are tensor names exposed as extra outputs."""

    kind = "onnx"

    def __init__(self, model: onnx.ModelProto, features: list[str], threads: int):
        from onnxcomp.graph.signature import input_specs
        from onnxcomp.measure.runtime import session

        self.input_names = [s.name for s in input_specs(model)]
        self.output_names = [o.name for o in model.graph.output]
        self.features = list(features)
        known = {o for n in model.graph.node for o in n.output} | set(self.input_names)
        missing = [f for f in self.features if f not in known]
        if missing:
            raise InputError(f"teacher has no tensor named {missing[0]!r} for feature matching")
        run_model = model
        extra = [f for f in dict.fromkeys(self.features) if f not in self.output_names]
        if extra:
            run_model = copy_with_outputs(model, extra)
        self.model = model
        self.session = session(run_model, threads=threads)
        self._names = self.output_names + extra

    @functools.cached_property
    def identity(self) -> str:
        """Hash of the model for the disk cache key (only computed when cache="disk")."""
        return hashlib.sha256(self.model.SerializeToString()).hexdigest()

    def __call__(self, feeds: dict[str, np.ndarray]):
        from onnxcomp.measure.runtime import run

        values = run(self.session, {k: feeds[k] for k in self.input_names}, self._names)
        return [values[n] for n in self.output_names], {f: values[f] for f in self.features}


class TorchTeacher:
    """A torch module in eval mode, run without gradients."""

    kind = "torch"

    def __init__(self, module, input_names: list[str], features: list[str]):
        import torch

        from onnxcomp.distill.taps import Tapped

        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.input_names = list(input_names)
        self.features = list(features)
        self.tapped = Tapped(self.module, list(dict.fromkeys(features)), "teacher")
        self._torch = torch
        self.output_names = None

    @functools.cached_property
    def identity(self) -> str:
        """Hash of the module's class and weights for the disk cache key (only computed when cache="disk")."""
        digest = hashlib.sha256(type(self.module).__qualname__.encode())
        for name, tensor in self.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def __call__(self, feeds: dict[str, np.ndarray]):
        torch = self._torch
        with torch.no_grad():
            outputs, feats = self.tapped([torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.input_names])
        return [o.numpy() for o in outputs], {f: feats[f].numpy() for f in self.features}


@dataclass
class Targets:
    """Teacher outputs (list, graph order) and features (by teacher tensor name) for every sample."""

    outputs: list[np.ndarray]
    features: dict[str, np.ndarray]
    seconds: float
    source: str  # "computed", "disk" (loaded from the cache folder), "reused" (kept by reuse_targets)
    path: str | None = None

    def batch(self, index: np.ndarray):
        return [o[index] for o in self.outputs], {k: v[index] for k, v in self.features.items()}


def run_teacher(teacher, inputs: dict[str, np.ndarray], batch_size: int = 128):
    """Teacher outputs for all samples, batched; returns (outputs, features)."""
    n = len(inputs[teacher.input_names[0]])
    outs: list[list[np.ndarray]] = []
    feats: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch_size):
        o, f = teacher(take(inputs, start, start + batch_size))
        if not outs:
            outs = [[] for _ in o]
        for acc, value in zip(outs, o):
            acc.append(value)
        for k, v in f.items():
            feats.setdefault(k, []).append(v)
    return [np.concatenate(o) for o in outs], {k: np.concatenate(v) for k, v in feats.items()}


def cache_key(teacher, inputs: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(teacher.identity.encode())
    for name in teacher.input_names:
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update("|".join(teacher.features).encode())
    return digest.hexdigest()[:24]


_kept: dict | None = None  # cache_key -> (outputs, features) while reuse_targets() is active


@contextlib.contextmanager
def reuse_targets():
    """Within this block, targets computed in memory are kept and reused for the same teacher, inputs
    and features (the trainer only indexes them); they are dropped when the outermost block ends."""
    global _kept
    outermost = _kept is None
    if outermost:
        _kept = {}
    try:
        yield
    finally:
        if outermost:
            _kept = None


def teacher_targets(teacher, inputs: dict[str, np.ndarray], mode: str, cache_dir: str | None = None,
                    batch_size: int = 128) -> Targets:
    """Compute (or load from the disk cache, or take from reuse_targets) the teacher's targets for every
    sample once."""
    start = time.perf_counter()
    if mode != "disk":
        key = cache_key(teacher, inputs) if _kept is not None else None
        if key in (_kept or {}):
            outputs, feats = _kept[key]
            return Targets(list(outputs), dict(feats), time.perf_counter() - start, "reused")
        outputs, feats = run_teacher(teacher, inputs, batch_size)
        if key is not None:
            _kept[key] = (outputs, feats)
        return Targets(outputs, feats, time.perf_counter() - start, "computed")
    folder = Path(cache_dir or Path(tempfile.gettempdir()) / "onnxcomp-teacher-cache")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create the teacher cache folder ({exc.strerror or exc})") from None
    entry = folder / f"teacher-{cache_key(teacher, inputs)}"
    if (entry / "done").exists():
        outputs = [np.load(entry / f"out{i}.npy", mmap_mode="r") for i in range(len(list(entry.glob("out*.npy"))))]
        feats = {name: np.load(entry / f"feat{i}.npy", mmap_mode="r") for i, name in enumerate(teacher.features)}
        return Targets(outputs, feats, time.perf_counter() - start, "disk", str(entry))
    outputs, feats = run_teacher(teacher, inputs, batch_size)
    staging = Path(tempfile.mkdtemp(prefix=".teacher-", dir=folder))
    try:
        for i, value in enumerate(outputs):
            np.save(staging / f"out{i}.npy", value)
        for i, name in enumerate(teacher.features):
            np.save(staging / f"feat{i}.npy", feats[name])
        (staging / "done").write_text("ok\n")
        try:
            os.replace(staging, entry)
        except OSError:
            pass  # another run filled the same entry first: identical content
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Targets(outputs, feats, time.perf_counter() - start, "computed", str(entry))


class LiveTargets:
    """No cache: the teacher runs for every batch of every epoch (to measure what the cache saves)."""

    source = "live"
    path = None

    def __init__(self, teacher, inputs: dict[str, np.ndarray]):
        self.teacher, self.inputs = teacher, inputs
        self.seconds = 0.0

    def batch(self, index: np.ndarray):
        start = time.perf_counter()
        outputs, feats = self.teacher({k: self.inputs[k][index] for k in self.teacher.input_names})
        self.seconds += time.perf_counter() - start
        return outputs, feats
