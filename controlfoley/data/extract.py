"""Fill a training dataset (format: `controlfoley.data.shards`) from media files or the synthetic world.

Features
- Per clip: the audio window of the model (`n_frames` mel frames: 848 = 9.85 s for `specmaskfoley`)
  -> mel front-end -> tokenizer codes `tokens` [F, T] (int16; int32 for codebooks of more than
  32768 codes); optionally the mel itself (`mel`, fp16, for the tokenizer recipe); one feature
  sequence per video extractor under its
  `output_key` (`sync` [t, d], `clip` [t8, d], fp16); optionally a CLAP-like embedding `clap`.
- Fixed per-clip shapes: audio is cropped or zero-padded to the window; video is cropped to
  `video_seconds` (default: the audio window), and a shorter video repeats its last frame (a frozen
  picture), giving floor(video_seconds x fps) frames per extractor (counted as `read_frames`
  counts them: 9.1 s at 10 fps is 91 frames). The paper feeds the whole 10 s clip (240 Synchformer and
  80 CLIP frames) while its audio window is 848 frames = 9.85 s:
  `video_seconds=10` (`--video-seconds 10`) reproduces that. Clips 1.5 windows long or longer (only
  their first window stored) and shorter than 90% of it (mostly padding) are counted in a warning.
  A video file is decoded only that far, its frames to `video_seconds` and its audio track to 1.5
  windows (memory and time bounded by the window, not the video).
- Sources: `extract_synthetic` renders clips of `SyntheticWorld` at the model's sample rate
  (CLAP-like vector from the clip's class ids, the audio-prompt role); `extract_files` reads video
  files (PyAV: audio track and frames at each extractor's rate) or audio files (no video features, so refused, or with `skip_bad`
  skipped, when video extractors are given), with optional tags for `clap`.
- Checked before any clip is read: inputs that do not exist (without `skip_bad`), an audio file
  among the inputs of video extractors, a clip id given twice, tags a fixed-vocabulary text extractor cannot encode (each named with its list
  file and line). Extractors that give only some of the preset's control features are warned about
  up front, and `extract_main` ends by saying which recipes the dataset serves for the preset.
- The tokenizer's weights come from a checkpoint (`tokenizer=`: a file, checkpoint folder or run
  folder of the `tokenizer` recipe, a leading `~` expanded as in the extractors' file arguments, or
  the name of a preset that ships weights, e.g. `specmaskfoley_synthetic`); without one the codes
  of an untrained tokenizer are stored and a warning says so, except with `mel=True` (mels for the
  tokenizer recipe, where that is expected; the tokens' provenance still records it, and training a
  backbone on them warns).
  The info's `tokenizer` records the resolved path given (for a preset name: its shipped weights
  file, with the name in `tokenizer_preset`), else null (see `controlfoley.train.provenance`).
- `extract_main(argv)`: the `controlfoley extract` command (see `build_parser`).

References: SpecMaskFoley sec. 4.2 (10 s at 22.05 kHz -> 848 frames -> 5 x 53 tokens; Synchformer
240 frames and CLIP 80 frames per 10 s clip).
"""

import argparse
import hashlib
import json
import logging
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from controlfoley._io import atomic_write_text, check_writable_folder
from controlfoley._suffixes import FFMPEG_AUDIO_SUFFIXES, SOUNDFILE_SUFFIXES
from controlfoley.config import parse_overrides, parse_spec
from controlfoley.control.encoders import check_widths
from controlfoley._registry import EXTRACTORS
from controlfoley.data.extractors import FRAME_SIZE, PATH_ARGS, build_extractor, extractors_writing
from controlfoley.data.shards import INDEX_FILE, PROGRESS_FILE, ShardIndex, ShardWriter, finished_extraction
from controlfoley.errors import ControlFoleyError, DataError, MediaError, ShapeError, one_line, user_stacklevel
from controlfoley.typing import Tensor

log = logging.getLogger(__name__)

__all__ = ["Extraction", "extract_synthetic", "extract_files", "extract_main", "build_parser", "AUDIO_SUFFIXES"]

AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES | FFMPEG_AUDIO_SUFFIXES  # audio files (read by video.read_audio_file)
SKIPPED_FILE = "skipped.tsv"  # with skip_bad: the clips left out, one per line: id TAB error
FrameSource = Callable[[float, int], Tensor]  # (fps, square side in pixels) -> uint8 frames [n, h, w, 3]


@dataclass(frozen=True)
class VideoSource:
    """A clip's video: its frames at any rate and size, decoded on demand, and the file it came
    from (the key of precomputed features; None for rendered clips, whose frames keep their size)."""

    frames_at: FrameSource
    path: Path | None = None


Loaded = tuple[Tensor, VideoSource | None, Tensor | None]  # waveform, video, clap vector
Item = tuple[str, Callable[[], Loaded]]  # clip id, and what reads or renders the clip (skipped on resume)


class FeatureFileError(DataError, ShapeError):
    """A clip's precomputed feature file that cannot serve (NaN, the wrong width, integers): a bad
    input like an unreadable video, so `skip_bad` leaves the clip out; still a ShapeError, the
    error the extractor raised, for code that catches that."""


class ListError(DataError):
    """A wrong entry of the input list (tags the text extractor cannot encode): the list is fixed,
    so `skip_bad`, which leaves out unreadable media, does not skip it."""


def _extractor_hint(keys: Sequence[str]) -> str:
    """"an extractor writing 'clip' (clip_openclip, clip_precomputed or synthetic_clip) ...", per key."""
    parts = []
    for k in keys:
        names = extractors_writing(k)
        parts.append(f"{k!r} ({', '.join(names[:-1]) + ' or ' + names[-1] if len(names) > 1 else names[0]})" if names else repr(k))
    return f"an extractor writing {' and one writing '.join(parts)} (--extractors NAME or --extractor NAME,ARG=VALUE)"


class Extraction:
    """A model (for mel + tokenizer) and the extractors, turning raw clips into stored features."""

    def __init__(
        self,
        preset: str,
        *,
        extractors: Sequence[str | tuple[str, Mapping[str, Any]]] = (),
        clap: str | tuple[str, Mapping[str, Any]] | None = None,
        tokenizer: str | None = None,
        mel: bool = False,
        video_seconds: float | numbers.Real | None = None,  # any real number float() takes (numpy scalars, Fractions)
        device: str = "cpu",
        model_overrides: dict[str, Any] | None = None,
    ) -> None:
        from controlfoley.builder import build_model, model_config, weight_file
        from controlfoley.checkpoint import load_parts
        from controlfoley.train.checkpoints import resolve_model_file, shipped_preset

        if video_seconds is not None:  # before the model is built; nan and inf pass a `<= 0` check
            seconds = float(video_seconds) if isinstance(video_seconds, numbers.Real) and not isinstance(video_seconds, bool) else math.nan
            if not (math.isfinite(seconds) and seconds > 0):
                raise DataError(
                    f"--video-seconds (video_seconds) must be a positive finite number of seconds of video per clip, got {video_seconds!r}; "
                    "give e.g. 10 (the paper's clips), or leave it out for the audio window"
                )
        with torch.random.fork_rng(devices=[]):  # the same untrained weights in every run: a resumed extraction matches
            torch.manual_seed(0)
            self.model = build_model(model_config(preset, **(model_overrides or {}))).eval().to(device)  # untrained on purpose
        built_from = weight_file(self.model.config, "tokenizer")  # e.g. an official SpecVQGAN codebook
        tokenizer = None if tokenizer is None else os.path.expanduser(os.fspath(tokenizer))  # ~/runs/tok, as a shell expands it
        # a preset name that ships weights (where no file or folder has that name) stands for them
        self.tokenizer_preset = shipped_preset(tokenizer)
        model_file = None if tokenizer is None else resolve_model_file(tokenizer)
        if model_file is not None:
            load_parts(self.model, model_file, ["tokenizer"])
        elif built_from is None and not mel:  # nor did its builder load trained weights
            warnings.warn("no tokenizer checkpoint given: tokens come from an untrained tokenizer (train one with the tokenizer recipe)", stacklevel=2)
        elif built_from is None:  # `--mel` for the tokenizer recipe (README step 1): expected, so no warning
            log.info("no tokenizer checkpoint: the stored tokens are an untrained tokenizer's (train backbones on a re-extraction with --tokenizer)")
        self.video = [build_extractor(e) for e in extractors]
        self.clap = build_extractor(clap) if clap is not None else None
        keys = [e.output_key for e in self.video]
        if len(set(keys)) != len(keys):
            raise DataError(f"two video extractors write the same feature: {sorted(k for k in set(keys) if keys.count(k) > 1)}; give one per feature")
        self.preset = preset
        self._args = {e.output_key: _spec_args(spec) for e, spec in zip([*self.video, self.clap], [*extractors, clap]) if e is not None}
        check_widths(
            self.model,
            {e.output_key: (e.name, int(e.dim)) for e in self.video},
            None if self.clap is None else (self.clap.name, int(self.clap.dim)),
            taker=f"preset {preset!r}",
            error=DataError,
        )
        enc = self.model.control_encoder if self.model.has_control else None
        self.control_keys: tuple[str, ...] = tuple(str(k) for k in enc.required_features) if enc is not None else ()
        missing = self.missing_control_features(keys)
        if self.video and missing:  # some video features, not all: meant for the controlnet recipe, which would refuse it
            warnings.warn(
                f"preset {preset!r} reads the video features {list(self.control_keys)} (its control encoder) but the extractors "
                f"write only {keys}: without {missing} the dataset serves the backbone recipe, not controlnet; add {_extractor_hint(missing)}",
                stacklevel=2,
            )
        self.keep_mel, self.device = mel, torch.device(device)
        self.window_samples = int(self.model.n_samples)  # the audio of a clip: cropped or zero-padded to this
        self.window_s = self.model.n_samples / self.model.sample_rate
        self.video_s = self.window_s if video_seconds is None else float(video_seconds)  # (checked above)
        # the same span exactly, as frames are counted and read: the audio window as the fraction it is
        # (n_samples / sample_rate: 512000 / 24000 at 24 fps is 512 frames, where the float gives 511.99...),
        # seconds given as the decimal written (`seconds_fraction`)
        from controlfoley.video import seconds_fraction

        self.video_span: Fraction = Fraction(self.model.n_samples, self.model.sample_rate) if video_seconds is None else seconds_fraction(video_seconds if isinstance(video_seconds, Fraction) else float(video_seconds))
        # recorded in the index (train.provenance compares it with a run's tokenizer): the path given, or
        # for a preset name its shipped weights file (the name alone would read as a path under the cwd)
        source = model_file if self.tokenizer_preset is not None else tokenizer if tokenizer is not None else built_from
        self.tokenizer_source = None if source is None else str(Path(source).resolve())

    def info(self, source: str) -> dict[str, Any]:
        m = self.model
        feats = {
            e.output_key: {"extractor": e.name, "args": self._args[e.output_key], "fps": float(e.fps), "dim": int(e.dim)} for e in self.video
        }
        for e in self.video:  # a frame extractor's input: video files decoded at this square size (as generate decodes them);
            if not hasattr(e, "features_for"):  # recorded, so that a resume of an extraction made under another rule is refused
                feats[e.output_key]["decode_size"] = int(getattr(e, "frame_size", FRAME_SIZE))
        if self.clap is not None:
            feats[self.clap.output_key] = {"extractor": self.clap.name, "args": self._args[self.clap.output_key], "dim": int(self.clap.dim)}
        return {
            "preset": self.preset,
            "grid": list(m.grid),
            "codebook_size": int(m.tokenizer.codebook_size),
            "n_frames": int(m.config.n_frames),
            "sample_rate": int(m.sample_rate),
            "window_s": self.window_s,
            "video_s": self.video_s,
            "tokenizer": self.tokenizer_source,
            **({} if self.tokenizer_preset is None else {"tokenizer_preset": self.tokenizer_preset}),
            "model": self.model.config.to_dict(),
            "features": feats,
            "source": source,
        }

    def missing_control_features(self, keys: Iterable[str]) -> list[str]:
        """The features the preset's control encoder reads that `keys` lack (empty without a ControlNet)."""
        have = set(keys)
        return [k for k in self.control_keys if k not in have]

    def served_recipes(self, keys: Iterable[str]) -> str:
        """Which training recipes of this preset a dataset holding features `keys` serves, and what
        the others lack, in one line."""
        have = set(keys)
        served = [*(["tokenizer"] if "mel" in have else []), *(["backbone"] if "tokens" in have else [])]
        missing = self.missing_control_features(have)
        if self.control_keys and "tokens" in have and not missing:
            served.append("controlnet")
        line = f"for preset {self.preset!r} it serves the recipes: {', '.join(served) or 'none'}"
        if self.control_keys and missing:
            line += f"; not controlnet, which also reads {missing}: extract again with {_extractor_hint(missing)}"
        if "tokens" in have and self.tokenizer_source is None:
            line += " (its tokens are an untrained tokenizer's: for a backbone or controlnet worth sampling, train the tokenizer recipe and extract again with --tokenizer RUN)"
        return line

    def n_video_frames(self, fps: float) -> int:
        """Rows of a feature at `fps` over `video_s` seconds: as many frames as `read_frames(max_seconds=
        video_s)` gives from a longer video (one rule, the reader's: video_s as the decimal it is
        written as, `seconds_fraction`, fps as `rate_fraction` reads it), so a window holds no copy of a frame the video has."""
        from controlfoley._media import rate_fraction
        from controlfoley.video import _total_frames

        return _total_frames(self.video_span, rate_fraction(fps))

    @torch.no_grad()
    def audio_features(self, wavs: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Tokens (and mel) of a batch of mono waveforms at the model's sample rate."""
        n = self.model.n_samples
        wav = torch.stack([w[:n] if w.shape[0] >= n else F.pad(w, (0, n - w.shape[0])) for w in wavs]).to(self.device)
        mel = self.model.mel(wav)
        frames = self.model.config.n_frames
        mel = mel[..., :frames] if mel.shape[-1] >= frames else F.pad(mel, (0, frames - mel.shape[-1]), value=-1.0)
        codes = self.model.encode_mel(mel)  # checked: [b, F, T] integer codes of the model's grid
        out = []
        for i in range(len(wavs)):
            d = {"tokens": codes[i].cpu()}
            if self.keep_mel:
                d["mel"] = mel[i].cpu()
            out.append(d)
        return out

    @torch.no_grad()
    def video_features(self, video: VideoSource) -> dict[str, Tensor]:
        """Each extractor's features over the clip's `video_s` seconds: computed from the frames, or
        read for the video file from precomputed features (`features_for`); a short video or
        feature file holds its last frame / row. An unusable feature file (a ShapeError of
        `features_for`) is a FeatureFileError (a DataError: `skip_bad` leaves that clip out)."""
        out = {}
        for ext in self.video:
            want = self.n_video_frames(ext.fps)
            if hasattr(ext, "features_for"):
                if video.path is None:
                    raise DataError(f"{ext.name} reads features precomputed for video files; it cannot serve rendered clips")
                try:
                    rows = ext.features_for(video.path).float()
                except ShapeError as e:  # this clip's feature file (it names it), not the extraction, is wrong
                    shown = str(e) if video.path.stem in str(e) else f"{e} (the features of {video.path})"
                    raise FeatureFileError(shown) from e
                if rows.shape[0] < want:
                    rows = torch.cat([rows, rows[-1:].expand(want - rows.shape[0], -1)])
                out[ext.output_key] = rows[:want].contiguous().cpu()
                continue
            # decoded as generate decodes them (FoleyPipeline._decode): the extractor's frame_size, or
            # FRAME_SIZE; the source size cost memory in proportion to it (a 1 s 1080p clip needed 23 GB)
            # and gave the model other features in training than in generation
            frames = video.frames_at(ext.fps, int(getattr(ext, "frame_size", FRAME_SIZE)))
            if frames.shape[0] == 0:
                raise DataError(f"a video gave no frames at {ext.fps} fps")
            if frames.shape[0] < want:  # a short video holds its last picture
                frames = torch.cat([frames, frames[-1:].expand(want - frames.shape[0], -1, -1, -1)])
            out[ext.output_key] = ext(frames[:want].contiguous()).float().cpu()
        return out


def _spec_args(spec: Any) -> dict[str, Any]:
    """An extractor spec's arguments as they read back from JSON (recorded in the dataset's info,
    and from there in the checkpoints trained on it); paths made absolute, so that a record read
    from another working directory still finds its files."""
    if isinstance(spec, str) or spec is None:
        return {}
    given = {k: v for k, v in dict(spec[1]).items() if k != "output_key" or EXTRACTORS.takes(spec[0], "output_key")}  # else set on the object: not an argument
    args = {k: os.path.abspath(os.path.expanduser(v)) if k in PATH_ARGS and isinstance(v, str) and v else v for k, v in given.items()}
    return json.loads(json.dumps(args, default=str))


def _embeds_audio(clap: Any) -> bool:
    """A CLAP-like extractor that embeds audio (`encode_audio`, e.g. clap_audio_transformers), not text."""
    return callable(getattr(clap, "encode_audio", None))


def _audio_prompt(ex: "Extraction", wav: Tensor) -> Tensor:
    """The CLAP audio embedding of a clip's audio over the model's window (what its tokens cover)."""
    if wav.numel() == 0:
        raise DataError("the audio is empty: there is nothing for the CLAP audio tower to embed")
    assert ex.clap is not None  # both callers check it is a CLAP audio tower (_embeds_audio)
    return ex.clap.encode_audio(wav[: ex.model.n_samples].float()[None], ex.model.sample_rate)[0]


def _write(
    ex: Extraction,
    out: str | Path,
    items: Iterable[Item],
    total: int,
    *,
    shard_size: int,
    batch_size: int,
    overwrite: bool,
    source: str,
    resume: bool = False,
    skip_bad: bool = False,
) -> ShardIndex:
    """items: (clip id, loader of (waveform, frame source or None, clap vector or None)); batched
    for the tokenizer. With `resume`, the clips of the shards already written are skipped unread,
    after checking that their ids come in the same order. With `skip_bad`, a clip whose media
    cannot be read (or cannot give the video features) is left out and listed in SKIPPED_FILE (id,
    TAB, error) instead of stopping; a ListError (a wrong list entry) stops it even so."""
    writer = ShardWriter(out, shard_size=shard_size, info=ex.info(source), overwrite=overwrite, resume=resume)
    if writer.finished_before:  # stopped while tidying up after its index swap: the writer finished that
        print(f"{out}: the interrupted extraction had finished its dataset; its tidying is done now", file=sys.stderr)
        return ShardIndex.load(out)
    skipped_file = writer.staged(SKIPPED_FILE)  # skipped.new.tsv while a finished dataset (and its list) is being replaced
    skipped_lines = _skipped_lines(skipped_file) if resume else []  # "id<TAB>error" of the interrupted run
    skipped_before = {line.split("\t", 1)[0] for line in skipped_lines}
    if not resume:
        skipped_file.unlink(missing_ok=True)
    pending: list[tuple[str, Tensor, dict[str, Tensor]]] = []

    def flush() -> None:
        if not pending:
            return
        for (cid, _, feats), audio in zip(pending, ex.audio_features([p[1] for p in pending])):
            writer.add(cid, {**audio, **feats})
        pending.clear()

    it = iter(items)
    passed: set[str] = set()  # clips the interrupted run skipped before its last finished shard
    for k, done_id in enumerate(writer.clip_ids):
        cid = next(it, (None,))[0]
        while cid is not None and cid != done_id and cid in skipped_before:  # skipped in the interrupted run
            passed.add(cid)
            cid = next(it, (None,))[0]
        if cid != done_id:
            raise DataError(
                f"cannot resume {out}: clip {k} was {done_id!r} in the interrupted extraction and is {cid!r} now; "
                "the inputs changed. Resume with the same inputs, or start again with --overwrite."
            )
    if resume and skipped_file.is_file():  # the clips after the last finished shard are read again: only the passed ones stay listed
        try:  # (also drops a line a kill cut short, which the next append would otherwise continue)
            atomic_write_text(skipped_file, "".join(f"{line}\n" for line in skipped_lines if line.split("\t", 1)[0] in passed))
        except OSError as e:
            raise writer.write_error(skipped_file, e) from None
    n_skipped = len(passed)
    lengths = _Lengths(ex.window_samples)
    for cid, load in tqdm(it, total=total, initial=len(writer.clip_ids) + n_skipped, desc="extract", dynamic_ncols=True, disable=None):
        try:
            wav, video, clap = load()
            feats = ex.video_features(video) if video is not None else {}
            lengths.add(cid, wav.shape[0])
        except (MediaError, DataError) as e:
            if not skip_bad or isinstance(e, ListError):
                raise
            try:
                with open(skipped_file, "a", encoding="utf-8") as f:
                    f.write(f"{cid}\t{' '.join(str(e).split())}\n")
            except OSError as err:
                raise writer.write_error(skipped_file, err) from None
            n_skipped += 1
            continue
        if clap is not None:
            feats["clap"] = clap.float().cpu()
        pending.append((cid, wav, feats))
        if len(pending) >= batch_size:
            flush()
    flush()
    if n_skipped and not writer.n_clips:  # every input was left out: say why, not only that the dataset is empty
        reason = _skipped_lines(skipped_file)[:1]
        raise DataError(
            f"all {n_skipped} input(s) were skipped, so there is nothing to write to {writer.root}"
            + (f" (e.g. {reason[0].split(chr(9), 1)[-1]})" if reason else "")
            + f"; see {skipped_file} for each file and why, fix the inputs and run the command again"
        )
    index = writer.close()
    lengths.warn(ex.window_s, video=bool(ex.video))
    if n_skipped:
        warnings.warn(
            f"skipped {n_skipped} clip(s) whose media could not be read or cannot give the video features; they are listed in {writer.root / SKIPPED_FILE}",
            stacklevel=3,
        )
    return index


class _Lengths:
    """The clips whose audio is far from the model's window, for one warning at the end: much longer
    (only the first window is stored: the rest of a long video is not trained on) or much shorter
    (zero-padded: mostly silence is learnt)."""

    LONG, SHORT = 1.5, 0.9  # in windows: half a window or more unused; a tenth of the window or more padded

    @classmethod
    def read_samples(cls, window: int) -> int:
        """How much of a video's audio track is read for a clip: its window, and far enough past it to
        tell a long clip (the rest is not decoded, so such a clip's length is known only as at least this)."""
        return math.ceil(cls.LONG * window)

    def __init__(self, window: int) -> None:
        self.window = window
        self.long: list[tuple[str, int]] = []
        self.short: list[tuple[str, int]] = []

    def add(self, clip_id: str, n_samples: int) -> None:
        if n_samples >= self.LONG * self.window:
            self.long.append((clip_id, n_samples))
        elif n_samples < self.SHORT * self.window:
            self.short.append((clip_id, n_samples))

    def warn(self, window_s: float, *, video: bool) -> None:
        rate = self.window / window_s

        def shown(clips: list[tuple[str, int]]) -> str:
            at_least = self.read_samples(self.window)  # a video read no further: it may be much longer
            parts = [f"{c!r} ({n / rate:.1f} s{' or more' if n == at_least else ''})" for c, n in clips[:3]]
            return ", ".join(parts) + (f" and {len(clips) - 3} more" if len(clips) > 3 else "")

        if self.long:
            warnings.warn(
                f"{len(self.long)} clip(s) are {self.LONG:g} windows long or longer, e.g. {shown(self.long)}: only their first "
                f"{window_s:.2f} s (the model's window) are stored, the rest is not trained on. To train on all of a long video, "
                "cut it into window-long pieces first (e.g. `ffmpeg -i IN -c copy -f segment -segment_time SECONDS OUT%03d.mp4`) "
                "and list each piece",
                stacklevel=user_stacklevel(),
            )
        if self.short:
            warnings.warn(
                f"{len(self.short)} clip(s) are shorter than {self.SHORT:.0%} of the model's {window_s:.2f} s window, e.g. "
                f"{shown(self.short)}: their audio is zero-padded{' (and their last video frame held)' if video else ''} to the window, so the "
                "model also learns the silence after them; leave out clips much shorter than the window if that is not wanted",
                stacklevel=user_stacklevel(),
            )


def _skipped_lines(path: Path) -> list[str]:
    """The complete lines of a skipped list: a last line without its newline (a kill in the middle
    of an append) is left out; that clip came after the last finished shard, so it is read again."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # up to the last newline (nothing when there is none)
    return [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]


def synthetic_source(world_seed: int, split: str, n_clips: int) -> str:
    """The `source` a synthetic extraction records (compared when a dataset is reused or resumed)."""
    return f"synthetic world seed {world_seed}, split {split}, {n_clips} clips"


def extract_synthetic(
    out: str | Path,
    ex: Extraction,
    *,
    n_clips: int,
    split: str = "train",
    world_seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 16,
    overwrite: bool = False,
    resume: bool = False,
) -> ShardIndex:
    """Render `n_clips` clips of split `split` of `SyntheticWorld(seed=world_seed)`, at the model's
    sample rate and over its window, into a dataset (`resume`: continue an interrupted extraction
    into `out`). A rate the world cannot render (below 16 kHz) is a DataError naming both rates."""
    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.video import resample_frames

    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 1:
        raise DataError(f"n_clips is the number of clips to render and must be positive, got {n_clips!r}")
    rate = int(ex.model.sample_rate)
    try:  # rendered at the model's rate: its window holds the clip's first window_s seconds, not a resampled stretch of them
        world = SyntheticWorld(seed=world_seed, duration_s=ex.window_s, sample_rate=rate)
    except ValueError as e:
        raise DataError(
            f"cannot render synthetic clips for preset {ex.preset!r}: its model's sample rate is {rate} Hz and the synthetic world "
            f"(made for {SyntheticWorld.sample_rate} Hz) refuses it ({e}); extract synthetic clips with a model at a rate the world "
            f"renders (the presets' {SyntheticWorld.sample_rate} Hz, or another of 16000 Hz or more, in --model mel=...), or extract "
            "media files (--files / --list) for this model"
        ) from None

    def load(i: int) -> Loaded:
        clip = world.clip(i)
        clap = None
        if ex.clap is not None and _embeds_audio(ex.clap):  # a CLAP audio tower: the clip's own audio
            clap = _audio_prompt(ex, torch.as_tensor(clip.audio))
        elif ex.clap is not None:  # the audio-prompt role: the clip's own classes
            tags = getattr(ex.clap, "encode_tags", None)
            clap = tags(list(clip.class_ids)) if tags is not None else ex.clap.encode_text([clip.prompt])[0]
        return clip.audio, VideoSource(lambda fps, size: resample_frames(clip.frames, clip.fps, fps)), clap  # rendered at the world's size

    items = ((f"synthetic-{world_seed}-{i}", lambda i=i: load(i)) for i in world.split(split, n_clips))
    source = synthetic_source(world_seed, split, n_clips)
    return _write(ex, out, items, n_clips, shard_size=shard_size, batch_size=batch_size, overwrite=overwrite, source=source, resume=resume)


def extract_files(
    out: str | Path,
    ex: Extraction,
    files: Sequence[str | Path],
    *,
    tags: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    where: Sequence[str] | None = None,
    shard_size: int = 256,
    batch_size: int = 16,
    overwrite: bool = False,
    resume: bool = False,
    skip_bad: bool = False,
) -> ShardIndex:
    """Extract video files (audio track + frames) or audio files (no video features); `resume`
    continues an interrupted extraction of the same file list into `out`; `skip_bad` leaves out
    files that cannot be read (missing, corrupt, no audio track) or cannot give the video features
    (audio files, when `ex` has video extractors) and lists them in `skipped.tsv`.

    `tags[i]` (e.g. "dog, bark") is encoded by the CLAP-like extractor into `clap` for file i;
    `ids[i]` names clip i in the dataset (default: the path as given); `where[i]` says where file i
    was named (e.g. "clips.tsv:3"), for messages. Before any file is read: an audio file among the
    inputs of video extractors (without `skip_bad`), a clip id given twice, and tags that an
    extractor with a fixed vocabulary (a `tags` attribute) cannot encode are DataErrors naming the
    files and where they were named; `skip_bad` does not skip list errors (fix the list)."""
    from controlfoley.video import read_audio_file, read_frames

    if not files:
        raise DataError("no input files given to extract")
    for what, seq in (("tag strings", tags), ("clip ids", ids), ("locations", where)):
        if seq is not None and len(seq) != len(files):
            raise DataError(f"got {len(seq)} {what} for {len(files)} files; give one per file")
    if tags is not None and ex.clap is None:  # e.g. the mel-only extraction of a tagged list
        warnings.warn("the tags are not stored: no CLAP-like extractor encodes them (--clap NAME)", stacklevel=2)
        tags = None
    if tags is not None and ex.clap is not None and _embeds_audio(ex.clap):  # (not None: tags were dropped just above otherwise)
        warnings.warn(f"the tags are not used: {ex.clap.name} embeds each clip's own audio (the paper's training prompt)", stacklevel=2)
        tags = None
    sr = ex.model.sample_rate
    names = [str(Path(f)) for f in files] if ids is None else [str(i) for i in ids]

    def pos(i: int) -> str:
        return where[i] if where is not None else f"file {i + 1}"

    def label(i: int) -> str:
        return f"{names[i]!r} ({pos(i)})"

    def listing(idx: Sequence[int]) -> str:
        return ", ".join(label(i) for i in idx[:5]) + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")

    first: dict[str, int] = {}
    twice = []
    for i, n in enumerate(names):
        if n in first:
            twice.append(f"{label(first[n])} and again as {pos(i)}")
        first.setdefault(n, i)
    if twice:
        raise DataError(
            f"{len(twice)} clip id(s) are given more than once: {'; '.join(twice[:5])}{' ...' if len(twice) > 5 else ''}; "
            "every clip needs its own id (ids name clips in the dataset, skipped.tsv and --resume): remove the repeated entries"
        )
    missing = [i for i, f in enumerate(files) if not Path(f).exists()]
    if missing and not skip_bad:  # a typo in the list: named now, not after hours of extraction
        raise MediaError(  # (the command line adds how --skip-bad leaves them out)
            f"{len(missing)} input(s) do not exist: {listing(missing)} (the first looked for as {os.path.abspath(files[missing[0]])}); "
            "fix the paths (a list's relative paths are read from the list's own folder) or leave them out (skip_bad=True)"
        )
    from controlfoley.data.real_extractors import check_unique_stems

    check_unique_stems(ex.video, files)  # precomputed features are found by file stem
    feature_keys = [e.output_key for e in ex.video]
    # audio by name, unless video extractors need frames and the file holds a moving picture (a video
    # named .wav): FFmpeg reads by content, as generate does
    is_audio = [Path(f).suffix.lower() in AUDIO_SUFFIXES and not (ex.video and _holds_video(Path(f))) for f in files]
    audio_only = [i for i, a in enumerate(is_audio) if a] if ex.video else []
    no_video = (
        f"an audio file has no video for the features {feature_keys} the video extractors write; extract audio files into "
        "a dataset of their own without --extractors"
    )
    if audio_only and not skip_bad:
        raise DataError(
            f"{len(audio_only)} input(s) are audio files: {listing(audio_only)}; {no_video}, remove them from the inputs, "
            "or pass skip_bad=True (--skip-bad) to leave them out (listed in skipped.tsv)"
        )
    encoded: dict[str, Tensor] = {}  # tag string -> its vector, when a fixed vocabulary let them all be encoded up front
    if tags is not None:  # an untagged line of a tagged list: no prompt (a zero vector: the recipes use the unconditional mask)
        assert ex.clap is not None  # tags without a CLAP-like extractor were dropped above
        untagged = [i for i, t in enumerate(tags) if not t.strip()]
        if untagged:
            warnings.warn(
                f"{len(untagged)} of {len(tags)} inputs have no tags (e.g. {label(untagged[0])}): they are stored without a prompt "
                "(an all-zero clap vector), and training always uses the unconditional mask for them",
                stacklevel=2,
            )
            encoded[""] = torch.zeros(int(ex.clap.dim))
    if tags is not None and ex.clap is not None and getattr(ex.clap, "tags", None) is not None:  # a fixed vocabulary: check every line now
        bad: dict[str, str] = {}
        for t in dict.fromkeys(t for t in tags if t.strip()):
            try:
                encoded[t] = ex.clap.encode_text([t])[0]
            except (ControlFoleyError, ValueError, KeyError) as e:
                bad[t] = one_line(e)
        lines = [i for i, t in enumerate(tags) if t in bad]
        if lines:
            shown = "; ".join(f"{label(i)}: {bad[tags[i]]}" for i in lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
            raise ListError(
                f"{len(lines)} input(s) have tags that {ex.clap.name} cannot encode: {shown}. Fix the tags of those lines "
                "(--skip-bad leaves out unreadable media, not wrong list entries)"
            )

    def encode_tags(i: int) -> Tensor:
        assert tags is not None and ex.clap is not None  # called only with tags, which were dropped above without a CLAP-like extractor
        if not tags[i].strip():
            return encoded[""]
        if tags[i] in encoded:
            return encoded[tags[i]]
        try:
            encoded[tags[i]] = ex.clap.encode_text([tags[i]])[0]  # an open-vocabulary text: encoded once, reused for repeats
        except (ControlFoleyError, ValueError, KeyError) as e:  # an open-vocabulary extractor, checked only here
            raise ListError(f"{label(i)}: {ex.clap.name} cannot encode its tags {tags[i]!r} ({e}); fix the tags of that line") from e
        return encoded[tags[i]]

    def load(i: int) -> Loaded:
        p = Path(files[i])
        clap = encode_tags(i) if tags is not None else None
        if is_audio[i] and ex.video:  # only with skip_bad: listed in skipped.tsv, unread
            raise DataError(f"{no_video}, or remove it from the inputs")
        # a video's audio track only as far as the clip (and the count of long clips) needs: the same samples as a whole read
        wav = read_audio_file(p, sr, max_seconds=_Lengths.read_samples(ex.window_samples) / sr)
        if ex.clap is not None and _embeds_audio(ex.clap):
            clap = _audio_prompt(ex, wav)
        video = None if (is_audio[i] or not ex.video) else VideoSource(lambda fps, size: read_frames(p, fps, size=size, max_seconds=ex.video_span).frames, p)
        return wav, video, clap

    items = ((names[i], lambda i=i: load(i)) for i in range(len(files)))
    # the inputs in the record a resume compares: another list (a changed tag included) is refused,
    # rather than its clips mixed with those of the finished shards
    digest = hashlib.sha256(json.dumps([names, tags]).encode()).hexdigest()[:12]
    source = f"{len(files)} files (ids and tags digest {digest})"
    return _write(
        ex, out, items, len(files), shard_size=shard_size, batch_size=batch_size, overwrite=overwrite, source=source, resume=resume,
        skip_bad=skip_bad,
    )  # fmt: skip


def _read_list(path: str) -> tuple[list[str], list[str] | None, list[str], list[str]]:
    """A list file: one media path per line, optionally a TAB and comma-separated tags. Relative
    paths are read from the list file's folder (a list travels with its media); the clip ids are
    the paths as written, whichever way the list itself is named. Returns (files, tags, ids, where),
    `where` naming each entry's line ("LIST:LINE") for messages."""
    files, tags, ids, where = [], [], [], []
    listing = Path(path)
    try:
        text = listing.read_text(encoding="utf-8-sig")  # a spreadsheet's export starts with a byte-order mark
    except OSError as e:
        raise DataError(f"--list {listing}: cannot read it ({e.strerror or e})") from e
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            f, _, t = line.partition("\t")
            media = Path(f.strip()).expanduser()
            files.append(str(media if media.is_absolute() else listing.parent / media))
            tags.append(t.strip())
            ids.append(str(Path(f.strip())))  # as written, normalised like a path given on the command line
            where.append(f"{listing}:{n}")
    return files, (tags if any(tags) else None), ids, where


def _holds_video(path: Path) -> bool:
    """Whether `path` opens with a moving video stream (not a cover picture); False where it does not
    open at all (reading it later gives that file's own error)."""
    import av

    from controlfoley._media import moving_video

    try:
        with av.open(str(path)) as c:
            return moving_video(c) is not None
    except (av.FFmpegError, OSError, ValueError):
        return False


def _expand_folders(items: Sequence[str]) -> list[str]:
    """--files: a folder stands for the media files directly in it (video and audio files, sorted
    by name, hidden ones left out), as `generate` reads a folder; files are kept as given."""
    from controlfoley._media import VIDEO_SUFFIXES, left_out

    out: list[str] = []
    for item in items:
        folder = Path(item)
        if not folder.is_dir():
            out.append(item)
            continue
        media = sorted(
            f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in VIDEO_SUFFIXES | AUDIO_SUFFIXES
        )
        others = left_out(folder, VIDEO_SUFFIXES | AUDIO_SUFFIXES, "video and audio")
        if others:
            log.warning("%s", others)
        if not media:
            raise DataError(
                f"--files {item}: a folder with no video or audio files directly in it ({' '.join(sorted(VIDEO_SUFFIXES | AUDIO_SUFFIXES))}); "
                "give media files or folders of them, or a list (--list FILE) for files in subfolders"
            )
        out += [str(f) for f in media]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="controlfoley extract", description="Precompute tokens and video features into a sharded dataset (docs/DATA.md).")
    p.add_argument("--preset", required=True, help="model preset: fixes the window, mel, tokenizer grid; or a training run or checkpoint: the model it records (its tokenizer, a 1-D one say), --model on top")
    p.add_argument("--out", required=True, help="dataset folder to create")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=int, metavar="N", help="render N clips of the synthetic world")
    src.add_argument("--files", nargs="+", help="video or audio files, or folders of them (the media files directly in each)")
    src.add_argument("--list", dest="list_file", help="text file: one path per line (relative ones from the list's folder), optional TAB + tags")
    p.add_argument("--split", default="train", help="synthetic split: train, val or test")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="checkpoint (file, folder or run) with trained tokenizer weights, or a preset that ships them (specmaskfoley_synthetic)")
    p.add_argument(
        "--model", dest="model_overrides", action="append", default=[], metavar="KEY=JSON",
        help="model override, as for `controlfoley train` (e.g. tokenizer=my_tokenizer, with --plugin FILE registering it)",
    )  # fmt: skip
    p.add_argument("--extractors", default="", help="comma-separated EXTRACTORS names for video features, e.g. synthetic_sync,synthetic_clip")
    p.add_argument(
        "--extractor", action="append", default=[], metavar="[KEY=]NAME[,ARG=VALUE...]",
        help="one video feature extractor with its arguments, e.g. clip_openclip,weights=/w/clip.safetensors or "
        "synchformer_precomputed,root=/feats/sync; with KEY= (generate's form) it writes that feature; repeatable, added after --extractors",
    )  # fmt: skip
    p.add_argument("--clap", default=None, metavar="NAME[,ARG=VALUE...]", help="the CLAP-like extractor: text (the tags of --list), e.g. clap_transformers,folder=DIR or synthetic_clap; or audio, each clip's own (the paper's training prompt), clap_audio_transformers,folder=DIR")
    p.add_argument("--mel", action="store_true", help="also store the mel (needed by the tokenizer recipe)")
    p.add_argument("--video-seconds", type=float, default=None, help="seconds of video per clip (default: the audio window; the paper: 10)")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16, help="clips per tokenizer batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset (or an interrupted extraction) in --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted extraction in --out (same command otherwise)")
    p.add_argument(
        "--skip-bad", action="store_true",
        help="leave out files that cannot be read, or cannot give the video features (audio files with --extractors), "
        "and list them in OUT/skipped.tsv",
    )  # fmt: skip
    return p


def _extractor_spec(item: str) -> tuple[str, dict[str, Any]]:
    """--extractor NAME[,ARG=VALUE...], or generate's form KEY=NAME[,ARG=VALUE...] (KEY: the feature
    it writes, passed on as output_key: to a builder that takes it, else set on the built extractor,
    as generate does), so that one spelling, and the same extractors, work in both commands."""
    head, _, rest = item.partition(",")
    key, sep, name = head.partition("=")
    if sep and key.isidentifier() and name in EXTRACTORS:
        name, kwargs = parse_spec(name + ("," + rest if rest else ""))
        return name, {**kwargs, "output_key": key}  # to its builder, or set on the built extractor (`build_extractor`)
    return parse_spec(item)


def extract_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    made = [p for p in (Path(args.out), *Path(args.out).parents) if not p.exists()]  # folders the up-front check creates
    try:
        return _extract_main(args)
    finally:
        for folder in made:  # a run refused before writing anything leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break  # it holds something (or was never made)


def _extract_main(args: argparse.Namespace) -> int:
    try:
        if args.synthetic is not None and args.synthetic < 1:  # before the tokenizer is built
            raise DataError(f"--synthetic N renders N clips of the synthetic world: N must be positive, got {args.synthetic}")
        try:  # before the model is built: a file, a read-only or unreachable --out fails now, not after minutes
            check_writable_folder(Path(args.out), "--out")
        except MediaError as e:
            raise DataError(str(e)) from None  # (not a media input: no --skip-bad hint)
        names: list[Any] = [n for n in args.extractors.split(",") if n]
        names += [_extractor_spec(e) for e in args.extractor]
        preset, overrides = args.preset, parse_overrides(args.model_overrides)
        from controlfoley.train.config import is_checkpoint_source, preset_from_checkpoint

        if is_checkpoint_source(preset):  # a run or checkpoint: the model it records (a 1-D tokenizer, say), --model on top, as train's --preset
            if args.tokenizer is None and not args.mel:  # its config, not its weights: the tokens would be a random tokenizer's
                warnings.warn(
                    f"--preset {args.preset} gives the model it records, not its weights: add --tokenizer {args.preset} to tokenize "
                    "with its trained tokenizer",
                    stacklevel=2,
                )
            preset, overrides = preset_from_checkpoint(preset, overrides)
        ex = Extraction(
            preset, extractors=names, clap=parse_spec(args.clap) if args.clap else None, tokenizer=args.tokenizer, mel=args.mel, video_seconds=args.video_seconds,
            device=args.device, model_overrides=overrides,
        )  # fmt: skip
        common = dict(shard_size=args.shard_size, batch_size=args.batch_size, overwrite=args.overwrite, resume=args.resume)
        if args.synthetic is not None:
            index = extract_synthetic(args.out, ex, n_clips=args.synthetic, split=args.split, world_seed=args.world_seed, **common)
        else:
            files, tags, ids, where = _read_list(args.list_file) if args.list_file else (_expand_folders(args.files), None, None, None)
            index = extract_files(args.out, ex, files, tags=tags, ids=ids, where=where, skip_bad=args.skip_bad, **common)
    except (ControlFoleyError, KeyError, ValueError) as e:
        hint = " (--skip-bad leaves out files that cannot be read and lists them in OUT/skipped.tsv)" if isinstance(e, MediaError) and not args.skip_bad else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = Path(args.out)
        how = "--resume instead of --overwrite" if args.overwrite else "--resume"
        if finished_extraction(out):  # stopped in close(), after the new index was swapped in
            print(
                f"\ninterrupted while tidying up: the new dataset in {out} is complete and loads; run the same command with {how} "
                f"to finish (it removes {PROGRESS_FILE} and what the new dataset replaced)",
                file=sys.stderr,
            )
            return 130
        old = f"; the dataset already in {out} is unchanged and still loads" if (out / INDEX_FILE).is_file() else ""
        if args.overwrite and not (out / PROGRESS_FILE).is_file():  # no shard of the new dataset finished: nothing to resume
            print(f"\ninterrupted before the first shard was finished{old}; start again with the same command", file=sys.stderr)
        else:
            print(f"\ninterrupted: the finished shards in {out} are kept{old}; continue with the same command and {how}", file=sys.stderr)
        return 130
    shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in index.features.items())
    print(f"wrote {index.n_clips} clips in {len(index.shards)} shards to {index.root}: {shapes}")
    print(ex.served_recipes(index.features))
    return 0
