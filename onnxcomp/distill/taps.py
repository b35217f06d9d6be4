"""Calling a torch model and collecting its outputs plus named intermediate tensors (feature matching).

For a module interpreted from ONNX the names are ONNX tensor names; for any other torch module
they are submodule names (`layer2`, `layer3.conv2`) whose forward output is taken.
"""

from __future__ import annotations

import torch

from onnxcomp.distill.onnx_to_torch import OnnxModule
from onnxcomp.errors import InputError


def as_output_list(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value) and value:
        return list(value)
    raise InputError(f"the model returned {type(value).__name__}; expected a tensor, a tuple/list or a dict of tensors")


class Tapped:
    """Wraps a model so each call returns (outputs, {name: tensor}) for the requested names."""

    def __init__(self, module: torch.nn.Module, names: list[str], role: str):
        self.module, self.names, self.role = module, list(names), role
        self._forward = module
        self._store: dict[str, torch.Tensor] = {}
        if isinstance(module, OnnxModule):
            known = module.tensor_names()
            missing = [n for n in self.names if n not in known]
            if missing:
                raise InputError(f"{role} has no tensor named {missing[0]!r} for feature matching")
            module.capture = set(self.names)
            return
        submodules = dict(module.named_modules())
        for name in self.names:
            if name not in submodules or not name:
                some = ", ".join(n for n in list(submodules)[1:8])
                raise InputError(f"{role} has no submodule named {name!r} for feature matching (e.g. {some})")
            submodules[name].register_forward_hook(self._hook(name))

    def _hook(self, name):
        def keep(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self._store[name] = out
        return keep

    def call_through(self, wrapper: torch.nn.Module) -> None:
        """Run forwards through `wrapper` (DistributedDataParallel around the module); the taps stay."""
        self._forward = wrapper

    def __call__(self, inputs: list[torch.Tensor]):
        self._store = {}
        outputs = as_output_list(self._forward(*inputs))
        if isinstance(self.module, OnnxModule):
            feats = dict(self.module.captured)
        else:
            feats = dict(self._store)
        return outputs, feats
