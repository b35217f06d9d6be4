"""Distillation on torch.distributed: sharding, two real CPU processes (gloo), checkpoints and --resume."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")

from onnxcomp.distill import DistillOptions, distributed
from onnxcomp.errors import InputError


def test_shards_cover_every_sample_once_and_are_equal():
    for count, size in ((10, 2), (11, 2), (7, 3)):
        shards = [distributed.shard(distributed.World(rank, size), count, seed=5) for rank in range(size)]
        assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
        together = np.concatenate(shards)
        assert set(together.tolist()) == set(range(count))
        assert len(together) == -(-count // size) * size  # padding only fills the last round
    assert distributed.shard(distributed.SINGLE, 4, seed=0).tolist() == [0, 1, 2, 3]


def test_world_from_torchrun_environment():
    assert distributed.from_env({}) == distributed.SINGLE
    world = distributed.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (world.rank, world.size, world.local_rank, world.local_size, world.main) == (3, 4, 1, 2, False)
    assert distributed.threads_per_process(world, 2) == 1
    with pytest.raises(InputError, match="RANK"):
        distributed.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="multiple of 2"):
        distributed.local_batch(distributed.World(0, 2), 33)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    return {"input": x, "labels": rng.integers(0, 10, n).astype(np.int64)}


def test_resume_continues_exactly_where_training_stopped(models_dir, tmp_path):
    import onnxcomp

    teacher = models_dir / "mlp.onnx"
    data, val = _data(48), _data(16, 1)
    base = {"epochs": 3, "batch_size": 16, "lr": 0.01, "threads": 1}
    whole = onnxcomp.distill(teacher, teacher, data, DistillOptions(**base, checkpoint_dir=str(tmp_path / "a")),
                             val_data=val)

    def stop_after_first(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        onnxcomp.distill(teacher, teacher, data, DistillOptions(**base, checkpoint_dir=str(tmp_path / "b")),
                         val_data=val, progress=stop_after_first)
    lines = []
    resumed = onnxcomp.distill(teacher, teacher, data,
                               DistillOptions(**base, checkpoint_dir=str(tmp_path / "b"), resume=True),
                               val_data=val, progress=lines.append)
    assert any(line.startswith("resuming after epoch 1") for line in lines)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    for a, b in zip(whole.model.graph.initializer, resumed.model.graph.initializer):
        assert a.SerializeToString() == b.SerializeToString()
    with pytest.raises(InputError, match="batch_size 16, this run has 8"):
        onnxcomp.distill(teacher, teacher, data, DistillOptions(**{**base, "batch_size": 8}, resume=True,
                                                                checkpoint_dir=str(tmp_path / "b")))
    with pytest.raises(InputError, match="no checkpoint"):
        onnxcomp.distill(teacher, teacher, data, DistillOptions(**base, resume=True,
                                                                checkpoint_dir=str(tmp_path / "none")))


def _cli(tmp_path, *args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "onnxcomp", "distill", *map(str, args)], check=False,
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def test_two_processes_train_on_shards_and_rank_zero_writes(models_dir, tmp_path):
    np.savez(tmp_path / "train.npz", **_data(64))
    np.savez(tmp_path / "val.npz", **_data(16, 1))
    out, report = tmp_path / "student.onnx", tmp_path / "r.json"
    r = _cli(tmp_path, "--teacher", models_dir / "mlp.onnx", "--student", models_dir / "mlp.onnx",
             "--data", "train.npz", "--val", "val.npz", "-o", out, "--epochs", "2", "--batch-size", "16",
             "--nproc", "2", "--report", report)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("epoch 2/2") == 1  # rank 0 alone logs
    assert "computing targets for 32 samples" in r.stderr  # the teacher runs on this rank's shard
    assert "2 processes" in r.stdout and out.exists()
    result = json.loads(report.read_text())
    assert result["processes"] == 2 and len(result["epochs"]) == 2
    assert not (tmp_path / "student.onnx.ckpt").exists()  # the default checkpoint folder is removed when done


def test_ranks_with_different_data_sizes_fail_in_one_line(models_dir, tmp_path):
    (tmp_path / "loader.py").write_text(textwrap.dedent("""
        import os
        import numpy as np

        def feeds():  # rank 1 sees one call fewer
            count = 4 - int(os.environ.get("RANK", "0"))
            rng = np.random.default_rng(0)
            return [{"input": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(count)]
    """))
    out = tmp_path / "student.onnx"
    r = _cli(tmp_path, "--teacher", models_dir / "mlp.onnx", "--student", models_dir / "mlp.onnx",
             "--data", "loader.py:feeds", "-o", out, "--epochs", "1", "--batch-size", "8", "--nproc", "2")
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("onnxcomp:")]
    assert len(errors) == 1 and "rank 1 sees 24 samples of training data, rank 0 sees 32" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_launch_refuses_a_batch_that_does_not_split_before_starting_anything(models_dir, tmp_path, capsys):
    from onnxcomp.cli import main

    np.savez(tmp_path / "train.npz", **_data(8))
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--teacher", str(models_dir / "mlp.onnx"), "--student", str(models_dir / "mlp.onnx"),
              "--data", str(tmp_path / "train.npz"), "-o", str(tmp_path / "o.onnx"), "--nproc", "2",
              "--batch-size", "7"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "multiple of 2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz"]


def test_launch_passes_on_the_options_given_and_nothing_else():
    import click

    from onnxcomp.cli.distill import command
    from onnxcomp.distill.launch import command_line

    args = ["--teacher", "t.onnx", "--student", "s.onnx", "--data", "d.npz", "-o", "o.onnx", "-T", "2",
            "--no-keep-zeros", "--feature", "a=b", "--feature", "c", "--nproc", "3", "-vv"]
    ctx = command.make_context("distill", list(args))
    assert command_line(ctx, drop=("nproc",)) == [
        "--teacher", "t.onnx", "--student", "s.onnx", "--data", "d.npz", "--output", "o.onnx",
        "--temperature", "2.0", "--feature", "a=b", "--feature", "c", "--no-keep-zeros", "--verbose", "--verbose"]
    assert isinstance(ctx, click.Context)


# -- the backend follows the training device (selection only: this host has no CUDA) ----------

def test_backend_is_gloo_on_cpu_and_nccl_on_the_gpu_of_the_local_rank():
    world = distributed.World(rank=3, size=4, local_rank=1, local_size=2)
    assert distributed.placement(world, "cpu") == distributed.Placement("cpu", "gloo")
    on_gpu = distributed.placement(world, "cuda", cuda_devices=2)
    assert on_gpu.cuda and on_gpu.device == "cuda:1"
    assert dict(p.split(":") for p in on_gpu.backend.split(",")) == {"cpu": "gloo", "cuda": "nccl"}
    with pytest.raises(InputError, match="torch sees no CUDA device"):
        distributed.placement(world, "cuda", cuda_devices=0)
    with pytest.raises(InputError, match="at most 1 processes per machine"):
        distributed.placement(world, "cuda", cuda_devices=1)
    with pytest.raises(InputError, match="device must be one of cpu, cuda"):
        distributed.placement(world, "tpu", cuda_devices=1)


def test_start_joins_with_the_chosen_backend_and_binds_the_rank_to_its_gpu(monkeypatch):
    import torch
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw["backend"], kw["rank"])))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("device", str(device))))
    world = distributed.World(rank=3, size=4, local_rank=1, local_size=2)
    distributed.start(world, distributed.placement(world, "cuda", cuda_devices=2))
    distributed.start(world, distributed.placement(world, "cpu"))
    assert calls == [("device", "cuda:1"), ("init", "cpu:gloo,cuda:nccl", 3), ("init", "gloo", 3)]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_without_cuda_is_one_line_before_any_process_starts(models_dir, tmp_path, capsys):
    from onnxcomp.cli import main

    np.savez(tmp_path / "train.npz", **_data(8))
    for nproc in ("1", "2"):
        with pytest.raises(SystemExit) as exit_info:
            main(["distill", "--teacher", str(models_dir / "mlp.onnx"), "--student", str(models_dir / "mlp.onnx"),
                  "--data", str(tmp_path / "train.npz"), "-o", str(tmp_path / "o.onnx"), "--nproc", nproc,
                  "--batch-size", "8", "--device", "cuda"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and "no CUDA device" in err and "NCCL" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz"]


def test_ddp_is_given_the_gpu_of_its_rank_and_nothing_on_cpu(monkeypatch):
    import torch

    made = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda module, device_ids=None: made.append(device_ids) or module)
    world, module = distributed.World(rank=1, size=2, local_rank=1, local_size=2), torch.nn.Linear(2, 2)
    assert distributed.wrap(distributed.SINGLE, module, "cuda:0") is module  # one process: no DDP
    distributed.wrap(world, module, "cuda:1")
    distributed.wrap(world, module, "cpu")
    distributed.wrap(world, module)
    assert made == [[torch.device("cuda:1")], None, None]


def test_bookkeeping_crosses_as_cpu_tensors_and_adapter_gradients_where_they_are(monkeypatch):
    """Under "cpu:gloo,cuda:nccl" a CPU tensor goes over gloo and a CUDA one over NCCL: the loss sums, the
    best-epoch flag and the data sizes are CPU tensors; the adapters' gradients stay on their device."""
    import torch
    import torch.distributed as dist

    crossed = []

    def record(tensor, *args, **kwargs):
        for t in tensor if isinstance(tensor, list) else [tensor]:
            crossed.append(t.device.type)
    monkeypatch.setattr(dist, "all_reduce", record)
    monkeypatch.setattr(dist, "broadcast", record)
    monkeypatch.setattr(dist, "all_gather", lambda every, mine: (record(mine), [e.copy_(mine) for e in every]))
    world = distributed.World(rank=0, size=2, local_rank=0, local_size=2)
    distributed.sum_across(world, {"loss": 1.0})
    distributed.broadcast_flag(world, True)
    distributed.check_same(world, {"training data": 4})
    assert crossed == ["cpu", "cpu", "cpu"]
    adapter = torch.nn.Linear(2, 2, device="meta")
    adapter.weight.grad = torch.zeros(2, 2, device="meta")
    distributed.average_gradients(world, adapter.parameters())
    assert crossed[3:] == ["meta"]
