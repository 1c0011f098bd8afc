"""Video I/O through PyAV: probe, decode frames at fixed rates, read and write audio tracks, mux.

Features
- `read_frames(path, fps)`: frame k of the output is the source frame *displayed* at time k/fps (the
  last frame whose presentation timestamp is <= k/fps), for any input rate, constant or variable;
  n = floor(duration * fps) frames (at least 1), duration = last pts + the median frame gap, or + the
  last frame's own length where the file gives it (longer: a held frame; shorter: only where the
  header's duration agrees, as for a slideshow's last slide). Times
  are exact fractions of the stream's time base (a tie within half a tick counts as displayed), and
  a float rate is read as the fraction it stands for (29.97 -> 2997/100, 30000/1001 stays itself).
  Optional resize by libswscale (area filter).
- `resample_frames` / `frame_indices`: the same rule for frames already in memory.
- `read_audio_track(path, sample_rate)`: mono float32, resampled by libswresample; with `max_seconds`
  only the start is decoded (a clip's window of a long video), the same samples as a whole read gives.
- `write_video`: MP4 (libx264, else mpeg4; yuv420p; AAC audio), packets interleaved by time.
- `mux_audio`: copies the video stream's packets unchanged (stream remux), adds the new audio as
  AAC, drops the old audio; re-encodes the video only when the output container cannot hold its
  codec (keeping its frame times, display rotation, pixel aspect ratio and colours), and says so in
  the returned `MuxResult` and in a log warning. A still cover picture (an audio file's album art)
  is not a video stream.
- Every user-caused failure (missing file, no video stream, truncated or corrupt file, zero-length
  video, unsupported codec, unwritable output) raises a one-line `MediaError`; `read_frames` also
  refuses a file whose decoded video is clearly shorter than the duration its header states (cut
  short mid-stream: shorter by more than max(0.5 s, 10 %), checked where the header declares no
  frame count). Outputs are written through `controlfoley._io.atomic_path`, so no partial file is
  ever left behind. A bad argument (a frame rate, size or sample rate out of range, an audio track
  that is not a float mono waveform, a sample rate AAC cannot hold) raises a `ConfigError` or
  `ShapeError` naming it before any file is opened (both derive from ValueError, as before).

The writers live in `controlfoley._video_write` and the shared opening/error plumbing in
`controlfoley._media`; this module is the public face of all three.

References: FFmpeg/libav* via PyAV (https://pyav.basswood-io.com); presentation-timestamp semantics
of the MP4/Matroska containers (ISO/IEC 14496-12).
"""

import math
import numbers
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from jaxtyping import UInt8

from controlfoley._media import SOUNDFILE_SUFFIXES, PathLike, check_complete, check_covered, check_fps, check_index, counted_frames, decoded_frames, first_frame_time, moving_video, open_input, rate_fraction, stated_duration, video_stream
from controlfoley._video_write import MuxResult, mux_audio, write_video
from controlfoley.audio.io import _checked_rate
from controlfoley.errors import ConfigError, MediaError, ShapeError
from controlfoley.typing import Float, Tensor

__all__ = [
    "VideoInfo",
    "Frames",
    "MuxResult",
    "probe",
    "read_frames",
    "read_audio_file",
    "resample_frames",
    "frame_indices",
    "read_audio_track",
    "write_video",
    "mux_audio",
]


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about a video file (no decoding; `read_frames` measures the real duration)."""

    path: Path
    duration_s: float  # as the headers declare it (short for some VFR files with B-frames)
    fps: float  # average rate from the container; an estimate for variable-frame-rate files
    width: int
    height: int
    n_frames: int | None  # as declared by the container, None where it declares nothing
    codec: str
    has_audio: bool
    audio_sample_rate: int | None


@dataclass(frozen=True)
class Frames:
    """Frames resampled to a fixed rate: frames[k] is what the source showed at time k / fps."""

    frames: UInt8[Tensor, "n h w 3"]
    fps: float
    duration_s: float  # of the source video stream


# -- time resampling ---------------------------------------------------------------------------


class _Picker:
    """Streams output frame counts: output k shows the last source frame with time <= k/fps + tol."""

    def __init__(self, fps: Fraction, tol: Fraction) -> None:
        self.fps, self.tol, self.k = fps, tol, 0

    def advance(self, next_time: Fraction) -> int:
        """How many outputs the current source frame fills before a source frame at `next_time`."""
        upto = max(0, math.ceil((next_time - self.tol) * self.fps))  # outputs k with k/fps < next - tol
        n = max(0, upto - self.k)
        self.k += n
        return n


def _total_frames(duration: Fraction, fps: Fraction) -> int:
    return max(1, math.floor(duration * fps))


def _duration(times: Sequence[Fraction], fallback_gap: Fraction) -> Fraction:
    """Last presentation time plus one frame; the median positive gap stands for the last frame's."""
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return times[-1] + (statistics.median(gaps) if gaps else fallback_gap)


def _pick(times: Sequence[Fraction], duration: Fraction, fps: Fraction, tol: Fraction) -> list[int]:
    picker, out = _Picker(fps, tol), []
    for i in range(1, len(times)):
        out += [i - 1] * picker.advance(times[i])
    total = _total_frames(duration, fps)
    out += [len(times) - 1] * max(0, total - len(out))
    return out[:total]


def frame_indices(times_s: Sequence[float], duration_s: float, fps: float, *, tol_s: float = 0.0) -> list[int]:
    """Source frame index shown at each output time k/fps, k < max(1, floor(duration_s * fps)).

    `times_s` are the source presentation times, non-decreasing; outputs before the first source
    frame show the first one. Times and duration are taken as exact binary fractions, `fps` as in
    `read_frames`; `tol_s` lets a frame count as shown that far ahead of its timestamp.
    """
    if not times_s:
        raise ShapeError("frame_indices needs at least one source frame time")
    ts = [Fraction(t) for t in times_s]
    return _pick(ts, Fraction(duration_s), rate_fraction(fps), Fraction(tol_s))


def resample_frames(frames: UInt8[Tensor, "n h w 3"], src_fps: float, fps: float) -> UInt8[Tensor, "m h w 3"]:
    """Constant-rate frames in memory resampled to `fps` by the rule of `read_frames`."""
    if frames.shape[0] == 0:
        raise ShapeError("resample_frames needs at least one frame")
    n, src = frames.shape[0], rate_fraction(src_fps)
    idx = _pick([Fraction(i) / src for i in range(n)], Fraction(n) / src, rate_fraction(fps), Fraction(0))
    return frames[torch.tensor(idx, dtype=torch.long)]


# -- reading -----------------------------------------------------------------------------------


def _scan_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Fraction:
    """Duration from the packets (no decoding), for containers whose headers declare none."""
    start, end = None, None
    for pkt in container.demux(stream):
        if pkt.pts is None:
            continue
        start = pkt.pts if start is None else min(start, pkt.pts)
        end = max(end or pkt.pts, pkt.pts + (pkt.duration or 0))
    if start is None or end is None:
        return Fraction(0)
    return (end - start) * (stream.time_base or Fraction(1, av.time_base))  # as read_frames, where a stream has none


def probe(path: PathLike) -> VideoInfo:
    """Read a video file's header: duration, average rate, size, codec and audio presence."""
    p = Path(path)
    with open_input(p) as c:
        s = video_stream(c, p)
        # the video stream's own duration (a container's may be its longer audio track's), else its packets'
        duration = stated_duration(c, s) or Fraction(0)
        if duration <= 0:
            duration = _scan_duration(c, s)
        if duration <= 0:
            raise MediaError(f"{p}: zero-length video (the video stream holds no frames)")
        rate = s.average_rate or s.guessed_rate or s.base_rate
        audio = c.streams.audio[0] if c.streams.audio else None
        return VideoInfo(
            path=p,
            duration_s=float(duration),
            fps=float(rate) if rate else 0.0,
            width=s.codec_context.width,
            height=s.codec_context.height,
            n_frames=s.frames or None,
            codec=s.codec_context.name,
            has_audio=audio is not None,
            audio_sample_rate=audio.sample_rate if audio is not None else None,
        )


def _parse_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) or None; an int means a square."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x > 0 for x in pair):
        raise ConfigError(f"size is the frames' side in pixels (an int) or (height, width), each >= 1; got {size!r}")
    return int(pair[0]), int(pair[1])


def _to_rgb(frame: av.VideoFrame, hw: tuple[int, int] | None) -> np.ndarray:
    """The frame as players show it, [h, w, 3] uint8: turned by its display rotation (phone video
    stored landscape and tagged to display portrait), then resized to `hw` if given."""
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # counterclockwise quarter turns, as np.rot90 counts
    if hw is None:
        rgb = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
    # convert colour at the source size first: swscale's combined convert-and-scale path rounds
    # colours by several levels
    rgb_frame = frame.reformat(format="rgb24")
    if turns:
        rgb_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(rgb_frame.to_ndarray(), turns), dtype=np.uint8), format="rgb24")
    return rgb_frame.reformat(height=hw[0], width=hw[1], interpolation="AREA").to_ndarray()


_AUDIO_MARGIN_S = Fraction(1, 10)  # decoded past a bounded read's window: see read_audio_track


def seconds_fraction(seconds: float | Fraction) -> Fraction:
    """A number of seconds as the decimal it is written as: 9.1 is 91/10, not the binary float's
    9.0999999999999996447 (a Fraction or int as it is). At 10 fps 9.1 s then holds 91 frames (a
    window of a longer video; `controlfoley.data.extract` counts a clip's feature rows so too)."""
    return seconds if isinstance(seconds, Fraction) else Fraction(repr(float(seconds)))


def _check_max_seconds(max_seconds: float | Fraction | None) -> None:
    real = isinstance(max_seconds, numbers.Real) and not isinstance(max_seconds, bool)
    if max_seconds is not None and not (real and math.isfinite(max_seconds) and max_seconds > 0):
        raise ConfigError(f"max_seconds must be positive and finite (seconds from the start, a number), got {max_seconds!r}")


def read_frames(path: PathLike, fps: float, *, size: int | tuple[int, int] | None = None, max_seconds: float | Fraction | None = None) -> Frames:
    """Decode the first video stream at a fixed rate `fps` (see the module docstring for the rule).

    `size`: resize to (size, size) for an int, (height, width) for a tuple; None keeps the source size.
    Time 0 is the first decoded frame's presentation time.
    `max_seconds`: decode only that much from the start (a dataset clip's window of a long video):
    a longer video gives floor(max_seconds x fps) frames and `duration_s` = max_seconds, and is
    read no further (memory and time bounded by the window, not the video; the end of the file is
    then not checked for truncation). A shorter one is read whole, as without it.
    """
    _check_max_seconds(max_seconds)
    check_fps(fps)  # a bad rate named before rate_fraction sees it
    hw, p, rate = _parse_size(size), Path(path), rate_fraction(fps)
    limit = None if max_seconds is None else seconds_fraction(max_seconds)
    with open_input(p) as c:
        s = video_stream(c, p)
        s.thread_type = "AUTO"
        declared = counted_frames(s)  # before any packet is read
        tb = s.time_base or Fraction(1, av.time_base)
        src_rate = s.guessed_rate or s.average_rate
        gap = 1 / Fraction(src_rate) if src_rate else 1 / rate  # stands in where a pts is missing
        picker = _Picker(rate, tb / 2)
        out: list[np.ndarray] = []
        times: list[Fraction] = []
        pending: av.VideoFrame | None = None
        first_pts: int | None = None
        packets = [0]  # non-empty packets read: check_complete's witness
        for frame in decoded_frames(c, s, packets):
            if frame.pts is None:
                t = times[-1] + gap if times else Fraction(0)
            else:
                first_pts = frame.pts if first_pts is None else first_pts
                t = (frame.pts - first_pts) * tb
            t = max(t, times[-1]) if times else t  # never step back in time
            if pending is not None and (n := picker.advance(t)):
                out += [_to_rgb(pending, hw)] * n
            if limit is not None and t > limit:  # every output frame up to the limit is picked (displayed before t)
                total = _total_frames(limit, rate)
                return Frames(frames=torch.from_numpy(np.stack(out[:total])), fps=float(fps), duration_s=float(limit))
            pending = frame
            times.append(t)
        check_complete(p, declared, len(times), packets[0])  # also refuses a stream without frames
        assert pending is not None  # so a frame was decoded: the last one
        duration = _duration(times, gap)
        # the last frame's own length where the file gives it: a held last frame of variable-rate
        # video (screen recordings, slideshows) plays on, and the audio must cover it too; never past
        # what the header states for the stream (plus a frame), where it states it
        last = getattr(pending, "duration", None) or 0  # Frame.duration: PyAV >= 14
        held = times[-1] + last * tb
        stated = stated_duration(c, s)
        if held > duration and (stated is None or held <= stated + gap):
            duration = held
        # and a last frame much shorter than the median gap (a slideshow's frames 5 s apart, its last
        # shown for 40 ms) ends the video there where the header's duration says so too (from the
        # first frame, or from 0 where it counts the time before it): the audio must not run on past
        # the picture. Only when the difference is large (the margin check_covered allows a
        # header): an ordinary clip whose last sample is short (a trim, a muxer's rounding) keeps
        # its last frame, as a whole frame
        elif last and duration - held > max(Fraction(1, 2), duration / 10) and stated is not None:
            start = max(Fraction(first_pts or 0) * tb, Fraction(0))
            if min(abs(held - stated), abs(held + start - stated)) <= max(tb, Fraction(1, 1000)):
                duration = held
        # what the decoded frames cover, generously (the held frame's whole length), with the time before the first frame
        check_covered(p, c, s, max(duration, held) + max(Fraction(first_pts or 0) * tb, Fraction(0)), declared)
        total = _total_frames(duration, rate)
        if total > len(out):
            out += [_to_rgb(pending, hw)] * (total - len(out))
    frames = torch.from_numpy(np.stack(out[:total]))
    return Frames(frames=frames, fps=float(fps), duration_s=float(duration))


def _video_start(path: Path, video: av.video.stream.VideoStream) -> Fraction | None:
    """`read_frames`' time 0 for `read_audio_track`: the first decoded frame's time (`first_frame_time`),
    found by decoding from the start in a second opening of the file (a few packets: the time is
    bounded by the window, not the video; no pass over the video's index). The stream's start_time
    where the video cannot be decoded: the soundtrack alone is still read."""
    start = video.start_time * video.time_base if video.start_time is not None and video.time_base else None
    if video.codec_context is None:  # no decoder for the picture: its start as the file states it
        return start
    try:
        with open_input(path) as c:
            first = moving_video(c)
            return start if first is None else first_frame_time(c, first)[0]
    except (av.error.FFmpegError, MediaError):
        return start


def read_audio_file(path: PathLike, sample_rate: int, *, max_seconds: float | None = None) -> Float[Tensor, "s"]:
    """A media file's audio as mono float32 at `sample_rate`. A file named as libsndfile's kind
    (`SOUNDFILE_SUFFIXES`: WAV, FLAC, OGG, MP3, AIFF) is read with it (`load_audio`), else with FFmpeg
    (`read_audio_track`), which goes by content, not by name (AAC in a file named .mp3); where neither
    reads it, libsndfile's error, the one for a file of its kind. Any other file (a video, .m4a) is
    read with FFmpeg. `max_seconds` bounds the FFmpeg read only (libsndfile reads the whole file)."""
    from controlfoley.audio.io import load_audio

    if Path(path).suffix.lower() not in SOUNDFILE_SUFFIXES:
        return read_audio_track(path, sample_rate, max_seconds=max_seconds)
    try:
        return load_audio(path, sample_rate)
    except MediaError as first:
        try:
            return read_audio_track(path, sample_rate, max_seconds=max_seconds)
        except MediaError:
            raise first from None


def read_audio_track(path: PathLike, sample_rate: int, *, max_seconds: float | None = None) -> Float[Tensor, "s"]:
    """The first audio stream as mono float32 at `sample_rate` (the mean of its channels, as
    `controlfoley.audio.io.load_audio` mixes files; trimmed to the stream's duration). In a file
    with video, time 0 is the first video frame: audio that starts later is preceded by silence,
    audio before the first frame is dropped.

    `max_seconds`: the first round(max_seconds x sample_rate) samples of that read (all of it where
    it is shorter), decoding the file only that far (a dataset clip's window of a long video: memory
    and time bounded by the window, not the video). Decoding goes on for 0.1 s of the stream past
    the window's end before the resampler is flushed: libswresample's filter reaches some taps
    (milliseconds) past each output sample, and its flush makes up the input past the last decoded
    one, so without the margin the window's last samples would differ from those of a whole read.
    With it they are the same samples.
    """
    sample_rate = _checked_rate(sample_rate, "read_audio_track")  # a str or 22050.5 failed deep inside the resampler
    _check_max_seconds(max_seconds)
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    p = Path(path)
    with open_input(p) as c:
        if not c.streams.audio:
            raise MediaError(f"{p}: has no audio track")
        s = c.streams.audio[0]
        if s.codec_context is None:
            raise MediaError(f"{p}: unsupported audio codec (this FFmpeg build has no decoder for it)")
        check_index(p, s)  # cut short: said so, not "holds no samples" or a shorter track (extract reads the audio first)
        # time 0 is the first video frame, as read_frames and generate's outputs count it: an audio
        # stream that starts later (cut or re-muxed files, MPEG-TS) is shifted to match
        video = moving_video(c)  # (not an audio file's cover picture)
        if video is not None:
            check_index(p, video)
        video_start: Fraction | None = None
        if video is not None:  # its first decoded frame, not its start_time: leading packets may decode to nothing
            video_start = _video_start(p, video)

        def shift_of(first: Fraction | None) -> int:
            """Samples of silence before the audio (negative: audio samples dropped before the first frame)."""
            return 0 if video_start is None or first is None else round((first - video_start) * sample_rate)

        # packed float in each frame's own channel layout, then the mean of the channels: the same
        # mono mix soundfile-read audio gets (FFmpeg's own mono downmix is 3 dB louder for stereo).
        # Packed, not planar: PyAV 18's planar frames of 8+ channels report a plane too many, and
        # to_ndarray then reads past the last one (a segfault).
        resampler = av.AudioResampler(format="flt", layout=None, rate=sample_rate)

        def mono(g: av.AudioFrame) -> np.ndarray:
            return g.to_ndarray().reshape(-1, g.layout.nb_channels).mean(axis=1)

        chunks, first, decoded = [], None, Fraction(0)  # decoded: seconds of the stream's samples so far
        for f in c.decode(s):
            if first is None and f.pts is not None and f.time_base:
                first = Fraction(f.pts) * f.time_base
            chunks += [mono(g) for g in resampler.resample(f)]
            if limit is not None:  # the stream's samples the window needs (fewer where it starts late), and the margin
                decoded += Fraction(f.samples, f.sample_rate)
                if decoded >= Fraction(limit - shift_of(first), sample_rate) + _AUDIO_MARGIN_S:
                    break
        chunks += [mono(g) for g in resampler.resample(None)]
        declared = round(s.duration * s.time_base * sample_rate) if s.duration and s.time_base else 0
        shift = shift_of(first)
    if not chunks or sum(len(x) for x in chunks) == 0:
        raise MediaError(f"{p}: the audio track holds no samples")
    wav = np.concatenate(chunks).astype(np.float32)
    if declared > 0:
        wav = wav[:declared]  # AAC decoders emit the padding of the last frame as well
    if shift > 0:  # starts after the first frame: silence before it
        wav = np.concatenate([np.zeros(shift, np.float32), wav])
    elif shift < 0:  # starts before the first frame: what comes before it is not part of the video
        wav = wav[-shift:]
    if limit is not None:
        wav = wav[:limit]
    return torch.from_numpy(wav)
