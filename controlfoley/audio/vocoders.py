"""Vocoders: normalised mel of the paired front-end [b, m, n] -> waveform [b, n * hop].

Every vocoder is an `nn.Module` with a `sample_rate` attribute whose forward takes the NORMALISED mel
of its paired mel front-end. Every builder receives the built front-end as `mel` (the model wires it in)
plus its own flat kwargs. Registered names:
- "griffinlim" (`GriffinLimVocoder`): no weights, the embedded default. denormalize -> exp -> mel to
  linear magnitude on the front-end's own filterbank -> Griffin-Lim (librosa.griffinlim, seeded random phase, so deterministic). It runs the STFT with
  center=False on the front-end's padded framing and crops the padding off again, so frame j lands on
  the same samples it was analysed from (no half-hop shift for the HiFi-GAN mel's 384-sample pad).
  The mel-to-linear step is `inverse="nnls"` (non-negative least squares, librosa.util.nnls: the
  most faithful, ~2 s per 6 s clip on a 2-core CPU) or `inverse="pinv"` (pseudo-inverse clamped at
  zero: ~200x faster, slightly smeared spectra; used by the tiny presets for fast evaluation).
- "hifigan" (controlfoley.audio.hifigan), "melgan" (controlfoley.audio.melgan): GAN generators with
  strict loaders for their public checkpoints. Built without `checkpoint=` they are random networks
  (noise out): still buildable (tests, training from scratch), but they warn
  (`RandomWeightsWarning`), and `controlfoley generate` refuses such a `--vocoder`.
- "bigvgan" (`BigVGANVocoder`): adapter over the optional `bigvgan` package (pip install
  'controlfoley[bigvgan]') for a LOCAL folder holding config.json and bigvgan_generator.pt. It builds
  bigvgan.BigVGAN(h) from the JSON and loads the `{"generator": sd}` file, instead of
  BigVGAN.from_pretrained, which fails with huggingface_hub >= 1.0 in bigvgan 2.4.1.

References: Griffin & Lim (1984); Perraudin et al. fast Griffin-Lim (momentum 0.99, librosa default);
Lee et al., "BigVGAN" (ICLR 2023), NVIDIA/BigVGAN; shared/reference/checkpoint-formats.md.
"""

import contextlib
import io
import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import librosa
import numpy as np
import torch
from torch import nn

from controlfoley._legacy import load_legacy_checkpoint
from controlfoley._protocol import ModuleProtocolMeta
from controlfoley._registry import VOCODERS
from controlfoley.audio import hifigan, melgan  # noqa: F401  (their modules register "hifigan" and "melgan")
from controlfoley._ckpt_kind import identify_container
from controlfoley.audio._weight_norm import load_strict
from controlfoley.audio.hifigan import check_hifigan_pairing
from controlfoley.audio.mel import MelFrontEnd
from controlfoley.config import ConfigError
from controlfoley.errors import CheckpointError, RandomWeightsWarning, leading_line, require
from controlfoley.typing import Float, Tensor

__all__ = [
    "Vocoder",
    "GriffinLimVocoder",
    "BigVGANVocoder",
    "griffinlim_vocoder",
    "bigvgan_vocoder",
    "WEIGHTS_ARG",
    "RandomWeightsWarning",
    "missing_weights",
    "missing_weights_message",
]

# The trained vocoders and the argument that gives them their weights; without it they output noise.
WEIGHTS_ARG = {"hifigan": "checkpoint", "melgan": "checkpoint", "bigvgan": "folder"}


def missing_weights(name: str, kwargs: Mapping[str, Any]) -> str | None:
    """The weights argument (`checkpoint`, `folder`) that trained vocoder `name` lacks in `kwargs`, else None."""
    arg = WEIGHTS_ARG.get(name)
    return arg if arg is not None and kwargs.get(arg) is None else None


def missing_weights_message(name: str, arg: str, flag: str = "--vocoder") -> str:
    """Why vocoder `name` needs `arg` and how to give it: the GAN generators build without weights
    (a random network: noise out), BigVGAN does not build at all without its folder."""
    if arg == "folder":
        return (
            f"{flag} {name} needs {arg}=: it loads a local folder holding config.json and bigvgan_generator.pt "
            f"and cannot be built without one; give it: {flag} {name},{arg}=DIR"
        )
    return (
        f"{flag} {name} needs its trained weights: without {arg}= it is a random network that outputs noise; "
        f"give them: {flag} {name},{arg}=PATH"
    )


@runtime_checkable
class Vocoder(Protocol, metaclass=ModuleProtocolMeta):
    """What the model relies on: `sample_rate` and normalised mel [b, m, n] -> waveform [b, s]."""

    sample_rate: int

    def __call__(self, mel: Tensor) -> Tensor: ...


class GriffinLimVocoder(nn.Module):
    """Phase reconstruction without weights; runs on the CPU with librosa, returns on the mel's device."""

    def __init__(self, mel: MelFrontEnd, *, n_iter: int = 32, momentum: float = 0.99, seed: int = 0, inverse: str = "nnls") -> None:
        super().__init__()
        if n_iter < 1 or not 0 <= momentum < 1:
            raise ConfigError(f"griffinlim: need n_iter >= 1 and 0 <= momentum < 1, got n_iter={n_iter}, momentum={momentum}")
        if inverse not in ("nnls", "pinv"):
            raise ConfigError(f"griffinlim: inverse must be 'nnls' or 'pinv', got {inverse!r}")
        self.inverse = inverse
        self.mel = mel
        self.sample_rate = mel.sample_rate
        self.n_iter, self.momentum, self.seed = n_iter, momentum, seed

    @torch.no_grad()
    def forward(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b s"]:
        fe = self.mel
        # An untrained or diverging decoder can emit values far outside [-1, 1]; exp() of those
        # overflows to inf and Griffin-Lim returns NaN. Real audio stays below ~1.1 (mel.py).
        mags = torch.exp(fe.denormalize(mel.detach().float().nan_to_num(-1.0).clamp(-1.0, 1.5))).cpu().numpy()
        basis = fe.mel_basis.float().cpu().numpy()  # float32 whatever the model's dtype
        pinv = np.linalg.pinv(basis) if self.inverse == "pinv" else None
        n_out = fe.n_samples(mel.shape[-1])
        out = np.zeros((mel.shape[0], n_out), dtype=np.float32)
        for i, mel_mag in enumerate(mags):
            linear = librosa.util.nnls(basis, mel_mag) if pinv is None else np.maximum(pinv @ mel_mag, 0.0)  # [n_fft/2+1, n]
            y = librosa.griffinlim(
                linear,
                n_iter=self.n_iter,
                hop_length=fe.hop_length,
                win_length=fe.win_length,
                n_fft=fe.n_fft,
                window="hann",
                center=False,  # the front-end padded by hand; mirror its framing exactly
                momentum=self.momentum,
                init="random",
                random_state=self.seed,
            )
            y = y[fe.stft_pad : fe.stft_pad + n_out]
            out[i, : y.shape[0]] = y
        return torch.from_numpy(out).to(mel.device)

    def extra_repr(self) -> str:
        return f"n_iter={self.n_iter}, momentum={self.momentum}, seed={self.seed}, inverse={self.inverse!r}"


@VOCODERS.register("griffinlim")
def griffinlim_vocoder(*, mel: MelFrontEnd, n_iter: int = 32, momentum: float = 0.99, seed: int = 0, inverse: str = "nnls") -> GriffinLimVocoder:
    """Griffin-Lim on the front-end's own STFT framing; deterministic for a given `seed`."""
    return GriffinLimVocoder(mel, n_iter=n_iter, momentum=momentum, seed=seed, inverse=inverse)


class BigVGANVocoder(nn.Module):
    """Normalised HiFi-GAN mel -> ln-mel -> a `bigvgan.BigVGAN` generator -> waveform [b, n * hop]."""

    def __init__(self, mel: MelFrontEnd, generator: nn.Module) -> None:
        super().__init__()
        self.mel = mel
        self.generator = generator
        self.sample_rate = mel.sample_rate

    def forward(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b s"]:
        return self.generator(self.mel.denormalize(mel))[:, 0]


class _HParams(dict):
    """BigVGAN reads its hyperparameters both as h.key and h["key"] (its env.AttrDict); so does this."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# BigVGAN config.json keys that must agree with the mel front-end the vocoder reads
_BIGVGAN_MEL_KEYS = {
    "num_mels": "n_mels",
    "sampling_rate": "sample_rate",
    "hop_size": "hop_length",
    "n_fft": "n_fft",
    "win_size": "win_length",
    "fmin": "fmin",
    "fmax": "fmax",
}


def _bigvgan_config(folder: Path, mel: MelFrontEnd) -> dict[str, Any]:
    """Read config.json and check it against the mel front-end (ConfigError naming each disagreement)."""
    try:
        h = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is not a readable BigVGAN config: {e}") from e
    if not isinstance(h, dict):
        raise CheckpointError(f"{folder / 'config.json'} must hold a JSON object of hyperparameters")
    nyquist = mel.sample_rate / 2

    def same(key: str, attr: str) -> bool:
        ours, theirs = getattr(mel, attr), h.get(key)
        if key == "fmax":  # null means Nyquist on both sides
            ours, theirs = ours or nyquist, theirs or h.get("sampling_rate", 0) / 2
        return theirs is not None and math.isclose(float(ours), float(theirs))

    bad = [f"{key}={h.get(key)!r} vs mel {attr}={getattr(mel, attr)!r}" for key, attr in _BIGVGAN_MEL_KEYS.items() if not same(key, attr)]
    if bad:
        raise ConfigError(
            f"BigVGAN folder {folder} was trained on another mel: {'; '.join(bad)}. "
            "Build the 'hifigan' mel front-end with these numbers (e.g. fmax=None for the v2 full-band models)."
        )
    return h


@VOCODERS.register("bigvgan")
def bigvgan_vocoder(*, mel: MelFrontEnd, folder: str, trust_checkpoint: bool = False, use_cuda_kernel: bool = False) -> BigVGANVocoder:
    """BigVGAN from a local folder (config.json + bigvgan_generator.pt); needs the `bigvgan` package."""
    path = Path(folder)
    if path.is_file():
        raise CheckpointError(f"BigVGAN folder={path} is a file; give the folder holding it and config.json: folder={str(path.parent)!r}")
    if not path.is_dir():
        raise CheckpointError(f"BigVGAN folder not found: {path}. Give a local folder holding config.json and bigvgan_generator.pt.")
    missing = [name for name in ("config.json", "bigvgan_generator.pt") if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"BigVGAN folder {path} lacks {', '.join(missing)}; it must hold config.json and bigvgan_generator.pt.")
    check_hifigan_pairing(mel, "bigvgan")
    hparams = _HParams(_bigvgan_config(path, mel))
    pkg = require("bigvgan", extra="bigvgan", purpose="the BigVGAN vocoder")
    with warnings.catch_warnings():  # the package builds with torch's classic weight_norm, deprecated (FutureWarning) on every build
        warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated", category=FutureWarning)
        try:
            generator = pkg.BigVGAN(hparams, use_cuda_kernel=use_cuda_kernel)
        except (AttributeError, KeyError) as e:  # a key its generator reads (h.upsample_rates, ...) is not in the file
            key = e.args[0] if e.args else None
            if not isinstance(key, str) or not key.isidentifier() or key in hparams:  # raised inside the package for another reason
                raise CheckpointError(f"{path / 'config.json'} is not a config the bigvgan package builds ({type(e).__name__}: {leading_line(e)})") from e
            raise CheckpointError(
                f"{path / 'config.json'} lacks {key!r}, which the BigVGAN generator reads; give the config.json released with "
                "bigvgan_generator.pt (it holds upsample_rates, upsample_kernel_sizes, upsample_initial_channel, resblock, "
                "resblock_kernel_sizes, resblock_dilation_sizes, activation, snake_logscale, ...)"
            ) from e
        except (NotImplementedError, ValueError, TypeError, IndexError) as e:  # a value it cannot build: activation 'relu', resblock '3'
            raise CheckpointError(
                f"{path / 'config.json'} is not a config the bigvgan package builds ({type(e).__name__}: {leading_line(e)}); "
                "give the config.json released with bigvgan_generator.pt"
            ) from e
    state = load_legacy_checkpoint(path / "bigvgan_generator.pt", trust=trust_checkpoint)
    source = str(path / "bigvgan_generator.pt")
    if not isinstance(state, dict) or not isinstance(state.get("generator"), dict):
        known = identify_container(state)
        fix = f"; it is {known.label}: {known.advice(source)}" if known else ""
        raise CheckpointError(f"{source} must hold {{'generator': state_dict}}{fix}")
    load_strict(
        generator, state["generator"], what="BigVGAN generator", source=source, kind="bigvgan", built_from="the folder's config.json",
        fix="Put the config.json the checkpoint was trained with beside it (a BigVGAN release folder holds both).",
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # bigvgan prints "Removing weight norm..." on stdout, every load
        generator.remove_weight_norm()  # inference only: fold g * v / ||v|| into plain weights once
    return BigVGANVocoder(mel, generator.eval())
