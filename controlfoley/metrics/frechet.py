"""Frechet distance between sets of audio clips on a fixed, hand-made audio embedding.

Features
- `AudioEmbedding`: a deterministic per-clip summary of the HiFi-GAN log-mel (the model's own mel),
  with nothing learned, so no test data can leak into it. The 80 mel bands are pooled into
  `n_groups` (16) groups of adjacent bands (ln of the mean magnitude of the group); per group it keeps
  the mean over time (which classes sound: spectral balance), the standard deviation over time
  (how much sound there is against silence) and the mean absolute frame-to-frame change (how sharp
  and how many the onsets are). d = 3 * n_groups = 48. It stands in the role VGGish plays for FAD and
  PaSST for FD_PaSST; on the synthetic world those pretrained nets are unavailable, and these
  statistics are what separates its clips (class mix, event count, attack sharpness).
- `frechet_distance(a [n1, d], b [n2, d])`: ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2),
  the squared 2-Wasserstein distance between Gaussians fitted to the two sets, in float64. Both square
  roots come from `torch.linalg.eigh` of symmetric PSD matrices (negative round-off eigenvalues
  clamped to 0), which is the symmetric form of sqrtm(C_a C_b). A ridge of `ridge` x (mean variance)
  is added to both covariances: with fewer clips than dimensions (n <= d) the covariances are singular
  and the ridge keeps the square roots well conditioned; identical sets still score exactly the same
  matrices, so their distance stays ~0. The result is clamped at 0. Widths above `MAX_WIDTH` (8192)
  are refused before any covariance is made: raw waveforms are not embeddings.

References: Frechet (1957); Dowson & Landau, "The Frechet distance between multivariate normal
distributions" (1982); Heusel et al., FID (NeurIPS 2017); Kilgour et al., "Frechet Audio Distance"
(Interspeech 2019); Koutini et al., PaSST (FD_PaSST in MMAudio / SpecMaskFoley).
"""

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from controlfoley.errors import ShapeError
from controlfoley.metrics._common import as_numpy_wave, evaluation_mel
from controlfoley.typing import Float, Tensor

__all__ = ["AudioEmbedding", "frechet_distance"]

RIDGE = 1e-6
# Widest embedding frechet_distance takes: far above audio embeddings (VGGish 128, PaSST 768, OpenL3 6144)
# and below raw waveforms, whose d x d covariance (44100 samples: 15 GB in float64) would exhaust memory.
MAX_WIDTH = 8192


class AudioEmbedding:
    """Fixed clip embedding: per band group, mean / std / mean |delta| over time of the log-mel."""

    def __init__(self, sample_rate: int = 22050, n_groups: int = 16) -> None:
        mel = evaluation_mel(sample_rate)
        if not 1 <= n_groups <= mel.n_mels:
            raise ShapeError(f"n_groups must be in [1, {mel.n_mels}], got {n_groups}")
        self.sample_rate = sample_rate
        self.n_groups = n_groups
        self.mel = mel
        # group g pools bands [edges[g], edges[g+1]): equal shares of the 80 mel bands
        self.edges = np.linspace(0, mel.n_mels, n_groups + 1).round().astype(int).tolist()

    @property
    def dim(self) -> int:
        return 3 * self.n_groups

    def embed_log_mel(self, log_mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b d"]:
        """Embedding of ln-mel spectrograms (the front-end's `log_mel`, or `denormalize` of a model's mel)."""
        if log_mel.shape[1] != self.mel.n_mels or log_mel.shape[2] < 2:
            raise ShapeError(f"AudioEmbedding expects [b, {self.mel.n_mels}, n >= 2] ln-mel, got {tuple(log_mel.shape)}")
        mag = log_mel.double().exp()
        lo = self.mel.clip_val  # the mel's own floor: silence is ln(clip_val) in every group
        groups = torch.stack([mag[:, a:b].mean(dim=1) for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)], 1)
        g = groups.clamp_min(lo).log()  # [b, groups, n]
        delta = (g[..., 1:] - g[..., :-1]).abs().mean(dim=-1)
        return torch.cat([g.mean(dim=-1), g.std(dim=-1), delta], dim=1).float()

    def __call__(
        self, wavs: Sequence[Float[Tensor, "_"] | Float[np.ndarray, "_"]] | Float[Tensor, "b s"] | Float[np.ndarray, "b s"]
    ) -> Float[Tensor, "b d"]:
        """Embedding of mono waveforms at `sample_rate`, one row per clip: a list (lengths may differ;
        each is summarised alone) or a batch [clips, samples] of equal-length ones (a row is a clip:
        mix channels to mono first)."""
        if isinstance(wavs, (torch.Tensor, np.ndarray)):
            shape = list(wavs.shape)
            if len(shape) != 2:
                fix = "pass [wav] for one clip" if len(shape) == 1 else "a batch is [clips, samples] of mono audio"
                if len(shape) == 3 and shape[1] == 1:
                    fix += f" (wavs[:, 0] drops the channel axis of {shape})"
                elif len(shape) == 3:
                    fix += f" (wavs.mean(1) mixes the {shape[1]} channels to mono)"
                raise ShapeError(
                    f"AudioEmbedding takes mono waveforms: a list of [samples] or a batch [clips, samples], got one {type(wavs).__name__} "
                    f"of shape {shape}; {fix}"
                )
            wavs = list(wavs)  # each row a clip, summarised alone as in a list
        if len(wavs) == 0:
            raise ShapeError("AudioEmbedding needs at least one waveform")
        rows = [self.embed_log_mel(self.mel.log_mel(torch.from_numpy(as_numpy_wave(w)))[None]) for w in wavs]
        return torch.cat(rows)


def _sqrt_psd(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance(
    emb_a: Float[Tensor, "n1 d"] | Float[np.ndarray, "n1 d"],
    emb_b: Float[Tensor, "n2 d"] | Float[np.ndarray, "n2 d"],
    ridge: float = RIDGE,
) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (see the module docstring)."""
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not (math.isfinite(ridge) and ridge >= 0):  # NaN compares False
        raise ShapeError(f"frechet_distance needs a finite ridge >= 0 (default {RIDGE}), got {ridge!r}")
    try:  # no copy yet: the widths are checked before anything of size d x d is made
        a, b = (torch.as_tensor(x).detach() for x in (emb_a, emb_b))
    except (TypeError, ValueError, RuntimeError):
        raise ShapeError(
            f"frechet_distance takes two embedding sets [n, d] as tensors or arrays, got {type(emb_a).__name__} and {type(emb_b).__name__}"
        ) from None
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(
            f"frechet_distance takes two embedding sets [n, d] of one width d, got {list(a.shape)} and {list(b.shape)}; "
            "embed both with the same AudioEmbedding"
        )
    if a.shape[1] > MAX_WIDTH:
        raise ShapeError(
            f"frechet_distance takes embeddings of width d <= {MAX_WIDTH}, got d = {a.shape[1]} (raw waveforms?), whose d x d covariance "
            f"would take {a.shape[1] ** 2 * 8 / 1e9:.1f} GB; embed each clip first, e.g. AudioEmbedding(sample_rate)(wavs) -> [n, 48]"
        )
    a, b = a.to("cpu", torch.float64), b.to("cpu", torch.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ShapeError(f"frechet_distance needs at least 2 embeddings per set (for a covariance), got {a.shape[0]} and {b.shape[0]}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ShapeError("frechet_distance got NaN or Inf embeddings")
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    scale = max(float(torch.diagonal(ca).mean() + torch.diagonal(cb).mean()) / 2, 1e-12)
    eye = torch.eye(a.shape[1], dtype=torch.float64)
    ca, cb = ca + ridge * scale * eye, cb + ridge * scale * eye
    sa = _sqrt_psd(ca)
    inner = sa @ cb @ sa
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0.0).sqrt().sum()
    fd = (a.mean(0) - b.mean(0)).square().sum() + torch.trace(ca) + torch.trace(cb) - 2 * tr_sqrt
    return max(float(fd), 0.0)
