"""Distillation losses: soft targets at a temperature, hard labels, feature matching.

The soft-target term is Hinton et al.'s KL(teacher_T || student_T) * T^2: the T^2 keeps its
gradient scale independent of T, so alpha means the same thing at every temperature. With labels,
loss = alpha * soft + (1 - alpha) * CE(student, labels); without labels, the soft term alone.
Outputs that are not class logits ([batch, classes]) are matched with mean squared error, or with one
minus the cosine of each position's vector (`output_loss="cosine"`: direction, not scale, the way
embeddings are compared), over the real positions only when a padding mask [batch, seq] is given. With
that mask, `pooled_weight` adds one minus the cosine of the outputs pooled over the real tokens (their
mean: how sentence embedders read a sequence model), so the term trains what such a deployment measures.
Probability tensors (attention distributions) are matched by KL over their last axis (masked_kl): each
query row of an attention map is a distribution over the keys, many more targets per sentence than its
hidden states give.
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


def _leads_with(t: torch.Tensor, mask: torch.Tensor | None) -> bool:
    return mask is not None and t.dim() >= 3 and tuple(t.shape[:2]) == tuple(mask.shape)


def masked_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of 1 - cosine between the vectors of each position ([batch, seq, ...] flattened after seq) over
    the positions where `mask` is 1, over all of them without a mask; a tensor of fewer than 3 axes, or not
    leading with a given mask, compares whole samples."""
    if student.dim() < 3 or not (mask is None or _leads_with(student, mask)):
        s, t = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    s, t = student.flatten(2), teacher.flatten(2)
    distance = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    if mask is None:
        return distance.mean()
    w = mask.to(distance.dtype)
    return (distance * w).sum() / w.sum().clamp(min=1.0)


def pooled_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Mean over the batch of 1 - cosine between the outputs averaged over the real tokens (mask [batch, seq]);
    None for a tensor that does not lead with the mask (nothing to pool)."""
    if not _leads_with(student, mask):
        return None
    w = mask.to(student.dtype).reshape(tuple(mask.shape) + (1,) * (student.dim() - 2))
    count = w.sum(1).clamp(min=1.0)
    s, t = (student * w).sum(1) / count, (teacher * w).sum(1) / count
    return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=-1, eps=1e-8)).mean()


def output_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                temperature: float, alpha: float, mask: torch.Tensor | None = None, kind: str = "mse",
                pooled_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss for one output; returns (loss, parts) where parts are plain floats for the log.

    kind: "mse" or "cosine" for outputs that are not class logits; pooled_weight: see the module docstring."""
    if not is_logits(student):
        loss = masked_mse(student, teacher, mask) if kind == "mse" else masked_cosine(student, teacher, mask)
        parts = {"mse" if kind == "mse" else "cosine_distance": float(loss.detach())}
        pooled = pooled_cosine(student, teacher, mask) if pooled_weight > 0 else None
        if pooled is not None:
            loss = loss + pooled_weight * pooled
            parts["pooled_distance"] = float(pooled.detach())
        return loss, parts
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


def distillation_loss(student_outputs, teacher_outputs, labels, temperature: float, alpha: float, mask=None,
                      kind: str = "mse", pooled_weight: float = 0.0):
    """Sum over outputs; the labels go with the first class-logit output only; the rest: see output_loss."""
    total, parts = 0.0, {}
    labels_used = False
    for s, t in zip(student_outputs, teacher_outputs):
        use = labels if (labels is not None and not labels_used and is_logits(s)) else None
        labels_used = labels_used or use is not None
        loss, p = output_loss(s, t, use, temperature, alpha, mask, kind, pooled_weight)
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


def masked_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
              eps: float = 1e-12) -> torch.Tensor:
    """Mean over rows of KL(teacher || student), both probability tensors over the last axis (Softmax outputs).

    With a mask [batch, seq] and rows whose second-to-last axis is the sequence (attention [B, H, T, T]: the
    query rows; or [B, T, C]), only the rows of real positions count. Entries where the teacher is 0 (padded
    keys) add nothing, so a batch cut to its real length gives the same value."""
    kl = (torch.special.xlogy(teacher, teacher) - teacher * torch.log(student.clamp(min=eps))).sum(-1)
    if mask is None or kl.dim() < 2 or kl.shape[0] != mask.shape[0] or kl.shape[-1] != mask.shape[1]:
        return kl.mean()
    w = mask.to(kl.dtype).reshape((mask.shape[0],) + (1,) * (kl.dim() - 2) + (mask.shape[1],))
    rows_per_position = kl[0, ..., 0].numel()  # heads
    return (kl * w).sum() / (w.sum() * rows_per_position).clamp(min=1.0)


def self_relation(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(V V^T / sqrt(d)) over the last axis of rows V [..., T, d] (MiniLM's value relation); with a mask
    [batch, seq] and T the sequence, padded keys get probability 0 (so masked_kl may compare it as it compares
    attention maps)."""
    logits = values @ values.transpose(-1, -2) / float(values.shape[-1]) ** 0.5
    if (mask is not None and values.dim() >= 3 and values.shape[0] == mask.shape[0]
            and values.shape[-2] == mask.shape[1]):
        hidden = (mask == 0).reshape((mask.shape[0],) + (1,) * (values.dim() - 2) + (mask.shape[1],))
        logits = logits.masked_fill(hidden, -1e4)
    return torch.softmax(logits, -1)


def feature_loss(adapters: torch.nn.ModuleDict, keys: list[str], student_feats: dict, teacher_feats: dict,
                 mask: torch.Tensor | None = None, kinds: dict | None = None):
    """Mean of the per-feature losses: MSE between adapted student and teacher features (masked_mse), or
    masked_kl for the keys `kinds` marks "kl" (no adapter: the same distribution shape on both sides)."""
    kinds = kinds or {}
    losses = [masked_kl(student_feats[k], teacher_feats[k], mask) if kinds.get(k) == "kl"
              else masked_mse(adapters[k](student_feats[k]), teacher_feats[k], mask) for k in keys]
    return sum(losses) / len(losses)
