"""Per-epoch training state on disk, so an interrupted distillation resumes where it stopped.

One file, `distill-state.pt` in the checkpoint folder, rewritten atomically after every epoch (by
rank 0 only under torch.distributed; every rank reads it on --resume, so several machines need a
shared folder). Every tensor in it is a CPU copy (on_cpu), so a run on a GPU resumes on the CPU and
the other way round. It holds what the next epoch depends on: student and adapter weights, optimizer
and schedule state, the best epoch so far, the history, and a fingerprint of the run (options,
data size, world size) that a resumed run must match.
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxcomp.errors import InputError

FILE = "distill-state.pt"
VERSION = 1
# Options that change what training computes; the others (threads, cache, paths) may differ on resume.
_FINGERPRINT = ("epochs", "lr", "batch_size", "temperature", "alpha", "weight_decay", "optimizer", "schedule",
                "features", "feature_weight", "seed", "bn", "keep_zeros", "renorm", "output_loss", "pooled_weight",
                "warmup")


def fingerprint(options, samples: int, world_size: int) -> dict:
    values = {k: v for k, v in options.as_dict().items() if k in _FINGERPRINT}
    values["features"] = [list(p) for p in values["features"]]
    return {**values, "samples": int(samples), "processes": int(world_size)}


def on_cpu(value, copy: bool = False):
    """`value` (dicts, lists and tuples of tensors, as state_dicts are) with every tensor on the CPU, so a
    checkpoint written on a GPU resumes on a machine without one. `copy`: CPU tensors are cloned too,
    for a snapshot the next steps must not change."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach()
        return value.to("cpu", copy=True) if copy else value.cpu()
    if isinstance(value, dict):
        out = type(value)((k, on_cpu(v, copy)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a state_dict's module versions, which load_state_dict reads
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v, copy) for v in value)
    return value


def state_path(folder) -> Path:
    return Path(folder) / FILE


def save(folder, state: dict) -> Path:
    """Write the state atomically (a temporary file in the same folder, then renamed over)."""
    import torch

    path = state_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path.parent}: cannot create the checkpoint folder ({exc.strerror or exc})") from None
    tmp = path.with_name(f".{FILE}.tmp{os.getpid()}")
    try:
        torch.save({"version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(folder, expected: dict) -> dict:
    """The saved state, refused in one line when missing, unreadable or from a different run."""
    import torch

    path = state_path(folder)
    if not path.is_file():
        raise InputError(f"--resume: no checkpoint {path} (it is written after every epoch)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"--resume: {path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise InputError(f"--resume: {path} is not a version {VERSION} distillation checkpoint")
    saved = state.get("fingerprint", {})
    for key, value in expected.items():
        if saved.get(key) != value:
            raise InputError(f"--resume: {path} was written with {key} {saved.get(key)!r}, this run has {value!r}; "
                             "resume with the same options, data and number of processes")
    return state
