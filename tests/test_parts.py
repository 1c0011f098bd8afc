"""Registry-driven: every registered part builds, runs forward and (where it has parameters) backward."""

import re

import pytest
import torch

from controlfoley import ALIGNERS, BACKBONES, CONTROL_ENCODERS, GUIDANCE, MEL_FRONTENDS, PRESETS, TOKENIZERS, VOCODERS
from controlfoley.control.aligners import FTAligner


def _backward(module, out):
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALIGNERS.names())
def test_aligners(name):
    a = ALIGNERS.build(name, in_dim=12, out_dim=16, grid=[3, 7])
    x = torch.randn(2, 50, 12, requires_grad=True)
    y = a(x)
    assert y.shape == (2, 21, 16) and torch.isfinite(y).all()
    _backward(a, y)
    cols = y.detach().view(2, 3, 7, 16)
    same_column = torch.allclose(cols[:, :1].expand_as(cols), cols)
    assert same_column == isinstance(a, FTAligner)  # FT repeats each time column over frequency; plain1d does not


@pytest.mark.parametrize("name", CONTROL_ENCODERS.names())
def test_control_encoders(name):
    enc = CONTROL_ENCODERS.build(name)
    feats = {k: torch.randn(2, 9, {"sync": enc.sync_dim, "clip": getattr(enc, "clip_dim", 0)}[k]) for k in enc.required_features}
    y = enc(feats)
    assert y.shape == (2, 9, enc.out_dim)
    if any(p.requires_grad for p in enc.parameters()):
        _backward(enc, y)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbones(name):
    bb = BACKBONES.build(name, vocab_size=20, grid=[2, 5], dim=32, depth=2, heads=2, ffn_dim=48, cond_dim=8)
    codes = torch.randint(0, 20, (3, 10))
    mask = torch.rand(3, 10) < 0.5
    y = bb(codes, mask, torch.randn(3, 8))
    assert y.shape == (3, 10, 20)
    _backward(bb, y)


@pytest.mark.parametrize("name", GUIDANCE.names())
def test_guidance_rules(name):
    rule = GUIDANCE.build(name)
    logits = tuple(torch.randn(2, 4, 6) for _ in rule.conditions)
    assert rule.combine(logits, rule.scale_at(0, 3)).shape == (2, 4, 6)


@pytest.mark.parametrize("name", TOKENIZERS.names())
def test_tokenizers(name):
    tok = TOKENIZERS.build(name, ch=8, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[4], resolution=64, z_channels=8, embed_dim=8, n_embed=32, norm_groups=8)
    mel = torch.rand(2, 80, 64) * 2 - 1
    recon, codes, vq = tok(mel)
    assert recon.shape == mel.shape and codes.shape == (2, *tok.grid(64))
    (recon.pow(2).mean() + vq).backward()
    assert tok.encoder.conv_in.weight.grad is not None


@pytest.mark.parametrize("name", MEL_FRONTENDS.names())
def test_mel_frontends(name):
    mel = MEL_FRONTENDS.build(name)
    wav = torch.randn(2, mel.hop_length * 32) * 0.1
    y = mel(wav)
    assert y.shape[:2] == (2, mel.n_mels) and torch.isfinite(y).all()


@pytest.mark.filterwarnings("ignore::controlfoley.errors.RandomWeightsWarning")  # random GAN vocoders on purpose
@pytest.mark.parametrize("name", [n for n in VOCODERS.names() if n != "bigvgan"])
def test_vocoders(name):
    mel = MEL_FRONTENDS.build("specvqgan" if name == "melgan" else "hifigan")
    voc = VOCODERS.build(name, mel=mel)
    y = voc(torch.rand(1, mel.n_mels, 16) * 2 - 1)
    assert y.ndim == 2 and y.shape[0] == 1 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n in PRESETS.names() if n.endswith("_tiny")])
def test_tiny_presets_build_and_train_one_step(name):
    from controlfoley import build_model

    from controlfoley.presets import get_preset

    extra = {"controlnet": {"n_blocks": 1}} if get_preset(name).has_control else {}
    model = build_model(name, backbone={"depth": 2}, tokenizer={"ch": 8, "norm_groups": 8}, **extra)
    if model.has_control:
        model.freeze_backbone()
    b = 2
    codes = torch.randint(0, model.backbone.vocab_size, (b, *model.grid))
    feats = None
    if model.has_control:
        enc = model.control_encoder
        feats = {"sync": torch.randn(b, 30, enc.sync_dim), "clip": torch.randn(b, 10, enc.clip_dim)}
    loss, _ = model.loss(codes, features=feats, cond=torch.randn(b, model.backbone.cond_dim))
    loss.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("fused", [True, False])
def test_backbone_block_is_timms_vit_block(fused):
    """SpecMaskGIT's block is timm's `vision_transformer.Block` (pre-norm, qkv with bias, GELU MLP,
    LayerNorm eps 1e-6) parameter for parameter: timm's block loads our weights strictly and gives the
    same output, on the fused (SDPA) and the math attention path. Weights converted from timm ViTs,
    or written for them, carry over."""
    import functools

    from timm.models.vision_transformer import Block as TimmBlock

    from controlfoley import build_model

    backbone = build_model("specmaskgit_tiny").backbone.eval()
    backbone.set_fused_attn(fused)
    ours = backbone.blocks[0]
    theirs = TimmBlock(
        backbone.dim, backbone.heads, mlp_ratio=backbone.ffn_dim / backbone.dim, qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()  # fmt: skip
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, backbone.n_tokens, backbone.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# -- checkpoints of parts, and what a save stores ------------------------------------------------------
def test_a_pickled_state_dict_is_told_how_to_convert_it_and_the_recipe_works(tmp_path):
    """from_pretrained of torch.save(model.state_dict()) advised from_pretrained, the call that had
    just failed; it now gives the conversion, which loads."""
    from controlfoley import build_model, from_pretrained
    from controlfoley.errors import CheckpointError

    path = tmp_path / "model.pt"
    torch.save(build_model("specmaskfoley_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"model\.pt is a PyTorch pickle, not a controlfoley \(safetensors\) checkpoint: it is the state dict of a "
                       r"controlfoley model \(torch\.save\).*m = controlfoley\.build_model\(PRESET\).*m\.load_state_dict\(torch\.load\('.*model\.pt', "
                       r"weights_only=True\)\); m\.save\('model\.safetensors'\)") as e:
        from_pretrained(path)
    assert f"from_pretrained({str(path)!r})" not in str(e.value)
    m = build_model("specmaskfoley_tiny")
    m.load_state_dict(torch.load(path, weights_only=True))
    m.save(tmp_path / "model.safetensors")
    assert from_pretrained(tmp_path / "model.safetensors").config == m.config


def test_a_file_of_some_parts_names_them_and_load_parts_takes_one_name(tmp_path):
    """A tokenizer run's file (its tokenizer alone) given to from_pretrained names the parts it holds
    and how to load them (load_parts, extract --tokenizer, --init) instead of 'from_pretrained';
    load_parts(model, path, "tokenizer") is ["tokenizer"], not its characters."""
    from safetensors.torch import save_file

    from controlfoley import build_model, from_pretrained
    from controlfoley.checkpoint import load_parts, read_metadata, read_state_dict
    from controlfoley.errors import CheckpointError

    whole = build_model("specmaskfoley_tiny").save(tmp_path / "whole.safetensors")
    state, _ = read_state_dict(whole)
    part = tmp_path / "tok.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("tokenizer.")}, str(part), metadata=read_metadata(whole))
    with pytest.raises(CheckpointError, match=r"tok\.safetensors holds only the part\(s\) tokenizer, not aligner, backbone, control_encoder, controlnet, so it is "
                       r"no whole model \(a tokenizer run writes its tokenizer alone\): .*model = build_model\(PRESET\); "
                       r"controlfoley\.checkpoint\.load_parts\(model, '.*tok\.safetensors', \['tokenizer'\]\); for extraction, controlfoley extract "
                       r"--tokenizer .*tok\.safetensors .*; to train from it, --init .*tok\.safetensors --init-parts tokenizer$") as e:
        from_pretrained(part)
    assert "Build the model from the checkpoint's own config" not in str(e.value)
    model = build_model("specmaskfoley_tiny")
    assert load_parts(model, part, "tokenizer") == ["tokenizer"]
    assert all(torch.equal(v, state["tokenizer." + k]) for k, v in model.tokenizer.state_dict().items())
    with pytest.raises(CheckpointError, match=r"model has no part 'tokenizr'"):  # one name, named whole
        load_parts(model, part, "tokenizr")


def test_save_refuses_metadata_it_cannot_store_or_keys_the_library_writes_and_a_target_that_is_no_path(tmp_path, monkeypatch):
    """extra_metadata={'epoch': 3} failed inside safetensors, model.save(None) inside pathlib, and a
    key the library writes itself (controlfoley_config) saved a file that no longer loaded. (With the
    suite's runtime type checks off, as users run: they would refuse the wrong types first.)"""
    from jaxtyping import config as typecheck_config

    from controlfoley import build_model, from_pretrained
    from controlfoley.checkpoint import read_metadata
    from controlfoley.config import ConfigError
    from controlfoley.errors import CheckpointError

    monkeypatch.setattr(typecheck_config, "jaxtyping_disable", True)
    model = build_model("specmaskfoley_tiny")
    target = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match=r"^extra_metadata\['epoch'\] is 3 \(int\); a checkpoint's metadata holds strings: pass one, e\.g\. \{'epoch': '3'\}"):
        model.save(target, extra_metadata={"epoch": 3})
    with pytest.raises(ConfigError, match=r"^extra_metadata keys must be strings, got 3 \(int\)"):
        model.save(target, extra_metadata={3: "x"})
    for key in ("controlfoley_config", "controlfoley_trained", "controlfoley_format"):
        with pytest.raises(ConfigError, match=rf"^extra_metadata key\(s\) \['{key}'\] are the library's own .*give your key\(s\) another name$"):
            model.save(target, extra_metadata={key: "{}"})
    for bad in (None, 3):
        with pytest.raises(CheckpointError, match=rf"^save takes a \.safetensors file or a folder .*got {bad} \({type(bad).__name__}\)$"):
            model.save(bad)
    assert not target.exists()
    model.save(target, extra_metadata={"epoch": "3", "controlfoley_train_state": "{}"})  # keys of the user's (and the training loop's) own
    assert read_metadata(target)["epoch"] == "3" and from_pretrained(target).config == model.config


def test_load_parts_names_every_part_built_otherwise_and_loads_none_on_a_mismatch(tmp_path):
    """--init / load_parts from a checkpoint whose tokenizer and backbone were built with other
    settings: one error gives the flags for both (it named one part per attempt), and the model is
    left as it was (the parts before the failing one were loaded)."""
    from controlfoley import build_model
    from controlfoley.checkpoint import load_parts
    from controlfoley.errors import CheckpointError

    theirs = build_model("specmaskfoley_tiny", tokenizer={"embed_dim": 16}, backbone={"depth": 3})
    path = theirs.save(tmp_path / "theirs.safetensors")
    ours = build_model("specmaskfoley_tiny")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_parts(ours, path, ["aligner", "tokenizer", "backbone"])  # the aligner fits: it was loaded before the tokenizer failed
    msg = str(err.value)
    assert "(and backbone, which do not fit either)" in msg
    assert "--model tokenizer='{\"name\": \"specvqgan\"" in msg and "--model backbone='{\"name\": \"specmaskgit\"" in msg
    assert "Build them like the checkpoint:" in msg and '"depth": 3' in msg and '"embed_dim": 16' in msg
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def _part_warnings(call):
    """(result of `call()`, the warnings it gave that say a loaded part was built otherwise)."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = call()
    return out, [w for w in seen if "may not mean the same thing" in str(w.message)]


def test_from_pretrained_warns_of_each_loaded_part_built_with_other_settings(micro_model, tmp_path):
    """An override that keeps a part's builder but changes its settings (the ControlNet's injection,
    the backbone's heads) loaded the trained weights silently, as only a builder switch warned: one
    warning per part, at the caller's line, naming old -> new and the fix. The part stays recorded as
    trained (its weights are the trained ones); sampling-time settings, parts not loaded from the
    file and a default spelled out do not warn."""
    from controlfoley import from_pretrained

    micro_model.trained_parts = {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}
    path = micro_model.save(tmp_path / "m.safetensors")
    m, seen = _part_warnings(lambda: from_pretrained(path, controlnet={"injection": "interval"}))
    assert len(seen) == 1 and seen[0].filename == __file__, [str(w.message) for w in seen]
    assert re.fullmatch(
        r"from_pretrained\(.*m\.safetensors\): controlnet is 'copy' with other settings than the checkpoint trained it with "
        r"\(injection: 'aligned' -> 'interval'\); its weights load into the part where names and shapes agree, which may not mean "
        r"the same thing \(the model will not behave as trained\): retrain controlnet as it is now, or drop the controlnet override "
        r"to use it as trained",
        str(seen[0].message),
    )
    assert m.trained_parts == micro_model.trained_parts  # trained weights, in a part built otherwise: the warning says so
    _, seen = _part_warnings(lambda: from_pretrained(path, aligner="plain1d", backbone={"heads": 4}))  # a switch and a setting: one each
    said = sorted(str(w.message) for w in seen)
    assert len(said) == 2 and all(w.filename == __file__ for w in seen), said
    assert "aligner is now 'plain1d' but the checkpoint trained 'ft'" in said[0]
    assert "backbone is 'specmaskgit' with other settings than the checkpoint trained it with (heads: 2 -> 4)" in said[1]
    for quiet in ({}, {"guidance": "cfg_text"}, {"sampler": {"steps": 2}}, {"vocoder": {"n_iter": 4}}, {"backbone": {"heads": 2}},
                  {"backbone": {"fused_attn": False}}):  # the attention kernel, not what the weights mean
        assert _part_warnings(lambda: from_pretrained(path, **quiet))[1] == [], quiet


def test_load_parts_and_init_warn_of_each_part_built_otherwise(micro_model, tmp_path):
    """load_parts / --init into a model whose aligner was switched and whose ControlNet injects
    otherwise gave no warning at all (from_pretrained warned of the switch): the same rule, one
    warning per part, with the checkpoint's part to build instead. Into the same config: none."""
    from conftest import micro_overrides, micro_token_data

    from controlfoley import build_model
    from controlfoley.checkpoint import load_parts
    from controlfoley.train import TrainConfig, train

    micro_model.trained_parts = {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}
    path = micro_model.save(tmp_path / "m.safetensors")
    every = ["tokenizer", "backbone", "control_encoder", "aligner", "controlnet"]
    assert _part_warnings(lambda: load_parts(build_model("specmaskfoley_tiny", **micro_overrides()), path, every))[1] == []
    variant = {**micro_overrides(), "aligner": "plain1d", "controlnet": {"n_blocks": 2, "injection": "interval"}}
    model = build_model("specmaskfoley_tiny", **variant)
    _, seen = _part_warnings(lambda: load_parts(model, path, every))
    said = sorted(str(w.message) for w in seen)
    assert len(said) == 2 and all(w.filename == __file__ for w in seen), said
    assert said[0].startswith(f"load_parts({path}): aligner is now 'plain1d' but the checkpoint trained 'ft'")
    assert re.search(
        r"controlnet is 'copy' with other settings than the checkpoint trained it with \(injection: 'aligned' -> 'interval'\); .*"
        r"build it as the checkpoint did, controlnet=\{\"name\": \"copy\", \"injection\": \"aligned\", \"n_blocks\": 2\} \(--model "
        r"controlnet='\{\"name\": \"copy\", \"injection\": \"aligned\", \"n_blocks\": 2\}' on the command line, or controlfoley train --preset CHECKPOINT\), to load it as trained$",
        said[1],
    )
    assert model.trained_parts == set(every)
    # --init: the same warnings, named by the flag, at the user's train(...) call
    micro_token_data(tmp_path / "ds", model)
    cfg = TrainConfig.for_recipe(
        "controlnet", preset="specmaskfoley_tiny", data=str(tmp_path / "ds"), out=str(tmp_path / "run"), model_overrides=variant, steps=1,
        batch_size=2, warmup_steps=0, val_fraction=0.0, num_workers=0, progress=False, tensorboard=False, init=str(path), init_parts=tuple(every),
    )  # fmt: skip
    _, seen = _part_warnings(lambda: train(cfg))
    said = sorted(str(w.message) for w in seen)
    assert len(said) == 2 and all(w.filename == __file__ for w in seen), said
    assert said[0].startswith(f"--init {path}: aligner is now 'plain1d'") and said[1].startswith(f"--init {path}: controlnet is 'copy' with other settings")
