"""Mel front-ends: waveform -> normalised log-mel in [-1, 1], and the exact way back to ln-mel.

Features
- `MelFrontEnd`: one padded-STFT core for every front-end: reflect pad `stft_pad` samples each side,
  `center=False` STFT with a periodic Hann window, magnitude sqrt(re^2 + im^2 + eps), a slaney mel
  filterbank from `librosa.filters.mel` (htk=False, norm="slaney") kept as a buffer, ln(clamp(x, clip)).
  Normalisation is a fixed affine map of ln-mel sending [log_lo, log_hi] to [-1, 1], optionally clipped;
  `normalize` / `denormalize` are exact inverses wherever no clipping happened.
- "hifigan" (`HifiGanMel`): the HiFi-GAN mel used by SpecMaskFoley (docs/DESIGN.md section 1): 22.05 kHz,
  n_fft 1024, hop 256, win 1024, 80 mels over 0-8000 Hz, reflect pad (n_fft - hop) / 2 = 384, eps 1e-9,
  clip 1e-5, so n_frames = n_samples // hop. Normalisation constants: log_lo = ln(1e-5) = -11.5129 (the
  clamp floor, so the minimum maps to exactly -1) and log_hi = 2.5. Not clipped: audio within [-1, 1]
  reaches ln-mel 2.27 with a full-scale sine and 2.37 with a full-scale 50 Hz square wave (measured), so
  real audio stays inside [-1, 1]; the filterbank's theoretical bound is 3.23 (-> 1.10).
- "specvqgan" (`SpecVQGANMel`): SpecVQGAN's own mel (v-iashin/SpecVQGAN): center=True STFT (= reflect pad
  n_fft / 2), power 1, 80 mels over 125-7600 Hz, clamp 1e-5, 20*log10 - 20 (ref_level_db), +100, /100
  (min_level_db -100), clip to [0, 1], then 2x - 1 for the codebook. In ln terms that is the affine map
  [ln 1e-4, ln 10] -> [-1, 1], clipped; n_frames = 1 + n_samples // hop.
- Every front-end: `n_frames(n_samples)`, `n_samples(n_frames)` (= n_frames * hop, the length a vocoder
  returns), `log_mel(wav)`, `forward(wav) = normalize(log_mel(wav))`, and input checks raising ShapeError.

References: HiFi-GAN (Kong et al., 2020; jik876/hifi-gan meldataset.py); SpecVQGAN (Iashin & Rahtu, 2021);
SpecMaskGIT / SpecMaskFoley (Zhong et al., 2024/2025); librosa.filters.mel.
"""

import math

import librosa
import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._registry import MEL_FRONTENDS
from controlfoley.config import ConfigError
from controlfoley.errors import ShapeError
from controlfoley.typing import Float, Shaped, Tensor

__all__ = ["MelFrontEnd", "HifiGanMel", "SpecVQGANMel", "hifigan_mel", "specvqgan_mel"]


class MelFrontEnd(nn.Module):
    """Waveform [b, s] (or [s]) in [-1, 1] -> normalised log-mel [b, m, n] (or [m, n]).

    The STFT geometry is public (`n_fft`, `hop_length`, `win_length`, `stft_pad`, `mel_basis`) so that
    vocoders such as Griffin-Lim can invert it with the same framing.
    """

    mel_basis: Tensor  # buffers (registered in __init__): the mel filterbank and the STFT window
    window: Tensor

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        n_mels: int,
        fmin: float,
        fmax: float | None,
        stft_pad: int,
        mag_eps: float,
        clip_val: float,
        log_range: tuple[float, float],
        clip_output: bool,
    ) -> None:
        super().__init__()
        _check_geometry(sample_rate, n_fft, hop_length, win_length, n_mels, fmin, fmax, stft_pad)
        if not clip_val > 0:
            raise ConfigError(f"clip_val must be > 0 (it is the floor of the mel before ln), got {clip_val}")
        if not log_range[1] > log_range[0]:
            raise ConfigError(f"the normalisation range needs log_hi > log_lo, got {log_range}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.stft_pad = stft_pad
        self.mag_eps = mag_eps
        self.clip_val = clip_val
        self.log_lo, self.log_hi = float(log_range[0]), float(log_range[1])
        self.clip_output = clip_output
        basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
        # Derived from the numbers above, so not persistent: checkpoints never carry (or disagree on) them.
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    # -- lengths -------------------------------------------------------------------------------
    @property
    def min_samples(self) -> int:
        """Shortest waveform accepted: reflect padding needs more samples than it pads, and one frame."""
        return max(self.stft_pad + 1, self.n_fft - 2 * self.stft_pad)

    def n_frames(self, n_samples: int) -> int:
        """Mel frames produced from `n_samples` samples."""
        return max(0, 1 + (n_samples + 2 * self.stft_pad - self.n_fft) // self.hop_length)

    def n_samples(self, n_frames: int) -> int:
        """Samples covered by `n_frames` frames: the length every vocoder returns for them."""
        return n_frames * self.hop_length

    # -- analysis ------------------------------------------------------------------------------
    def log_mel(self, wav: Shaped[Tensor, "*b s"]) -> Float[Tensor, "*b m n"]:
        """ln(clamp(mel magnitude, clip_val)), before normalisation."""
        x = self._check_wave(wav)
        squeeze = x.dim() == 1
        x = x.reshape(-1, x.shape[-1])
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # the FFT runs in fp32 at least; half precision loses the quiet bins
        x = F.pad(x.unsqueeze(1), (self.stft_pad, self.stft_pad), mode="reflect").squeeze(1)
        with torch.autocast(device_type=x.device.type, enabled=False):  # a bf16 filterbank matmul would blur quiet bins
            spec = torch.stft(
                x,
                self.n_fft,
                hop_length=self.hop_length,
                win_length=self.win_length,
                window=self.window.to(x.dtype),
                center=False,
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            mag = torch.view_as_real(spec).pow(2).sum(-1).add(self.mag_eps).sqrt()  # [b, n_fft/2+1, n]
            mel = torch.matmul(self.mel_basis.to(x.dtype), mag)
            out = torch.log(torch.clamp(mel, min=self.clip_val))
        return out[0] if squeeze else out

    def forward(self, wav: Shaped[Tensor, "*b s"]) -> Float[Tensor, "*b m n"]:
        return self.normalize(self.log_mel(wav))

    # -- the fixed affine map ------------------------------------------------------------------
    def normalize(self, log_mel: Float[Tensor, "*b m n"]) -> Float[Tensor, "*b m n"]:
        """ln-mel -> [-1, 1]: [log_lo, log_hi] maps onto [-1, 1] (clipped only if `clip_output`)."""
        out = (log_mel - self.log_lo) * (2.0 / (self.log_hi - self.log_lo)) - 1.0
        return out.clamp(-1.0, 1.0) if self.clip_output else out

    def denormalize(self, mel: Float[Tensor, "*b m n"]) -> Float[Tensor, "*b m n"]:
        """Normalised mel -> ln-mel (the exact inverse of `normalize` where nothing was clipped)."""
        return (mel + 1.0) * ((self.log_hi - self.log_lo) / 2.0) + self.log_lo

    # -- checks --------------------------------------------------------------------------------
    def _check_wave(self, wav: Tensor) -> Tensor:
        name = type(self).__name__
        if wav.dim() not in (1, 2):
            raise ShapeError(
                f"{name} expects a waveform [s] or a batch [b, s], got shape {tuple(wav.shape)}. "
                "Mix or select channels first (e.g. wav.mean(0) for [channels, s])."
            )
        if not wav.is_floating_point():
            raise ShapeError(
                f"{name} expects float samples in [-1, 1], got dtype {wav.dtype}. "
                "Convert integer PCM first (e.g. wav.float() / 32768 for int16)."
            )
        if wav.shape[-1] < self.min_samples:
            raise ShapeError(
                f"{name} needs at least {self.min_samples} samples (reflect padding of {self.stft_pad}), "
                f"got {wav.shape[-1]}. Pad or lengthen the audio."
            )
        if not bool(torch.isfinite(wav).all()):
            raise ShapeError(f"{name} got a waveform containing NaN or Inf samples; clean the audio before the mel.")
        return wav

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}, "
            f"stft_pad={self.stft_pad}, log_range=({self.log_lo:.4f}, {self.log_hi:.4f}), clip_output={self.clip_output}"
        )


def _check_geometry(
    sample_rate: int, n_fft: int, hop_length: int, win_length: int, n_mels: int, fmin: float, fmax: float | None, stft_pad: int
) -> None:
    for key, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels)):
        if value <= 0:
            raise ConfigError(f"mel front-end: {key} must be positive, got {value}")
    if not 0 < win_length <= n_fft:
        raise ConfigError(f"mel front-end: win_length must be in (0, n_fft={n_fft}], got {win_length}")
    top = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < top <= sample_rate / 2:
        raise ConfigError(
            f"mel front-end: need 0 <= fmin < fmax <= sample_rate/2 ({sample_rate / 2}), got fmin={fmin}, fmax={fmax}"
        )
    if stft_pad < 0:
        raise ConfigError(f"mel front-end: stft_pad must be >= 0, got {stft_pad}")


class HifiGanMel(MelFrontEnd):
    """The HiFi-GAN mel (docs/DESIGN.md section 1), normalised by the fixed map [ln clip_val, log_max] -> [-1, 1]."""

    def __init__(
        self,
        *,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        n_mels: int = 80,
        fmin: float = 0.0,
        fmax: float | None = 8000.0,
        clip_val: float = 1e-5,
        log_max: float = 2.5,
    ) -> None:
        if (n_fft - hop_length) % 2 or n_fft < hop_length:
            raise ConfigError(
                f"HiFi-GAN mel pads (n_fft - hop_length) / 2 each side, so n_fft - hop_length must be even and >= 0; "
                f"got n_fft={n_fft}, hop_length={hop_length}"
            )
        super().__init__(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
            stft_pad=(n_fft - hop_length) // 2,  # with center=False this gives exactly n_samples // hop frames
            mag_eps=1e-9,
            clip_val=clip_val,
            log_range=(math.log(clip_val) if clip_val > 0 else -math.inf, log_max),  # the base rejects clip_val <= 0
            clip_output=False,
        )


class SpecVQGANMel(MelFrontEnd):
    """SpecVQGAN's mel; `normalize` gives its codebook input 2x - 1 with x the [0, 1] spectrogram."""

    def __init__(
        self,
        *,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        n_mels: int = 80,
        fmin: float = 125.0,
        fmax: float | None = 7600.0,
        clip_val: float = 1e-5,
        ref_level_db: float = 20.0,
        min_level_db: float = -100.0,
    ) -> None:
        if not min_level_db < 0:
            raise ConfigError(f"min_level_db must be negative (the spectrogram's floor in dB), got {min_level_db}")
        db_to_ln = math.log(10.0) / 20.0
        super().__init__(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
            stft_pad=n_fft // 2,  # librosa center=True with reflect padding
            mag_eps=0.0,
            clip_val=clip_val,
            # x = (dB - ref + (-min)) / (-min) is 0 at dB = ref + min and 1 at dB = ref
            log_range=((ref_level_db + min_level_db) * db_to_ln, ref_level_db * db_to_ln),
            clip_output=True,
        )

    def to_unit(self, mel: Float[Tensor, "*b m n"]) -> Float[Tensor, "*b m n"]:
        """Normalised [-1, 1] mel -> SpecVQGAN's [0, 1] spectrogram (the MelGAN vocoder's input)."""
        return (mel + 1.0) * 0.5


@MEL_FRONTENDS.register("hifigan")
def hifigan_mel(
    *,
    sample_rate: int = 22050,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = 8000.0,
    clip_val: float = 1e-5,
    log_max: float = 2.5,
) -> HifiGanMel:
    """The paper's mel: HiFi-GAN recipe, ln-mel range [ln clip_val, log_max] mapped to [-1, 1]."""
    return HifiGanMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
        clip_val=clip_val,
        log_max=log_max,
    )


@MEL_FRONTENDS.register("specvqgan")
def specvqgan_mel(
    *,
    sample_rate: int = 22050,
    n_fft: int = 1024,
    hop_length: int = 256,
    win_length: int = 1024,
    n_mels: int = 80,
    fmin: float = 125.0,
    fmax: float | None = 7600.0,
    clip_val: float = 1e-5,
    ref_level_db: float = 20.0,
    min_level_db: float = -100.0,
) -> SpecVQGANMel:
    """SpecVQGAN's own mel, as its codebook sees it (2x - 1 of the [0, 1] spectrogram)."""
    return SpecVQGANMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        n_mels=n_mels,
        fmin=fmin,
        fmax=fmax,
        clip_val=clip_val,
        ref_level_db=ref_level_db,
        min_level_db=min_level_db,
    )
