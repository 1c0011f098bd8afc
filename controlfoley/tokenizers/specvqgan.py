"""SpecVQGAN: the 2-D spectrogram tokenizer of SpecMaskFoley (80 x 848 mel -> 5 x 53 tokens).

Notable features:
- Clean-room VQGAN (encoder, vector quantiser, decoder) whose state dict has the public SpecVQGAN
  codebook's names and shapes: 343 tensors, encoder 29.30M + decoder 42.45M params (72.14M) with
  the defaults, so an official Lightning `.ckpt` loads strictly (`load_official_checkpoint`).
- Implements the `Tokenizer` protocol: 16 x 16 downsampling, codes [b, F, T] in row-major order
  (index f*T + t), `embed_codes` gives the dequantised latents.
- Training: `forward(mel) -> (recon, codes, vq_loss)` with the straight-through estimator and
  vq_loss = codebook + beta * commitment; `codebook_usage(codes)` reports the fraction of the
  codebook in use and the perplexity.
- Input checks raise ShapeError naming the fix (crop length, expected mel bins, code range).
- Registered as tokenizer "specvqgan" with flat typed kwargs (JSON lists accepted for tuples).

References: Iashin & Rahtu, "Taming Visually Guided Sound Generation" (SpecVQGAN), BMVC 2021;
van den Oord et al., "Neural Discrete Representation Learning" (VQ-VAE), 2017; Esser et al.,
"Taming Transformers" (VQGAN), 2021; shared/reference/checkpoint-formats.md (SpecVQGAN section).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from controlfoley._ckpt_kind import identify_container, layers_beyond, mismatch_advice, strip_prefix
from controlfoley._legacy import load_legacy_checkpoint
from controlfoley._registry import TOKENIZERS
from controlfoley.config import ConfigError
from controlfoley.errors import CheckpointError, ShapeError
from controlfoley.tokenizers.vqgan_blocks import Decoder, Encoder
from controlfoley.typing import Float, Int, Tensor

__all__ = [
    "SpecVQGAN",
    "VectorQuantizer",
    "Quantized",
    "CodebookUsage",
    "specvqgan",
    "read_official_state_dict",
    "load_official_checkpoint",
]


class Quantized(NamedTuple):
    z_q: Float[Tensor, "b e f t"]  # straight-through: values of the codebook, gradient of z
    codes: Int[Tensor, "b f t"]
    loss: Float[Tensor, ""]  # codebook + beta * commitment
    perplexity: Float[Tensor, ""]  # exp(entropy of the batch's code histogram); stays on device


@dataclass(frozen=True)
class CodebookUsage:
    """How much of the codebook a batch of codes uses (for training reports)."""

    used: int  # distinct codes present
    fraction: float  # used / codebook size
    perplexity: float  # exp(entropy of the code histogram): 1 = collapse, codebook size = uniform


def _histogram_perplexity(codes: Tensor, n_embed: int) -> Tensor:
    counts = torch.bincount(codes.flatten(), minlength=n_embed).float()
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (VQ-VAE); the parameter is `embedding.weight` [V, e]."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z: Float[Tensor, "b e f t"]) -> Int[Tensor, "b f t"]:
        b, e, f, t = z.shape
        # in fp32 whatever autocast says: under bf16 autocast (training on CUDA) the distances' matmul
        # ran in bf16 and picked other codes than extraction (fp32) on near-ties (~1% of codes)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, e).float()  # (b*f*t, e), row-major over (f, t)
            w = self.embedding.weight.float()
            # |z - w|^2 = |z|^2 - 2 z.w + |w|^2; |z|^2 does not change the argmin
            dist = (w * w).sum(1)[None, :] - 2.0 * flat @ w.t()
        return dist.argmin(dim=1).view(b, f, t)

    def lookup(self, codes: Int[Tensor, "b f t"]) -> Float[Tensor, "b e f t"]:
        return self.embedding(codes).permute(0, 3, 1, 2)

    @torch.no_grad()
    def restart_dead_codes(self, z: Float[Tensor, "b e f t"], generator: torch.Generator) -> int:
        """Move the codes no vector of `z` selects onto randomly chosen vectors of `z`.

        Codebook restarts (Jukebox, Dhariwal et al. 2020; SoundStream, Zeghidour et al. 2021) keep a
        small codebook from collapsing onto a few entries early in training. Training-only: it
        changes no parameter name or shape. Returns how many codes were moved.

        Under torch.distributed a code is dead only if no rank's `z` selects it, so every rank
        makes the same decision (and all of them, or none, enter the broadcast); rank 0 draws the
        replacements from its own vectors and broadcasts the codebook."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        counts = torch.bincount(self.nearest(z.detach()).flatten(), minlength=self.n_embed)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)  # usage summed over ranks: one dead set everywhere
        dead = (counts == 0).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
        self.embedding.weight[dead] = flat[pick].to(self.embedding.weight.dtype)
        if distributed:
            torch.distributed.broadcast(self.embedding.weight.data, src=0)  # every rank keeps one codebook
        return int(dead.numel())

    def forward(self, z: Float[Tensor, "b e f t"]) -> Quantized:
        codes = self.nearest(z.detach())
        e_q = self.lookup(codes)
        codebook = F.mse_loss(e_q, z.detach())  # moves the codebook towards the encoder
        commitment = F.mse_loss(z, e_q.detach())  # keeps the encoder near its codes
        z_q = z + (e_q - z).detach()  # straight-through estimator
        loss = codebook + self.beta * commitment
        return Quantized(z_q, codes, loss, _histogram_perplexity(codes, self.n_embed))


class SpecVQGAN(nn.Module):
    """VQGAN over mel spectrograms; see the module docstring. Build with `specvqgan(**kwargs)`."""

    def __init__(
        self, encoder: Encoder, decoder: Decoder, quantize: VectorQuantizer, *, n_mels: int, z_channels: int
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.quantize = encoder, decoder, quantize
        enc_out = encoder.conv_out.out_channels
        self.quant_conv = nn.Conv2d(enc_out, quantize.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(quantize.embed_dim, z_channels, 1)
        factor = 2 ** (len(encoder.down) - 1)
        self.n_mels = n_mels
        self.codebook_size = quantize.n_embed
        self.embed_dim = quantize.embed_dim
        self.downsample = (factor, factor)

    # -- Tokenizer protocol --------------------------------------------------------------------
    def grid(self, n_frames: int) -> tuple[int, int]:
        step = self.downsample[1]
        if n_frames < step or n_frames % step:
            lower = (n_frames // step) * step
            upper = max(lower + step, step)
            fix = f"crop to {lower} or pad to {upper}" if lower > 0 else f"pad to {upper}"
            raise ShapeError(
                f"SpecVQGAN needs a positive number of mel frames divisible by {step} (its time downsampling), "
                f"got {n_frames}: {fix} frames"
            )
        return self.n_mels // self.downsample[0], n_frames // step

    def encode(self, mel: Float[Tensor, "b m n"]) -> Int[Tensor, "b f t"]:
        return self.quantize.nearest(self._latent(mel))

    def decode(self, codes: Int[Tensor, "b f t"]) -> Float[Tensor, "b m n"]:
        return self._decode_latent(self.embed_codes(codes))

    def embed_codes(self, codes: Int[Tensor, "b f t"]) -> Float[Tensor, "b e f t"]:
        self._check_codes(codes)
        return self.quantize.lookup(codes)

    # -- training --------------------------------------------------------------------------------
    def forward(
        self, mel: Float[Tensor, "b m n"]
    ) -> tuple[Float[Tensor, "b m n"], Int[Tensor, "b f t"], Float[Tensor, ""]]:
        """Reconstruct through the quantiser: (recon mel, codes, vq_loss). Gradients reach the
        encoder through the straight-through estimator."""
        q = self.quantize(self._latent(mel))
        return self._decode_latent(q.z_q), q.codes, q.loss

    def encode_quantized(self, mel: Float[Tensor, "b m n"]) -> Quantized:
        """Encoder + quantiser, with the VQ loss and the batch perplexity (no host sync)."""
        return self.quantize(self._latent(mel))

    @torch.no_grad()
    def restart_dead_codes(self, mels: Sequence[Float[Tensor, "b m n"]], generator: torch.Generator) -> int:
        """Codebook restarts over the latents of all `mels` (micro-batches, encoded one at a time;
        see `VectorQuantizer.restart_dead_codes`)."""
        return self.quantize.restart_dead_codes(torch.cat([self._latent(m) for m in mels]), generator)

    def codebook_usage(self, codes: Int[Tensor, "b f t"]) -> CodebookUsage:
        used = int(torch.unique(codes).numel())
        return CodebookUsage(
            used=used,
            fraction=used / self.codebook_size,
            perplexity=float(_histogram_perplexity(codes, self.codebook_size)),
        )

    # -- internals ----------------------------------------------------------------------------------
    def _latent(self, mel: Float[Tensor, "b m n"]) -> Float[Tensor, "b e f t"]:
        self._check_mel(mel)
        return self.quant_conv(self.encoder(mel.unsqueeze(1)))

    def _decode_latent(self, z_q: Float[Tensor, "b e f t"]) -> Float[Tensor, "b m n"]:
        return self.decoder(self.post_quant_conv(z_q)).squeeze(1)

    def _check_mel(self, mel: Tensor) -> None:
        if mel.ndim != 3 or not mel.is_floating_point():
            raise ShapeError(
                f"SpecVQGAN.encode expects a float mel [b, {self.n_mels}, n], got {mel.dtype} of shape {tuple(mel.shape)}"
            )
        if mel.shape[1] != self.n_mels:
            raise ShapeError(
                f"SpecVQGAN was built for {self.n_mels} mel bins, got {mel.shape[1]} (shape {tuple(mel.shape)}); "
                "a [b, n, m] tensor needs .transpose(1, 2)"
            )
        self.grid(mel.shape[2])
        if not bool(torch.isfinite(mel).all()):
            raise ShapeError("SpecVQGAN.encode got a mel with NaN or infinite values")

    def _check_codes(self, codes: Tensor) -> None:
        if codes.ndim != 3 or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ShapeError(
                f"SpecVQGAN expects integer codes [b, f, t], got {codes.dtype} of shape {tuple(codes.shape)}"
            )
        if codes.shape[1] != self.n_mels // self.downsample[0]:
            raise ShapeError(
                f"SpecVQGAN codes must have f = {self.n_mels // self.downsample[0]} rows (n_mels {self.n_mels} / "
                f"{self.downsample[0]}), got shape {tuple(codes.shape)}"
            )
        if codes.numel() == 0:
            return
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ShapeError(f"SpecVQGAN codes must lie in [0, {self.codebook_size}), got min {lo} and max {hi}")

    # -- official checkpoints ------------------------------------------------------------------
    def load_official_state_dict(self, state_dict: dict[str, Tensor], *, source: str = "state dict") -> None:
        """Load SpecVQGAN weights strictly; CheckpointError names missing, unexpected and
        mis-shaped keys (`loss.*` must already be dropped: see `read_official_state_dict`)."""
        _check_keys(self.state_dict(), state_dict, source)
        self.load_state_dict(state_dict, strict=True)

    @classmethod
    def from_official(cls, path: str | os.PathLike[str], trust: bool = False, **kwargs: Any) -> "SpecVQGAN":
        """Build with `specvqgan(**kwargs)` (defaults: the VGGSound codebook) and load `path`."""
        return load_official_checkpoint(path, trust=trust, **kwargs)


def _first(keys: list[str], n: int = 5) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_keys(expected: dict[str, Tensor], got: dict[str, Tensor], source: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(got))
        if tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched, 3)}")
    if (missing or unexpected) and (advice := mismatch_advice(got, "specvqgan", source)):
        raise CheckpointError(advice)
    build = "Build the model with the checkpoint's config (ch, ch_mult, num_res_blocks, attn_resolutions, z_channels, embed_dim, n_embed, ...)."
    if unexpected and not missing and not mismatched:
        if layers := layers_beyond(unexpected, expected):  # e.g. attention at 53 in the file, none built: not extra state
            raise CheckpointError(
                f"{source} holds every tensor of the SpecVQGAN model and {len(unexpected)} more, inside its modules "
                f"({_first(layers)}): the file's network has layers this one was built without. {build}"
            )
        raise CheckpointError(
            f"{source} holds every tensor of the SpecVQGAN model and {len(unexpected)} more ({_first(unexpected)}): "
            "drop those keys from the state dict (e.g. EMA or optimizer state saved beside the weights) and load it again"
        )
    if problems:
        raise CheckpointError(f"{source} does not match the SpecVQGAN model: " + "; ".join(problems) + ". " + build)


def read_official_state_dict(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Tensor]:
    """Read an official SpecVQGAN Lightning `.ckpt` (weights under "state_dict"; a bare state dict
    is accepted too) and drop the training-loss modules (`loss.*`: LPIPS and discriminator)."""
    obj = load_legacy_checkpoint(path, trust=trust)
    sd = None
    if isinstance(obj, dict):  # Lightning's "state_dict"; a re-saved {"model": sd}; or the state dict itself
        sd = next((obj[w] for w in ("state_dict", "model") if isinstance(obj.get(w), dict)), obj)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        known = identify_container(obj)
        fix = f"; it is {known.label}: {known.advice(path)}" if known and known.key != "specvqgan" else ""
        raise CheckpointError(
            f"{path} is not a SpecVQGAN checkpoint: expected a dict of tensors under 'state_dict' (or 'model', or the tensors "
            f"themselves), found {found}{fix}"
        )
    sd = strip_prefix({k: v for k, v in sd.items() if not k.startswith("loss.")})  # saved from a DistributedDataParallel wrapper
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def load_official_checkpoint(path: str | os.PathLike[str], *, trust: bool = False, **kwargs: Any) -> SpecVQGAN:
    """Build `specvqgan(**kwargs)` (defaults: the official VGGSound codebook) and load an official
    checkpoint into it strictly. Pickles needing more than tensors are refused unless `trust=True`.

    The official weights read SpecVQGAN's own mel (fmin 125, fmax 7600, 20*log10 scaled to [0, 1],
    then 2x - 1), not the HiFi-GAN mel of docs/DESIGN.md section 1."""
    model = specvqgan(**kwargs)
    model.load_official_state_dict(read_official_state_dict(path, trust=trust), source=str(path))
    return model.eval()


def _check_config(ch_mult: tuple[int, ...], dropout: float, beta: float, **sizes: int) -> None:
    small = {k: v for k, v in sizes.items() if v < 1}
    if small or not ch_mult or min(ch_mult) < 1:
        raise ConfigError(f"specvqgan: sizes must be positive, got {small}, ch_mult={list(ch_mult)}")
    if not 0.0 <= dropout < 1.0 or beta < 0.0:
        raise ConfigError(f"specvqgan: need 0 <= dropout < 1 and beta >= 0, got dropout={dropout}, beta={beta}")
    factor = 2 ** (len(ch_mult) - 1)
    if sizes["n_mels"] % factor:
        raise ConfigError(
            f"specvqgan: n_mels={sizes['n_mels']} must be a positive multiple of {factor} "
            f"(2^(len(ch_mult)-1) for ch_mult={list(ch_mult)})"
        )
    ch, groups = sizes["ch"], sizes["norm_groups"]
    bad = sorted({ch * m for m in ch_mult if (ch * m) % groups})
    if bad:
        raise ConfigError(f"specvqgan: channel counts {bad} are not divisible by norm_groups={groups}; lower norm_groups")
    if sizes["in_channels"] != 1 or sizes["out_ch"] != 1:
        raise ConfigError(
            "specvqgan: a mel tokenizer reads and writes one channel; "
            f"got in_channels={sizes['in_channels']}, out_ch={sizes['out_ch']}"
        )


@TOKENIZERS.register("specvqgan")
def specvqgan(
    *,
    n_mels: int = 80,
    ch: int = 128,
    ch_mult: tuple[int, ...] | list[int] = (1, 1, 2, 2, 4),
    num_res_blocks: int = 2,
    attn_resolutions: tuple[int, ...] | list[int] = (53,),
    resolution: int = 848,
    z_channels: int = 256,
    embed_dim: int = 256,
    n_embed: int = 1024,
    in_channels: int = 1,
    out_ch: int = 1,
    dropout: float = 0.0,
    beta: float = 0.25,
    double_z: bool = False,
    norm_groups: int = 32,
    checkpoint: str | None = None,
    trust_checkpoint: bool = False,
) -> SpecVQGAN:
    """SpecVQGAN tokenizer; defaults are the official VGGSound codebook (configs/vggsound_codebook.yaml).

    `resolution` and `attn_resolutions` count mel frames along time: attention runs at the levels
    whose time length (resolution halved per level) is listed. `norm_groups` (32 officially) lets
    small test models use fewer channels; it changes no parameter shape. `double_z` doubles the
    encoder's output channels (as in the VQGAN code base; `quant_conv` then reads 2 * z_channels).
    `checkpoint`: an official SpecVQGAN codebook `.ckpt` (Lightning; `loss.*` dropped), loaded
    strictly at build time (`trust_checkpoint=True` to unpickle more than tensors); it reads
    SpecVQGAN's own mel, so build it with the "specvqgan" mel front end. A saved model holds these
    weights and loads without the file.
    """
    for name, seq in (("ch_mult", ch_mult), ("attn_resolutions", attn_resolutions)):
        if isinstance(seq, str) or not isinstance(seq, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seq):
            raise ConfigError(f"specvqgan: {name} must be a list of ints, e.g. [1, 1, 2, 2, 4], got {seq!r}")
    ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
    _check_config(
        ch_mult, dropout, beta, n_mels=n_mels, ch=ch, num_res_blocks=num_res_blocks, resolution=resolution,
        z_channels=z_channels, embed_dim=embed_dim, n_embed=n_embed, in_channels=in_channels, out_ch=out_ch,
        norm_groups=norm_groups,
    )
    shared: dict[str, Any] = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                  resolution=resolution, z_channels=z_channels, dropout=dropout, groups=norm_groups)
    encoder = Encoder(in_channels=in_channels, double_z=double_z, **shared)
    decoder = Decoder(out_ch=out_ch, **shared)
    quantize = VectorQuantizer(n_embed, embed_dim, beta)
    model = SpecVQGAN(encoder, decoder, quantize, n_mels=n_mels, z_channels=z_channels)
    if checkpoint is not None:
        model.load_official_state_dict(read_official_state_dict(checkpoint, trust=trust_checkpoint), source=str(checkpoint))
    return model


setattr(specvqgan, "weight_args", ("checkpoint", "trust_checkpoint"))  # a saved model holds these weights (checkpoint.load_model)
setattr(specvqgan, "weights_mel", "specvqgan")  # the official codebooks were trained on SpecVQGAN's own mel (build_model warns otherwise)
