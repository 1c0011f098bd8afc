"""The training loop shared by the three recipes (`train(cfg)`), on one device or many (torchrun).

Features
- Everything that can be wrong is checked before the first step: run folder vs --resume, config
  changes on resume, the checkpoint's model config vs the preset, `init` parts, dataset shards
  (missing, corrupt, empty) and their shapes vs the preset, and on resume that the data is the
  data the run started on (`data.json`: index fingerprints; the data may move, not change).
  config.json and data.json are written only once every check passed (a refused --resume leaves
  the run as it was); under torchrun every rank learns that a rank failed and all stop together.
  Backbone and ControlNet runs warn when the tokens came from an untrained or another tokenizer
  (`provenance`). A --resume with no step left says so, and how to train longer.
- SIGTERM (a scheduler's preemption) lets the step in progress finish, writes a checkpoint of it
  and stops the run as Ctrl-C does (`interrupt`); --resume goes on from that very step. A SIGTERM
  during a validation or a checkpoint write stops the run there, not after another step (in one
  process the validation is left unfinished at once; under torchrun it finishes, since the ranks
  are in its collectives).
- AdamW over the trainable parameters only (weight decay on tensors of rank >= 2), the LR set from
  `WarmupCosine` at every step, gradient accumulation (DDP `no_sync` on all but the last
  micro-batch), global-norm gradient clipping, bf16 autocast on CUDA, optional torch.compile,
  optional activation checkpointing of the transformer blocks (`--activation-checkpointing`: less
  memory for one more forward of the blocks; it may be switched on or off on resume).
- A non-finite loss or gradient norm stops the run with a TrainingError before the optimizer
  step: parameters and the last checkpoint are untouched.
- `--ema-decay D` keeps an exponential moving average of the trained weights (`ModelEMA`: fp32, the
  model's trained tensors only, updated once per optimizer step, after it; every rank alike, without
  communication, as every rank holds the same weights). Validation then runs on the EMA, swapped into
  the model and the raw weights put back exactly after, and its metrics.jsonl line says so (`ema`: 1);
  model.safetensors (each checkpoint's and the final one) holds the EMA, model_raw.safetensors the
  weights as trained, which --resume continues from (`train.checkpoints`). The EMA is part of the run:
  switching --ema-decay or --ema-warmup on resume is refused, with the way to a new run that keeps one.
- Deterministic: data order and random masks are functions of (seed, step) (see `recipes` and
  `ShardedSampler`), RNG states are saved, so resuming after a kill reproduces an uninterrupted
  run bit for bit on CPU. The global batch may be split otherwise on resume (another number of
  processes, another `grad_accum`: a job rescheduled on fewer GPUs): the same steps up to float
  rounding, which the resume line says; a split that does not divide the batch is refused with
  the `grad_accum` values that do (`check_batch_split`). Under torchrun every rank must start at
  the same step (`agree_before_training`: a rank reading another run folder stops them all).
- `train(cfg, resume="auto")` (`--auto-resume`): resume when `cfg.out` holds a run, else start it:
  one call for a job's first start and its restarts. On resume a recorded relative --data that is
  not found from here is named as such, with the fix (`_check_recorded_data`).
- Rank 0 alone logs (tqdm bar with loss, LR, clips/s, or with `progress=False` a plain line per
  log step for batch jobs; metrics.jsonl; TensorBoard) and writes
  checkpoints; validation is sharded over ranks and summed.
"""

import contextlib
import gc
import inspect
import json
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from controlfoley._io import atomic_write_text
from controlfoley.builder import build_model, build_without_weight_files, model_config, weight_file_parts
from controlfoley.checkpoint import check_state_dict, feature_record, load_parts
from controlfoley.config import ConfigError, ModelConfig
from controlfoley.data.dataset import ShardedSampler, collate
from controlfoley.errors import CheckpointError, ControlFoleyError, TrainingError, user_stacklevel
from controlfoley.model import SpecMaskFoley
from controlfoley.train.checkpoints import (
    ModelEMA, RunDir, TrainState, checkpoint_step, longer_run_hint, nothing_to_resume_message, resolve_model_file, restore_rng,
)  # fmt: skip
from controlfoley.train.config import PluginChangedWarning, TrainConfig, plugin_changes, recipe_plugins
from controlfoley.train.datasets import DATA_RECORD, check_batch_fits, check_batch_split, check_same_data, open_datasets, warn_shared_clips
from controlfoley.train.distributed import DistInfo, agree_before_training, all_reduce_sum, barrier, init_distributed, mark_reported, shutdown
from controlfoley.train.interrupt import TrainingInterrupted, ignore_sigterm_in_worker, interrupt_pending, steps_running, terminate_as_interrupt
from controlfoley.train.metrics import MetricsLogger
from controlfoley.train.provenance import warn_token_provenance
from controlfoley.train.recipes import Recipe, StepPlan, get_recipe, train_only

__all__ = ["train", "Trainer"]


def checked_stop_at(stop_at: Any) -> None:  # a validator: it takes anything
    """`stop_at` is None or a step >= 1 (the step this invocation ends after), else a ConfigError."""
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
        raise ConfigError(f"stop_at (--stop-at) must be a step >= 1 (this invocation ends after it, with a checkpoint), got {stop_at!r}")


def train(cfg: TrainConfig, *, resume: bool | Literal["auto"] = False, stop_at: int | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the last train and validation metrics.

    `resume="auto"`: resume the run in `cfg.out` if it holds one (its config.json), else start it
    (one call for a job's first start and its restarts; `--auto-resume`).
    `stop_at`: end this invocation after that many optimizer steps (with a checkpoint) without
    changing the schedule; `--resume` continues later."""
    checked_stop_at(stop_at)
    if resume == "auto":
        resume = RunDir(cfg.out).config_path.is_file()
    elif not isinstance(resume, bool):
        raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    started = not torch.distributed.is_initialized()
    info = init_distributed(cfg.device)
    trainer = None
    try:
        with terminate_as_interrupt(deferred=info.distributed), _run_lock(cfg.out, info):
            trainer = Trainer(cfg, info, resume=resume)
            return trainer.run(stop_at)
    finally:
        # DDP's reducer and the gloo work objects it holds go now, while the process group and the
        # interpreter are alive: left to interpreter shutdown they can abort the process (SIGABRT,
        # "terminate called without an active exception"; seen once in a CI run of the gloo test)
        del trainer
        gc.collect()
        if started:
            shutdown(info)


@contextlib.contextmanager
def _run_lock(out: str, info: DistInfo) -> Iterator[None]:
    """Rank 0 holds the run folder's lock; every rank learns whether it got it, so a refused run
    stops on all ranks at once (not only under torchrun, whose agent would stop the others)."""
    with contextlib.ExitStack() as stack:
        refused: str | None = None
        failure: BaseException | None = None
        if info.is_main:
            try:
                stack.enter_context(RunDir(out).lock())
            except OSError as e:  # a file where the folder should be, no permission, a read-only disk: named, one line
                failure = TrainingError(f"cannot use {out} as the run folder (--out): {e.strerror or e}; choose a folder you can write to")
                refused = str(failure)
            except BaseException as e:  # any other failure: tell every rank
                failure, refused = e, (str(e) if isinstance(e, TrainingError) else f"rank 0 could not open the run folder {out}: {type(e).__name__}: {e}")
        if info.distributed:
            box = [refused]
            torch.distributed.broadcast_object_list(box, src=0)
            refused = box[0]
        if failure is not None:
            raise failure
        if refused is not None:  # rank 0 reports it (its own error); the others stop without repeating it
            raise mark_reported(TrainingError(refused), 0)
        yield


class Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo, *, resume: bool = False) -> None:
        self.info, self.run_dir = info, RunDir(cfg.out)
        failure: Exception | None = None
        try:  # every check before the first step; the run folder records nothing until all passed
            self._preflight(cfg, resume)
        except Exception as e:
            failure = e
        # any rank failed: all stop here (none waits in DDP's broadcast); and all start at the same step
        agree_before_training(info, failure, getattr(self, "start_step", None))
        self._record_run()
        self.module = self._wrap(self.objective)
        self.schedule = self.cfg.lr_schedule()
        self.use_bf16 = self.cfg.precision == "bf16" or (self.cfg.precision == "auto" and info.device.type == "cuda")

    def _preflight(self, cfg: TrainConfig, resume: bool) -> None:
        info = self.info
        self.cfg = cfg = self._settle_config(cfg, resume)
        _seed_everything(cfg.seed)
        self.recipe: Recipe = get_recipe(cfg.recipe)
        ckpt_dir = self.run_dir.latest_dir(say=info.is_main) if resume else None
        # resolved once, in _settle_config (None there: resolving it again raises what is wrong with it)
        resolved = self._model_config if self._model_config is not None else model_config(cfg.preset, **cfg.model_overrides)
        if ckpt_dir is not None:  # its checkpoint holds every weight: no part's weights file is read again
            self.model: SpecMaskFoley = build_without_weight_files(resolved)[0]
        else:
            self.model = build_model(resolved)  # a config: untrained on purpose, no advice
        self._resumed_from = ckpt_dir
        if resume and ckpt_dir is None and info.is_main:
            warnings.warn(f"--resume: {self.run_dir.root} has no checkpoint yet (killed before its first); starting it from step 0", stacklevel=user_stacklevel())
        self._load_weights(ckpt_dir)
        self.recipe.prepare(self.model)
        if cfg.trainable is not None:  # the user's choice of parts replaces the recipe's
            missing = [p for p in cfg.trainable if getattr(self.model, p, None) is None]
            if missing:
                raise ConfigError(f"trainable names {', '.join(missing)}, which this model ({cfg.preset}) does not have")
            train_only(self.model, cfg.trainable)
            upstream = [p for p in ("control_encoder", "aligner") if p in cfg.trainable]
            loaded = getattr(self.model, "trained_parts", None)
            if upstream and "controlnet" not in cfg.trainable and loaded is not None and "controlnet" not in loaded and info.is_main:
                warnings.warn(
                    f"trainable {', '.join(upstream)}: their gradient reaches the loss only through the ControlNet, which this run "
                    "neither trains nor loaded trained; its zero-initialised output layers pass no gradient, so they will not learn. "
                    "Add controlnet to trainable, or --init a run that trained it (--init-parts ...,controlnet)",
                    stacklevel=user_stacklevel(),
                )
        if cfg.activation_checkpointing:  # before the objective holds the model; a backbone without `blocks` is named here
            self.model.enable_activation_checkpointing()
        self.model.to(info.device)
        self.train_ds, self.val_ds = open_datasets(cfg, self.recipe, self.model)
        self._data_record = check_same_data(cfg, self.run_dir.root, self.train_ds, self.val_ds, resume)
        if info.is_main and "tokens" in self.recipe.needed_keys(self.model, self.train_ds):  # the recipes that train on stored tokens
            warn_token_provenance(cfg, self.model.config, [self.train_ds, self.val_ds], stacklevel=user_stacklevel(), resumed_from=self._resumed_from)
        if info.is_main and cfg.val_data is not None and self.val_ds is not None:  # once, from rank 0 (it reads every clip's tokens)
            warn_shared_clips(self.train_ds, self.val_ds)
        self.recipe.fit_to_data(self.model, self.train_ds)
        # the checkpoints record which extractors made the features it reads, so that generate can use the same ones
        enc = self.model.control_encoder if self.model.has_control else None
        reads = {"clap", *(enc.required_features if enc is not None else ())}
        self.model.feature_record = {k: v for k, v in feature_record(self.train_ds.index.info).items() if k in reads}
        # what the run's checkpoints record as trained: what it loaded trained, and what it trains
        here = {n for n, m in self.model.named_children() if any(p.requires_grad for p in m.parameters())}
        here |= set(weight_file_parts(self.model.config))  # parts whose builder loaded trained weights (an official codebook)
        controlnet = getattr(self.model, "controlnet", None)
        if controlnet is not None and any(p.requires_grad for p in controlnet.parameters()):
            # the ControlNet learns from what its control encoder and aligner give, frozen ones too (--trainable controlnet):
            # those weights are the ones it was trained with, and generate requires them recorded (pipeline_parts.foley_parts)
            here |= {n for n in ("control_encoder", "aligner") if getattr(self.model, n, None) is not None}
        if ckpt_dir is None or getattr(self.model, "trained_parts", None) is not None:
            self.model.trained_parts = set(getattr(self.model, "trained_parts", None) or ()) | here
        # else: resumed from a checkpoint that records nothing (written before records existed): none now either
        self.objective = self.recipe.objective(self.model, cfg).to(info.device)
        self.aux = self.recipe.aux_modules(self.objective)
        self.names = [n for n, p in self.objective.named_parameters() if p.requires_grad]
        self.params = [p for p in self.objective.parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError(f"recipe {cfg.recipe!r} left no trainable parameters in preset {cfg.preset!r}")
        self.optimizer = self._optimizer()
        # the EMA of the model's trained tensors, from the weights the run starts with (a resume: the checkpoint's EMA, in _restore)
        self.ema = ModelEMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.start_step = 0
        if ckpt_dir is not None:
            self._restore(self.run_dir.load_state(ckpt_dir))
        check_batch_fits(cfg, self.train_ds, self.val_ds)
        check_batch_split(cfg, info.world_size, resuming=resume)  # on resume --batch-size is the run's: the fix is the split
        self.sampler = ShardedSampler(
            len(self.train_ds), cfg.batch_size, world_size=info.world_size, rank=info.rank, micro_batches=cfg.grad_accum,
            seed=cfg.seed, shuffle=cfg.shuffle, start_step=self.start_step, stop_step=cfg.steps,
        )  # fmt: skip

    # -- set-up ----------------------------------------------------------------------------------
    def _settle_config(self, cfg: TrainConfig, resume: bool) -> TrainConfig:
        rd = self.run_dir
        try:  # resolved once: the code record reads its parts, _preflight builds it
            self._model_config: ModelConfig | None = model_config(cfg.preset, **cfg.model_overrides)
        except ControlFoleyError:  # building the model names what is wrong with it
            self._model_config = None
        if resume:
            if not rd.config_path.is_file():
                raise TrainingError(f"nothing to resume in {rd.root}: it has no config.json. Start the run without --resume.")
            saved = TrainConfig.from_json(rd.config_path.read_text(encoding="utf-8"))
            conflicts = saved.resume_conflicts(cfg)
            if conflicts:
                lines = ", ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in conflicts.items())
                longer = ""
                if "steps" in conflicts and conflicts["steps"][1] < conflicts["steps"][0]:  # fewer: the schedule stays, --stop-at ends it sooner
                    latest = rd.latest_dir()
                    at = checkpoint_step(latest) if latest is not None else 0
                    want = conflicts["steps"][1]
                    longer = (
                        f" To stop sooner, keep its --steps and give --stop-at {want}: the run resumes, stops there with "
                        "a checkpoint, and keeps its learning-rate schedule (--steps is part of it)."
                        if at < want
                        else f" It is already at step {at}, at or past the {want} asked: its checkpoints so far are in {rd.root / 'checkpoints'} (each a model to use)."
                    )
                elif "steps" in conflicts:
                    longer = f" To train longer, {longer_run_hint(rd.root, cfg.recipe)}."
                if {"ema_decay", "ema_warmup"} & set(conflicts):
                    longer += (
                        " The EMA of the weights (--ema-decay, --ema-warmup) is part of the run: it is kept from step 0 and its checkpoints' "
                        "model.safetensors hold it, so it cannot be switched on, off or changed on resume. For a run that keeps another, "
                        f"{longer_run_hint(rd.root, cfg.recipe)} and the --ema-decay you want (it averages from the weights it starts with)."
                    )
                raise TrainingError(
                    f"--resume continues the run in {rd.root} with its own settings, but these differ: {lines}. "
                    f"Drop those flags, or start a new --out.{longer}"
                )
            cfg = cfg.replace(plugins=recipe_plugins(cfg.recipe, self._model_config))  # anew from the code loaded now (a config read back from config.json holds the old record)
            self._warn_changed_plugins(saved, cfg)
            _check_recorded_data(saved, cfg)
        elif rd.latest_dir() is not None:
            raise TrainingError(
                f"{rd.root} already holds a run with checkpoints; pass --resume to continue it (Python: train(cfg, resume=True)), "
                "or choose another --out"
            )
        else:
            cfg = cfg.replace(plugins=recipe_plugins(cfg.recipe, self._model_config))  # the files of its recipe and of its model's registered parts
        return cfg  # written to config.json once every check passed (`_record_run`): a refused run changes nothing

    def _warn_changed_plugins(self, saved: TrainConfig, cfg: TrainConfig) -> None:
        """One warning (rank 0) when the recipe's code loaded now is not what the run recorded. A
        warning, not a refusal: a plugin is edited between resumes for reasons that leave training as
        it was (a logged statistic, a message, a bug elsewhere in the file), and code cannot be
        compared as settings can: refusing would leave, for every such edit, only a hand-edited
        config.json or a new run. The checkpoints then hold training by both versions, which the
        warning says, naming the file; config.json records the code loaded now (`_record_run`)."""
        from controlfoley.train.provenance import plugin_code

        changes = plugin_changes(saved.plugins, cfg.plugins or ())  # (never None: TrainConfig fills it in)
        if changes and self.info.is_main:
            warnings.warn(
                f"--resume: the code of {plugin_code(cfg.recipe, self._model_config)} is not what {self.run_dir.config_path} recorded: {'; '.join(changes)}. The run "
                "goes on with the code as it is now (its checkpoints so far were trained with the earlier one); config.json now records this code",
                PluginChangedWarning,
                stacklevel=user_stacklevel(),
            )

    def _record_run(self) -> None:
        """The run's config.json (on resume: with the flags it may change, such as a moved --data)
        and, at its start, data.json; written after every pre-flight check passed. A folder that
        already holds a run (a resume, or a run killed before its first checkpoint started again)
        first loses the temporary files of writes a kill interrupted (under the run's lock)."""
        if self.info.is_main:
            rd = self.run_dir
            if rd.config_path.is_file():
                rd.remove_stale_temps()
            self._write_text("the run's config", rd.config_path, self.cfg.to_json())
            if self._data_record is not None:
                self._write_text("the run's data record", rd.root / DATA_RECORD, json.dumps(self._data_record, indent=1) + "\n")

    def _write_text(self, what: str, path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)
        except OSError as e:  # a full disk, a folder made read-only: the file, the fix, how to go on
            raise self.run_dir.write_failed(what, path, e) from e

    def _save_final(self) -> None:
        """The final model (with an EMA: the weights as trained, then the EMA in model.safetensors);
        a full disk is a TrainingError saying how to go on (--resume writes it)."""
        try:
            self.run_dir.save_final(self.model, self.ema, step=self.cfg.steps)
        except CheckpointError as e:
            raise self.run_dir.write_stopped("the final model", str(e)) from e

    def _load_weights(self, ckpt_dir: Path | None) -> None:
        cfg = self.cfg
        if ckpt_dir is not None:
            self.run_dir.load_model_weights(ckpt_dir, self.model)
        elif cfg.init is not None:
            source = resolve_model_file(cfg.init)
            with warnings.catch_warnings():  # (a part built otherwise than the checkpoint's warns, from rank 0 alone)
                if not self.info.is_main:
                    warnings.simplefilter("ignore")
                load_parts(self.model, source, cfg.init_parts, label=f"--init {cfg.init}")  # records which of them were trained
            trained = self.model.trained_parts
            assert trained is not None  # load_parts just recorded a set
            untrained = [p for p in cfg.init_parts if p not in trained]
            if untrained and self.info.is_main:
                fix = "init from the run that trained them (e.g. a backbone run for the controlnet recipe)"
                if untrained == ["tokenizer"] and "backbone" in trained:  # a backbone run that started without --init
                    fix = (
                        f"{cfg.init}'s backbone learned the codes of that random tokenizer (its run had no --init): train the backbone "
                        "again with --init TOKENIZER_RUN (a tokenizer-recipe run) on data extracted with `controlfoley extract "
                        "--tokenizer TOKENIZER_RUN`, and init from that run"
                    )
                warnings.warn(
                    f"--init {cfg.init}: its {', '.join(untrained)} {'was' if len(untrained) == 1 else 'were'} never trained "
                    f"(of those it loads, it records trained: {', '.join(sorted(trained)) or 'nothing'}), so this run starts from random "
                    f"{', '.join(untrained)} weights; {fix}",
                    stacklevel=user_stacklevel(),
                )
        elif self.recipe.base == "controlnet" and self.info.is_main:  # the controlnet recipe, or one based on it
            warnings.warn("controlnet recipe without --init: the ControlNet trains against a randomly initialised backbone", stacklevel=user_stacklevel())

    def _optimizer(self) -> torch.optim.Optimizer:
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.peak_lr, betas=self.cfg.betas)

    def _restore(self, state: TrainState) -> None:
        if state.param_names != self.names:
            raise TrainingError(f"checkpoint {state.path} trained other parameters than this run's recipe {self.cfg.recipe!r}; start a new --out")
        for name, module in self.aux.items():
            sub = {k[len(name) + 1 :]: v for k, v in state.aux.items() if k.startswith(name + ".")}
            check_state_dict(module, sub, f"{name} in {state.path}")
            module.load_state_dict(sub, strict=True)
        self.optimizer.load_state_dict(state.optimizer)
        if self.ema is not None:
            if not state.ema:
                raise CheckpointError(
                    f"checkpoint {state.path} holds no EMA of the weights, but this run keeps one (ema_decay {self.cfg.ema_decay}): its "
                    "config.json was changed after the checkpoint was written; put ema_decay back as the run had it, or start a new --out"
                )
            self.ema.load(state.ema, str(state.path / "state.safetensors"))
        elif state.ema:
            raise CheckpointError(
                f"checkpoint {state.path} holds an EMA of the weights, but this run keeps none (ema_decay 0): its config.json was "
                "changed after the checkpoint was written; put ema_decay back as the run had it, or start a new --out"
            )
        restore_rng(state.rng["tensors"], state.rng["meta"], self.info.device)
        self.start_step = state.step
        self._resumed_split = state.split
        if self.info.is_main:
            self.run_dir.drop_after(state.step)

    def _wrap(self, objective: nn.Module) -> nn.Module:
        module: nn.Module = objective
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            # buffers (mel filterbanks, frozen statistics) are equal on every rank: no sync per forward;
            # newer torch names this forward_sync_buffers and deprecates broadcast_buffers
            no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"
            sync_off: dict[str, Any] = {no_sync: False}
            module = DistributedDataParallel(objective, device_ids=ids, **sync_off)
        if self.cfg.compile:
            module = cast(nn.Module, torch.compile(module))  # an OptimizedModule (a Module) for a Module; the stubs say Callable
        return module

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        stop = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        result: dict[str, Any] = {"step": self.start_step, "train": {}, "val": {}}
        if self.start_step >= stop:
            return self._nothing_to_do(stop_at, result)
        if info.is_main and getattr(self, "_resumed_from", None) is not None:  # say where it goes on (after a kill, nothing else does)
            print(f"{cfg.recipe}: resuming {self.run_dir.root} at step {self.start_step} of {cfg.steps}, from {self._resumed_from}{self._split_note()}", file=sys.stderr, flush=True)
        log = MetricsLogger(self.run_dir.metrics_path, enabled=info.is_main, tensorboard=cfg.tensorboard, resume_step=self.start_step)
        bar = tqdm(total=cfg.steps, initial=self.start_step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True, desc=cfg.recipe)
        plain = info.is_main and not cfg.progress
        batches = self._batches()
        t0, last = time.perf_counter(), self.start_step
        events = dict.fromkeys(self.recipe.interval_sums, 0.0)  # counted since the last log line
        self._terminated = False  # under torchrun: set by _train_step when any rank received SIGTERM
        try:
            with steps_running():  # a SIGTERM from here on is acted on after its step: checkpoint, then stop
                for step in range(self.start_step, stop):
                    values = self._train_step(step, batches)
                    done = step + 1
                    for k in events:
                        events[k] += values.get(k, 0.0)
                    result.update(step=done, train=values)
                    if done % cfg.log_every == 0 or done == stop:
                        values.update(events)
                        events = dict.fromkeys(events, 0.0)
                        now = time.perf_counter()
                        values["clips_per_s"] = cfg.batch_size * (done - last) / max(now - t0, 1e-9)
                        t0, last = now, done
                        log.log(done, "train", values)
                        if plain:  # no bar (a batch job's log): one line per log step instead
                            print(
                                f"{cfg.recipe} step {done}/{cfg.steps}: loss {values['loss']:.4f}, lr {values['lr']:.2e}, "
                                f"{values['clips_per_s']:.1f} clips/s", file=sys.stderr, flush=True,
                            )  # fmt: skip
                        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", clips_s=f"{values['clips_per_s']:.1f}")
                    bar.update(1)
                    if done < stop and (self._terminated or (not info.distributed and interrupt_pending())):
                        self._stop_for_signal(done)  # before the validation due now: the grace period is short
                    validating = self.val_ds is not None and ((cfg.val_every and done % cfg.val_every == 0) or done == cfg.steps)
                    if validating:
                        val = self.validate(stop_on_signal=not info.distributed)
                        if val is None:  # one process: a SIGTERM came during it (it can outlast a grace period)
                            self._stop_for_signal(done)
                        result["val"] = val
                        log.log(done, "val", val)
                        if plain:
                            shown = ", ".join(f"{k} {v:.4g}" for k, v in val.items() if isinstance(v, (int, float)) and k != "ema")
                            of = " (of the EMA weights)" if "ema" in val else ""
                            print(f"{cfg.recipe} validation at step {done}{of}: {shown}", file=sys.stderr, flush=True)
                    written = done % cfg.ckpt_every == 0 or done == stop
                    if written:
                        self._checkpoint(done)
                    # a signal during the validation or the checkpoint write: stop now, not after another step
                    # (and checkpoint); under torchrun the ranks agree on it in one more collective, at these steps only
                    if done < stop and (validating or written) and self._signalled_anywhere():
                        self._stop_for_signal(done, written=written)
            if stop == cfg.steps and info.is_main:
                self._save_final()
        finally:
            bar.close()
            log.close()
            _stop_workers(batches)
        barrier(info)
        return result

    def _split_note(self) -> str:
        """On a resume with another number of processes or of micro-batches than the checkpoint's
        (a job rescheduled on fewer or more GPUs): what that changes. Nothing else says it."""
        then, now = getattr(self, "_resumed_split", None), (self.info.world_size, self.cfg.grad_accum)
        if then is None or then == now:
            return ""

        def split(w: int, a: int) -> str:
            return f"{w} process{'es' if w != 1 else ''} x {a} micro-batch{'es' if a != 1 else ''}"

        return (
            f", on {split(*now)} (until now {split(*then)}): the same global batch of {self.cfg.batch_size} clips and data order per "
            "step, split otherwise, so the run goes on as it would have up to float rounding, not bit for bit"
        )

    def _signalled_anywhere(self) -> bool:
        """Whether a SIGTERM is pending in this process, or under torchrun in any rank (a collective:
        every rank must call it at the same step)."""
        if not self.info.distributed:
            return interrupt_pending()
        flag = torch.full((), float(interrupt_pending()), device=self.info.device)
        return float(all_reduce_sum(flag, self.info)) > 0

    def _stop_for_signal(self, done: int, *, written: bool = False) -> NoReturn:
        """A SIGTERM arrived during step `done` (or, in one process, after it: during its validation
        or its checkpoint write): checkpoint that step unless it is `written` already (rank 0 writes,
        the others wait for it, so that torchrun's agent does not kill rank 0 mid-write when they
        exit) and stop. Under torchrun the ranks learn it alike in `_train_step`'s collective, or, at
        a step with a validation or a checkpoint, in `_signalled_anywhere`'s."""
        if not written:
            self._checkpoint(done)
        barrier(self.info)
        raise TrainingInterrupted(signal.SIGTERM, checkpoint=self.run_dir.step_dir(done))

    def _nothing_to_do(self, stop_at: int | None, result: dict[str, Any]) -> dict[str, Any]:
        """Resumed at or past where this invocation stops: say so (a run that finished has no
        more steps; --resume cannot lengthen it) and write the final model if a kill lost it."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            if self.start_step >= cfg.steps and not self.run_dir.final_model.is_file():
                self._save_final()  # killed between the last checkpoint and the final save
            warnings.warn(nothing_to_resume_message(self.run_dir.root, cfg.recipe, self.start_step, cfg.steps, stop_at), stacklevel=user_stacklevel())
        barrier(info)
        return result

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        loader = DataLoader(
            self.train_ds, batch_sampler=self.sampler, collate_fn=collate, num_workers=cfg.num_workers,
            pin_memory=self.info.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
            worker_init_fn=ignore_sigterm_in_worker,  # a scheduler's SIGTERM to the group must not kill the step's data
        )  # fmt: skip
        return iter(loader)

    def _train_step(self, step: int, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        lr = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        plan = self.recipe.plan(cfg, self.model, step, cfg.batch_size)
        totals: dict[str, torch.Tensor] = {}
        micro_batches: Iterator[dict[str, torch.Tensor]] = (next(batches) for _ in range(cfg.grad_accum))
        if type(self.recipe).before_step is not Recipe.before_step:  # it sees the whole step first
            step_inputs = [{k: v.to(info.device, non_blocking=True) for k, v in b.items()} for b in micro_batches]
            with self._autocast():
                totals = {k: v.to(info.device) for k, v in self.recipe.before_step(self.objective, step_inputs, plan).items()}
            micro_batches = iter(step_inputs)
        for micro, batch in enumerate(micro_batches):
            batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
            args = self._plan_args(plan, self.sampler.rows(micro))
            sync = micro == cfg.grad_accum - 1 or not info.distributed
            # not sync: a distributed run, so a DDP (under torch.compile its wrapper, which forwards no_sync)
            with contextlib.nullcontext() if sync else cast(DistributedDataParallel, self.module).no_sync():
                with self._autocast():
                    loss, stats = self.module(batch, *args)
                (loss * (info.world_size / plan.denom)).backward()
            _accumulate(totals, stats)
        if info.distributed:  # a SIGTERM any rank received: every rank stops after this same collective
            totals["_interrupt"] = torch.full((), float(interrupt_pending()), device=info.device)  # a fill, not a host copy
        reduced = self._reduce(totals)
        if float(reduced.pop("_interrupt", 0.0)) > 0:
            self._terminated = True  # every rank sees the same sum: all finish this step and stop after it
        values = self.recipe.summarize(reduced)
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        values.update(lr=lr, grad_norm=float(norm))
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            self.optimizer.zero_grad(set_to_none=True)
            error = TrainingError(self._nonfinite_message(step + 1, values))
            raise error if info.is_main else mark_reported(error, 0)  # the values are summed over ranks: all stop alike
        self.optimizer.step()
        if self.ema is not None:  # once per optimizer step, whatever the micro-batches; every rank alike (the same weights)
            self.ema.update(step)
        self.optimizer.zero_grad(set_to_none=True)
        return values

    def _plan_args(self, plan: StepPlan, rows: list[int]) -> list[torch.Tensor]:
        idx = torch.tensor(rows, dtype=torch.long)
        return [plan.rows[k][idx].to(self.info.device, non_blocking=True) for k in self.recipe.objective_args]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _reduce(self, totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum statistics over ranks in one collective (one flat vector)."""
        keys = sorted(totals)
        flat = torch.cat([totals[k].reshape(-1).to(_wide(totals[k].device)) for k in keys])
        flat = all_reduce_sum(flat, self.info).cpu()
        out, i = {}, 0
        for k in keys:
            n = totals[k].numel()
            out[k] = flat[i : i + n].reshape(totals[k].shape)
            i += n
        return out

    def _nonfinite_message(self, step: int, values: dict[str, float]) -> str:
        latest = self.run_dir.latest_dir()
        where = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was written yet"
        return (
            f"non-finite training loss ({values['loss']}) or gradient norm ({values['grad_norm']}) at step {step}: "
            f"training stopped before the optimizer step; {where}. Lower --base-lr, keep --grad-clip on, or check "
            "the data for NaN/inf features, then resume with --resume."
        )

    @torch.no_grad()
    def validate(self, *, stop_on_signal: bool = False) -> dict[str, float] | None:
        """Validation loss over (at most val_max_clips) held-out clips, sharded over ranks; of the EMA
        of the weights where the run keeps one (swapped into the model, the raw weights put back
        exactly after), its values then with "ema": 1.0.

        `stop_on_signal` (one process only: under torchrun a rank that left early would leave the
        others in the collective): None as soon as a SIGTERM is pending, so that a preempted run
        checkpoints and stops within its grace period instead of finishing a long validation first."""
        cfg, info, ds = self.cfg, self.info, self.val_ds
        if ds is None:
            raise ConfigError("this run has no validation data (val_fraction 0 and no val_data): there is nothing to validate on")
        mine = list(range(info.rank, min(len(ds), cfg.val_max_clips), info.world_size))
        size = max(1, cfg.batch_size // (info.world_size * cfg.grad_accum))
        chunks = [mine[i : i + size] for i in range(0, len(mine), size)]
        weight = 1.0
        if not chunks:  # fewer clips than ranks: still join the collective, with a zero-weighted clip
            chunks, weight = [[0]], 0.0
        totals: dict[str, torch.Tensor] = {}
        self.model.eval()
        try:
            with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
                for chunk in chunks:
                    if stop_on_signal and interrupt_pending():
                        return None
                    batch = {k: v.to(info.device) for k, v in collate([ds[j] for j in chunk]).items()}
                    plan = self.recipe.val_plan(cfg, self.model, chunk)
                    args = [plan.rows[k].to(info.device) for k in self.recipe.objective_args]
                    with self._autocast():
                        _, stats = self.objective(batch, *args)
                    _accumulate(totals, {k: v * weight for k, v in stats.items()})
        finally:
            self.model.train()
        values = self.recipe.summarize(self._reduce(totals))
        if self.ema is not None:
            values["ema"] = 1.0  # these are the EMA's (metrics.jsonl, TensorBoard's val/ema)
        return values

    def _checkpoint(self, step: int) -> None:
        if self.info.is_main:
            extra = {"recipe": self.cfg.recipe, "preset": self.cfg.preset, "world_size": self.info.world_size, "grad_accum": self.cfg.grad_accum}
            aux = {f"{name}.{k}": v for name, m in self.aux.items() for k, v in m.state_dict().items()}
            try:
                self.run_dir.save(
                    step, self.model, self.optimizer, self.names, self.cfg.keep_last, extra, aux=aux, device=self.info.device, ema=self.ema,
                )  # fmt: skip
            except CheckpointError as e:  # a full disk mid-run: what is intact, and how to go on
                done = self.run_dir.is_complete(step)  # only its pointer failed: a resume continues from it
                raise self.run_dir.write_stopped(f"the 'latest' pointer to checkpoint {step}" if done else f"checkpoint {step}", str(e)) from e


def _stop_workers(batches: Iterator[Any]) -> None:
    """End the DataLoader's worker processes now, as its iterator's garbage collection would: they
    ignore SIGTERM (`ignore_sigterm_in_worker`), and an iterator kept alive by an exception's
    traceback would leave them to multiprocessing's exit handler, whose SIGTERM they ignore, so a
    preempted trainer waited for them before exiting; a worker still alive after torch's shutdown
    (stuck in a read) is killed, where torch's own fallback is the SIGTERM it ignores.
    (`_shutdown_workers`, `_workers`: torch's multi-process iterator's; a single-process one has none.)"""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()  # asks each worker to stop, joins it for a few seconds, then sends the SIGTERM they ignore
    for worker in getattr(batches, "_workers", ()):  # one stuck in a read (a stalled network file system): killed
        if worker.is_alive():
            worker.kill()
            worker.join(1.0)


def _check_recorded_data(saved: TrainConfig, cfg: TrainConfig) -> None:
    """On resume, a dataset folder taken from config.json (no flag gave another) that is not found
    from here: named as the run's record, relative to where the run was started when it is
    relative, with the fix (not the dataset reader's "create it with extract", which the data
    needs no more than a moved job does)."""
    for name in ("data", "val_data"):
        value = getattr(cfg, name)
        if value is None or value != getattr(saved, name) or Path(value).exists():
            continue
        flag = "--" + name.replace("_", "-")
        if Path(value).is_absolute():
            where = " is not found (moved?). Give"
        else:
            where = f", a path relative to the folder the run was started from, is not found from {Path.cwd()}. Resume from that folder, or give"
        raise TrainingError(
            f"--resume: the run's {flag} {value} (its config.json){where} the dataset's path now: {flag} PATH (the data may move; "
            "the run checks it is the same)"
        )


def _wide(device: torch.device) -> torch.dtype:
    """The dtype running statistics are summed in: float64, float32 on Apple GPUs (no float64 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _accumulate(totals: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> None:
    for k, v in stats.items():
        v = v.detach().to(_wide(v.device))
        totals[k] = totals[k] + v if k in totals else v


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
