"""Audio: mel front-ends (parity with librosa), wav I/O, vocoders and their checkpoint loaders."""

import json
import math
import sys
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from controlfoley import VOCODERS
from controlfoley.audio.hifigan import HifiGanGenerator, hifigan_vocoder
from controlfoley.audio.io import load_audio, save_audio
from controlfoley.audio.mel import HifiGanMel, SpecVQGANMel, hifigan_mel, specvqgan_mel
from controlfoley.audio.melgan import MelGANGenerator, melgan_vocoder
from controlfoley.audio.vocoders import GriffinLimVocoder, RandomWeightsWarning, Vocoder, bigvgan_vocoder, griffinlim_vocoder, missing_weights
from controlfoley.config import ConfigError
from controlfoley.errors import CheckpointError, MediaError, MissingDependencyError, ShapeError

# these tests build GAN vocoders without weights on purpose (then save and reload them)
pytestmark = pytest.mark.filterwarnings("ignore::controlfoley.errors.RandomWeightsWarning")

SR = 22050


def _noise(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = 0.1 * rng.standard_normal(n)
    y[n // 3 : n // 3 + 200] += 0.6 * np.sin(np.arange(200) * 0.3)  # a loud burst: exercises the top of the range
    return y.astype(np.float32)


def _tiny_hifigan_mel() -> HifiGanMel:
    return HifiGanMel(sample_rate=8000, n_fft=64, hop_length=16, win_length=64, n_mels=8, fmax=4000.0)


_TINY_HIFIGAN = dict(
    upsample_rates=(4, 4),
    upsample_kernel_sizes=(8, 8),
    upsample_initial_channel=16,
    resblock_kernel_sizes=(3, 5),
    resblock_dilation_sizes=((1, 3), (1, 2)),
)


# -- mel front-ends ----------------------------------------------------------------------------------
def test_hifigan_mel_matches_librosa_recipe() -> None:
    y = _noise(SR)
    padded = np.pad(y.astype(np.float64), (384, 384), mode="reflect")
    spec = librosa.stft(padded, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=False)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    basis = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
    ref = np.log(np.maximum(basis @ mag, 1e-5))
    fe = hifigan_mel()
    ours = fe.log_mel(torch.from_numpy(y)).numpy()
    assert ours.shape == ref.shape == (80, SR // 256)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    expected = 2 * (ref - math.log(1e-5)) / (2.5 - math.log(1e-5)) - 1
    np.testing.assert_allclose(fe(torch.from_numpy(y)[None])[0].numpy(), expected, atol=1e-4)


def test_specvqgan_mel_matches_librosa_recipe() -> None:
    y = _noise(SR, seed=1)
    spec = np.abs(librosa.stft(y.astype(np.float64), n_fft=1024, hop_length=256, win_length=1024, center=True, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=125.0, fmax=7600.0)
    unit = np.clip((20 * np.log10(np.maximum(basis @ spec, 1e-5)) - 20 + 100) / 100, 0, 1)
    fe = specvqgan_mel()
    ours = fe(torch.from_numpy(y)).numpy()
    assert ours.shape == (80, 1 + SR // 256) and fe.n_frames(SR) == ours.shape[1]
    np.testing.assert_allclose(ours, 2 * unit - 1, atol=1e-4)
    np.testing.assert_allclose(fe.to_unit(torch.from_numpy(ours)).numpy(), unit, atol=1e-4)


def test_hifigan_mel_range() -> None:
    fe = HifiGanMel()
    assert torch.equal(fe(torch.zeros(1, 4096)), torch.full((1, 80, 16), -1.0))  # the clamp floor is exactly -1
    t = torch.arange(SR) / SR
    square = torch.sign(torch.sin(2 * math.pi * 50 * t))  # among the loudest mels full-scale audio can give
    out = fe(square[None])
    assert out.max() < 1.0 and out.max() > 0.9
    assert fe.sample_rate == SR and fe.hop_length == 256 and fe.n_mels == 80 and fe.n_fft == 1024
    assert fe.n_samples(848) == 217088 and fe.n_frames(217088) == 848
    assert not fe.state_dict()  # filterbank and window are derived, never checkpointed


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=385, max_value=6000))
def test_frame_counts(n: int) -> None:
    wav = torch.rand(2, n) * 2 - 1
    hifi, vq = HifiGanMel(), SpecVQGANMel()
    assert hifi(wav).shape == (2, 80, n // 256) and hifi.n_frames(n) == n // 256
    assert vq.n_frames(n) == 1 + n // 256
    if n >= vq.min_samples:  # 513: reflect padding of n_fft / 2
        assert vq(wav).shape == (2, 80, 1 + n // 256)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 20.0))
def test_normalize_denormalize_inverse(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    hifi, vq = HifiGanMel(), SpecVQGANMel()
    ln = (torch.rand(2, 80, 7, generator=g, dtype=torch.float64) - 0.5) * scale
    torch.testing.assert_close(hifi.denormalize(hifi.normalize(ln)), ln)  # unclipped: exact on any value
    x = torch.rand(2, 80, 7, generator=g, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(vq.normalize(vq.denormalize(x)), x)  # clipped: exact inside [-1, 1]
    assert vq.normalize(ln).abs().max() <= 1.0


@pytest.mark.parametrize(
    "wav, match",
    [
        (torch.zeros(1, 1, 2048), "waveform"),
        (torch.zeros(2048, dtype=torch.int16), "float"),
        (torch.tensor([0.0] * 1000 + [float("nan")] * 1000), "NaN"),
        (torch.zeros(100), "at least 385"),
    ],
)
def test_mel_rejects_bad_input(wav: torch.Tensor, match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        HifiGanMel()(wav)


def test_mel_builder_checks() -> None:
    with pytest.raises(ConfigError, match="even"):
        hifigan_mel(n_fft=1024, hop_length=255)
    with pytest.raises(ConfigError, match="fmax"):
        hifigan_mel(fmax=20000.0)


def test_registered_names() -> None:
    from controlfoley._registry import MEL_FRONTENDS, VOCODERS

    mel_names, voc_names = set(MEL_FRONTENDS.names()), set(VOCODERS.names())
    assert {"hifigan", "specvqgan"} <= mel_names
    assert {"griffinlim", "hifigan", "melgan", "bigvgan"} <= voc_names
    fe = MEL_FRONTENDS.build("hifigan", n_mels=64)
    assert isinstance(VOCODERS.build("griffinlim", mel=fe, n_iter=2), Vocoder)


# -- audio I/O ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_save_load_roundtrip(tmp_path, ext: str) -> None:
    wav = torch.from_numpy(_noise(4000))
    path = save_audio(tmp_path / f"a{ext}", wav, SR)
    back = load_audio(path, SR)
    assert back.shape == wav.shape and back.dtype == torch.float32
    torch.testing.assert_close(back, wav, atol=1 / 32767, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == [f"a{ext}"]  # no temporary file left behind


def test_load_mono_stereo_and_resample(tmp_path) -> None:
    stereo = torch.stack([torch.full((16000,), 0.5), torch.full((16000,), -0.25)])
    path = save_audio(tmp_path / "s.wav", stereo, 16000, subtype="FLOAT")
    torch.testing.assert_close(load_audio(path, 16000, mono=False), stereo)
    mono = load_audio(path, 16000)
    torch.testing.assert_close(mono, torch.full((16000,), 0.125))
    resampled = load_audio(path, SR)
    assert resampled.shape == (SR,)
    assert abs(float(resampled[SR // 4 : 3 * SR // 4].mean()) - 0.125) < 1e-3


def test_save_clips_pcm(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"peaks at 3, past full scale .* clips 200 of its 300 samples .* normalise it first \(wav / wav.abs\(\).max\(\)\)"):
        path = save_audio(tmp_path / "c.wav", torch.tensor([2.0, -3.0, 0.5] * 100), SR)
    back = load_audio(path, SR)
    assert back.max() <= 1.0 and back.min() >= -1.0 and back[0] > 0.99  # clipped, not wrapped around


def test_save_audio_warns_only_where_clipping_is_audible(tmp_path) -> None:
    """A peak of 5 was hard-clipped to a square wave without a word; a rounding's overshoot
    (1.005) or float samples (kept as they are) say nothing."""
    with pytest.warns(UserWarning, match="peaks at 5") as caught:
        save_audio(tmp_path / "loud.flac", torch.sin(torch.arange(SR) / 10.0) * 5.0, SR)
    assert caught[0].filename == __file__  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_audio(tmp_path / "edge.wav", torch.tensor([1.005, -0.5] * 50), SR)
        save_audio(tmp_path / "float.wav", torch.tensor([3.0, -0.5] * 50), SR, subtype="FLOAT")


def test_save_and_load_audio_name_bad_arguments(tmp_path) -> None:
    """[samples, channels] was written as 22050 channels ("Format not recognised"), numpy arrays
    failed on .dim(), a str sample rate on a comparison; each is named now (numpy is taken)."""
    import inspect

    save, load = inspect.unwrap(save_audio), inspect.unwrap(load_audio)  # past the suite's runtime type checks: what users meet
    with pytest.raises(ShapeError, match=r"got shape \(22050, 2\): this looks like \[samples, channels\] \(soundfile's layout\); pass wav.T"):
        save(tmp_path / "st.wav", torch.zeros(SR, 2), SR)
    stereo = torch.stack([torch.full((100,), 0.5), torch.full((100,), -0.25)])
    torch.testing.assert_close(load_audio(save(tmp_path / "np.wav", stereo.numpy().astype(np.float64), SR, "FLOAT"), SR, mono=False), stereo)
    torch.testing.assert_close(load_audio(save(tmp_path / "t.wav", stereo.T.numpy().T, SR, "FLOAT"), SR, mono=False), stereo)  # a non-contiguous array
    with pytest.raises(ShapeError, match="torch tensor or numpy array, got list"):
        save(tmp_path / "l.wav", [0.0, 0.1], SR)
    for rate in ("22050", 22050.5, True, 0, -1, None):
        with pytest.raises(ConfigError, match=r"save_audio: sample_rate is in Hz, a positive whole number such as 22050; got"):
            save(tmp_path / "r.wav", stereo, rate)
        with pytest.raises(ConfigError, match=r"load_audio: sample_rate is in Hz, a positive whole number"):
            load(tmp_path / "np.wav", rate)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np.wav", "t.wav"]
    assert load(tmp_path / "np.wav", np.int64(SR)).shape == (100,)  # numpy ints are ints
    assert load(tmp_path / "np.wav", float(SR)).shape == (100,)  # and a whole float (librosa's rates), as before


def test_io_errors(tmp_path) -> None:
    with pytest.raises(MediaError, match="not found"):
        load_audio(tmp_path / "missing.wav", SR)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(MediaError, match="cannot decode"):
        load_audio(tmp_path / "bad.wav", SR)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(MediaError, match="cannot decode"):
        load_audio(tmp_path / "zero.wav", SR)
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), dtype=np.float32), SR)
    with pytest.raises(MediaError, match="no samples"):
        load_audio(tmp_path / "empty.wav", SR)
    with pytest.raises(MediaError, match=r"unknown extension '\.mp3'"):
        save_audio(tmp_path / "x.mp3", torch.zeros(100), SR)
    with pytest.raises(MediaError, match="non-empty"):
        save_audio(tmp_path / "x.wav", torch.zeros(2, 2, 100), SR)
    assert not (tmp_path / "x.wav").exists()


# -- Griffin-Lim -------------------------------------------------------------------------------------
@pytest.mark.parametrize("inverse", ["nnls", "pinv"])
def test_griffinlim_click_train_timing(inverse: str) -> None:
    fe = HifiGanMel()
    clicks = [2000, 7777, 13000, 19001]
    y = torch.zeros(22016)
    for c in clicks:
        y[c : c + 8] = 0.9
    voc = griffinlim_vocoder(mel=fe, inverse=inverse)
    mel = fe(y[None])
    out = voc(mel)
    assert out.shape == (1, fe.n_samples(mel.shape[-1])) == (1, 22016)
    env = np.convolve(np.abs(out[0].numpy()), np.ones(44) / 44, mode="same")  # 2 ms smoothing
    errors_ms = []
    for c in clicks:
        win = env[c - 1100 : c + 1100]  # +-50 ms
        onset = int(np.argmax(win > 0.5 * win.max())) + c - 1100
        errors_ms.append(abs(onset - c) / SR * 1000)
    assert max(errors_ms) < 12.0, errors_ms
    assert np.mean(errors_ms) < 3.0, errors_ms  # a half-hop framing error would be ~5.8 ms everywhere
    torch.testing.assert_close(voc(mel), out, rtol=0, atol=0)  # deterministic


def test_griffinlim_specvqgan_length() -> None:
    fe = SpecVQGANMel()
    mel = fe(torch.from_numpy(_noise(5000))[None])
    out = GriffinLimVocoder(fe, n_iter=4)(mel)
    assert out.shape == (1, mel.shape[-1] * 256) and torch.isfinite(out).all()


# -- HiFi-GAN ----------------------------------------------------------------------------------------
def test_hifigan_v1_layout() -> None:
    gen = HifiGanGenerator(
        n_mels=80,
        upsample_rates=(8, 8, 2, 2),
        upsample_kernel_sizes=(16, 16, 4, 4),
        upsample_initial_channel=512,
        resblock="1",
        resblock_kernel_sizes=(3, 7, 11),
        resblock_dilation_sizes=((1, 3, 5),) * 3,
    )
    sd = gen.state_dict()
    assert len(sd) == 234
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == 13.94
    assert sd["conv_pre.weight_v"].shape == (512, 80, 7) and sd["ups.0.weight_g"].shape == (512, 1, 1)
    assert "resblocks.11.convs2.2.weight_g" in sd and sd["conv_post.weight_v"].shape == (1, 32, 7)


def _tiny_hifigan(checkpoint: str | None = None, **kw) -> torch.nn.Module:
    return hifigan_vocoder(mel=_tiny_hifigan_mel(), checkpoint=checkpoint, **_TINY_HIFIGAN, **kw)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_hifigan_official_checkpoint_roundtrip(tmp_path, resblock: str) -> None:
    torch.manual_seed(0)
    voc = _tiny_hifigan(resblock=resblock)
    sd = voc.generator.state_dict()
    torch.save({"generator": sd}, tmp_path / "g_00000001")
    parametrized = {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(".weight_v", ".parametrizations.weight.original1"): v
        for k, v in sd.items()
    }
    torch.save({"generator": parametrized}, tmp_path / "g_new")
    mel = torch.rand(2, 8, 12) * 2 - 1
    ref = voc(mel)
    assert ref.shape == (2, 12 * 16)
    for name in ("g_00000001", "g_new"):
        torch.manual_seed(1)  # different init: only the file can make the outputs equal
        loaded = _tiny_hifigan(str(tmp_path / name), resblock=resblock)
        assert torch.equal(loaded(mel), ref)


def test_hifigan_generator_files_in_other_namings_load_to_the_same_output(tmp_path) -> None:
    """A DDP `module.` prefix, fp16 tensors, and weight norm removed before saving (a plain
    `weight` per conv, as `remove_weight_norm` exports for inference): all the same generator."""
    torch.manual_seed(0)
    voc = _tiny_hifigan()
    sd = voc.generator.state_dict()
    mel = torch.rand(2, 8, 12) * 2 - 1
    ref = voc(mel)
    plain = {}
    for k, v in sd.items():
        if k.endswith(".weight_v"):
            plain[k[: -len("_v")]] = voc.generator.get_submodule(k[: -len(".weight_v")]).weight.detach()
        elif not k.endswith(".weight_g"):
            plain[k] = v
    files = {
        "ddp": {"generator": {f"module.{k}": v for k, v in sd.items()}},
        "fp16": {"generator": {k: v.half() for k, v in sd.items()}},
        "folded": {"generator": plain},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        torch.manual_seed(1)  # another init: only the file can make the outputs agree
        out = _tiny_hifigan(str(tmp_path / name))(mel)
        tol = 5e-3 if name == "fp16" else 1e-5
        assert torch.allclose(out, ref, atol=tol), name


def test_a_weights_file_for_another_part_is_named_with_where_it_loads(tmp_path) -> None:
    """A MelGAN file given as HiFi-GAN (and back), HiFi-GAN's discriminator file (do_...) instead of
    its generator, and a vocoder file given to from_pretrained: the error says what the file is and
    the call that loads it, not "build the vocoder with another architecture"."""
    from controlfoley import from_pretrained

    torch.manual_seed(0)
    fe = SpecVQGANMel(sample_rate=8000, n_fft=64, hop_length=16, win_length=64, n_mels=8, fmin=125.0, fmax=3000.0)
    melgan = melgan_vocoder(mel=fe, ngf=4, n_residual_layers=2, ratios=(4, 4))
    torch.save(melgan.generator.state_dict(), tmp_path / "best_netG.pt")
    torch.save({"generator": _tiny_hifigan().generator.state_dict()}, tmp_path / "g_00000001")
    with pytest.raises(CheckpointError, match=r"best_netG.pt is a MelGAN generator \(a vocoder\), not a HiFi-GAN generator.*'name': 'melgan', 'checkpoint'"):
        _tiny_hifigan(str(tmp_path / "best_netG.pt"))
    with pytest.raises(CheckpointError, match=r"g_00000001 is a HiFi-GAN generator \(a vocoder\), not a MelGAN generator.*'name': 'hifigan', 'checkpoint'"):
        melgan_vocoder(mel=fe, checkpoint=str(tmp_path / "g_00000001"), ngf=4, n_residual_layers=2, ratios=(4, 4))
    torch.save({"mpd": {"w": torch.zeros(1)}, "msd": {"w": torch.zeros(1)}, "optim_g": {}, "optim_d": {}, "steps": 1, "epoch": 0}, tmp_path / "do_00000001")
    with pytest.raises(CheckpointError, match=r"discriminator and optimizer state.*not its generator; give the generator file saved beside it instead \(g_<step>"):
        _tiny_hifigan(str(tmp_path / "do_00000001"))
    with pytest.raises(CheckpointError, match=r"g_00000001 is a PyTorch pickle, not a controlfoley \(safetensors\) checkpoint: it is a HiFi-GAN generator"):
        from_pretrained(tmp_path / "g_00000001")


def test_hifigan_checkpoint_mismatch_and_trust(tmp_path) -> None:
    sd = _tiny_hifigan().generator.state_dict()
    extra = {**sd, "conv_post.extra": torch.zeros(1)}
    torch.save({"generator": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"holds every tensor of the HiFi-GAN generator and 1 more: \['conv_post.extra'\]; drop those keys"):
        _tiny_hifigan(str(tmp_path / "extra.pt"))
    # a bigger build's layers (a third dilation per resblock) are not state to drop: build as the file was
    bigger = hifigan_vocoder(mel=_tiny_hifigan_mel(), **{**_TINY_HIFIGAN, "resblock_dilation_sizes": ((1, 3, 5), (1, 2, 4))}).generator.state_dict()
    torch.save({"generator": bigger}, tmp_path / "bigger.pt")
    with pytest.raises(CheckpointError, match=r"bigger.pt holds every tensor of the HiFi-GAN generator and \d+ more, inside its modules: \['resblocks.0.convs1.2.bias'.*"
                       r"the file's network has layers this one was built without\. Build the vocoder with the architecture") as err:  # fmt: skip
        _tiny_hifigan(str(tmp_path / "bigger.pt"))
    assert "drop those keys" not in str(err.value)
    torch.save({"generator": {**bigger, "model_ema.decay": torch.tensor(0.9)}}, tmp_path / "bigger_ema.pt")  # layers and other state
    with pytest.raises(CheckpointError, match=r"and 25 more, inside its modules: \[.*\] \(\+16 more\) and 1 other key\(s\): the file's network has layers"):
        _tiny_hifigan(str(tmp_path / "bigger_ema.pt"))
    fewer = {k: v for k, v in sd.items() if k != "ups.1.bias"}
    torch.save({"generator": fewer}, tmp_path / "fewer.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['ups.1.bias'\]"):
        _tiny_hifigan(str(tmp_path / "fewer.pt"))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        hifigan_vocoder(mel=_tiny_hifigan_mel(), checkpoint=str(tmp_path / "fewer.pt"), **{**_TINY_HIFIGAN, "upsample_initial_channel": 32})
    torch.save({"generator": sd, "meta": ConfigError("a custom class")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="trust"):
        _tiny_hifigan(str(tmp_path / "pickled.pt"))
    trusted = _tiny_hifigan(str(tmp_path / "pickled.pt"), trust_checkpoint=True).generator.state_dict()
    assert trusted.keys() == sd.keys() and all(torch.equal(trusted[k], sd[k]) for k in sd)  # its weights, not a new init
    with pytest.raises(CheckpointError, match="not found"):
        _tiny_hifigan(str(tmp_path / "nope.pt"))


def test_untrusted_pickle_message_names_the_real_options(tmp_path) -> None:
    torch.save({"generator": _tiny_hifigan().generator.state_dict(), "meta": ConfigError("a custom class")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError) as err:
        _tiny_hifigan(str(tmp_path / "pickled.pt"))
    msg = str(err.value)
    assert "\x1b" not in msg and "\n" not in msg  # torch bolds part of its own message with terminal codes
    assert "--trust-checkpoint" not in msg  # no such flag
    assert "trust_checkpoint=True" in msg and "--vocoder hifigan,checkpoint=PATH,trust_checkpoint=true" in msg
    assert "Unsupported global" in msg  # torch's actual reason, not its "you have two options" preamble


@pytest.mark.parametrize("name", ["hifigan", "melgan"])
def test_trained_vocoders_without_weights_build_with_a_warning(tmp_path, name: str) -> None:
    if name == "hifigan":
        mel, kw = _tiny_hifigan_mel(), _TINY_HIFIGAN
    else:
        mel, kw = SpecVQGANMel(sample_rate=8000, n_fft=64, hop_length=16, win_length=64, n_mels=8, fmin=125.0, fmax=3000.0), dict(ngf=4, n_residual_layers=2, ratios=(4, 4))
    with pytest.warns(RandomWeightsWarning, match=f"{name}.*random.*checkpoint=PATH"):
        voc = VOCODERS.build(name, mel=mel, **kw)  # still buildable: tests and training start from random weights
    assert voc(torch.rand(1, 8, 9) * 2 - 1).shape == (1, 9 * 16)
    torch.save(voc.generator.state_dict(), tmp_path / "g.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with weights, and for Griffin-Lim, nothing to warn about
        VOCODERS.build(name, mel=mel, checkpoint=str(tmp_path / "g.pt"), **kw)
        VOCODERS.build("griffinlim", mel=HifiGanMel())
    assert missing_weights("bigvgan", {}) == "folder" and missing_weights("hifigan", {"checkpoint": "g.pt"}) is None
    assert missing_weights("griffinlim", {}) is None


def test_hifigan_backward_and_pairing() -> None:
    voc = _tiny_hifigan()
    mel = (torch.rand(1, 8, 5) * 2 - 1).requires_grad_()
    voc(mel).square().sum().backward()
    assert mel.grad is not None and torch.isfinite(mel.grad).all()
    assert voc.generator.conv_pre.weight_g.grad is not None
    with pytest.raises(ConfigError, match="'hifigan' mel front-end"):
        hifigan_vocoder(mel=SpecVQGANMel())
    with pytest.raises(ConfigError, match="upsamples by 256"):
        hifigan_vocoder(mel=_tiny_hifigan_mel())


# -- MelGAN ------------------------------------------------------------------------------------------
def test_melgan_specvqgan_layout() -> None:
    sd = MelGANGenerator(n_mels=80, ngf=32, n_residual_layers=3, ratios=(8, 8, 2, 2)).state_dict()
    assert len(sd) == 126
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == 4.27
    assert sd["model.1.weight_v"].shape == (512, 80, 7) and sd["model.3.weight_g"].shape == (512, 1, 1)
    assert "model.4.block.2.weight_v" in sd and "model.4.shortcut.bias" in sd and "model.24.weight_g" in sd
    assert all(k.startswith("model.") and k.rsplit(".", 1)[1] in ("weight_g", "weight_v", "bias") for k in sd)


def test_melgan_checkpoint_roundtrip(tmp_path) -> None:
    fe = SpecVQGANMel(sample_rate=8000, n_fft=64, hop_length=16, win_length=64, n_mels=8, fmin=125.0, fmax=3000.0)
    kw = dict(ngf=4, n_residual_layers=2, ratios=(4, 4))
    torch.manual_seed(0)
    voc = melgan_vocoder(mel=fe, **kw)
    torch.save(voc.generator.state_dict(), tmp_path / "best_netG.pt")  # SpecVQGAN ships a plain state dict
    mel = torch.rand(2, 8, 9) * 2 - 1
    torch.manual_seed(1)
    loaded = melgan_vocoder(mel=fe, checkpoint=str(tmp_path / "best_netG.pt"), **kw)
    out = loaded(mel)
    assert out.shape == (2, 9 * 16) and torch.equal(out, voc(mel))
    with pytest.raises(CheckpointError, match="missing keys"):
        melgan_vocoder(mel=fe, checkpoint=str(tmp_path / "best_netG.pt"), ngf=4, n_residual_layers=3, ratios=(4, 4))
    with pytest.raises(ConfigError, match="'specvqgan' mel front-end"):
        melgan_vocoder(mel=HifiGanMel())


# -- BigVGAN (the package is optional and not installed here: error paths only) --------------------
def _bigvgan_folder(tmp_path, **overrides) -> str:
    cfg = {"num_mels": 80, "sampling_rate": 22050, "hop_size": 256, "n_fft": 1024, "win_size": 1024, "fmin": 0, "fmax": 8000}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **overrides}))
    torch.save({"generator": {}}, tmp_path / "bigvgan_generator.pt")
    return str(tmp_path)


def test_bigvgan_error_paths(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="folder not found"):
        bigvgan_vocoder(mel=HifiGanMel(), folder=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json, bigvgan_generator.pt"):
        bigvgan_vocoder(mel=HifiGanMel(), folder=str(tmp_path / "empty"))
    folder = _bigvgan_folder(tmp_path, fmax=None)
    with pytest.raises(ConfigError, match="fmax=None vs mel fmax=8000.0"):
        bigvgan_vocoder(mel=HifiGanMel(), folder=folder)
    with pytest.raises(ConfigError, match="'hifigan' mel front-end"):
        bigvgan_vocoder(mel=SpecVQGANMel(), folder=folder)
    try:
        import bigvgan  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"controlfoley\[bigvgan\]"):
            bigvgan_vocoder(mel=HifiGanMel(fmax=None), folder=folder)


def test_a_broken_pickle_is_called_broken_not_untrusted(tmp_path) -> None:
    """Truncated, corrupt or non-checkpoint files are named as such; unpickling them fully (trust)
    is never suggested, since it could not help."""
    from controlfoley._legacy import load_legacy_checkpoint

    torch.save({"a": torch.zeros(3)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello\n")
    torch.save({"a": torch.zeros(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "oldcut.pt").write_bytes((tmp_path / "old.pt").read_bytes()[:200])
    for name in ("cut.pt", "text.pt", "oldcut.pt"):
        with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint: truncated, corrupt or another format") as err:
            load_legacy_checkpoint(tmp_path / name)
        assert "trust" not in str(err.value), name
    assert torch.equal(load_legacy_checkpoint(tmp_path / "old.pt")["a"], torch.zeros(3))


def test_a_safetensors_file_loads_as_its_tensors_whatever_torch_load_makes_of_it(tmp_path, monkeypatch) -> None:
    """torch 2.14's torch.load reads a safetensors file; 2.11's raised "Weights only load failed", so a
    controlfoley checkpoint given as a SpecVQGAN codebook was called a corrupt pickle there (seen on
    the H200 image) instead of being named. The loader reads safetensors itself now; torch.load as
    2.11 has it here. A cut safetensors file is called that."""
    import pickle

    from safetensors.torch import save_file

    from controlfoley._legacy import load_legacy_checkpoint

    def old_torch_load(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed. ...")

    save_file({"a": torch.arange(3.0)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    monkeypatch.setattr(torch, "load", old_torch_load)
    assert torch.equal(load_legacy_checkpoint(tmp_path / "w.safetensors")["a"], torch.arange(3.0))
    # a vocoder's .safetensors went to safetensors directly: a cut one was a raw SafetensorError without the path
    sd = _tiny_hifigan().generator.state_dict()
    save_file(sd, str(tmp_path / "g.safetensors"))
    (tmp_path / "g_cut.safetensors").write_bytes((tmp_path / "g.safetensors").read_bytes()[:-100])
    assert _tiny_hifigan(str(tmp_path / "g.safetensors")).generator.state_dict().keys() == sd.keys()
    with pytest.raises(CheckpointError, match=r"g_cut.safetensors is not a readable safetensors file: truncated or corrupt"):
        _tiny_hifigan(str(tmp_path / "g_cut.safetensors"))
    (tmp_path / "g_head.safetensors").write_bytes((tmp_path / "g.safetensors").read_bytes()[:5])  # cut inside its header
    with pytest.raises(CheckpointError, match=r"g_head.safetensors is not a readable safetensors file: truncated or corrupt"):
        _tiny_hifigan(str(tmp_path / "g_head.safetensors"))
    with pytest.raises(CheckpointError, match=r"cut.safetensors is not a readable safetensors file: truncated or corrupt"):
        load_legacy_checkpoint(tmp_path / "cut.safetensors")
    from controlfoley import build_model
    from controlfoley.tokenizers.specvqgan import load_official_checkpoint

    ours = build_model("specmaskfoley_tiny").save(tmp_path / "ours.safetensors")
    with pytest.raises(CheckpointError, match=r"ours.safetensors is a controlfoley model checkpoint, not an official SpecVQGAN codebook"):
        load_official_checkpoint(ours)


def test_a_torchscript_archive_is_named_as_one(tmp_path) -> None:
    """OpenAI's released CLIP .pt files are TorchScript archives: the loader called one 'not a readable
    PyTorch checkpoint: truncated, corrupt ... re-download or re-export it', which no download fixes (a
    review of the loaders); torch.load also warned it was dispatching to torch.jit.load."""
    import warnings

    from controlfoley._legacy import load_legacy_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "clip.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dispatch warning: torch.load is not called on it
        with pytest.raises(CheckpointError, match=r"clip.pt is a TorchScript archive \(torch.jit.save\), not a state dict: .*torch.jit.load.*state_dict\(\)"):
            load_legacy_checkpoint(tmp_path / "clip.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "plain.pt")  # a state dict's zip (data.pkl, no code/) is not taken for one
    assert torch.equal(load_legacy_checkpoint(tmp_path / "plain.pt")["a"], torch.zeros(2))


def test_identify_and_adapt_names_directly() -> None:
    """What a file is, from its keys (two controlfoley parts, a DDP prefix on a HiFi-GAN file), and
    the parametrised weight-norm names landing on the classic ones the right way round (original0
    is the magnitude g, original1 the direction v)."""
    from controlfoley._ckpt_kind import adapt_names, identify

    assert identify(["tokenizer.encoder.w", "mel.fb"]).key == "controlfoley"
    assert identify(["module.conv_pre.weight_v", "module.resblocks.0.convs1.0.weight_v"]).key == "hifigan"
    own = {"conv.weight_g": torch.zeros(2, 1, 1), "conv.weight_v": torch.zeros(2, 3, 4)}
    g, v = torch.rand(2, 1, 1), torch.rand(2, 3, 4)
    got = adapt_names({"conv.parametrizations.weight.original0": g, "conv.parametrizations.weight.original1": v}, own)
    assert got.keys() == own.keys() and torch.equal(got["conv.weight_g"], g) and torch.equal(got["conv.weight_v"], v)
    back = adapt_names({"conv.weight_g": g, "conv.weight_v": v}, {"conv.parametrizations.weight.original0": g, "conv.parametrizations.weight.original1": v})
    assert torch.equal(back["conv.parametrizations.weight.original0"], g) and torch.equal(back["conv.parametrizations.weight.original1"], v)


class _StandInBigVGAN(torch.nn.Module):
    """Stands in for the `bigvgan` package's BigVGAN (not installed in CI) with its parameter naming:
    classic weight-norm convolutions (weight_g / weight_v), Snake-style `activation_post` parameters,
    a `remove_weight_norm()` that prints as the package does; built from the config's hop size."""

    def __init__(self, h, use_cuda_kernel: bool = False) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's classic weight_norm is deprecated; the package still uses it
            self.conv_pre = torch.nn.utils.weight_norm(torch.nn.Conv1d(h["num_mels"], 8, 3, padding=1))
            self.conv_post = torch.nn.utils.weight_norm(torch.nn.Conv1d(8, h["hop_size"], 1))
        self.activation_post = torch.nn.Module()
        self.activation_post.alpha = torch.nn.Parameter(torch.ones(8))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = torch.sin(self.conv_pre(mel) * self.activation_post.alpha[:, None])
        return self.conv_post(x).transpose(1, 2).reshape(mel.shape[0], 1, -1)  # [b, 1, n * hop]

    def remove_weight_norm(self) -> None:
        print("Removing weight norm...")
        for m in (self.conv_pre, self.conv_post):
            torch.nn.utils.remove_weight_norm(m)


def test_bigvgan_folders_load_through_the_adapter(tmp_path, monkeypatch, capsys) -> None:
    """The BigVGAN adapter with a stand-in for the package: the release layout, a DDP prefix and
    torch's newer weight-norm names give the same waveform as the generator saved; the package's
    print stays off stdout; a bare state dict is named as a BigVGAN generator with the layout to use."""
    import types

    fake = types.ModuleType("bigvgan")
    fake.BigVGAN = _StandInBigVGAN
    monkeypatch.setitem(sys.modules, "bigvgan", fake)
    mel_fe = HifiGanMel(sample_rate=8000, n_fft=64, hop_length=16, win_length=64, n_mels=8, fmax=4000.0)
    cfg = {"num_mels": 8, "sampling_rate": 8000, "hop_size": 16, "n_fft": 64, "win_size": 64, "fmin": 0, "fmax": 4000.0}
    torch.manual_seed(0)
    gen = _StandInBigVGAN(cfg)
    sd = gen.state_dict()
    mel = torch.rand(2, 8, 10) * 2 - 1
    with torch.no_grad():
        want = gen(mel_fe.denormalize(mel))[:, 0]
    variants = {
        "release": {"generator": sd},
        "ddp": {"generator": {f"module.{k}": v for k, v in sd.items()}},
        "parametrized": {"generator": {k.replace(".weight_g", ".parametrizations.weight.original0").replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in sd.items()}},
    }
    for name, obj in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        torch.save(obj, folder / "bigvgan_generator.pt")
        torch.manual_seed(1)  # another init: only the file can make the outputs agree
        voc = bigvgan_vocoder(mel=mel_fe, folder=str(folder))
        with torch.no_grad():
            assert torch.allclose(voc(mel), want, atol=1e-5), name
    assert "Removing weight norm" not in capsys.readouterr().out
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(cfg))
    torch.save(sd, bare / "bigvgan_generator.pt")
    with pytest.raises(CheckpointError, match=r"must hold \{'generator': state_dict\}; it is a BigVGAN generator"):
        bigvgan_vocoder(mel=mel_fe, folder=str(bare))

    class Reads(_StandInBigVGAN):  # as the package's generator does, first thing: a key this config.json lacks
        def __init__(self, h, use_cuda_kernel: bool = False) -> None:
            self.rates = h.upsample_rates
            super().__init__(h)

    fake.BigVGAN = Reads  # it was a raw AttributeError: upsample_rates
    with pytest.raises(CheckpointError, match=r"release/config.json lacks 'upsample_rates', which the BigVGAN generator reads; give the config.json released with"):
        bigvgan_vocoder(mel=mel_fe, folder=str(tmp_path / "release"))

    class Refuses(_StandInBigVGAN):  # the package on a value it cannot build (activation 'relu'), and on its own attribute errors
        def __init__(self, h, use_cuda_kernel: bool = False) -> None:
            if h.get("activation") == "relu":
                raise NotImplementedError("activation incorrectly specified. check the config file and look for 'activation'.")
            raise AttributeError("'NoneType' object has no attribute 'shape'")

    fake.BigVGAN = Refuses
    with pytest.raises(CheckpointError, match=r"config.json is not a config the bigvgan package builds \(AttributeError: 'NoneType' object has no attribute"):
        bigvgan_vocoder(mel=mel_fe, folder=str(tmp_path / "release"))  # not "lacks 'NoneType...'"
    (tmp_path / "release" / "config.json").write_text(json.dumps({**cfg, "activation": "relu"}))
    with pytest.raises(CheckpointError, match=r"config.json is not a config the bigvgan package builds \(NotImplementedError: activation incorrectly"):
        bigvgan_vocoder(mel=mel_fe, folder=str(tmp_path / "release"))


def test_save_audio_on_a_full_disk_names_the_file_it_writes_and_says_the_disk_is_full(tmp_path, monkeypatch) -> None:
    """libsndfile reports a full disk as a bare "System error." (a LibsndfileError, not an OSError):
    a MediaError naming the output (also when the path given is another writer's temporary file,
    as generate's is), saying the disk is full when it has less room than the file needs; nothing left."""
    import shutil
    from types import SimpleNamespace

    import controlfoley.audio.io as audio_io
    from controlfoley._io import atomic_path

    def full(file, *a, **k):
        with open(file, "wb") as f:
            f.write(b"RIFF")
        raise sf.LibsndfileError(2)  # SFE_SYSTEM: "System error."

    monkeypatch.setattr(audio_io.sf, "write", full)
    free = {"bytes": 100}
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9, free=free["bytes"]))
    wav = torch.zeros(SR)
    out = tmp_path / "foley.wav"
    with pytest.raises(MediaError, match=rf"^cannot write {out}: System error.*; the disk is full: free space$"):
        save_audio(out, wav, SR)
    with pytest.raises(MediaError, match=rf"^cannot write {out}: System error.*; the disk is full: free space$") as e:
        with atomic_path(out) as tmp:  # generate: both outputs go to temporary names first
            save_audio(tmp, wav, SR)
    assert ".tmp-" not in str(e.value)
    free["bytes"] = 10**9  # room enough: some other failure, not a full disk
    with pytest.raises(MediaError, match=rf"^cannot write {out}: System error; choose a writable output folder$"):
        save_audio(out, wav, SR)
    assert list(tmp_path.iterdir()) == []


def test_an_overwritten_file_keeps_its_permission_bits(tmp_path) -> None:
    """atomic writes replace a file by a new one: it keeps the old one's mode (a private 0600 file
    stays private); a new file gets the usual 0666 less the umask."""
    import os
    import stat

    from controlfoley._io import _umask, atomic_write_text

    out = tmp_path / "a.wav"
    save_audio(out, torch.zeros(100), SR)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    os.chmod(out, 0o600)
    save_audio(out, torch.zeros(200), SR)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and sf.info(str(out)).frames == 200
    text = tmp_path / "notes.txt"
    text.write_text("x")
    os.chmod(text, 0o640)
    atomic_write_text(text, "y")
    assert stat.S_IMODE(text.stat().st_mode) == 0o640 and text.read_text() == "y"


def test_a_format_libsndfile_refuses_is_named_not_called_a_full_disk(tmp_path) -> None:
    """FLAC at a rate it cannot hold: libsndfile refuses the data, not the write. The message names
    the file (not its temporary), the reason, and no 'writable folder' advice."""
    import torch

    from controlfoley.audio.io import save_audio
    from controlfoley.errors import MediaError

    with pytest.raises(MediaError) as e:
        save_audio(tmp_path / "x.flac", torch.zeros(1000), 700_000)
    msg = str(e.value)
    assert f"cannot write {tmp_path / 'x.flac'} as FLAC" in msg and "sample rate" in msg
    assert ".tmp-" not in msg and "writable" not in msg and "disk is full" not in msg
    assert list(tmp_path.iterdir()) == []


# -- the layouts written down from the upstream code ---------------------------------------------
# Weight norm as torch.nn.utils.weight_norm(module) (dim 0) leaves `bias`, `weight_g` ([w.shape[0], 1, 1])
# and `weight_v` (the weight's shape); a ConvTranspose1d weight is [in, out, k], so its g is [in, 1, 1].
def _wn(out: dict[str, tuple[int, ...]], name: str, weight: tuple[int, int, int], n_bias: int) -> None:
    out[f"{name}.weight_g"], out[f"{name}.weight_v"], out[f"{name}.bias"] = (weight[0], 1, 1), weight, (n_bias,)


# Derived by reading jik876/hifi-gan models.py at commit 0ddee25de32f806719ca91e98e3514d312408aef
# (Generator: conv_pre = weight_norm(Conv1d(80, C, 7)); ups[i] = weight_norm(ConvTranspose1d(C/2^i,
# C/2^(i+1), k, u)); resblocks[i*len(kernels)+j] = ResBlock1 (convs1 / convs2, three convs each) or
# ResBlock2 (convs, two convs) at C/2^(i+1) channels; conv_post = weight_norm(Conv1d(ch, 1, 7))) and
# its train.py, which saves g_<step> as {'generator': generator.state_dict()} (the unwrapped module).
# Configs from its README / config_v1, v2, v3 .json.
_HIFIGAN_CONFIGS = {
    "v1": dict(upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4), upsample_initial_channel=512, resblock="1",
               resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3),
    "v2": dict(upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4), upsample_initial_channel=128, resblock="1",
               resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3),
    "v3": dict(upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8), upsample_initial_channel=256, resblock="2",
               resblock_kernel_sizes=(3, 5, 7), resblock_dilation_sizes=((1, 2), (2, 6), (3, 12))),
}  # fmt: skip


def _upstream_hifigan_layout(cfg: dict) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    c = cfg["upsample_initial_channel"]
    _wn(out, "conv_pre", (c, 80, 7), c)
    for i, (u, k) in enumerate(zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"])):
        _wn(out, f"ups.{i}", (c >> i, c >> (i + 1), k), c >> (i + 1))
    n = len(cfg["resblock_kernel_sizes"])
    for i in range(len(cfg["upsample_rates"])):
        ch = c >> (i + 1)
        for j, k in enumerate(cfg["resblock_kernel_sizes"]):
            names = [f"convs1.{m}" for m in range(3)] + [f"convs2.{m}" for m in range(3)] if cfg["resblock"] == "1" else ["convs.0", "convs.1"]
            for name in names:
                _wn(out, f"resblocks.{i * n + j}.{name}", (ch, ch, k), ch)
    _wn(out, "conv_post", (1, c >> len(cfg["upsample_rates"]), 7), 1)
    return out


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_hifigan_generator_has_exactly_the_upstream_layout(version: str) -> None:
    want = _upstream_hifigan_layout(_HIFIGAN_CONFIGS[version])
    if version == "v1":
        assert len(want) == 234 and round(sum(math.prod(s) for s in want.values()) / 1e6, 2) == 13.94  # the reference's numbers
    gen = HifiGanGenerator(n_mels=80, **_HIFIGAN_CONFIGS[version])
    assert {k: tuple(v.shape) for k, v in gen.state_dict().items()} == want


def test_a_hifigan_file_in_the_upstream_layout_loads_strictly(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.rand(s, generator=g) + 0.5 for k, s in _upstream_hifigan_layout(_HIFIGAN_CONFIGS["v1"]).items()}
    torch.save({"generator": sd}, tmp_path / "g_02500000")
    voc = hifigan_vocoder(mel=HifiGanMel(), checkpoint=str(tmp_path / "g_02500000"))
    got = voc.generator.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())


# Derived by reading SpecVQGAN's MelGAN vocoder, vocoder/modules.py Generator(input_size, ngf,
# n_residual_layers) with ratios [8, 8, 2, 2] (the same file as copied in
# karchkha/MelSpec_GPT_VQVAE at commit 648f3ac28500c3858ef21c506a337709c3c1faa2), and SpecVQGAN's
# train.py VocoderMelGan, which builds Generator(80, 32, 3) from args.yml and load_state_dict()s
# the plain state dict in best_netG.pt. One nn.Sequential `model`: [ReflectionPad1d(3), WNConv1d(in,
# 16 ngf, 7)], per ratio r [LeakyReLU, WNConvTranspose1d(m, m/2, 2r, stride r), n_residual_layers x
# ResnetBlock(m/2, 3**j)], then [LeakyReLU, ReflectionPad1d(3), WNConv1d(ngf, 1, 7), Tanh];
# ResnetBlock: block = Sequential(LeakyReLU, ReflectionPad1d, WNConv1d(dim, dim, 3), LeakyReLU,
# WNConv1d(dim, dim, 1)), shortcut = WNConv1d(dim, dim, 1).
def _upstream_melgan_layout(n_mels: int = 80, ngf: int = 32, n_residual_layers: int = 3, ratios: tuple[int, ...] = (8, 8, 2, 2)) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    mult = 2 ** len(ratios)
    _wn(out, "model.1", (mult * ngf, n_mels, 7), mult * ngf)
    i = 2
    for r in ratios:
        dim = mult * ngf // 2
        _wn(out, f"model.{i + 1}", (mult * ngf, dim, 2 * r), dim)
        for j in range(n_residual_layers):
            block = f"model.{i + 2 + j}"
            _wn(out, f"{block}.block.2", (dim, dim, 3), dim)
            _wn(out, f"{block}.block.4", (dim, dim, 1), dim)
            _wn(out, f"{block}.shortcut", (dim, dim, 1), dim)
        i += 2 + n_residual_layers
        mult //= 2
    _wn(out, f"model.{i + 2}", (1, ngf, 7), 1)
    return out


def test_melgan_generator_has_exactly_the_upstream_layout(tmp_path) -> None:
    want = _upstream_melgan_layout()
    assert len(want) == 126 and round(sum(math.prod(s) for s in want.values()) / 1e6, 2) == 4.27  # the reference's numbers
    gen = MelGANGenerator(n_mels=80, ngf=32, n_residual_layers=3, ratios=(8, 8, 2, 2))
    assert {k: tuple(v.shape) for k, v in gen.state_dict().items()} == want
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.rand(s, generator=g) + 0.5 for k, s in want.items()}
    torch.save(sd, tmp_path / "best_netG.pt")  # a plain state dict, as SpecVQGAN ships it
    got = melgan_vocoder(mel=SpecVQGANMel(), checkpoint=str(tmp_path / "best_netG.pt")).generator.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())


# Derived by reading NVIDIA/BigVGAN bigvgan.py at commit 4dbc17bc01a59f2c2bca2c19d44c48f6d7eaec64 (the
# same code as the PyPI package bigvgan 2.4.1, module bigvgan/bigvgan.py): conv_pre = weight_norm(Conv1d(
# num_mels, C, 7)); ups[i] = ModuleList([weight_norm(ConvTranspose1d(C/2^i, C/2^(i+1), k, u))]) (so
# `ups.i.0.*`); resblocks[i*3+j] = AMPBlock1 with convs1 / convs2 (three convs each) and 6 `activations`,
# each Activation1d(act=Snake(alpha) | SnakeBeta(alpha, beta)) with persistent buffers `upsample.filter`
# and `downsample.lowpass.filter` (alias_free_activation/torch/{resample,filter}.py: kaiser sinc
# [1, 1, 12]); activation_post the same; conv_post = weight_norm(Conv1d(ch, 1, 7, bias=use_bias_at_final));
# the release file bigvgan_generator.pt is {"generator": state_dict} (BigVGAN._save_pretrained).
# Configs from its configs/*.json (read in perennialtech/BigVGAN at commit fc6eba9ffbb4454846d81e02b6e5b4e9bc7e5f13).
_BIGVGAN_CONFIGS = {
    "bigvgan_base_22khz_80band": dict(upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512),
    "bigvgan_v2_22khz_80band_256x": dict(upsample_rates=[4, 4, 2, 2, 2, 2], upsample_kernel_sizes=[8, 8, 4, 4, 4, 4], upsample_initial_channel=1536,
                                         use_tanh_at_final=False, use_bias_at_final=False, fmax=None),
}  # fmt: skip


def _bigvgan_config(name: str) -> dict:
    common = dict(resblock="1", resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3, activation="snakebeta", snake_logscale=True,
                  num_mels=80, num_freq=1025, n_fft=1024, hop_size=256, win_size=1024, sampling_rate=22050, fmin=0, fmax=8000)  # fmt: skip
    return {**common, **_BIGVGAN_CONFIGS[name]}


def _upstream_bigvgan_layout(h: dict) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    c = h["upsample_initial_channel"]

    def act(name: str, ch: int) -> None:
        out[f"{name}.act.alpha"] = out[f"{name}.act.beta"] = (ch,)  # snakebeta
        out[f"{name}.upsample.filter"] = out[f"{name}.downsample.lowpass.filter"] = (1, 1, 12)

    _wn(out, "conv_pre", (c, h["num_mels"], 7), c)
    for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        _wn(out, f"ups.{i}.0", (c >> i, c >> (i + 1), k), c >> (i + 1))
    for i in range(len(h["upsample_rates"])):
        ch = c >> (i + 1)
        for j, k in enumerate(h["resblock_kernel_sizes"]):
            for m in range(3):
                _wn(out, f"resblocks.{i * 3 + j}.convs1.{m}", (ch, ch, k), ch)
                _wn(out, f"resblocks.{i * 3 + j}.convs2.{m}", (ch, ch, k), ch)
            for a in range(6):
                act(f"resblocks.{i * 3 + j}.activations.{a}", ch)
    last = c >> len(h["upsample_rates"])
    act("activation_post", last)
    _wn(out, "conv_post", (1, last, 7), 1)
    if not h.get("use_bias_at_final", True):
        del out["conv_post.bias"]
    return out


def test_bigvgan_release_layout_loads_through_the_real_package(tmp_path) -> None:
    """With the `bigvgan` package installed (not in CI): its generator has the upstream layout
    written down above (526 tensors for the 14M base model, 783 for the 112M v2 model), and a
    release folder in that layout, or with weight norm folded into plain weights (what upstream's
    from_pretrained falls back to), gives the generator's own waveform."""
    bigvgan = pytest.importorskip("bigvgan", reason="the optional bigvgan package is not installed")
    for name, count in (("bigvgan_base_22khz_80band", 526), ("bigvgan_v2_22khz_80band_256x", 783)):
        h = _bigvgan_config(name)
        want = _upstream_bigvgan_layout(h)
        assert len(want) == count
        with warnings.catch_warnings(), torch.device("meta"):  # shapes only: no memory, no time
            warnings.simplefilter("ignore")  # torch's classic weight_norm is deprecated; the package uses it
            gen = bigvgan.BigVGAN(bigvgan.env.AttrDict(dict(h)))
        assert {k: tuple(v.shape) for k, v in gen.state_dict().items()} == want, name
    mel_fe = HifiGanMel()
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(h := _bigvgan_config("bigvgan_base_22khz_80band")))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = bigvgan.BigVGAN(bigvgan.env.AttrDict(dict(h)))
    torch.save({"generator": gen.state_dict()}, folder / "bigvgan_generator.pt")
    mel = torch.rand(1, 80, 6) * 2 - 1
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        gen.remove_weight_norm()
    with torch.no_grad():
        want_wav = gen.eval()(mel_fe.denormalize(mel))[:, 0]
    folded = tmp_path / "folded"
    folded.mkdir()
    (folded / "config.json").write_text(json.dumps(h))
    torch.save({"generator": gen.state_dict()}, folded / "bigvgan_generator.pt")
    for f in (folder, folded):
        torch.manual_seed(1)  # another init: only the file can make the outputs agree
        voc = bigvgan_vocoder(mel=mel_fe, folder=str(f))
        with torch.no_grad():
            assert torch.allclose(voc(mel), want_wav, atol=1e-5), f.name
