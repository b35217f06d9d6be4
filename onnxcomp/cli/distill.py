"""`onnxcomp distill --teacher T --student S --data train.npz -o out.onnx`: knowledge distillation.

torch is imported only inside the command (through onnxcomp.distill), so `onnxcomp --help`
stays instant and the other commands work without torch; without it this one ends in one line
naming `pip install 'onnxcomp[torch]'` (exit 2).

Under torchrun (`torchrun --nproc_per_node N -m onnxcomp distill ...`) each process trains on its
shard under DistributedDataParallel and rank 0 alone logs and writes; `--nproc N` starts that on
this machine. The training state is saved after every epoch (--checkpoint-dir, default a folder
OUTPUT.ckpt next to the output, removed once the output is written) and --resume continues from it.
"""

from __future__ import annotations

import click

from onnxcomp.cli.common import data_option, verbosity_options
from onnxcomp.distill.options import DEFAULT_AUGMENT_FRACTION


@click.command("distill")
@click.option("--teacher", required=True, metavar="MODEL.onnx|FILE.py:FN",
              help="Teacher: an ONNX model (run by ONNX Runtime) or a torch factory.")
@click.option("--teacher-weights", type=click.Path(dir_okay=False), help="state_dict file for a torch teacher factory.")
@click.option("--student", required=True, metavar="MODEL.onnx|FILE.py:FN",
              help="Student: a torch factory (trained, then exported) or an ONNX model, e.g. a pruned or "
                   "sparsified one (fine-tuned, weights written back into the same graph).")
@click.option("--student-weights", type=click.Path(dir_okay=False), help="state_dict file for a torch student factory.")
@data_option("--data", "data", "Training data (its calls must stack along a dynamic axis 0).", required=True)
@data_option("--val", "val", "Validation data (the best epoch on it is kept).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output ONNX model.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate (cosine schedule).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--temperature", "-T", default=4.0, show_default=True, help="Softmax temperature of the soft targets.")
@click.option("--alpha", default=0.7, show_default=True,
              help="Weight of the soft-target term against hard-label cross-entropy (0 = plain CE).")
@click.option("--feature", "features", multiple=True, metavar="TEACHER=STUDENT",
              help="Match an intermediate tensor (ONNX tensor or torch submodule name); repeatable.")
@click.option("--feature-weight", default=1.0, show_default=True)
@click.option("--attention-weight", default=0.0, show_default=True,
              help="Weight of matching every attention map (Softmax) teacher and student share, KL over the keys.")
@click.option("--value-weight", default=0.0, show_default=True,
              help="Weight of matching those maps' value relations softmax(V V^T / sqrt(d)), KL.")
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--bn", type=click.Choice(["train", "frozen"]), default="train", show_default=True,
              help="BatchNorm during training: batch statistics (train) or running statistics (frozen).")
@click.option("--mask", metavar="INPUT",
              help="The [batch, seq] input whose zeros mark padding (a transformer's attention_mask): outputs and "
                   "features are matched at its real tokens only, and each batch is cut to its longest sequence.")
@click.option("--augment", default=0, show_default=True, type=click.IntRange(0),
              help="Label-free: add this many copies of the training samples with random tokens (models with "
                   "token-id inputs; the teacher labels them).")
@click.option("--augment-fraction", default=DEFAULT_AUGMENT_FRACTION, show_default=True,
              help="Share of the real tokens a copy replaces by random ids of the embedding table's vocabulary.")
@click.option("--freeze", type=click.Choice(["none", "embeddings", "unchanged"]), default="none", show_default=True,
              help="ONNX student weights kept fixed: the embedding tables, or every weight equal to the teacher's.")
@click.option("--output-loss", type=click.Choice(["mse", "cosine"]), default="mse", show_default=True,
              help="How outputs that are not class logits are matched: squared error, or 1 - cosine per position.")
@click.option("--pooled-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="With --mask: weight of 1 - cosine between the outputs averaged over the real tokens "
                   "(what a sentence embedder deploys).")
@click.option("--warmup", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of the steps over which the rate rises linearly from zero before the schedule.")
@click.option("--keep-zeros/--no-keep-zeros", default=True, show_default=True,
              help="Keep exact zeros in weights at zero (sparsity masks stay fixed).")
@click.option("--cache", type=click.Choice(["memory", "disk", "none"]), default="memory", show_default=True,
              help="Teacher outputs computed once and kept in memory, or on disk (reused across runs).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Folder of the disk cache.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset for exporting a torch student.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Save the best state_dict here as training runs.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False),
              help="Save the training state here after every epoch (kept) [default: OUTPUT.ckpt, removed when done].")
@click.option("--resume", is_flag=True, help="Continue from the state in the checkpoint folder (same options and data).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Train as this many processes on this machine (torch.distributed, DDP); --batch-size is the "
                   "effective batch, split across them. For several machines use torchrun's flags.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the student trains; under torch.distributed cpu uses the gloo backend, cuda NCCL "
                   "(each process on the GPU of its local rank).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True, help="CPU threads for torch and ONNX Runtime.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@verbosity_options
def command(teacher, teacher_weights, student, student_weights, data, val, output, epochs, lr, batch_size,
            temperature, alpha, features, feature_weight, attention_weight, value_weight, weight_decay, optimizer, schedule, bn, mask, augment,
            augment_fraction, freeze, output_loss, pooled_weight, warmup, keep_zeros, cache, cache_dir, opset,
            checkpoint, checkpoint_dir, resume, nproc, device, seed, threads, report_path):
    """Train STUDENT from TEACHER with knowledge distillation and write it as ONNX."""
    import shutil
    import sys
    from pathlib import Path

    from onnxcomp.distill import DistillOptions, parse_feature
    from onnxcomp.distill.distributed import World, WorldMismatch, from_env, local_batch, placement
    from onnxcomp.distill.loading import is_onnx_spec
    from onnxcomp.errors import InputError
    from onnxcomp.graph.save import same_file, save
    from onnxcomp.progress import logger

    out = Path(output)
    for name, path in (("teacher", teacher), ("student", student), ("data", data), ("val", val)):
        if path and same_file(out, str(path)):
            raise InputError(f"{output}: refusing to overwrite the {name} file; choose another output path")
    if not out.parent.is_dir() and str(out.parent):
        raise InputError(f"{out.parent}: output folder does not exist")
    world = from_env()
    processes = world.size if world.distributed else nproc
    if processes > 1:
        local_batch(World(size=processes), batch_size)  # divisible, checked once before any start
    if device != "cpu" and not world.distributed:  # the device of the last local rank, checked before any start
        last = nproc - 1  # --nproc is at least 1
        placement(World(rank=last, size=nproc, local_rank=last, local_size=nproc), device)
    folder = checkpoint_dir or f"{output}.ckpt"
    options = DistillOptions(epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature, alpha=alpha,
                             weight_decay=weight_decay, optimizer=optimizer, schedule=schedule,
                             features=tuple(parse_feature(f) for f in features), feature_weight=feature_weight,
                             attention_weight=attention_weight, value_weight=value_weight,
                             seed=seed, threads=threads, device=device, cache=cache, cache_dir=cache_dir, bn=bn,
                             mask=mask, augment=augment, augment_fraction=augment_fraction, freeze=freeze,
                             output_loss=output_loss, pooled_weight=pooled_weight, warmup=warmup,
                             keep_zeros=keep_zeros, opset=opset, checkpoint=checkpoint,
                             checkpoint_dir=folder, resume=resume)
    if nproc > 1 and not world.distributed:
        from onnxcomp.distill.launch import command_line, launch
        from onnxcomp.errors import require

        require("torch", feature="distillation", extra="torch")
        sys.exit(launch(nproc, command_line(click.get_current_context(), drop=("nproc",))))
    import onnxcomp.distill as distill
    from onnxcomp.report import write_json

    if not world.main:  # rank 0 logs and writes
        logger.setLevel("WARNING")
    try:
        result = distill.run(teacher, student, data, options, val_data=val, teacher_weights=teacher_weights,
                             student_weights=student_weights, world=world)
    except WorldMismatch:
        if world.main:
            raise
        sys.exit(2)  # every rank found it; rank 0 says it
    if not world.main:
        return
    forbid = student if is_onnx_spec(student) else None
    save(result.model, output, forbid=forbid)
    if not checkpoint_dir:  # the default folder served this run only
        shutil.rmtree(folder, ignore_errors=True)
    click.echo(format_result(result, output))
    if report_path:
        write_json(result.as_dict(), report_path)
        click.echo(f"report: {report_path}")


def format_result(result, output: str) -> str:
    from onnxcomp.report import table

    rows = []
    for row in result.history:
        metric = row.get(result.metric)
        rows.append([row["epoch"], f"{row['loss']:.4f}", f"{row['kd']:.4f}" if "kd" in row else "-",
                     f"{row['ce']:.4f}" if "ce" in row else "-",
                     "-" if metric is None else f"{metric:.4f}", f"{row['seconds']:.1f}",
                     "*" if row["epoch"] == result.best_epoch else ""])
    lines = [table(["epoch", "loss", "kd", "ce", result.metric or "val", "seconds", "best"], rows)]
    f = result.final
    if "accuracy" in f:
        teacher_acc = f.get("teacher_accuracy")
        lines.append(f"accuracy ({f['data']}, ONNX Runtime on the written model): student {f['accuracy']:.4f}"
                     + (f", teacher {teacher_acc:.4f}" if teacher_acc is not None else ""))
    t = result.teacher
    cache = t.get("cache")
    if cache in ("memory", "disk"):
        lines.append(f"teacher targets: {t['targets_source']} once in {t['targets_seconds']:.2f} s ({cache} cache)")
    if f.get("masked_tensors"):
        lines.append(f"sparsity kept: {f['masked_zeros']} zero weights in {f['masked_tensors']} tensors")
    what = "fine-tuned in place (same graph)" if result.mode == "onnx-student" else "exported"
    lines.append(f"wrote {output}: {what}, best epoch {result.best_epoch}, {result.seconds:.1f} s total, "
                 f"{result.seconds_per_epoch:.2f} s/epoch"
                 + (f", {result.processes} processes" if result.processes > 1 else ""))
    return "\n".join(lines)
