"""Distillation losses: soft targets at a temperature, hard labels, feature matching.

The soft-target term is Hinton et al.'s KL(teacher_T || student_T) * T^2: the T^2 keeps its
gradient scale independent of T, so alpha means the same thing at every temperature. With labels,
loss = alpha * soft + (1 - alpha) * CE(student, labels); without labels, the soft term alone.
Outputs that are not class logits ([batch, classes]) are matched with mean squared error, over the
real positions only when a padding mask [batch, seq] is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence between softened distributions over the last axis, scaled by T^2."""
    t = float(temperature)
    log_p_student = F.log_softmax(student / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)
    kl = F.kl_div(log_p_student.reshape(-1, student.shape[-1]), log_p_teacher.reshape(-1, teacher.shape[-1]),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)


def is_logits(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.shape[1] > 1


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE over the positions where `mask` [batch, seq] is 1 (plain MSE when the shapes do not lead with it)."""
    if mask is None or student.dim() < 2 or tuple(student.shape[:2]) != tuple(mask.shape):
        return F.mse_loss(student, teacher)
    w = mask.to(student.dtype).reshape(tuple(mask.shape) + (1,) * (student.dim() - 2))
    per_position = student[0, 0].numel()
    return ((student - teacher) ** 2 * w).sum() / (w.sum().clamp(min=1.0) * per_position)


def output_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                temperature: float, alpha: float, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss for one output; returns (loss, parts) where parts are plain floats for the log."""
    if not is_logits(student):
        mse = masked_mse(student, teacher, mask)
        return mse, {"mse": float(mse.detach())}
    parts = {}
    if labels is None:
        soft = soft_target_loss(student, teacher, temperature)
        return soft, {"kd": float(soft.detach())}
    ce = F.cross_entropy(student, labels)
    parts["ce"] = float(ce.detach())
    if alpha <= 0.0:
        return ce, parts
    soft = soft_target_loss(student, teacher, temperature)
    parts["kd"] = float(soft.detach())
    return alpha * soft + (1.0 - alpha) * ce, parts


def distillation_loss(student_outputs, teacher_outputs, labels, temperature: float, alpha: float, mask=None):
    """Sum over outputs; the labels go with the first class-logit output only; `mask`: see masked_mse."""
    total, parts = 0.0, {}
    labels_used = False
    for s, t in zip(student_outputs, teacher_outputs):
        use = labels if (labels is not None and not labels_used and is_logits(s)) else None
        labels_used = labels_used or use is not None
        loss, p = output_loss(s, t, use, temperature, alpha, mask)
        total = total + loss
        for k, v in p.items():
            parts[k] = parts.get(k, 0.0) + v
    return total, parts


class FeatureAdapter(torch.nn.Module):
    """Maps a student feature to the teacher's width: a 1x1 conv on NCHW maps, a linear map on the last axis otherwise.

    Identity when widths already match. Trained with the student and discarded afterwards.
    """

    def __init__(self, student_shape: tuple, teacher_shape: tuple, name: str):
        super().__init__()
        from onnxcomp.errors import InputError

        if len(student_shape) != len(teacher_shape):
            raise InputError(f"feature {name}: student tensor has shape {list(student_shape)}, teacher "
                             f"{list(teacher_shape)} (different ranks cannot be matched)")
        # NCHW-like maps (rank >= 4) carry channels on axis 1; sequences and vectors on the last axis,
        # but a rank-3 pair that differs only on axis 1 is a 1-D conv map [N, C, L] (an audio UNet's).
        differ = [i for i, (a, b) in enumerate(zip(student_shape, teacher_shape)) if i and a != b]
        conv1d = len(student_shape) == 3 and differ == [1]
        self.channel_axis = 1 if len(student_shape) >= 4 or conv1d else len(student_shape) - 1
        other_s = [d for i, d in enumerate(student_shape) if i not in (0, self.channel_axis)]
        other_t = [d for i, d in enumerate(teacher_shape) if i not in (0, self.channel_axis)]
        if other_s != other_t:
            raise InputError(f"feature {name}: student tensor has shape {list(student_shape)}, teacher "
                             f"{list(teacher_shape)}; only the channel width may differ")
        cs, ct = student_shape[self.channel_axis], teacher_shape[self.channel_axis]
        self.proj = None
        if cs != ct:
            if len(student_shape) >= 4 or conv1d:
                conv = {3: torch.nn.Conv1d, 4: torch.nn.Conv2d}.get(len(student_shape), torch.nn.Conv3d)
                self.proj = conv(cs, ct, 1, bias=False)
            else:
                self.proj = torch.nn.Linear(cs, ct, bias=False)

    def forward(self, x):
        return x if self.proj is None else self.proj(x)


def feature_loss(adapters: torch.nn.ModuleDict, keys: list[str], student_feats: dict, teacher_feats: dict,
                 mask: torch.Tensor | None = None):
    """Mean of the MSEs between adapted student features and teacher features (see masked_mse)."""
    losses = [masked_mse(adapters[k](student_feats[k]), teacher_feats[k], mask) for k in keys]
    return sum(losses) / len(losses)
