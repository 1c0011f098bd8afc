"""SpecVQGAN tokenizer: official layout (key and parameter counts), shapes, input checks,
official-checkpoint loading, straight-through gradients, a short learning run, property tests."""

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from controlfoley._registry import TOKENIZERS
from controlfoley.config import ConfigError
from controlfoley.errors import CheckpointError, ShapeError
from controlfoley.tokenizers.base import Tokenizer
from controlfoley.tokenizers.specvqgan import (
    SpecVQGAN,
    load_official_checkpoint,
    read_official_state_dict,
    specvqgan,
)

# Small enough for CPU tests, same five-level layout as the official model: (b, 80, n) -> (b, 5, n/16).
TINY = dict(
    ch=16, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), resolution=64,
    z_channels=16, embed_dim=16, n_embed=64, norm_groups=8,
)


class TrainerState:
    """Stands for the custom objects a Lightning checkpoint may pickle (hyper-parameter holders)."""

    def __init__(self) -> None:
        self.epoch = 3


def smooth_mels(b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 1, 5, max(n // 16, 1), generator=g) * 2 - 1
    return F.interpolate(coarse, size=(80, n), mode="bilinear", align_corners=False).squeeze(1)


@pytest.fixture(scope="module")
def tiny() -> SpecVQGAN:
    torch.manual_seed(0)
    return specvqgan(**TINY).eval()


@pytest.fixture(scope="module")
def full() -> SpecVQGAN:
    torch.manual_seed(0)
    return specvqgan().eval()


# -- the official layout -----------------------------------------------------------------------
def test_full_config_matches_official_state_dict(full: SpecVQGAN) -> None:
    sd = full.state_dict()
    assert len(sd) == 343
    count = lambda prefix: sum(v.numel() for k, v in sd.items() if k.startswith(prefix))  # noqa: E731
    assert count("encoder.") == 29_295_872 and round(count("encoder.") / 1e6, 2) == 29.30
    assert count("decoder.") == 42_447_489 and round(count("decoder.") / 1e6, 2) == 42.45
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 2) == 72.14
    shapes = {
        "encoder.conv_in.weight": (128, 1, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.down.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (1, 128, 3, 3),
        "quantize.embedding.weight": (1024, 256),
        "quant_conv.weight": (256, 256, 1, 1),
        "post_quant_conv.weight": (256, 256, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert not any(k.startswith(("encoder.down.4.downsample", "decoder.up.0.upsample")) for k in sd)
    assert {k.split(".")[4] for k in sd if k.startswith("decoder.up.0.block.")} == {"0", "1", "2"}


def test_full_config_round_trip_shapes(full: SpecVQGAN) -> None:
    mel = smooth_mels(1, 848, seed=1)
    assert full.grid(848) == (5, 53) and full.downsample == (16, 16) and full.codebook_size == 1024
    with torch.inference_mode():
        codes = full.encode(mel)
        assert codes.shape == (1, 5, 53) and codes.dtype == torch.long
        assert full.embed_codes(codes).shape == (1, 256, 5, 53)
        assert full.decode(codes).shape == (1, 80, 848)


def test_protocol_registry_and_json_kwargs(tiny: SpecVQGAN) -> None:
    assert isinstance(tiny, Tokenizer)
    assert TOKENIZERS.get("specvqgan") is specvqgan
    kwargs = json.loads(json.dumps(TINY))  # tuples become lists, as in a saved config
    built = TOKENIZERS.build("specvqgan", **kwargs)
    assert built.state_dict().keys() == tiny.state_dict().keys()


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        specvqgan(**{**TINY, "n_mels": 72})
    with pytest.raises(ConfigError, match="norm_groups"):
        specvqgan(**{**TINY, "norm_groups": 32})
    with pytest.raises(ConfigError, match="n_embed"):
        specvqgan(**{**TINY, "n_embed": 0})
    with pytest.raises(ConfigError, match="one channel"):
        specvqgan(**{**TINY, "in_channels": 2})


# -- shapes and input checks -----------------------------------------------------------------
def test_codes_are_row_major_nearest_codebook_entries(tiny: SpecVQGAN) -> None:
    mel = smooth_mels(2, 64, seed=2)
    with torch.no_grad():
        codes = tiny.encode(mel)
        z = tiny.quant_conv(tiny.encoder(mel.unsqueeze(1)))  # (2, e, 5, 4)
        w = tiny.quantize.embedding.weight
        flat = codes.flatten(1)  # index f*T + t
        for b in range(2):
            for f in range(5):
                for t in range(4):
                    nearest = torch.cdist(z[b, :, f, t][None], w).argmin()
                    assert flat[b, f * 4 + t] == nearest
        assert torch.equal(tiny.embed_codes(codes), w[codes].permute(0, 3, 1, 2))


def test_encode_rejects_bad_mels(tiny: SpecVQGAN) -> None:
    with pytest.raises(ShapeError, match="80 mel bins, got 64"):
        tiny.encode(torch.zeros(1, 64, 64))
    with pytest.raises(ShapeError, match="crop to 64 or pad to 80"):
        tiny.encode(torch.zeros(1, 80, 70))
    bad = torch.zeros(1, 80, 64)
    bad[0, 3, 5] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        tiny.encode(bad)


def test_decode_rejects_bad_codes(tiny: SpecVQGAN) -> None:
    codes = torch.zeros(1, 5, 4, dtype=torch.long)
    codes[0, 0, 0], codes[0, 1, 1] = -1, 64
    with pytest.raises(ShapeError, match=r"\[0, 64\), got min -1 and max 64"):
        tiny.decode(codes)
    with pytest.raises(ShapeError, match="f = 5 rows"):
        tiny.decode(torch.zeros(1, 4, 4, dtype=torch.long))


def test_fused_and_math_attention_agree() -> None:
    torch.manual_seed(3)
    model = specvqgan(**TINY).eval()
    mel = smooth_mels(1, 64, seed=3)
    with torch.no_grad():
        fused = model.encode_quantized(mel).z_q
        for module in model.modules():
            if hasattr(module, "fused"):
                module.fused = False
        math_path = model.encode_quantized(mel).z_q
    torch.testing.assert_close(fused, math_path, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=-5, max_value=3000))
def test_grid_property(tiny: SpecVQGAN, n: int) -> None:
    if n >= 16 and n % 16 == 0:
        assert tiny.grid(n) == (5, n // 16)
    else:
        with pytest.raises(ShapeError) as err:
            tiny.grid(n)
        lower = (n // 16) * 16
        upper = max(lower + 16, 16)  # the nearest valid lengths either side
        assert f"pad to {upper}" in str(err.value)
        assert (f"crop to {lower}" in str(err.value)) == (lower > 0)


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 2), t=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_decode_encode_keeps_shape(tiny: SpecVQGAN, b: int, t: int, seed: int) -> None:
    mel = smooth_mels(b, 16 * t, seed=seed)
    with torch.no_grad():
        codes = tiny.encode(mel)
        assert codes.shape == (b, *tiny.grid(16 * t))
        assert tiny.decode(codes).shape == mel.shape


# -- official checkpoints ----------------------------------------------------------------------
def _save_official(path: Path, sd: dict[str, torch.Tensor], **extra: object) -> None:
    # the layout of a Lightning checkpoint: weights plus the loss modules under "state_dict"
    loss_keys = {
        "loss.discriminator.main.0.weight": torch.randn(4, 1, 3, 3),
        "loss.perceptual_loss.scaling_layer.shift": torch.zeros(1, 3, 1, 1),
    }
    torch.save({"epoch": 7, "global_step": 1234, "state_dict": {**sd, **loss_keys}, **extra}, path)


def test_official_checkpoint_round_trip(tmp_path: Path, tiny: SpecVQGAN) -> None:
    path = tmp_path / "vggsound_codebook.ckpt"
    _save_official(path, tiny.state_dict())
    loaded = load_official_checkpoint(path, **TINY)
    assert not loaded.training
    mel = smooth_mels(2, 64, seed=4)
    with torch.no_grad():
        codes = tiny.encode(mel)
        assert torch.equal(loaded.encode(mel), codes)
        assert torch.equal(loaded.decode(codes), tiny.decode(codes))
    again = SpecVQGAN.from_official(path, **json.loads(json.dumps(TINY)))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny.state_dict().values(), strict=True))


def test_official_checkpoint_mismatch_names_keys(tmp_path: Path, tiny: SpecVQGAN) -> None:
    sd = dict(tiny.state_dict())
    del sd["quantize.embedding.weight"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.ckpt"
    _save_official(path, sd)
    expected = "1 missing key.*quantize.embedding.weight.*1 unexpected key.*encoder.extra.weight"
    with pytest.raises(CheckpointError, match=expected):
        load_official_checkpoint(path, **TINY)
    path2 = tmp_path / "other_codebook.ckpt"
    _save_official(path2, tiny.state_dict())
    with pytest.raises(CheckpointError, match=r"quantize.embedding.weight: checkpoint \(64, 16\) vs model \(32, 16\)"):
        load_official_checkpoint(path2, **{**TINY, "n_embed": 32})


def test_official_codebook_variants_and_other_files(tmp_path: Path, tiny: SpecVQGAN) -> None:
    """A DDP `module.` prefix and a `{"model": sd}` wrapper load; a controlfoley checkpoint, a
    vocoder file, or extra state beside the weights are each named, with what to do."""
    from controlfoley import build_model

    sd = tiny.state_dict()
    _save_official(tmp_path / "ddp.ckpt", {f"module.{k}": v for k, v in sd.items()})
    torch.save({"model": dict(sd)}, tmp_path / "wrapped.pt")
    for name in ("ddp.ckpt", "wrapped.pt"):
        loaded = load_official_checkpoint(tmp_path / name, **TINY)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), sd.values(), strict=True)), name
    _save_official(tmp_path / "ema.ckpt", {**sd, "model_ema.decay": torch.tensor(0.999)})
    with pytest.raises(CheckpointError, match=r"holds every tensor of the SpecVQGAN model and 1 more \(model_ema.decay\): drop those keys"):
        load_official_checkpoint(tmp_path / "ema.ckpt", **TINY)
    # attention built away: the file's attention tensors are layers, not state to drop (the advice said drop them)
    _save_official(tmp_path / "attn.ckpt", sd)
    with pytest.raises(CheckpointError, match=r"attn.ckpt holds every tensor of the SpecVQGAN model and \d+ more, inside its modules \((de|en)coder\.\S*attn.*"
                       r"the file's network has layers this one was built without\. Build the model with the checkpoint's config \(.*attn_resolutions") as err:  # fmt: skip
        load_official_checkpoint(tmp_path / "attn.ckpt", **{**TINY, "attn_resolutions": ()})
    assert "drop those keys" not in str(err.value)
    ours = build_model("specmaskfoley_tiny").save(tmp_path / "ours.safetensors")
    with pytest.raises(CheckpointError, match=r"ours.safetensors is a controlfoley model checkpoint, not an official SpecVQGAN codebook.*from_pretrained"):
        load_official_checkpoint(ours, **TINY)
    hifigan_keys = {"conv_pre.weight_v": torch.zeros(1), "conv_pre.weight_g": torch.zeros(1), "resblocks.0.convs1.0.weight_v": torch.zeros(1)}
    torch.save({"generator": hifigan_keys}, tmp_path / "g_00000001")
    with pytest.raises(CheckpointError, match=r"it is a HiFi-GAN generator \(a vocoder\): build_model\(\.\.\., vocoder="):
        load_official_checkpoint(tmp_path / "g_00000001", **TINY)


def test_pickled_custom_objects_need_trust(tmp_path: Path, tiny: SpecVQGAN) -> None:
    path = tmp_path / "with_objects.ckpt"
    _save_official(path, tiny.state_dict(), hyper_parameters=TrainerState())
    with pytest.raises(CheckpointError, match="trust=True"):
        read_official_state_dict(path)
    loaded = load_official_checkpoint(path, trust=True, **TINY)
    assert loaded.state_dict().keys() == tiny.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values(), strict=True))  # its weights, not a new init


# -- training ------------------------------------------------------------------------------------
def test_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(5)
    model = specvqgan(**TINY)
    recon, codes, vq_loss = model(smooth_mels(2, 64, seed=5))
    F.mse_loss(recon, torch.zeros_like(recon)).backward(retain_graph=True)
    enc_grad = model.encoder.conv_in.weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0  # through the quantiser, by straight-through
    assert model.quantize.embedding.weight.grad is None  # reconstruction alone does not move the codebook
    vq_loss.backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert codes.shape == (2, 5, 4) and vq_loss.ndim == 0


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    # Ops this small gain nothing from a second thread, and thread hand-offs slow down many
    # times over when other processes share the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_short_training_lowers_reconstruction_loss() -> None:
    torch.manual_seed(6)
    model = specvqgan(**TINY).train()
    mels = smooth_mels(4, 64, seed=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    with one_thread():
        for _ in range(60):
            recon, codes, vq_loss = model(mels)
            rec = F.mse_loss(recon, mels)
            opt.zero_grad()
            (rec + vq_loss).backward()
            opt.step()
            losses.append(rec.item())
    assert all(math.isfinite(x) for x in losses)
    final = sum(losses[-5:]) / 5
    assert final < 0.5 * losses[0], losses
    assert final < 0.75 * mels.var(unbiased=False).item(), losses  # better than predicting the mean
    usage = model.codebook_usage(codes)
    assert 1 <= usage.used <= 64 and usage.fraction == usage.used / 64 and 1.0 <= usage.perplexity <= usage.used + 1e-4


def test_codebook_usage_and_batch_perplexity(tiny: SpecVQGAN) -> None:
    collapsed = tiny.codebook_usage(torch.zeros(2, 5, 4, dtype=torch.long))
    assert collapsed.used == 1 and collapsed.fraction == 1 / 64 and collapsed.perplexity == pytest.approx(1.0)
    even = tiny.codebook_usage(torch.arange(4).repeat(10).view(2, 5, 4))
    assert even.used == 4 and even.perplexity == pytest.approx(4.0)
    with torch.no_grad():
        q = tiny.encode_quantized(smooth_mels(2, 64, seed=7))
    assert q.perplexity.item() == pytest.approx(tiny.codebook_usage(q.codes).perplexity, rel=1e-5)


def test_dead_code_restart_revives_a_collapsed_codebook() -> None:
    from controlfoley.tokenizers.specvqgan import VectorQuantizer

    vq = VectorQuantizer(32, 4, 0.25)
    with torch.no_grad():
        vq.embedding.weight.zero_()
        vq.embedding.weight[0] = 1.0  # a collapsed codebook: every vector picks code 0 or its twins
    z = torch.randn(2, 4, 3, 8)
    before = vq.nearest(z).unique().numel()
    moved = vq.restart_dead_codes(z, torch.Generator().manual_seed(0))
    after = vq.nearest(z).unique().numel()
    assert moved >= 30 and after > before + 10
    names = set(vq.state_dict())
    assert names == {"embedding.weight"}  # training-only: the checkpoint layout is unchanged


def test_an_official_codebook_through_the_builder_loads_and_saves_self_contained(tmp_path: Path, tiny: SpecVQGAN) -> None:
    """`tokenizer={"checkpoint": PATH}` loads an official .ckpt at build time, marks the tokenizer
    trained, and the saved model no longer needs the file; a .ckpt given where a controlfoley
    checkpoint is expected says how to load it."""
    from controlfoley import build_model, from_pretrained
    from controlfoley.checkpoint import load_parts
    from controlfoley.config import Part

    path = tmp_path / "vggsound_codebook.ckpt"
    _save_official(path, tiny.state_dict())
    with pytest.warns(UserWarning, match="weights trained on the 'specvqgan' mel, but the model's mel front-end is 'hifigan'.*mel='specvqgan'"):
        model = build_model("specmaskfoley_tiny", tokenizer=Part("specvqgan", {**TINY, "checkpoint": str(path)}))
    for k, v in tiny.state_dict().items():
        assert torch.equal(model.tokenizer.state_dict()[k], v), k
    from controlfoley.builder import weight_file_parts

    assert weight_file_parts(model.config) == ["tokenizer"] and model.trained_parts == {"tokenizer"}  # built from official weights
    assert weight_file_parts(build_model("specmaskfoley_tiny", tokenizer={"trust_checkpoint": False}).config) == []  # no file given
    saved = model.save(tmp_path / "m.safetensors")
    path.unlink()
    again = from_pretrained(saved)
    assert torch.equal(again.tokenizer.quantize.embedding.weight, tiny.quantize.embedding.weight)
    assert again.trained_parts == {"tokenizer"}  # the record travels with the file
    _save_official(path, tiny.state_dict())
    with pytest.raises(CheckpointError, match=r"is a PyTorch pickle.*it is an official SpecVQGAN codebook.*mel='specvqgan', tokenizer=\{'checkpoint'.*--model 'mel=\"specvqgan\"'"):
        load_parts(build_model("specmaskfoley_tiny"), path, ["tokenizer"])
    (tmp_path / "cut.safetensors").write_bytes(b"\x80" + b"\x00" * 7)  # a damaged file that merely starts like a pickle
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_parts(build_model("specmaskfoley_tiny"), tmp_path / "cut.safetensors", ["tokenizer"])


def test_a_lightning_checkpoint_loads_without_lightning_and_without_trust(tmp_path: Path, tiny: SpecVQGAN) -> None:
    """A Lightning checkpoint keys its callbacks' state by the callback class and may hold OmegaConf
    hyper-parameters: those load as inert stand-ins (no framework code runs, none is needed), so the
    official codebook reads safely where Lightning is not installed. Other objects still need trust."""
    import subprocess
    import sys

    pkg = tmp_path / "fake" / "pytorch_lightning" / "callbacks"
    pkg.mkdir(parents=True)
    (tmp_path / "fake" / "pytorch_lightning" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("class ModelCheckpoint:\n    def __init__(self):\n        self.best = 0.5\n")
    torch.save(tiny.state_dict(), tmp_path / "sd.pt")
    path = tmp_path / "lightning.ckpt"
    subprocess.run(
        [sys.executable, "-c",
         "import sys, torch; sys.path.insert(0, sys.argv[1]); from pytorch_lightning.callbacks import ModelCheckpoint as M\n"
         "torch.save({'epoch': 3, 'state_dict': torch.load(sys.argv[2]), 'callbacks': {M: {'best_model_score': torch.tensor(0.1)}},"
         " 'hyper_parameters': M()}, sys.argv[3])",
         str(tmp_path / "fake"), str(tmp_path / "sd.pt"), str(path)],
        check=True,
    )  # fmt: skip
    assert "pytorch_lightning" not in sys.modules
    sd = read_official_state_dict(path)  # no trust needed
    assert sd.keys() == tiny.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in tiny.state_dict().items())
    assert "pytorch_lightning" not in sys.modules  # nothing was imported
    # real OmegaConf hyper-parameters also pickle plain types by name (metadata's object_type / key_type,
    # a defaultdict): refused as 'arbitrary objects' before; they are the real types, the rest stand-ins
    conf = tmp_path / "fake" / "omegaconf"
    conf.mkdir()
    (conf / "__init__.py").write_text("class DictConfig:\n    pass\n")
    path = tmp_path / "omegaconf.ckpt"
    subprocess.run(
        [sys.executable, "-c",
         "import collections, sys, torch; sys.path.insert(0, sys.argv[1]); from omegaconf import DictConfig\n"
         "h = DictConfig(); h.__dict__.update(_metadata={'object_type': dict, 'key_type': int}, _flags=collections.defaultdict(list))\n"
         "torch.save({'state_dict': torch.load(sys.argv[2]), 'hyper_parameters': h}, sys.argv[3])",
         str(tmp_path / "fake"), str(tmp_path / "sd.pt"), str(path)],
        check=True,
    )  # fmt: skip
    assert {"builtins.dict", "builtins.int", "collections.defaultdict", "omegaconf.DictConfig"} <= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    sd = read_official_state_dict(path)
    assert sd.keys() == tiny.state_dict().keys() and "omegaconf" not in sys.modules
    # a class of any other package is no stand-in: it needs trust, and trust then needs the package
    other_pkg = tmp_path / "fake2" / "thing_pkg"
    other_pkg.mkdir(parents=True)
    (other_pkg / "__init__.py").write_text("class Thing:\n    pass\n")
    other = tmp_path / "other.ckpt"
    subprocess.run(
        [sys.executable, "-c",
         "import sys, torch; sys.path.insert(0, sys.argv[1]); from thing_pkg import Thing\n"
         "torch.save({'state_dict': {}, 'x': Thing()}, sys.argv[2])", str(tmp_path / "fake2"), str(other)],
        check=True,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="trust=True"):
        read_official_state_dict(other)
    # the code that defines it, not `pip install thing_pkg` (a module's name is not always a PyPI name: a typosquat risk)
    with pytest.raises(CheckpointError, match=r"the module 'thing_pkg', which is not importable here: unpickling it fully needs the code") as e:
        read_official_state_dict(other, trust=True)
    assert "pip install" not in str(e.value)


def test_codebook_lookup_ignores_autocast() -> None:
    """Training runs the tokenizer under bf16 autocast (on CUDA): the nearest-code search must still
    be fp32, or training and extraction (fp32) pick different codes on near-ties."""
    torch.manual_seed(0)
    vq = specvqgan(**TINY).quantize
    z = torch.randn(2, vq.embed_dim, 5, 16)
    want = vq.nearest(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vq.nearest(z)
    assert torch.equal(got, want)
    # and it is a real check: the same search in bf16 picks other codes for some vectors
    flat = z.permute(0, 2, 3, 1).reshape(-1, vq.embed_dim).bfloat16()
    w = vq.embedding.weight.bfloat16()
    in_bf16 = ((w * w).sum(1)[None, :] - 2.0 * flat @ w.t()).argmin(dim=1).view_as(want)
    assert not torch.equal(in_bf16, want)


def test_vq_loss_weights_the_commitment_term_by_beta() -> None:
    from controlfoley.tokenizers.specvqgan import VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, beta=0.25)
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
    q = vq(z)
    q.loss.backward()
    e_q, n = vq.lookup(q.codes).detach(), z.numel()
    # only beta * mse(z, sg(e_q)) depends on z: the encoder is pulled towards its codes with weight beta
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - e_q) / n)
    # mse(sg(z), e_q) with weight 1 moves the codebook
    expected = torch.zeros_like(vq.embedding.weight)
    expected.index_add_(0, q.codes.flatten(), (2 * (e_q - z.detach()) / n).permute(0, 2, 3, 1).reshape(-1, 4))
    torch.testing.assert_close(vq.embedding.weight.grad, expected)


def test_restarted_codes_take_vectors_the_generator_draws() -> None:
    from controlfoley.tokenizers.specvqgan import VectorQuantizer

    z = torch.randn(2, 4, 3, 8, generator=torch.Generator().manual_seed(1))
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)

    def restart(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        vq = VectorQuantizer(32, 4, 0.25)
        with torch.no_grad():
            vq.embedding.weight.zero_()
            vq.embedding.weight[0] = 1.0
        dead = (torch.bincount(vq.nearest(z).flatten(), minlength=32) == 0).nonzero().squeeze(1)
        assert vq.restart_dead_codes(z, torch.Generator().manual_seed(seed)) == dead.numel() >= 20
        return vq.embedding.weight.detach()[dead], dead

    a, dead_a = restart(0)
    b, dead_b = restart(1)
    assert torch.equal(dead_a, dead_b)
    assert all(any(torch.equal(row, v) for v in flat) for row in a)  # each moved onto a vector of z
    assert (a != b).any(dim=1).sum() >= len(dead_a) // 2  # which vectors: the generator's draw


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_bare_pickle_of_any_protocol_is_named_a_pytorch_pickle(tmp_path, protocol):
    import pickle

    from controlfoley.checkpoint import read_metadata, read_state_dict
    from controlfoley.errors import CheckpointError

    path = tmp_path / "weights.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}, protocol=protocol))
    for read in (read_state_dict, read_metadata):
        with pytest.raises(CheckpointError, match=r"is a PyTorch pickle \(\.ckpt / \.pt\)"):
            read(path)


# -- the layout written down from the upstream code ----------------------------------------------
# Derived by reading v-iashin/SpecVQGAN at commit 5bc54f30eb89f82d129aa36ae3f1e90b60e73952:
#   specvqgan/models/vqgan.py (VQModel: encoder, decoder, loss, quantize = VectorQuantizer(n_embed,
#     embed_dim), quant_conv = Conv2d(z_channels, embed_dim, 1), post_quant_conv = Conv2d(embed_dim,
#     z_channels, 1)), specvqgan/modules/vqvae/quantize.py (one nn.Embedding named `embedding`),
#   specvqgan/modules/diffusionmodules/model.py (Encoder / Decoder with temb_ch = 0: no temb_proj;
#     ResnetBlock norm1, conv1 3x3, norm2, conv2 3x3, nin_shortcut 1x1 only when channels change;
#     AttnBlock norm, q, k, v, proj_out 1x1; attention where curr_res is in attn_resolutions, the
#     encoder halving curr_res after each level but the last, the decoder starting from
#     resolution // 2**(levels-1) and doubling it after each level but level 0; `up` prepended so
#     that up[i] is level i; downsample / upsample `.conv` 3x3, absent at the last / first level),
#   configs/vggsound_codebook.yaml (the official codebook's settings), and train.py's Lightning
#   checkpoint, whose ["state_dict"] also holds the loss modules under `loss.`.
# Written out independently of controlfoley's own modules, so a renamed or reshaped tensor there
# fails here rather than at a user's first official load.
def _upstream_specvqgan_layout(
    *, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, attn_resolutions: tuple[int, ...] = (53,),
    resolution: int = 848, z_channels: int = 256, embed_dim: int = 256, n_embed: int = 1024, in_channels: int = 1, out_ch: int = 1,
    **_: object,
) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name: str, c: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    def mid(name: str, c: int) -> None:
        resnet(f"{name}.block_1", c, c)
        attn(f"{name}.attn_1", c)
        resnet(f"{name}.block_2", c, c)

    levels = len(ch_mult)
    in_mult = (1, *ch_mult)
    conv("encoder.conv_in", ch, in_channels, 3)
    res = resolution
    for i in range(levels):
        block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_resolutions:
                attn(f"encoder.down.{i}.attn.{j}", block_in)
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            res //= 2
    mid("encoder.mid", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", z_channels, block_in, 3)  # double_z False in the official config

    block_in, res = ch * ch_mult[-1], resolution // 2 ** (levels - 1)
    conv("decoder.conv_in", block_in, z_channels, 3)
    mid("decoder.mid", block_in)
    for i in reversed(range(levels)):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if res in attn_resolutions:
                attn(f"decoder.up.{i}.attn.{j}", block_in)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            res *= 2
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", out_ch, block_in, 3)

    out["quantize.embedding.weight"] = (n_embed, embed_dim)
    conv("quant_conv", embed_dim, z_channels, 1)
    conv("post_quant_conv", z_channels, embed_dim, 1)
    return out


def test_the_model_has_exactly_the_upstream_codebook_layout(full: SpecVQGAN, tiny: SpecVQGAN) -> None:
    """Every key and shape of the official VGGSound codebook, derived from the upstream code (see
    `_upstream_specvqgan_layout`), is the model's, and nothing else is: with the official settings
    and with the small test ones."""
    want = _upstream_specvqgan_layout()
    assert len(want) == 343 and sum(math.prod(s) for s in want.values()) == 72_137_089  # the reference's 343 tensors, 72.14M
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == want
    assert {k: tuple(v.shape) for k, v in tiny.state_dict().items()} == _upstream_specvqgan_layout(**TINY)


def test_a_checkpoint_in_the_upstream_layout_loads_strictly(tmp_path: Path) -> None:
    """A Lightning checkpoint built from the upstream layout alone (its `state_dict` with the
    `loss.perceptual_loss.*` / `loss.discriminator.*` modules beside the model, and Lightning's
    top-level entries) loads into the builder's model tensor for tensor."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in _upstream_specvqgan_layout(**TINY).items()}
    extras = {
        "loss.logvar": torch.zeros(()),
        "loss.perceptual_loss.scaling_layer.shift": torch.zeros(1, 1, 1, 1),
        "loss.perceptual_loss.net.slice1.0.weight": torch.zeros(64, 1, 3, 3),
        "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1, 64, 1, 1),
        "loss.discriminator.main.0.weight": torch.zeros(64, 1, 4, 4),
        "loss.discriminator.main.2.running_mean": torch.zeros(128),
    }
    ckpt = {"epoch": 11, "global_step": 40_000, "pytorch-lightning_version": "1.2.10", "state_dict": {**sd, **extras},
            "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": []}  # fmt: skip
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = load_official_checkpoint(tmp_path / "last.ckpt", **TINY)
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())
