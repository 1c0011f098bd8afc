"""Training metrics: one JSON object per line in RUN/metrics.jsonl, and TensorBoard events when installed.

- Lines look like `{"step": 100, "split": "train", "loss": 5.41, "lr": 0.00025, "clips_per_s": 812.0, "time": 1.7e9}`.
- `read_metrics(run_or_file, split)`: the lines back, from the run folder or the file itself; a
  split that is neither "train", "val" nor one the file holds is an error (a typo, not an empty run).
- On resume the file is cut back to the checkpoint's step (atomically), so a run that was killed
  and resumed has the same lines as one that was not.
- TensorBoard (`RUN/tb/`) through `torch.utils.tensorboard` when the `tensorboard` package is
  installed (`pip install 'controlfoley[tensorboard]'`); without it, JSONL alone (but
  `--tensorboard` given by name on the command line is an error naming the install command).
  TensorBoard is a second view of metrics.jsonl: events that cannot be written (a full disk, a
  `tb` that is a file) are warned about once, naming the folder and the reason, and TensorBoard is
  off for the rest of the run, which goes on (a full disk stops it at the next line or checkpoint).
Only rank 0 writes; other ranks hold a disabled logger. A line that cannot be written (a full disk)
stops the run with a TrainingError naming the file, the fix and how to go on (--resume).
"""

import contextlib
import difflib
import json
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controlfoley._io import atomic_write_text, write_failure
from controlfoley.errors import MissingDependencyError, TrainingError, require, user_stacklevel

__all__ = ["MetricsLogger", "read_metrics", "METRICS_FILE", "SPLITS"]

METRICS_FILE = "metrics.jsonl"
SPLITS = ("train", "val")  # what the training loop logs: "train" every --log-every step, "val" at each validation
_RUN_MARKS = ("config.json", "checkpoints", "model.safetensors")  # what a run folder holds besides metrics


def read_metrics(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Lines of a run's metrics (optionally one split); a torn last line is skipped. `path` is the
    run folder or its metrics.jsonl; a run that has logged nothing yet, or a .jsonl file not written
    yet, gives []. Anything else (a folder that is no run, another file, a missing folder) is a
    TrainingError, as is a `split` that is neither one the training loop logs (SPLITS: "train",
    "val") nor one the file holds (a typo would read as a run with no lines)."""
    p = _metrics_file(Path(path))
    rows: list[dict[str, Any]] = []
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    if split is None:
        return rows
    held = sorted({str(r["split"]) for r in rows if "split" in r})
    if split not in SPLITS and split not in held:
        known = sorted({*SPLITS, *held})
        close = difflib.get_close_matches(str(split), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TrainingError(
            f"read_metrics: no split {split!r} in {p}{hint}; the training loop logs {', '.join(map(repr, SPLITS))} "
            f"and this file holds {', '.join(map(repr, held)) or 'no lines yet'}; split=None reads every line"
        )
    return [r for r in rows if r.get("split") == split]


def _metrics_file(p: Path) -> Path:
    hint = "give a training run folder (the --out of `controlfoley train`) or its metrics.jsonl"
    if p.is_dir():
        if (p / METRICS_FILE).is_file() or any((p / m).exists() for m in _RUN_MARKS):
            return p / METRICS_FILE  # a run that has not logged yet has none: no rows
        raise TrainingError(f"{p} is a folder but not a training run (no {METRICS_FILE}, config.json or checkpoints/ in it); {hint}")
    if p.is_file():
        if p.suffix != ".jsonl":
            raise TrainingError(f"{p} is not a metrics file (metrics are JSON lines, {METRICS_FILE}); {hint}")
        return p
    if p.suffix == ".jsonl":
        return p  # not written yet (a run that has not logged, or not started): no rows
    raise TrainingError(f"{p} does not exist; {hint}")


class MetricsLogger:
    def __init__(self, path: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        self._tb: Any = None
        if not enabled:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= resume_step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
            elif path.exists():
                path.unlink()
            self._file = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise self._failed(e) from e
        if tensorboard:
            try:
                tb = require("torch.utils.tensorboard", extra="tensorboard", purpose="TensorBoard logging")
            except MissingDependencyError:
                tb = None  # the default: JSONL alone (--tensorboard by name was refused before the run)
            if tb is not None:
                try:
                    self._tb = tb.SummaryWriter(str(self.tb_dir), purge_step=resume_step)
                except OSError as e:  # tb/ is a file, or cannot be made
                    self._tensorboard_failed(e, resume_step)

    @property
    def tb_dir(self) -> Path:
        """The folder of the TensorBoard events: RUN/tb."""
        return self.path.parent / "tb"

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}, "time": time.time()}
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as e:  # a torn last line is skipped when read, and a resume cuts the file back to its checkpoint
            raise self._failed(e) from e
        if self._tb is not None:
            try:  # the writer's background thread raises its own failed write here, at the next event
                for k, v in values.items():
                    self._tb.add_scalar(f"{split}/{k}", float(v), step)
            except OSError as e:
                self._tensorboard_failed(e, step)

    def _tensorboard_failed(self, error: OSError, step: int | None, *, closing: bool = False) -> None:
        """Events that cannot be written: said once, and TensorBoard off for the rest of the run (it is
        a second view of metrics.jsonl, which has every number); training goes on."""
        # not closed: a writer whose background thread died can block in close() on its full queue
        self._tb = None
        when = "" if step is None else f" at step {step}"
        reason = write_failure(self.tb_dir, error, fix=f"check that {self.tb_dir} is a writable folder")
        then = "its last events may be missing" if closing else "TensorBoard logging is off for the rest of this run, which goes on"
        warnings.warn(
            f"TensorBoard events could not be written{when}: {reason}. {then[0].upper()}{then[1:]}: "
            f"{self.path} still has every number (controlfoley.train.read_metrics reads it)",
            stacklevel=user_stacklevel(),
        )

    def _failed(self, error: OSError) -> TrainingError:
        from controlfoley.train.checkpoints import RunDir  # the run folder is the file's

        return RunDir(self.path.parent).write_failed("the training metrics", self.path, error)

    def close(self) -> None:
        if not self.enabled:
            return
        with contextlib.suppress(OSError):  # the flush of a line already reported (a full disk)
            self._file.close()
        if self._tb is not None:
            try:  # writes the last events
                self._tb.close()
            except OSError as e:
                self._tensorboard_failed(e, None, closing=True)


def _clean(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf literals
