"""The synthetic world and its extractors: determinism, exact event timing in audio and video, features."""

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from controlfoley import video
from controlfoley.data.extractors import (
    TextExtractor,
    VideoExtractor,
    synthetic_clap,
    synthetic_clip,
    synthetic_features,
    synthetic_sync,
)
from controlfoley.data.sounds import SOUND_LENGTHS_S
from controlfoley.data.synthetic import (
    BACKGROUND,
    CLASS_COLORS,
    CLASS_NAMES,
    DEFAULT_DURATION_S,
    Event,
    SyntheticWorld,
    class_sound,
    render_long,
    write_clip_mp4,
)

WORLD = SyntheticWorld()
MEL_BASIS = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)


def _isolated(events: tuple[Event, ...], fps: float = 24.0) -> list[Event]:
    """Events with no other onset within one frame (so a frame shows one new object)."""
    frames = [e.frame(fps) for e in events]
    return [e for e, k in zip(events, frames, strict=True) if sum(abs(k - j) <= 1 for j in frames) == 1]


def test_world_parameters_and_shapes() -> None:
    clip = WORLD.clip(0)
    assert DEFAULT_DURATION_S == pytest.approx(5.944, abs=1e-3)
    assert clip.audio.shape == (512 * 256,) and clip.audio.dtype == torch.float32
    assert clip.frames.shape == (math.floor(DEFAULT_DURATION_S * 24), 64, 64, 3) and clip.frames.dtype == torch.uint8
    assert clip.fps == 24.0 and clip.sample_rate == 22050 and clip.duration_s == pytest.approx(DEFAULT_DURATION_S)
    assert clip.class_names == CLASS_NAMES and len(set(CLASS_NAMES)) == 8 and len(set(CLASS_COLORS)) == 8
    assert clip.tags == tuple(CLASS_NAMES[c] for c in clip.class_ids) and clip.prompt == ", ".join(clip.tags)
    assert clip.audio.abs().max() < 0.8 + 0.01
    assert SyntheticWorld(n_classes=6).class_names == CLASS_NAMES[:6]


def test_clips_are_deterministic_and_independent() -> None:
    a, b = WORLD.clip(7), SyntheticWorld(seed=0).clip(7)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio, b.audio) and a.events == b.events
    assert a.events == WORLD.events(7)
    other, reseeded = WORLD.clip(8), SyntheticWorld(seed=1).clip(7)
    assert other.events != a.events and not torch.equal(other.audio, a.audio)
    assert reseeded.events != a.events


def test_splits_are_disjoint() -> None:
    splits = {name: set(WORLD.split(name, 1000)) for name in ("train", "val", "test")}
    assert all(len(s) == 1000 for s in splits.values())
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    with pytest.raises(ValueError, match="splits are"):
        WORLD.split("dev", 3)


def test_event_constraints() -> None:
    for i in range(40):
        events = WORLD.events(i)
        assert 2 <= len(events) <= 5 and list(events) == sorted(events)
        for e in events:
            assert WORLD.head_s <= e.time_s <= DEFAULT_DURATION_S - WORLD.tail_s
            assert e.time_s * 22050 == pytest.approx(round(e.time_s * 22050), abs=1e-6)
        for x, y in zip(events, events[1:], strict=False):
            assert y.time_s - x.time_s >= WORLD.min_gap_any_s - 1e-9
        for c in {e.class_id for e in events}:
            times = [e.time_s for e in events if e.class_id == c]
            assert all(t1 - t0 >= 0.3 - 1e-9 for t0, t1 in zip(times, times[1:], strict=False))


def test_class_sounds_are_short_sharp_and_distinct() -> None:
    profiles = []
    for c in range(8):
        x = class_sound(c, 22050).numpy()
        assert 0.1 <= len(x) / 22050 <= 0.4 and len(x) == round(SOUND_LENGTHS_S[c] * 22050)
        assert np.abs(x).max() == pytest.approx(1.0, abs=1e-6)
        assert np.abs(x[:22]).max() > 0.3  # most of the attack within the first millisecond
        mag = torch.stft(torch.from_numpy(np.pad(x, (0, 2048))), 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
        mel = MEL_BASIS @ mag.numpy()  # 80 slaney mel bands up to 8 kHz, as the paper's front-end
        p = np.log(np.clip(mel[:, :8], 1e-5, None)).mean(1)
        profiles.append((p - p.mean()) / np.linalg.norm(p - p.mean()))
    sim = np.array(profiles) @ np.array(profiles).T
    assert (sim - np.eye(8)).max() < 0.8  # each sound has its own place in the mel spectrum
    from controlfoley.data import sounds

    first = class_sound(3)
    sounds._template.cache_clear()  # computed again, not the cached copy: the sound is a function of its class
    assert torch.equal(first, class_sound(3))


def test_audio_onsets_are_sample_exact() -> None:
    sr, noise = 22050, WORLD.noise_floor
    for i in range(6):
        clip = WORLD.clip(i)
        audio = clip.audio.numpy()
        for e in clip.events:
            o = e.sample(sr)
            assert np.abs(audio[o : o + 22]).max() > 20 * noise  # energy rises within 1 ms
            quiet_before = all(not (0 < e.time_s - f.time_s < SOUND_LENGTHS_S[f.class_id] + 0.01) for f in clip.events)
            if quiet_before:
                assert np.abs(audio[o - 44 : o]).max() < 6 * noise  # only the noise floor before it
            # the class template correlates best at lag 0 within +-2 ms
            tpl = class_sound(e.class_id, sr).numpy()[:1024]
            lags = range(-44, 45)
            scores = [float(np.dot(audio[o + lag : o + lag + len(tpl)], tpl)) for lag in lags]
            assert lags[int(np.argmax(scores))] == 0


def test_video_flash_is_frame_exact() -> None:
    for i in range(6):
        clip = WORLD.clip(i)
        for e in clip.events:
            k = e.frame(24.0)
            assert k / 24 <= e.time_s + 1e-6 < (k + 1) / 24
            pair = clip.frames[k - 1 : k + 1].int()
            full = (pair - torch.tensor(CLASS_COLORS[e.class_id])).abs().amax(-1) <= 2  # 2 h w
            assert full[1].sum() > 20  # the object at full brightness on the onset frame
            assert full[0].sum() == 0  # and not a frame earlier
        assert torch.equal(clip.frames[0].int(), torch.tensor(BACKGROUND).expand(64, 64, 3))  # nothing before head_s


def test_sync_features_respond_at_onset_frames() -> None:
    ex = synthetic_sync()
    for i in range(4):
        clip = WORLD.clip(i)
        f = ex(clip.frames)
        assert f.shape == (clip.frames.shape[0], 128) and f.dtype == torch.float32
        change = torch.cat([torch.zeros(1), (f[1:] - f[:-1]).norm(dim=1)])
        onsets = {e.frame(24.0) for e in clip.events}
        for k in onsets:  # a step up on the onset frame (the frame before may show an earlier fade)
            assert change[k] > 0.5 * change.max() and change[k] > 4 * change[k - 1]
        # frames where nothing appears and nothing fades show no change at all (the frame after a
        # fade ends still differs: a dark channel of a fading object rises back to the background)
        busy = {k + j for k in onsets for j in range(round(WORLD.fade_s * 24) + 2)}
        assert all(change[k] < 1e-6 for k in range(len(change)) if k not in busy)


def test_sync_onsets_survive_mp4_compression(tmp_path: Path) -> None:
    clip = WORLD.clip(2_000_000)
    path = write_clip_mp4(clip, tmp_path / "clip.mp4")
    decoded = video.read_frames(path, 24.0)
    assert decoded.frames.shape == clip.frames.shape
    assert video.read_audio_track(path, 22050).shape[0] == pytest.approx(clip.audio.shape[0], abs=1024)
    f = synthetic_sync()(decoded.frames)
    change = torch.cat([torch.zeros(1), (f[1:] - f[:-1]).norm(dim=1)])
    for e in _isolated(clip.events):
        k = e.frame(24.0)
        assert int(change[k - 2 : k + 1].argmax()) == 2  # the rise is on the onset frame, not before


def _onset_features(indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    ex, feats, labels = synthetic_sync(), [], []
    for i in indices:
        clip = WORLD.clip(i)
        for e in _isolated(clip.events):
            k = e.frame(24.0)
            feats.append(ex(clip.frames[k - 1 : k + 1])[1])  # a frame's row depends on it and the one before only
            labels.append(e.class_id)
    return torch.stack(feats), torch.tensor(labels)


def test_sync_features_recover_the_class() -> None:
    x, y = _onset_features(WORLD.split("train", 24))
    centroids = torch.stack([x[y == c].mean(0) for c in range(8)])
    xt, yt = _onset_features(WORLD.split("test", 10))
    accuracy = (torch.cdist(xt, centroids).argmin(1) == yt).float().mean()
    assert len(yt) >= 20 and accuracy > 0.9


def _frame_with(colour: tuple[int, int, int], y: int, x: int) -> torch.Tensor:
    frame = torch.tensor(BACKGROUND, dtype=torch.uint8).expand(64, 64, 3).clone()
    frame[y : y + 12, x : x + 12] = torch.tensor(colour, dtype=torch.uint8)
    return frame


def test_clip_features_are_semantic_not_positional() -> None:
    ex = synthetic_clip()
    frames = torch.stack([_frame_with(CLASS_COLORS[0], 5, 5), _frame_with(CLASS_COLORS[0], 40, 30), _frame_with(CLASS_COLORS[2], 5, 5)])
    f = ex(frames)
    assert f.shape == (3, 64) and ex.fps == 8.0 and ex.output_key == "clip"
    assert torch.allclose(f[0], f[1], atol=1e-6)  # same object elsewhere: same feature
    assert (f[0] - f[2]).norm() > 0.1


def test_tag_encoder() -> None:
    clap = synthetic_clap()
    e = clap.encode_text(["bell, thud", " Thud,BELL ", "bell", ""])
    assert e.shape == (4, 64) and torch.allclose(e[0], e[1])
    assert torch.allclose(e[:3].norm(dim=1), torch.ones(3)) and torch.equal(e[3], torch.zeros(64))
    assert torch.allclose(e[0], clap.encode_tags([2, 0])) and torch.allclose(clap(["bell"])[0], clap.encode_tags([2]))
    assert float(e[0] @ e[2]) < 0.99
    with pytest.raises(ValueError, match="known tags: thud, snare"):
        clap.encode_text(["bel"])
    with pytest.raises(ValueError, match="out of range"):
        clap.encode_tags([8])


def test_extractors_follow_the_interface_and_are_fixed() -> None:
    from controlfoley import EXTRACTORS

    assert {"synthetic_sync", "synthetic_clip", "synthetic_clap"} <= set(EXTRACTORS.names())
    sync = EXTRACTORS.build("synthetic_sync", dim=32, seed=5)
    semantic, clap = EXTRACTORS.build("synthetic_clip"), EXTRACTORS.build("synthetic_clap", dim=16)
    assert isinstance(sync, VideoExtractor) and isinstance(semantic, VideoExtractor) and isinstance(clap, TextExtractor)
    assert (sync.name, sync.output_key, sync.fps, sync.dim) == ("synthetic_sync", "sync", 24.0, 32)
    assert (semantic.name, semantic.output_key, semantic.fps, semantic.dim) == ("synthetic_clip", "clip", 8.0, 64)
    assert (clap.name, clap.output_key, clap.fps, clap.dim) == ("synthetic_clap", "clap", None, 16)
    frames = WORLD.clip(1).frames[:30]
    assert torch.equal(sync(frames), synthetic_sync(dim=32, seed=5)(frames))
    assert not torch.equal(sync(frames), synthetic_sync(dim=32, seed=6)(frames))
    feats = synthetic_features(WORLD.clip(1))
    assert feats["sync"].shape == (142, 128) and feats["clip"].shape == (47, 64) and feats["clap"].shape == (64,)


def test_long_clips() -> None:
    clip = render_long(WORLD, 2_000_000, 40.0)
    assert clip.frames.shape[0] == 960 and clip.audio.shape[0] == 40 * 22050
    assert len(clip.events) >= round(2 * 40 / DEFAULT_DURATION_S) and clip.events[-1].time_s <= 40 - WORLD.tail_s
    assert clip.events == WORLD.events(2_000_000, duration_s=40.0)
    with pytest.raises(ValueError, match="longer"):
        render_long(WORLD, 0, 3.0)


def test_a_repeated_tag_counts_once():
    from controlfoley import EXTRACTORS

    tags = EXTRACTORS.build("synthetic_clap")
    a, b = tags.tags[0], tags.tags[1]
    once, twice = tags.encode_text([f"{a}, {b}", f"{a}, {b}, {a}, {a}"])
    assert torch.allclose(once, twice)
    assert torch.allclose(tags.encode_tags([0, 1]), tags.encode_tags([0, 0, 0, 1]))
    assert not torch.allclose(once, tags.encode_text([a])[0])
