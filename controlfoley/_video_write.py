"""Writing video files and replacing their audio track (the writing half of `controlfoley.video`).

Features
- `write_video`: MP4 (libx264 if PyAV has it, else mpeg4; yuv420p; mono AAC audio), packets muxed
  in time order, written atomically. The AAC track holds samples in [-1, 1]: a waveform past full
  scale (peak > 1.01) is clipped with a warning, as `save_audio` does (also in `mux_audio`).
- `mux_audio`: stream remux of the first video stream (packets copied, no re-encode), the new audio
  encoded as AAC, old audio and other streams dropped; the video is re-encoded only when the output
  container cannot hold its codec, or is an MP4 whose codec common players do not read from MP4
  (FFV1, HuffYUV...; `MuxResult.video_copied` is then False and a warning is logged). A re-encoded
  video keeps each frame's time, the display rotation and the pixel aspect ratio, and is converted
  to limited-range YUV (a full-range MJPEG source would otherwise play with clipped, strong colours).

References: PyAV remuxing (OutputContainer.add_stream_from_template, Packet.stream); FFmpeg's
AAC encoder (1024-sample frames).
"""

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange
from jaxtyping import UInt8

from controlfoley._media import (
    PathLike,
    atomic_output,
    check_complete,
    counted_frames,
    check_fps,
    check_video_output,
    decoded_frames,
    first_frame_time,
    open_input,
    open_output,
    rate_fraction,
    video_stream,
)
from controlfoley.audio.io import _checked_rate, _warn_clipping
from controlfoley.errors import ConfigError, ShapeError
from controlfoley.typing import Float, Tensor

__all__ = ["MuxResult", "write_video", "mux_audio"]

log = logging.getLogger("controlfoley.video")
_MP4_PLAYABLE = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})  # video codecs common players decode from MP4
_EDIT_LIST_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})  # containers whose edit lists keep a copied cut's hidden frames hidden

_AUDIO_CODEC: Final = "aac"  # Final: a Literal to type checkers, so PyAV's add_stream types the stream as audio
_AAC_FRAME = 1024  # samples per AAC frame; FFmpeg's encoder takes exactly this many per frame
_CLIP_FIX = "normalise it first (wav / wav.abs().max())"  # an AAC track past full scale: decoders clip it, so _encode_audio does


@dataclass(frozen=True)
class MuxResult:
    path: Path
    video_copied: bool  # False: the container could not hold the codec, so the video was re-encoded
    video_codec: str  # codec of the video stream in the output


def _video_encoder() -> Literal["libx264", "mpeg4"]:  # Literal: add_stream then types its stream as video
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _add_video_stream(c: av.container.OutputContainer, rate: Fraction, width: int, height: int, crf: int) -> av.video.stream.VideoStream:
    codec = _video_encoder()
    s = c.add_stream(codec, rate=rate)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.options = {"crf": str(crf)} if codec == "libx264" else {"qscale": "2"}
    return s


def _add_audio_stream(c: av.container.OutputContainer, sample_rate: int) -> av.audio.stream.AudioStream:
    s = c.add_stream(_AUDIO_CODEC, rate=sample_rate)
    s.layout = "mono"
    return s


def _checked_audio(audio: object, sample_rate: object, caller: str) -> tuple[Tensor, int]:  # a validator: it takes anything
    """(audio as a tensor, sample rate as an int) for an AAC track, checked before any file is
    opened: a float mono waveform [s] (a torch tensor, or a numpy array: converted), at a rate
    (a positive whole number, as `save_audio` takes it) the AAC encoder takes. NaN and infinite
    samples are refused by `_encode_audio`."""
    rate = _checked_rate(sample_rate, caller)
    rates = av.codec.Codec(_AUDIO_CODEC, "w").audio_rates  # None: the encoder does not say
    if rates and rate not in rates:
        raise ConfigError(
            f"{caller}: the AAC audio track takes the sample rates {', '.join(map(str, sorted(rates)))} Hz, got {rate}; "
            "resample the waveform to one of them (e.g. librosa.resample(wav, orig_sr=SR, target_sr=22050))"
        )
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise ShapeError(f"{caller}: audio is a float mono waveform [samples], a torch tensor or numpy array; got {type(audio).__name__}")
    if audio.ndim != 1 or audio.shape[0] == 0:
        shape = tuple(audio.shape)
        fix = (
            "drop the channel axis (wav[0])" if audio.ndim == 2 and 1 in shape and audio.numel()
            else "mix the channels to mono (wav.mean(0) for [channels, samples])" if audio.ndim == 2 and audio.numel()
            else "give at least one sample" if audio.numel() == 0 else "give [samples]"
        )  # fmt: skip
        raise ShapeError(f"{caller}: audio must be a non-empty mono waveform [samples], got shape {shape}; {fix}")
    if not audio.is_floating_point():
        raise ShapeError(f"{caller}: audio must be float samples in [-1, 1], got {audio.dtype}; for 16-bit PCM use wav / 32768")
    return audio, rate


def _encode_audio(s: av.audio.stream.AudioStream, audio: Float[Tensor, "s"], sample_rate: int, start: int = 0) -> list[av.Packet]:
    """AAC packets of `audio`, its first sample presented at `start` (in samples)."""
    if audio.ndim != 1 or audio.shape[0] == 0:
        raise ShapeError(f"audio must be a non-empty mono waveform [s], got shape {tuple(audio.shape)}")
    wav = audio.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(wav).all():
        raise ShapeError("audio holds NaN or infinite samples; replace them (torch.nan_to_num(wav)) or check what made it")
    wav = np.clip(wav, -1.0, 1.0)[None, :]
    packets: list[av.Packet] = []
    for i in range(0, wav.shape[1], _AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i : i + _AAC_FRAME]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start + i, Fraction(1, sample_rate)
        packets += s.encode(frame)
    return packets + s.encode(None)


def _packet_time(pkt: av.Packet) -> Fraction:
    ts = pkt.dts if pkt.dts is not None else pkt.pts
    return ts * pkt.time_base if ts is not None and pkt.time_base else Fraction(0)


def _mux_interleaved(c: av.container.OutputContainer, video: Iterable[av.Packet], audio: list[av.Packet]) -> None:
    """Mux video packets as they come with the (already encoded) audio packets in time order."""
    a = 0
    for pkt in video:
        while a < len(audio) and _packet_time(audio[a]) <= _packet_time(pkt):
            c.mux(audio[a])
            a += 1
        c.mux(pkt)
    for pkt in audio[a:]:
        c.mux(pkt)


def _encode_frames(s: av.video.stream.VideoStream, images: np.ndarray) -> Iterator[av.Packet]:
    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        yield from s.encode(frame)
    yield from s.encode(None)


def write_video(
    path: PathLike,
    frames: UInt8[Tensor, "n h w 3"],
    fps: float,
    *,
    audio: Float[Tensor, "s"] | np.ndarray | None = None,
    sample_rate: int | None = None,
    crf: int = 15,
) -> Path:
    """Write frames (and an optional mono audio track: float samples, a tensor or numpy array, at a
    sample rate the AAC encoder takes, as for `mux_audio`) as a video file, atomically.

    Samples past full scale are clipped to [-1, 1], with a warning where the peak passes 1.01.
    The container follows the suffix (.mp4, .m4v, .mov or .mkv). yuv420p needs even sizes, so an odd height
    or width is padded by repeating the last row or column. `crf` is libx264's quality (lower is better).
    """
    check_fps(fps)
    if frames.shape[0] == 0:
        raise ShapeError("write_video needs at least one frame")
    if (audio is None) != (sample_rate is None):
        raise ConfigError("write_video: give audio and sample_rate together (or neither, for a silent video)")
    if audio is not None:
        audio, sample_rate = _checked_audio(audio, sample_rate, "write_video")
    images = frames.detach().cpu().numpy()
    pad_h, pad_w = images.shape[1] % 2, images.shape[2] % 2
    images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    target = Path(path)
    check_video_output(target)
    if audio is not None:
        _warn_clipping(audio, "write_video", "the AAC track", target, _CLIP_FIX)
    with atomic_output(target) as tmp, open_output(tmp, target) as c:
        vs = _add_video_stream(c, rate_fraction(fps), images.shape[2], images.shape[1], crf)
        apkts = _encode_audio(_add_audio_stream(c, sample_rate), audio, sample_rate) if audio is not None and sample_rate else []
        _mux_interleaved(c, _encode_frames(vs, images), apkts)
    return target


def _with_dts(packets: Iterable[av.Packet], step: int) -> Iterator[av.Packet]:
    """Set the dts a demuxer left unset, so the muxer gets complete timestamps.

    Matroska/WebM store no dts: with B-frames the first packets (the keyframe among them) demux
    without one. Those count back from the first known dts, `step` (one frame, in the stream's time
    base) apart and never after their own pts; a later one follows the previous dts.
    """
    held: list[av.Packet] = []
    last: int | None = None
    for pkt in packets:
        if pkt.dts is None:
            if last is None:
                held.append(pkt)
                continue
            pkt.dts = last + step if pkt.pts is None else max(last + 1, min(pkt.pts, last + step))
        d = pkt.dts
        for h in reversed(held):
            d = d - step if h.pts is None else min(d - step, h.pts)
            h.dts = d
        yield from held
        held, last = [], pkt.dts
        yield pkt
    yield from held  # no dts anywhere: left to the muxer


def _copied_packets(src: Path, inp: av.container.InputContainer, vin: av.video.stream.VideoStream, vout: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    n, declared = 0, counted_frames(vin)  # before any packet is read
    rate = vin.guessed_rate or vin.average_rate or Fraction(25)
    step = max(1, round(1 / (rate * vin.time_base))) if vin.time_base else 1
    for pkt in _with_dts((p for p in inp.demux(vin) if p.size), step):  # size 0: the demuxer's flush packet
        pkt.stream = vout
        n += 1
        yield pkt
    check_complete(src, declared, n, n)  # (packets that do not decode, e.g. before a mid-GOP start's first keyframe, are copied as they are)


def _padded(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """`frame` (of its stream's size) at the encoder's even size by repeating its last column / row,
    as `write_video` pads: H.264 in 4:2:0 takes no odd size, and scaling 853 x 480 to 854 x 480 would
    resample (blur) every pixel and change the picture's aspect. An even-sized frame needs nothing."""
    if (frame.width, frame.height) == (width, height):
        return frame
    padded = np.pad(frame.to_ndarray(format="rgb24"), ((0, max(height - frame.height, 0)), (0, max(width - frame.width, 0)), (0, 0)), mode="edge")
    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded[:height, :width], dtype=np.uint8), format="rgb24")
    # converted back to Y'CbCr with the source's matrix (BT.709 for HD): an RGB frame of none would get
    # swscale's BT.601, shifting an odd-sized video's colours against an even-sized one's
    out.pts, out.time_base, out.colorspace, out.duration = frame.pts, frame.time_base, frame.colorspace, frame.duration
    return out


def _reencoded_packets(src: Path, inp: av.container.InputContainer, vin: av.video.stream.VideoStream, vout: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    n, packets, declared = 0, [0], counted_frames(vin)  # (the count before any packet is read)
    size = (vin.codec_context.width, vin.codec_context.height)  # as the stream starts (the decoder updates its context on a change)
    shown: dict[int, int] = {}  # pts -> how long the source shows that frame (a slideshow's last: seconds)

    def timed(out: Iterable[av.Packet]) -> Iterator[av.Packet]:
        # each packet lasts as long as its source frame is shown: the encoder gives every one the
        # nominal frame length, so a re-encoded slideshow's video ended seconds before its audio
        for pkt in out:
            if pkt.pts is not None and pkt.pts in shown:
                pkt.duration = shown.pop(pkt.pts)
            yield pkt

    for frame in decoded_frames(inp, vin, packets):
        if frame.pts is not None and frame.duration:  # (PyAV >= 14; the pin is >= 18.1)
            shown[frame.pts] = frame.duration
        # to the encoder's format at limited (MPEG) range, which an untagged H.264 stream is played
        # as: a full-range source (MJPEG's yuvj420p) passed through as it is plays with its blacks
        # and whites clipped and its colours too strong
        if (frame.width, frame.height) != size:
            # a picture size that changes mid-stream (WebRTC, adaptive captures): scaled to the stream's first
            frame = frame.reformat(width=size[0], height=size[1])
        frame = _padded(frame, vout.codec_context.width, vout.codec_context.height)  # then the parity pixel H.264 needs
        frame = frame.reformat(format=vout.codec_context.pix_fmt, dst_color_range=ColorRange.MPEG)
        frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose frame types
        n += 1
        yield from timed(vout.encode(frame))
    check_complete(src, declared, n, packets[0])
    yield from timed(vout.encode(None))


def _keep_display(vin: av.video.stream.VideoStream, vout: av.video.stream.VideoStream, rotation: int) -> None:
    """A re-encoded video shown as its source is: the display rotation (a phone's portrait video
    stored landscape) and the pixel aspect ratio (anamorphic DV, 16:9 DVD) go with it; a copied
    stream keeps both in its parameters already."""
    if rotation % 360:
        vout.set_display_rotation(rotation)
    sar = vin.sample_aspect_ratio or vin.codec_context.sample_aspect_ratio
    if sar and sar != 1:
        vout.codec_context.sample_aspect_ratio = sar


def _hides_leading_frames(inp: av.container.InputContainer, vin: av.video.stream.VideoStream) -> bool:
    """Whether the stream's first packets are flagged discard: frames an edit list hides (what
    `ffmpeg -ss T -c copy` and phone trims keep back to the keyframe before the cut). A copy keeps
    them hidden only in a container with edit lists (MP4, MOV); Matroska would show them."""
    for pkt in inp.demux(vin):
        if pkt.size:
            return bool(pkt.is_discard)
    return False


def mux_audio(video_path: PathLike, audio: Float[Tensor, "s"] | np.ndarray, sample_rate: int, out_path: PathLike) -> MuxResult:
    """Replace the audio of `video_path` by `audio` (mono, AAC) and write `out_path` atomically.

    The first video stream is copied packet by packet (no re-encode) when the output container can
    hold its codec; otherwise it is re-encoded (libx264) and `MuxResult.video_copied` is False.
    Other streams (old audio, subtitles, data) are dropped. `out_path` may equal `video_path`.
    The video keeps its timestamps, and the audio starts with its first frame (time 0 of
    `read_frames`, where the generated waveform starts), also when that is not at 0 s.
    `audio`: float samples in [-1, 1] (clipped there, with a warning where the peak passes 1.01),
    a torch tensor or a numpy array; `sample_rate` (Hz, a positive whole number) one the
    AAC encoder takes (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, ...): a ShapeError or
    ConfigError says which, before any file is opened.
    """
    audio, sample_rate = _checked_audio(audio, sample_rate, "mux_audio")
    src, target = Path(video_path), Path(out_path)
    check_video_output(target)
    _warn_clipping(audio, "mux_audio", "the AAC track", target, _CLIP_FIX)
    with open_input(src) as inp:
        first, rotation = first_frame_time(inp, video_stream(inp, src))
    start = round(max(first, Fraction(0)) * sample_rate)  # (a negative first frame: the audio starts at 0)
    hidden = False  # leading frames an edit list hides (a stream-copied cut), which a copy into Matroska would show
    if target.suffix.lower() not in _EDIT_LIST_SUFFIXES:
        with open_input(src) as inp:
            hidden = _hides_leading_frames(inp, video_stream(inp, src))
    with open_input(src) as inp:
        vin = video_stream(inp, src)
        src_codec = vin.codec_context.name
        with atomic_output(target) as tmp, open_output(tmp, target) as out:
            # copy only what players read in that container: FFmpeg would also mux e.g. FFV1 into .mp4
            playable = src_codec in out.supported_codecs and (target.suffix.lower() != ".mp4" or src_codec in _MP4_PLAYABLE)
            copied = playable and not hidden
            if copied:
                vout = out.add_stream_from_template(vin)
            else:
                rate = vin.guessed_rate or vin.average_rate or Fraction(25)
                vout = _add_video_stream(out, rate, vin.codec_context.width + vin.codec_context.width % 2, vin.codec_context.height + vin.codec_context.height % 2, 15)
                if vout.codec_context.name == "libx264":
                    # no B-frames: packets in display order, so the last one carries how long the last frame is shown
                    # (a slideshow's held picture: MP4 times a sample by the next one's, and the last by its duration)
                    vout.options = {**vout.options, "bf": "0"}
                vout.codec_context.time_base = vin.time_base or Fraction(1, av.time_base)  # None never from a demuxer; as first_frame_time
                _keep_display(vin, vout, rotation)
            apkts = _encode_audio(_add_audio_stream(out, sample_rate), audio, sample_rate, start)
            packets = (_copied_packets if copied else _reencoded_packets)(src, inp, vin, vout)
            _mux_interleaved(out, packets, apkts)
            codec = src_codec if copied else vout.codec_context.name
    # named by its input: `target` may be a temporary name (the CLI renames both outputs at once)
    if not playable:
        log.warning("%s: its video codec %r does not play from an %s file, so the video was re-encoded as %s", src, src_codec, target.suffix, codec)
    elif hidden:
        log.warning(
            "%s: an edit list hides its first frames (a stream-copied cut), which an %s file cannot do, so the video was "
            "re-encoded as %s without them; write .mp4 or .mov to copy it as it is", src, target.suffix, codec
        )
    return MuxResult(path=target, video_copied=copied, video_codec=codec)
