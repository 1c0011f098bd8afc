"""Shared plumbing of `controlfoley.video`: opening media files and turning failures into MediaErrors.

Features
- `open_input`: existence, folder and empty-file checks before FFmpeg sees the path; FFmpeg errors
  while the container is open become one-line `MediaError`s naming the file.
- `atomic_output` / `open_output`: outputs go through `controlfoley._io.atomic_path`; OS and FFmpeg
  errors become `MediaError`s and the temporary file is removed.
- `VIDEO_SUFFIXES`: the video files a folder argument of `evaluate` and `extract` stands for (besides
  audio files); `GENERATE_SUFFIXES` / `video_files(folder)`: those and animated GIFs, the files directly
  in a folder that `generate` takes.
- `video_stream`, `check_complete`, `check_covered`: no video stream (an audio file's cover picture
  does not count: `moving_video`), undecodable codec, files cut short (an index that points past
  the end of the file, fewer frames than the header declares, or, where it declares no frame count,
  a decoded video clearly shorter than the duration it states).

References: PyAV error classes (av.error), FFmpeg's AVStream.nb_frames; the Matroska muxer's
per-track DURATION tag (HH:MM:SS.nnnnnnnnn).
"""

import contextlib
import math
import numbers
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from controlfoley._io import atomic_path, final_path, write_failure
from controlfoley._suffixes import FFMPEG_AUDIO_SUFFIXES, GENERATE_SUFFIXES, SOUNDFILE_SUFFIXES, VIDEO_SUFFIXES
from controlfoley.errors import ConfigError, MediaError

__all__ = ["PathLike", "VIDEO_SUFFIXES", "SOUNDFILE_SUFFIXES", "FFMPEG_AUDIO_SUFFIXES", "GENERATE_SUFFIXES", "video_files", "left_out", "open_input", "atomic_output", "open_output", "moving_video", "video_stream", "check_complete", "check_covered", "check_index", "decoded_frames", "first_frame_time", "stated_duration", "check_fps", "rate_fraction"]

PathLike = str | os.PathLike[str]


def video_files(folder: Path) -> list[Path]:
    """The files directly in `folder` that `generate` takes (GENERATE_SUFFIXES; not in subfolders,
    hidden files left out), sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in GENERATE_SUFFIXES)


def left_out(folder: Path, taken: frozenset[str] | set[str], what: str) -> str | None:
    """A warning naming the files directly in `folder` that a folder argument leaves out for their
    suffix (not in `taken`; hidden files aside), or None: such a file was dropped without a word,
    though named directly it may well be read (FFmpeg goes by content, not by name)."""
    skipped = sorted(f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() not in taken)
    if not skipped:
        return None
    shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return f"{folder}: left out {len(skipped)} file(s) whose suffix is not one of the {what} types a folder stands for: {shown}; name a file directly to read it anyway"


def _reason(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or e).replace("\n", " ")


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[av.container.InputContainer]:
    """Open `path` for reading; FFmpeg errors while it is open become one-line MediaErrors."""
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes), a zero-length video")
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot be opened as audio/video ({_reason(e)}); it is truncated, corrupt or not a media file") from None
    try:
        yield container
    except av.FFmpegError as e:
        raise MediaError(f"{path}: decoding failed ({_reason(e)}); the file is truncated or corrupt") from None
    finally:
        container.close()


VIDEO_OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")  # containers that hold H.264 (or the input's codec) + AAC
AUDIO_SUFFIXES = (".wav", ".flac")  # the audio formats written (FoleyResult.save, generate --format): a video output named so meant the audio alone


def check_video_output(path: Path) -> None:
    """A video output must be a container this module writes (H.264 or the copied codec, AAC audio)."""
    if path.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        path = final_path(path)
        if path.suffix.lower() in AUDIO_SUFFIXES:  # the audio alone was meant
            fix = f"for the audio alone, write it as audio (a FoleyResult's .save({path.name!r}), or `generate --format {path.suffix[1:].lower()}`)"
        else:
            fix = "write an .mp4 and convert it (e.g. ffmpeg -i out.mp4 out.webm)"
        raise MediaError(
            f"cannot write {path}: controlfoley writes videos as {', '.join(VIDEO_OUTPUT_SUFFIXES)} (H.264 or the input's "
            f"own codec, AAC audio); {path.suffix or 'no suffix'!r} is not one of them: {fix}"
        )


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Atomic output path; OS and FFmpeg errors become one-line MediaErrors and the temp file goes."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:  # named by the file it becomes (`path` may be another atomic_path's temporary file)
        raise MediaError(write_failure(path, e, fix="choose a writable output folder")) from None
    except av.FFmpegError as e:
        target = final_path(path)
        fix = "" if target.suffix.lower() == ".mp4" else "; try an .mp4 output"
        raise MediaError(f"cannot write {target}: FFmpeg failed while muxing ({_reason(e)}){fix}") from None


def open_output(tmp: Path, target: Path) -> av.container.OutputContainer:
    try:
        return av.open(str(tmp), "w")
    except ValueError as e:  # PyAV: "Could not determine output format"
        target = final_path(target)
        raise MediaError(f"cannot write {target}: {e} from suffix {target.suffix!r}; use .mp4, .mkv or .mov") from None


def _is_picture(stream: av.stream.Stream) -> bool:
    """A still picture stored as a video stream: cover art (an .m4a's or .mp3's album art, a
    Matroska attachment), which decodes to one frame, or none, and has no timeline."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)  # PyAV >= 15 (the pin is >= 18.1)


def moving_video(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not a still cover picture, None where there is none."""
    return next((s for s in container.streams.video if not _is_picture(s)), None)


def video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    stream = moving_video(container)
    if stream is None:
        kinds = sorted({s.type for s in container.streams})
        if not kinds:
            raise MediaError(f"{path}: contains no streams at all (an empty, zero-length container)")
        if container.streams.video:  # only cover art: an audio file, not a video
            held = sorted({s.type for s in container.streams if not _is_picture(s)}) + ["a cover picture"]
            raise MediaError(
                f"{path}: has no video stream (it holds: {', '.join(held)}): an audio file with album art, not a video; "
                "foley needs a moving picture"
            )
        raise MediaError(f"{path}: has no video stream (it holds: {', '.join(kinds)})")
    if stream.codec_context is None:
        raise MediaError(f"{path}: unsupported video codec (this FFmpeg build has no decoder for it); re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
    check_index(path, stream)
    return stream


def check_index(path: Path, stream: av.video.stream.VideoStream | av.audio.stream.AudioStream) -> None:
    """A container index (MP4 sample table, Matroska cues) pointing past the end of the file: cut short."""
    ends = [e.pos + max(e.size, 0) for e in stream.index_entries if e.pos >= 0]
    size = path.stat().st_size
    if ends and max(ends) > size:
        raise MediaError(f"{path}: truncated: its index points to byte {max(ends)} but the file has only {size} bytes")


def decoded_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, packets: list[int]) -> Iterator[av.VideoFrame]:
    """The frames of `stream`, as `container.decode(stream)` gives them, counting into `packets[0]`
    the non-empty packets read (the demuxer's last, flushing packet is empty): `check_complete`'s witness."""
    for pkt in container.demux(stream):
        packets[0] += pkt.size > 0
        yield from pkt.decode()


def first_frame_time(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[Fraction, int]:
    """Presentation time of the first decoded frame of `stream` with a timestamp: `read_frames`' time 0,
    where the pipeline's waveform starts and `read_audio_track` counts from. Not the stream's
    `start_time` where the leading packets decode to nothing (an MPEG-TS capture that starts
    mid-GOP), and not 0 for MPEG-TS (~1.4 s), stream-copied cuts, many phone and WebM files; it may
    be negative (an edit list that FFmpeg does not hide; `mux_audio` then starts the audio at 0). With it, the display rotation its frames are tagged
    with (degrees counterclockwise; 0: none), which a re-encoded video must keep (PyAV shows it on
    frames, not on the stream). Decodes from where `container` stands: open it for this alone."""
    tb = stream.time_base or Fraction(1, av.time_base)
    rotation = None
    for frame in container.decode(stream):
        rotation = round(getattr(frame, "rotation", 0) or 0) if rotation is None else rotation
        if frame.pts is not None:
            return Fraction(frame.pts) * tb, rotation
    return Fraction(0), rotation or 0


def counted_frames(stream: av.video.stream.VideoStream) -> int:
    """The frames the header counts, as a count of the packets the file stores (0: none stated).

    An AVI's header also counts the empty chunks FFmpeg writes into a variable-rate video's gaps,
    which no demuxer returns, so a whole file would read as truncated: where its index (idx1, at the
    end of the file, so lost when the file is cut short) is there, the index's non-empty entries
    count instead. Elsewhere the header's count (an MP4 sample table counts every stored sample,
    those an edit list hides included). Call it as the file is opened: a demuxer adds index entries
    as it reads."""
    fmt = set(stream.container.format.name.split(",")) if stream.container is not None else set()
    if "avi" in fmt:
        indexed = sum(1 for e in stream.index_entries if e.size > 0)
        if indexed >= 2:  # an index read from the file, not the one entry a demuxer makes without it
            return min(stream.frames, indexed) if stream.frames else indexed
    return stream.frames


def check_complete(path: Path, declared: int, decoded: int, packets: int) -> None:
    """A file cut short still opens when its index comes first; its header then promises more frames.

    `declared`: `counted_frames(stream)` as the file opened (a demuxer adds index entries as it
    reads); `packets`: the non-empty packets the stream held, `decoded`: the frames they gave. The
    header's count is checked against the packets, not the frames: a stream-copied cut (`ffmpeg -ss T -c copy`,
    a phone's trim) keeps the packets back to the previous keyframe and hides their frames with an
    edit list, and a stream that starts mid-GOP (MPEG-TS captures) holds packets that decode to
    nothing, so both show fewer frames than their headers count, and are whole. Two packets of
    slack allow for muxers that count a frame or two more than they store.
    """
    if decoded == 0:
        raise MediaError(
            f"{path}: zero-length video (the video stream holds no decodable frames); "
            "re-encode it from the original (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or use another copy"
        )
    if declared and packets < declared - 2:
        raise MediaError(
            f"{path}: truncated or corrupt: the file holds only {packets} of the {declared} frames its header declares; "
            "re-download or re-copy the file, or re-encode what it holds (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) to keep the shorter video"
        )


def stated_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Fraction | None:
    """The video stream's duration as the file states it, None where it states none.

    The stream header first, then the per-track DURATION tag (Matroska/WebM); the container's
    duration only when the video is the file's one stream (with an audio track it may be the audio's).
    """
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), "")
    if m := re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*", tag):
        return 3600 * int(m[1]) + 60 * int(m[2]) + Fraction(m[3])
    if container.duration and len(container.streams) == 1:
        return Fraction(container.duration, av.time_base)
    return None


def check_covered(path: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream, covered: Fraction, declared: int) -> None:
    """A file cut short without a frame count in its header (Matroska, WebM, FLV) still states its duration.

    `covered` is how long the decoded frames last. Only where no frame count is declared: a declared
    count is the exact witness (`check_complete`), and MP4 headers can understate the duration of
    variable-frame-rate video with B-frames. Short by more than max(0.5 s, 10 %) fails: a margin no
    rounding of the last frame's length or of the stated duration comes near.
    """
    stated = None if declared else stated_duration(container, stream)
    if stated is not None and covered < stated - max(Fraction(1, 2), stated / 10):
        raise MediaError(
            f"{path}: truncated: the video decodes to {float(covered):.2f} s but its header states {float(stated):.2f} s; "
            "re-download the file, or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) to keep the shorter video"
        )


def check_fps(fps: object) -> None:  # a validator: it takes anything
    """A frame rate: a positive finite number (frames per second), else a ConfigError."""
    rate = float(fps) if isinstance(fps, numbers.Real) and not isinstance(fps, bool) else math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"fps is a frame rate in frames per second, a positive finite number such as 24; got {fps!r}")


def rate_fraction(fps: float) -> Fraction:
    """The frame rate a float stands for: 29.97 -> 2997/100, 30000/1001 -> itself, 24.0 -> 24.

    The nearest fraction with a denominator up to 10^6, so binary rounding of the float does not
    cost a frame in floor(duration * fps).
    """
    check_fps(fps)
    return Fraction(fps).limit_denominator(1_000_000)
