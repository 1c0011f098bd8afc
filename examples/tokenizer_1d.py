"""A 1-D tokenizer registered from user code, used by name in the model, the CLI and training.

"conv1d_vq" reads a mel [b, n_mels, n] with all mel bins as channels, downsamples time by
2**n_down with strided Conv1d, quantises each frame vector with the library's VectorQuantizer and
decodes with ConvTranspose1d. The library's token maps are [b, F, T]; a 1-D tokenizer has F = 1:
codes [b, 1, T], grid (1, T), downsample (n_mels, 2**n_down). The backbone, the aligners, the
sampler, the pipeline and the training recipes need no special case for it.

It also satisfies the two optional training contracts of `controlfoley.tokenizers.base`:
`forward(mel) -> (recon, codes, vq_loss)` (the `tokenizer` recipe) and
`restart_dead_codes(mels, generator)` (`--codebook-restart-every`).

Run:  python examples/tokenizer_1d.py
From the command line, load this file with --plugin:

    controlfoley --plugin examples/tokenizer_1d.py extract --preset specmaskfoley_tiny \\
        --model tokenizer=conv1d_vq --synthetic 64 --mel --out data_mel
    controlfoley --plugin examples/tokenizer_1d.py train tokenizer --preset specmaskfoley_tiny \\
        --model tokenizer=conv1d_vq --data data_mel --out run_tok1d --steps 20 --codebook-restart-every 5
"""

import torch
from torch import nn

from controlfoley import TOKENIZERS, build_model
from controlfoley.errors import ShapeError
from controlfoley.tokenizers.specvqgan import VectorQuantizer


class Conv1dVQ(nn.Module):
    """Mel [b, n_mels, n] <-> codes [b, 1, n // 2**n_down]."""

    def __init__(self, n_mels: int, hidden: int, embed_dim: int, n_embed: int, n_down: int, beta: float) -> None:
        super().__init__()
        self.n_mels, self.codebook_size = n_mels, n_embed
        self.downsample = (n_mels, 2**n_down)  # the mel-bin factor n_mels makes F = 1
        down = [m for _ in range(n_down) for m in (nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), nn.GELU())]
        up = [m for _ in range(n_down) for m in (nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1), nn.GELU())]
        self.encoder = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), nn.GELU(), *down, nn.Conv1d(hidden, embed_dim, 1))
        self.decoder = nn.Sequential(nn.Conv1d(embed_dim, hidden, 3, padding=1), nn.GELU(), *up, nn.Conv1d(hidden, n_mels, 3, padding=1))
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta)  # works on [b, e, F, T] latents, here F = 1

    # -- the Tokenizer contract ---------------------------------------------------------------
    def grid(self, n_frames: int) -> tuple[int, int]:
        step = self.downsample[1]
        if n_frames < step or n_frames % step:
            raise ShapeError(f"conv1d_vq needs a positive multiple of {step} mel frames, got {n_frames}")
        return 1, n_frames // step

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.quantize.nearest(self._latent(mel))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed_codes(codes)[:, :, 0])

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3 or codes.shape[1] != 1:
            raise ShapeError(f"conv1d_vq expects codes [b, 1, T], got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ShapeError(f"conv1d_vq codes must lie in [0, {self.codebook_size})")
        return self.quantize.lookup(codes)

    # -- what the tokenizer recipe needs ------------------------------------------------------
    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.quantize(self._latent(mel))
        return self.decoder(q.z_q[:, :, 0]), q.codes, q.loss

    @torch.no_grad()
    def restart_dead_codes(self, mels: list[torch.Tensor], generator: torch.Generator) -> int:
        # the step's micro-batches, encoded one at a time; the quantiser sums usage over ranks
        return self.quantize.restart_dead_codes(torch.cat([self._latent(m) for m in mels]), generator)

    def _latent(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ShapeError(f"conv1d_vq expects a mel [b, {self.n_mels}, n], got shape {tuple(mel.shape)}")
        self.grid(mel.shape[2])
        return self.encoder(mel).unsqueeze(2)  # [b, e, 1, T]


@TOKENIZERS.register("conv1d_vq")
def conv1d_vq(*, n_mels: int = 80, hidden: int = 128, embed_dim: int = 64, n_embed: int = 256, n_down: int = 4, beta: float = 0.25) -> Conv1dVQ:
    """A 1-D VQ tokenizer: all mel bins as channels, time downsampled 2**n_down, grid (1, T)."""
    # The docstring's first sentence is what `controlfoley list tokenizers -v` shows. Switching a preset's tokenizer to this name keeps the preset's settings this builder also
    # accepts (n_embed, embed_dim, beta): pass {"name": "conv1d_vq", "n_embed": ...} to change them.
    return Conv1dVQ(n_mels, hidden, embed_dim, n_embed, n_down, beta)


def main() -> None:
    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", tokenizer={"name": "conv1d_vq", "hidden": 64}).eval()
    print("tokenizer:", model.config.tokenizer, "grid:", model.grid)
    mel = torch.rand(2, model.tokenizer.n_mels, model.config.n_frames) * 2 - 1
    codes = model.tokenizer.encode(mel)
    print("codes of a mel:", tuple(codes.shape), "-> mel", tuple(model.tokenizer.decode(codes).shape))
    feats = {"sync": torch.randn(1, 142, 128), "clip": torch.randn(1, 47, 64)}
    sampled = model.generate(feats, torch.randn(1, 64), steps=4, generator=torch.Generator().manual_seed(0))
    wav = model.vocode(model.decode(sampled))
    print("sampled codes:", tuple(sampled.shape), "waveform:", tuple(wav.shape), "(untrained weights: noise)")


if __name__ == "__main__":
    main()
