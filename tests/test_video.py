"""Video I/O: round trips, resampling by presentation time (CFR and VFR), audio tracks, stream remux, bad input."""

import logging
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import failing_replace

from controlfoley import video
from controlfoley.errors import MediaError

W, H = 48, 32


def _index_image(i: int) -> np.ndarray:
    """A grey frame that encodes its index: high nibble on the left half, low nibble on the right."""
    img = np.empty((H, W, 3), np.uint8)
    img[:, : W // 2] = 16 * (i // 16) + 8
    img[:, W // 2 :] = 16 * (i % 16) + 8
    return img


def _decode_index(frame: torch.Tensor) -> int:
    left = int(frame[:, : W // 4].float().mean()) // 16
    right = int(frame[:, -W // 4 :].float().mean()) // 16
    return 16 * left + right


def _encode_all(c: Any, stream: Any, frames: Any) -> None:
    """Encode `frames` into `stream` of the open container `c`, then flush the encoder."""
    for frame in frames:
        for pkt in stream.encode(frame):
            c.mux(pkt)
    for pkt in stream.encode(None):
        c.mux(pkt)


def _indexed_frame(i: int, pts: int, time_base: Fraction) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(_index_image(i), format="rgb24")
    frame.pts, frame.time_base = pts, time_base
    return frame


def _write_indexed(path: Path, pts: list[int], time_base: Fraction, rate: Fraction, codec: str = "libx264", pix_fmt: str = "yuv420p", *, bframes: bool = False) -> Path:
    """Frames 0..len(pts)-1 with the given presentation timestamps, written straight through PyAV.

    libx264 writes them losslessly (no B-frames), or with `bframes` at a high quality with B-frames."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        s.codec_context.time_base = time_base
        if codec == "libx264":
            s.options = {"crf": "10", "x264-params": "bframes=2:b-adapt=0"} if bframes else {"qp": "0"}
        _encode_all(c, s, (_indexed_frame(i, p, time_base) for i, p in enumerate(pts)))
    return path


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def _blocky_frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, H // 8, W // 8, 3), generator=g, dtype=torch.uint8)
    return small.repeat_interleave(8, 1).repeat_interleave(8, 2).contiguous()


def _bursts(n: int, sr: int) -> torch.Tensor:
    t = torch.arange(n) / sr
    return (0.5 * torch.sin(2 * math.pi * 440 * t) * ((t * 4) % 1 < 0.3)).float()


def test_write_read_round_trip(tmp_path: Path) -> None:
    frames = _blocky_frames(36)
    path = video.write_video(tmp_path / "a.mp4", frames, 24.0)
    info = video.probe(path)
    assert (info.width, info.height, info.fps, info.codec, info.has_audio) == (W, H, 24.0, "h264", False)
    assert info.duration_s == pytest.approx(1.5)
    out = video.read_frames(path, 24.0)
    assert out.frames.shape == frames.shape and out.frames.dtype == torch.uint8
    assert out.fps == 24.0 and out.duration_s == pytest.approx(1.5)
    assert (out.frames.float() - frames.float()).abs().mean() < 6
    assert video.read_frames(path, 24.0, size=16).frames.shape == (36, 16, 16, 3)
    assert video.read_frames(path, 24.0, size=(20, 30)).frames.shape == (36, 20, 30, 3)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_picks_the_displayed_frame(tmp_path: Path, suffix: str) -> None:
    pts_ms = [0, 40, 50, 120, 300, 310, 500, 900, 1000, 1010, 1400]
    path = _write_indexed(tmp_path / f"vfr{suffix}", pts_ms, Fraction(1, 1000), Fraction(30))
    out = video.read_frames(path, 24.0)
    times = [Fraction(p, 1000) for p in pts_ms]
    # the last frame counts as long as the median gap (85 ms): the file's own 1/30 s for it is only
    # 52 ms shorter, within the margin below which a short last sample is not taken for a picture
    # that ends early (test_a_clip_whose_last_sample_is_short_keeps_its_last_frame)
    duration = times[-1] + Fraction(85, 1000)
    assert out.frames.shape[0] == math.floor(duration * 24) == 35
    expected = [max(i for i, t in enumerate(times) if t <= Fraction(k, 24)) for k in range(out.frames.shape[0])]
    assert [_decode_index(f) for f in out.frames] == expected


@pytest.mark.parametrize("src_fps", [30, 25])
@pytest.mark.parametrize("fps", [24.0, 8.0])
def test_constant_rates_are_resampled_in_time(tmp_path: Path, src_fps: int, fps: float) -> None:
    n_src = 2 * src_fps
    path = _write_indexed(tmp_path / "cfr.mp4", list(range(n_src)), Fraction(1, src_fps), Fraction(src_fps))
    out = video.read_frames(path, fps)
    n = math.floor(Fraction(n_src, src_fps) * Fraction(fps))
    assert out.frames.shape[0] == n
    expected = [math.floor(Fraction(k) / Fraction(fps) * src_fps) for k in range(n)]
    assert [_decode_index(f) for f in out.frames] == expected


def _rate(fps: float) -> Fraction:
    """The documented reading of a float rate: the nearest fraction with denominator <= 10^6."""
    return Fraction(fps).limit_denominator(10**6)


def _check_indices(times: list[Fraction], duration: Fraction, fps: Fraction, idx: list[int]) -> None:
    assert len(idx) == max(1, math.floor(duration * fps))
    assert idx == sorted(idx)
    for k, i in enumerate(idx):
        t = Fraction(k) / fps
        assert i == 0 or times[i] <= t  # shown already
        assert i + 1 == len(times) or times[i + 1] > t  # not yet replaced


@settings(max_examples=60, deadline=None)
@given(
    gaps_ms=st.lists(st.integers(1, 120), min_size=0, max_size=40),
    tail_ms=st.integers(1, 200),
    fps=st.sampled_from([8.0, 23.976, 24.0, 25.0, 29.97, 30.0, 60.0]) | st.floats(0.5, 240.0),
)
def test_frame_indices_properties(gaps_ms: list[int], tail_ms: int, fps: float) -> None:
    times_ms = np.cumsum([0, *gaps_ms]).tolist()
    times = [t / 1000 for t in times_ms]
    duration = (times_ms[-1] + tail_ms) / 1000
    idx = video.frame_indices(times, duration, fps)
    _check_indices([Fraction(t) for t in times], Fraction(duration), _rate(fps), idx)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 90), src_fps=st.sampled_from([24.0, 25.0, 30.0, 29.97, 60.0]), fps=st.sampled_from([8.0, 24.0, 25.0]))
def test_resample_frames_counts_and_order(n: int, src_fps: float, fps: float) -> None:
    frames = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 2, 2, 3)
    out = video.resample_frames(frames, src_fps, fps)
    idx = out[:, 0, 0, 0].long().tolist()
    times = [Fraction(i) / _rate(src_fps) for i in range(n)]
    _check_indices(times, Fraction(n) / _rate(src_fps), _rate(fps), idx)


def test_audio_track_round_trip(tmp_path: Path) -> None:
    sr = 22050
    audio = _bursts(sr * 2, sr)
    path = video.write_video(tmp_path / "av.mp4", _blocky_frames(48), 24.0, audio=audio, sample_rate=sr)
    info = video.probe(path)
    assert info.has_audio and info.audio_sample_rate == sr
    back = video.read_audio_track(path, sr)
    assert back.dtype == torch.float32 and abs(back.shape[0] - audio.shape[0]) <= 1024
    n = min(back.shape[0], audio.shape[0])
    assert torch.corrcoef(torch.stack([back[:n], audio[:n]]))[0, 1] > 0.95
    at16k = video.read_audio_track(path, 16000)
    assert abs(at16k.shape[0] - 32000) <= 1024


def test_mux_audio_copies_the_video_stream(tmp_path: Path) -> None:
    sr = 22050
    src = video.write_video(tmp_path / "src.mp4", _blocky_frames(48), 24.0, audio=_bursts(sr * 2, sr), sample_rate=sr)
    new_audio = 0.5 * torch.sin(torch.arange(sr * 2) / sr * 2 * math.pi * 1000).float()
    result = video.mux_audio(src, new_audio, sr, tmp_path / "out.mp4")
    assert result.video_copied and result.video_codec == "h264" and result.path == tmp_path / "out.mp4"
    assert _video_packets(result.path) == _video_packets(src)  # byte-identical: no re-encode
    with av.open(str(result.path)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
    back = video.read_audio_track(result.path, sr)[: new_audio.shape[0]]
    assert torch.corrcoef(torch.stack([back, new_audio[: back.shape[0]]]))[0, 1] > 0.95
    in_place = video.mux_audio(src, new_audio, sr, src)  # replacing a file by its own remux is safe
    assert in_place.video_copied and _video_packets(src) == _video_packets(result.path)


def _decoded(path: Path) -> list[tuple[Fraction, int]]:
    """(presentation time, index) of every frame the video stream decodes to."""
    with av.open(str(path)) as c:
        return [(f.pts * f.time_base, _decode_index(torch.from_numpy(f.to_ndarray(format="rgb24")))) for f in c.decode(c.streams.video[0])]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_mux_audio_keeps_the_leading_packets_matroska_gives_no_dts(tmp_path: Path, suffix: str) -> None:
    """Matroska stores no dts: with B-frames its first packets (the keyframe among them) demux
    without one, and the copy must keep them with their timestamps, not drop them as the flush packet."""
    pts_ms = [round(1000 * i / 60) for i in range(40)]  # 60 fps on Matroska's millisecond clock
    src = _write_indexed(tmp_path / "bframes.mkv", pts_ms, Fraction(1, 1000), Fraction(60), bframes=True)
    with av.open(str(src)) as c:
        assert any(p.dts is None and p.size for p in c.demux(c.streams.video[0]))  # the case under test
    result = video.mux_audio(src, torch.zeros(44100), 44100, tmp_path / f"out{suffix}")
    assert result.video_copied
    assert _video_packets(result.path) == _video_packets(src)  # every packet, byte for byte
    assert _decoded(result.path) == _decoded(src) == [(Fraction(p, 1000), i) for i, p in enumerate(pts_ms)]


def _click_time(path: Path) -> float:
    """Presentation time (s) of the loudest sample of the first audio stream."""
    with av.open(str(path)) as c:
        best, when = -1.0, 0.0
        for f in c.decode(c.streams.audio[0]):
            x = np.abs(f.to_ndarray()[0])
            if x.max() > best:
                best, when = float(x.max()), float(f.pts * f.time_base) + int(x.argmax()) / f.sample_rate
    return when


@pytest.mark.parametrize("codec", ["libx264", "ffv1"])  # copied / re-encoded video
def test_mux_audio_starts_the_audio_with_the_first_video_frame(tmp_path: Path, codec: str) -> None:
    """A video whose first frame is at 0.5 s (a stream-copied cut, MPEG-TS): the generated waveform
    starts at that frame (read_frames' time 0), so a click at sample 0 must play with it, not 0.5 s early."""
    src = _write_indexed(tmp_path / f"late.{'mp4' if codec == 'libx264' else 'mkv'}", [12 + i for i in range(48)], Fraction(1, 24), Fraction(24), codec=codec)
    first = _decoded(src)[0][0]
    assert first == Fraction(1, 2)  # the case under test
    sr = 22050
    wav = torch.zeros(2 * sr)
    wav[:64] = 0.9
    result = video.mux_audio(src, wav, sr, tmp_path / "out.mp4")
    assert result.video_copied == (codec == "libx264")
    assert _decoded(result.path)[0][0] == first  # the video keeps its timing
    assert abs(_click_time(result.path) - 0.5) < 0.01


def test_mux_audio_reencodes_a_codec_players_do_not_read_from_mp4(tmp_path: Path) -> None:
    """FFmpeg muxes FFV1 into .mp4, but players refuse it there: MP4 output gets H.264 (or mpeg4),
    while a .mkv output keeps the FFV1 packets."""
    src = _write_indexed(tmp_path / "ffv1.mkv", list(range(25)), Fraction(1, 25), Fraction(25), codec="ffv1", pix_fmt="yuv420p")
    result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied and result.video_codec in ("libx264", "mpeg4")
    assert [_decode_index(f) for f in video.read_frames(result.path, 25.0).frames] == list(range(25))
    kept = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mkv")
    assert kept.video_copied and kept.video_codec == "ffv1"


def test_mux_audio_reencodes_when_the_container_cannot_hold_the_codec(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _write_indexed(tmp_path / "huff.avi", list(range(25)), Fraction(1, 25), Fraction(25), codec="huffyuv", pix_fmt="yuv422p")
    with caplog.at_level(logging.WARNING, logger="controlfoley.video"):
        result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied and result.video_codec in ("libx264", "mpeg4")
    assert f"{src}: its video codec 'huffyuv' does not play from an .mp4 file, so the video was re-encoded" in caplog.text
    out = video.read_frames(result.path, 25.0)
    assert [_decode_index(f) for f in out.frames] == list(range(25))


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="writing a display rotation needs a PyAV with VideoStream.set_display_rotation")
def test_a_reencoded_video_keeps_its_display_rotation_and_pixel_aspect(tmp_path: Path) -> None:
    """A portrait video stored landscape and tagged to display turned 90 degrees (as phones write
    it), with non-square pixels (anamorphic): MP4 output re-encodes its MJPEG, and players must still
    show it upright and at its shape, as the source plays."""
    src = tmp_path / "portrait.mov"
    with av.open(str(src), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        s.codec_context.sample_aspect_ratio = Fraction(16, 11)
        s.set_display_rotation(90)
        _encode_all(c, s, (_indexed_frame(i, i, Fraction(1, 10)) for i in range(10)))
    result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied
    with av.open(str(result.path)) as c:
        v = c.streams.video[0]
        assert v.sample_aspect_ratio == Fraction(16, 11)
        assert [f.rotation for f in c.decode(v)] == [90] * 10
    assert [t for t, _ in _decoded(result.path)] == [Fraction(i, 10) for i in range(10)]  # every frame at its time


def test_a_reencoded_full_range_video_keeps_its_colours(tmp_path: Path) -> None:
    """MJPEG stores full-range (JPEG) YUV; H.264 in MP4 is played as limited range unless tagged:
    re-encoded as it is, a dark grey turned black and the colours went too strong."""
    colours = np.array([[40, 40, 40], [200, 200, 200], [180, 60, 90]], np.uint8)
    img = np.repeat(colours, 16, axis=0)[:, None, :].repeat(W, axis=1)  # three flat bands, 48 rows
    src = tmp_path / "phone.avi"
    with av.open(str(src), "w") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = W, 48, "yuvj420p"
        _encode_all(c, s, [av.VideoFrame.from_ndarray(img, format="rgb24") for _ in range(5)])
    result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied
    for path in (src, result.path):
        shown = video.read_frames(path, 10.0).frames[2].numpy().astype(float)
        bands = [shown[16 * k + 4 : 16 * k + 12].reshape(-1, 3).mean(axis=0) for k in range(3)]
        assert np.abs(np.array(bands) - colours).max() < 6, (path.name, np.round(bands))


# -- bad input -----------------------------------------------------------------------------------


def _audio_with_cover(path: Path, sr: int = 22050) -> Path:
    """An .m4a: 0.5 s of AAC audio and a cover picture (a one-packet MJPEG video stream marked
    attached_pic, as phones and music stores write album art)."""
    with av.open(str(path), "w", format="mp4") as c:
        a = c.add_stream("aac", rate=sr)
        a.layout = "mono"
        cover = c.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        _encode_all(c, cover, [av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24")])

        def chunk(k: int) -> av.AudioFrame:
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, k, Fraction(1, sr)
            return f

        _encode_all(c, a, (chunk(k) for k in range(0, sr // 2, 1024)))
    return path


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, phrase its MediaError must contain)."""
    good = video.write_video(tmp / "good.mp4", _blocky_frames(48), 24.0)
    data = good.read_bytes()
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    faststart = _write_indexed(tmp / "fs.mp4", list(range(48)), Fraction(1, 24), Fraction(24))
    with av.open(str(tmp / "fs2.mp4"), "w", options={"movflags": "faststart"}) as out, av.open(str(faststart)) as inp:
        vout = out.add_stream_from_template(inp.streams.video[0])
        for pkt in inp.demux(inp.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = vout
                out.mux(pkt)
    fs_data = (tmp / "fs2.mp4").read_bytes()
    (tmp / "truncated_faststart.mp4").write_bytes(fs_data[: len(fs_data) // 2])  # index first, media cut
    (tmp / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "unsupported.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))
    sf.write(tmp / "audio_only.wav", np.zeros(2205, np.float32), 22050)
    _audio_with_cover(tmp / "song.m4a")
    for name in ("no_streams.mp4", "zero_frames.avi"):  # MP4 drops a track without samples; AVI keeps it
        with av.open(str(tmp / name), "w") as c:
            s = c.add_stream("libx264", rate=24)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            c.start_encoding()
    return {
        "missing": (tmp / "nope.mp4", "no such file"),
        "no video stream": (tmp / "audio_only.wav", "no video stream"),
        "audio with album art": (tmp / "song.m4a", "no video stream (it holds: audio, a cover picture): an audio file with album art"),
        "truncated": (tmp / "truncated.mp4", "truncated"),
        "truncated faststart": (tmp / "truncated_faststart.mp4", "truncated"),
        "corrupt": (tmp / "corrupt.mp4", "corrupt"),
        "zero bytes": (tmp / "empty.mp4", "zero-length"),
        "no streams": (tmp / "no_streams.mp4", "zero-length"),
        "zero frames": (tmp / "zero_frames.avi", "zero-length"),
        "unsupported codec": (tmp / "unsupported.mp4", "unsupported video codec"),
    }


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.startswith("out")]


def test_bad_inputs_raise_one_line_media_errors_and_leave_nothing(tmp_path: Path) -> None:
    for name, (path, phrase) in _bad_files(tmp_path).items():
        for call in (lambda p: video.read_frames(p, 24.0), video.probe, lambda p: video.mux_audio(p, torch.zeros(2205), 22050, tmp_path / "out.mp4")):
            with pytest.raises(MediaError) as err:
                call(path)
            msg = str(err.value)
            assert phrase in msg and str(path) in msg and "\n" not in msg, (name, msg)
        assert _leftovers(tmp_path) == [], name


def test_a_cut_fragmented_mp4_is_named_truncated_when_its_audio_is_read(tmp_path: Path) -> None:
    """A fragmented MP4 (frag_keyframe+empty_moov, as streamed recordings are written) cut at 60%:
    read_frames named it truncated, but read_audio_track, which extract reads first, said 'the audio
    track holds no samples' (a walkthrough). It checks the streams' index against the file size now."""
    from controlfoley.video import read_audio_track

    path = tmp_path / "frag.mp4"
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.options = {"g": "12"}  # a fragment each half second
        a = c.add_stream("aac", rate=22050, layout="mono")
        frames = _blocky_frames(72)
        _encode_all(c, v, (av.VideoFrame.from_ndarray(f.numpy(), format="rgb24") for f in frames))
        sr, n = 22050, 3 * 22050

        def chunk(k: int) -> av.AudioFrame:
            f = av.AudioFrame.from_ndarray((0.1 * np.sin(np.arange(k, k + 1024) / 10.0)).astype(np.float32)[None], format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, k, Fraction(1, sr)
            return f

        _encode_all(c, a, (chunk(k) for k in range(0, n, 1024)))
    assert read_audio_track(path, 22050).shape[0] > 2 * 22050  # whole, it reads
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(MediaError, match=r"cut\.mp4: truncated: its index points to byte \d+ but the file has only \d+ bytes"):
        read_audio_track(tmp_path / "cut.mp4", 22050)  # (the video, muxed first here, is whole: read_frames reads it)


def _held_last_frame(src: Path, out: Path, held_ms: int) -> Path:
    """`src` remuxed with its last frame displayed for `held_ms` (variable-rate video ending on a still)."""
    with av.open(str(src)) as inp, av.open(str(out), "w") as c:
        vout = c.add_stream_from_template(inp.streams.video[0])
        packets = [p for p in inp.demux(inp.streams.video[0]) if p.size]
        last = max(p.pts for p in packets)
        for pkt in packets:
            pkt.duration = held_ms if pkt.pts == last else pkt.duration
            pkt.stream = vout
            c.mux(pkt)
    return out


@pytest.mark.parametrize("suffix", [".mkv", ".flv"])
def test_a_file_cut_short_mid_stream_is_refused(tmp_path: Path, suffix: str) -> None:
    # Matroska and FLV declare no frame count, only a duration, and a cut Matroska file has lost its
    # index (cues at the end): the decoded frames stop early while the header still says 4 s.
    frames = _blocky_frames(96)
    full = tmp_path / f"full{suffix}"
    if suffix == ".mkv":  # with an audio track: the video's own DURATION tag is the witness
        video.write_video(full, frames, 24.0, audio=torch.zeros(4 * 22050), sample_rate=22050)
    else:
        _write_indexed(full, [40 * i for i in range(100)], Fraction(1, 1000), Fraction(25), codec="flv")
    assert video.read_frames(full, 24.0).duration_s == pytest.approx(4.0, abs=0.05)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as err:
        video.read_frames(cut, 24.0)
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg and "header states 4.00 s" in msg and "re-download" in msg and "\n" not in msg


def test_max_seconds_reads_only_the_start_of_a_long_video(tmp_path: Path) -> None:
    """A dataset clip of a long video needs its first window only: the frames are those of a whole
    read, and the file is read no further (its cut second half is never reached)."""
    frames = _blocky_frames(96)
    full = video.write_video(tmp_path / "full.mkv", frames, 24.0, audio=torch.zeros(4 * 22050), sample_rate=22050)
    whole = video.read_frames(full, 10.0)
    start = video.read_frames(full, 10.0, max_seconds=1.25)
    assert start.frames.shape[0] == 12 and start.duration_s == 1.25 and torch.equal(start.frames, whole.frames[:12])
    assert torch.equal(video.read_frames(full, 10.0, max_seconds=60.0).frames, whole.frames)  # shorter than the limit: read whole
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated"):
        video.read_frames(cut, 10.0)
    assert torch.equal(video.read_frames(cut, 10.0, max_seconds=1.0).frames, whole.frames[:10])
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        video.read_frames(full, 10.0, max_seconds=0)


def _chirp_video(path: Path, seconds: float, sr: int = 44100) -> Path:
    """A 24 fps MP4 whose AAC track at `sr` is a rising chirp plus noise: every resampled sample differs."""
    n = int(seconds * sr)
    t = torch.arange(n) / sr
    noise = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    audio = (0.3 * torch.sin(2 * math.pi * (200 * t + 1500 * t**2)) + noise).float()
    return video.write_video(path, _blocky_frames(round(seconds * 24)), 24.0, audio=audio, sample_rate=sr)


def test_max_seconds_reads_the_start_of_the_audio_track(tmp_path: Path) -> None:
    """A bounded read gives the first round(max_seconds x rate) samples of the whole read (all of it
    past the end), on the video clock also where the audio starts after or before the first frame.
    Tolerance: the same decoded samples through the same resampler filter give the same float32
    samples (bit-identical here), so 1e-6 admits float rounding only; without the 0.1 s margin the
    last samples of the 1.3 s window differ by about 6e-4 (the resampler's flush edge)."""
    sr = 22050
    chirp = _chirp_video(tmp_path / "chirp.mp4", 3.0)  # 44.1 kHz: resampled to 22.05 kHz
    late = _with_audio(tmp_path / "late.mkv", 4.0, 0.5, 3.0, 0.3, sr=44100)  # silence before 0.5 s
    early = _with_audio(tmp_path / "early.mkv", 4.0, -0.2, 3.0, 0.5, sr=44100)  # its first 0.2 s dropped
    for path in (chirp, late, early):
        whole = video.read_audio_track(path, sr)
        for seconds in (0.3, 0.5, 1.3, 0.123456, 2.95, 60.0):  # 1.3 s and 0.123456 s are on no video frame nor AAC frame
            start = video.read_audio_track(path, sr, max_seconds=seconds)
            assert start.shape[0] == min(round(seconds * sr), whole.shape[0]), (path.name, seconds)
            torch.testing.assert_close(start, whole[: start.shape[0]], rtol=0, atol=1e-6, msg=lambda m: f"{path.name} {seconds} s: {m}")
    assert video.read_audio_track(late, sr, max_seconds=0.3).abs().max() == 0  # the window ends before the audio starts


def test_max_seconds_stops_decoding_the_audio_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An extraction window of a long video decoded the whole audio track (its memory grows with the
    video): the decoded samples (each goes through the resampler) stop 0.1 s past the window, give
    or take one AAC frame."""
    path = _chirp_video(tmp_path / "long.mp4", 8.0)
    fed: list[int] = []
    real = av.AudioResampler

    class Counting:
        def __init__(self, **kwargs: Any) -> None:
            self.resampler = real(**kwargs)

        def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
            fed.append(0 if frame is None else frame.samples)
            return self.resampler.resample(frame)

    monkeypatch.setattr(av, "AudioResampler", Counting)
    assert video.read_audio_track(path, 22050, max_seconds=1.0).shape[0] == 22050
    assert 1.05 * 44100 <= sum(fed) <= 1.1 * 44100 + 2 * 1024
    fed.clear()
    video.read_audio_track(path, 22050)
    assert sum(fed) >= 7.9 * 44100  # the counter sees a whole read


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), "3", True])
def test_max_seconds_must_be_positive_and_finite(tmp_path: Path, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxtyping import config

    monkeypatch.setattr(config, "jaxtyping_disable", True)  # the library's own messages, as users see them
    path = video.write_video(tmp_path / "v.mp4", _blocky_frames(4), 24.0, audio=torch.zeros(22050), sample_rate=22050)
    with pytest.raises(ValueError, match="max_seconds must be positive and finite"):
        video.read_audio_track(path, 22050, max_seconds=seconds)
    with pytest.raises(ValueError, match="max_seconds must be positive and finite"):  # inf was an OverflowError
        video.read_frames(path, 24.0, max_seconds=seconds)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_slideshow_ends_with_its_last_frame(tmp_path: Path, suffix: str) -> None:
    """Frames 2 s apart whose last one is shown for 40 ms, as the file and its header say: the video
    lasts 4.04 s, and the audio made for it must not run on to 6 s (the last time + the median gap)."""
    path = _write_indexed(tmp_path / f"slides{suffix}", [0, 2000, 4000], Fraction(1, 1000), Fraction(25))
    out = video.read_frames(path, 10.0)
    assert out.duration_s == pytest.approx(4.04) and out.frames.shape[0] == 40
    assert video.probe(path).duration_s == pytest.approx(4.04)  # as the pipeline plans before decoding
    assert [_decode_index(f) for f in out.frames] == [0] * 20 + [1] * 20


def test_a_clip_whose_last_sample_is_short_keeps_its_last_frame(tmp_path: Path) -> None:
    """30 frames at 30 fps whose last MP4 sample lasts one tick (a trim, a muxer's rounding): the
    slideshow rule must not take it for a picture that ends early; all 30 frames are read."""
    tb, path = Fraction(1, 15360), tmp_path / "short_last.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = tb
        s.options = {"qp": "0"}
        packets = [q for i in range(30) for q in s.encode(_indexed_frame(i, i * 512, tb))] + list(s.encode(None))
        max(packets, key=lambda q: q.pts).duration = 1
        for q in packets:
            c.mux(q)
    out = video.read_frames(path, 30.0)
    assert out.frames.shape[0] == 30 and [_decode_index(f) for f in out.frames] == list(range(30))


def test_duration_check_spares_vfr_and_header_quirks(tmp_path: Path) -> None:
    # A variable-rate Matroska file ending on a frame held 2 s: its header states 4 s, the frame
    # timestamps end at 2 s, the held frame's own duration covers the rest.
    pts_ms = [0, 40, 80, 120, 500, 540, 2000]
    src = _write_indexed(tmp_path / "vfr.mkv", pts_ms, Fraction(1, 1000), Fraction(25))
    held = _held_last_frame(src, tmp_path / "held.mkv", 2000)
    with av.open(str(held)) as c:
        assert c.streams.video[0].metadata["DURATION"].startswith("00:00:04")
    # no MediaError, and the held frame counts: the video plays 4 s, so the audio made for it must too
    held_frames = video.read_frames(held, 24.0)
    assert held_frames.duration_s == pytest.approx(4.0) and held_frames.frames.shape[0] == 96
    assert torch.equal(held_frames.frames[-1], held_frames.frames[50])  # the still, repeated to the end
    assert video.probe(held).duration_s == pytest.approx(4.0)  # the header's, with precomputed features
    assert video.read_frames(src, 24.0).duration_s == pytest.approx(2.04)  # not held: timestamps + a frame
    # An MP4 with B-frames whose header understates the duration of variable-rate video (0.62 s for
    # 2.04 s): the header's frame count is checked instead, and all frames are there.
    vfr_mp4 = tmp_path / "vfr.mp4"
    with av.open(str(vfr_mp4), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        _encode_all(c, s, (_indexed_frame(i, t, Fraction(1, 1000)) for i, t in enumerate(pts_ms)))
    assert video.probe(vfr_mp4).duration_s < 1.0 < video.read_frames(vfr_mp4, 24.0).duration_s


def test_audio_errors(tmp_path: Path) -> None:
    silent = video.write_video(tmp_path / "silent.mp4", _blocky_frames(4), 24.0)
    with pytest.raises(MediaError, match="no audio track"):
        video.read_audio_track(silent, 22050)
    with pytest.raises(MediaError, match="no such file"):
        video.read_audio_track(tmp_path / "nope.mp4", 22050)


def test_unwritable_outputs_raise_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    frames = _blocky_frames(4)
    with pytest.raises(MediaError, match="cannot write"):
        video.write_video(tmp_path / "a_file" / "out.mp4", frames, 24.0)
    with pytest.raises(MediaError, match=r"writes videos as .*'.xyz' is not one of them: write an .mp4 and convert it"):
        video.write_video(tmp_path / "out.xyz", frames, 24.0)
    with pytest.raises(MediaError, match=r"'.wav' is not one of them: for the audio alone, write it as audio \(a FoleyResult's .save\('out.wav'\)"):
        video.write_video(tmp_path / "out.wav", frames, 24.0)  # (save_video(video, "out.wav") meant the audio)
    src = video.write_video(tmp_path / "src.mp4", frames, 24.0)
    with pytest.raises(MediaError, match="cannot write"):
        video.mux_audio(src, torch.zeros(100), 22050, tmp_path / "a_file" / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "src.mp4"]


def test_argument_errors() -> None:
    frames = _blocky_frames(2)
    with pytest.raises(ValueError, match="fps"):
        video.resample_frames(frames, 24.0, 0.0)
    with pytest.raises(ValueError, match="together"):
        video.write_video("x.mp4", frames, 24.0, audio=torch.zeros(10))


def test_every_sample_rate_takes_one_rule_and_says_it_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save_audio, load_audio, read_audio_track, write_video and mux_audio take the same sample
    rates (a positive whole number: an int, a numpy integer, a whole float such as 22050.0) and
    refuse the same ones in the same words. write_video and mux_audio refused 22050.0, which
    read_audio_track and save_audio took, and each said it its own way."""
    from jaxtyping import config

    from controlfoley.audio.io import load_audio, save_audio
    from controlfoley.errors import ConfigError

    monkeypatch.setattr(config, "jaxtyping_disable", True)  # the library's own checks, as users meet them
    src = video.write_video(tmp_path / "src.mp4", _blocky_frames(4), 24.0, audio=torch.zeros(4410), sample_rate=22050)
    wav = save_audio(tmp_path / "a.wav", torch.zeros(100), 22050)
    calls = {
        "save_audio": lambda r: save_audio(tmp_path / "b.wav", torch.zeros(100), r),
        "load_audio": lambda r: load_audio(wav, r),
        "read_audio_track": lambda r: video.read_audio_track(src, r),
        "write_video": lambda r: video.write_video(tmp_path / "w.mp4", _blocky_frames(2), 24.0, audio=torch.zeros(100), sample_rate=r),
        "mux_audio": lambda r: video.mux_audio(src, torch.zeros(100), r, tmp_path / "m.mp4"),
    }
    for name, call in calls.items():
        for rate in (22050, 22050.0, np.int64(22050), np.float32(22050.0)):
            call(rate)  # taken
        for rate in ("22050", 22050.5, 0, -22050, True, float("inf"), *([None] if name != "write_video" else [])):  # write_video: None is no audio
            with pytest.raises(ConfigError, match=rf"^{name}: sample_rate is in Hz, a positive whole number such as 22050; got {re.escape(repr(rate))}$"):
                call(rate)


def test_an_aac_track_past_full_scale_is_warned_about_as_save_audio_does(tmp_path: Path) -> None:
    """write_video and mux_audio clip the AAC track's samples to [-1, 1]: a peak past 1.01 (a
    square wave, not a rounding's overshoot) was clipped without a word; it is now warned about at
    the user's line, naming the file and the fix, as save_audio does for 16-bit PCM."""
    import warnings

    loud = torch.sin(torch.arange(4410) / 10.0) * 3.0
    with pytest.warns(UserWarning, match=r"^write_video: the waveform peaks at 3, past full scale \(1.0\): the AAC track clips \d+ of its 4410 samples to \[-1, 1\] in .*w.mp4; normalise it first") as caught:
        src = video.write_video(tmp_path / "w.mp4", _blocky_frames(4), 24.0, audio=loud, sample_rate=22050)
    assert len(caught) == 1 and caught[0].filename == __file__
    with pytest.warns(UserWarning, match=r"^mux_audio: the waveform peaks at 3, .* in .*m.mp4; normalise it first \(wav / wav.abs\(\).max\(\)\)") as caught:
        video.mux_audio(src, loud.numpy(), 22050, tmp_path / "m.mp4")
    assert len(caught) == 1 and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        video.mux_audio(src, torch.tensor([1.005, -0.5] * 50), 22050, tmp_path / "edge.mp4")  # a rounding's overshoot: nothing said


def test_argument_errors_are_the_librarys_and_name_the_fix(tmp_path: Path) -> None:
    """read_frames(fps=0) and mux_audio(wav [1, s]) raised bare ValueErrors, a numpy waveform an
    AttributeError, and sample_rate=7 "FFmpeg failed while muxing; try an .mp4 output" for an .mp4."""
    import inspect

    from controlfoley.errors import ConfigError, ControlFoleyError, ShapeError

    src = video.write_video(tmp_path / "src.mp4", _blocky_frames(4), 24.0)
    out = tmp_path / "out.mp4"
    read_frames, mux = inspect.unwrap(video.read_frames), inspect.unwrap(video.mux_audio)  # past the suite's runtime type checks
    for fps in (0, -24.0, float("nan"), "24", True):
        with pytest.raises(ConfigError, match=r"fps is a frame rate in frames per second, a positive finite number such as 24; got"):
            read_frames(src, fps)
    with pytest.raises(ShapeError, match=r"mux_audio: audio must be a non-empty mono waveform \[samples\], got shape \(1, 22050\); drop the channel axis \(wav\[0\]\)"):
        mux(src, torch.zeros(1, 22050), 22050, out)
    with pytest.raises(ShapeError, match=r"got shape \(2, 22050\); mix the channels to mono"):
        mux(src, torch.zeros(2, 22050), 22050, out)
    with pytest.raises(ShapeError, match="audio must be float samples in \\[-1, 1\\], got torch.int16"):
        mux(src, torch.zeros(22050, dtype=torch.int16), 22050, out)
    with pytest.raises(ConfigError, match=r"mux_audio: the AAC audio track takes the sample rates 7350, 8000, .* 22050, .* 96000 Hz, got 7; resample"):
        mux(src, torch.zeros(100), 7, out)
    with pytest.raises(ConfigError, match="write_video: the AAC audio track takes the sample rates"):
        video.write_video(tmp_path / "w.mp4", _blocky_frames(4), 24.0, audio=torch.zeros(100), sample_rate=7)
    for rate in ("22050", 0, True):
        with pytest.raises(ConfigError, match="mux_audio: sample_rate is in Hz, a positive whole number such as 22050"):
            mux(src, torch.zeros(100), rate, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.mp4"]  # refused before any file was opened
    result = mux(src, np.zeros(22050, np.float64), 22050, out)  # a numpy waveform is taken
    assert result.path == out and video.probe(out).has_audio
    assert issubclass(ShapeError, ControlFoleyError) and issubclass(ConfigError, ValueError)  # older `except ValueError` clauses hold


def test_a_muxing_failure_suggests_an_mp4_only_for_other_containers(tmp_path: Path) -> None:
    from controlfoley._media import atomic_output

    for name, suggests in (("out.mp4", False), ("out.mov", True)):
        with pytest.raises(MediaError, match="FFmpeg failed while muxing") as e:
            with atomic_output(tmp_path / name):
                raise av.error.InvalidDataError(22, "Invalid argument")
        assert ("try an .mp4 output" in str(e.value)) is suggests, str(e.value)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (no file can be made there, even as root)")
def test_check_writable_folder_probes_the_folder_itself() -> None:
    """The probe file goes into the folder checked, not the system temp folder."""
    from controlfoley._io import check_writable_folder

    with pytest.raises(MediaError, match="cannot be written"):
        check_writable_folder(Path("/proc/self"))


def _with_audio(path: Path, video_s: float, audio_start_s: float, audio_s: float, click_s: float, sr: int = 22050) -> Path:
    """An .mkv: 10 fps FFV1 video from t=0 for `video_s`, PCM audio whose stream starts at
    `audio_start_s` and lasts `audio_s`, one click `click_s` into the audio stream."""
    wav = np.zeros(int(audio_s * sr), dtype=np.int16)
    wav[int(click_s * sr) : int(click_s * sr) + 32] = 30000
    with av.open(str(path), "w") as c:
        v = c.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=sr)
        a.layout = "mono"
        _encode_all(c, v, (_indexed_frame(i, i, Fraction(1, 10)) for i in range(int(video_s * 10))))

        def chunk(k: int) -> av.AudioFrame:
            f = av.AudioFrame.from_ndarray(wav[None, k : k + 1024], format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, int(audio_start_s * sr) + k, Fraction(1, sr)
            return f

        _encode_all(c, a, (chunk(k) for k in range(0, len(wav), 1024)))
    return path


def test_audio_is_read_on_the_video_clock_and_durations_are_the_videos(tmp_path: Path) -> None:
    """An audio stream that starts 0.5 s after the first frame: its click, 0.3 s into the stream,
    is at 0.8 s of the video (as generate writes and evaluate must read it); one that starts 0.2 s
    before the first frame loses those 0.2 s. A video with a longer audio track lasts its own length."""
    sr = 22050
    late = _with_audio(tmp_path / "late.mkv", 2.0, 0.5, 1.0, 0.3)
    wav = video.read_audio_track(late, sr)
    assert abs(int(wav.abs().argmax()) / sr - 0.8) < 0.002
    early = _with_audio(tmp_path / "early.mkv", 2.0, -0.2, 1.5, 0.5)
    wav = video.read_audio_track(early, sr)
    assert abs(int(wav.abs().argmax()) / sr - 0.3) < 0.002
    longer = _with_audio(tmp_path / "longer.mkv", 1.0, 0.0, 3.0, 0.1)
    assert video.probe(longer).duration_s == pytest.approx(1.0, abs=0.11)


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="writing a display rotation needs a PyAV with VideoStream.set_display_rotation")
@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_frames_are_read_as_players_show_them(tmp_path: Path, degrees: int) -> None:
    """A video stored 32 wide x 16 high and tagged to display turned (a phone's portrait video):
    the extractors get the picture the way a player shows it, at the source size and resized."""
    img = np.zeros((16, 32, 3), np.uint8)
    img[:4, :8] = 255  # a white block in the stored picture's top-left corner
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv444p"
        s.set_display_rotation(degrees)
        frames = [av.VideoFrame.from_ndarray(img, format="rgb24") for _ in range(5)]
        for i, frame in enumerate(frames):
            frame.pts = i
        _encode_all(c, s, frames)
    shown = np.rot90(img, degrees // 90)  # counterclockwise, as the display matrix says
    got = video.read_frames(path, 10.0).frames[0].numpy()
    assert got.shape == shown.shape and np.abs(got.astype(int) - shown.astype(int)).mean() < 8
    resized = video.read_frames(path, 10.0, size=(8, 12)).frames[0].numpy()
    assert resized.shape == (8, 12, 3)
    bright = np.unravel_index(resized[..., 0].argmax(), resized.shape[:2])
    corner = np.unravel_index(shown[..., 0].argmax(), shown.shape[:2])  # the block's corner, scaled
    assert abs(bright[0] / 8 - corner[0] / shown.shape[0]) < 0.3 and abs(bright[1] / 12 - corner[1] / shown.shape[1]) < 0.3


def test_a_full_disk_names_the_output_not_its_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_video / mux_audio on a full disk: a MediaError naming the file asked for (also when
    that is another writer's temporary file, as generate hands mux_audio) and saying the disk is
    full, not "choose a writable output folder"; no temporary file stays."""
    from controlfoley._io import atomic_path

    src = video.write_video(tmp_path / "src.mp4", _blocky_frames(4), 24.0)
    failing_replace(monkeypatch, lambda src, dst: ".tmp-" in src.name)  # every atomic rename: no room
    out = tmp_path / "out.mp4"
    full = rf"^cannot write {out}: No space left on device; the disk is full: free space$"
    with pytest.raises(MediaError, match=full):
        video.write_video(out, _blocky_frames(4), 24.0)
    with pytest.raises(MediaError, match=full):
        video.mux_audio(src, torch.zeros(2205), 22050, out)
    with pytest.raises(MediaError, match=full):
        with atomic_path(out) as tmp:
            video.mux_audio(src, torch.zeros(2205), 22050, tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.mp4"]


def test_an_os_error_inside_atomic_path_names_the_target(tmp_path: Path) -> None:
    """An OSError raised while writing the temporary file (none named, or the temporary one) is
    raised naming the target, followed through nested atomic_paths; its kind (errno) is kept."""
    import errno

    from controlfoley._io import atomic_path, final_path

    out = tmp_path / "clip.mp4"
    with pytest.raises(OSError, match=r"No space left on device: '.*clip\.mp4'$") as e:
        with atomic_path(out) as tmp:
            assert final_path(tmp) == out
            with atomic_path(tmp) as inner:
                assert final_path(inner) == out
                raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    with pytest.raises(PermissionError) as e:
        with atomic_path(out) as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert e.value.filename == str(out)
    with pytest.raises(FileNotFoundError) as e:  # another file named: left as it is
        with atomic_path(out):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.mp4"))
    assert e.value.filename == str(tmp_path / "input.mp4") and list(tmp_path.iterdir()) == []


def test_read_frames_and_read_audio_track_name_arguments_of_the_wrong_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A str size or sample rate was a TypeError from a comparison deep inside; a whole float rate
    (22050.0, as librosa gives) is still taken."""
    from jaxtyping import config

    from controlfoley.errors import ConfigError

    monkeypatch.setattr(config, "jaxtyping_disable", True)  # the library's own messages, as users see them

    path = video.write_video(tmp_path / "v.mp4", _blocky_frames(4), 24.0, audio=torch.zeros(22050), sample_rate=22050)
    for size in ("64", (64,), (64, "48"), 0, True):
        with pytest.raises(ConfigError, match=r"size is the frames' side in pixels \(an int\) or \(height, width\), each >= 1"):
            video.read_frames(path, 24.0, size=size)
    assert video.read_frames(path, 24.0, size=[16, 24]).frames.shape[1:3] == (16, 24)
    for rate in ("22050", 22050.5, 0, True):
        with pytest.raises(ConfigError, match="read_audio_track: sample_rate is in Hz, a positive whole number such as 22050"):
            video.read_audio_track(path, rate)
    assert video.read_audio_track(path, 22050.0).shape == video.read_audio_track(path, 22050).shape


def _gop_packets(n: int, gop: int) -> tuple[Any, list[av.Packet]]:
    """Frames 0..n-1 (`_index_image`) encoded at 24 fps with a keyframe every `gop` frames and no
    B-frames, as loose packets (time base 1/24) to mux by hand; with the encoder (its extradata)."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = W, H, "yuv420p"
    cc.time_base, cc.framerate, cc.gop_size = Fraction(1, 24), Fraction(24), gop
    cc.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0", "crf": "10"}
    packets = [p for i in range(n) for p in cc.encode(_indexed_frame(i, i, Fraction(1, 24)))]
    return cc, packets + list(cc.encode(None))


def _copied_cut(path: Path, cut: int = 36) -> Path:
    """What `ffmpeg -ss 1.5 -i IN -c copy OUT.mp4` writes from 96 frames with keyframes at 0 and 48:
    the packets from the keyframe before the cut, shifted so that the cut is at 0, and an edit list
    (written by FFmpeg for the negative times) that hides the 36 frames before it."""
    cc, packets = _gop_packets(96, 48)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.extradata, s.time_base = cc.extradata, Fraction(1, 12288)
        for p in packets:
            p.pts, p.dts, p.time_base, p.stream = p.pts - cut, p.dts - cut, Fraction(1, 24), s
            c.mux(p)
    return path


def test_a_stream_copied_cut_is_read_and_muxed_as_players_show_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The header counts the 96 packets, 36 of them hidden: the file is whole (it was refused as
    truncated), read from the cut, and a copy into Matroska, which has no edit lists and would show
    the cut-away frames, is re-encoded without them, saying why."""
    src = _copied_cut(tmp_path / "cut.mp4")
    with av.open(str(src)) as c:
        assert c.streams.video[0].frames == 96 and len(_decoded(src)) == 60  # the case under test
    frames = video.read_frames(src, 24.0).frames
    assert [_decode_index(f) for f in frames] == list(range(36, 96))
    sr = 22050
    wav = torch.zeros(3 * sr)
    wav[round(10 / 24 * sr) : round(10 / 24 * sr) + 32] = 0.9  # with the 10th frame shown (index 46)
    for suffix in (".mp4", ".mov", ".mkv"):
        with caplog.at_level(logging.WARNING, logger="controlfoley.video"):
            result = video.mux_audio(src, wav, sr, tmp_path / f"out{suffix}")
        shown = _decoded(result.path)
        assert [i for _, i in shown] == list(range(36, 96)), suffix
        assert result.video_copied == (suffix != ".mkv")
        assert abs(_click_time(result.path) - float(dict((i, t) for t, i in shown)[46])) < 0.005, suffix
    assert "an edit list hides its first frames" in caplog.text and "write .mp4 or .mov" in caplog.text


def test_a_transport_stream_starting_mid_gop_keeps_audio_and_frames_on_one_clock(tmp_path: Path) -> None:
    """An MPEG-TS capture that starts on a P-frame: its first packets decode to nothing, so the first
    frame shown is the next keyframe's, 0.29 s after the stream's start_time. read_audio_track counts
    from that frame, as read_frames does (it counted from start_time: a click came 0.29 s early),
    and mux_audio's output of such a file reads back whole (it was refused as truncated)."""
    sr, skip = 22050, 5
    cc, packets = _gop_packets(48, 12)
    src = tmp_path / "midgop.ts"
    click = torch.zeros(2 * sr)
    at = round((20 - skip) / 24 * sr)
    click[at : at + 32] = 0.9  # with frame 20; the audio starts with frame 5, as the video's packets
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.extradata, vs.time_base = cc.extradata, Fraction(1, 90000)
        aus = c.add_stream("aac", rate=sr)
        aus.layout = "mono"
        audio = []
        for k in range(0, len(click), 1024):
            f = av.AudioFrame.from_ndarray(click[None, k : k + 1024].numpy().copy(), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, round(skip / 24 * sr) + k, Fraction(1, sr)
            audio += aus.encode(f)
        audio += aus.encode(None)
        for p in packets[skip:]:
            p.stream, p.time_base = vs, Fraction(1, 24)
        for p in sorted(packets[skip:] + audio, key=lambda p: float(p.dts * p.time_base)):
            c.mux(p)
    frames = video.read_frames(src, 24.0).frames
    first = _decode_index(frames[0])
    assert first == 12  # the case under test: frames 5..11 do not decode
    heard = int(torch.argmax(video.read_audio_track(src, sr).abs())) / sr
    assert abs(heard - (20 - first) / 24) < 0.005
    out = video.mux_audio(src, click, sr, tmp_path / "out.mp4")
    assert [_decode_index(f) for f in video.read_frames(out.path, 24.0).frames] == [_decode_index(f) for f in frames]


def test_an_odd_sized_video_is_padded_not_scaled_when_re_encoded(tmp_path: Path) -> None:
    """H.264 takes no odd size: the re-encode adds a copy of the last column and row (as
    write_video pads) instead of stretching the picture by a pixel (which blurred every frame)."""
    src = tmp_path / "odd.webm"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libvpx", rate=25)
        s.width, s.height, s.pix_fmt = 47, 31, "yuv420p"
        img = np.zeros((31, 47, 3), np.uint8)
        img[:, 46] = 255  # the last column white
        _encode_all(c, s, (av.VideoFrame.from_ndarray(img, format="rgb24") for _ in range(10)))
    result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied
    out = video.read_frames(result.path, 25.0).frames[0].numpy().astype(int)
    assert out.shape == (32, 48, 3)
    white = np.where(out[..., 0].mean(0) > 128)[0].tolist()
    assert white == [46, 47]  # the column and its copy; scaled, it was [47] alone


def _y_cb_cr(path: Path) -> tuple[int, ...]:
    """Median Y', Cb, Cr of the first frame of an 8-bit 4:2:0 video, as stored."""
    with av.open(str(path)) as c:
        f = next(c.decode(c.streams.video[0]))
        return tuple(int(np.median(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width])) for p in f.planes[:3])


def test_an_odd_sized_re_encode_keeps_the_colour_matrix_of_an_even_sized_one(tmp_path: Path) -> None:
    """The padding goes through RGB: converted back with swscale's default BT.601 matrix, a BT.709
    source's red came out (92, 104, 198) at an odd size against (80, 112, 198) at an even one."""
    out = {}
    for w, h in ((64, 48), (65, 49)):
        src = tmp_path / f"red{w}.mkv"
        with av.open(str(src), "w") as c:
            s = c.add_stream("ffv1", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.colorspace, s.codec_context.color_range = 1, 1  # BT.709, limited range
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = (200, 40, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
            _encode_all(c, s, [frame])
        out[w] = _y_cb_cr(video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / f"out{w}.mp4").path)
    assert max(abs(a - b) for a, b in zip(out[64], out[65], strict=True)) <= 1, out


def test_a_picture_size_that_changes_mid_stream_is_scaled_when_re_encoded(tmp_path: Path) -> None:
    """A VP8 stream at 64x48, then 128x96 (WebRTC recordings): the later frames are scaled to the
    stream's size, as before the odd-size padding, not cropped to their top-left corner."""
    packets = []
    for part, (w, h) in enumerate(((64, 48), (128, 96))):
        cc = av.CodecContext.create("libvpx", "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = w, h, "yuv420p", Fraction(1, 25)
        img = np.zeros((h, w, 3), np.uint8)
        img[:, w // 2 :] = 255  # the right half white
        for i in range(10):
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            f.pts = part * 10 + i
            packets += [(p.pts, bytes(p), p.is_keyframe) for p in cc.encode(f)]
        packets += [(p.pts, bytes(p), p.is_keyframe) for p in cc.encode(None)]
    src = tmp_path / "switch.webm"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libvpx", rate=25)
        s.width, s.height, s.pix_fmt, s.time_base = 64, 48, "yuv420p", Fraction(1, 1000)
        for pts, data, key in packets:
            p = av.Packet(data)
            p.stream, p.pts, p.dts, p.time_base, p.is_keyframe = s, pts, pts, Fraction(1, 25), key
            c.mux(p)
    result = video.mux_audio(src, torch.zeros(22050), 22050, tmp_path / "out.mp4")
    assert not result.video_copied
    with av.open(str(result.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert len(frames) == 20
    for k in (0, 19):
        white = np.where(frames[k][..., 0].mean(0) > 128)[0].tolist()
        assert frames[k].shape[:2] == (48, 64) and white == list(range(32, 64)), (k, white)


def test_an_avi_with_gaps_is_whole_and_one_cut_short_is_truncated(tmp_path: Path) -> None:
    """FFmpeg's AVI muxer fills a variable-rate video's gaps with empty chunks that its header
    counts and no demuxer returns: 20 frames stored, 40 declared, refused as truncated before. The
    index (at the end of the file) counts the stored ones; a file cut short loses it, and is
    still refused."""
    gaps = tmp_path / "gaps.avi"
    with av.open(str(gaps), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        _encode_all(c, s, (_indexed_frame(i, p, Fraction(1, 25)) for i, p in enumerate([*range(10), *range(30, 40)])))
    with av.open(str(gaps)) as c:
        assert c.streams.video[0].frames == 40  # the case under test
    read = video.read_frames(gaps, 25.0)
    assert read.duration_s == 1.6 and [_decode_index(f) for f in read.frames] == [*range(10)] + [9] * 20 + [*range(10, 20)]
    full = _write_indexed(tmp_path / "full.avi", list(range(100)), Fraction(1, 25), Fraction(25), codec="mpeg4")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated or corrupt: the file holds only"):
        video.read_frames(cut, 25.0)


def test_a_re_encoded_slideshow_keeps_its_held_last_frame(tmp_path: Path) -> None:
    """Frames at 0, 1 and 2 s, the last shown for 3 s (a slideshow, FFV1 in Matroska): re-encoded
    for .mp4, the video ended at 3 s, 2 s before the 5 s audio, as every packet got the nominal
    frame length (and B-frames put another packet last)."""
    src = tmp_path / "slides.mkv"
    with av.open(str(src), "w") as c:
        s = c.add_stream("ffv1", rate=1)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        for i, (pts, dur) in enumerate(((0, 1000), (1000, 1000), (2000, 3000))):
            f = _indexed_frame(i, pts, Fraction(1, 1000))
            f.duration = dur
            for p in s.encode(f):
                p.duration = dur
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    assert video.read_frames(src, 10.0).duration_s == 5.0  # the case under test
    result = video.mux_audio(src, torch.zeros(22050 * 5), 22050, tmp_path / "out.mp4")
    assert not result.video_copied
    out = video.read_frames(result.path, 10.0)
    assert out.duration_s == 5.0
    assert [_decode_index(f) for f in out.frames[::10]] == [0, 1, 2, 2, 2]
