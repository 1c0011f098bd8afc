"""Training checkpoints of a run folder, in safetensors, written so that a kill at any moment is harmless.

Layout::

    RUN/config.json                          the TrainConfig (JSON)
    RUN/checkpoints/step-00001000/model.safetensors   whole model (controlfoley.checkpoint format:
                                                      loads with from_pretrained / load_parts)
    RUN/checkpoints/step-00001000/state.safetensors   optimizer tensors, RNG states, `aux.*` weights
                                                      of trained modules outside the model (the
                                                      tokenizer's discriminator); JSON metadata:
                                                      step, optimizer param groups, parameter names
    RUN/checkpoints/latest                   name of the newest complete checkpoint
    RUN/model.safetensors                    the final model, written when the run ends

  A run that keeps an exponential moving average of its weights (`--ema-decay`, `ModelEMA`):

    RUN/checkpoints/step-00001000/model_raw.safetensors   whole model, the weights as trained (what
                                                      --resume loads; written first)
    RUN/checkpoints/step-00001000/model.safetensors   whole model, its trained tensors the EMA
                                                      (metadata `controlfoley_ema`, EMA_KEY), the
                                                      frozen parts as they are: what every reader
                                                      of a run loads (from_pretrained, generate,
                                                      info, --init, extract --tokenizer)
    RUN/checkpoints/step-00001000/state.safetensors   also `ema.*`: the EMA tensors in fp32, which
                                                      --resume restores exactly
    RUN/model_raw.safetensors, RUN/model.safetensors  the final model as trained, then the EMA

  The raw weights load by naming their file (`from_pretrained("RUN/model_raw.safetensors")`);
  the frozen parts are held by both files. A resume reads the raw weights where model.safetensors
  records an EMA (`RunDir.raw_model_file`, by its metadata, not by which files exist).

- Each file is written atomically (temporary file, fsync, rename) and `latest` is replaced last,
  so a reader only ever follows `latest` to a complete checkpoint; older ones beyond `keep_last`
  are deleted after that. A resume takes the newest complete checkpoint (`RunDir.latest_dir`):
  a kill after a checkpoint's files and before its pointer loses no step. To roll a run back to
  an older checkpoint, delete the newer step folders (editing `latest` is not enough).
- RNG states saved: torch CPU, every CUDA device, numpy's global and Python's `random`, from
  rank 0; every rank restores them. That is each rank's own state: every rank seeds the generators
  alike and the built-in recipes draw alike on every rank (their random choices come from
  (seed, step) generators, `recipes.step_generator`; dropout draws by shape), so all ranks hold the
  same states (a recipe that draws from the global generators differently per rank resumes, but
  not bit for bit: draw from `step_generator`). A CUDA rank's own device gets the state of rank 0's
  own device (saved with its index), not rank 0's copy of that device, which rank 0 never drew from.
- Each checkpoint records the split it was trained with (processes x micro-batches,
  `TrainState.split`): a resume on another split says so (same steps, float rounding apart).
- A part the run trains is trained as the model builds it: a checkpoint drops its record of having
  been trained with other settings (`model.trained_as`, from an --init that loaded it into a part
  built otherwise; `forget_retrained`); the parts the run leaves frozen keep theirs, so loading the
  run's model still says they will not behave as trained.
- `ModelEMA`: the EMA of the tensors the run trains in its model: every parameter with
  requires_grad, and the floating-point persistent buffers of the parts holding one (the built-in
  parts have none: their only buffers, the mel's, are neither persistent nor trained); not the
  frozen parts, and not the trained modules outside the model (the tokenizer recipe's
  discriminator, `aux.*`, is saved as trained). fp32, on the training device, updated after each
  optimizer step (once per step under gradient accumulation) with one `torch._foreach_lerp_`.
  Under torchrun every rank holds the same weights after each step (DDP averages the gradients and
  each rank steps its own copy of the same optimizer), so every rank updates its EMA alike and no
  rank communicates for it. `swapped_in()` puts the EMA into the model and the raw weights back
  after, exactly (validation and the EMA file are written from the model itself, so its records
  (`trained_parts`, `trained_as` after `forget_retrained`) are those of the raw file).
- `resolve_model_file(path)`: a checkpoint file, a checkpoint folder or a run folder -> model file.
- `nothing_to_resume_message`, `longer_run_hint`: what to say when --resume has no step left to run
  (a run's length is part of the run, so training longer is a new run initialised from it).
- `RunDir.write_failed`: the TrainingError of a run file that could not be written (a full disk):
  the file, the fix, what is intact and how to go on (--resume).
- `RunDir.remove_stale_temps`: temporary files of writes a kill interrupted, removed while the run's
  lock is held (a resumed run does it).
"""

import contextlib
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import socket
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from controlfoley._io import TEMP_NAME, atomic_write_text, remove_stale_temps, write_failure
from controlfoley._static import ModelModule
from controlfoley.checkpoint import (
    CONFIG_KEY, EMA_KEY, RAW_OF_EMA_KEY, read_metadata, read_state_dict, save_model, save_state_dict, trained_as, trained_parts,
)  # fmt: skip
from controlfoley.errors import CheckpointError, TrainingError, user_stacklevel
from controlfoley.presets import PRETRAINED, pretrained_path

__all__ = [
    "RunDir", "TrainState", "ModelEMA", "capture_rng", "restore_rng", "resolve_model_file", "shipped_preset", "longer_run_hint",
    "nothing_to_resume_message", "checkpoint_step", "forget_retrained", "MODEL_FILE", "RAW_MODEL_FILE",
]  # fmt: skip

STATE_KEY = "controlfoley_train_state"
MODEL_FILE = "model.safetensors"  # the model a run (or a checkpoint of it) gives its readers: the EMA where it keeps one
RAW_MODEL_FILE = "model_raw.safetensors"  # beside it, where it is an EMA: the weights as trained, which --resume loads
_HELD_LOCKS: set[int] = set()  # run-folder lock descriptors this process holds
_LOCKED_ROOTS: set[str] = set()  # the run folders (real paths) whose lock this process holds
_SAFETENSORS_TEMP = re.compile(r"\A\.tmp[A-Za-z0-9]{6}\Z")  # safetensors.torch.save_file's temporary file (Rust's tempfile crate)
_WRITABLE = "choose a writable folder (another --out), or make this one writable again"  # a run file's fix when not a full disk


def _drop_locks_in_child() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock descriptors, so the lock
    lives exactly as long as the trainer process (flock is shared by every copy of a descriptor)."""
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@dataclass
class TrainState:
    """What a checkpoint holds besides the model weights."""

    step: int
    optimizer: dict[str, Any]
    param_names: list[str]
    rng: dict[str, Any]
    path: Path
    aux: dict[str, torch.Tensor]  # trained modules outside the model (e.g. the discriminator), by name
    split: tuple[int, int] | None = None  # (processes, micro-batches per step) it was trained with; None: not recorded
    ema: dict[str, torch.Tensor] = field(default_factory=dict)  # the EMA of the model's trained tensors (fp32), by state_dict key; {}: none kept


def _ema_dtype(dtype: torch.dtype) -> torch.dtype:
    """The EMA's precision for a tensor of `dtype`: fp32 (bf16 / fp16 weights average in fp32), fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ModelEMA:
    """An exponential moving average (EMA) of the tensors a run trains in `model`: its parameters
    with requires_grad and the floating-point persistent buffers of the parts (top-level children)
    holding one, each once (a tensor under two names: the first). Kept in fp32 (fp64 for fp64 tensors) on the tensors'
    device; the frozen parts are not copied. `update(step)` after each optimizer step:
    ema <- ema + (1 - decay_t) x (weights - ema), i.e. decay_t x ema + (1 - decay_t) x weights."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise TrainingError(f"ModelEMA: decay must be in [0, 1), got {decay} (TrainConfig.ema_decay, --ema-decay, checks it)")
        self.decay, self.warmup = float(decay), bool(warmup)
        trained = {name for name, part in model.named_children() if any(p.requires_grad for p in part.parameters())}
        seen: set[int] = set()
        self.names: list[str] = []
        self._live: list[torch.Tensor] = []  # the model's own tensors (parameters and buffers)
        for key, t in model.state_dict(keep_vars=True).items():
            if isinstance(t, nn.Parameter):
                wanted = t.requires_grad
            else:  # a persistent buffer (statistics a trained part updates itself); not a module's extra state
                wanted = isinstance(t, torch.Tensor) and key.split(".")[0] in trained and t.is_floating_point()
            if wanted and id(t) not in seen:
                seen.add(id(t))
                self.names.append(key)
                self._live.append(t)
        if not self._live:
            raise TrainingError("ModelEMA: the model has no trained tensors to average (no parameter with requires_grad)")
        with torch.no_grad():  # fp32, or the tensor's own precision where it is wider (a plugin's fp64 tensors)
            self._shadow = [t.detach().to(_ema_dtype(t.dtype), copy=True) for t in self._live]

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step `step` (counted from 0). With `warmup`:
        min(decay, (1 + step) / (10 + step)), the formula of TensorFlow's ExponentialMovingAverage
        with num_updates (and of diffusers' EMAModel by default, which counts one step later and
        copies the weights at its first update): 0.1 after the first step, 0.5 after the ninth."""
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the EMA towards the model's tensors now, after optimizer step `step` (counted from 0)."""
        current = [t if t.dtype == e.dtype else t.to(e.dtype) for t, e in zip(self._live, self._shadow, strict=True)]
        torch._foreach_lerp_(self._shadow, current, 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA in the model's tensors while the block runs; after it (also on an error) the raw
        values again, bit for bit (copies of them are held meanwhile: one more copy of the trained
        tensors on their device)."""
        with torch.no_grad():
            raw = [t.detach().clone() for t in self._live]
            torch._foreach_copy_(self._live, self._shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live, raw)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA tensors (fp32), by the model's state_dict keys."""
        return dict(zip(self.names, self._shadow, strict=True))

    def load(self, tensors: Mapping[str, torch.Tensor], where: str) -> None:
        """Take the EMA saved in a checkpoint (`state_dict()`'s tensors) exactly; a CheckpointError
        names the keys that differ from what this run averages."""
        own = self.state_dict()
        missing = [k for k in own if k not in tensors]
        unexpected = sorted(k for k in tensors if k not in own)
        shapes = [k for k, v in own.items() if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
        if missing or unexpected or shapes:
            said = "; ".join(
                f"{what} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for what, keys in (("missing", missing), ("not trained by this run", unexpected), ("of another shape", shapes))
                if keys
            )
            raise CheckpointError(
                f"the EMA of the weights in {where} does not match the tensors this run trains ({said}); was the checkpoint "
                "written by another recipe or --trainable choice? Resume with the run's own settings, or start a new --out"
            )
        with torch.no_grad():
            for shadow, key in zip(self._shadow, self.names, strict=True):
                shadow.copy_(tensors[key].to(shadow.dtype))

    def metadata(self, step: int) -> str:
        """The EMA_KEY record of the model file holding this EMA after `step` optimizer steps."""
        return json.dumps({"decay": self.decay, "warmup": self.warmup, "step": step, "raw": RAW_MODEL_FILE})


def capture_rng(device: torch.device | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able values) of every global RNG a training step could touch; `device`: the
    one this process trains on (a CUDA one's index is recorded, for `restore_rng`)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, py_gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(py_state, dtype=torch.int64)
    meta: dict[str, Any] = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [version, py_gauss]}
    if device is not None and device.type == "cuda" and f"rng.cuda.{_cuda_index(device)}" in tensors:
        meta["cuda_device"] = _cuda_index(device)
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Set the global generators to a checkpoint's states. `device`: the one this process trains on;
    a CUDA one gets the state of the device the checkpoint's writer trained on (under torchrun
    rank 0 saves, and another rank's device must continue as rank 0's did, not from rank 0's
    untouched copy of that device)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
        own = tensors.get(f"rng.cuda.{meta.get('cuda_device')}")
        if own is not None and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(own, _cuda_index(device))
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, py_gauss = meta["python"]
    random.setstate((int(version), tuple(int(x) for x in tensors["rng.python"].tolist()), py_gauss))


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _flatten_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v)
            tensors[f"optim.{idx}.{k}"] = v
    return tensors, list(sd["param_groups"])


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], groups: list[Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def forget_retrained(model: ModelModule) -> None:
    """Drop from `model.trained_as` (what parts loaded into a part built otherwise were trained as) the
    parts it trains now (any parameter with requires_grad, as the run records them trained): their
    weights are trained as the model builds them from here on. Called before each checkpoint, so the
    checkpoints and the final model (saved after the last checkpoint) record only frozen parts."""
    record = getattr(model, "trained_as", None)
    if not record:
        return
    training = {name for name, part in model.named_children() if any(p.requires_grad for p in part.parameters())}
    if training & set(record):  # (setattr: model.py does not declare the attribute, and nn.Module's __setattr__ types a Tensor or Module)
        model.trained_as = {k: v for k, v in record.items() if k not in training}


def shipped_preset(source: str | Path | None) -> str | None:
    """The preset whose shipped weights `source` names (a preset name that ships weights, where no
    file or folder has that name: what `--init` and `extract --tokenizer` load, `resolve_model_file`);
    None for a path or nothing."""
    if source is None or str(source) not in PRETRAINED:
        return None
    return None if Path(source).exists() else str(source)


def refuse_run_config(p: Path) -> None:
    """A training run's config.json given where a model file goes (--init, extract --tokenizer,
    generate --model, from_pretrained): named, with the run's folder to give. Read as safetensors it
    was "header too large ... truncated, or another format?". Only a .json file is read."""
    if p.suffix.lower() == ".json" and p.is_file():
        from controlfoley.train.config import _is_run_config

        if _is_run_config(p):
            raise CheckpointError(f"{p} is a training run's config.json, not a model file; give the run's folder, {p.parent}")


def resolve_model_file(path: str | Path) -> Path:
    """A model file from a checkpoint file, a checkpoint folder, or a run folder (its final model,
    else its latest checkpoint); also a run's `checkpoints` folder or its `latest` pointer file, and
    the name of a preset that ships weights (`specmaskfoley_synthetic`: `--init` and `extract
    --tokenizer` fine-tune from or tokenize with them), where no file or folder has that name."""
    p = Path(path)
    if shipped_preset(path) is not None:
        shipped = pretrained_path(str(path))
        if shipped is None:
            raise CheckpointError(f"the weights of preset {path} are missing from this installation ({PRETRAINED[str(path)]}); reinstall controlfoley")
        return shipped
    if _is_latest_pointer(p):  # a run's pointer file (it names a step folder), not a model
        p = p.parent.parent
    elif p.is_file():
        refuse_run_config(p)
        return p
    elif p.name == "checkpoints" and p.is_dir() and not (p / "model.safetensors").is_file() and (p / "latest").is_file():
        p = p.parent  # a run's checkpoints folder
    if (p / "model.safetensors").is_file():  # a checkpoint folder, or a finished run
        return p / "model.safetensors"
    latest = RunDir(p).latest_dir()  # a run still in progress
    if latest is not None:
        return latest / "model.safetensors"
    raise CheckpointError(f"no model checkpoint at {p}: give a .safetensors file, a checkpoint folder or a run folder with checkpoints")


def _is_latest_pointer(p: Path) -> bool:
    """`RUN/checkpoints/latest` as `RunDir.save` writes it: a short text naming a sibling step folder."""
    if p.name != "latest" or p.parent.name != "checkpoints" or not p.is_file() or p.stat().st_size > 256:
        return False
    try:
        name = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return name.startswith("step-") and (p.parent / name).is_dir()


# what a new run loads from a finished one to go on training it: what the recipe loads and trains
_CONTINUE_PARTS = {"tokenizer": ("tokenizer",), "backbone": ("tokenizer", "backbone"), "controlnet": ("tokenizer", "backbone", "control_encoder", "aligner", "controlnet")}


def longer_run_hint(root: str | Path, recipe: str) -> str:
    from controlfoley.train.config import known_base

    # a user recipe: the parts of the built-in it is based on; one from scratch says its own (PARTS)
    parts = ",".join(_CONTINUE_PARTS.get(known_base(recipe) or "", ())) or "PARTS"
    which = " (PARTS: the model parts it trains, comma-separated, e.g. tokenizer,backbone)" if parts == "PARTS" else ""
    plugins = ""
    try:  # a plugin's recipe: the command loads its file, as the run's own command did
        from controlfoley.train.config import recipe_plugins

        plugins = "".join(f"--plugin {r['module'] if r.get('module') else shlex.quote(r['path'])} " for r in recipe_plugins(recipe))
    except Exception:  # noqa: BLE001  (a hint: a recipe that cannot be looked up here gets the command without it)
        plugins = ""
    return (
        f"start a new run from this one: `controlfoley {plugins}train {recipe} --init {root} --init-parts {parts} --steps N --out NEW_RUN`{which} "
        "with the run's --data and other settings (a new run: its learning rate warms up and decays again)"
    )


def nothing_to_resume_message(root: str | Path, recipe: str, step: int, steps: int, stop_at: int | None) -> str:
    """--resume found the run at `step`, where this invocation would stop: nothing to train."""
    if step >= steps:
        return (
            f"the run in {root} already finished at step {step} (its --steps {steps}): nothing to resume; its model is "
            f"{Path(root) / 'model.safetensors'}. --resume cannot lengthen a run (--steps is part of its schedule); to train longer, "
            f"{longer_run_hint(root, recipe)}"
        )
    return (
        f"the run in {root} is at step {step}, at or past --stop-at {stop_at}: nothing to do in this invocation; continue with "
        f"--resume and a later --stop-at (or none, to run to step {steps})"
    )


def checkpoint_step(d: Path) -> int:
    """The step of checkpoint folder `step-00001000`."""
    return int(d.name[5:])


class RunDir:
    """A training run's folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.ckpt_root = self.root / "checkpoints"
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.final_model = self.root / MODEL_FILE
        self.final_raw_model = self.root / RAW_MODEL_FILE  # written where the run keeps an EMA (then final_model holds it)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `ROOT/.lock` (an OS file lock: released when the process ends, SIGKILL included)
        while a trainer uses the run; a second trainer on the same folder is refused. Forked
        children (DataLoader workers) close their copy at once, so a killed trainer's orphaned
        workers do not keep the run locked. On a file system without locks it warns and goes on.
        The run folder itself, when this call created it and it holds nothing but the lock when the
        trainer ends (a run refused by its checks before recording anything), is removed again
        (parent folders created with it are kept)."""
        created = not self.root.exists()
        path = self.root / ".lock"
        fd, owner = self._open_locked(path), os.getpid()
        if fd is None:  # no locking on this file system (warned)
            yield
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _HELD_LOCKS.add(fd)
            _LOCKED_ROOTS.add(os.path.realpath(self.root))
            try:
                yield
            finally:
                if os.getpid() == owner:  # a forked child closed its copy at fork: the number may be another file's now
                    _HELD_LOCKS.discard(fd)
                    _LOCKED_ROOTS.discard(os.path.realpath(self.root))
                    if created:
                        self._remove_if_unused(path)  # while still locked; a trainer that opened it meanwhile retries
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if os.getpid() == owner:
                os.close(fd)

    def _open_locked(self, path: Path) -> int | None:
        """A descriptor of `path` holding its exclusive lock; None where the file system has no locks.
        A lock file can be removed by its holder (`_remove_if_unused`) between our open and our lock:
        then the lock is on a file no longer at `path` and locks nothing, so it is taken again."""
        for _ in range(100):
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder went between mkdir and open: again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise TrainingError(
                    f"{self.root} is in use by another training process ({holder}); wait for it to end or stop it, "
                    "or train into another --out"
                ) from None
            except OSError as e:  # e.g. ENOSYS / EOPNOTSUPP: a network file system mounted without locks
                os.close(fd)
                warnings.warn(f"cannot lock {path} ({e.strerror or e}); nothing stops a second trainer on this run folder", stacklevel=user_stacklevel())
                return None
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        raise TrainingError(f"cannot lock {path}: the file kept being removed while it was opened; is another program deleting {self.root}?")

    def _remove_if_unused(self, lock_path: Path) -> None:
        with contextlib.suppress(OSError):
            if [p.name for p in self.root.iterdir()] == [lock_path.name]:
                lock_path.unlink()
                self.root.rmdir()

    def remove_stale_temps(self) -> list[Path]:
        """Remove what killed writes left: `atomic_path`'s temporary files (named exactly
        `.NAME.tmp-` + 8 random characters + `.EXT`) and those of safetensors' own writer, which
        fills `.tmp` + 6 random letters or digits next to the target before renaming it there, in the
        run folder, `checkpoints/` and each `checkpoints/step-*/` (either is as large as the model
        it holds). Only while this process holds the run's lock (no other trainer can be writing
        them); without it (a file system without locks) nothing is removed. Returns the files removed."""
        if os.path.realpath(self.root) not in _LOCKED_ROOTS:
            return []
        folders = [self.root, self.ckpt_root, *(p for p in sorted(self.ckpt_root.glob("step-*")) if p.is_dir() and not p.is_symlink())]
        return [f for folder in folders for pattern in (TEMP_NAME, _SAFETENSORS_TEMP) for f in remove_stale_temps(folder, pattern=pattern)]

    def write_failed(self, what: str, path: Path, error: BaseException) -> TrainingError:
        """The error for a run file (`what`, at `path`) that could not be written: the file and why,
        the fix (a full disk: free space), what is intact, and how to go on."""
        return self.write_stopped(what, write_failure(path, error, fix=_WRITABLE))

    def write_stopped(self, what: str, reason: str) -> TrainingError:
        """`what` could not be written (`reason` names the file and the fix): what is intact and how
        to go on. --resume continues from the last complete checkpoint; a run without a config.json
        yet is started again by the same command."""
        try:
            latest = self.latest_dir()
        except CheckpointError:
            latest = None
        if latest is not None:
            then = (
                f"the last complete checkpoint, {latest}, is intact; then continue with the same command and --resume, which continues "
                "from the last complete checkpoint (old checkpoints are removed only after a new one is complete)"
            )
        elif self.config_path.is_file():
            then = "no checkpoint was written yet; then continue with the same command and --resume, which starts the run from step 0"
        else:
            then = "nothing was recorded yet; then run the same command again"
        return TrainingError(f"{what} could not be written: {reason}. {then[0].upper()}{then[1:]}")

    def latest_dir(self, *, say: bool = False) -> Path | None:
        """The checkpoint a resume continues from: the newest complete one. That is the one `latest`
        points to, unless a kill came between a checkpoint's last file and the pointer (`save`):
        then the newer, complete one is taken. If the pointer's is gone or incomplete, or the
        pointer is missing, the newest complete checkpoint too. Each of these warns when `say`
        (the caller resumes from it). None when the run has none."""
        pointer = self.ckpt_root / "latest"
        complete = self._complete_dirs()
        if pointer.is_file():
            d = self.ckpt_root / pointer.read_text(encoding="utf-8").strip()
            if d in complete:
                if d != complete[-1] and say:
                    warnings.warn(
                        f"{pointer} points to {d.name}, but {complete[-1].name} is complete and newer (a run stopped after writing "
                        f"it, before moving the pointer); resuming from {complete[-1].name}. To go back to {d.name} instead, delete "
                        f"the newer step folders",
                        stacklevel=user_stacklevel(),
                    )
                return complete[-1]
            if not complete:
                raise CheckpointError(
                    f"{pointer} points to {d}, which is missing or incomplete, and no other checkpoint is complete; "
                    f"restore the folder, or start a new run (another --out, or delete {self.ckpt_root})"
                )
            if say:
                warnings.warn(f"{pointer} points to {d.name}, which is missing or incomplete; resuming from {complete[-1].name}, the newest complete checkpoint", stacklevel=user_stacklevel())
            return complete[-1]
        if complete:
            if say:
                warnings.warn(f"{self.ckpt_root} has no 'latest' pointer; resuming from {complete[-1].name}, the newest complete checkpoint", stacklevel=user_stacklevel())
            return complete[-1]
        return None

    def step_dir(self, step: int) -> Path:
        """The folder of checkpoint `step` (written or not)."""
        return self.ckpt_root / f"step-{step:08d}"

    def is_complete(self, step: int) -> bool:
        """Whether checkpoint `step` holds both its files (each written atomically)."""
        return self.step_dir(step) in self._complete_dirs()

    def _complete_dirs(self) -> list[Path]:
        """step-* folders holding both files (each written atomically), oldest first. (A run with an
        EMA writes model_raw.safetensors before both: a folder holding them holds it too.)"""
        dirs = [p for p in self.ckpt_root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(p for p in dirs if (p / "model.safetensors").is_file() and (p / "state.safetensors").is_file())

    def save(
        self,
        step: int,
        model: ModelModule,
        optimizer: torch.optim.Optimizer,
        param_names: list[str],
        keep_last: int,
        extra: Mapping[str, Any],
        *,
        aux: Mapping[str, torch.Tensor] | None = None,
        device: torch.device | None = None,
        ema: ModelEMA | None = None,
    ) -> Path:
        """Write checkpoint `step` (model, then state), then move `latest` to it, then prune.
        `device`: the one this process trains on (`capture_rng`). `ema`: the run's EMA of its
        weights: the model as trained goes to model_raw.safetensors first, the EMA to
        model.safetensors, its fp32 tensors to the state too (`ema.*`)."""
        d = self.step_dir(step)
        name = d.name
        info = json.dumps({"step": step, **extra})
        forget_retrained(model)  # what the run trains is trained as built now: no record of other settings
        self._save_models(model, d, {STATE_KEY: info}, ema, step)
        opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
        rng_tensors, rng_meta = capture_rng(device)
        record: dict[str, Any] = {"step": step, "param_groups": groups, "param_names": param_names, "rng": rng_meta, **extra}
        if ema is not None:
            record["ema"] = {"decay": ema.decay, "warmup": ema.warmup}
        meta = {STATE_KEY: json.dumps(record)}
        aux_tensors = {f"aux.{k}": v for k, v in (aux or {}).items()}
        ema_tensors = {f"ema.{k}": v for k, v in (ema.state_dict() if ema is not None else {}).items()}
        save_state_dict(d / "state.safetensors", {**opt_tensors, **rng_tensors, **aux_tensors, **ema_tensors}, meta)
        pointer = self.ckpt_root / "latest"
        try:
            atomic_write_text(pointer, name)
        except OSError as e:  # both files are complete: a resume finds this checkpoint without the pointer
            raise CheckpointError(write_failure(pointer, e, fix=_WRITABLE)) from e
        self._prune(keep_last, keep=name)
        return d

    def save_final(self, model: ModelModule, ema: ModelEMA | None = None, *, step: int = 0) -> Path:
        """The run's final model (RUN/model.safetensors); with `ema` (after `step` optimizer steps), the
        weights as trained to RUN/model_raw.safetensors first, then the EMA to model.safetensors, the
        file whose presence marks the run finished."""
        self._save_models(model, self.root, {}, ema, step)
        return self.final_model

    @staticmethod
    def _save_models(model: ModelModule, folder: Path, meta: Mapping[str, str], ema: ModelEMA | None, step: int) -> None:
        """MODEL_FILE in `folder`, atomically; with `ema`, RAW_MODEL_FILE (the weights as trained) before
        it and the EMA in it (EMA_KEY in its metadata): both written from the model itself, so that their
        records (trained parts, trained_as) are the same."""
        if ema is None:
            save_model(model, folder / MODEL_FILE, extra_metadata=meta)
            return
        save_model(model, folder / RAW_MODEL_FILE, extra_metadata={**meta, RAW_OF_EMA_KEY: json.dumps({"ema": MODEL_FILE, "step": step})})
        with ema.swapped_in():
            save_model(model, folder / MODEL_FILE, extra_metadata={**meta, EMA_KEY: ema.metadata(step)})

    def raw_model_file(self, d: Path) -> Path:
        """The file of checkpoint folder `d` with the weights as trained, which a resume loads: its
        model_raw.safetensors where its model.safetensors records an EMA (EMA_KEY), else model.safetensors."""
        model = d / MODEL_FILE
        if EMA_KEY not in read_metadata(model):
            return model
        raw = d / RAW_MODEL_FILE
        if not raw.is_file():
            raise CheckpointError(
                f"{model} holds an EMA of the weights, and {raw}, the weights as trained that --resume continues from, is missing; "
                f"restore it, or delete {d} to resume from the checkpoint before it"
            )
        return raw

    def _prune(self, keep_last: int, keep: str) -> None:
        dirs = sorted(p for p in self.ckpt_root.glob("step-*") if p.is_dir())
        old = [p for p in dirs if p.name != keep][: max(0, len(dirs) - keep_last)]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)

    def drop_after(self, step: int) -> None:
        """Delete checkpoint folders newer than `step`: left by a killed run, never pointed to."""
        for p in self.ckpt_root.glob("step-*"):
            if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) > step:
                shutil.rmtree(p, ignore_errors=True)

    def load_state(self, d: Path) -> TrainState:
        tensors, meta = read_state_dict(d / "state.safetensors")
        if STATE_KEY not in meta:
            raise CheckpointError(f"{d / 'state.safetensors'} holds no training state; it was not written by controlfoley.train")
        info = json.loads(meta[STATE_KEY])
        rng_tensors = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        opt = _unflatten_optimizer(tensors, info["param_groups"])
        aux = {k[4:]: v for k, v in tensors.items() if k.startswith("aux.")}
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        split = (int(info["world_size"]), int(info["grad_accum"])) if "world_size" in info and "grad_accum" in info else None
        rng = {"tensors": rng_tensors, "meta": info["rng"]}
        return TrainState(int(info["step"]), opt, list(info["param_names"]), rng, d, aux, split, ema=ema)

    def load_model_weights(self, d: Path, model: ModelModule) -> None:
        """Load a checkpoint's weights as trained (`raw_model_file`: not its EMA), refusing one saved
        from another model config."""
        from controlfoley.checkpoint import check_state_dict

        state, meta = read_state_dict(self.raw_model_file(d))
        saved = json.loads(meta.get(CONFIG_KEY, "null"))
        # the guidance rule and sampler settings are sampling-time choices, not weights: a run whose
        # config resolves them differently (a newer library's defaults) resumes; anything else must match
        sampling_only = ("guidance", "sampler")
        if not isinstance(saved, dict) or {k: v for k, v in saved.items() if k not in sampling_only} != {
            k: v for k, v in model.config.to_dict().items() if k not in sampling_only
        }:
            name = saved.get("name") if isinstance(saved, dict) else None
            raise CheckpointError(
                f"checkpoint {d} was saved from model config {name!r}, which differs from this run's "
                f"({model.config.name!r}, preset and overrides). Resume with the run's own --preset, or start a new --out."
            )
        check_state_dict(model, state, str(d))
        model.load_state_dict(state, strict=True)
        model.trained_parts = trained_parts(meta)
        model.trained_as = trained_as(meta)  # the frozen parts' record of other settings goes on into the next checkpoints
