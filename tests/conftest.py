"""Shared fixtures: small models built from the registries, seeded generators."""

import pytest
import torch

torch.set_num_threads(2)


def micro_overrides() -> dict:
    """Overrides that shrink specmaskfoley_tiny further, for fast unit tests (same code path)."""
    return {
        "tokenizer": {"ch": 8, "num_res_blocks": 1, "z_channels": 16, "embed_dim": 16, "n_embed": 64, "norm_groups": 8},
        "backbone": {"dim": 32, "depth": 3, "heads": 2, "ffn_dim": 64, "cond_dim": 16},
        "control_encoder": {"sync_dim": 24, "clip_dim": 12},
        "controlnet": {"n_blocks": 2},
    }


@pytest.fixture
def micro_model():
    torch.manual_seed(0)
    from controlfoley import build_model

    return build_model("specmaskfoley_tiny", **micro_overrides()).eval()


def micro_inputs(model, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    enc = model.control_encoder
    return {
        "features": {"sync": torch.randn(b, 40, enc.sync_dim, generator=g), "clip": torch.randn(b, 13, enc.clip_dim, generator=g)},
        "text": torch.randn(b, model.backbone.cond_dim, generator=g),
        "codes": torch.randint(0, model.backbone.vocab_size, (b, *model.grid), generator=g),
    }
