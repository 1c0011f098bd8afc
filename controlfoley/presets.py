"""Model presets: zero-argument functions of literal numbers returning a `ModelConfig`.

- `specmaskfoley`: the paper's model (sec. 4.2): HiFi-GAN mel 80 x 848, 2-D SpecVQGAN (5 x 53
  tokens, codebook 1024 x 256), SpecMaskGIT ViT (24 blocks, D 768, 8 heads, FFN 3072, CLAP 512),
  Synchformer (768) + CLIP (1024) control encoder, FT-Aligner, ControlNet copy of 12 blocks,
  multi-CFG 0 -> 3 linear, MaskGIT 12 steps with Gumbel temperature 9.
- `specmaskgit`: the backbone alone, prompted by CLAP through the conditional mask (Table 2).
- Ablations of Table 2 and sec. 3.3: `*_plain1d`, `*_cfg_video`, `*_cfg_text_video`.
- `*_tiny`: the same code path with small widths for CPUs and the synthetic world (5.94 s windows
  of 512 mel frames -> 5 x 32 tokens, 8 synthetic classes, 128-d sync / 64-d clip / 64-d tag features).

Variants are overrides of a base preset, so they cannot drift from it.
"""

from collections.abc import Mapping
from pathlib import Path

from controlfoley._registry import PRESETS
from controlfoley.config import ConfigError, ModelConfig, Part, SamplerConfig

__all__ = ["get_preset", "list_presets", "pretrained_path", "PRETRAINED"]

ASSETS = Path(__file__).parent / "assets"
# Presets whose trained weights ship with the package (trained by `controlfoley experiment synthetic`).
PRETRAINED = {"specmaskfoley_synthetic": "specmaskfoley_synthetic.safetensors"}


@PRESETS.register("specmaskfoley")
def specmaskfoley() -> ModelConfig:
    """The paper's model (sec. 4.2): 2-D SpecVQGAN (5 x 53 tokens of 1024), SpecMaskGIT ViT 24 x 768,
    FT-Aligner, ControlNet copy of 12 blocks, multi-CFG 0 -> 3, 12 MaskGIT steps; 9.85 s windows (848 mel frames; the paper's 10 s clips).

    The vocoder is Griffin-Lim (no weights to download here); the paper's mel is HiFi-GAN's, so a
    trained HiFi-GAN or BigVGAN plugs in with `vocoder={"name": "hifigan", "checkpoint": PATH}`."""
    return ModelConfig(
        name="specmaskfoley",
        n_frames=848,  # 10 s at 22.05 kHz, hop 256 (861 frames) cropped to a multiple of 16
        mel=Part("hifigan", {}),
        tokenizer=Part(
            "specvqgan",
            {
                "ch": 128,
                "ch_mult": [1, 1, 2, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [53],
                "resolution": 848,
                "z_channels": 256,
                "embed_dim": 256,
                "n_embed": 1024,
            },
        ),
        backbone=Part("specmaskgit", {"dim": 768, "depth": 24, "heads": 8, "ffn_dim": 3072, "cond_dim": 512}),
        control_encoder=Part("synchformer_clip", {"sync_dim": 768, "clip_dim": 1024}),
        aligner=Part("ft", {"kernel_size": 3}),
        controlnet=Part("copy", {"n_blocks": 12, "injection": "aligned"}),
        guidance=Part("multi", {"scale": 3.0, "schedule": "linear"}),
        vocoder=Part("griffinlim", {"n_iter": 32}),
        sampler=SamplerConfig(steps=12, temperature=9.0, mask_schedule="cosine"),
    )


@PRESETS.register("specmaskgit")
def specmaskgit() -> ModelConfig:
    """The backbone alone (SpecMaskGIT), prompted by text (CLAP) through the conditional mask."""
    return specmaskfoley().override(
        name="specmaskgit", control_encoder=None, aligner=None, controlnet=None, guidance={"name": "cfg_text"}
    )


@PRESETS.register("specmaskfoley_plain1d")
def specmaskfoley_plain1d() -> ModelConfig:
    """Ablation (sec. 3.3): the plain 1-D temporal aligner instead of the FT-Aligner."""
    return specmaskfoley().override(name="specmaskfoley_plain1d", aligner="plain1d")


@PRESETS.register("specmaskfoley_cfg_video")
def specmaskfoley_cfg_video() -> ModelConfig:
    """Ablation (Table 2): standard CFG on the video condition only."""
    return specmaskfoley().override(name="specmaskfoley_cfg_video", guidance="cfg_video")


@PRESETS.register("specmaskfoley_cfg_text_video")
def specmaskfoley_cfg_text_video() -> ModelConfig:
    """Ablation (Table 2): standard CFG on the text+video condition (no video-only term)."""
    return specmaskfoley().override(name="specmaskfoley_cfg_text_video", guidance="cfg_text_video")


@PRESETS.register("specmaskfoley_tiny")
def specmaskfoley_tiny() -> ModelConfig:
    """The paper's architecture at CPU size (128 wide, 6 + 3 blocks; 5.94 s windows of 5 x 32 tokens),
    sized for the synthetic world and the tests."""
    return ModelConfig(
        name="specmaskfoley_tiny",
        n_frames=512,  # 5.94 s windows: the synthetic world's clip length
        mel=Part("hifigan", {}),
        tokenizer=Part(
            "specvqgan",
            {
                "ch": 16,
                "ch_mult": [1, 2, 2, 4, 4],
                "num_res_blocks": 1,
                "attn_resolutions": [32],
                "resolution": 512,
                "z_channels": 64,
                "embed_dim": 64,
                "n_embed": 256,
                "norm_groups": 8,
            },
        ),
        backbone=Part("specmaskgit", {"dim": 128, "depth": 6, "heads": 4, "ffn_dim": 512, "cond_dim": 64}),
        control_encoder=Part("synchformer_clip", {"sync_dim": 128, "clip_dim": 64}),
        aligner=Part("ft", {"kernel_size": 3}),
        controlnet=Part("copy", {"n_blocks": 3, "injection": "aligned"}),
        guidance=Part("multi", {"scale": 3.0, "schedule": "linear"}),
        vocoder=Part("griffinlim", {"n_iter": 32, "inverse": "pinv"}),
        sampler=SamplerConfig(steps=12, temperature=9.0, mask_schedule="cosine"),
    )


@PRESETS.register("specmaskgit_tiny")
def specmaskgit_tiny() -> ModelConfig:
    """The tiny backbone alone (text-prompted, no video control)."""
    return specmaskfoley_tiny().override(
        name="specmaskgit_tiny", control_encoder=None, aligner=None, controlnet=None, guidance={"name": "cfg_text"}
    )


@PRESETS.register("specmaskfoley_tiny_plain1d")
def specmaskfoley_tiny_plain1d() -> ModelConfig:
    """The tiny model with the plain 1-D aligner (the FT-Aligner ablation at CPU size)."""
    return specmaskfoley_tiny().override(name="specmaskfoley_tiny_plain1d", aligner="plain1d")


def _shipped_config(name: str) -> ModelConfig:
    """The config stored in the metadata of a preset's shipped weights (read from the header only)."""
    from controlfoley.checkpoint import config_from_metadata, read_metadata

    path = ASSETS / PRETRAINED[name]
    return config_from_metadata(read_metadata(path), path)


@PRESETS.register("specmaskfoley_synthetic")
def specmaskfoley_synthetic() -> ModelConfig:
    """The model trained on the synthetic world by `controlfoley experiment synthetic` (the tiny
    architecture at 128 wide); `build_model` gives it untrained, `from_pretrained` with its weights."""
    return _shipped_config("specmaskfoley_synthetic")


def get_preset(name: str) -> ModelConfig:
    """The config preset `name` gives: its builder returns a ModelConfig, or its dict (what `to_dict`
    writes); anything else is a ConfigError naming the preset (a user preset's mistake)."""
    cfg = PRESETS.build(name)
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, Mapping):
        try:
            return ModelConfig.from_dict(cfg)
        except ConfigError as e:
            raise ConfigError(f"preset {name!r} returned a dict that is not a model config: {e}") from None
    raise ConfigError(
        f"preset {name!r} returned a {type(cfg).__name__}; a preset builder returns a ModelConfig (e.g. "
        "get_preset('specmaskfoley_tiny').override(...)) or its dict"
    )


def list_presets(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Registered preset names matching the glob `pattern` (e.g. "*tiny*"), sorted; with
    `pretrained=True` only those that ship weights (`build_model(name, pretrained=True)`)."""
    names = PRESETS.names(pattern)
    return [n for n in names if pretrained_path(n) is not None] if pretrained else names


def pretrained_path(name: str) -> Path | None:
    """Path of the weights shipped for preset `name`, or None if it ships none (or they are absent)."""
    f = PRETRAINED.get(name)
    if f is None:
        return None
    p = ASSETS / f
    return p if p.is_file() else None
