"""Two gloo processes under torchrun train the ControlNet recipe to the same parameters (within float
tolerance) as one process with the same global batch; only rank 0 logs and checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cpu_env, micro_overrides
from test_train import config, final_state, losses, write_data

from controlfoley.errors import DataError
from controlfoley.train import train
from controlfoley.train.metrics import read_metrics

pytestmark = pytest.mark.distributed


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "controlfoley.train", *args]
    env = cpu_env(OMP_NUM_THREADS="1", CONTROLFOLEY_TYPECHECK="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def run_ranks(target: Any, *args: Any, n: int = 2, timeout: float = 120) -> list[int | None]:
    """Run `target(rank, *args)` in `n` spawned processes; their exit codes. A rank still alive
    after `timeout` (stuck in a collective) is killed and fails the test. The ranks see no GPU, as
    the subprocesses of `cpu_env` (conftest's `_train_on_the_cpu` patches this process only; on a
    one-GPU machine, rank 1 would otherwise ask for cuda:1)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, *args)) for r in range(n)]
    with pytest.MonkeyPatch.context() as env:  # a spawned child takes os.environ as it is at start()
        env.setenv("CUDA_VISIBLE_DEVICES", "")
        for p in procs:
            p.start()
    for p in procs:
        p.join(timeout)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank(s) {hung} hung (in a collective?)"
    return [p.exitcode for p in procs]


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    data = write_data(tmp_path / "ds", n=20)
    steps = 4
    single = tmp_path / "single"
    with pytest.warns(UserWarning, match="randomly initialised backbone"):
        train(config("controlnet", data, single, steps=steps, batch_size=4, val_fraction=0.2, val_every=2, uncond_prob=0.5, uncond_per="sample"))
    multi = tmp_path / "multi"
    args = ["controlnet", "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(multi), "--steps", str(steps),
            "--batch-size", "4", "--warmup-steps", "2", "--log-every", "1", "--ckpt-every", "2", "--val-every", "2", "--val-fraction", "0.2",
            "--uncond-prob", "0.5", "--uncond-per", "sample", "--num-workers", "0", "--no-progress", "--no-tensorboard"]  # fmt: skip
    for k, v in micro_overrides().items():
        args += ["--model", f"{k}={json.dumps(v)}"]
    proc = torchrun(2, args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = final_state(single), final_state(multi)
    assert bool(b["controlnet.outs.0.weight"].abs().sum() > 0)  # zero-initialised: non-zero only if it trained
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert losses(single) == pytest.approx(losses(multi), rel=1e-5) and len(losses(multi)) == steps  # one writer: no duplicate lines
    val_a, val_b = read_metrics(single / "metrics.jsonl", "val"), read_metrics(multi / "metrics.jsonl", "val")
    assert [r["loss"] for r in val_a] == pytest.approx([r["loss"] for r in val_b], rel=1e-5) and len(val_b) == 2
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["latest", "step-00000002", "step-00000004"]


def test_a_plugin_recipe_trains_under_torchrun(tmp_path: Path) -> None:
    """`torchrun ... -m controlfoley.train NAME --plugin FILE`: every rank loads the plugin from its own
    command line before its subcommands are made (a rank without it would refuse NAME), and the
    recipe's own statistic is summed over both ranks and logged once."""
    data = write_data(tmp_path / "ds", n=8)
    example = Path(__file__).resolve().parents[1] / "examples" / "custom_recipe.py"
    out = tmp_path / "run"
    args = ["controlnet_smoothed", "--plugin", str(example), "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(out),
            "--steps", "2", "--batch-size", "4", "--warmup-steps", "0", "--log-every", "1", "--num-workers", "0", "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    for k, v in micro_overrides().items():
        args += ["--model", f"{k}={json.dumps(v)}"]
    proc = torchrun(2, args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2] and all(r["entropy_masked"] > 0 for r in rows)
    assert json.loads((out / "config.json").read_text())["recipe"] == "controlnet_smoothed"


def _restart_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank 0's vectors sit exactly on all 8 codes; rank 1's on codes 0-1 only. A code is dead only
    where no rank uses it, so here nothing may move (the old per-rank rule made rank 1 alone enter
    a broadcast, which hung)."""
    from controlfoley.tokenizers.specvqgan import VectorQuantizer

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        vq = VectorQuantizer(8, 4, 0.25)
        with torch.no_grad():
            vq.embedding.weight.copy_(torch.eye(8, 4) * 10 + torch.arange(8.0)[:, None])
        w = vq.embedding.weight.detach().clone()
        codes = torch.arange(8) if rank == 0 else torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
        z = w[codes].T.reshape(1, 4, 2, 4)  # [b, e, f, t]: one vector per code listed
        moved_none = vq.restart_dead_codes(z, torch.Generator().manual_seed(1))
        unchanged = torch.equal(vq.embedding.weight, w)
        # now code 7 is unused everywhere: it moves, identically on both ranks
        z2 = w[torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])].T.reshape(1, 4, 2, 4) + 0.01 * rank
        moved = vq.restart_dead_codes(z2, torch.Generator().manual_seed(1))
        torch.save({"moved_none": moved_none, "unchanged": unchanged, "moved": moved, "weight": vq.embedding.weight.detach()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_codebook_restart_agrees_across_ranks(tmp_path: Path) -> None:
    assert run_ranks(_restart_worker, str(tmp_path / "init"), str(tmp_path)) == [0, 0]  # none hung in the restart's collective
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["moved_none"] == r1["moved_none"] == 0 and r0["unchanged"] and r1["unchanged"]
    assert r0["moved"] == r1["moved"] == 1
    assert torch.equal(r0["weight"], r1["weight"])  # one codebook on every rank


def _lock_worker(rank: int, init_file: str, run_dir: str, out_dir: str) -> None:
    from controlfoley.errors import TrainingError
    from controlfoley.train.distributed import DistInfo
    from controlfoley.train.loop import _run_lock

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        try:
            with _run_lock(run_dir, DistInfo(rank, 2, rank, torch.device("cpu"))):
                result = "entered"
        except TrainingError as e:
            result = str(e)
        Path(out_dir, f"rank{rank}.txt").write_text(result, encoding="utf-8")
    finally:
        torch.distributed.destroy_process_group()


def _sigterm_worker(rank: int, init_file: str, data: str, out: str) -> None:
    """Rank 0 gets SIGTERM while it writes the step-2 checkpoint (rank 1 waits for it in the next step's collective)."""
    import signal

    import controlfoley.train.loop as loop
    from controlfoley.train.interrupt import TrainingInterrupted

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    checkpoint = loop.Trainer._checkpoint

    def then_terminate(self: Any, step: int) -> None:
        checkpoint(self, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    loop.Trainer._checkpoint = then_terminate  # type: ignore[method-assign]
    try:
        train(config("backbone", Path(data), Path(out), steps=6, ckpt_every=2, progress=False))
        result = "finished"
    except TrainingInterrupted as e:
        result = f"interrupted, {e.checkpoint}"
    finally:
        torch.distributed.destroy_process_group()
    Path(out).parent.joinpath(f"rank{rank}.txt").write_text(result, encoding="utf-8")


def test_a_sigterm_during_a_checkpoint_write_stops_every_rank_at_that_step(tmp_path: Path) -> None:
    """Under torchrun a signal that came after the step's collective (here while rank 0 writes
    the step-2 checkpoint) is agreed on at once: every rank stops at step 2, with its checkpoint,
    not after another step and another checkpoint."""
    data, run = write_data(tmp_path / "ds", n=8), tmp_path / "run"
    assert run_ranks(_sigterm_worker, str(tmp_path / "init"), str(data), str(run)) == [0, 0]
    results = {(tmp_path / f"rank{r}.txt").read_text(encoding="utf-8") for r in range(2)}
    assert results == {f"interrupted, {run / 'checkpoints' / 'step-00000002'}"}
    assert (run / "checkpoints" / "latest").read_text() == "step-00000002"
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2]


def test_a_locked_run_stops_every_rank(tmp_path: Path) -> None:
    """While another trainer holds the run folder, rank 0 is refused the lock and every rank stops
    with the same error (the others must not go on into DDP set-up and wait there)."""
    from controlfoley.train.checkpoints import RunDir

    with RunDir(tmp_path / "run").lock():
        assert run_ranks(_lock_worker, str(tmp_path / "init"), str(tmp_path / "run"), str(tmp_path)) == [0, 0]
    results = [(tmp_path / f"rank{r}.txt").read_text(encoding="utf-8") for r in range(2)]
    assert results[0] == results[1] and "is in use by another training process" in results[0]
    # any failure of rank 0 stops both: here the run folder's path is a file
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    codes = run_ranks(_lock_worker, str(tmp_path / "init2"), str(tmp_path / "afile"), str(tmp_path))
    assert codes == [0, 0]  # a TrainingError on both ranks, the same one-line message
    results = [(tmp_path / f"rank{r}.txt").read_text(encoding="utf-8") for r in range(2)]
    assert results[0] == results[1] and f"cannot use {tmp_path / 'afile'} as the run folder (--out)" in results[0]


def _agree_worker(rank: int, init_file: str, out_dir: str, case: str = "failures") -> None:
    """agree_before_training on each rank, for each case in turn ("failures": which ranks fail the
    pre-flight checks; "starts": the step each rank would start at); one result line per case."""
    from controlfoley.train.distributed import DistInfo, agree_before_training, reported_by

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info, results = DistInfo(rank, 2, rank, torch.device("cpu")), []
    if case == "failures":
        calls = [(DataError("bad shard") if rank in failing else None, None) for failing in ((1,), (0, 1), ())]
    else:
        calls = [(None, starts[rank]) for starts in ((4, 4), (4, 0))]
    try:
        for failure, start in calls:
            try:
                agree_before_training(info, failure, start)
                results.append("ok")
            except Exception as e:
                results.append(f"{type(e).__name__}|{e}|{reported_by(e)}")
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results), encoding="utf-8")
    finally:
        torch.distributed.destroy_process_group()


def test_a_preflight_failure_stops_every_rank_and_is_printed_by_the_lowest_rank_that_hit_it(tmp_path: Path) -> None:
    assert run_ranks(_agree_worker, str(tmp_path / "init"), str(tmp_path)) == [0, 0]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2))
    # only rank 1 failed: it prints its own error; rank 0 stops too, quietly
    assert r1[0] == "DataError|bad shard|None" and r0[0] == "TrainingError|rank 1 stopped before training: bad shard|1"
    # both failed alike: rank 0 prints it, rank 1 does not repeat it
    assert r0[1] == "DataError|bad shard|None" and r1[1] == "DataError|bad shard|0"
    assert r0[2] == r1[2] == "ok"


def test_ranks_that_would_start_at_different_steps_all_stop(tmp_path: Path) -> None:
    """Each rank reads the run folder itself: a rank that sees no checkpoint (--out on a node's own
    disk, or --auto-resume where one node does not see config.json yet) would train from step 0
    while rank 0 resumes, with other data, in the same DDP: every rank stops, naming the cause."""
    assert run_ranks(_agree_worker, str(tmp_path / "init"), str(tmp_path), "starts") == [0, 0]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2))
    assert r0[0] == r1[0] == "ok"
    assert r0[1].startswith("TrainingError|the ranks do not agree where the run stands: rank 0 at step 4, rank 1 at step 0")
    assert "a file system all nodes share" in r0[1] and r0[1].endswith("|None") and r1[1] == r0[1][: -len("None")] + "0"


def test_only_global_rank_zero_is_main_on_every_node() -> None:
    """Local rank 0 of a second node (global rank 4 of 8) must not write checkpoints or metrics."""
    from controlfoley.train.distributed import DistInfo

    cpu = torch.device("cpu")
    assert DistInfo(rank=0, world_size=8, local_rank=0, device=cpu).is_main
    assert not DistInfo(rank=4, world_size=8, local_rank=0, device=cpu).is_main
    assert not DistInfo(rank=1, world_size=8, local_rank=1, device=cpu).is_main


def test_a_rank_that_did_not_fail_names_the_lowest_failing_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks 1 and 2 of 3 failed their checks, differently: rank 0 names rank 1 (the 2-rank
    subprocess test only ever has one failing rank)."""
    from controlfoley.errors import TrainingError
    from controlfoley.train import distributed as dist_mod
    from controlfoley.train.distributed import DistInfo, agree_before_training, reported_by

    def fake_gather(box: list, mine: object) -> None:
        box[:] = [(None, None), ("DataError: bad shard 1", None), ("DataError: bad shard 2", None)]  # (failure, start step) per rank

    monkeypatch.setattr(dist_mod.tdist, "all_gather_object", fake_gather)
    info = DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(TrainingError, match="rank 1 stopped before training.*bad shard 1") as e:
        agree_before_training(info, None)
    assert reported_by(e.value) == 1


def test_torchrun_variables_are_read_once_and_named_when_wrong(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One parser for the CLI's who-prints logic and the process group; a stray or malformed
    variable is named before anything is built (a RANK left in the shell would otherwise make a
    one-process run that never logs or saves)."""
    from controlfoley.errors import TrainingError
    from controlfoley.train.cli import _ranks
    from controlfoley.train.distributed import init_distributed, torchrun_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() == (0, 1, 0)
    assert init_distributed("cpu").is_main
    monkeypatch.setenv("RANK", "3")
    assert torchrun_env() == (3, 1, 3)  # LOCAL_RANK follows RANK when unset
    with pytest.raises(TrainingError, match=r"RANK=3 but WORLD_SIZE=1.*unset RANK"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(TrainingError, match=r"WORLD_SIZE='two' is not a whole number"):
        torchrun_env()
    assert _ranks() == (0, 0)  # the CLI still prints the error, which training names
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "-1")
    with pytest.raises(TrainingError, match=r"LOCAL_RANK='-1'"):
        init_distributed("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (3, 4, 1) and _ranks() == (3, 1)


def test_each_rank_gets_a_gpu_the_machine_has_or_a_message_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun --nproc_per_node=2` on a one-GPU machine: rank 1's device would be cuda:1, which
    torch refuses only at the first transfer ("invalid device ordinal", deep in a traceback); and a
    misspelt --device was a RuntimeError from torch.device. Faked CUDA with one GPU."""
    from controlfoley.errors import TrainingError
    from controlfoley.train import distributed
    from controlfoley.train.config import ConfigError, TrainConfig

    # the library's own: on a machine with CUDA the suite's autouse fixture (conftest) wraps it
    pick = getattr(distributed._pick_device, "__wrapped__", distributed._pick_device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick("auto", 0) == torch.device("cuda", 0) and pick("cuda", 0) == torch.device("cuda", 0)
    assert pick("cuda:0", 3) == torch.device("cuda", 0) and pick("cpu", 1) == torch.device("cpu")
    with pytest.raises(TrainingError, match=r"LOCAL_RANK=1: this rank would train on cuda:1, but this machine has 1 CUDA GPU.*--nproc_per_node=1.*--device cpu"):
        pick("auto", 1)
    with pytest.raises(TrainingError, match=r"LOCAL_RANK=2: .*cuda:2"):
        pick("cuda", 2)
    with pytest.raises(TrainingError, match=r"--device cuda:1: this machine has 1 CUDA GPU\(s\); use cuda:0 to cuda:0"):
        pick("cuda:1", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick("auto", 1) == torch.device("cpu")
    with pytest.raises(TrainingError, match="CUDA is not available; use --device cpu"):
        pick("cuda", 0)
    for bad in ("CPU", "cuda:x", "cuda:01", "cuda:99999999999999999999", "", ":0"):  # torch.device refuses each too
        with pytest.raises(ConfigError, match=r"device \(--device\) must be auto, cpu, cuda, cuda:N or mps \(or another device torch names\); got"):
            TrainConfig.for_recipe("controlnet", preset="specmaskfoley_tiny", data="d", out="o", device=bad)
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps", "xpu", "gpu"):  # a run recorded on an xpu still resumes
        assert TrainConfig.for_recipe("controlnet", preset="specmaskfoley_tiny", data="d", out="o", device=good).device == good
    for unknown in ("gpu", "cuda0"):  # no device torch knows: named where the rank picks its device
        with pytest.raises(TrainingError, match=rf"--device {unknown}: torch knows no such device; use auto, cpu, cuda, cuda:N or mps"):
            pick(unknown, 0)


def test_a_run_recorded_on_another_device_type_resumes_here(tmp_path: Path) -> None:
    """device is a setting --resume may change; a run recorded with a device torch names but the
    first spelling check of c1a926d did not list (xpu) was refused before the flag was laid over it."""
    from controlfoley.train.cli import build_parser, config_from_args
    from controlfoley.train.config import TrainConfig

    out = tmp_path / "run"
    out.mkdir()
    recorded = json.loads(TrainConfig.for_recipe("backbone", preset="specmaskfoley_tiny", data=str(tmp_path / "d"), out=str(out)).to_json())
    (out / "config.json").write_text(json.dumps({**recorded, "device": "xpu"}))
    assert config_from_args(build_parser().parse_args(["backbone", "--out", str(out), "--resume"])).device == "xpu"
    assert config_from_args(build_parser().parse_args(["backbone", "--out", str(out), "--resume", "--device", "cpu"])).device == "cpu"
