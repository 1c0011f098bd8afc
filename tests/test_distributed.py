"""Two gloo processes under torchrun train the ControlNet recipe to the same parameters (within float
tolerance) as one process with the same global batch; only rank 0 logs and checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import micro_overrides
from test_train import config, final_state, losses, write_data

from controlfoley.train import train
from controlfoley.train.metrics import read_metrics

pytestmark = pytest.mark.distributed


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "controlfoley.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONTROLFOLEY_TYPECHECK": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


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
