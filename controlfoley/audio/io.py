"""Audio file input and output.

Features
- `load_audio(path, sample_rate, mono=True)`: any format libsndfile reads (WAV, FLAC, OGG, ...), float32
  samples, channels averaged to mono unless `mono=False`, resampled with soxr (librosa's "soxr_hq") when the
  file's rate differs. Missing, unreadable or empty files raise MediaError with a one-line reason.
- `save_audio(path, wav, sample_rate)`: WAV or FLAC chosen by the extension, written atomically (temporary
  file + rename, `controlfoley._io.atomic_path`), 16-bit PCM by default; a torch tensor or a numpy array,
  [s] or [channels, s] (soundfile's [s, channels] layout is refused with the fix, wav.T). Integer PCM cannot
  hold values past full scale, so samples are clipped to [-1, 1] for PCM subtypes (float WAV keeps them),
  with a warning where the peak is clearly past full scale (> 1.01: not a rounding's overshoot), as
  `write_video` / `mux_audio` warn for their AAC track; within `_caller_reports_clipping()` the caller
  says it instead (the pipeline, once per clip; `controlfoley generate`, once per file).

References: soundfile (libsndfile bindings); librosa.resample with python-soxr.
"""

import contextlib
import numbers
import os
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from controlfoley._io import atomic_path, final_path, write_failure
from controlfoley.errors import MediaError, SampleRateError, ShapeError, user_stacklevel
from controlfoley.typing import Float, Shaped, Tensor

__all__ = ["load_audio", "save_audio", "WRITE_FORMATS"]

# extension -> (libsndfile format, default subtype)
WRITE_FORMATS: dict[str, tuple[str, str]] = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
_MAX_CHANNELS = 8  # more "channels" than this, fewer than samples: a [samples, channels] array
_CLIP_WARN_PEAK = 1.01  # a peak past this is clipped audibly, not a resampler's or a sum's rounding past 1.0
# True within _caller_reports_clipping(): the writers leave the clipping warning to their caller
_CALLER_REPORTS: ContextVar[bool] = ContextVar("controlfoley_caller_reports_clipping", default=False)


def _checked_rate(sample_rate: object, caller: str) -> int:  # a validator: it takes anything
    """A sample rate in Hz: a positive whole number (22050, a numpy integer, or a whole float such as
    22050.0), returned as an int; anything else (a bool, a str, 22050.5, 0, a negative) is a
    SampleRateError (a ConfigError and a ShapeError) naming `caller`. The one rule of save_audio,
    load_audio, read_audio_track, write_video, mux_audio, encode_audio and the metrics."""
    whole = isinstance(sample_rate, numbers.Integral) or (isinstance(sample_rate, numbers.Real) and float(sample_rate).is_integer())
    if isinstance(sample_rate, bool) or not whole or float(sample_rate) <= 0:  # type: ignore[arg-type]
        raise SampleRateError(f"{caller}: sample_rate is in Hz, a positive whole number such as 22050; got {sample_rate!r}")
    return int(sample_rate)  # type: ignore[call-overload]


def _clipping(samples: Tensor | np.ndarray) -> tuple[float, int, int] | None:
    """(peak, samples past full scale, samples) of a waveform whose clipping to [-1, 1] is audible
    (peak > 1.01, not a rounding's overshoot); None for one within full scale (or holding NaN)."""
    y = torch.as_tensor(samples).detach()
    peak = float(y.abs().max()) if y.numel() else 0.0
    if not peak > _CLIP_WARN_PEAK:  # NaN too: refused by the writers, not warned about
        return None
    return peak, int((y.abs() > 1.0).sum()), y.numel()


def _unreported_clipping(samples: Tensor | np.ndarray) -> tuple[float, int, int] | None:
    """`_clipping`, but None within `_caller_reports_clipping()`: what a writer (or the pipeline) is to say."""
    return None if _CALLER_REPORTS.get() else _clipping(samples)


@contextlib.contextmanager
def _caller_reports_clipping() -> Iterator[None]:
    """Within it, a waveform past full scale is not warned about by `save_audio`, `write_video`,
    `mux_audio` nor the pipeline's `_finish`: the caller says it once, its own way
    (`FoleyResult.save` / `save_video`: the pipeline that made the result said it;
    `controlfoley generate`: once per file, naming it). Per thread and task (a ContextVar)."""
    token = _CALLER_REPORTS.set(True)
    try:
        yield
    finally:
        _CALLER_REPORTS.reset(token)


def _warn_clipping(samples: Tensor | np.ndarray, caller: str, what: str, path: Path, fix: str) -> None:
    """The writers' warning that `what` (a PCM subtype, "the AAC track") clips `samples` to
    [-1, 1] in `path` (named as it will be, not as a temporary file), with `fix`; none where the
    clipping is inaudible or the caller reports it (`_caller_reports_clipping`)."""
    clip = _unreported_clipping(samples)
    if clip is not None:  # hard clipping distorts: say so rather than write a square wave silently
        peak, n, size = clip
        warnings.warn(
            f"{caller}: the waveform peaks at {peak:.3g}, past full scale (1.0): {what} clips {n} of its {size} samples "
            f"to [-1, 1] in {final_path(path)}; {fix}",
            stacklevel=user_stacklevel(),
        )


def load_audio(path: str | os.PathLike[str], sample_rate: int, mono: bool = True) -> Float[Tensor, "*ch s"]:
    """Read an audio file as float32 at `sample_rate`: [s] when `mono`, else [channels, s]."""
    path = Path(path)
    sample_rate = _checked_rate(sample_rate, "load_audio")
    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [s, channels]
    except RuntimeError as e:  # LibsndfileError derives from it
        reason = (str(e).splitlines()[0] if str(e) else type(e).__name__).rstrip(". ")
        raise MediaError(f"cannot decode audio file {path}: {reason}. Is it a valid WAV/FLAC/OGG file?") from e
    if data.shape[0] == 0:
        raise MediaError(f"audio file {path} holds no samples; re-export it or leave it out")
    y = data.T  # [channels, s]
    if mono:
        y = y.mean(axis=0, keepdims=True)
    if file_rate != sample_rate:
        y = librosa.resample(y, orig_sr=file_rate, target_sr=sample_rate, res_type="soxr_hq", axis=-1)
    out = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return out[0] if mono else out


def save_audio(
    path: str | os.PathLike[str], wav: Shaped[Tensor, "*ch s"] | np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write [s] or [channels, s] samples in [-1, 1] to a .wav or .flac file atomically; returns the path.

    `wav`: a float torch tensor, or a numpy array (converted). [samples, channels] (soundfile's layout,
    up to 8 channels) is refused with a ShapeError: pass wav.T. `sample_rate`: a positive int (Hz).
    `subtype` is a libsndfile subtype name ("PCM_16", "PCM_24", "FLOAT" for WAV); default 16-bit PCM,
    which clips samples to [-1, 1]: a peak past 1.01 is warned about (normalise first: wav / wav.abs().max()).
    """
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(
            f"cannot write audio to {path}: unknown extension {path.suffix!r}. save_audio writes {', '.join(WRITE_FORMATS)}."
        )
    sample_rate = _checked_rate(sample_rate, "save_audio")
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    if not isinstance(wav, torch.Tensor):
        raise ShapeError(f"save_audio takes a float waveform [s] or [channels, s] as a torch tensor or numpy array, got {type(wav).__name__}")
    if wav.dim() == 2 and wav.shape[1] <= _MAX_CHANNELS < wav.shape[0]:
        raise ShapeError(
            f"save_audio takes [s] or [channels, s], got shape {tuple(wav.shape)}: this looks like [samples, channels] "
            "(soundfile's layout); pass wav.T"
        )
    if wav.dim() not in (1, 2) or wav.shape[-1] == 0:
        raise MediaError(f"save_audio expects a non-empty waveform [s] or [channels, s], got shape {tuple(wav.shape)}")
    if not wav.is_floating_point() or not bool(torch.isfinite(wav).all()):
        raise MediaError(f"save_audio expects finite float samples in [-1, 1] (got dtype {wav.dtype}); writing {path}")
    container, default_subtype = fmt
    subtype = subtype or default_subtype
    if not sf.check_format(container, subtype):
        raise MediaError(f"{container} cannot hold subtype {subtype!r}; try one of {sorted(sf.available_subtypes(container))}")
    y = wav.detach().to("cpu", torch.float32).reshape(-1, wav.shape[-1]).numpy().T  # [s, channels]
    if subtype.startswith("PCM"):
        fix = "normalise it first (wav / wav.abs().max()) or write float samples (subtype='FLOAT', .wav)"
        _warn_clipping(y, "save_audio", subtype, path, fix)
        y = np.clip(y, -1.0, 1.0)  # libsndfile would wrap out-of-range values around for integer PCM
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), y, sample_rate, subtype=subtype, format=container)
    except (OSError, sf.SoundFileError) as e:
        if isinstance(e, sf.SoundFileError) and not isinstance(e, OSError) and "System error" not in str(e):
            # libsndfile refusing the data itself (a rate FLAC cannot hold, say): not a failed write
            reason = " ".join(str(e).split()).replace(str(tmp), str(final_path(path)))
            raise MediaError(f"cannot write {final_path(path)} as {container} {subtype}: {reason}") from None
        # libsndfile says only "System error." for a failed write (a full disk among them): the disk
        # counts as full when it has less room than the file needs (its samples uncompressed, a header).
        # Named by the file it becomes: `path` may be another atomic_path's temporary file.
        need = y.size * _SAMPLE_BYTES.get(subtype, 2) + 4096
        raise MediaError(write_failure(path, e, fix="choose a writable output folder", folder=path.parent, need=need)) from None
    return path
