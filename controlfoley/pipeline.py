"""Foley for video files: decode, extract features, sample in overlapping windows, decode, vocode, mux.

Features
- `FoleyPipeline(model, extractors, text_encoder, vocoder)`: `pipe(video_path, prompt=...)` ->
  `FoleyResult` (waveform, mel, token map, windows). `FoleyPipeline.from_pretrained(path_or_preset)`
  picks the extractors a model was trained with (the synthetic presets: synthetic_sync / _clip /
  _clap, sized to the model); any of them can be replaced by an EXTRACTORS name or object.
- Frames: `video.read_frames` at each extractor's rate (any input rate, constant or variable: frame
  k is what the video showed at k / fps), decoded once per (size, rate) group; a rate that divides
  a decoded one is resampled in memory (the same frames a direct decode gives).
- Windows (`plan_windows`, in controlfoley.windows): the model generates `T` token columns (`model.n_samples` samples) at a
  time. A clip needing C > T columns is covered by windows starting every T - round(overlap * T)
  columns (overlap 0.25 by default), the last one moved back to end exactly at column C so that no
  window runs past the video by more than one column. Window w > 0 is sampled with its first columns
  (those the previous window generated) given as known tokens: MaskGIT inpainting continues the
  previous window instead of starting afresh, and known tokens are never changed.
- Features per window: rows [round(start_s * fps), + n) of each stream, n = floor(window_s * fps)
  (the row count of a training clip exactly one window long; `feature_frames` overrides it, e.g.
  {"sync": 240, "clip": 80} for the paper's 10 s clips). The window start is rounded to the nearest
  feature row: a timing offset of at most half a row (21 ms at 24 fps). Beyond the last frame the
  video is extended by repeating its last frame (a still picture: no new onsets) before extraction;
  precomputed features are extended by repeating their last row. The audio is trimmed to the
  video's duration, round(duration * sample_rate) samples.
- Joining (`join=`): "crossfade" (default) decodes each window's tokens alone (the context length the
  tokenizer was trained on) and crossfades consecutive mels over the shared columns with a
  raised-cosine ramp; "decode_once" decodes the whole token sequence in one pass. The joined mel is
  vocoded in one pass, so the waveform has no seam of its own.
- Prompt: a text prompt ("bell, thud" or ["bell", "thud"]) goes through the CLAP-role
  `text_encoder`. Without a prompt, a model whose guidance needs text (the paper's multi-CFG)
  samples with 'cfg_video' at the same scale and schedule (video-only CFG, the paper's "CFG w/o
  l_text&video" ablation; an unguided 'none' rule moves to the video condition), logged once per
  pipeline. That fallback is the rule's `without_text()`: a guidance rule of one's own overrides
  it to choose its own.
  `negative_prompt` replaces the unconditional mask of the rows without text (model.generate).
- Several videos: `pipe([a, b, ...])` (or `generate_many` from features) samples up to `batch_size`
  videos together, window k of each in one `model.generate` call, each video drawing from its own
  generator seeded with its seed, so that each result is the one the video gets alone. Videos whose
  rows cannot share a batch (with and without a prompt: a different rule or text) sample in separate
  groups.
- `controlfoley generate VIDEO... --model M --out DIR` (`generate_main`, in controlfoley.generate_cli).

References: SpecMaskFoley (shared/reference/specmaskfoley-paper.txt), MaskGIT inpainting (Chang et
al. 2022, sec. 3.2 / image extrapolation), docs/DESIGN.md sections 1-3.
"""

import contextlib
import functools
import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

import torch
from torch import nn

from controlfoley._static import ModelModule
from controlfoley.audio.io import _unreported_clipping
from controlfoley.config import ConfigError
from controlfoley.control.encoders import control_encoder_of
from controlfoley.data.extractors import FRAME_SIZE, ExtractorSpec, build_extractor
from controlfoley.errors import MediaError, RandomWeightsWarning, ShapeError, user_stacklevel
from controlfoley.guidance import GuidanceRule, with_scale
from controlfoley.model import checked_control_scale, checked_guidance_every, run_vocoder
from controlfoley.typing import Float, Int, Tensor
from controlfoley.pipeline_parts import (
    Prompt,
    build_vocoder,
    check_extractor_widths,
    checked_prompt,
    checked_seed,
    choose_extractors,
    default_extractors,
    prompt_text,
    require_control,
    require_trained,
)
from controlfoley.windows import Window, WindowPlan, crossfade_join, plan_windows

__all__ = [
    "Window",
    "WindowPlan",
    "plan_windows",
    "FoleyResult",
    "FoleyPipeline",
    "default_extractors",
    "crossfade_join",
    "prompt_text",
    "generate_main",
]

log = logging.getLogger(__name__)
JOINS = ("crossfade", "decode_once")
# sampling precision: "auto" is generate()'s default (bf16 on CUDA, fp32 on CPU); "bf16" on a CPU
# with AVX-512 bf16 samples the paper-size model ~1.6x faster than fp32 (benchmarks/RESULTS.md; no
# gain at the tiny presets' 128-d width) and changes a few tokens; "bf16-weights" stores the sampling
# parts (backbone, control encoder, aligner, ControlNet) in bf16 and samples them natively, without
# autocast: the fastest measured CUDA path (37 ms per clip with cuda_graph on an H100, against 54 ms
# for autocast; benchmarks/RESULTS.md); the tokenizer and vocoder keep their precision
PRECISIONS: dict[str, torch.dtype | None] = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "bf16-weights": None}


def sampling_parts_to_bf16(model: ModelModule) -> None:
    """precision "bf16-weights": the parts `generate` runs (backbone, control encoder, aligner,
    ControlNet) stored in bf16, in place; the tokenizer and vocoder keep their precision."""
    for part in (model.backbone, *model.control_modules()):
        part.to(torch.bfloat16)


# -- the pipeline -------------------------------------------------------------------------------


def _stamp(wav: Tensor) -> tuple[int, int | None, float | None]:
    """Which tensor, at which in-place version: equal only for the very waveform, unmodified. A
    tensor made under torch.inference_mode() keeps no version counter (reading it raises): its
    identity and its peak (a change in place, possible only within inference mode, that makes it
    clip changes the peak)."""
    if wav.is_inference():
        return id(wav), None, float(wav.abs().max()) if wav.numel() else 0.0
    return id(wav), wav._version, None


@dataclass(frozen=True)
class FoleyResult:
    """What a pipeline call returns: the waveform for the whole video, its mel and tokens, the
    window plan and the seed. `save(path)` writes the audio (.wav / .flac), `save_video(video, path)`
    the video with this audio as its soundtrack; both atomically."""

    wav: Float[Tensor, "s"]  # mono, the video's duration
    sample_rate: int
    mel: Float[Tensor, "m n"]  # the joined, normalised mel, trimmed to the waveform
    codes: Int[Tensor, "f c"]  # the whole token sequence (all windows, before trimming)
    duration_s: float  # of the video stream
    windows: tuple[Window, ...]
    seed: int | None = None  # the seed that drew it (pass it back for the same result)

    def __repr__(self) -> str:  # shapes, not the tensors' values (a notebook printed the whole waveform)
        return (
            f"FoleyResult(wav=[{self.wav.shape[-1]}] at {self.sample_rate} Hz ({self.duration_s:.2f} s), mel={list(self.mel.shape)}, "
            f"codes={list(self.codes.shape)}, windows={len(self.windows)}, seed={self.seed})"
        )

    def _clipping_said(self) -> contextlib.AbstractContextManager[None]:
        """Within it the writers do not warn that this waveform clips: where the pipeline that made
        the result checked this very waveform (and said so if it clips), unchanged since (not
        modified in place, not another tensor: `_stamp`). A waveform changed after, or a result
        built by hand, is warned about by the writer as any other."""
        from controlfoley.audio.io import _caller_reports_clipping

        said = getattr(self, "_checked", None) == _stamp(self.wav)
        return _caller_reports_clipping() if said else contextlib.nullcontext()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the waveform to a .wav or .flac file, atomically (16-bit PCM); returns the path.
        Samples past full scale are clipped to [-1, 1] without a second word where the pipeline
        that made the result said so (its waveform unchanged since); with `save_audio`'s warning
        otherwise."""
        from controlfoley.audio.io import save_audio

        with self._clipping_said():
            return save_audio(path, self.wav, self.sample_rate)

    def save_video(self, video_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, replace_input: bool = False) -> Path:
        """Write `video_path`'s video with this waveform as its only audio track to `out_path`
        (.mp4, .m4v, .mov or .mkv), atomically: the video packets are copied when the container
        can hold the codec, otherwise re-encoded (H.264); see `controlfoley.video.mux_audio`.
        Writing over `video_path` itself (its own audio lost) needs `replace_input=True`. A video
        whose duration differs from this result's by more than 0.5 s (another video than the one
        it was made from?) is logged as a warning. Returns `out_path`."""
        from controlfoley.errors import MediaError
        from controlfoley.video import mux_audio, probe

        src, out = Path(video_path), Path(out_path)
        if not replace_input and out.exists() and src.exists() and out.resolve() == src.resolve():
            raise MediaError(
                f"save_video would write over its input {src}, losing its own audio track; write to another path, "
                "or pass replace_input=True"
            )
        info = probe(src)
        if info.duration_s is not None and abs(info.duration_s - self.duration_s) > 0.5:
            log.warning(
                "%s is %.2f s long but this result is %.2f s: its audio track will %s (was the result made from another video?)",
                src, info.duration_s, self.duration_s, "end early" if info.duration_s > self.duration_s else "run past the picture",
            )  # fmt: skip
        with self._clipping_said():  # a waveform past full scale: the pipeline that made it said so
            mux_audio(src, self.wav, self.sample_rate, out)
        return out


def _progress_bar(progress: bool | None, total: int) -> Any:
    """A tqdm bar over `total` sampling steps, or None when it would not show (progress False, or
    None off a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="sampling", unit="step", disable=None if progress is None else not progress, leave=False, dynamic_ncols=True)
    if bar.disable:
        bar.close()
        return None
    return bar


class FoleyPipeline:
    """Video file -> foley waveform with a trained SpecMaskFoley model (see the module docstring)."""

    def __init__(
        self,
        model: ModelModule,
        extractors: Mapping[str, Any] | None = None,
        text_encoder: Any | None = None,
        vocoder: str | Mapping[str, Any] | nn.Module | None = None,
        *,
        overlap: float = 0.25,
        join: str = "crossfade",
        frame_size: int = FRAME_SIZE,
        feature_frames: Mapping[str, int] | None = None,
        precision: str = "auto",
        cuda_graph: bool = False,
        progress: bool | None = None,
    ) -> None:
        """A pipeline around `model`, a SpecMaskFoley with video control (`from_pretrained` picks the
        extractors a checkpoint was trained with; use this to choose them yourself).

        - `extractors`: one per video feature the model's control encoder reads (exactly its
          `required_features`, e.g. "sync" and "clip"), each given as an EXTRACTORS name
          ("synthetic_sync"), a (name, kwargs) pair (("clip_openclip", {"weights": FILE})) or a
          built extractor object (with `fps` and a forward on frames, or `features_for(path)`).
          None: the model's defaults, as `from_pretrained` chooses them (the extractors its
          checkpoint records, else the synthetic world's for the synthetic and tiny presets), and
          then its default text encoder too unless `text_encoder` is given.
        - `text_encoder`: the CLAP-role prompt encoder, in the same three forms; None takes no
          prompt (when `extractors` is given).
        - `vocoder`: replacing the model's own vocoder (None: `model.vocoder`): a module, a
          VOCODERS name or {"name": ..., **kwargs}, as in `from_pretrained`; its `sample_rate`
          must be the model's (a ConfigError names both otherwise).
        - `overlap`: fraction of a window in [0, 1) that consecutive windows of a long video share
          (the later window continues the earlier one's tokens there).
        - `join`: "crossfade" (decode each window alone, crossfade the mels over the shared columns)
          or "decode_once" (decode the whole token sequence in one pass).
        - `frame_size`: side in pixels of the square frames decoded for extractors that have no
          `frame_size` of their own.
        - `feature_frames`: feature rows per window by key, overriding the default of a training
          clip exactly one window long (e.g. {"sync": 240, "clip": 80} for the paper's 10 s clips).
        - `precision`: token sampling precision, "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16"
          (autocast), or "bf16-weights": the model's backbone and control parts are converted to bf16
          in place and sampled natively (fastest with `cuda_graph` on a GPU; the tokenizer and
          vocoder keep their precision).
        - `cuda_graph`: (CUDA) sample each window through a captured whole-loop CUDA graph
          (`generate(cuda_graph=True)`): the first window captures it, every later window of this
          and later videos replays it; 3-5x faster token sampling per window on an H200.
        - `progress`: a progress bar over the sampling steps of all windows (tqdm, on stderr):
          True, False, or None (default) for "on a terminal only"; `pipe.progress` can be changed.
        Bad values raise ConfigError naming the argument.
        """
        require_control(model)
        if extractors is None:
            extractors, default_text = choose_extractors(model, {}, getattr(model, "loaded_from", None) or model.config.name, text_encoder is not None)
            text_encoder = default_text if text_encoder is None else text_encoder
        trained = getattr(model, "trained_parts", None)
        if trained is not None and not {"backbone", "controlnet"} <= trained and getattr(model, "loaded_from", None) is None:
            warnings.warn(
                f"FoleyPipeline: model {model.config.name!r} was built (build_model), not loaded, and its backbone / ControlNet "
                "are untrained: the foley is noise. Load a trained model with "
                "FoleyPipeline.from_pretrained(PATH) or controlfoley.from_pretrained(PATH)",
                RandomWeightsWarning,
                stacklevel=2,
            )
        need = set(control_encoder_of(model).required_features)
        if not isinstance(extractors, Mapping):
            raise ConfigError(f"extractors is a dict {{feature key: extractor}} for {sorted(need)}, got {type(extractors).__name__}")
        if set(extractors) != need:
            raise ConfigError(f"extractors must cover exactly the model's video features {sorted(need)}, got {sorted(extractors)}")
        if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 1:
            raise ConfigError(f"frame_size is the side of the decoded square frames in pixels, an int >= 1; got {frame_size!r}")
        if feature_frames is not None and not isinstance(feature_frames, Mapping):
            raise ConfigError(
                f"feature_frames is a dict {{feature key: rows per window}} for {sorted(need)} (e.g. {{'sync': 240}}), got {type(feature_frames).__name__}"
            )
        for key, n in (feature_frames or {}).items():
            if key not in need:
                raise ConfigError(f"feature_frames names {key!r}, not a video feature of this model ({sorted(need)})")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"feature_frames[{key!r}] is a number of feature rows per window, an int >= 1; got {n!r}")
        if isinstance(overlap, bool) or not isinstance(cast(Any, overlap), numbers.Real) or not 0.0 <= overlap < 1.0:  # cast: mypy counts no float a Real
            raise ConfigError(f"overlap is a fraction of the window in [0, 1), a float such as 0.25; got {overlap!r}")
        if not isinstance(join, str) or join not in JOINS:
            raise ConfigError(f"join must be one of {JOINS}, got {join!r}")
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if cuda_graph and model.device.type != "cuda":
            raise ConfigError(f"cuda_graph=True needs the model on a CUDA device; it is on {model.device}. Drop cuda_graph or load with map_location='cuda'")
        if vocoder is not None and not isinstance(vocoder, (str, Mapping, nn.Module)):
            raise ConfigError(
                f"vocoder is a VOCODERS name ('griffinlim'), a dict {{'name': ..., **kwargs}} or a module (None: the model's own), "
                f"got {type(vocoder).__name__} {vocoder!r}"
            )
        if progress is not None and not isinstance(progress, bool):
            raise ConfigError(f"progress is True, False or None (a terminal only), got {progress!r}")
        self.precision, self.cuda_graph, self.progress = precision, bool(cuda_graph), progress
        self.extractors = {k: build_extractor(v) for k, v in extractors.items()}
        self.text_encoder = None if text_encoder is None else build_extractor(text_encoder)
        check_extractor_widths(model, self.extractors, self.text_encoder)
        vocoder = build_vocoder(vocoder, model)  # a refused vocoder fails here, before the model is touched
        if precision == "bf16-weights":  # after every check: a refused pipeline leaves the model as it was
            sampling_parts_to_bf16(model)
        self.model = model.eval()
        self.vocoder = vocoder if vocoder is not None else model.vocoder
        self.overlap, self.join, self.frame_size = float(overlap), join, int(frame_size)
        self.feature_frames = dict(feature_frames or {})
        _, self.window_cols = model.grid
        self.frames_per_col = model.config.n_frames // self.window_cols
        self.col_samples = self.frames_per_col * model.mel.hop_length
        self._warned_no_prompt = False
        # (id(rule), cfg_scale) -> (rule, the rule at cfg_scale's without_text()); the fallbacks made at a cfg_scale
        # carry the scale their rule derived from it, so generate gets no cfg_scale for them (it would override that)
        self._fallbacks: dict[tuple[int, float | None], tuple[GuidanceRule, Any]] = {}
        self._scaled_fallbacks: set[int] = set()

    def __repr__(self) -> str:
        """Its parts by name, as a diffusers pipeline prints them."""

        def name(part: Any) -> str:
            return str(getattr(part, "name", None) or type(part).__name__)

        model = self.model
        source = getattr(model, "loaded_from", None)
        extractors = ", ".join(f"{k}: {name(e)}" for k, e in self.extractors.items())
        return (
            f"FoleyPipeline(model={model.config.name}"
            f"{f' from {source}' if source else ''} on {model.device}, extractors={{{extractors}}}, "
            f"text_encoder={None if self.text_encoder is None else name(self.text_encoder)}, vocoder={name(self.vocoder)}, "
            f"precision={self.precision!r}, overlap={self.overlap}, join={self.join!r})"
        )

    def to(self, device: str | torch.device) -> "FoleyPipeline":
        """Move the model, the vocoder and the extractors that are modules to `device`; returns self."""
        from controlfoley.model import device_name

        dev = torch.device(device_name(device, arg="device"))
        if self.cuda_graph and dev.type != "cuda":
            raise ConfigError(f"this pipeline samples through CUDA graphs (cuda_graph=True); it cannot move to {dev}")
        for part in (self.model, self.vocoder, self.text_encoder, *self.extractors.values()):
            if isinstance(part, nn.Module):
                part.to(dev)
        return self

    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | os.PathLike[str] | nn.Module,
        *,
        extractors: Mapping[str, ExtractorSpec] | None = None,
        text_encoder: ExtractorSpec | None = None,
        vocoder: str | Mapping[str, Any] | nn.Module | None = None,
        map_location: str | torch.device | None = None,
        **kwargs: Any,
    ) -> "FoleyPipeline":
        """Load a model (checkpoint or preset that ships weights) with its default extractors; a model
        already in memory (a fine-tuned one, say) is taken as it is.

        `extractors` replaces defaults by key; `vocoder` is a VOCODERS name, {"name": ..., **kwargs}
        or a module (default: the model's own); naming the model's own vocoder keeps its config kwargs
        and changes only the given ones. `map_location`: any torch device ("cpu:0" included); default
        the CPU for a file, a model in memory stays where it is unless one is given."""
        from controlfoley.model import from_pretrained

        if isinstance(path_or_preset, nn.Module):
            source = getattr(path_or_preset, "loaded_from", None) or getattr(getattr(path_or_preset, "config", None), "name", "model")
            require_control(path_or_preset)
            model = cast(ModelModule, path_or_preset)  # require_control checked it is a model with video control
            if map_location is not None:
                from controlfoley.model import device_name

                model.to(torch.device(device_name(map_location)))
        else:
            model, source = from_pretrained(path_or_preset, map_location=map_location or "cpu"), path_or_preset  # it maps "cpu:0" to safetensors' "cpu"
            require_control(model)
            require_trained(model, path_or_preset)
        chosen, default_text = choose_extractors(model, dict(extractors or {}), source, text_encoder is not None)
        return cls(model, chosen, text_encoder or default_text, vocoder, **kwargs)

    # -- videos -----------------------------------------------------------------------------------
    @overload
    def __call__(
        self, video_path: str | os.PathLike[str], prompt: Prompt | None = None, negative_prompt: Prompt | None = None, steps: int | None = None,
        cfg_scale: float | None = None, seed: int | None = 0, guidance: GuidanceRule | str | None = None, temperature: float | None = None,
        guidance_every: int = 1, control_scale: float | None = None, *, batch_size: int | None = None,
    ) -> FoleyResult: ...  # fmt: skip

    @overload
    def __call__(
        self, video_path: list[str | os.PathLike[str]] | tuple[str | os.PathLike[str], ...], prompt: Prompt | Sequence[Prompt | None] | None = None,
        negative_prompt: Prompt | Sequence[Prompt | None] | None = None, steps: int | None = None, cfg_scale: float | None = None,
        seed: int | Sequence[int | None] | None = 0, guidance: GuidanceRule | str | None = None, temperature: float | None = None,
        guidance_every: int = 1, control_scale: float | None = None, *, batch_size: int | None = None,
    ) -> list[FoleyResult]: ...  # fmt: skip

    def __call__(
        self,
        video_path: Any,
        prompt: Any = None,
        negative_prompt: Any = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        seed: Any = 0,
        guidance: GuidanceRule | str | None = None,
        temperature: float | None = None,
        guidance_every: int = 1,
        control_scale: float | None = None,
        *,
        batch_size: int | None = None,
    ) -> FoleyResult | list[FoleyResult]:
        """Foley for one video file (a path: returns a `FoleyResult`) or for several (a list of
        paths: returns a list of results, in order): decode, extract features, sample every window,
        decode, vocode.

        `prompt`: tags for the CLAP-role text encoder, a comma-separated string ("bell, thud") or a
        list/tuple of tags (["bell", "thud"]); None or empty samples with the rule's `without_text()`,
        video-only CFG for the built-in rules (see the module docstring). `negative_prompt`: the same forms, text the sampler steers away from.
        `steps` / `cfg_scale`: MaskGIT steps and final CFG scale (None: the model's own). `seed`
        makes the run repeatable (None: a fresh one, kept in the result). `guidance`: a GuidanceRule
        or GUIDANCE name replacing the model's rule (default: the model's; without a prompt, a model
        rule that needs text samples with its `without_text()`); `temperature`: the sampler's Gumbel
        temperature (None: the model's); `guidance_every`: every condition set of the rule at every
        N-th step only, the paper's sampler at 1 (an approximation that saves arithmetic, see
        `SpecMaskFoley.generate`); `control_scale`: the ControlNet's residuals multiplied by it (1:
        as trained; less follows the video less; see `SpecMaskFoley.generate`). Returns a `FoleyResult`
        whose waveform lasts as long as the video (`result.save("out.wav")`,
        `result.save_video(video_path, "out.mp4")`); a bad file raises MediaError, features that do
        not fit the model ShapeError.

        Several videos, `pipe([a, b, c], ...)`: up to `batch_size` of them sample together, window
        by window (one batched forward per step across videos and guidance rows: far more clips per
        second on a GPU; default 16 on CUDA, 1 with `cuda_graph`, 8 elsewhere: on this project's
        2-core CPU a batch of 8 gave the shipped synthetic model 1.3-1.6x the videos per second,
        benchmarks/RESULTS.md). Each result is the one `pipe(video, prompt, seed=...)` gives alone:
        every video draws from its own generator seeded with its seed, so the tokens are the same up
        to the rounding of batched matrix products (equal on the CPU in the tests; a GPU's kernels
        may round a few differently at another batch size, not measured yet). `prompt`,
        `negative_prompt` and `seed` are one value for every video (a string, a list of tags, an
        int, None) or a list with one entry per video (`prompt=["bell", None, "dog, bark"]`; with
        several videos a list is always one entry per video). Every file is probed, and every
        video's conditions checked, before any sampling: a missing, unreadable, audio-only or
        one-frame file fails at once, naming it. Only the features of one batch are held at a time;
        the results of all are kept until the call returns, and a file that fails while being
        decoded raises then, losing the results of the batches before it: for long lists use
        `iterate` (each result as its batch finishes) or the `controlfoley generate` command (a bad
        file fails alone).
        """
        if isinstance(video_path, (str, os.PathLike)):
            self._batch_size(batch_size)  # checked, though one video has nothing to batch
            checked_prompt(prompt)  # before the video is read, as in the list form
            checked_prompt(negative_prompt, "negative_prompt")
            seed = checked_seed(seed)
            guidance_every = checked_guidance_every(guidance_every)
            checked_control_scale(control_scale)
            streams, duration = self.read_features(video_path)
            return self.generate(
                streams, duration, prompt, negative_prompt, steps=steps, cfg_scale=cfg_scale, seed=seed, guidance=guidance, temperature=temperature,
                guidance_every=guidance_every, control_scale=control_scale,
            )
        args, settings = self._plan_videos(
            video_path, prompt, negative_prompt, seed, guidance, batch_size, steps=steps, cfg_scale=cfg_scale, temperature=temperature,
            guidance_every=guidance_every, control_scale=control_scale,
        )  # fmt: skip
        return self._generate(*args, **settings)

    def iterate(
        self,
        videos: Sequence[str | os.PathLike[str]],
        prompt: Prompt | Sequence[Prompt | None] | None = None,
        negative_prompt: Prompt | Sequence[Prompt | None] | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        seed: int | Sequence[int | None] | None = 0,
        guidance: GuidanceRule | str | None = None,
        temperature: float | None = None,
        guidance_every: int = 1,
        control_scale: float | None = None,
        *,
        batch_size: int | None = None,
    ) -> Iterator[tuple[int, FoleyResult]]:
        """`pipe(videos, ...)` for long lists: yields `(index, result)` for each video as its batch
        finishes (not in the list's order: videos sample grouped by their conditions, longest first),
        so that each can be saved and dropped at once and a file that fails to decode costs only
        itself and what follows, not the results before it. The arguments and results are those of
        `__call__` with a list (one path alone is refused with a ConfigError: pass [path], or call
        `pipe(path)`)::

            for i, result in pipe.iterate(videos, seed=0):
                result.save(f"out/{Path(videos[i]).stem}.wav")
        """
        args, settings = self._plan_videos(
            videos, prompt, negative_prompt, seed, guidance, batch_size, call="iterate", steps=steps, cfg_scale=cfg_scale, temperature=temperature,
            guidance_every=guidance_every, control_scale=control_scale,
        )  # fmt: skip
        return self._iterate(*args, **settings)

    def _plan_videos(
        self, videos: Any, prompt: Any, negative_prompt: Any, seed: Any, guidance: Any, batch_size: Any, *, call: str = "a pipeline call",
        **settings: Any,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A list call's arguments checked and every file probed (missing, unreadable, audio-only or
        a still image: refused before anything samples): `_iterate`'s arguments and settings.
        `call` names the method in errors."""
        from controlfoley.video import probe

        videos = _video_list(videos, call)
        prompts, negatives, seeds = _per_video_conditions(len(videos), prompt, negative_prompt, seed)
        settings["guidance_every"] = checked_guidance_every(settings["guidance_every"])
        checked_control_scale(settings["control_scale"])
        batch_size = self._batch_size(batch_size)
        self.model.sampler.settings(settings["steps"], settings["temperature"])
        durations = []
        for v in videos:  # a file that cannot work fails now, not after the videos before it sampled
            duration = probe(Path(v)).duration_s
            if duration is not None:
                self._check_long_enough(v, duration)
            durations.append(duration)
        loaders = [functools.partial(self.read_features, v) for v in videos]
        return (loaders, prompts, negatives, seeds, guidance, batch_size, durations), settings

    @torch.no_grad()
    def read_features(self, video_path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], float]:
        """Whole-video feature streams {key: [t, d]} (frames extended to the window plan) and duration."""
        from controlfoley.video import probe

        video_path = Path(video_path)
        frame_exts = {k: e for k, e in self.extractors.items() if not hasattr(e, "features_for")}
        frames, duration = self._decode(video_path, frame_exts) if frame_exts else ({}, probe(video_path).duration_s)
        self._check_long_enough(video_path, duration)
        plan = self.plan(duration)
        streams = {}
        for key, ext in self.extractors.items():
            rows = self._rows_needed(plan, key, ext.fps)
            if key in frames:
                given = _extend(frames[key], rows)
                streams[key] = _extend(_checked_rows(ext, key, ext(given), given.shape[0]), rows)
            else:
                streams[key] = self._precomputed(ext, video_path, duration, rows)
        return streams, duration

    def _check_long_enough(self, video_path: str | os.PathLike[str], duration: float) -> None:
        """A still image (one frame, 0.04 s) decodes as a "video": say so rather than make 0.04 s of foley."""
        col_s = self.col_samples / self.model.sample_rate
        if duration < col_s:
            raise MediaError(
                f"{video_path}: lasts {duration:.3f} s, less than one token column ({col_s:.3f} s) of audio; "
                "a still image or a one-frame video? foley needs a moving picture"
            )

    def plan(self, duration_s: float) -> WindowPlan:
        return plan_windows(
            duration_s, sample_rate=self.model.sample_rate, window_cols=self.window_cols, col_samples=self.col_samples, overlap=self.overlap
        )

    def rows_per_window(self, key: str, fps: float) -> int:
        """Feature rows conditioning one window: a training clip's count unless `feature_frames` says."""
        if key in self.feature_frames:
            return int(self.feature_frames[key])
        from fractions import Fraction

        from controlfoley._media import rate_fraction
        from controlfoley.video import _total_frames

        # extraction's rule: the window as the fraction it is (n_samples / sample_rate), the rate as read_frames reads it
        return _total_frames(Fraction(self.model.n_samples, self.model.sample_rate), rate_fraction(fps))

    def _rows_needed(self, plan: WindowPlan, key: str, fps: float) -> int:
        n = self.rows_per_window(key, fps)
        return max(plan.feature_rows(w, fps, n).stop for w in plan.windows)

    def _decode(self, path: Path, extractors: Mapping[str, Any]) -> tuple[dict[str, Tensor], float]:
        """Frames per extractor key; one decode per (size, rate), rates dividing it resampled in memory."""
        from controlfoley.video import read_frames, resample_frames

        groups: dict[int, list[str]] = {}
        for key, ext in extractors.items():
            groups.setdefault(int(getattr(ext, "frame_size", self.frame_size)), []).append(key)
        out, duration = {}, 0.0
        for size, keys in groups.items():
            decoded: dict[float, Tensor] = {}
            for key in sorted(keys, key=lambda k: -float(extractors[k].fps)):
                fps = float(extractors[key].fps)
                src = next((r for r in decoded if _divides(fps, r)), None)
                if src is None:
                    got = read_frames(path, fps, size=size)
                    decoded[fps], duration = got.frames, got.duration_s
                    src = fps
                out[key] = decoded[src] if src == fps else resample_frames(decoded[src], src, fps)
        return out, duration

    def _precomputed(self, ext: Any, path: Path, duration: float, rows: int) -> Tensor:
        feats = ext.features_for(path)
        covered = feats.shape[0] / ext.fps
        if covered < duration - 1.0:  # a clip's features, not the whole video's: refuse to invent the rest
            raise ShapeError(f"{ext.name}: features for {path.name} cover {covered:.2f} s but the video lasts {duration:.2f} s")
        if covered > duration + max(1.0, 0.1 * duration):  # padded, another clip's, or another rate: say it, use the start
            log.warning(
                "%s: features for %s cover %.2f s at fps=%g but the video lasts %.2f s; the first %.2f s are used. If they were "
                "extracted at another rate, give it (%s,fps=RATE), or they belong to another video",
                ext.name, path.name, covered, ext.fps, duration, duration, ext.name,
            )
        return _extend(feats, rows)

    # -- sampling ---------------------------------------------------------------------------------
    def generate(
        self,
        streams: Mapping[str, Tensor],
        duration_s: float,
        prompt: Prompt | None = None,
        negative_prompt: Prompt | None = None,
        *,
        steps: int | None = None,
        cfg_scale: float | None = None,
        seed: int | None = 0,
        guidance: GuidanceRule | str | None = None,
        temperature: float | None = None,
        guidance_every: int = 1,
        control_scale: float | None = None,
    ) -> FoleyResult:
        """Sample all windows from whole-video feature streams {key: [t, d]} (see `read_features`):
        one float torch.Tensor per video feature of the pipeline's extractors, its rows at that
        extractor's `fps`, and `duration_s` (seconds, > 0) the audio to make. Streams that cover
        less of `duration_s` than `read_features` would (short by more than one row and 0.5 s) are
        warned about: the rest is conditioned on their last row, repeated. Bad streams raise
        ShapeError, a bad duration ConfigError. `seed=None` draws a fresh seed, returned in
        `FoleyResult.seed`; the other settings as in `__call__`."""
        duration_s = self._check_streams(streams, duration_s, "streams")
        checked_prompt(prompt)
        checked_prompt(negative_prompt, "negative_prompt")
        seed = checked_seed(seed)
        return self._generate(
            [lambda: (streams, duration_s)], [prompt], [negative_prompt], [seed], guidance, 1, [float(duration_s)], steps=steps, cfg_scale=cfg_scale,
            temperature=temperature, guidance_every=guidance_every, control_scale=control_scale,
        )[0]

    def generate_many(
        self,
        inputs: Sequence[tuple[Mapping[str, Tensor], float]],
        prompt: Prompt | Sequence[Prompt | None] | None = None,
        negative_prompt: Prompt | Sequence[Prompt | None] | None = None,
        *,
        steps: int | None = None,
        cfg_scale: float | None = None,
        seed: int | Sequence[int | None] | None = 0,
        guidance: GuidanceRule | str | None = None,
        temperature: float | None = None,
        guidance_every: int = 1,
        control_scale: float | None = None,
        batch_size: int | None = None,
    ) -> list[FoleyResult]:
        """`generate` for several videos' (streams, duration) pairs (each as `read_features` returns
        it), sampled `batch_size` at a time; per-video `prompt` / `negative_prompt` / `seed` lists
        and the result of each as in `__call__` with a list of videos; the streams and durations are
        checked as in `generate`."""
        if isinstance(inputs, Mapping) or not isinstance(inputs, Sequence) or not all(isinstance(x, tuple) and len(x) == 2 for x in inputs):
            raise ConfigError("generate_many takes a list of (streams, duration_s) pairs, as read_features returns them; for one video use generate")
        inputs = [(x, self._check_streams(x, d, f"inputs[{i}]")) for i, (x, d) in enumerate(inputs)]
        prompts, negatives, seeds = _per_video_conditions(len(inputs), prompt, negative_prompt, seed)
        loaders = [lambda x=x: x for x in inputs]
        return self._generate(
            loaders, prompts, negatives, seeds, guidance, self._batch_size(batch_size), [float(d) for _, d in inputs], steps=steps,
            cfg_scale=cfg_scale, temperature=temperature, guidance_every=guidance_every, control_scale=control_scale,
        )

    def _check_streams(self, streams: Any, duration_s: Any, what: str) -> float:  # a validator: it takes anything
        """`generate`'s whole-video streams checked (`what` names them in errors): a float tensor
        [t >= 1, d] for each of the extractors' keys; returns `duration_s` as a float, checked to
        be a positive finite number of seconds. Streams that end well before `duration_s` are
        warned about: one row short (the floor of duration x fps) is what `read_features` can give,
        and 0.5 s more (the mismatch `FoleyResult.save_video` warns about) is left to rounding."""
        duration = float(duration_s) if isinstance(duration_s, numbers.Real) and not isinstance(duration_s, bool) else math.nan
        where = "" if what == "streams" else f"{what}: "  # generate_many names the pair
        if not (math.isfinite(duration) and duration > 0):
            raise ConfigError(f"{where}duration_s is the audio's length in seconds, a positive finite number (read_features returns it), got {duration_s!r}")
        col_s = self.col_samples / self.model.sample_rate
        if duration < col_s:  # as read_features refuses a still image: less than one token column of audio
            raise ConfigError(f"{where}duration_s is {duration:g} s, less than one token column ({col_s:.3f} s) of audio; give the video's duration (read_features returns it)")
        need = sorted(self.extractors)
        if not isinstance(streams, Mapping) or set(streams) != set(need):
            got = sorted(map(str, streams)) if isinstance(streams, Mapping) else type(streams).__name__
            raise ShapeError(f"{what} must be a dict of whole-video feature streams {{key: [frames, dim]}} for {need}, as read_features returns it; got {got}")
        short = []
        for key in need:
            x = streams[key]
            if not isinstance(x, Tensor):
                raise ShapeError(f"{what}[{key!r}] must be a torch.Tensor [frames, dim], got {type(x).__name__}; convert it with torch.as_tensor(x)")
            if not x.is_floating_point():
                raise ShapeError(f"{what}[{key!r}] must be a float tensor [frames, dim], got {x.dtype}")
            if x.ndim != 2:
                fix = "drop the batch axis (stream[0])" if x.ndim == 3 and x.shape[0] == 1 else "generate_many([(streams, duration_s), ...]) takes several videos" if x.ndim == 3 else "give [frames, dim]"
                raise ShapeError(f"{what}[{key!r}] is {list(x.shape)}; generate takes whole-video streams as read_features returns them, [frames, dim]: {fix}")
            if x.shape[0] == 0:
                raise ShapeError(f"{what}[{key!r}] has no rows ({list(x.shape)}); give the video's features, at least one frame (read_features(path))")
            fps = float(self.extractors[key].fps)
            covered = x.shape[0] / fps
            if covered < duration - 1.0 / fps - 0.5:
                short.append(f"{what}[{key!r}] covers {covered:.2f} s ({x.shape[0]} rows at {fps:g} fps)")
        if short:
            warnings.warn(
                f"{'; '.join(short)} but duration_s is {duration:.2f} s: the rest is conditioned on the last row repeated (a still "
                "picture, no new onsets); pass the whole video's features (read_features) or a duration_s they cover",
                stacklevel=user_stacklevel(),
            )
        return duration

    def _generate(self, *args: Any, **kwargs: Any) -> list[FoleyResult]:
        """`_iterate`'s results in the order of the videos."""
        results: dict[int, FoleyResult] = dict(self._iterate(*args, **kwargs))
        return [results[i] for i in range(len(results))]

    def _iterate(
        self,
        loaders: Sequence[Callable[[], tuple[Mapping[str, Tensor], float]]],
        prompts: Sequence[Prompt | None],
        negatives: Sequence[Prompt | None],
        seeds: Sequence[int],
        guidance: GuidanceRule | str | None,
        batch_size: int,
        durations: Sequence[float | None] | None = None,
        **settings: Any,
    ) -> Iterator[tuple[int, FoleyResult]]:
        """(index, result) of each video as its batch finishes. The videos are grouped by what
        their rows of a batch must share (the guidance rule; text or none; a negative prompt or
        none), longest first within a group where `durations` (expected, e.g. probed) are known (so
        that a batch's later windows keep their rows), and sampled `batch_size` at a time, the
        features of a batch loaded (`loaders[i]()`) just before it samples. Every video's
        conditions are checked before anything loads."""
        from controlfoley.model import _check_inputs

        _check_inputs(settings["cfg_scale"], None, None)
        n_steps = self.model.sampler.settings(settings["steps"], settings["temperature"])[0]
        rule_arg = None if guidance is None else self.model.resolve_guidance(guidance)  # one rule object for every video
        conditions: dict[tuple[str | None, str | None], tuple[Tensor | None, Tensor | None, GuidanceRule | None]] = {}
        groups: dict[tuple[int | None, bool, bool], list[int]] = {}
        keys = [(prompt_text(p), prompt_text(q)) for p, q in zip(prompts, negatives, strict=True)]  # each video's conditions
        for i, (p, key) in enumerate(zip(prompts, keys, strict=True)):
            if key not in conditions:  # a prompt shared by many videos is encoded (and warned about) once
                conditions[key] = self._conditions(key[0], key[1], rule_arg, settings["cfg_scale"])
            text, negative, rule = conditions[key]
            if text is None and (rule or self.model.guidance).needs_text:  # a rule given by the caller that needs text, and no prompt
                which = f"video {i} has none (prompt[{i}] is {p!r})" if len(prompts) > 1 else "none was given"
                raise ConfigError(
                    f"guidance {rule or self.model.guidance} needs a text prompt, and {which}; give one, or a guidance rule without "
                    "text such as 'cfg_video'"
                )
            groups.setdefault((None if rule is None else id(rule), text is None, negative is None), []).append(i)
        windows = [None if d is None else len(self.plan(d).windows) for d in (durations or [None] * len(loaders))]
        expected = sum(w or 0 for w in windows) * n_steps
        everies: dict[int, int] = {}
        bar = _progress_bar(self.progress, expected) if expected else None
        try:
            for idx in groups.values():
                idx = sorted(idx, key=lambda i: -(windows[i] or 0))  # stable: the given order where lengths tie or are unknown
                text, negative, rule = conditions[keys[idx[0]]]
                r = rule or self.model.guidance
                if id(r) not in everies:  # a warning once per rule, not per group or window
                    everies[id(r)] = checked_guidance_every(settings["guidance_every"], r)
                for c in range(0, len(idx), batch_size):
                    jobs = []
                    for i in idx[c : c + batch_size]:
                        streams, duration = loaders[i]()
                        plan = self.plan(duration)
                        # every window's rows there (features given shorter than the video hold their last row, as read_features does)
                        streams = {k: _extend(x, self._rows_needed(plan, k, float(self.extractors[k].fps))) if k in self.extractors else x for k, x in streams.items()}
                        jobs.append(_Job(plan, streams, float(duration), conditions[keys[i]][0], conditions[keys[i]][1], seeds[i]))
                    steps_here = sum(len(j.plan.windows) for j in jobs) * n_steps
                    planned = sum(windows[i] or 0 for i in idx[c : c + batch_size]) * n_steps
                    if bar is None:
                        bar = _progress_bar(self.progress, steps_here)
                    elif steps_here != planned:  # a decoded duration other than the probed one
                        bar.total += steps_here - planned
                        bar.refresh()
                    here = {**settings, "guidance_every": everies[id(r)]}
                    if rule is not None and id(rule) in self._scaled_fallbacks:  # its rule's without_text() at cfg_scale: as it is
                        here["cfg_scale"] = None
                    codes = self._sample_jobs(jobs, rule, bar, n_steps, **here)
                    for i, job, job_codes in zip(idx[c : c + batch_size], jobs, codes, strict=True):
                        yield i, self._finish(job, job_codes)
        finally:
            if bar is not None:  # also on an error, Ctrl-C or an iteration left early: no bar left behind on the terminal
                bar.close()

    def _batch_size(self, batch_size: Any) -> int:  # a validator: it takes anything
        """How many videos sample together: `batch_size` checked, or for None 16 on CUDA and 8
        elsewhere (benchmarks/pipeline_batch.py), and 1 with `cuda_graph` (a graph is captured per
        batch shape: one video at a time replays one graph for every window)."""
        if batch_size is None:
            return 1 if self.cuda_graph else 16 if self.model.device.type == "cuda" else 8
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"batch_size is how many videos sample together, an int >= 1 (None: 16 on CUDA, 8 elsewhere); got {batch_size!r}")
        return int(batch_size)

    def _finish(self, job: "_Job", codes: Int[Tensor, "f c"]) -> FoleyResult:
        """One video's tokens -> its FoleyResult: decode, vocode, trim to the video."""
        plan = job.plan
        mel = self.decode(codes, plan)
        with torch.no_grad():  # a vocoder override is called directly: no autograd graph through it (not inference_mode: users get a plain tensor)
            wav = run_vocoder(self.vocoder, mel[None], hop_length=int(self.model.mel.hop_length))[0, : plan.n_samples].cpu()
        clip = _unreported_clipping(wav)
        if clip is not None:  # said here, once per clip: FoleyResult.save / save_video do not say it again
            peak, n, size = clip
            log.warning(
                "the waveform peaks at %.3g, past full scale (1.0): saved as 16-bit audio (FoleyResult.save) or in a video "
                "(save_video), %d of its %d samples (%.0f%%) are clipped to [-1, 1], a distorted sound; an under-trained decoder "
                "or vocoder? FoleyResult.wav keeps the values: normalise them (wav / wav.abs().max()) or write float samples "
                "(controlfoley.audio.io.save_audio(path, result.wav, result.sample_rate, subtype='FLOAT'))",
                peak, n, size, 100.0 * n / size,
            )  # fmt: skip
        n_mel = math.ceil(plan.n_samples / self.model.mel.hop_length)
        result = FoleyResult(wav, plan.sample_rate, mel[:, :n_mel].cpu(), codes.cpu(), job.duration_s, plan.windows, job.seed)
        object.__setattr__(result, "_checked", _stamp(wav))  # checked for clipping above: save / save_video need not say it again
        return result

    def sample_tokens(
        self,
        plan: WindowPlan,
        streams: Mapping[str, Tensor],
        text: Tensor | None,
        negative: Tensor | None,
        rule: GuidanceRule | None,
        *,
        steps: int | None = None,
        cfg_scale: float | None = None,
        seed: int = 0,
        temperature: float | None = None,
        guidance_every: int = 1,
        control_scale: float | None = None,
    ) -> Int[Tensor, "f c"]:
        """Token map [F, plan.total_cols]; each window continues the previous one's shared columns."""
        n_steps = self.model.sampler.settings(steps, temperature)[0]
        bar = _progress_bar(self.progress, len(plan.windows) * n_steps)
        try:
            if seed is None:  # checked_seed would draw one, and the tokens returned cannot carry it
                raise ConfigError("sample_tokens needs an int seed (the tokens it returns cannot carry a fresh one); generate(seed=None) draws one and returns it")
            job = _Job(plan, streams, plan.n_samples / plan.sample_rate, text, negative, checked_seed(seed))
            return self._sample_jobs(
                [job], rule, bar, n_steps, steps=steps, cfg_scale=cfg_scale, temperature=temperature, guidance_every=guidance_every,
                control_scale=control_scale,
            )[0]
        finally:
            if bar is not None:  # also on an error or Ctrl-C: no bar left behind on the terminal
                bar.close()

    def _sample_jobs(
        self, jobs: Sequence["_Job"], rule: GuidanceRule | None, bar: Any, n_steps: int, *, steps: int | None, cfg_scale: float | None,
        temperature: float | None, guidance_every: int, control_scale: float | None,
    ) -> list[Int[Tensor, "f c"]]:
        """Token maps [F, total_cols] of videos that share a rule and which conditions they have,
        sampled together window by window: window k of every video with more than k windows in one
        `model.generate` call, each video drawing from its own generator (the draws it makes alone);
        progress on `bar` (or not, for None) in steps per video."""
        model, dev = self.model, self.model.device
        n_f, t = model.grid
        codes = [torch.zeros(n_f, j.plan.total_cols, dtype=torch.long, device=dev) for j in jobs]
        generators = [torch.Generator(device=dev).manual_seed(int(j.seed)) for j in jobs]
        use_video = (rule or model.guidance).needs_video  # a rule without video (cfg_text): features not passed, not warned about per window
        on_step = None if self.cuda_graph or bar is None else (lambda k, n, c, m: bar.update(c.shape[0]))
        done = 0 if bar is None else bar.n
        for k in range(max(len(j.plan.windows) for j in jobs)):
            rows = [(i, j, j.plan.windows[k]) for i, j in enumerate(jobs) if k < len(j.plan.windows)]
            feats = {}
            for key in jobs[0].streams if use_video else ():
                fps = float(self.extractors[key].fps)
                n = self.rows_per_window(key, fps)
                feats[key] = torch.stack([j.streams[key][j.plan.feature_rows(w, fps, n)] for _, j, w in rows]).to(dev)
            known = {}
            if any(w.n_known for _, _, w in rows):  # rows that know nothing (a video's first window) get an empty mask
                mask = torch.zeros(len(rows), n_f, t, dtype=torch.bool, device=dev)
                given = torch.zeros(len(rows), n_f, t, dtype=torch.long, device=dev)
                for r, (i, _, w) in enumerate(rows):
                    mask[r, :, : w.n_known] = True
                    given[r] = codes[i][:, w.start_col : w.start_col + t]
                known = {"known_codes": given, "known_mask": mask}
            # a batch's jobs all have a text or none, a negative or none (_iterate groups them so)
            text = None if jobs[0].text is None else torch.cat([cast(Tensor, j.text) for _, j, _ in rows])
            negative = None if jobs[0].negative is None else torch.cat([cast(Tensor, j.negative) for _, j, _ in rows])
            out = model.generate(
                feats or None, text, negative_text=negative, batch_size=len(rows), steps=steps, cfg_scale=cfg_scale, temperature=temperature, guidance=rule,
                generator=[generators[i] for i, _, _ in rows], dtype=PRECISIONS[self.precision], cuda_graph=self.cuda_graph,
                guidance_every=guidance_every, callback=on_step, control_scale=control_scale, **known,
            )  # fmt: skip
            for r, (i, _, w) in enumerate(rows):
                codes[i][:, w.start_col : w.start_col + t] = out[r]
            done += len(rows) * n_steps
            if bar is not None:  # a window that stopped early (nothing left masked), or one sampled as a captured graph
                bar.update(done - bar.n)
        return codes

    def decode(self, codes: Int[Tensor, "f c"], plan: WindowPlan) -> Float[Tensor, "m n"]:
        """Token map -> joined normalised mel [m, total_cols * frames_per_col]."""
        if self.join == "decode_once":
            return self.model.decode(codes[None])[0]
        t = self.window_cols
        mels = [self.model.decode(codes[None, :, w.start_col : w.start_col + t])[0] for w in plan.windows]
        return crossfade_join(mels, plan, self.frames_per_col)

    def _conditions(
        self, prompt: Prompt | None, negative_prompt: Prompt | None, guidance: GuidanceRule | str | None = None, cfg_scale: float | None = None
    ) -> tuple[Tensor | None, Tensor | None, GuidanceRule | None]:
        """(text embedding, negative embedding, guidance rule override or None for the model's). With
        no prompt and a model rule that needs text: that rule at `cfg_scale` (where given), then its
        without_text(), so a rule of one's own deriving its fallback's scale derives it from cfg_scale."""
        prompt, negative_prompt = prompt_text(prompt), prompt_text(negative_prompt)
        text = self.encode_text(prompt) if prompt else None
        negative = self.encode_text(negative_prompt) if negative_prompt else None
        rule = self.model.resolve_guidance(guidance)  # the model's own for None
        if text is not None and not rule.needs_text:
            log.warning("the prompt is not used: guidance %s has no text condition (pass guidance='multi' or 'cfg_text_video' to follow it)", rule)
            text = None  # said once here, not again by generate at every window
        if guidance is not None:  # the caller's choice, as is (a rule that needs text then needs a prompt)
            return text, negative, rule
        if text is None and rule.needs_text:
            at = None if cfg_scale is None else float(cfg_scale)
            kept = self._fallbacks.get((id(rule), at))
            if kept is None or kept[0] is not rule:  # one fallback object per rule and scale: the videos of a batched call share its rows
                scaled = rule if at is None else with_scale(rule, at)
                # video-only CFG for the built-ins; a rule of one's own may choose
                kept = self._fallbacks[(id(rule), at)] = (rule, scaled.without_text())
                if at is not None and isinstance(kept[1], GuidanceRule):
                    self._scaled_fallbacks.add(id(kept[1]))
            fallback = kept[1]
            if not isinstance(fallback, GuidanceRule) or fallback.needs_text:
                raise ConfigError(
                    f"no prompt, and guidance {rule}.without_text() returned {fallback!r}, which is not a rule without a text "
                    "condition; give a prompt, or return one from without_text()"
                )
            if not self._warned_no_prompt:
                log.warning("no prompt: guidance %s needs text, so %s (its without_text()) samples instead", rule, fallback)
                self._warned_no_prompt = True
            return None, negative, fallback
        return text, negative, None

    def encode_text(self, prompt: Prompt) -> Float[Tensor, "1 c"]:
        """A prompt (comma-separated tags or a list of tags) -> its text embedding [1, cond_dim]."""
        prompt = prompt_text(prompt) or ""
        if self.text_encoder is None:
            raise ConfigError(
                "this pipeline has no text encoder (CLAP role), so it takes no prompt; pass text_encoder=('clap_transformers', {'folder': DIR}) "
                "(command line: --text-encoder clap_transformers,folder=DIR), or drop the prompt for video-only guidance"
            )
        emb = self.text_encoder.encode_text([prompt]).float().to(self.model.device)
        want = int(self.model.backbone.cond_dim)
        if emb.shape != (1, want):
            raise ShapeError(f"text encoder {getattr(self.text_encoder, 'name', '?')} gives {list(emb.shape)}, the model needs [1, {want}]")
        return emb


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One video of a sampling batch: its window plan, feature streams and conditions."""

    plan: WindowPlan
    streams: Mapping[str, Tensor]
    duration_s: float
    text: Tensor | None  # [1, c]
    negative: Tensor | None  # [1, c]
    seed: int


def _checked_rows(ext: Any, key: str, out: Any, n_frames: int) -> Tensor:
    """An extractor's output for `n_frames` frames: a float tensor [n_frames, dim] (its declared
    `dim`), else a ShapeError naming the extractor (the video was fine: blaming it sent users to
    their files)."""
    name = getattr(ext, "name", type(ext).__name__)
    dim = getattr(ext, "dim", None)
    ok = isinstance(out, Tensor) and out.ndim == 2 and out.is_floating_point() and out.shape[0] == n_frames
    if ok and isinstance(dim, int) and not isinstance(dim, bool) and out.shape[1] != dim:
        ok = False
    if not ok:
        got = f"{list(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(
            f"extractor {name!r} (feature {key!r}) returned {got} for {n_frames} frames; an extractor returns float "
            f"features [frames, dim] = [{n_frames}, {dim}] (its declared dim): fix the extractor, or its dim"
        )
    return cast(Tensor, out)


def _video_list(videos: Any, call: str = "a pipeline call") -> list[str | os.PathLike[str]]:  # a validator: it takes anything
    """A list call's video paths, checked (`call` names the method in errors). One path where a list
    is expected is refused: a string is a sequence, of its characters."""
    if isinstance(videos, (str, os.PathLike)):
        raise ConfigError(f"{call} takes a list of video paths, got one {type(videos).__name__} ({str(videos)!r}); for one video pass [path] or call pipe(path)")
    if isinstance(videos, (bytes, Mapping)) or not isinstance(videos, Sequence):
        raise ConfigError(
            f"{call} takes {'a list of video paths' if call == 'iterate' else 'a video path or a list of them'}, got {type(videos).__name__}; "
            "for decoded features use pipe.generate(streams, duration) or pipe.generate_many([...])"
        )
    bad = [type(v).__name__ for v in videos if not isinstance(v, (str, os.PathLike))]
    if bad:
        raise ConfigError(f"{call} takes a list of video paths (str or Path), got a list holding {', '.join(sorted(set(bad)))}")
    if not videos:
        raise ConfigError("the list of videos is empty: give at least one path")
    return list(videos)


def _per_video(value: Any, n: int, name: str, one: Callable[[Any], bool]) -> list[Any]:
    """`value` for each of n videos: one value (`one(value)`) for all, or a list of n, one each."""
    if one(value):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(
                f"{name}: with {n} videos, give one {name} for all of them or a list of {n} (one per video), got a list of {len(value)}"
                + (" (for tags shared by every video, write them as one string: 'bell, thud')" if name.endswith("prompt") else "")
            )
        return list(value)
    raise ConfigError(f"{name}: one value for every video or a list of one per video, got {type(value).__name__}")


def _per_video_conditions(n: int, prompt: Any, negative_prompt: Any, seed: Any) -> tuple[list[Any], list[Any], list[int]]:
    """(prompts, negative prompts, seeds), one per video, checked; a None seed becomes a fresh one per video."""
    one_for_all = lambda p: p is None or isinstance(p, str)  # noqa: E731  (a list is one entry per video)
    prompts, negatives = _per_video(prompt, n, "prompt", one_for_all), _per_video(negative_prompt, n, "negative_prompt", one_for_all)
    for name, items in (("prompt", prompts), ("negative_prompt", negatives)):
        for i, p in enumerate(items):
            checked_prompt(p, f"{name}[{i}]")
    seeds = _per_video(seed, n, "seed", lambda s: not isinstance(s, (list, tuple)))
    return prompts, negatives, [checked_seed(s, "seed" if not isinstance(seed, (list, tuple)) else f"seed[{i}]") for i, s in enumerate(seeds)]


def _divides(fps: float, decoded: float) -> bool:
    ratio = decoded / fps
    return abs(ratio - round(ratio)) < 1e-9


def _extend(x: Tensor, n: int) -> Tensor:
    """First `n` rows of `x`, its last row repeated where `x` is shorter (a still picture / held feature)."""
    if x.shape[0] >= n:
        return x[:n]
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


def generate_main(argv: Sequence[str]) -> int:
    """`controlfoley generate VIDEO... --model M --out DIR`; see controlfoley.generate_cli."""
    from controlfoley.generate_cli import main

    return main(argv)

