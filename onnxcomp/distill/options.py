"""Distillation options: one frozen dataclass shared by the Python API and the CLI (no torch import)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from onnxcomp.distill.distributed import DEVICES
from onnxcomp.errors import InputError

CACHE_MODES = ("memory", "disk", "none")
BN_MODES = ("train", "frozen")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
FREEZE_MODES = ("none", "embeddings", "unchanged")
OUTPUT_LOSSES = ("mse", "cosine")
FEATURE_LOSSES = ("mse", "kl")  # kl: probability tensors (Softmax outputs), KL over their last axis
DEFAULT_AUGMENT_FRACTION = 0.15  # share of real tokens replaced in each augmented copy


@dataclass(frozen=True)
class DistillOptions:
    """How the student is trained.

    temperature/alpha: the soft-target term is KL at `temperature` times T^2; with labels the loss is
    alpha * soft + (1 - alpha) * CE. alpha=0 is plain cross-entropy (the teacher is then not run).
    features: (teacher tensor, student tensor) pairs matched with MSE through a learned adapter
    (ONNX tensor names, or torch submodule names for torch models), weighted by feature_weight; a triple
    (teacher, student, "kl") matches probability tensors of one shape (Softmax outputs) by KL(teacher ||
    student) over their last axis instead, no adapter (losses.masked_kl).
    attention_weight: with ONNX teacher and student, every Softmax output over the last axis that both
    graphs compute under one name and in one shape (a transformer's attention distributions [B, H, T, T],
    found by graph: attention.py) is matched by that KL at this weight, over the real query rows with a mask.
    value_weight: the same for the value relations of those maps (softmax(V V^T / sqrt(d)) of the tensor each
    Softmax output weighs, MiniLM's second term), where both graphs name the same value tensor.
    cache: teacher outputs are computed once per sample and kept in "memory", or in .npy files under
    cache_dir ("disk": reused by later runs on the same teacher and data), or recomputed for every
    batch ("none": only to measure what the cache saves).
    bn: "train" uses batch statistics and updates running statistics (torch's default);
    "frozen" keeps BatchNorm in inference mode (small batches, or to keep the statistics).
    keep_zeros: weights (rank >= 2) that are exactly zero stay zero, so sparsity survives fine-tuning.
    renorm: an ONNX student with no BatchNormalization left (folded into its convolutions) trains with
    an identity-initialised BatchNorm after each Conv/Gemm, folded back when written (renorm.py):
    folded students then recover as well as ones with BN kept. Only with bn="train".
    mask: the input whose zeros mark padding (a transformer's attention_mask, [batch, seq]): outputs and
    features shaped [batch, seq, ...] are matched only at its ones, and each batch is cut to its longest
    real sequence when the ONNX student takes any length (padding costs no time). Only for models whose
    real positions do not depend on the padding (the mask hides it), as in BERT-style encoders.
    augment: label-free augmentation for models with token-id inputs (tokens.py): this many extra copies
    of the training samples with `augment_fraction` of their real tokens replaced by random ids of the
    embedding table's vocabulary; the teacher labels them.
    freeze: which of an ONNX student's weights stay fixed: "embeddings" (the tables token-id inputs
    index, which compression did not change: faster steps, freeze.py) or "unchanged" (every
    initializer equal to the ONNX teacher's, so only what compression changed trains); "none" trains all.
    output_loss: how outputs that are not class logits are matched: "mse", or "cosine" (1 - cosine of
    each position's vector: direction, the way embeddings are compared). pooled_weight: with a mask, the
    weight of 1 - cosine between the outputs pooled (averaged) over the real tokens, what a sentence
    embedder deploys (losses.py). warmup: share of the steps over which the rate rises linearly from
    zero before the schedule.
    opset: for exporting a torch student.
    checkpoint: the best epoch's state_dict is saved there as training runs.
    checkpoint_dir: the whole training state is saved there after every epoch (checkpoint.py);
    resume: continue from that folder's state (same options, data and number of processes).
    Under torchrun (torch.distributed), batch_size is the effective batch, split across the processes.
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.7
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    features: tuple = ()
    feature_weight: float = 1.0
    attention_weight: float = 0.0
    value_weight: float = 0.0
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # where the student trains: "cpu" (gloo under torchrun) or "cuda" (NCCL)
    cache: str = "memory"
    cache_dir: str | None = None
    bn: str = "train"
    keep_zeros: bool = True
    renorm: bool = True
    mask: str | None = None
    augment: int = 0
    augment_fraction: float = DEFAULT_AUGMENT_FRACTION
    freeze: str = "none"
    output_loss: str = "mse"
    pooled_weight: float = 0.0
    warmup: float = 0.0
    opset: int = 17
    checkpoint: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.temperature > 0, f"temperature must be positive, got {self.temperature}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.cache in CACHE_MODES, f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}"),
            (self.bn in BN_MODES, f"bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}"),
            (self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
            (self.device in DEVICES, f"device must be cpu or cuda, got {self.device!r}"),
            (self.feature_weight >= 0, f"feature_weight must be >= 0, got {self.feature_weight}"),
            (self.attention_weight >= 0, f"attention_weight must be >= 0, got {self.attention_weight}"),
            (self.value_weight >= 0, f"value_weight must be >= 0, got {self.value_weight}"),
            (7 <= self.opset <= 23, f"opset must be between 7 and 23, got {self.opset}"),
            (self.mask is None or (isinstance(self.mask, str) and bool(self.mask)),
             f"mask must be an input name, got {self.mask!r}"),
            (self.augment >= 0, f"augment must be >= 0 copies, got {self.augment}"),
            (0.0 < self.augment_fraction <= 1.0, f"augment_fraction must be in (0, 1], got {self.augment_fraction}"),
            (self.augment > 0 or self.augment_fraction == DEFAULT_AUGMENT_FRACTION,
             "augment_fraction only shapes the copies of augment: give augment N too"),
            (self.freeze in FREEZE_MODES, f"freeze must be one of {', '.join(FREEZE_MODES)}, got {self.freeze!r}"),
            (self.output_loss in OUTPUT_LOSSES,
             f"output_loss must be one of {', '.join(OUTPUT_LOSSES)}, got {self.output_loss!r}"),
            (self.pooled_weight >= 0, f"pooled_weight must be >= 0, got {self.pooled_weight}"),
            (self.pooled_weight == 0 or self.mask is not None,
             "pooled_weight pools over the real tokens: give mask (the padding-mask input) too"),
            (0.0 <= self.warmup < 1.0, f"warmup must be a share of the steps in [0, 1), got {self.warmup}"),
            (not self.resume or bool(self.checkpoint_dir), "resume needs checkpoint_dir (where the state was saved)"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"distill: {message}")
        pairs = tuple(tuple(p) for p in self.features)
        if any(len(p) not in (2, 3) or not all(isinstance(n, str) and n for n in p) for p in pairs):
            raise InputError("distill: features must be (teacher tensor, student tensor) name pairs, or triples "
                             "ending in the loss kind (mse or kl)")
        bad = [p[2] for p in pairs if len(p) == 3 and p[2] not in FEATURE_LOSSES]
        if bad:
            raise InputError(f"distill: feature loss must be one of {', '.join(FEATURE_LOSSES)}, got {bad[0]!r}")
        pairs = tuple(p[:2] if len(p) == 3 and p[2] == "mse" else p for p in pairs)  # mse: the plain pair
        object.__setattr__(self, "features", pairs)

    def as_dict(self) -> dict:
        return asdict(self)


def feature_kind(pair: tuple) -> tuple[str, str, str]:
    """(teacher, student, loss kind) of a `features` entry (a plain pair is MSE)."""
    return (pair[0], pair[1], pair[2] if len(pair) == 3 else "mse")


def parse_feature(text: str) -> tuple:
    """`TEACHER=STUDENT` (or one name used on both sides), optionally ending in `:kl` (KL over the last axis,
    for probability tensors) or `:mse` (the default); another `:` suffix stays part of the name (`x:0`)."""
    body, colon, kind = text.rpartition(":")
    kind = kind.strip()
    if not colon or kind not in FEATURE_LOSSES:
        body, kind = text, "mse"
    teacher, eq, student = body.partition("=")
    teacher, student = teacher.strip(), (student.strip() if eq else teacher.strip())
    if not teacher or not student:
        raise InputError(f"--feature {text!r}: expected TEACHER_TENSOR=STUDENT_TENSOR[:kl]")
    return (teacher, student) if kind == "mse" else (teacher, student, kind)
