"""Shared pieces of the pipeline tests: a micro model, a fast test vocoder, and bad media files."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from controlfoley import VOCODERS, build_model
from controlfoley.video import mux_audio

MICRO = {
    "backbone": {"dim": 32, "depth": 2, "heads": 2, "ffn_dim": 64, "cond_dim": 16},
    "controlnet": {"n_blocks": 1},
    "control_encoder": {"sync_dim": 24, "clip_dim": 12},
    "tokenizer": {"ch": 8, "num_res_blocks": 1, "z_channels": 16, "embed_dim": 16, "n_embed": 64, "norm_groups": 4},
    "vocoder": "test_envelope",
}


class EnvelopeVocoder(nn.Module):
    """Seeded noise shaped by each mel frame's loudness: fast, deterministic, energy follows the mel."""

    def __init__(self, mel: nn.Module) -> None:
        super().__init__()
        self.mel, self.sample_rate, self.hop = mel, mel.sample_rate, mel.hop_length

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        env = self.mel.denormalize(mel).exp().pow(2).mean(1).sqrt()  # b n
        env = env.repeat_interleave(self.hop, dim=-1)
        noise = torch.randn(env.shape, generator=torch.Generator().manual_seed(0)).to(env.device)
        return (env * noise).clamp(-1, 1)


if "test_envelope" not in VOCODERS:
    VOCODERS.register("test_envelope")(lambda *, mel: EnvelopeVocoder(mel))


def micro_model(seed: int = 0, **overrides: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("specmaskfoley_tiny", **{**MICRO, **overrides}).eval()


def as_trained(model: nn.Module) -> nn.Module:
    """Record a test model's parts as trained: it stands in for a trained checkpoint (a built
    model records none, and the pipeline / CLI refuse it for foley)."""
    model.trained_parts = {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}  # what a ControlNet run records
    return model


def write_frames(path: Path, frames: np.ndarray, pts: list[int], time_base: Fraction, rate: Fraction) -> Path:
    """uint8 frames [n, h, w, 3] with explicit presentation timestamps (constant or variable rate)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.time_base = time_base
        s.options = {"crf": "12"}
        for img, p in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return path


def write_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 22050) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sample_rate)
        s.layout = "mono"
        for i in range(int(seconds * sample_rate) // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, i * 1024
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return path


def write_zero_frame_video(path: Path) -> Path:
    """An MP4 whose video stream was opened and closed without a single frame."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
        for pkt in s.encode(None):
            c.mux(pkt)
    return path


def bad_media(folder: Path, good: Path) -> dict[str, Path]:
    """One file per kind of bad input the CLI must survive, made from a good MP4."""
    data = good.read_bytes()
    stsd = data.find(b"stsd")
    codec_at = data.find(b"avc1", stsd)
    files = {
        "missing": folder / "missing.mp4",
        "empty": folder / "empty.mp4",
        "random": folder / "random.mp4",
        "truncated": folder / "truncated.mp4",
        "unsupported_codec": folder / "unsupported.mp4",
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["unsupported_codec"].write_bytes(data[:codec_at] + b"zzzz" + data[codec_at + 4 :])  # a fourcc no decoder knows
    full_mkv = mux_audio(good, torch.zeros(22050), 22050, folder / "full.mkv").path  # Matroska: a duration, no frame count
    files["truncated_mkv"] = folder / "midtrunc.mkv"
    files["truncated_mkv"].write_bytes(full_mkv.read_bytes()[: full_mkv.stat().st_size // 2])  # cut mid-stream
    files["audio_only"] = write_audio_only(folder / "audio_only.m4a")
    files["zero_frames"] = write_zero_frame_video(folder / "zero_frames.mp4")
    return files
