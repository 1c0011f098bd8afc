"""An exponential moving average (EMA) of the trained weights (`--ema-decay`, `TrainConfig.ema_decay`,
`controlfoley.train.checkpoints.ModelEMA`): the average itself (by hand over three steps), what it
covers (the model's trained tensors: not the frozen backbone, not the tokenizer recipe's
discriminator), the files a run writes and what reads which (from_pretrained and `info` the EMA, the
raw weights by their file, --resume the raw weights and the EMA exactly), validation on the EMA with
the raw weights put back bit for bit, and the config, flags and resume rules."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import micro_overrides, micro_token_data
from test_train import write_data

from controlfoley import build_model, from_pretrained
from controlfoley.checkpoint import EMA_KEY, RAW_OF_EMA_KEY, TRAINED_KEY, read_state_dict
from controlfoley.cli import main as cli_main
from controlfoley.config import ConfigError
from controlfoley.errors import CheckpointError, TrainingError
from controlfoley.train import TrainConfig, read_metrics, train
from controlfoley.train.checkpoints import ModelEMA, RunDir, resolve_model_file
from controlfoley.train.cli import build_parser, config_from_args
from controlfoley.train.cli import main as train_main
from controlfoley.train.recipes import get_recipe

DECAY = 0.5  # large enough that the average visibly lags the weights after each step


def config(recipe: str, data: Path, out: Path, **kw: Any) -> TrainConfig:
    """A few steps of the micro model with a large LR (peak 0.05, no warm-up) and a checkpoint each step."""
    base = dict(
        preset="specmaskfoley_tiny", data=str(data), out=str(out), model_overrides=micro_overrides(), steps=3, batch_size=2,
        warmup_steps=0, base_lr=0.05, lr_reference_batch=2, log_every=1, ckpt_every=1, keep_last=10, val_every=0, num_workers=0,
        progress=False, tensorboard=False, ema_decay=DECAY,
    )  # fmt: skip
    return TrainConfig.for_recipe(recipe, **{**base, **kw})


def fresh_state() -> dict[str, torch.Tensor]:
    """The weights a run with seed 0 starts from (it seeds, then builds the model)."""
    torch.manual_seed(0)
    return build_model("specmaskfoley_tiny", **micro_overrides()).state_dict()


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def ema_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """The EMA a checkpoint's state holds for --resume (`ema.*`), by model key."""
    return {k[4:]: v for k, v in read_state_dict(ckpt / "state.safetensors")[0].items() if k.startswith("ema.")}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    return micro_token_data(tmp_path_factory.mktemp("ema") / "tokens", model, n=4)


@pytest.fixture(scope="module")
def ema_run(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished backbone run of 3 steps keeping an EMA with decay 0.5, a checkpoint at every step."""
    run = tmp_path_factory.mktemp("ema") / "run"
    train(config("backbone", tokens, run))
    return run


# -- the average -----------------------------------------------------------------------------------
def test_the_ema_is_the_hand_computed_average_of_the_raw_weights_at_each_step(ema_run: Path) -> None:
    expected = fresh_state()  # the EMA starts from the weights the run starts from
    averaged = set(ema_tensors(step_dir(ema_run, 3)))
    assert averaged and {k.split(".")[0] for k in averaged} == {"backbone"}  # the backbone recipe trains the backbone alone
    for step in (1, 2, 3):
        raw = read_state_dict(step_dir(ema_run, step) / "model_raw.safetensors")[0]
        saved, meta = read_state_dict(step_dir(ema_run, step) / "model.safetensors")
        kept = ema_tensors(step_dir(ema_run, step))
        for k in averaged:
            expected[k] = DECAY * expected[k] + (1 - DECAY) * raw[k]
            torch.testing.assert_close(saved[k], expected[k], rtol=1e-6, atol=1e-6)
            assert kept[k].dtype == torch.float32 and torch.equal(kept[k], saved[k])  # the file users load is the EMA --resume reads
        assert max(float((saved[k] - raw[k]).abs().max()) for k in averaged) > 1e-3  # it visibly lags the weights
        assert json.loads(meta[EMA_KEY]) == {"decay": DECAY, "warmup": False, "step": step, "raw": "model_raw.safetensors"}
    final, final_raw = read_state_dict(ema_run / "model.safetensors")[0], read_state_dict(ema_run / "model_raw.safetensors")[0]
    last, last_raw = read_state_dict(step_dir(ema_run, 3) / "model.safetensors")[0], read_state_dict(step_dir(ema_run, 3) / "model_raw.safetensors")[0]
    assert all(torch.equal(final[k], last[k]) and torch.equal(final_raw[k], last_raw[k]) for k in final)
    # the warm-up (--ema-warmup): min(decay, (1 + t) / (10 + t)) after step t, counted from 0
    warm = ModelEMA(torch.nn.Linear(2, 2), 0.999, warmup=True)
    assert (warm.decay_at(0), warm.decay_at(8), warm.decay_at(10**6)) == (0.1, 0.5, 0.999)
    assert ModelEMA(torch.nn.Linear(2, 2), 0.999).decay_at(0) == 0.999


def test_only_the_trained_tensors_are_averaged_and_the_frozen_backbone_is_the_models(tokens: Path, tmp_path: Path) -> None:
    """The ControlNet recipe (the paper's frozen backbone): the EMA holds the control parts' parameters
    only; the EMA file's frozen parts are the model's, and its records are the raw file's."""
    run = tmp_path / "cn"
    with pytest.warns(UserWarning, match="without --init"):
        train(config("controlnet", tokens, run, steps=2))
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    get_recipe("controlnet").prepare(model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    averaged = set(ema_tensors(step_dir(run, 2)))
    assert averaged == trained and {k.split(".")[0] for k in averaged} == {"control_encoder", "aligner", "controlnet"}
    ema, ema_meta = read_state_dict(run / "model.safetensors")
    raw, raw_meta = read_state_dict(run / "model_raw.safetensors")
    start = fresh_state()
    assert list(ema) == list(raw) and any(k.startswith("backbone.") for k in ema)
    assert all(torch.equal(ema[k], raw[k]) and torch.equal(ema[k], start[k]) for k in ema if k not in averaged)  # not copied, not moved
    assert any(not torch.equal(ema[k], raw[k]) for k in averaged)
    # the same records (trained parts, trained_as, config); each names the other (EMA_KEY, RAW_OF_EMA_KEY)
    assert {k: v for k, v in ema_meta.items() if k != EMA_KEY} == {k: v for k, v in raw_meta.items() if k != RAW_OF_EMA_KEY}
    assert json.loads(raw_meta[RAW_OF_EMA_KEY]) == {"ema": "model.safetensors", "step": 2} and RAW_OF_EMA_KEY not in ema_meta
    assert set(json.loads(ema_meta[TRAINED_KEY])) >= {"control_encoder", "aligner", "controlnet"}


def test_the_floating_buffers_of_a_trained_part_are_averaged_and_nothing_of_a_frozen_one() -> None:
    """No built-in trained part has buffers of its own (a plugin's may: batch-norm statistics)."""
    model = torch.nn.Module()
    model.trained = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model.frozen = torch.nn.BatchNorm1d(2).requires_grad_(False)
    ema = ModelEMA(model, DECAY)
    # num_batches_tracked is an integer count: not averaged
    assert ema.names == ["trained.0.weight", "trained.0.bias", "trained.1.weight", "trained.1.bias", "trained.1.running_mean", "trained.1.running_var"]
    model.trained[1].running_mean.fill_(2.0)
    ema.update(0)
    assert torch.equal(ema.state_dict()["trained.1.running_mean"], torch.ones(2))  # 0.5 x 0 + 0.5 x 2
    with ema.swapped_in():
        assert torch.equal(model.trained[1].running_mean, torch.ones(2))
    assert torch.equal(model.trained[1].running_mean, torch.full((2,), 2.0))
    built = build_model("specmaskfoley_tiny", **micro_overrides())
    parts = {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}
    assert not [n for n, _ in built.named_buffers() if n.split(".")[0] in parts]


def test_the_tokenizer_recipe_averages_the_tokenizer_not_its_discriminator(tmp_path: Path) -> None:
    mels = write_data(tmp_path / "mel", n=2, mel=True)
    run = tmp_path / "tok"
    train(config("tokenizer", mels, run, steps=1, adv_weight=0.1, disc_channels=8, base_lr=1e-3))
    state = read_state_dict(step_dir(run, 1) / "state.safetensors")[0]
    averaged = [k[4:] for k in state if k.startswith("ema.")]
    assert averaged and all(k.startswith("tokenizer.") for k in averaged)
    assert any(k.startswith("aux.disc.") for k in state)  # the discriminator is saved as trained, not averaged


# -- files and readers -------------------------------------------------------------------------------
def test_readers_of_a_run_get_the_ema_and_the_raw_weights_by_naming_their_file(ema_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ema = read_state_dict(ema_run / "model.safetensors")[0]
    raw = read_state_dict(ema_run / "model_raw.safetensors")[0]
    averaged = set(ema_tensors(step_dir(ema_run, 3)))
    assert resolve_model_file(ema_run) == ema_run / "model.safetensors"
    assert resolve_model_file(step_dir(ema_run, 2)) == step_dir(ema_run, 2) / "model.safetensors"
    loaded = from_pretrained(ema_run).state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema) and any(not torch.equal(loaded[k], raw[k]) for k in averaged)
    loaded_raw = from_pretrained(ema_run / "model_raw.safetensors").state_dict()
    assert all(torch.equal(loaded_raw[k], raw[k]) for k in raw)
    step2 = read_state_dict(step_dir(ema_run, 2) / "model.safetensors")[0]
    assert all(torch.equal(v, step2[k]) for k, v in from_pretrained(step_dir(ema_run, 2)).state_dict().items())
    assert cli_main(["info", str(ema_run)]) == 0
    out = capsys.readouterr().out
    assert f"exponential moving average (EMA) of the trained weights, decay {DECAY:g}, over 3 optimizer steps" in out
    assert str(ema_run / "model_raw.safetensors") in out
    # the raw file says what it is, and where the average is (it said nothing: info read like a plain model's)
    for folder, step in ((ema_run, 3), (step_dir(ema_run, 2), 2)):
        assert cli_main(["info", str(folder / "model_raw.safetensors")]) == 0
        out = capsys.readouterr().out
        assert f"weights: as trained after {step} optimizer steps, not averaged (what --resume continues from)" in out
        assert f"moving average (EMA) of them, what it validates and ships: {folder / 'model.safetensors'}\n" in out and "decay" not in out


def test_resume_with_an_ema_equals_the_uninterrupted_run_and_the_ema_leaves_training_alone(tokens: Path, tmp_path: Path) -> None:
    """Stopped at step 2 and resumed: every file and metric as in one go (the raw weights resumed from
    model_raw.safetensors, the EMA from the state, validated on the EMA at every step, with the
    warm-up); and the raw weights are those of the same run without an EMA."""
    kw: dict[str, Any] = dict(steps=4, ckpt_every=2, ema_warmup=True, val_fraction=0.5, val_every=1)
    train(config("backbone", tokens, tmp_path / "full", **kw))
    cfg = config("backbone", tokens, tmp_path / "split", **kw)
    train(cfg, stop_at=2)
    assert train(cfg, resume=True)["step"] == 4
    for name in ("model.safetensors", "model_raw.safetensors", "checkpoints/step-00000004/state.safetensors"):
        a, b = read_state_dict(tmp_path / "full" / name)[0], read_state_dict(tmp_path / "split" / name)[0]
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng.")), name

    def lines(run: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("time", "clips_per_s")} for r in read_metrics(tmp_path / run)]

    assert lines("full") == lines("split")
    val = read_metrics(tmp_path / "full", "val")
    assert len(val) == 4 and all(r["ema"] == 1.0 for r in val)
    train(config("backbone", tokens, tmp_path / "plain", **{**kw, "ema_decay": 0.0, "ema_warmup": False}))
    plain, raw = read_state_dict(tmp_path / "plain" / "model.safetensors")[0], read_state_dict(tmp_path / "full" / "model_raw.safetensors")[0]
    assert all(torch.equal(plain[k], raw[k]) for k in plain)
    assert [r["loss"] for r in read_metrics(tmp_path / "plain", "train")] == [r["loss"] for r in read_metrics(tmp_path / "full", "train")]
    assert not (tmp_path / "plain" / "model_raw.safetensors").exists() and "ema" not in read_metrics(tmp_path / "plain", "val")[0]


def test_resume_refuses_to_switch_the_ema_on_off_or_change_it(tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config("backbone", tokens, tmp_path / "run", steps=2)
    train(cfg, stop_at=1)
    for change in ({"ema_decay": 0.0}, {"ema_decay": 0.9}, {"ema_decay": DECAY, "ema_warmup": True}):
        with pytest.raises(TrainingError, match=r"ema_.*: run .* vs now .*cannot be switched on, off or changed on resume.*--init"):
            train(cfg.replace(**change), resume=True)
    assert train_main(["backbone", "--out", str(tmp_path / "run"), "--resume", "--ema-decay", "0.99"]) == 2
    assert "ema_decay: run 0.5 vs now 0.99" in capsys.readouterr().err
    plain = cfg.replace(ema_decay=0.0)
    assert set(plain.resume_conflicts(cfg)) == {"ema_decay"}  # switching it on is refused alike
    assert train(cfg, resume=True)["step"] == 2  # the run's own setting resumes
    (step_dir(tmp_path / "run", 2) / "model_raw.safetensors").unlink()  # the EMA must not be taken for the weights to go on from
    with pytest.raises(CheckpointError, match=r"holds an EMA of the weights, and .*model_raw.safetensors.* is missing"):
        RunDir(tmp_path / "run").raw_model_file(step_dir(tmp_path / "run", 2))


# -- validation -----------------------------------------------------------------------------------------
def test_validation_runs_on_the_ema_and_puts_the_raw_weights_back_exactly(tokens: Path, tmp_path: Path) -> None:
    from controlfoley.train import Trainer
    from controlfoley.train.distributed import init_distributed

    cfg = config("backbone", tokens, tmp_path / "run", val_fraction=0.5)
    trainer = Trainer(cfg, init_distributed(cfg.device))
    ema = trainer.ema
    assert ema is not None
    g = torch.Generator().manual_seed(1)
    ema.load({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ema.state_dict().items()}, "a test's EMA")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def unchanged() -> bool:
        now = trainer.model.state_dict()
        return list(now) == list(before) and all(torch.equal(now[k], before[k]) for k in before)

    on_ema = trainer.validate()
    assert on_ema is not None and on_ema["ema"] == 1.0 and unchanged()
    trainer.ema = None  # the raw weights, and the EMA swapped in by hand
    on_raw = trainer.validate()
    with ema.swapped_in():
        by_hand = trainer.validate()
    assert unchanged() and on_raw is not None and by_hand is not None and "ema" not in on_raw
    assert on_ema == {**by_hand, "ema": 1.0} and on_raw["loss"] != on_ema["loss"]
    with pytest.raises(RuntimeError, match="mid-validation"), ema.swapped_in():
        raise RuntimeError("mid-validation")
    assert unchanged()  # put back on an error too


# -- config and flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_an_ema_decay_outside_0_1_is_refused_naming_the_flag(decay: float) -> None:
    with pytest.raises(ConfigError, match=r"ema_decay \(--ema-decay\) must be in \[0, 1\)"):
        TrainConfig.for_recipe("backbone", preset="specmaskfoley_tiny", data="d", out="o", ema_decay=decay)


def test_the_flags_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o"]
    cfg = config_from_args(build_parser().parse_args(["controlnet", *args, "--ema-decay", "0.999", "--ema-warmup"]))
    assert (cfg.ema_decay, cfg.ema_warmup) == (0.999, True)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    cfg = config_from_args(build_parser().parse_args(["tokenizer", *args]))
    assert (cfg.ema_decay, cfg.ema_warmup) == (0.0, False)  # off unless asked for
    assert train_main(["backbone", *args, "--ema-decay", "0.99", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["ema_decay"] == 0.99
    assert train_main(["backbone", *args, "--ema-decay", "1", "--print-config"]) == 2
    assert "ema_decay (--ema-decay) must be in [0, 1)" in capsys.readouterr().err
    assert train_main(["backbone", *args, "--ema-warmup", "--print-config"]) == 2  # a warm-up of no EMA
    assert "add --ema-decay" in capsys.readouterr().err
    for recipe in ("tokenizer", "backbone", "controlnet"):
        with pytest.raises(SystemExit):
            train_main([recipe, "--help"])
        out = capsys.readouterr().out
        assert "--ema-decay" in out and "--ema-warmup" in out


def test_an_fp64_tensor_is_averaged_in_fp64() -> None:
    """The EMA was kept in fp32 for every tensor: a plugin part's fp64 buffer that never changed
    came out of the EMA (model.safetensors, validation) rounded, 1/3 as 0.3333333432674408."""
    model = torch.nn.Module()
    model.part = torch.nn.Linear(2, 2)
    model.part.register_buffer("scale", torch.tensor([1 / 3], dtype=torch.float64))
    ema = ModelEMA(model, 0.999)
    for step in range(3):
        ema.update(step)
    with ema.swapped_in():
        seen = model.part.scale.item()
    assert seen == 1 / 3
    assert ema.state_dict()["part.scale"].dtype == torch.float64 and ema.state_dict()["part.weight"].dtype == torch.float32
