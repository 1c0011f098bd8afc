"""Training system: LR schedule, config round trip, the three recipes, resume after SIGKILL (bit
identical on CPU), NaN stop, and every bad input refused before the first step."""

import json
import math
import os
import signal
import subprocess
import warnings
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cpu_env, micro_overrides

from controlfoley.checkpoint import read_state_dict
from controlfoley.config import ConfigError
from controlfoley.data.shards import ShardWriter
from controlfoley.errors import CheckpointError, DataError, TrainingError
from controlfoley.train import TrainConfig, WarmupCosine, scaled_lr, train
from controlfoley.train.cli import build_parser, config_from_args
from controlfoley.train.cli import main as train_main
from controlfoley.train.metrics import read_metrics

GRID, VOCAB = (5, 32), 64  # specmaskfoley_tiny with micro_overrides: 512 frames -> 5 x 32 tokens, 64 codes


def write_data(
    root: Path, n: int = 16, *, grid: tuple[int, int] = GRID, mel: bool = False, clap: bool = True, huge_clap: int | None = None, seed: int = 0,
    info: dict[str, Any] | None = None,
) -> Path:
    """Random clips in the shapes of the micro model: tokens, sync [12, 24], clip [4, 12], clap [16]."""
    g = torch.Generator().manual_seed(seed)
    with ShardWriter(root, shard_size=5, info={"grid": list(grid), "codebook_size": VOCAB, **(info or {})}) as w:
        for i in range(n):
            clip = {
                "tokens": torch.randint(0, VOCAB, grid, generator=g),
                "sync": torch.randn(12, 24, generator=g),
                "clip": torch.randn(4, 12, generator=g),
                "clap": torch.full((16,), 3e38) if i == huge_clap else torch.randn(16, generator=g),
            }
            if mel:
                clip["mel"] = torch.rand(80, 512, generator=g) * 2 - 1
            if not clap:
                del clip["clap"]
            w.add(f"c{i}", clip)
    return root


def config(recipe: str, data: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(
        preset="specmaskfoley_tiny", data=str(data), out=str(out), model_overrides=micro_overrides(), steps=6, batch_size=4,
        warmup_steps=2, log_every=1, ckpt_every=2, val_every=0, num_workers=0, progress=False, tensorboard=False,
    )  # fmt: skip
    return TrainConfig.for_recipe(recipe, **{**base, **kw})


def final_state(out: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(out / "model.safetensors")[0]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "ds")


# -- schedule and config ---------------------------------------------------------------------------
def test_paper_lr_schedule() -> None:
    cfg = TrainConfig.for_recipe("controlnet", preset="specmaskfoley", data="d", out="o")
    assert (cfg.steps, cfg.batch_size, cfg.warmup_steps, cfg.uncond_prob) == (140_000, 64, 2_800, 0.9)
    assert cfg.peak_lr == pytest.approx(2.5e-4) == scaled_lr(1e-3, 64)  # 1e-3 x 64 / 256
    assert scaled_lr(1e-3, 512) == pytest.approx(2e-3)
    s = cfg.lr_schedule()
    assert s(0) == pytest.approx(2.5e-4 / 2800)
    assert s(1399) == pytest.approx(2.5e-4 / 2)
    assert s(2799) == pytest.approx(2.5e-4) and s(2800) == pytest.approx(2.5e-4)  # warm-up end
    assert s(2800 + (140_000 - 2800) // 2) == pytest.approx(1.25e-4)  # half way down the cosine
    assert s(140_000) == 0.0 and s(139_999) < 1e-12  # cosine end
    values = [s(k) for k in range(2800, 140_001, 997)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert WarmupCosine(1.0, 0, 10, 0.1)(0) == 1.0 and WarmupCosine(1.0, 0, 10, 0.1)(10) == pytest.approx(0.1)
    # a run shorter than the recipe keeps its warm-up fraction, longer ones its steps; given ones win
    short = {"preset": "p", "data": "d", "out": "o"}
    assert TrainConfig.for_recipe("controlnet", **short, steps=1_000).warmup_steps == 20
    assert TrainConfig.for_recipe("tokenizer", **short, steps=20).warmup_steps == 0  # 1% of 20 rounds to 0
    assert TrainConfig.for_recipe("controlnet", **short, steps=500_000).warmup_steps == 2_800
    assert TrainConfig.for_recipe("controlnet", **short, steps=7_000).warmup_steps == 140
    # no jump where the run's length crosses the recipe's warm-up: the fraction holds up to the recipe's length
    warmups = [TrainConfig.for_recipe("controlnet", **short, steps=n).warmup_steps for n in (2_799, 2_800, 2_801, 139_999, 140_000)]
    assert warmups == [56, 56, 56, 2_800, 2_800]
    assert TrainConfig.for_recipe("controlnet", **short, base_lr=np.float64(2e-3)).base_lr == 2e-3  # numpy numbers are numbers
    assert TrainConfig.for_recipe("controlnet", **short, steps=np.int64(1_000)).warmup_steps == 20
    assert TrainConfig.for_recipe("controlnet", **short, steps=1_000, warmup_steps=7).warmup_steps == 7


def test_config_round_trip_and_errors() -> None:
    cfg = TrainConfig.for_recipe("backbone", preset="p", data="d", out="o", model_overrides={"backbone": {"depth": 2}}, betas=(0.9, 0.95))
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and again.betas == (0.9, 0.95) and again.init_parts == ("tokenizer",)
    with pytest.raises(ConfigError, match="unknown train config field"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr_warmup": 3})
    with pytest.raises(ConfigError, match="warmup_steps .*set --warmup-steps"):
        cfg.replace(warmup_steps=10**9)
    # tuples given in Python are the lists config.json stores: a resumed run compares equal
    tup = cfg.replace(model_overrides={"tokenizer": {"ch_mult": (1, 2, 2)}})
    assert tup.model_overrides == {"tokenizer": {"ch_mult": [1, 2, 2]}} and TrainConfig.from_json(tup.to_json()) == tup
    with pytest.raises(ConfigError, match="init_parts is empty"):
        cfg.replace(init="runs/tok", init_parts=())
    with pytest.raises(ConfigError, match=r"val_fraction \(--val-fraction\) must be in \[0, 1\) .*got 1.0") as e:
        cfg.replace(val_fraction=1.0)
    assert "uncond_prob" not in str(e.value)  # the one field at fault, not both
    with pytest.raises(ConfigError, match=r"uncond_prob \(--uncond-prob\) must be in \[0, 1\], got 1.5"):
        cfg.replace(uncond_prob=1.5)
    assert cfg.resume_conflicts(cfg.replace(num_workers=7)) == {}
    assert set(cfg.resume_conflicts(cfg.replace(seed=1, preset="q"))) == {"seed", "preset"}


def test_python_dash_m_entry_points_print_warnings_as_the_program_does(tmp_path: Path) -> None:
    """`python -m controlfoley.cli` (what a walkthrough ran) printed each warning with Python's
    `<frozen runpy>:88: UserWarning:` prefix and a source line; the `controlfoley` program prints
    one plain 'warning:' line. Both entry points (and torchrun's `python -m controlfoley.train`) now
    print as the program does."""
    import subprocess
    import sys

    argv = ["extract", "--preset", "specmaskgit_tiny", "--synthetic", "1", "--out", str(tmp_path / "ds")]
    for entry in ("controlfoley.cli", "controlfoley"):
        out = subprocess.run([sys.executable, "-m", entry, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "warning: no tokenizer checkpoint given" in out.stderr and "UserWarning" not in out.stderr, out.stderr[-2000:]
        (tmp_path / "ds").rename(tmp_path / f"ds-{entry}")


def test_a_config_file_of_wrong_types_is_named(tmp_path: Path) -> None:
    """Run as users run it (no test-suite type checks): `"steps": "3"` in a --config file is a
    one-line error naming the field, not a TypeError traceback."""
    import subprocess
    import sys

    for bad, phrase in [
        ('{"steps": "3"}', "steps must be int, got '3' (str)"),
        ('{"shuffle": 1}', "shuffle must be bool, got 1 (int)"),
        ('{"steps": 3,', "is not valid JSON"),
        ("[1]", "holds a list, not a JSON object"),
    ]:
        (tmp_path / "c.json").write_text(bad)
        argv = ["train", "controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--config", str(tmp_path / "c.json"), "--print-config"]
        out = subprocess.run([sys.executable, "-m", "controlfoley", *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and phrase in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    (tmp_path / "c.json").write_text(json.dumps({"base_lr": 1}))  # an int where a float is expected is that float
    argv = ["train", "controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--config", str(tmp_path / "c.json"), "--print-config"]
    out = subprocess.run([sys.executable, "-m", "controlfoley", *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["base_lr"] == 1.0 and '"base_lr": 1.0' in out.stdout


def test_cli_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"steps": 50, "grad_clip": 0.5}))
    rc = train_main(["controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--config", str(tmp_path / "c.json"),
                     "--steps", "7000", "--init-parts", "backbone", "--model", "aligner=plain1d", "--no-shuffle", "--print-config"])  # fmt: skip
    cfg = TrainConfig.from_json(capsys.readouterr().out)
    assert rc == 0 and cfg.steps == 7000 and cfg.grad_clip == 0.5 and cfg.base_lr == 1e-3
    assert cfg.warmup_steps == 140  # the recipe's 2% warm-up fraction of 7,000 steps
    assert cfg.init_parts == ("backbone",) and cfg.model_overrides == {"aligner": "plain1d"} and cfg.shuffle is False
    # an override no builder takes: the run refused it, --print-config wrote it out (rc 0; a walkthrough's r8)
    argv = ["controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--model", "guidance.video_weight=0.2", "--print-config"]
    assert train_main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and "guidance 'multi' got unknown argument(s) ['video_weight']. It accepts: scale, schedule" in out.err
    # what only building finds (a value contradicting the one wired from another part): the run refused
    # it at once, --print-config wrote it out. It builds on the meta device now, reading no weights file
    argv = ["controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--model", "tokenizer.n_mels=64", "--print-config"]
    assert train_main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and "tokenizer 'specvqgan': n_mels=64 contradicts the value wired from the other parts (80)" in out.err
    vocoder = {"name": "hifigan", "checkpoint": "/nowhere/g.pt"}
    argv = ["controlnet", "--preset", "specmaskfoley", "--data", "d", "--out", "o", "--model", f"vocoder={json.dumps(vocoder)}", "--print-config"]
    assert train_main(argv) == 0 and TrainConfig.from_json(capsys.readouterr().out).model_overrides["vocoder"] == vocoder
    # parts the run builds that cannot be built on the meta device are the run's to check, not refused (a review):
    # a schedule making its own tensors, an aligner builder reading a value back
    from conftest import registered

    from controlfoley import ALIGNERS, MASK_SCHEDULES

    ft = ALIGNERS.get("ft")

    def reads_back(**kw: Any) -> Any:
        assert float(torch.ones(1).sum().item()) == 1.0
        return ft(**kw)

    tcos = lambda r: torch.cos(torch.as_tensor(r, dtype=torch.float32) * math.pi / 2)  # noqa: E731
    with registered(MASK_SCHEDULES, "test_tcos", tcos), registered(ALIGNERS, "test_reads_back", reads_back):
        argv = ["controlnet", "--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o", "--model", 'sampler={"mask_schedule": "test_tcos"}',
                "--model", "aligner=test_reads_back", "--print-config"]  # fmt: skip
        assert train_main(argv) == 0, capsys.readouterr().err
        assert TrainConfig.from_json(capsys.readouterr().out).model_overrides["aligner"] == "test_reads_back"


# -- recipes ---------------------------------------------------------------------------------------
def test_controlnet_recipe_trains_only_control(data: Path, tmp_path: Path) -> None:
    init = tmp_path / "bb"
    train(config("backbone", data, init, steps=2))
    out = tmp_path / "cn"
    result = train(config("controlnet", data, out, steps=3, init=str(init), val_fraction=0.25, val_every=3))
    before, after = final_state(init), final_state(out)
    for k, v in after.items():
        if k.startswith(("backbone.", "tokenizer.")):
            assert torch.equal(v, before[k]), k  # frozen, and loaded from the backbone run
    changed = [k for k in after if k.startswith(("controlnet.", "control_encoder.", "aligner.")) and not torch.equal(after[k], _fresh_state()[k])]
    assert any(k.startswith("controlnet.outs") for k in changed) and any(k.startswith("aligner.") for k in changed)
    assert math.isfinite(result["val"]["loss"]) and "acc_masked" in result["train"]
    rows = read_metrics(out / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "val"}
    assert {"loss", "lr", "clips_per_s", "grad_norm"} <= set(rows[0])


def test_a_run_records_the_extractors_of_its_training_features(tmp_path: Path) -> None:
    """The dataset's extraction record (which extractor made each feature) goes into the run's
    checkpoints, for generate to use the same extractors; only the features the model reads."""
    from controlfoley.checkpoint import FEATURES_KEY, read_metadata

    record = {
        "sync": {"extractor": "synthetic_sync", "args": {"dim": 24}, "dim": 24},
        "clip": {"extractor": "clip_openclip", "args": {"weights": "/w/clip.safetensors"}, "dim": 12},
        "clap": {"extractor": "clap_audio_transformers", "args": {"folder": "/w/clap"}, "dim": 16},
        "other": {"extractor": "synthetic_sync", "args": {}, "dim": 3},
    }
    ds = write_data(tmp_path / "ds", n=8, info={"features": record})
    out = tmp_path / "cn"
    train(config("controlnet", ds, out, steps=2))
    want = {k: v for k, v in record.items() if k != "other"}
    assert json.loads(read_metadata(out / "model.safetensors")[FEATURES_KEY]) == want
    assert json.loads(read_metadata(out / "checkpoints" / "step-00000002" / "model.safetensors")[FEATURES_KEY]) == want


def _fresh_state() -> dict[str, torch.Tensor]:
    from controlfoley import build_model

    torch.manual_seed(0)
    return build_model("specmaskfoley_tiny", **micro_overrides()).state_dict()


def test_tokenizer_recipe_reports_codebook(tmp_path: Path) -> None:
    ds = write_data(tmp_path / "mel", n=6, mel=True)
    out = tmp_path / "tok"
    result = train(config("tokenizer", ds, out, steps=2, batch_size=2, val_fraction=0.34, val_every=2))
    for split in ("train", "val"):
        v = result[split]
        assert 1 <= v["codebook_used"] <= VOCAB and 1.0 <= v["perplexity"] <= VOCAB and math.isfinite(v["rec_l1"])
    before, after = _fresh_state(), final_state(out)
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("backbone."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("tokenizer."))


def test_codebook_restarts_are_counted_over_each_log_interval(tmp_path: Path) -> None:
    """Restarts happen at steps 0, 2, 4 (0-based) and log lines at steps 3 and 6 (1-based): the
    count logged is the sum since the previous line, so it is the same total whatever log_every
    is (it used to log only the logging step's own count, which never had a restart)."""
    ds = write_data(tmp_path / "mel", n=6, mel=True)
    kw = dict(steps=6, batch_size=2, codebook_restart_every=2)
    train(config("tokenizer", ds, tmp_path / "every1", log_every=1, **kw))
    train(config("tokenizer", ds, tmp_path / "every3", log_every=3, **kw))
    per_step = [r["codes_restarted"] for r in read_metrics(tmp_path / "every1" / "metrics.jsonl", "train")]
    per_interval = [r["codes_restarted"] for r in read_metrics(tmp_path / "every3" / "metrics.jsonl", "train")]
    assert len(per_step) == 6 and len(per_interval) == 2
    assert all(v == 0 for i, v in enumerate(per_step) if i % 2 == 1) and per_step[0] > 0  # restarts only on their steps
    assert per_interval == [sum(per_step[:3]), sum(per_step[3:])]


def test_codebook_restarts_happen_for_a_negative_seed_too() -> None:
    """The restart seed marks "no restart" with -1: a negative --seed made every step's seed
    negative, and restarts never ran."""
    from controlfoley import build_model
    from controlfoley.train.recipes import get_recipe

    recipe = get_recipe("tokenizer")
    model = build_model("specmaskgit_tiny")
    for seed in (-1, -7, 0, 3):
        cfg = TrainConfig.for_recipe("tokenizer", preset="p", data="d", out="o", seed=seed, codebook_restart_every=2)
        seeds = [int(recipe.plan(cfg, model, step, 1).rows["restart_seed"][0]) for step in range(4)]
        assert seeds[0] >= 0 and seeds[2] >= 0 and seeds[1] == seeds[3] == -1, (seed, seeds)


def test_codebook_restarts_see_the_whole_step_under_gradient_accumulation(tmp_path: Path) -> None:
    """A restart step decides dead codes once, on all the step's clips: with grad_accum=2 it moves
    the same codes as one batch of the same clips (each half-batch alone leaves more codes unused,
    and restarting per micro-batch moved a different, larger set)."""
    ds = write_data(tmp_path / "mel", n=8, mel=True)
    kw = dict(steps=1, warmup_steps=0, batch_size=8, codebook_restart_every=1, log_every=1, ckpt_every=1)
    one = train(config("tokenizer", ds, tmp_path / "accum1", **kw))
    two = train(config("tokenizer", ds, tmp_path / "accum2", grad_accum=2, **kw))
    moved = [read_metrics(tmp_path / run / "metrics.jsonl", "train")[0]["codes_restarted"] for run in ("accum1", "accum2")]
    assert moved[0] > 0 and moved[0] == moved[1]
    assert one["train"]["loss"] == pytest.approx(two["train"]["loss"], rel=1e-5)
    a, b = final_state(tmp_path / "accum1"), final_state(tmp_path / "accum2")
    assert torch.allclose(a["tokenizer.quantize.embedding.weight"], b["tokenizer.quantize.embedding.weight"], atol=1e-5)


def test_tokenizer_adversarial_term_resumes_bit_identical(tmp_path: Path) -> None:
    ds = write_data(tmp_path / "mel", n=4, mel=True)
    kw = dict(steps=2, batch_size=2, adv_weight=0.1, adv_start_step=0, disc_channels=8, ckpt_every=1)
    full = train(config("tokenizer", ds, tmp_path / "full", **kw))
    assert full["train"]["adv_d"] > 0 and "adv_g" in full["train"]
    cfg = config("tokenizer", ds, tmp_path / "split", **kw)
    train(cfg, stop_at=1)
    train(cfg, resume=True)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    disc = [read_state_dict(tmp_path / run / "checkpoints" / f"step-0000000{k}" / "state.safetensors")[0] for run, k in (("full", 1), ("full", 2), ("split", 2))]
    keys = [k for k in disc[0] if k.startswith("aux.disc.")]
    assert keys and any(not torch.equal(disc[0][k], disc[1][k]) for k in keys)  # the discriminator trains
    assert all(torch.equal(disc[1][k], disc[2][k]) for k in keys)  # and resumes exactly


def test_grad_accumulation_matches_full_batch(data: Path, tmp_path: Path) -> None:
    train(config("backbone", data, tmp_path / "a", steps=2))
    train(config("backbone", data, tmp_path / "b", steps=2, grad_accum=2))
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-6)


def test_backbone_without_clap_freezes_the_clap_projection(tmp_path: Path) -> None:
    ds = write_data(tmp_path / "noclap", n=8, clap=False)
    train(config("backbone", ds, tmp_path / "run", steps=2))
    before, after = _fresh_state(), final_state(tmp_path / "run")
    assert torch.equal(before["backbone.cond_proj.weight"], after["backbone.cond_proj.weight"])
    assert not torch.equal(before["backbone.mask_emb"], after["backbone.mask_emb"])  # the unconditional mask trains


# -- resume ----------------------------------------------------------------------------------------
def test_resume_after_stop_is_bit_identical(data: Path, tmp_path: Path) -> None:
    train(config("backbone", data, tmp_path / "full"))
    cfg = config("backbone", data, tmp_path / "split", keep_last=1)
    train(cfg, stop_at=3)
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["latest", "step-00000003"]
    assert train_main(["backbone", "--out", str(tmp_path / "split"), "--resume", "--seed", "1"]) == 2  # would change the run
    assert train_main(["backbone", "--out", str(tmp_path / "split"), "--resume", "--num-workers", "1"]) == 0
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert losses(tmp_path / "full") == losses(tmp_path / "split") and len(losses(tmp_path / "full")) == 6


def test_resume_falls_back_to_the_newest_complete_checkpoint(data: Path, tmp_path: Path) -> None:
    """A newest checkpoint that lost a file, or a deleted `latest` pointer: --resume continues from
    the newest complete checkpoint, says so, and ends bit-identical to an uninterrupted run; with
    nothing complete to fall back on it is refused, naming the ways out."""
    import warnings

    train(config("backbone", data, tmp_path / "full"))
    cfg = config("backbone", data, tmp_path / "split", keep_last=3)
    train(cfg, stop_at=4)
    ckpts = tmp_path / "split" / "checkpoints"
    (ckpts / "step-00000004" / "state.safetensors").unlink()
    with pytest.warns(UserWarning, match="points to step-00000004, which is missing or incomplete; resuming from step-00000002"):
        train(cfg, resume=True, stop_at=5)
    (ckpts / "latest").unlink()
    with pytest.warns(UserWarning, match="no 'latest' pointer; resuming from step-00000005"):
        train(cfg, resume=True)
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    lone = config("backbone", data, tmp_path / "lone", keep_last=1)
    train(lone, stop_at=2)
    (tmp_path / "lone" / "checkpoints" / "step-00000002" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no other checkpoint is complete; restore the folder, or start a new run"):
        train(lone, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary resume says nothing
        train(config("backbone", data, tmp_path / "quiet"), stop_at=2)
        train(config("backbone", data, tmp_path / "quiet"), resume=True, stop_at=4)


def test_a_tokenizer_from_an_official_file_counts_as_trained_and_resumes_without_it(data: Path, tmp_path: Path) -> None:
    """tokenizer={"checkpoint": X}: the run records the tokenizer as trained (its builder loaded
    trained weights), and --resume rebuilds from the run's checkpoint without reading X again."""
    from controlfoley import build_model
    from controlfoley.checkpoint import read_metadata, trained_parts

    tok = micro_overrides()["tokenizer"]
    official = tmp_path / "codebook.ckpt"
    torch.save({"state_dict": build_model("specmaskfoley_tiny", **micro_overrides()).tokenizer.state_dict()}, official)
    overrides = {**micro_overrides(), "tokenizer": {**tok, "checkpoint": str(official)}}
    cfg = config("backbone", data, tmp_path / "run", model_overrides=overrides)
    train(cfg, stop_at=2)
    official.unlink()
    assert train(cfg, resume=True)["step"] == 6
    assert trained_parts(read_metadata(tmp_path / "run" / "model.safetensors")) == {"tokenizer", "backbone"}


def test_two_trainers_cannot_share_a_run_folder(data: Path, tmp_path: Path) -> None:
    """While one trainer holds the run folder (an OS lock, released even on SIGKILL), another one,
    resuming or not, is refused before it writes anything; once it is released the run goes on."""
    from controlfoley.train.checkpoints import RunDir

    cfg = config("backbone", data, tmp_path / "run")
    train(cfg, stop_at=2)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with RunDir(tmp_path / "run").lock():
        with pytest.raises(TrainingError, match=r"is in use by another training process \(pid \d+ on .*\); wait for it"):
            train(cfg, resume=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    assert train(cfg, resume=True)["step"] == 6


def test_a_model_is_found_from_any_part_of_a_run_folder(tmp_path: Path) -> None:
    """The run, its checkpoints folder, the `latest` pointer inside it, or a step folder all name
    the run's latest model (the pointer holds a folder name, not a model)."""
    from controlfoley.train.checkpoints import resolve_model_file

    run = tmp_path / "run"
    for step in (2, 3):
        d = run / "checkpoints" / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"m")
        (d / "state.safetensors").write_bytes(b"s")
    (run / "checkpoints" / "latest").write_text("step-00000003")
    want = run / "checkpoints" / "step-00000003" / "model.safetensors"
    for given in (run, run / "checkpoints", run / "checkpoints" / "latest", want.parent, want):
        assert resolve_model_file(given) == want, given
    (run / "model.safetensors").write_bytes(b"final")  # a finished run: its final model
    assert resolve_model_file(run / "checkpoints" / "latest") == run / "model.safetensors"
    # a user's own folder called checkpoints, and a model file called latest, are taken as they are
    mine = tmp_path / "mine" / "checkpoints"
    mine.mkdir(parents=True)
    (mine / "model.safetensors").write_bytes(b"m")
    assert resolve_model_file(mine) == mine / "model.safetensors"
    (mine / "latest").write_bytes(b"\x80\x00 not text, a model")
    assert resolve_model_file(mine / "latest") == mine / "latest"


def test_a_lock_file_removed_between_open_and_lock_is_taken_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused trainer removes the run folder it created, lock file included, while it still holds
    the lock. A trainer that opened the file just before must not then 'hold' a lock on a removed
    file (which locks nothing): it opens the lock file again."""
    from controlfoley.train.checkpoints import RunDir

    real_open, opened = os.open, []

    def open_then_removed(path: Any, *a: Any, **k: Any) -> int:
        fd = real_open(path, *a, **k)
        opened.append(str(path))
        if len(opened) == 1:
            os.unlink(path)  # what the previous holder's clean-up does at that moment
        return fd

    run = tmp_path / "run"
    monkeypatch.setattr(os, "open", open_then_removed)
    with RunDir(run).lock():
        monkeypatch.setattr(os, "open", real_open)
        assert opened == [str(run / ".lock")] * 2
        with pytest.raises(TrainingError, match="is in use by another training process"):
            with RunDir(run).lock():  # the lock held is the one on the file at the path
                pass
    assert not run.exists()  # made by this lock, holding nothing else: removed again


def test_a_killed_trainer_frees_the_run_even_while_its_forked_workers_live(tmp_path: Path) -> None:
    """A trainer holding the lock forks a worker (as the DataLoader does) and is SIGKILLed: the
    orphaned worker does not keep the run folder locked."""
    import subprocess
    import sys

    from controlfoley.train.checkpoints import RunDir

    script = tmp_path / "holder.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from controlfoley.train.checkpoints import RunDir\n"
        "with RunDir(sys.argv[1]).lock():\n"
        "    if os.fork() == 0:\n"
        "        os.close(1); os.close(2); time.sleep(20); os._exit(0)\n"
        "    print('locked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "locked" and out.returncode == -9, out.stderr[-2000:]
    with RunDir(tmp_path / "run").lock():  # free at once, though the forked child still sleeps
        pass
    # a forked child that leaves the lock's block normally touches neither the lock nor its own files
    child = tmp_path / "child.py"
    child.write_text(
        "import os, sys\n"
        "from controlfoley.train.checkpoints import RunDir\n"
        "with RunDir(sys.argv[1]).lock():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        f = open(sys.argv[2], 'w')\n"
        "if pid == 0:\n"
        "    f.write('child ok'); f.close(); os._exit(0)\n"
        "os.waitpid(pid, 0)\n",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, str(child), str(tmp_path / "run2"), str(tmp_path / "child.txt")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (tmp_path / "child.txt").read_text(encoding="utf-8") == "child ok", out.stderr[-2000:]


def test_resume_refuses_changed_data_but_follows_moved_data(data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    train(config("backbone", data, out, steps=4), stop_at=2)
    other = write_data(tmp_path / "other", seed=1)  # same shapes and size, other clips
    with pytest.raises(TrainingError, match=r"not the data this run trained on: --data \(fingerprint") as err:
        train(config("backbone", other, out, steps=4), resume=True)
    assert str(out / "data.json") in str(err.value)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    result = train(config("backbone", moved, out, steps=4), resume=True)
    assert result["step"] == 4


def test_resume_takes_the_run_folder_however_it_is_spelled_or_moved(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out is the run's folder: a trailing slash, a relative spelling or a moved folder resumes it."""
    train(config("backbone", data, tmp_path / "run", steps=4), stop_at=2)
    (tmp_path / "run").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    assert train_main(["backbone", "--out", "moved/", "--resume", "--stop-at", "3"]) == 0
    assert train_main(["backbone", "--out", str(tmp_path / "moved"), "--resume"]) == 0
    assert json.loads((tmp_path / "moved" / "config.json").read_text(encoding="utf-8"))["out"] == str(tmp_path / "moved")
    assert len(losses(tmp_path / "moved")) == 4 and (tmp_path / "moved" / "model.safetensors").is_file()


@pytest.mark.slow  # a 40-step reference run plus a subprocess start: 20-50 s on 2 cores
def test_resume_after_sigkill_is_bit_identical(data: Path, tmp_path: Path) -> None:
    steps = 40  # long enough that the kill lands mid-run (asserted below), short enough for CI
    ref = tmp_path / "ref"
    train(config("backbone", data, ref, steps=steps, ckpt_every=5))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "controlfoley.train", "backbone", "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--batch-size", "4", "--warmup-steps", "2", "--log-every", "1", "--ckpt-every", "5", "--val-every", "0",
           "--num-workers", "0", "--no-progress", "--no-tensorboard"]  # fmt: skip
    for k, v in micro_overrides().items():
        cmd += ["--model", f"{k}={json.dumps(v)}"]
    env = cpu_env(OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(losses(out)) < 12:
        time.sleep(0.02)
    killed_at = len(losses(out))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 12 <= killed_at < steps, f"the run was not killed mid-run ({killed_at} steps logged): {proc.stderr.read().decode()[-2000:]}"
    result = train(config("backbone", data, out, steps=steps, ckpt_every=5), resume=True)
    assert result["step"] == steps
    a, b = final_state(ref), final_state(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(ref) == losses(out)


# -- failures before any step, and NaN ------------------------------------------------------------
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    from controlfoley.model import from_pretrained

    ds = write_data(tmp_path / "nan", n=16, huge_clap=6)  # finite on disk; overflows in the network
    out = tmp_path / "run"
    cfg = config("backbone", ds, out, batch_size=2, shuffle=False, uncond_prob=0.0, ckpt_every=2)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* at step 4.*step-00000002"):
        train(cfg)
    assert (out / "checkpoints" / "latest").read_text() == "step-00000002"
    model = from_pretrained(out / "checkpoints" / "step-00000002")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(losses(out)) == 3


@pytest.mark.filterwarnings("ignore:controlnet recipe without --init")
def test_bad_inputs_fail_before_any_step(data: Path, tmp_path: Path) -> None:
    wrong = write_data(tmp_path / "wrong", n=8, grid=(5, 16))
    with pytest.raises(DataError, match=r"\[5, 16\].*\[5, 32\].*Extract the dataset for this preset \(specmaskfoley_tiny\)"):
        train(config("backbone", wrong, tmp_path / "r1"))
    # extracted for this preset with another tokenizer (extract --model tokenizer=...), as its index records:
    # the hint said to extract it for the preset again; it names the dataset's tokenizer as a --model flag
    other = {"model": {"name": "specmaskfoley_tiny", "tokenizer": {"name": "frame_vq", "kwargs": {"hop": 16, "n_embed": 64}}}}
    one_row = write_data(tmp_path / "one_row", n=8, grid=(1, 32), info=other)
    with pytest.raises(DataError, match=r"extracted with tokenizer 'frame_vq'; this model builds tokenizer 'specvqgan': train with the dataset's "
                       r"\(--model tokenizer='\{\"name\":\"frame_vq\",\"hop\":16,\"n_embed\":64\}'\)"):  # fmt: skip
        train(config("backbone", one_row, tmp_path / "r1b"))
    # extracted for another preset: that preset is the fix, not the tokenizer flag (a review's h2)
    paper = write_data(tmp_path / "paper", n=8, grid=(5, 53), info={"model": {"name": "specmaskfoley", "n_frames": 848, "tokenizer": {"name": "specvqgan", "kwargs": {}}}})
    with pytest.raises(DataError, match=r"extracted for the model 'specmaskfoley' \(848 mel frames\); this one is 'specmaskfoley_tiny' \(512\): train with --preset specmaskfoley"):
        train(config("backbone", paper, tmp_path / "r1c"))
    odd = write_data(tmp_path / "odd", n=8, info={"model": {"name": "specmaskfoley_tiny", "tokenizer": {"name": "specvqgan", "kwargs": ["embed_dim", 64]}}})
    train(config("backbone", odd, tmp_path / "r1d", steps=1, warmup_steps=0))  # fits: an odd record is no reason to fail (it raised TypeError)
    with pytest.raises(DataError, match="no feature 'mel'"):
        train(config("tokenizer", data, tmp_path / "r2"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        train(config("backbone", data, tmp_path / "r3", batch_size=32))
    (tmp_path / "gone").mkdir()
    with pytest.raises(DataError, match="index.json"):
        train(config("backbone", tmp_path / "gone", tmp_path / "r4"))
    wider = {**micro_overrides(), "control_encoder": {"sync_dim": 32, "clip_dim": 12}}  # the data's sync features are 24 wide
    with pytest.raises(DataError, match="video features do not fit.*sync"):
        train(config("controlnet", data, tmp_path / "r5", model_overrides=wider))
    for r in ("r1", "r2", "r3", "r4", "r5"):
        assert losses(tmp_path / r) == [] and not (tmp_path / r / "checkpoints").exists()


def test_checkpoint_from_another_preset_is_refused(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config("backbone", data, run, steps=2))
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config("backbone", data, run, steps=2))
    with pytest.raises(TrainingError, match="model_overrides"):
        train(config("backbone", data, run, steps=2, model_overrides={**micro_overrides(), "backbone": {"dim": 48}}), resume=True)
    other = {**micro_overrides(), "backbone": {**micro_overrides()["backbone"], "depth": 2}}
    with pytest.raises(CheckpointError, match="(?s)backbone.*Build it like the checkpoint: --model backbone='"):
        train(config("controlnet", data, tmp_path / "cn", model_overrides=other, init=str(run)))
    # a checkpoint of another model placed in a run folder: refused on resume
    run2 = tmp_path / "run2"
    train(config("backbone", data, run2, steps=2, model_overrides=other))
    latest = (run / "checkpoints" / "latest").read_text()
    (run / "checkpoints" / latest / "model.safetensors").write_bytes((run2 / "checkpoints" / latest / "model.safetensors").read_bytes())
    n_before = len(losses(run))
    with pytest.raises(CheckpointError, match="differs from this run"):
        train(config("backbone", data, run, steps=2), resume=True)
    assert len(losses(run)) == n_before


def test_cli_ctrl_c_says_how_to_resume_and_only_rank_0_prints_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import controlfoley.train.loop as loop

    args = ["controlnet", "--preset", "specmaskfoley_tiny", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run")]

    def interrupted(*a: Any, **k: Any) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    assert train_main(args) == 130
    assert "before the first checkpoint" in capsys.readouterr().err
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    for f in ("model.safetensors", "state.safetensors"):
        (ckpt / f).write_bytes(b"")
    (ckpt.parent / "latest").write_text("step-00000002")
    assert train_main(args) == 130
    err = capsys.readouterr().err
    assert "step-00000002 is intact" in err and "--resume" in err
    monkeypatch.setattr(loop, "train", lambda *a, **k: {"step": 1})
    monkeypatch.setenv("RANK", "1")
    assert train_main(args) == 0 and capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert train_main(args) == 0 and json.loads(capsys.readouterr().out) == {"step": 1}


def test_each_recipe_shows_only_its_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for recipe, tokenizer_flag in (("tokenizer", True), ("backbone", False), ("controlnet", False)):
        with pytest.raises(SystemExit):
            train_main([recipe, "--help"])
        out = capsys.readouterr().out
        assert ("--codebook-restart-every" in out) is tokenizer_flag
        assert ("--uncond-prob" in out) is not tokenizer_flag  # backbone/controlnet only
        assert "--steps" in out


def test_checkpoints_record_what_was_trained_and_init_warns_of_untrained_parts(data: Path, tmp_path: Path) -> None:
    """A tokenizer run holds a random backbone: a ControlNet initialised from it used to train
    against that backbone without a word. Runs record their trained parts, cumulatively."""
    from controlfoley.checkpoint import read_metadata, trained_parts

    mel = write_data(tmp_path / "mel", n=4, mel=True)
    train(config("tokenizer", mel, tmp_path / "tok", steps=1, warmup_steps=0, batch_size=2))
    assert trained_parts(read_metadata(tmp_path / "tok" / "model.safetensors")) == {"tokenizer"}
    with pytest.warns(UserWarning, match="--init .*tok: its backbone was never trained .*records trained: tokenizer"):
        train(config("controlnet", data, tmp_path / "cn_bad", steps=1, warmup_steps=0, init=str(tmp_path / "tok")))
    train(config("backbone", data, tmp_path / "bb", steps=1, warmup_steps=0, init=str(tmp_path / "tok")))
    assert trained_parts(read_metadata(tmp_path / "bb" / "model.safetensors")) == {"tokenizer", "backbone"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(config("controlnet", data, tmp_path / "cn", steps=1, warmup_steps=0, init=str(tmp_path / "bb")))
    assert trained_parts(read_metadata(tmp_path / "cn" / "model.safetensors")) == {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}
    # --trainable controlnet: the aligner and control encoder stay as built, and the ControlNet learns from them, so they
    # are the weights it was trained with: recorded (generate requires them recorded, and refused such a run otherwise)
    train(config("controlnet", data, tmp_path / "cn_only", steps=1, warmup_steps=0, init=str(tmp_path / "bb"), trainable=("controlnet",)))
    assert trained_parts(read_metadata(tmp_path / "cn_only" / "model.safetensors")) == {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}


def _strip_record(path: Path) -> None:
    """The checkpoint as written before trained-parts records existed."""
    from controlfoley.checkpoint import TRAINED_KEY, read_state_dict, save_state_dict

    state, meta = read_state_dict(path)
    meta.pop(TRAINED_KEY)
    meta.pop("controlfoley_format", None)
    save_state_dict(path, state, meta)


def test_checkpoints_without_a_record_are_trusted(data: Path, tmp_path: Path) -> None:
    """--init from a checkpoint that records nothing (an older one, the shipped weights) takes its
    parts as trained, and a resume from one keeps recording nothing: generate must not refuse either."""
    from controlfoley.checkpoint import read_metadata, trained_parts

    train(config("backbone", data, tmp_path / "bb", steps=1, warmup_steps=0))
    _strip_record(tmp_path / "bb" / "model.safetensors")
    train(config("controlnet", data, tmp_path / "cn", steps=1, warmup_steps=0, init=str(tmp_path / "bb")))
    assert {"tokenizer", "backbone", "controlnet"} <= trained_parts(read_metadata(tmp_path / "cn" / "model.safetensors"))
    cfg = config("controlnet", data, tmp_path / "cn2", steps=2, warmup_steps=0, ckpt_every=1, init=str(tmp_path / "bb"))
    train(cfg, stop_at=1)
    latest = tmp_path / "cn2" / "checkpoints" / (tmp_path / "cn2" / "checkpoints" / "latest").read_text()
    _strip_record(latest / "model.safetensors")
    train(cfg, resume=True)
    assert trained_parts(read_metadata(tmp_path / "cn2" / "model.safetensors")) is None


def test_resume_restores_the_global_random_state(tmp_path: Path) -> None:
    """A part that draws from the global generators (here the tokenizer's dropout) resumes
    bit-identical only if the checkpoint's RNG state is restored: no built-in step draws from them
    otherwise, so without this test skipping the restore went unnoticed."""
    ds = write_data(tmp_path / "mel", n=4, mel=True)
    ov = micro_overrides()
    ov["tokenizer"] = {**ov["tokenizer"], "dropout": 0.5}
    kw: dict[str, Any] = {"steps": 3, "batch_size": 2, "ckpt_every": 1, "model_overrides": ov}
    train(config("tokenizer", ds, tmp_path / "full", **kw))
    cfg = config("tokenizer", ds, tmp_path / "split", **kw)
    train(cfg, stop_at=1)
    train(cfg, resume=True)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_cuda_rank_resumes_the_generator_rank_0_drew_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun rank 0 saves the states of every CUDA device it sees but draws (dropout) only on
    its own; every rank seeded and drew alike, so rank 1's device must go on from rank 0's own
    device's state, not from rank 0's untouched copy of device 1 (its seed state: the masks of the
    first steps again). Faked CUDA: two devices whose states tell them apart."""
    from controlfoley.train.checkpoints import capture_rng, restore_rng

    drawn, untouched = torch.tensor([7, 7], dtype=torch.uint8), torch.tensor([1, 1], dtype=torch.uint8)
    now: dict[int, torch.Tensor] = {}

    def set_one(state: torch.Tensor, device: Any = "cuda") -> None:
        now[int(device)] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [drawn.clone(), untouched.clone()])  # as rank 0 sees them
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [set_one(s, i) for i, s in enumerate(states)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    tensors, meta = capture_rng(torch.device("cuda", 0))  # rank 0 writes the checkpoint
    restore_rng(tensors, meta, torch.device("cuda", 1))  # rank 1 resumes
    assert torch.equal(now[1], drawn)
    restore_rng(tensors, meta, torch.device("cuda", 0))  # rank 0 (and a one-process run) as before
    assert torch.equal(now[0], drawn)


def test_a_run_resolves_its_model_config_once(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of the run's code and the model it builds come from one resolution of the preset and
    its overrides, on a start and on a resume."""
    import controlfoley.train.loop as loop

    calls: list[str] = []
    resolve = loop.model_config

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(args[0])
        return resolve(*args, **kw)

    monkeypatch.setattr(loop, "model_config", counted)
    train(config("backbone", data, tmp_path / "run", steps=2), stop_at=1)
    assert calls == ["specmaskfoley_tiny"]
    train(config("backbone", data, tmp_path / "run", steps=2), resume=True)
    assert calls == ["specmaskfoley_tiny"] * 2


def test_a_kill_between_a_checkpoint_and_its_pointer_loses_no_step(data: Path, tmp_path: Path) -> None:
    """A kill after step 4's two files were written, before `latest` was moved to it (the pointer
    still names step 2): --resume continues from step 4, says so, leaves its files as they were
    (before, it resumed from step 2, deleted step 4 and trained steps 3-4 again), and ends
    bit-identical to an uninterrupted run."""
    train(config("backbone", data, tmp_path / "full"))
    cfg = config("backbone", data, tmp_path / "split", keep_last=3)
    train(cfg, stop_at=4)
    ckpts = tmp_path / "split" / "checkpoints"
    (ckpts / "latest").write_text("step-00000002", encoding="utf-8")  # as the kill left it
    inode = (ckpts / "step-00000004" / "model.safetensors").stat().st_ino
    with pytest.warns(UserWarning, match="points to step-00000002, but step-00000004 is complete and newer .*resuming from step-00000004. To go back to step-00000002 instead, delete the newer step folders"):
        train(cfg, resume=True)
    assert (ckpts / "step-00000004" / "model.safetensors").stat().st_ino == inode  # read, not deleted and written again
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_without_the_latest_pointer_the_newest_complete_checkpoint_is_resumed(tmp_path: Path) -> None:
    """Resuming from an older checkpoint re-runs the later steps to the same weights, so only the
    folder chosen shows the difference."""
    from controlfoley.train.checkpoints import RunDir

    ds = write_data(tmp_path / "ds")
    train(config("backbone", ds, tmp_path / "run", keep_last=3), stop_at=5)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest").unlink()
    assert RunDir(tmp_path / "run").latest_dir() == ckpts / "step-00000005"


def test_hinge_losses_have_the_vqgan_signs() -> None:
    """D: relu(1 - D(real)) + relu(1 + D(fake)); G: -D(fake), checked by hand with D(x) = x."""
    from torch import nn

    from controlfoley.train.adversarial import PatchDiscriminator, hinge_losses

    class ScaleDisc(PatchDiscriminator):  # a PatchDiscriminator: hinge_losses' argument is type-checked
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return (mel * self.w).flatten(1)

    real, fake = torch.full((2, 3, 4), 0.5), torch.full((2, 3, 4), -0.5)
    g, d = hinge_losses(ScaleDisc(), real, fake)
    torch.testing.assert_close(d, torch.full((2,), 1.0))  # relu(1 - 0.5) + relu(1 - 0.5)
    torch.testing.assert_close(g, torch.full((2,), 0.5))  # -(-0.5)


def test_a_clip_stored_without_a_prompt_always_trains_with_the_unconditional_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """An all-zero clap vector (an untagged line of a tagged list) is no prompt: its rows train with
    the unconditional mask whatever the step's draw; the others follow the draw."""
    from controlfoley import build_model
    from controlfoley.train.recipes import MaskedTokenObjective

    model = build_model("specmaskfoley_tiny", **micro_overrides())
    objective = MaskedTokenObjective(model, use_control=False)
    clap = torch.randn(3, 16)
    clap[1] = 0.0
    batch = {"tokens": torch.randint(0, VOCAB, (3, *model.grid)), "clap": clap}
    mask = torch.ones(3, model.n_tokens, dtype=torch.bool)
    # the model decides (model.loss and the recipes alike): rows with a zero clap take the unconditional mask
    forward = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forward.append(k["cond_on"].clone()) or real_forward(*a, **k))
    objective(batch, mask, torch.tensor([True, True, False]))
    assert forward[-1].tolist() == [True, False, False]
    model.loss(batch["tokens"], cond=clap, uncond_prob=0.0)  # every prompt on, except the one there is not
    assert forward[-1].tolist() == [True, False, True]


def test_a_checkpoint_whose_guidance_resolves_differently_still_resumes(tmp_path: Path) -> None:
    """The guidance rule and sampler are sampling-time settings: a run whose config now resolves them
    differently (removing the video parts used to keep multi-CFG, now gives cfg_text) resumes; a
    difference in the weights' architecture is still refused."""
    import dataclasses

    from controlfoley import Part, build_model
    from controlfoley.checkpoint import save_model
    from controlfoley.errors import CheckpointError
    from controlfoley.train.checkpoints import RunDir

    alone = {**micro_overrides(), "control_encoder": None, "aligner": None, "controlnet": None}
    model = build_model("specmaskfoley_tiny", **alone)
    assert model.config.guidance.name == "cfg_text"
    old = build_model("specmaskfoley_tiny", **alone)
    old.config = dataclasses.replace(old.config, guidance=Part("multi", {"scale": 3.0, "schedule": "linear"}))  # as saved before
    d = tmp_path / "step-00000002"
    save_model(old, d / "model.safetensors")
    RunDir(tmp_path).load_model_weights(d, model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), old.state_dict().values(), strict=True))
    other = build_model("specmaskfoley_tiny", **{**alone, "backbone": {**alone["backbone"], "depth": 2}})
    with pytest.raises(CheckpointError, match="differs from this run's"):
        RunDir(tmp_path).load_model_weights(d, other)


def test_fine_tune_from_the_shipped_weights_by_name(tmp_path: Path) -> None:
    """--init specmaskfoley_synthetic (the name from_pretrained, generate and info take) starts a
    run from the weights in the package; it used to be 'no model checkpoint at specmaskfoley_synthetic'.
    The frozen backbone stays the shipped one, and no part is called untrained."""
    from controlfoley.model import from_pretrained
    from controlfoley.train.checkpoints import resolve_model_file

    shipped = from_pretrained("specmaskfoley_synthetic")
    assert resolve_model_file("specmaskfoley_synthetic").name == "specmaskfoley_synthetic.safetensors"
    enc, f, t = shipped.control_encoder, *shipped.grid
    g = torch.Generator().manual_seed(0)
    with ShardWriter(tmp_path / "ds", shard_size=4, info={"grid": [f, t], "codebook_size": shipped.tokenizer.codebook_size}) as w:
        for i in range(4):
            w.add(f"c{i}", {
                "tokens": torch.randint(0, shipped.tokenizer.codebook_size, (f, t), generator=g),
                "sync": torch.randn(140, enc.sync_dim, generator=g), "clip": torch.randn(46, enc.clip_dim, generator=g),
                "clap": torch.randn(shipped.backbone.cond_dim, generator=g),
            })  # fmt: skip
    cfg = config("controlnet", tmp_path / "ds", tmp_path / "ft", preset="specmaskfoley_synthetic", model_overrides={}, steps=1, batch_size=2,
                 warmup_steps=0, init="specmaskfoley_synthetic")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert not [w for w in caught if "never trained" in str(w.message)], [str(w.message) for w in caught]
    tuned = final_state(tmp_path / "ft")
    for k, v in shipped.backbone.state_dict().items():
        assert torch.equal(tuned[f"backbone.{k}"].to(v.dtype), v), k


def test_trainable_replaces_the_recipes_choice_of_parts(data: Path, tmp_path: Path) -> None:
    """TrainConfig(trainable=...) / --trainable: the aligner alone of a ControlNet run (from one
    whose ControlNet trained: its zero layers would pass no gradient), or the backbone unfrozen with
    the ControlNet; only those parts move, by their gradients (no weight decay here), and the
    checkpoint records what trained."""
    from controlfoley.checkpoint import read_metadata, trained_parts

    every = ("tokenizer", "backbone", "control_encoder", "aligner", "controlnet")
    train(config("controlnet", data, tmp_path / "cn0", steps=2, warmup_steps=0))
    start = final_state(tmp_path / "cn0")
    run = lambda name, parts, src="cn0": train(config(  # noqa: E731
        "controlnet", data, tmp_path / name, steps=2, warmup_steps=0, weight_decay=0.0, init=str(tmp_path / src), init_parts=every, trainable=parts,
    ))  # fmt: skip
    run("al", ("aligner",))
    al = final_state(tmp_path / "al")
    moved = {k.split(".")[0] for k in start if not torch.equal(al[k], start[k])}
    assert moved == {"aligner"}, moved
    assert "aligner" in trained_parts(read_metadata(tmp_path / "al" / "model.safetensors"))
    # `controlfoley info RUN` counts what the run trained (it showed the backbone recipe's split: the
    # backbone trainable and the aligner frozen, guessed from the parts recorded as trained)
    from controlfoley.cli import info

    shown = info(str(tmp_path / "al"))
    rows = {r[0]: r[1:] for r in (line.split() for line in shown.splitlines()) if len(r) == 4 and r[0] in every}  # part, params, trainable, frozen
    assert rows["backbone"][1] == "0.00M" and rows["backbone"][2] == rows["backbone"][0] != "0.00M", rows  # frozen whole
    assert rows["controlnet"][1] == "0.00M" and "as the run trained it: the controlnet recipe with --trainable aligner" in shown
    run("both", ("backbone", "controlnet"))
    both = final_state(tmp_path / "both")
    assert {k.split(".")[0] for k in start if not torch.equal(both[k], start[k])} == {"backbone", "controlnet"}
    # from a run whose ControlNet never trained, the aligner alone cannot learn: said
    train(config("backbone", data, tmp_path / "bb", steps=1, warmup_steps=0))
    with pytest.warns(UserWarning, match="trainable aligner: their gradient reaches the loss only through the ControlNet"):
        train(config("controlnet", data, tmp_path / "al2", steps=1, warmup_steps=0, init=str(tmp_path / "bb"), trainable=("aligner",)))
    with pytest.raises(ConfigError, match="the backbone recipe reads no video, so aligner would get no gradient"):
        config("backbone", data, tmp_path / "x", trainable=("aligner",))
    with pytest.raises(ConfigError, match="the controlnet recipe reads stored tokens, so the tokenizer gets no gradient"):
        config("controlnet", data, tmp_path / "x", trainable=("tokenizer", "controlnet"))
    with pytest.raises(ConfigError, match="trainable names model parts"):
        config("controlnet", data, tmp_path / "x", trainable=("alinger",))
    args = build_parser().parse_args(["controlnet", "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(tmp_path / "y"), "--trainable", "aligner, controlnet"])
    assert config_from_args(args).trainable == ("aligner", "controlnet")


def test_validate_without_validation_data_is_a_config_error(tmp_path):
    """Trainer.validate (public) on a run with no validation split (val_fraction 0, no val_data)
    named the problem with a TypeError from len(None); now a ConfigError (mypy found it)."""
    from controlfoley.train import Trainer
    from controlfoley.train.distributed import init_distributed

    cfg = config("backbone", write_data(tmp_path / "data"), tmp_path / "run", val_fraction=0.0)
    trainer = Trainer(cfg, init_distributed(cfg.device))
    assert trainer.val_ds is None
    with pytest.raises(ConfigError, match="no validation data"):
        trainer.validate()
