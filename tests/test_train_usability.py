"""Training as a user meets it: a refused --resume changes nothing, tokens of another (or an
untrained) tokenizer are named, a finished run says how to train longer, derived defaults are
explained, errors name their cause, SIGTERM checkpoints the step in progress and stops like
Ctrl-C (under torchrun too, without a hang), the Python API takes what the README shows, and torchrun prints each message once."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cpu_env, failing_replace, micro_overrides
from test_train import config, data, final_state, losses, write_data  # noqa: F401  (data: a fixture)

from controlfoley.config import ConfigError, Part
from controlfoley.errors import DataError, TrainingError
from controlfoley.train import TrainConfig, train
from controlfoley.train.cli import main as train_main
from controlfoley.train.interrupt import TrainingInterrupted, interrupt_pending, steps_running, terminate_as_interrupt
from controlfoley.train.metrics import read_metrics
from controlfoley.train.provenance import TokenProvenanceWarning


def cli_args(recipe: str, data: Path, out: Path, *extra: str, steps: int = 6, ckpt_every: int = 2) -> list[str]:
    """The command line of test_train.config's run."""
    args = [recipe, "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "4",
            "--warmup-steps", "2", "--log-every", "1", "--ckpt-every", str(ckpt_every), "--val-every", "0", "--num-workers", "0",
            "--no-progress", "--no-tensorboard", *extra]  # fmt: skip
    for k, v in micro_overrides().items():
        args += ["--model", f"{k}={json.dumps(v)}"]
    return args


def with_tokenizer(ds: Path, source: str | None) -> Path:
    """Record in the index where the tokens came from, as `controlfoley extract` does (the
    fingerprint covers features and shards, not this record)."""
    index = json.loads((ds / "index.json").read_text(encoding="utf-8"))
    index["info"]["tokenizer"] = source
    (ds / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return ds


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tokenizer runs with different weights."""
    root = tmp_path_factory.mktemp("tok")
    mel = write_data(root / "mel", n=4, mel=True)
    for name, seed in (("tok", 0), ("tok2", 1)):
        train(config("tokenizer", mel, root / name, steps=1, warmup_steps=0, batch_size=2, seed=seed))
    return root / "tok", root / "tok2"


# -- 1. a refused --resume changes nothing ---------------------------------------------------------
def test_a_refused_resume_leaves_the_run_config_as_it_was(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train_main(cli_args("backbone", data, run, "--stop-at", "2")) == 0
    saved = (run / "config.json").read_bytes()
    assert train_main(["backbone", "--out", str(run), "--resume", "--data", str(tmp_path / "trian")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == saved
    other = write_data(tmp_path / "other", seed=1)
    assert train_main(["backbone", "--out", str(run), "--resume", "--data", str(other)]) == 2
    assert "not the data this run trained on" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == saved
    assert train_main(["backbone", "--out", str(run), "--resume", "--stop-at", "4"]) == 0  # the plain resume works
    assert f"backbone: resuming {run} at step 2 of " in capsys.readouterr().err  # and says where it goes on
    # data that moved is taken, and recorded once the checks passed
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert train_main(["backbone", "--out", str(run), "--resume", "--data", str(moved)]) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    # a fresh run refused before its first step records nothing
    with pytest.raises(DataError):
        train(config("backbone", tmp_path / "gone", tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()  # not even an empty folder with the lock file: a retry starts clean
    (tmp_path / "kept").mkdir()  # a folder that was there before is left in place
    with pytest.raises(DataError):
        train(config("backbone", tmp_path / "gone", tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir()


# -- 2. where the tokens came from -------------------------------------------------------------------
def test_tokens_of_an_untrained_tokenizer_are_named(tmp_path: Path) -> None:
    ds = with_tokenizer(write_data(tmp_path / "mel", n=8), None)
    pattern = rf"dataset {re.escape(str(ds))}: its tokens came from an untrained tokenizer .*\"tokenizer\": null.*--tokenizer TOKENIZER_RUN"
    with pytest.warns(TokenProvenanceWarning, match=pattern) as rec:
        train(config("backbone", ds, tmp_path / "bb", steps=1, warmup_steps=0, val_data=str(ds)))
    assert sum(isinstance(w.message, TokenProvenanceWarning) for w in rec) == 1  # once per run, train and val alike


def test_tokens_of_another_tokenizer_are_named_and_the_same_one_is_quiet(tokenizer_runs: tuple[Path, Path], tmp_path: Path) -> None:
    tok, tok2 = tokenizer_runs
    ds = with_tokenizer(write_data(tmp_path / "ds", n=8), str(tok.resolve()))
    short = {"steps": 1, "warmup_steps": 0}
    copy = tmp_path / "copy.safetensors"
    shutil.copy(tok / "model.safetensors", copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenProvenanceWarning)
        train(config("backbone", ds, tmp_path / "bb", init=str(tok), **short))  # the same path
        train(config("controlnet", ds, tmp_path / "cn", init=str(tmp_path / "bb"), **short))  # through bb's own --init
        train(config("backbone", ds, tmp_path / "bb_copy", init=str(copy), **short))  # equal weights elsewhere
    with pytest.warns(TokenProvenanceWarning, match=r"this run's tokenizer is random .*Train with --init .*tok"):
        train(config("backbone", ds, tmp_path / "bb_noinit", **short))
    with pytest.warns(TokenProvenanceWarning, match=r"comes from .*tok2 \(other paths, and other tokenizer weights\).*--init .*tok"):
        train(config("backbone", ds, tmp_path / "bb2", init=str(tok2), **short))
    gone = with_tokenizer(write_data(tmp_path / "ds_gone", n=8), str(tmp_path / "deleted_run"))
    with pytest.warns(TokenProvenanceWarning, match=r"compared by path only: .*deleted_run no longer holds a model"):
        train(config("backbone", gone, tmp_path / "bb3", init=str(tok), **short))
    # a ControlNet from the backbone run that had no --init: both warnings say what that run lacked
    untrained_init = r"bb_noinit's backbone learned the codes of that random tokenizer .*--init TOKENIZER_RUN"
    random_tokens = r"tokenizer is random \(.*bb_noinit records its tokenizer as never trained\)"
    with pytest.warns(UserWarning, match=untrained_init), pytest.warns(TokenProvenanceWarning, match=random_tokens):
        train(config("controlnet", ds, tmp_path / "cn2", init=str(tmp_path / "bb_noinit"), **short))


def test_a_run_resumed_from_another_folder_compares_the_tokenizer_its_checkpoint_holds(
    tokenizer_runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started with a relative --init (runs/tok) and resumed from another folder warned that
    its tokenizer 'comes from runs/tok (compared by path only: runs/tok no longer holds a model)'
    though the tokens matched (a walkthrough): --init is recorded as given. The resume compares the
    tokenizer its checkpoint holds instead; another dataset's tokens are still named."""
    tok, tok2 = tokenizer_runs
    proj = tmp_path / "proj"
    shutil.copytree(tok, proj / "runs" / "tok")
    ds = with_tokenizer(write_data(proj / "ds", n=8), str((proj / "runs" / "tok").resolve()))
    monkeypatch.chdir(proj)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenProvenanceWarning)
        train(config("backbone", Path("ds"), Path("run"), init="runs/tok", steps=4, warmup_steps=0), stop_at=2)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenProvenanceWarning)
        assert train_main(["backbone", "--out", "proj/run", "--resume", "--data", "proj/ds", "--stop-at", "3"]) == 0
    other = with_tokenizer(write_data(tmp_path / "other_ds", n=8), str(tok2.resolve()))
    cfg = TrainConfig.from_json((proj / "run" / "config.json").read_text(encoding="utf-8"))
    from controlfoley.builder import model_config
    from controlfoley.data.dataset import ShardDataset
    from controlfoley.train.provenance import token_provenance_problems

    problems = token_provenance_problems(cfg, model_config(cfg.preset, **cfg.model_overrides), other, ShardDataset(other).info, resumed_from=proj / "run" / "checkpoints" / "step-00000003")
    assert len(problems) == 1 and "other paths, and other tokenizer weights" in problems[0], problems


# -- 3. a finished run ------------------------------------------------------------------------------
def test_resuming_a_finished_run_says_so_and_how_to_train_longer(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert train_main(cli_args("backbone", data, run, steps=2)) == 0
    capsys.readouterr()
    assert train_main(["backbone", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and f"the run in {run} already finished at step 2" in out.err
    hint = f"--init {run} --init-parts tokenizer,backbone --steps N --out NEW_RUN"
    assert hint in out.err
    assert train_main(["backbone", "--out", str(run), "--resume", "--steps", "4"]) == 2
    assert f"To train longer, start a new run from this one: `controlfoley train backbone {hint}" in capsys.readouterr().err
    # the hint works
    assert train_main(cli_args("backbone", data, tmp_path / "longer", "--init", str(run), "--init-parts", "tokenizer,backbone", steps=4)) == 0
    # fewer --steps on resume is not "train longer": --stop-at ends the run sooner, its schedule kept
    assert train_main([*cli_args("backbone", data, tmp_path / "sooner", steps=6), "--stop-at", "2"]) == 0
    capsys.readouterr()
    assert train_main(["backbone", "--out", str(tmp_path / "sooner"), "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "steps: run 6 vs now 4" in err and "To stop sooner, keep its --steps and give --stop-at 4" in err and "train longer" not in err
    assert train_main(["backbone", "--out", str(tmp_path / "sooner"), "--resume", "--steps", "2"]) == 2  # at step 2 already
    err = capsys.readouterr().err
    assert "It is already at step 2, at or past the 2 asked: its checkpoints so far are in" in err and "--stop-at" not in err
    # the Python API says it too, and writes the final model a kill between the last checkpoint and it lost
    (run / "model.safetensors").unlink()
    cfg = TrainConfig.from_json((run / "config.json").read_text(encoding="utf-8"))
    with pytest.warns(UserWarning, match="already finished at step 2"):
        assert train(cfg, resume=True)["train"] == {}
    assert (run / "model.safetensors").is_file()
    # --stop-at at or before the checkpoint
    assert train_main(cli_args("backbone", data, tmp_path / "part", "--stop-at", "2")) == 0
    capsys.readouterr()
    assert train_main(["backbone", "--out", str(tmp_path / "part"), "--resume", "--stop-at", "2"]) == 0
    assert "is at step 2, at or past --stop-at 2" in capsys.readouterr().err
    # flags the run would refuse are refused, not waved through by "nothing to do"
    assert train_main(["backbone", "--out", str(tmp_path / "part"), "--resume", "--stop-at", "2", "--batch-size", "8"]) == 2
    assert "these differ: batch_size" in capsys.readouterr().err
    assert train_main(["backbone", "--out", str(tmp_path / "part"), "--resume", "--stop-at", "-1"]) == 2
    assert "--stop-at) must be a step >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be a step >= 1"):
        train(cfg, resume=True, stop_at=0)


# -- 4. the warm-up default -------------------------------------------------------------------------
def test_help_and_print_config_explain_the_derived_warm_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_main(["controlnet", "--help"])
    assert "[default: 2800 for the recipe's 140000 steps; a shorter --steps keeps that fraction (2% of --steps)" in " ".join(capsys.readouterr().out.split())
    base = ["controlnet", "--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o"]
    # what it prints is checked as a run checks it first: the preset, part names and overrides
    assert train_main(["controlnet", "--preset", "specmaskfoley_tni", "--data", "d", "--out", "o", "--print-config"]) == 2
    assert "specmaskfoley_tiny" in capsys.readouterr().err  # did you mean
    assert train_main([*base, "--model", 'aligner="plian1d"', "--print-config"]) == 2
    assert "plain1d" in capsys.readouterr().err
    assert train_main([*base, "--model", "control_encoder=null", "--print-config"]) == 2
    assert "add aligner=None, controlnet=None" in capsys.readouterr().err
    assert train_main([*base, "--steps", "1000", "--print-config"]) == 0
    printed = capsys.readouterr().out
    d = json.loads(printed)
    assert d["warmup_steps"] == 20 and "derived from steps" in d["_derived"]["warmup_steps"]
    assert TrainConfig.from_json(printed).warmup_steps == 20  # the Python API reads it as printed
    file = tmp_path / "cfg.json"
    file.write_text(printed, encoding="utf-8")
    assert train_main(["controlnet", "--config", str(file), "--steps", "5000", "--print-config"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["warmup_steps"] == 100 and "_derived" in again  # 2% of the new --steps, not the old 20
    assert train_main([*base, "--steps", "1000", "--warmup-steps", "7", "--print-config"]) == 0
    assert "_derived" not in json.loads(capsys.readouterr().out)  # given: nothing derived
    del d["_derived"]
    file.write_text(json.dumps(d), encoding="utf-8")  # the note deleted: the file fixes the warm-up
    assert train_main(["controlnet", "--config", str(file), "--steps", "5000", "--print-config"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["warmup_steps"] == 20 and "_derived" not in fixed
    # a config printed for another recipe would carry that recipe's defaults into this one: refused
    assert train_main(["backbone", "--config", str(file), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "was written for the 'controlnet' recipe (its 'recipe' field), not 'backbone'" in err and "delete its 'recipe' field" in err
    del d["recipe"]
    file.write_text(json.dumps(d), encoding="utf-8")  # the user's choice: its values taken as given
    assert train_main(["backbone", "--config", str(file), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["uncond_prob"] == d["uncond_prob"]


# -- 5. error wording -------------------------------------------------------------------------------
def test_errors_name_their_cause(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has 16 clips and --val-fraction 0.5 holds 8 of them out for validation, which leaves 8 to train on, fewer than one global batch of 12"):
        train(config("backbone", data, tmp_path / "r1", batch_size=12, val_fraction=0.5))
    with pytest.raises(ConfigError, match=r"^train config: num_workers \(--num-workers\) is -1; it must be a finite number, 0 or more$"):
        config("backbone", data, tmp_path / "r2", num_workers=-1)
    with pytest.raises(DataError, match=rf"--data {re.escape(str(data / 'index.json'))} is a file, not a dataset folder; give its folder: --data {re.escape(str(data))}\. .*`controlfoley extract"):
        train(config("backbone", data / "index.json", tmp_path / "r3"))
    afile = tmp_path / "clips.txt"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"--val-data .*clips.txt is a file, not a dataset folder\. --val-data names a dataset folder written by"):
        train(config("backbone", data, tmp_path / "r4", val_data=str(afile)))



def test_optimiser_numbers_are_refused_as_given_naming_the_flag_and_the_range(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN, inf or negative learning rates, betas outside [0, 1) or not numbers, a negative weight
    decay and a seed the run cannot seed torch with are ConfigErrors when the config is made (torch
    named the scaled LR, overflowed on the seed, or trained on with the negative decay), from Python
    and from the command line, before any run folder. (With the suite's runtime type checks off, as
    users run: they would refuse betas="x" first.)"""
    from jaxtyping import config as typecheck_config

    monkeypatch.setattr(typecheck_config, "jaxtyping_disable", True)
    refused: list[tuple[dict[str, Any], str]] = [
        (dict(base_lr=float("nan")), r"base_lr \(--base-lr\) must be a finite number >= 0, got nan$"),
        (dict(base_lr=-1.0), r"base_lr \(--base-lr\) must be a finite number >= 0, got -1.0$"),  # as typed, not x batch / 256
        (dict(min_lr=float("inf")), r"min_lr \(--min-lr\) must be a finite number >= 0, got inf$"),
        (dict(min_lr=1.0), r"min_lr \(--min-lr\) is 1.0, above the peak LR 1.25e-05 \(base_lr 0.0008 x batch_size 4 / lr_reference_batch 256\)"),
        (dict(weight_decay=-1.0), r"weight_decay \(--weight-decay\) must be a finite number >= 0, got -1.0$"),
        (dict(betas=(1.5, 0.9)), r"betas \(--betas\) must be two numbers, each in \[0, 1\), e.g. --betas 0.9,0.999; got \(1.5, 0.9\)$"),
        (dict(betas="x"), r"betas \(--betas\) must be two numbers.*got 'x'$"),
        (dict(betas=0.9), r"betas \(--betas\) must be two numbers.*got 0.9$"),
        (dict(grad_clip=float("nan")), r"grad_clip \(--grad-clip\) is nan; it must be a finite number, 0 or more$"),
        (dict(adv_weight=float("inf")), r"adv_weight \(--adv-weight\) is inf; it must be a finite number, 0 or more$"),
        (dict(seed=2**70), r"seed \(--seed\) must be in \[-1317620623831, 2635241243368\] .*got 1180591620717411303424; pick a smaller seed$"),
    ]
    for kw, message in refused:
        with pytest.raises(ConfigError, match="^train config: " + message):
            config("tokenizer", data, tmp_path / "run", **kw)
    edge = config("tokenizer", data, tmp_path / "run", base_lr=0, min_lr=0.0, weight_decay=0, betas=[0, 0.5], seed=-1317620623831)
    assert (edge.base_lr, edge.betas, edge.seed) == (0.0, (0.0, 0.5), -1317620623831)
    assert config("tokenizer", data, tmp_path / "run", seed=1_764_300_000_000).seed == 1_764_300_000_000  # a millisecond timestamp, as before
    from controlfoley.train.config import SEED_MAX, TrainConfig
    from controlfoley.train.recipes import step_generator

    step_generator(SEED_MAX, 2**32, stream=7)  # the largest seed still seeds the last generator a run may draw
    with pytest.raises(ValueError, match="Overflow when unpacking long"):
        step_generator(SEED_MAX + 1, 2**32, stream=7)  # one more does not (the limit is torch's, not a guess)
    # a config.json's init_parts written as the flag spells it: parts, not characters
    d = {**edge.to_dict(), "init_parts": "tokenizer,backbone"}
    assert TrainConfig.from_dict(d).init_parts == ("tokenizer", "backbone")
    for flag, value in (("--base-lr", "nan"), ("--min-lr", "-1"), ("--weight-decay", "-1"), ("--betas", "1.5,0.9"), ("--seed", str(2**70))):
        assert train_main(cli_args("tokenizer", data, tmp_path / "cli", flag, value)) == 2
        assert f"error: train config: {flag[2:].replace('-', '_')} ({flag})" in capsys.readouterr().err
    assert train_main(cli_args("tokenizer", data, tmp_path / "cli", "--betas", "x")) == 2  # was a raw ValueError from float()
    assert "error: --betas takes comma-separated numbers, e.g. --betas 0.9,0.999; got 'x'" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_read_metrics_refuses_a_split_that_is_neither_logged_nor_in_the_file(tmp_path: Path) -> None:
    """A typo in `split` is named with the splits there are, not read as a run with no lines."""
    file = tmp_path / "metrics.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in ({"step": 1, "split": "train", "loss": 1.0}, {"step": 1, "split": "probe", "x": 2.0})))
    assert [r["loss"] for r in read_metrics(file, "train")] == [1.0]
    assert read_metrics(file, "val") == []  # a split the loop logs (at each validation), none yet
    assert [r["x"] for r in read_metrics(file, "probe")] == [2.0]  # one the file holds
    assert len(read_metrics(file)) == 2
    with pytest.raises(TrainingError, match=r"^read_metrics: no split 'trian' in .*metrics.jsonl \(did you mean 'train'\?\); the training loop logs 'train', 'val' and this file holds 'probe', 'train'"):
        read_metrics(file, "trian")
    with pytest.raises(TrainingError, match=r"no split 'trian' in .*; the training loop logs 'train', 'val' and this file holds no lines yet"):
        read_metrics(tmp_path / "later" / "metrics.jsonl", "trian")


# -- 6. SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_checkpoints_the_step_in_progress_and_resuming_ends_as_an_uninterrupted_run(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preemption between periodic checkpoints loses no step: the step running when SIGTERM came
    finishes, is checkpointed (step 3, with checkpoints every 2), the run stops as with Ctrl-C and the
    handler is restored; --resume from there ends bit-identical to a run never stopped."""
    import controlfoley.train.loop as loop

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    train_step = loop.Trainer._train_step

    def terminated_in_step_3(self: Any, step: int, batches: Any) -> dict[str, float]:
        if step == 2:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "training left SIGTERM to kill the process"
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_train_step", terminated_in_step_3)  # SIGTERM while step 3 runs
    with pytest.raises(KeyboardInterrupt) as caught:
        train(config("backbone", data, tmp_path / "run"))
    monkeypatch.setattr(loop.Trainer, "_train_step", train_step)
    ckpts = tmp_path / "run" / "checkpoints"
    assert isinstance(caught.value, TrainingInterrupted) and caught.value.signum == signal.SIGTERM
    assert caught.value.checkpoint == ckpts / "step-00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert (ckpts / "latest").read_text() == "step-00000003" and not (tmp_path / "run" / "model.safetensors").exists()
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3]
    train(config("backbone", data, tmp_path / "run"), resume=True)
    train(config("backbone", data, tmp_path / "full"))
    full, resumed = final_state(tmp_path / "full"), final_state(tmp_path / "run")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert losses(tmp_path / "run") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 6


def test_sigterm_to_the_process_group_spares_the_data_loader_workers(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM's scancel, systemd and torchrun's agent signal the whole process group, DataLoader
    workers included, and torch's own worker handler dies on a SIGTERM that is not its parent's: the
    step in progress met a dead worker, and the run stopped at the last periodic checkpoint (step 2),
    losing the steps since. The workers ignore it now: step 3 finishes and is checkpointed, and the
    run ends its workers itself."""
    import multiprocessing
    import subprocess

    import controlfoley.train.loop as loop

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    train_step = loop.Trainer._train_step
    signalled: list[int] = []

    def group_terminated_in_step_3(self: Any, step: int, batches: Any) -> dict[str, float]:
        if step == 2:  # the group: every worker, then this process (not os.killpg: that would reach pytest's parents)
            signalled.extend(c.pid for c in multiprocessing.active_children() if c.pid is not None)
            # from another process, as a scheduler's comes: torch's worker handler exits quietly on its parent's SIGTERM only
            subprocess.run(["kill", "-TERM", *map(str, signalled)], check=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(self, step, batches)

    monkeypatch.setattr(loop.Trainer, "_train_step", group_terminated_in_step_3)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config("backbone", data, tmp_path / "run", num_workers=2))
    assert len(signalled) == 2  # the case under test: two workers were running
    assert not multiprocessing.active_children()  # and they ended with the run (they ignore SIGTERM: not left to the exit handler)
    assert caught.value.checkpoint == tmp_path / "run" / "checkpoints" / "step-00000003"
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3]


def test_sigterm_during_a_validation_or_a_checkpoint_write_stops_the_run_there(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process a SIGTERM that comes after the step's training, during its validation (which
    can outlast a scheduler's grace period) or its periodic checkpoint write, stops the run at that
    step: the validation is left unfinished, the step is checkpointed once, and no further step (and
    checkpoint write) runs first."""
    import controlfoley.train.loop as loop
    from controlfoley.train.recipes import MaskedTokenRecipe

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    checkpoint, val_plan = loop.Trainer._checkpoint, MaskedTokenRecipe.val_plan
    writes: list[int] = []

    def recorded(self: Any, step: int) -> None:
        writes.append(step)
        checkpoint(self, step)

    def terminated_in_write_2(self: Any, step: int) -> None:
        recorded(self, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "_checkpoint", terminated_in_write_2)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config("backbone", data, tmp_path / "ckpt"))
    assert caught.value.checkpoint == tmp_path / "ckpt" / "checkpoints" / "step-00000002" and writes == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "ckpt", "train")] == [1, 2]

    def terminated_in_validation(self: Any, cfg: TrainConfig, model: Any, clip_indices: list[int]) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # during the first of its 4 batches of 4 clips
        return val_plan(self, cfg, model, clip_indices)

    writes.clear()
    monkeypatch.setattr(loop.Trainer, "_checkpoint", recorded)
    monkeypatch.setattr(MaskedTokenRecipe, "val_plan", terminated_in_validation)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config("backbone", data, tmp_path / "val", val_data=str(write_data(tmp_path / "held_out", seed=1)), val_every=2, ckpt_every=100))
    assert caught.value.checkpoint == tmp_path / "val" / "checkpoints" / "step-00000002" and writes == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "val", "train")] == [1, 2] and not read_metrics(tmp_path / "val", "val")


def test_deferred_sigterm_waits_for_the_step_and_a_callers_handler_stays() -> None:
    """While steps run (and always under torchrun) SIGTERM is recorded, a second one too (torchrun's
    workers get it twice: from the process group and from the agent); before the steps, one
    process stops at once."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("this process already handles SIGTERM")
    for deferred in (True, False):
        with terminate_as_interrupt(deferred=deferred), steps_running() if not deferred else contextlib.nullcontext():
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                assert interrupt_pending()
        assert not interrupt_pending() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(TrainingInterrupted), terminate_as_interrupt():  # building the model: nothing to save
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    with pytest.raises(TrainingInterrupted), terminate_as_interrupt(deferred=True):  # what the signal caused: the interruption
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        raise RuntimeError("a peer left the collective")
    with pytest.raises(TrainingError, match="non-finite"), terminate_as_interrupt(deferred=True):  # a real error of the last step keeps its message
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        raise TrainingError("non-finite training loss at step 3")
    assert not interrupt_pending() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    calls: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is mine
            os.kill(os.getpid(), signal.SIGTERM)  # the caller's handler still gets it
            time.sleep(0.01)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_steps(proc: subprocess.Popen, run: Path) -> None:
    """Until the run has logged a step (it is in its loop)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not read_metrics(run / "metrics.jsonl", "train"):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]


def test_sigterm_to_the_cli_checkpoints_the_step_in_progress_and_names_it(data: Path, tmp_path: Path) -> None:
    """Checkpoints every 1000 steps, SIGTERM after a few: the step it came in is written, the message
    names it and --resume; the resumed run goes on from that step."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "controlfoley.train", *cli_args("backbone", data, run, steps=5000, ckpt_every=1000)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cpu_env(OMP_NUM_THREADS="1"))
    try:
        _wait_for_steps(proc, run)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    step = read_metrics(run, "train")[-1]["step"]
    assert (run / "checkpoints" / "latest").read_text() == f"step-{step:08d}"
    assert re.search(rf"interrupted by SIGTERM: the step in progress finished and \S*step-{step:08d} was written; continue with the same command and --resume", err), err[-2000:]
    assert "Traceback" not in err
    assert train_main(["backbone", "--out", str(run), "--resume", "--stop-at", str(step + 1)]) == 0
    assert read_metrics(run, "train")[-1]["step"] == step + 1


@pytest.mark.distributed
def test_sigterm_and_preflight_errors_under_torchrun_stop_every_rank_with_one_message(data: Path, tmp_path: Path) -> None:
    """As SLURM preempts: every process of the job gets SIGTERM (the workers twice: torchrun's agent
    forwards it). Each rank stops after the same step (none left waiting in a collective), that
    step is checkpointed, and the message comes once. A pre-flight error every rank hits is
    printed once too."""
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "controlfoley.train"]
    env = cpu_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*torchrun, *cli_args("backbone", data, run, steps=5000, ckpt_every=1000)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip
    try:
        _wait_for_steps(proc, run)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert err.count("interrupted by SIGTERM") == 1, err[-4000:]
    step = read_metrics(run, "train")[-1]["step"]
    assert (run / "checkpoints" / "latest").read_text() == f"step-{step:08d}", err[-4000:]
    # the ranks stopped by themselves: torchrun's agent did not have to SIGKILL one after its grace period
    assert "Unable to shutdown process" not in err and "forcefully exiting" not in err, err[-3000:]
    bad = subprocess.run([*torchrun, *cli_args("backbone", tmp_path / "missing", tmp_path / "r2")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and bad.stderr.count("dataset folder not found") == 1, bad.stderr[-4000:]


# -- 7. the Python API ------------------------------------------------------------------------------
def test_read_metrics_takes_the_run_folder_and_a_second_train_names_resume_true(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config("backbone", data, run, steps=2))
    rows = read_metrics(run, "train")
    assert len(rows) == 2 and rows == read_metrics(run / "metrics.jsonl", "train")
    with pytest.raises(TrainingError, match="is a folder but not a training run"):
        read_metrics(data)
    with pytest.raises(TrainingError, match="is not a metrics file"):
        read_metrics(run / "model.safetensors")
    with pytest.raises(TrainingError, match="does not exist; give a training run folder"):
        read_metrics(tmp_path / "typo")
    assert read_metrics(tmp_path / "later" / "metrics.jsonl") == []  # not written yet, as while polling a starting run
    with pytest.raises(TrainingError, match=r"pass --resume to continue it \(Python: train\(cfg, resume=True\)\)"):
        train(config("backbone", data, run, steps=2))


def test_model_overrides_take_a_part() -> None:
    from controlfoley import build_model
    from controlfoley.builder import model_config

    part = Part("plain1d", {})  # replaces the preset's aligner whole: plain1d's own default kernel size
    cfg = config("controlnet", Path("d"), Path("o"), model_overrides={**micro_overrides(), "aligner": part})
    assert cfg.model_overrides["aligner"] == {"name": "plain1d", "kernel_size": 3}
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert model_config("specmaskfoley_tiny", **cfg.model_overrides).aligner.name == "plain1d"
    torch.manual_seed(0)
    a = build_model("specmaskfoley_tiny", **{**micro_overrides(), "aligner": part}).aligner.state_dict()
    torch.manual_seed(0)
    b = build_model("specmaskfoley_tiny", **cfg.model_overrides).aligner.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- 8. torchrun prints each message once -------------------------------------------------------------
def test_cli_messages_come_once_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import controlfoley.train.loop as loop
    from controlfoley.train.distributed import mark_reported

    args = cli_args("backbone", tmp_path / "d", tmp_path / "run")

    def raising(error: BaseException) -> Any:
        def fake(*a: Any, **k: Any) -> dict:
            raise error

        return fake

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(loop, "train", raising(KeyboardInterrupt()))
    assert train_main(args) == 130 and capsys.readouterr().err == ""  # Ctrl-C reaches every rank: rank 0 says it
    monkeypatch.setattr(loop, "train", raising(mark_reported(DataError("every rank hit this"), 0)))
    assert train_main(args) == 2 and capsys.readouterr().err == ""
    monkeypatch.setattr(loop, "train", raising(DataError("only rank 1 hit this")))
    assert train_main(args) == 2 and "error (rank 1): only rank 1 hit this" in capsys.readouterr().err
    assert train_main([*args, "--num-workers", "-1"]) == 2 and capsys.readouterr().err == ""  # flags: local rank 0 of each node says it
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert train_main([*args, "--num-workers", "-1"]) == 2 and "num_workers (--num-workers) is -1" in capsys.readouterr().err


def test_tokenizer_origin_follows_a_backbone_runs_init_when_the_tokenizer_run_is_gone(tmp_path: Path) -> None:
    import json

    from controlfoley.train.provenance import _same_tokenizer

    tok = tmp_path / "tok"  # deleted since: it holds no model any more
    bb = tmp_path / "bb"
    (bb / "checkpoints").mkdir(parents=True)
    (bb / "model.safetensors").write_bytes(b"not read")
    (bb / "config.json").write_text(json.dumps({"recipe": "backbone", "init": str(tok), "init_parts": ["tokenizer"]}))
    same, how = _same_tokenizer(str(bb), str(tok))
    assert same and how == "same path"


def test_tensorboard_asked_for_by_name_but_missing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--tensorboard` without the package stops before anything is built, with the pip command;
    the default (TensorBoard when installed) stays quiet and writes metrics.jsonl alone."""
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    args = cli_args("backbone", tmp_path / "no-data", tmp_path / "run")
    args.remove("--no-tensorboard")
    assert train_main([*args, "--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "needed for --tensorboard but is not installed" in err and "pip install 'controlfoley[tensorboard]'" in err
    assert "leave --tensorboard out" in err and not (tmp_path / "run").exists()
    monkeypatch.setenv("RANK", "1")  # under torchrun every rank of a node hits it: local rank 0 says it
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert train_main([*args, "--tensorboard"]) == 2 and capsys.readouterr().err == ""


class _FakeSummaryWriter:
    """torch.utils.tensorboard's SummaryWriter as MetricsLogger uses it; `fail` names the call that
    raises the OSError a full disk gives (`init`: the folder cannot be made, as a file named tb)."""

    fail = "add_scalar"
    calls: dict[str, int] = {}

    def __init__(self, logdir: str, purge_step: int | None = None) -> None:
        self.logdir = logdir
        self._call("init")
        os.makedirs(logdir, exist_ok=True)  # what the real one does first

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.fail:
            raise OSError(28, "No space left on device", os.path.join(self.logdir, "events.out.tfevents.0"))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call("add_scalar")

    def close(self) -> None:
        self._call("close")


def _fake_tensorboard(monkeypatch: pytest.MonkeyPatch, fail: str) -> dict[str, int]:
    import types

    monkeypatch.setattr(_FakeSummaryWriter, "fail", fail)
    monkeypatch.setattr(_FakeSummaryWriter, "calls", {})
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = _FakeSummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return _FakeSummaryWriter.calls


def test_tensorboard_events_that_cannot_be_written_are_one_warning_and_the_run_goes_on(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under RUN/tb raised a bare OSError out of train() at the next log line (the steps
    since the last checkpoint lost, for a second view of metrics.jsonl): now one warning naming the
    folder, the reason and metrics.jsonl, TensorBoard off for the rest of the run, every step trained."""
    calls = _fake_tensorboard(monkeypatch, "add_scalar")
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config("backbone", data, out, tensorboard=True))
    said = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(said) == 1 and calls["add_scalar"] == 1 and calls.get("close", 0) == 0  # off after the first failure
    assert said[0].startswith("TensorBoard events could not be written at step 1: ")
    assert f"cannot write {out / 'tb'}: No space left on device; the disk is full: free space" in said[0]
    assert f"{out / 'metrics.jsonl'} still has every number" in said[0]
    assert [r["step"] for r in read_metrics(out, "train")] == list(range(1, 7)) and (out / "model.safetensors").is_file()


def test_tensorboard_that_cannot_start_or_close_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RUN/tb a file (the writer cannot make its folder), or the last events failing at close: a
    warning, not an OSError; metrics.jsonl is written either way."""
    from controlfoley.train.metrics import MetricsLogger

    _fake_tensorboard(monkeypatch, "none")
    (tmp_path / "tb").write_text("not a folder", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"TensorBoard events could not be written: cannot write .*tb: File exists; check that .*tb is a writable folder"):
        log = MetricsLogger(tmp_path / "metrics.jsonl", enabled=True, tensorboard=True)
    log.log(1, "train", {"loss": 1.0})
    log.close()
    (tmp_path / "tb").unlink()
    calls = _fake_tensorboard(monkeypatch, "close")
    log = MetricsLogger(tmp_path / "metrics.jsonl", enabled=True, tensorboard=True, resume_step=1)
    log.log(2, "train", {"loss": 0.5})
    last = r"could not be written: cannot write .*tb: No space left on device; the disk is full: free space\. Its last events may be missing: "
    with pytest.warns(UserWarning, match=last + r".*metrics\.jsonl still has every number"):
        log.close()
    assert calls == {"init": 1, "add_scalar": 1, "close": 1}
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 0.5]


def test_an_out_folder_that_cannot_be_made_is_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--out` naming a file (or a path below one): exit 2 with one line naming --out, no traceback."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert train_main(cli_args("backbone", data, out)) == 2
        err = capsys.readouterr().err
        assert f"cannot use {out} as the run folder (--out)" in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "x"


def test_an_unfinished_run_loads_its_latest_checkpoint_with_a_warning(data: Path, tmp_path: Path) -> None:
    """from_pretrained (so generate, the pipeline) takes a run stopped with --stop-at, as info, bench
    and --init do: its latest checkpoint, said; a folder that is not a run is named."""
    from controlfoley import from_pretrained
    from controlfoley.checkpoint import read_state_dict
    from controlfoley.errors import CheckpointError

    train(config("backbone", data, tmp_path / "run", steps=4), stop_at=2)
    with pytest.warns(UserWarning, match=r"has no final model .*loading its latest checkpoint, step-00000002"):
        model = from_pretrained(tmp_path / "run")
    saved = read_state_dict(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors")[0]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*empty.*not a training run with checkpoints"):
        from_pretrained(tmp_path / "empty")


def test_a_full_disk_at_a_checkpoint_says_what_is_intact_and_how_to_go_on(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third checkpoint's write fails for want of space: the run stops with the last complete
    checkpoint named, the advice is to free space and --resume, and the resumed run finishes."""
    import controlfoley.checkpoint as checkpoint
    from safetensors import SafetensorError

    real, calls = checkpoint.save_file, []

    def filling(*a: Any, **k: Any) -> None:
        calls.append(1)
        if len(calls) == 5:  # model and state of steps 2 and 4 written; step 6's model write fails
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", filling)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"(?s)checkpoint 6 could not be written: .*the disk is full: free space.*step-00000004, is intact.*--resume"):
        train(config("backbone", data, out, steps=8))
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert train(config("backbone", data, out, steps=8), resume=True)["step"] == 8


def test_without_the_bar_each_log_step_is_a_plain_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-progress (a batch job's log): one line per --log-every step on stderr, and validation."""
    assert train_main(cli_args("backbone", data, tmp_path / "run", "--log-every", "2", "--val-fraction", "0.25", steps=4)) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("backbone ")]
    assert [line.split(":")[0] for line in lines if "step" in line and "validation" not in line] == ["backbone step 2/4", "backbone step 4/4"]
    assert re.search(r"backbone step 2/4: loss \d+\.\d{4}, lr \d\.\d\de-\d\d, \d+\.\d clips/s", lines[0])
    assert any(line.startswith("backbone validation at step 4: ") and "loss" in line for line in lines)


def test_training_warnings_point_at_the_callers_line(data: Path, tmp_path: Path) -> None:
    """A warning from deep inside train() names the user's own line (its file), not loop.py."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config("controlnet", data, tmp_path / "run", steps=2))
    ours = [w for w in caught if "without --init" in str(w.message)]
    assert ours and all(w.filename == __file__ for w in ours), [(w.filename, w.lineno) for w in ours]


# -- a run file that cannot be written: one line naming it, the fix, and how to go on -------------
@pytest.mark.parametrize(
    ("name", "nth", "code", "what", "then"),
    [
        ("config.json", 1, 28, "the run's config", "nothing was recorded yet; then run the same command again"),
        ("data.json", 1, 28, "the run's data record", "no checkpoint was written yet; then continue with the same command and --resume"),
        ("latest", 2, 28, "the 'latest' pointer to checkpoint 4", "step-00000004, is intact; then continue with the same command and --resume"),
        ("config.json", 1, 13, "the run's config", "nothing was recorded yet"),
    ],
)
def test_a_run_file_that_cannot_be_written_is_one_line_naming_it_and_the_run_goes_on(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, nth: int, code: int, what: str,
    then: str,
) -> None:
    """config.json, data.json and the checkpoints/latest pointer: not a raw OSError traceback but
    the CLI's one-line error (exit 2) naming the file (not its temporary name), the fix (a full
    disk: free space; no permission: a writable folder), what is intact; the advice then works."""
    run = tmp_path / "run"
    failing_replace(monkeypatch, lambda src, dst: dst.name == name, nth=nth, code=code)
    assert train_main(cli_args("backbone", data, run, steps=4)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    target = run / "checkpoints" / "latest" if name == "latest" else run / name
    fix = "the disk is full: free space" if code == 28 else "choose a writable folder"
    assert lines[0].startswith(f"error: {what} could not be written: cannot write {target}: {os.strerror(code)}; {fix}"), lines[0]
    assert then in lines[0].lower() and ".tmp-" not in lines[0], lines[0]
    monkeypatch.undo()
    resume = ("--resume",) if "--resume" in then else ()
    assert train_main(cli_args("backbone", data, run, *resume, steps=4)) == 0
    assert (run / "model.safetensors").is_file() and [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3, 4]
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_a_full_disk_while_logging_metrics_or_saving_the_final_model_says_how_to_go_on(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metrics.jsonl line that cannot be written, and the final model: TrainingErrors naming the
    file and the full disk, saying which checkpoint is intact; --resume finishes the run."""
    import io

    import controlfoley.train.metrics as metrics

    lines = []

    class Full(io.StringIO):
        def write(self, text: str) -> int:
            lines.append(text)
            if len(lines) == 3:
                raise OSError(28, os.strerror(28))
            return len(text)

    monkeypatch.setattr(metrics, "open", lambda *a, **k: Full(), raising=False)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=rf"^the training metrics could not be written: cannot write {run / 'metrics.jsonl'}: No space left on device; "
                       r"the disk is full: free space\. The last complete checkpoint, .*step-00000002, is intact; then continue .*--resume"):  # fmt: skip
        train(config("backbone", data, run, steps=4))
    monkeypatch.undo()
    import controlfoley.checkpoint as checkpoint

    real = checkpoint.save_file

    def full_at_the_end(tensors: Any, file: str, *a: Any, **k: Any) -> None:
        if Path(file).parent == run:  # the final model, not a checkpoint's
            raise OSError(28, os.strerror(28))
        real(tensors, file, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_at_the_end)
    with pytest.raises(TrainingError, match=rf"^the final model could not be written: cannot write {run / 'model.safetensors'}: No space left on device; "
                       r"the disk is full: free space.*The last complete checkpoint, .*step-00000004, is intact; then continue .*--resume"):  # fmt: skip
        train(config("backbone", data, run, steps=4), resume=True)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="already finished"):
        train(config("backbone", data, run, steps=4), resume=True)
    assert (run / "model.safetensors").is_file()


def test_resume_removes_the_temporary_files_of_killed_writes_and_only_those(data: Path, tmp_path: Path) -> None:
    """A kill between writing a temporary file and renaming it leaves `.NAME.tmp-<8 random characters>.EXT`
    (as large as the model): a resumed run removes exactly those, in the run folder and its
    checkpoint folders, and only while it holds the run's lock."""
    from controlfoley.train.checkpoints import RunDir

    run = tmp_path / "run"
    train(config("backbone", data, run, steps=4), stop_at=2)
    step = run / "checkpoints" / "step-00000002"
    # and safetensors' own writer's: `.tmp` + 6 letters or digits (a kill while the final model was written)
    stale = [step / ".model.tmp-k2_9zq0a.safetensors", run / ".config.tmp-abcdefgh.json", run / "checkpoints" / ".latest.tmp-0123abcd",
             run / ".tmpAb3dE9", step / ".tmplyHihi"]  # fmt: skip
    kept = [step / ".model.tmp-short.safetensors", run / "notes.tmp-abcdefgh.txt", run / ".mine.tmp-ABCDEFGH.json", run / "keep.safetensors",
            run / ".tmpshort", run / ".tmpTooLong7", run / ".tmp-ab_cd"]  # fmt: skip
    for p in stale + kept:
        p.write_bytes(b"x" * 100)
    (run / ".dir.tmp-abcdefgh").mkdir()
    assert RunDir(run).remove_stale_temps() == [] and all(p.exists() for p in stale)  # not locked here: nothing removed
    train(config("backbone", data, run, steps=4), resume=True)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and (run / ".dir.tmp-abcdefgh").is_dir()


# -- preempted, rescheduled and moved runs ---------------------------------------------------------
def test_a_rescheduled_job_may_split_its_global_batch_otherwise(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job rescheduled on fewer GPUs needs more micro-batches per step to fit: --grad-accum (like
    the number of processes) only splits the run's global batch, so --resume takes it, says what it
    changes, and the run ends as an uninterrupted one up to float rounding; a split that does not
    divide the batch names the --grad-accum values that do (--batch-size stays the run's)."""
    train(config("backbone", data, tmp_path / "full"))
    run = tmp_path / "run"
    train(config("backbone", data, run), stop_at=2)
    capsys.readouterr()
    assert train_main(cli_args("backbone", data, run, "--resume", "--grad-accum", "2", "--stop-at", "4")) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "on 1 process x 2 micro-batches (until now 1 process x 1 micro-batch): the same global batch of 4" in err
    assert train_main(cli_args("backbone", data, run, "--resume", "--grad-accum", "3")) == 2
    err = capsys.readouterr().err
    assert "global batch of 4 clips (--batch-size, fixed for the run) does not split over 1 process x --grad-accum 3" in err
    assert "resume with --grad-accum 1, 2, 4" in err
    assert train_main(cli_args("backbone", data, run, "--resume", "--grad-accum", "1")) == 0
    full, resumed = final_state(tmp_path / "full"), final_state(run)
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6, rtol=1e-5) for k in full)
    assert losses(tmp_path / "full") == pytest.approx(losses(run), rel=1e-6) and len(losses(run)) == 6


def test_auto_resume_starts_a_run_and_its_restarts_resume_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torchrun --max-restarts and SLURM --requeue run a job again with the command line that
    started it: with --auto-resume that line starts the run, resumes it after a kill (bit-identical
    to a run never stopped) and, once it finished, says so; train(cfg, resume="auto") alike."""
    train(config("backbone", data, tmp_path / "full"))
    run = tmp_path / "run"
    line = cli_args("backbone", data, run, "--auto-resume")
    assert train_main([*line, "--stop-at", "2"]) == 0  # the first start, "killed" after step 2
    assert "resuming" not in capsys.readouterr().err
    assert train_main(line) == 0  # the restart
    assert f"resuming {run} at step 2 of 6" in capsys.readouterr().err
    full, resumed = final_state(tmp_path / "full"), final_state(run)
    assert all(torch.equal(full[k], resumed[k]) for k in full) and losses(tmp_path / "full") == losses(run)
    assert train_main(line) == 0 and "already finished at step 6" in capsys.readouterr().err  # a requeue after the end
    with pytest.raises(SystemExit):  # one or the other
        train_main([*line, "--resume"])
    py = tmp_path / "py"
    assert train(config("backbone", data, py), resume="auto", stop_at=2)["step"] == 2
    assert train(config("backbone", data, py), resume="auto")["step"] == 6


def test_a_config_file_given_on_resume_counts_as_its_flags(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A requeued job's command line often carries --config: the same file resumes, and one edited
    to change the run is refused, naming the file and its fields (it was silently ignored)."""
    run, file = tmp_path / "run", tmp_path / "cfg.json"
    file.write_text(json.dumps({"base_lr": 0.002, "log_every": 2}), encoding="utf-8")
    assert train_main(cli_args("backbone", data, run, "--config", str(file), "--stop-at", "2")) == 0
    assert train_main(cli_args("backbone", data, run, "--config", str(file), "--resume", "--stop-at", "4")) == 0
    file.write_text(json.dumps({"base_lr": 0.01, "batch_size": 4}), encoding="utf-8")
    capsys.readouterr()
    assert train_main(cli_args("backbone", data, run, "--config", str(file), "--resume")) == 2
    err = capsys.readouterr().err
    assert f"--config {file} sets others: base_lr: run 0.002 vs file 0.01. Drop --config" in err
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["base_lr"] == 0.002


def test_a_config_file_naming_the_run_folder_resumes_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A job driven by a printed config (`--print-config > cfg.json`, then `train RECIPE --config
    cfg.json --auto-resume`): the file's "out" names the run, but a restart said "already holds a
    run with checkpoints; pass --resume", and --resume "needs --out RUN_DIR" (a walkthrough). The
    file's out now stands for --out in both."""
    run, file = tmp_path / "run", tmp_path / "cfg.json"
    assert train_main([*cli_args("backbone", data, run), "--print-config"]) == 0
    file.write_text(capsys.readouterr().out, encoding="utf-8")
    line = ["backbone", "--config", str(file), "--auto-resume"]
    assert train_main([*line, "--stop-at", "2"]) == 0  # the first start
    capsys.readouterr()
    assert train_main([*line, "--stop-at", "4"]) == 0, capsys.readouterr().err  # the restart resumes
    assert f"resuming {run} at step 2 of 6" in capsys.readouterr().err
    assert train_main(["backbone", "--config", str(file), "--resume"]) == 0  # and --resume without --out
    assert read_metrics(run, "train")[-1]["step"] == 6


def test_the_line_that_started_a_run_resumes_it_when_a_flag_overrides_its_config_file(data: Path, tmp_path: Path) -> None:
    """--auto-resume reruns the job's own line: a --config value that a flag of that line overrode
    is the flag's, not a conflict with the run (it was refused as 'run 0.005 vs file 0.002')."""
    run, file = tmp_path / "run", tmp_path / "cfg.json"
    file.write_text(json.dumps({"base_lr": 0.002, "log_every": 2}), encoding="utf-8")
    line = [*cli_args("backbone", data, run, "--config", str(file), "--base-lr", "0.005", "--auto-resume")]
    assert train_main([*line, "--stop-at", "2"]) == 0
    assert train_main([*line, "--stop-at", "4"]) == 0
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["base_lr"] == 0.005


def test_a_relative_data_folder_resumed_from_elsewhere_is_named_with_the_fix(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json holds --data as given: a relative path, from the folder the run was started in.
    A resume from another folder (a job script that cd's elsewhere) names that, and --data PATH,
    instead of the reader's "dataset folder not found ... create it with extract"."""
    shutil.copytree(data, tmp_path / "proj" / "ds")
    monkeypatch.chdir(tmp_path / "proj")
    train(config("backbone", Path("ds"), Path("run"), steps=4), stop_at=2)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert train_main(["backbone", "--out", "proj/run", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the run's --data ds (its config.json), a path relative to the folder the run was started from, is not found from {tmp_path}" in err
    assert "--data PATH" in err and "extract" not in err
    assert train_main(["backbone", "--out", "proj/run", "--resume", "--data", "proj/ds"]) == 0


# -- 9. a run as the next stage's preset: --preset RUN, or --init RUN alone ----------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOK_1D = {"name": "conv1d_vq", "hidden": 16, "embed_dim": 16, "n_embed": 64}  # examples/tokenizer_1d.py's, micro: grid 1 x 32, 64 codes
VIDEO = {"control_encoder": {"name": "synchformer_clip", "sync_dim": 24, "clip_dim": 12}, "aligner": "ft", "controlnet": {"name": "copy", "n_blocks": 2}}


def stage_args(recipe: str, data: Path, out: Path, *extra: str, steps: int = 2) -> list[str]:
    """cli_args without --preset and --model: what the next stage of a chain types."""
    return [recipe, "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "4", "--warmup-steps", "0", "--log-every", "1",
            "--ckpt-every", "1", "--val-every", "0", "--num-workers", "0", "--no-progress", "--no-tensorboard", *extra]  # fmt: skip


def model_flags(overrides: dict[str, Any]) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--model", f"{k}={json.dumps(v)}")]


def _forget_tokenizer_1d() -> None:
    """As in a process that never loaded examples/tokenizer_1d.py."""
    from controlfoley import TOKENIZERS

    if "conv1d_vq" in TOKENIZERS:
        TOKENIZERS.unregister("conv1d_vq")
    for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(EXAMPLES / "tokenizer_1d.py")]:
        del sys.modules[mod]


@pytest.fixture
def tokenizer_1d(monkeypatch: pytest.MonkeyPatch) -> Any:
    """examples/tokenizer_1d.py, not loaded (a test loads it with --plugin); forgotten after the test,
    and the environment variable --plugin sets restored."""
    from controlfoley._registry import PLUGIN_ENV

    monkeypatch.setenv(PLUGIN_ENV, "")
    monkeypatch.delenv(PLUGIN_ENV)
    _forget_tokenizer_1d()
    yield str(EXAMPLES / "tokenizer_1d.py")
    _forget_tokenizer_1d()


def _recorded(run: Path) -> Any:
    """The model config a run's latest checkpoint records."""
    from controlfoley.checkpoint import config_from_metadata, read_metadata
    from controlfoley.train.checkpoints import resolve_model_file

    file = resolve_model_file(run)
    return config_from_metadata(read_metadata(file), file)


def test_each_stage_builds_the_model_of_the_run_it_starts_from_without_repeating_its_model_flags(
    tokenizer_1d: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tokenizer -> backbone -> controlnet, the first on specmaskgit_tiny with a plugin's tokenizer
    and a smaller backbone: the backbone stage is `--init TOK` alone (its preset: that run's model),
    the controlnet stage `--preset BB` with --model flags that add the video parts on top. Each builds
    what the repeated flags build, config.json holds the preset and the overrides (no path), and the
    run resumes with the source run gone. Without the plugin, or without the video parts, the error
    names the fix."""
    from controlfoley.builder import model_config

    ds = write_data(tmp_path / "ds", n=8, mel=True, grid=(1, 32))
    tok, bb, cn = tmp_path / "tok", tmp_path / "bb", tmp_path / "cn"
    first = {"tokenizer": TOK_1D, "backbone": micro_overrides()["backbone"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the recipes' advice (no --init, untracked tokens): not what is tested here
        assert train_main(stage_args("tokenizer", ds, tok, "--plugin", tokenizer_1d, "--preset", "specmaskgit_tiny", *model_flags(first), steps=1)) == 0
        _forget_tokenizer_1d()  # a new process: the plugin is named, with the flag that loads it
        capsys.readouterr()
        assert train_main(stage_args("backbone", ds, bb, "--init", str(tok))) == 2
        err = capsys.readouterr().err
        assert f"--init {tok} (whose model this run builds, without --preset): its model needs a part that is not registered here (tokenizer 'conv1d_vq')" in err
        assert f"--plugin {tokenizer_1d}" in err
        assert train_main(stage_args("backbone", ds, bb, "--plugin", tokenizer_1d, "--init", str(tok))) == 0
        saved = json.loads((bb / "config.json").read_text(encoding="utf-8"))
        assert saved["preset"] == "specmaskgit_tiny" and saved["init"] == str(tok)
        assert model_config(saved["preset"], **saved["model_overrides"]) == model_config("specmaskgit_tiny", **first) == _recorded(bb)
        # the controlnet recipe needs video parts that a specmaskgit model lacks: the flags that add them
        assert train_main(stage_args("controlnet", ds, cn, "--preset", str(bb), "--init", str(bb))) == 2
        err = capsys.readouterr().err
        assert "has no video parts (control_encoder, aligner, controlnet), and the controlnet recipe trains the ControlNet" in err
        assert "--model control_encoder='{\"name\": \"synchformer_clip\"" in err and "(those of preset 'specmaskfoley_tiny'" in err
        line = stage_args("controlnet", ds, cn, "--preset", str(bb), "--init", str(bb), *model_flags(VIDEO), steps=3)
        assert train_main([*line, "--stop-at", "1"]) == 0
        saved = json.loads((cn / "config.json").read_text(encoding="utf-8"))
        repeated = {**first, **VIDEO}  # what the flags of every stage, repeated, build
        assert saved["preset"] == "specmaskgit_tiny" and str(bb) not in json.dumps(saved["model_overrides"])
        assert model_config(saved["preset"], **saved["model_overrides"]) == model_config("specmaskgit_tiny", **repeated) == _recorded(cn)
        assert [r["path"] for r in saved["plugins"]] == [str(Path(tokenizer_1d).resolve())]  # its own resume loads it
        assert train_main([*line, "--auto-resume", "--stop-at", "2"]) == 0  # the line that started it resumes it
        shutil.rmtree(bb)  # the run is self-contained: its resume does not read the run it started from
        shutil.rmtree(tok)
        assert train_main([*line, "--auto-resume"]) == 0  # not even the line that started it, naming the run that is gone
    assert read_metrics(cn, "train")[-1]["step"] == 3


def test_init_alone_gives_the_preset_and_model_flags_go_on_top_of_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--init RUN without --preset builds that run's model (--model flags on top, as with --preset
    RUN); the line that started such a run resumes it; a --preset that is neither a preset nor a
    readable checkpoint says both, and the Python API takes a run as the preset too."""
    from controlfoley.builder import model_config

    bb, cn = tmp_path / "bb", tmp_path / "cn"
    assert train_main(cli_args("backbone", data, bb, steps=2)) == 0  # specmaskfoley_tiny with micro overrides
    capsys.readouterr()
    line = stage_args("controlnet", data, cn, "--init", str(bb), "--model", "controlnet.n_blocks=1", "--model", "aligner=plain1d", steps=2)
    assert train_main([*line, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = model_config("specmaskfoley_tiny", **{**micro_overrides(), "controlnet": {"n_blocks": 1}, "aligner": "plain1d"})
    assert printed["preset"] == "specmaskfoley_tiny" and model_config(printed["preset"], **printed["model_overrides"]) == want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main([*line, "--stop-at", "1"]) == 0
        assert train_main([*line, "--auto-resume"]) == 0  # the same line, its preset defaulting to --init's model again
    assert _recorded(cn) == want and read_metrics(cn, "train")[-1]["step"] == 2
    # Python: a run as the preset, flags on top
    cfg = config("controlnet", data, tmp_path / "py", preset=str(bb), model_overrides={"aligner": "plain1d"})
    assert model_config(cfg.preset, **cfg.model_overrides) == model_config("specmaskfoley_tiny", **{**micro_overrides(), "aligner": "plain1d"})
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    # neither a preset nor a readable checkpoint: both named, and how to list the presets
    (tmp_path / "not_a_run").mkdir()
    for bad, why in ((tmp_path / "typo", "does not exist"), (tmp_path / "not_a_run", "no model checkpoint at")):
        assert train_main(stage_args("controlnet", data, cn.with_name("x"), "--preset", str(bad))) == 2
        err = capsys.readouterr().err
        assert f"--preset {bad} is neither a registered preset nor a" in err and why in err, err
        assert "`controlfoley list presets`" in err and "a training run folder, a checkpoint folder or a .safetensors file" in err
    assert train_main(stage_args("controlnet", data, cn.with_name("x"), "--preset", str(bb / "config.json"))) == 2
    assert f"a training run's config.json, not a model config; give the run's folder, --preset {bb}" in capsys.readouterr().err
    # as a model file (--init beside --preset, extract --tokenizer, generate --model): named so, not "header too large"
    from controlfoley.errors import CheckpointError
    from controlfoley.train.checkpoints import resolve_model_file

    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bb / 'config.json'))} is a training run's config.json, not a model file; give the run's folder, {re.escape(str(bb))}$"):
        resolve_model_file(bb / "config.json")
    assert train_main(stage_args("controlnet", data, cn.with_name("y"), "--preset", "specmaskfoley_tiny", "--init", str(bb / "config.json"))) == 2
    assert "is a training run's config.json, not a model file; give the run's folder" in capsys.readouterr().err
    from controlfoley.model import from_pretrained

    with pytest.raises(CheckpointError, match="is a training run's config.json, not a model file; give the run's folder"):
        from_pretrained(bb / "config.json")  # what generate --model and load_model read through (a review: it still said "header too large")
    assert train_main(stage_args("controlnet", data, cn.with_name("x"))) == 2
    assert "needs ['preset']" in capsys.readouterr().err
    # given both, a missing run is named by the flag it was given with
    assert train_main(stage_args("controlnet", data, cn.with_name("x"), "--preset", str(tmp_path / "typo"), "--init", str(tmp_path / "typo"))) == 2
    assert f"--preset {tmp_path / 'typo'} is neither a registered preset nor a checkpoint" in capsys.readouterr().err
    # an empty preset (an unset $PRESET) is the registry's error, not the current folder's model
    for empty in (["--preset", ""], ["--init", ""]):
        assert train_main(stage_args("controlnet", data, cn.with_name("x"), *empty)) == 2
        err = capsys.readouterr().err
        assert "the preset name is empty" in err or "needs ['preset']" in err, err
    # a run folder named like a registered preset: --init alone builds what --init loads, the run
    shutil.copytree(bb, tmp_path / "specmaskfoley_synthetic")
    with contextlib.chdir(tmp_path):
        assert train_main([*stage_args("controlnet", data, Path("named"), "--init", "specmaskfoley_synthetic"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "specmaskfoley_tiny"
    # the line that started a run whose preset came from --init resumes it with that run gone
    again = stage_args("controlnet", data, tmp_path / "cn2", "--init", str(bb), "--model", "aligner=plain1d", steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main([*again, "--stop-at", "1"]) == 0
        shutil.move(bb, tmp_path / "moved")
    with pytest.warns(UserWarning, match=r"--resume: .*bb, the run or checkpoint this run was built from, is gone; the run resumes with the model"):
        assert train_main([*again, "--auto-resume"]) == 0
    assert read_metrics(tmp_path / "cn2", "train")[-1]["step"] == 2
    # a run started with --preset NAME, its --init gone: the starting line without --preset resumes it (the
    # same model, spelled by the flags), and a mistyped preset on resume is still named, not taken for a gone run
    src = tmp_path / "moved"
    named = cli_args("controlnet", data, tmp_path / "cn3", "--init", str(src), steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main([*named, "--stop-at", "1"]) == 0
        shutil.move(src, tmp_path / "moved_again")
        unnamed = [a for i, a in enumerate(named) if a != "--preset" and (i == 0 or named[i - 1] != "--preset")]
        assert train_main([*unnamed, "--auto-resume", "--stop-at", "2"]) == 0
        capsys.readouterr()
        typo = [("specmaskfoley_tiy" if a == "specmaskfoley_tiny" else a) for a in named]
        assert train_main([*typo, "--auto-resume"]) == 2
    assert "preset: run 'specmaskfoley_tiny' vs now 'specmaskfoley_tiy'" in capsys.readouterr().err
    assert read_metrics(tmp_path / "cn3", "train")[-1]["step"] == 2
    # the preset in a --config file: the same line resumes once that run is gone
    src = tmp_path / "moved_again"
    (tmp_path / "cfg.json").write_text(json.dumps({"preset": str(src)}), encoding="utf-8")
    filed = stage_args("controlnet", data, tmp_path / "cn4", "--config", str(tmp_path / "cfg.json"), "--init", str(src), steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main([*filed, "--stop-at", "1"]) == 0
        shutil.move(src, tmp_path / "moved_thrice")
        assert train_main([*filed, "--auto-resume"]) == 0
    assert read_metrics(tmp_path / "cn4", "train")[-1]["step"] == 2


def test_a_controlnet_stage_on_a_backbone_run_names_the_preset_that_adds_the_video_parts() -> None:
    """A specmaskgit_tiny backbone run is specmaskfoley_tiny without its video parts: the error
    gave only three long --model JSON flags, not the simpler --preset specmaskfoley_tiny (which the
    README suggests, and which works). A model that is not that preset's gets the flags alone."""
    from controlfoley.builder import model_config
    from controlfoley.train.config import _check_video_parts

    with pytest.raises(ConfigError, match=r"give --preset specmaskfoley_tiny \(the same model with them: .*\), or add them on top with --model"):
        _check_video_parts(model_config("specmaskgit_tiny"), "controlnet", "--init runs/bb", "specmaskgit_tiny")
    with pytest.raises(ConfigError, match="add them on top with --model") as other:
        _check_video_parts(model_config("specmaskgit_tiny", backbone={"depth": 3}), "controlnet", "--init runs/bb", "specmaskgit_tiny")
    assert "give --preset" not in str(other.value)
