"""The composite model: paper shapes, zero-init equivalence, ControlNet training, save/load, bad input."""

import functools
import os
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import micro_inputs, micro_overrides, micro_token_data
from controlfoley import GUIDANCE, build_model, from_pretrained
from controlfoley.errors import CheckpointError, ConfigError, ShapeError


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_preset_shapes_and_sizes():
    model = build_model("specmaskfoley")
    assert model.grid == (5, 53) and model.n_tokens == 265
    bb = model.backbone
    assert (len(bb.blocks), bb.dim, bb.heads, bb.ffn_dim, bb.vocab_size) == (24, 768, 8, 3072, 1024)
    blocks = sum(_count(b) for b in bb.blocks)
    assert abs(blocks - 170e6) / 170e6 < 0.03, blocks
    assert len(model.controlnet.blocks) == 12
    for i in range(12):  # the ControlNet starts as an exact copy of the first 12 blocks
        for (k, a), (_, b) in zip(model.controlnet.blocks[i].state_dict().items(), bb.blocks[i].state_dict().items()):
            assert torch.equal(a, b), k
    assert model.tokenizer.codebook_size == 1024 and model.tokenizer.grid(848) == (5, 53)


def test_zero_init_composite_equals_backbone(micro_model):
    x = micro_inputs(micro_model, b=3)
    codes = x["codes"].flatten(1)
    mask = torch.rand(codes.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    control = micro_model.encode_control(x["features"])
    with torch.no_grad():
        full = micro_model(codes, mask, cond=x["text"], control=control)
        base = micro_model.backbone(codes, mask, x["text"])
    assert torch.equal(full, base)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frac=st.floats(0.0, 1.0), b=st.integers(1, 3))
def test_zero_init_property(seed, frac, b):
    torch.manual_seed(seed)
    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    x = micro_inputs(model, b=b, seed=seed)
    codes = x["codes"].flatten(1)
    mask = torch.rand(codes.shape, generator=torch.Generator().manual_seed(seed)) < frac
    cond_on = torch.rand(b, generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    with torch.no_grad():
        full = model(codes, mask, cond=x["text"], cond_on=cond_on, control=model.encode_control(x["features"]))
        base = model.backbone(codes, mask, x["text"], cond_on)
    assert torch.equal(full, base)


def test_one_controlnet_step_changes_logits_and_only_control_params(micro_model):
    model = micro_model.train().freeze_backbone()
    x = micro_inputs(model)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"control_encoder", "aligner", "controlnet"}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    loss, stats = model.loss(x["codes"], features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and 0 < stats["mask_frac"] <= 1
    loss.backward()
    opt.step()
    model.eval()
    codes = x["codes"].flatten(1)
    mask = torch.zeros_like(codes, dtype=torch.bool)
    with torch.no_grad():
        full = model(codes, mask, control=model.encode_control(x["features"]))
        base = model.backbone(codes, mask)
    assert not torch.equal(full, base)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_control_runs_only_on_flagged_rows(micro_model):
    x = micro_inputs(micro_model, b=2)
    with torch.no_grad():
        for p in micro_model.controlnet.outs.parameters():
            p.normal_()
        codes = x["codes"].flatten(1)
        mask = torch.zeros_like(codes, dtype=torch.bool)
        control = micro_model.encode_control(x["features"])
        on = torch.tensor([True, False])
        mixed = micro_model(codes, mask, control=control, control_on=on)
        full = micro_model(codes, mask, control=control)
        base = micro_model.backbone(codes, mask)
    assert torch.allclose(mixed[0], full[0], atol=1e-5) and torch.equal(mixed[1], base[1])
    assert not torch.allclose(mixed[0], base[0])


def test_loss_uncond_prob_changes_which_rows_use_the_prompt(micro_model, monkeypatch):
    seen = []
    orig = micro_model.backbone.embed

    def spy(codes, mask, cond=None, cond_on=None):
        seen.append(cond_on.clone())
        return orig(codes, mask, cond, cond_on)

    monkeypatch.setattr(micro_model.backbone, "embed", spy)
    x = micro_inputs(micro_model, b=2)
    codes = x["codes"].repeat(200, 1, 1)
    text = x["text"].repeat(200, 1)
    micro_model.loss(codes, cond=text, uncond_prob=0.9, generator=torch.Generator().manual_seed(0))
    frac_on = seen[-1].float().mean().item()
    assert 0.05 < frac_on < 0.16  # ~10% of rows keep the CLAP conditional mask


def test_fused_and_math_attention_agree(micro_model):
    x = micro_inputs(micro_model)
    codes = x["codes"].flatten(1)
    mask = torch.rand(codes.shape) < 0.3
    with torch.no_grad():
        a = micro_model.backbone(codes, mask, x["text"])
        micro_model.backbone.set_fused_attn(False)
        b = micro_model.backbone(codes, mask, x["text"])
    assert not micro_model.backbone.blocks[0].attn.fused
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_a_new_config_samples_and_a_saved_model_samples_as_the_model_did(tmp_path):
    """Setting `model.config` left the sampler and guidance `generate` reads as built (12 steps
    sampled after config.override(sampler={'steps': 4})), and a sampler or rule set on the model was
    not what its file recorded, so the loaded model sampled otherwise (a walkthrough). A new config
    now rebuilds both; save records the sampler in use, and warns of a rule the config does not build."""
    from controlfoley.sampling import MaskGITSampler

    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    x = micro_inputs(model, b=1)
    model.config = model.config.override(sampler={"steps": 4}, guidance={"name": "cfg_video", "scale": 1.5})
    seen: list[int] = []
    model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(0), callback=lambda k, n, c, m: seen.append(n))
    assert seen == [4] * 4 and repr(model.guidance).startswith("CFG(scale=1.5, schedule='linear', conditions=[uncond, video]")
    model.sampler = MaskGITSampler(5, 2.0, "linear")
    loaded = from_pretrained(model.save(tmp_path / "m.safetensors"))
    assert repr(loaded.sampler) == repr(model.sampler) and repr(loaded.guidance) == repr(model.guidance)
    a = model.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.generate(x["features"], x["text"], generator=torch.Generator().manual_seed(1)), a)
    model.guidance = GUIDANCE.build("cfg_text", scale=2.0)
    with pytest.warns(UserWarning, match=r"model.guidance is CFG\(scale=2.0.*the file records the config.*model.config = model.config.override\(guidance="):
        model.save(tmp_path / "m2.safetensors")


def test_a_dtype_other_than_a_half_models_own_is_named() -> None:
    """generate(dtype=bf16) on an fp16 model (and the reverse) failed inside layer_norm with torch's
    'mixed dtype (CPU): expect parameter to have scalar type of Float', and dtype=float32 on a bf16
    model was dropped without a word (its tokens were the bf16 ones; a walkthrough)."""
    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    x = micro_inputs(model, b=1)
    for weights, asked in ((torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16), (torch.bfloat16, torch.float32)):
        half = build_model("specmaskfoley_tiny", **micro_overrides()).eval().to(weights)
        with pytest.raises(ConfigError, match=rf"dtype={re.escape(str(asked))} on a model whose weights are {re.escape(str(weights))}: .*leave dtype out.*convert"):
            half.generate(x["features"], x["text"], steps=2, dtype=asked)
        half.generate(x["features"], x["text"], steps=2, dtype=weights)  # its own: as without dtype
    model.generate(x["features"], x["text"], steps=2, dtype=torch.bfloat16)  # an fp32 model autocasts, as before


def test_save_load_round_trip(micro_model, tmp_path):
    with torch.no_grad():
        for p in micro_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = micro_model.save(tmp_path / "m.safetensors")
    loaded = from_pretrained(path).eval()
    assert loaded.config == micro_model.config
    x = micro_inputs(micro_model)
    codes = x["codes"].flatten(1)
    mask = torch.rand(codes.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        args = dict(cond=x["text"], control=micro_model.encode_control(x["features"]))
        a = micro_model(codes, mask, **args)
        args["control"] = loaded.encode_control(x["features"])
        b = loaded(codes, mask, **args)
    assert torch.equal(a, b)
    # save_pretrained(FOLDER), as transformers / diffusers spell it: FOLDER/model.safetensors
    file = micro_model.save_pretrained(tmp_path / "folder")
    assert file == tmp_path / "folder" / "model.safetensors"
    again = from_pretrained(tmp_path / "folder")
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), loaded.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="save_pretrained takes a folder"):
        micro_model.save_pretrained(tmp_path / "m2.safetensors")


def test_mismatching_checkpoint_names_the_keys(micro_model, tmp_path):
    path = micro_model.save(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\): .*backbone\.blocks\.0\.attn"):
        from_pretrained(path, backbone={"dim": 64, "heads": 2, "ffn_dim": 64})
    with pytest.raises(CheckpointError, match=r"missing keys.*backbone\.blocks\.3"):
        from_pretrained(path, backbone={"depth": 4})
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        from_pretrained(tmp_path / "bad.safetensors")


def test_bad_inputs_give_clear_errors(micro_model):
    x = micro_inputs(micro_model)
    with pytest.raises(ShapeError, match="codes must be"):
        micro_model.loss(x["codes"][:, :, :-1])
    bad = x["codes"].clone()
    bad[0, 0, 0] = 10_000
    with pytest.raises(ShapeError, match="token ids must be in"):
        micro_model.loss(bad)
    feats = dict(x["features"])
    feats["sync"] = feats["sync"].clone()
    feats["sync"][0, 3, 1] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        micro_model.generate(feats, x["text"])
    with pytest.raises(ShapeError, match="'clip' is missing"):
        micro_model.generate({"sync": x["features"]["sync"]}, x["text"])
    with pytest.raises(ShapeError, match=r"\[batch, frames, 24\]"):
        micro_model.generate({"sync": torch.randn(2, 40, 7), "clip": x["features"]["clip"]}, x["text"])
    with pytest.raises(ConfigError, match="needs a text"):
        micro_model.generate(x["features"])
    with pytest.raises(ShapeError, match="mel"):
        micro_model.tokenizer.encode(torch.zeros(1, 80, 100))


def test_inputs_in_other_float_dtypes_are_cast_and_others_refused(micro_model):
    """Dataset features are stored in fp16 and numpy gives fp64: generate casts them to the model's
    dtype (it died in a matmul before); integer features and wrong text widths are named."""
    x = micro_inputs(micro_model)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    half = {k: v.half() for k, v in x["features"].items()}
    want = micro_model.generate({k: v.float() for k, v in half.items()}, x["text"].half().float(), steps=2, generator=g())
    got = micro_model.generate(half, x["text"].half(), steps=2, generator=g())
    assert torch.equal(got, want)
    got64 = micro_model.generate({k: v.double() for k, v in half.items()}, x["text"].half().double(), steps=2, generator=g())
    assert torch.equal(got64, want)
    with pytest.raises(ShapeError, match="'sync' must be a float tensor, got torch.int64"):
        micro_model.generate({**x["features"], "sync": x["features"]["sync"].long()}, x["text"])
    with pytest.raises(ShapeError, match=r"text must be \[batch, 16\]"):
        micro_model.generate(x["features"], torch.randn(2, 17))
    loss, _ = micro_model.loss(x["codes"], features=half, cond=x["text"].half())
    assert torch.isfinite(loss)


def test_a_part_that_breaks_its_contract_is_named(micro_model):
    from controlfoley import ALIGNERS

    @ALIGNERS.register("returns_none")
    def returns_none(**kw):
        return None

    @ALIGNERS.register("wrong_length")
    def wrong_length(*, in_dim: int, out_dim: int, grid: list):
        return torch.nn.Linear(in_dim, out_dim)  # [b, t, d] -> [b, t, D]: not F*T tokens

    try:
        with pytest.raises(ConfigError, match="aligner 'returns_none'.*returned NoneType, not a torch.nn.Module"):
            build_model("specmaskfoley_tiny", **micro_overrides(), aligner="returns_none")
        model = build_model("specmaskfoley_tiny", **micro_overrides(), aligner="wrong_length")
        x = micro_inputs(model)
        with pytest.raises(ShapeError, match=r"aligner 'wrong_length' returned \[2, 40, 32\].*\[batch, 160, 32\]"):
            model.generate(x["features"], x["text"], steps=1)
    finally:
        ALIGNERS.unregister("returns_none")
        ALIGNERS.unregister("wrong_length")


def test_negative_prompt_replaces_only_the_unconditional_rows(micro_model, monkeypatch):
    seen = {}
    orig = micro_model.backbone.embed

    def spy(codes, mask, cond=None, cond_on=None):
        seen["cond"], seen["cond_on"] = cond.clone(), cond_on.clone()
        return orig(codes, mask, cond, cond_on)

    monkeypatch.setattr(micro_model.backbone, "embed", spy)
    x = micro_inputs(micro_model, b=2)
    neg = torch.randn_like(x["text"])
    micro_model.generate(x["features"], x["text"], negative_text=neg, steps=1, generator=torch.Generator().manual_seed(0))
    # multi-CFG rows: [uncond (b), video (b), text_video (b)]
    assert seen["cond_on"].tolist() == [True, True, False, False, True, True]
    assert torch.equal(seen["cond"][:2], neg) and torch.equal(seen["cond"][4:], x["text"])


def test_atomic_outputs_have_normal_permissions(tmp_path, micro_model):
    """Text files, and the safetensors files of a saved model and a dataset shard, which safetensors
    writes by replacing the temporary file (they came out 0600 whatever the umask)."""
    import os
    import stat

    from controlfoley._io import atomic_write_text
    from controlfoley.data.shards import ShardWriter

    atomic_write_text(tmp_path / "a.txt", "x")
    micro_model.save(tmp_path / "m.safetensors")
    with ShardWriter(tmp_path / "d", shard_size=2) as w:
        w.add("c0", {"tokens": torch.zeros(5, 32, dtype=torch.long)})
    mask = os.umask(0)
    os.umask(mask)
    files = [tmp_path / "a.txt", tmp_path / "m.safetensors", *sorted((tmp_path / "d").iterdir())]
    assert len(files) >= 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def test_loading_a_model_with_a_gan_vocoder_does_not_warn_of_random_weights(tmp_path):
    """Its weights come from the checkpoint; building it fresh without checkpoint= does warn."""
    import warnings

    from controlfoley.errors import RandomWeightsWarning

    ov = {**micro_overrides(), "vocoder": {"name": "hifigan", "upsample_initial_channel": 16}}
    with pytest.warns(RandomWeightsWarning):
        model = build_model("specmaskfoley_tiny", **ov)
    model.save(tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        loaded = from_pretrained(tmp_path / "m.safetensors")
    assert torch.equal(loaded.vocoder.generator.conv_pre.weight, model.vocoder.generator.conv_pre.weight)


def test_a_model_built_from_a_vocoder_file_loads_without_that_file(tmp_path, monkeypatch):
    """The saved model holds the HiFi-GAN weights: it loads from another folder after the original
    generator file is gone (the config still records where the weights came from)."""
    ov = {**micro_overrides(), "vocoder": {"name": "hifigan", "upsample_initial_channel": 16}}
    with pytest.warns(Warning):
        gen = build_model("specmaskfoley_tiny", **ov).vocoder.generator
    monkeypatch.chdir(tmp_path)
    torch.save({"generator": gen.state_dict()}, "g_00000001")  # a relative path, as users pass it
    model = build_model("specmaskfoley_tiny", **{**ov, "vocoder": {**ov["vocoder"], "checkpoint": "g_00000001"}})
    model.save("m.safetensors")
    os.remove("g_00000001")
    monkeypatch.chdir(tmp_path.parent)
    loaded = from_pretrained(tmp_path / "m.safetensors")
    assert torch.equal(loaded.vocoder.generator.conv_pre.weight, gen.conv_pre.weight)
    assert loaded.config.vocoder.kwargs["checkpoint"] == "g_00000001"
    loaded.save(tmp_path / "again.safetensors")  # and again, from the re-saved file
    assert torch.equal(from_pretrained(tmp_path / "again.safetensors").vocoder.generator.conv_pre.weight, gen.conv_pre.weight)
    # a new generator file given on load is what the vocoder then holds, and what the config says
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in gen.state_dict().items()}
    torch.save({"generator": other}, tmp_path / "g_new")
    swapped = from_pretrained(tmp_path / "m.safetensors", vocoder={"checkpoint": str(tmp_path / "g_new")})
    assert not torch.equal(swapped.vocoder.generator.conv_pre.weight, gen.conv_pre.weight)
    assert swapped.config.vocoder.kwargs["checkpoint"] == str(tmp_path / "g_new")
    assert torch.equal(swapped.backbone.blocks[0].mlp.fc1.weight, loaded.backbone.blocks[0].mlp.fc1.weight)  # the rest from the file
    # a saved trust_checkpoint=True stays with the part when a new file is given on load
    torch.save({"generator": gen.state_dict(), "meta": ConfigError("a custom object")}, tmp_path / "g_trusted")
    torch.save({"generator": other, "meta": ConfigError("a custom object")}, tmp_path / "g_trusted_new")
    trusted = {**ov["vocoder"], "checkpoint": str(tmp_path / "g_trusted"), "trust_checkpoint": True}
    build_model("specmaskfoley_tiny", **{**ov, "vocoder": trusted}).save(tmp_path / "t.safetensors")
    renewed = from_pretrained(tmp_path / "t.safetensors", vocoder={"checkpoint": str(tmp_path / "g_trusted_new")})
    assert torch.equal(renewed.vocoder.generator.conv_pre.weight, swapped.vocoder.generator.conv_pre.weight)


def test_user_control_encoders_and_vocoders_must_keep_their_contracts():
    """A control encoder without an int out_dim or without required_features, and a vocoder without
    a sample_rate or at another rate than the mel front end, fail at build time, naming the part."""
    from controlfoley import CONTROL_ENCODERS, VOCODERS
    from controlfoley.control.encoders import SyncOnlyEncoder

    class NoOutDim(torch.nn.Module):
        required_features = ("sync",)

    class NoKeys(torch.nn.Module):
        out_dim = 24

    class Voc(torch.nn.Module):
        def __init__(self, rate):
            super().__init__()
            if rate is not None:
                self.sample_rate = rate

    CONTROL_ENCODERS.register("test_no_out_dim")(lambda: NoOutDim())
    CONTROL_ENCODERS.register("test_no_keys")(lambda: NoKeys())
    CONTROL_ENCODERS.register("test_str_out_dim")(lambda: setattr(e := SyncOnlyEncoder(24), "out_dim", "24") or e)
    CONTROL_ENCODERS.register("test_bad_dims")(lambda: setattr(e := SyncOnlyEncoder(24), "feature_dims", {"clip": 24}) or e)
    VOCODERS.register("test_no_rate")(lambda *, mel: Voc(None))
    VOCODERS.register("test_wrong_rate")(lambda *, mel: Voc(16000))
    try:
        with pytest.raises(ConfigError, match=r"control_encoder 'test_no_out_dim' \(NoOutDim\) needs an int attribute out_dim > 0.*has none"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "control_encoder": "test_no_out_dim"})
        with pytest.raises(ConfigError, match=r"control_encoder 'test_str_out_dim' .*out_dim.*has '24'"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "control_encoder": "test_str_out_dim"})
        with pytest.raises(ConfigError, match=r"control_encoder 'test_no_keys' \(NoKeys\) needs an attribute required_features"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "control_encoder": "test_no_keys"})
        with pytest.raises(ConfigError, match=r"'test_bad_dims' .*feature_dims \{'clip': 24\}; it must map some of its required_features \('sync',\)"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "control_encoder": "test_bad_dims"})
        with pytest.raises(ConfigError, match=r"vocoder 'test_no_rate' \(Voc\) needs an int attribute sample_rate.*Vocoder protocol"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "vocoder": "test_no_rate"})
        with pytest.raises(ConfigError, match=r"vocoder 'test_wrong_rate' \(Voc\) has sample_rate 16000 but the mel front end runs at 22050 Hz"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "vocoder": "test_wrong_rate"})
    finally:
        for name in ("test_no_out_dim", "test_no_keys", "test_str_out_dim", "test_bad_dims"):
            CONTROL_ENCODERS.unregister(name)
        for name in ("test_no_rate", "test_wrong_rate"):
            VOCODERS.unregister(name)


def test_every_preset_builds_with_the_contract_checks():
    import warnings

    from controlfoley import PRESETS
    from controlfoley.cli import list_names

    assert list_names("preset").startswith("preset: ")
    for name in PRESETS.names("*_tiny*"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(name)
        assert model.vocoder.sample_rate == model.mel.sample_rate


def test_api_docs_run_and_the_package_exports_the_pipeline_and_errors():
    """The build_model docstring's examples run as written; the error classes and FoleyPipeline
    come from `controlfoley` (lazily: importing the package loads no torch) and dir() lists them."""
    import subprocess
    import sys

    import controlfoley
    from controlfoley import Part, errors, model as model_module, pipeline

    examples = [line.split(">>> ", 1)[1] for line in model_module.build_model.__doc__.splitlines() if ">>> " in line]
    assert len(examples) >= 4
    for code in examples:
        scope = {"build_model": build_model, "Part": Part}
        exec(code, scope)  # noqa: S102  (the docstring's own examples)
        assert isinstance(scope["m"], model_module.SpecMaskFoley), code
    doc = model_module.SpecMaskFoley.generate.__doc__
    for phrase in ("int64 token map [b, F, T]", "known_mask", "batch_size", "config.sampler.steps", "cfg_scale", "temperature"):
        assert phrase in doc, phrase
    init_doc = pipeline.FoleyPipeline.__init__.__doc__
    for phrase in ("(name, kwargs)", "frame_size", "feature_frames", "overlap", "join", "precision"):
        assert phrase in init_doc, phrase
    names = ("FoleyPipeline", "ControlFoleyError", "ShapeError", "MediaError", "CheckpointError", "DataError", "TrainingError", "MissingDependencyError")
    for name in names:
        assert name in dir(controlfoley) and name in controlfoley.__all__, name
        assert getattr(controlfoley, name) is getattr(errors if name != "FoleyPipeline" else pipeline, name)
    code = "import sys, controlfoley; d = dir(controlfoley); print('torch' in sys.modules, 'ShapeError' in d, 'FoleyPipeline' in d)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_makes_fp32_audio_and_reads_audio(micro_model, dtype: torch.dtype) -> None:
    """model.to(bf16 / fp16): sampling, decoding, vocoding (Griffin-Lim works in numpy float32) and
    encoding audio all run; waveforms come back fp32. A mel of other bins is a ShapeError."""
    x = micro_inputs(micro_model, b=1)
    model = micro_model.to(dtype)
    codes = model.generate(x["features"], x["text"], steps=2, generator=torch.Generator().manual_seed(0))
    mel = model.decode(codes)
    assert mel.dtype == dtype
    wav = model.vocode(mel)
    assert wav.dtype == torch.float32 and wav.shape == (1, model.n_samples) and bool(torch.isfinite(wav).all())
    assert model.encode_audio(wav).shape == (1, *model.grid)
    from controlfoley import VOCODERS
    from controlfoley.model import run_vocoder

    with pytest.warns(Warning):  # random weights: only the dtypes matter here
        fp32_vocoder = VOCODERS.build("hifigan", mel=model.mel.float(), upsample_initial_channel=16)
    out = run_vocoder(fp32_vocoder, mel)  # a bf16 model's mel through an fp32 vocoder (a pipeline override)
    assert out.dtype == torch.float32 and out.shape == (1, model.n_samples)
    with pytest.raises(ShapeError, match=r"mel must be \[batch, 80, frames\] for this model's vocoder, got \[1, 128, 512\]"):
        model.vocode(torch.zeros(1, 128, 512, dtype=dtype))


def test_generate_takes_a_guidance_name_and_names_bad_settings(micro_model) -> None:
    import inspect

    from controlfoley.errors import RegistryError

    x = micro_inputs(micro_model, b=1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    by_name = micro_model.generate(x["features"], guidance="cfg_video", steps=2, generator=g())
    from controlfoley import GUIDANCE

    assert torch.equal(by_name, micro_model.generate(x["features"], guidance=GUIDANCE.build("cfg_video"), steps=2, generator=g()))
    generate = inspect.unwrap(type(micro_model).generate)  # past the suite's runtime type checks: what users meet
    with pytest.raises(RegistryError, match="unknown guidance 'nosuch'"):
        generate(micro_model, x["features"], guidance="nosuch")
    for kwargs, phrase in [
        ({"steps": 2.5}, "steps must be an int >= 1"),
        ({"steps": 0}, "steps must be an int >= 1"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number"),
        ({"guidance": 3}, "guidance must be a GuidanceRule or a GUIDANCE name"),
    ]:
        with pytest.raises(ConfigError, match=phrase):
            generate(micro_model, x["features"], x["text"], **kwargs)
    codes = x["codes"][:1]
    with pytest.raises(ShapeError, match=r"known_mask must be a bool tensor .*pass known_mask.bool\(\)"):
        generate(micro_model, x["features"], x["text"], known_codes=codes, known_mask=torch.ones(codes.shape))
    # a transposed token map has as many elements per row: it must not pin tokens at the wrong places
    keep = torch.ones(codes.shape, dtype=torch.bool)
    with pytest.raises(ShapeError, match=r"known_codes must be a token map \[batch, F, T\].*looks transposed"):
        generate(micro_model, x["features"], x["text"], known_codes=codes.transpose(1, 2), known_mask=keep.transpose(1, 2))
    with pytest.raises(ShapeError, match=r"known_mask must be a token map"):
        generate(micro_model, x["features"], x["text"], known_codes=codes, known_mask=keep.reshape(1, -1))
    alone = build_model("specmaskgit_tiny", tokenizer=micro_overrides()["tokenizer"])
    with pytest.raises(ConfigError, match="this model has no video control"):
        alone.generate(None, torch.randn(1, alone.backbone.cond_dim), guidance="cfg_video")
    # a video rule asked for a backbone alone builds (to train it, say), with a warning where it is asked; sampling names the way out
    with pytest.warns(UserWarning, match="guidance 'cfg_video' reads video features, but this model has no video parts"):
        video_rule = build_model("specmaskgit_tiny", tokenizer=micro_overrides()["tokenizer"], guidance="cfg_video")
    with pytest.raises(ConfigError, match="no video control .*use guidance 'cfg_text'"):
        video_rule.generate(None, torch.randn(1, video_rule.backbone.cond_dim))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_loading_onto_a_missing_gpu_names_the_fix(micro_model, tmp_path) -> None:
    path = micro_model.save(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=r"map_location cuda: no usable CUDA GPU here .*use map_location='cpu'"):
        from_pretrained(path, map_location="cuda")
    with pytest.raises(ConfigError, match=r"map_location 'gpu' is not a device"):
        from_pretrained(path, map_location="gpu")


def test_loose_loading_and_switched_parts_say_what_they_did(micro_model, tmp_path) -> None:
    """strict=False loads what fits and counts what keeps its built weights; switching a part to
    another builder whose weights happen to fit (FT -> plain 1-D aligner) warns."""
    path = micro_model.save(tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match=r"strict=False: \d+ tensors loaded; \d+ of the model's keep their built \(untrained\) weights \(in backbone\), e.g. backbone.blocks.3"):
        deeper = from_pretrained(path, strict=False, backbone={"depth": 4})
    assert torch.equal(deeper.backbone.blocks[0].mlp.fc1.weight, micro_model.backbone.blocks[0].mlp.fc1.weight)
    micro_model.trained_parts = {"tokenizer", "backbone", "controlnet"}
    recorded = micro_model.save(tmp_path / "trained.safetensors")
    with pytest.warns(UserWarning, match="strict=False"):
        wider = from_pretrained(recorded, strict=False, backbone={"ffn_dim": 128})  # every block's MLP keeps built weights
    assert wider.trained_parts == {"tokenizer"}  # the backbone and its ControlNet copy are no longer "trained"
    with pytest.warns(UserWarning, match="aligner is now 'plain1d' but the checkpoint trained 'ft'"):
        from_pretrained(path, aligner="plain1d")
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):  # the switch cannot load: an error, and no warning first
            from_pretrained(path, control_encoder="sync_only")
    assert not [w for w in seen if "is now" in str(w.message)]


_EVERY_PART = {"tokenizer", "backbone", "control_encoder", "aligner", "controlnet"}


def _built_otherwise(call):
    """(result of `call()`, every warning it gave, those that say a loaded part is built otherwise)."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = call()
    return out, seen, [str(w.message) for w in seen if "may not mean the same thing" in str(w.message)]


def test_a_part_loaded_with_other_settings_stays_recorded_so_when_saved_again(micro_model, tmp_path) -> None:
    """A model loaded with a part built otherwise (the ControlNet's injection) and saved recorded the
    part simply as trained: loading the new file said nothing, and generate / info took it as trained
    as built. The file records what the part was trained as (TRAINED_AS_KEY, trained_parts unchanged
    in meaning); loading it (from_pretrained, load_parts) warns again, naming the file the weights came
    from and the settings they were trained with, until the part is built as it was trained."""
    import json

    from controlfoley.checkpoint import TRAINED_AS_KEY, TRAINED_KEY, load_parts, read_metadata, trained_as, trained_as_lines

    micro_model.trained_parts = set(_EVERY_PART)
    path = micro_model.save(tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match=r"controlnet is 'copy' with other settings than the checkpoint trained it with \(injection: 'aligned' -> 'interval'\)"):
        changed = from_pretrained(path, controlnet={"injection": "interval"})
    saved = changed.save_pretrained(tmp_path / "again")
    meta = read_metadata(saved)
    assert json.loads(meta[TRAINED_KEY]) == sorted(_EVERY_PART)  # trained weights still: what generate's checks read
    record = trained_as(meta)
    assert list(record) == ["controlnet"] and record["controlnet"]["source"] == str(path), meta[TRAINED_AS_KEY]
    assert record["controlnet"]["settings"] == {"injection": "aligned", "n_blocks": 2}
    assert record["controlnet"]["changed"] == ["injection: 'aligned' -> 'interval'"]
    assert trained_as_lines(record) == [
        "trained otherwise: controlnet is built otherwise than its weights were trained (injection: 'aligned' -> 'interval'); trained "
        f'as controlnet={{"name": "copy", "injection": "aligned", "n_blocks": 2}} (weights from {path}): it will not behave as trained'
    ]
    said = (
        r"from_pretrained\(.*again\): controlnet is 'copy' with other settings than its weights were trained with \(injection: "
        rf"'aligned' -> 'interval'\); the checkpoint records this: its weights came from {re.escape(str(path))} and were loaded with "
        r"other settings before it was saved; its weights load into the part where names and shapes agree, which may not mean the "
        r"same thing \(the model will not behave as trained\): retrain controlnet as it is now, or load it with controlnet=\{'injection': "
        r"'aligned'\} \(the settings it was trained with\) to use it as trained"
    )
    with pytest.warns(UserWarning, match=said):
        reloaded = from_pretrained(tmp_path / "again")
    assert reloaded.trained_parts == _EVERY_PART and reloaded.trained_as == record  # saved again, it says the same
    assert trained_as(read_metadata(reloaded.save(tmp_path / "third.safetensors"))) == record
    # load_parts / --init: the same, with the part as it was trained to build
    into = build_model("specmaskfoley_tiny", **{**micro_overrides(), "controlnet": {"n_blocks": 2, "injection": "interval"}})
    with pytest.warns(UserWarning, match=r"load_parts\(.*again.*\): controlnet is 'copy' with other settings than its weights were trained "
                      r"with \(injection: 'aligned' -> 'interval'\); the checkpoint records this: .*build it as its weights were trained, "
                      r'controlnet=\{"name": "copy", "injection": "aligned", "n_blocks": 2\}'):  # fmt: skip
        load_parts(into, saved, sorted(_EVERY_PART))
    assert into.trained_as == record
    # built as it was trained: no warning, and no record left to save
    restored, _, told = _built_otherwise(lambda: from_pretrained(tmp_path / "again", controlnet={"injection": "aligned"}))
    assert told == [] and restored.trained_as == {} and restored.trained_parts == _EVERY_PART
    assert TRAINED_AS_KEY not in read_metadata(restored.save(tmp_path / "restored.safetensors"))
    # `controlfoley info FILE` lists it (and nothing for the file built as trained)
    from controlfoley.cli import info

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the load's own warning, checked above
        shown = info(str(saved))
    assert trained_as_lines(record)[0] in shown.splitlines()
    assert "trained otherwise" not in info(str(tmp_path / "restored.safetensors"))


def test_a_file_without_the_record_loads_as_before(micro_model, tmp_path) -> None:
    """Files written before TRAINED_AS_KEY (and any whose parts are trained as built): no record, no
    warning, nothing recorded on the model; a record dropped from a file's metadata leaves it loading
    as a file of the older format did, trained parts as they were."""
    from safetensors.torch import load_file, save_file

    from controlfoley.checkpoint import TRAINED_AS_KEY, read_metadata, trained_as

    micro_model.trained_parts = set(_EVERY_PART)
    path = micro_model.save(tmp_path / "m.safetensors")
    assert TRAINED_AS_KEY not in read_metadata(path) and trained_as(read_metadata(path)) == {}
    model, seen, _ = _built_otherwise(lambda: from_pretrained(path))
    assert [str(w.message) for w in seen] == [] and model.trained_as == {} and model.trained_parts == _EVERY_PART
    with pytest.warns(UserWarning, match="other settings than the checkpoint trained it with"):
        changed = from_pretrained(path, backbone={"heads": 4})
    meta = read_metadata(changed.save(tmp_path / "changed.safetensors"))
    assert TRAINED_AS_KEY in meta
    del meta[TRAINED_AS_KEY]  # as an older version of the library wrote it
    save_file(load_file(tmp_path / "changed.safetensors"), tmp_path / "old.safetensors", metadata=meta)
    old, seen, _ = _built_otherwise(lambda: from_pretrained(tmp_path / "old.safetensors"))
    assert [str(w.message) for w in seen] == [] and old.trained_as == {} and old.trained_parts == _EVERY_PART


def test_a_run_that_trains_a_part_drops_its_record_and_keeps_the_frozen_ones(micro_model, tmp_path) -> None:
    """--init into a model whose backbone (frozen by the ControlNet recipe) and ControlNet (trained)
    are built otherwise: the run's checkpoints and final model record the backbone as trained with
    its old heads, not the ControlNet, which the run trained as it is built. A resume carries the
    backbone's record on; loading the final model warns of the backbone alone."""
    from controlfoley.checkpoint import read_metadata, trained_as
    from controlfoley.train import TrainConfig, train
    from controlfoley.train.checkpoints import RunDir

    micro_model.trained_parts = set(_EVERY_PART)
    path = micro_model.save(tmp_path / "m.safetensors")
    variant = {**micro_overrides(), "backbone": {**micro_overrides()["backbone"], "heads": 4}, "controlnet": {"n_blocks": 2, "injection": "interval"}}
    micro_token_data(tmp_path / "ds", micro_model)
    cfg = TrainConfig.for_recipe(
        "controlnet", preset="specmaskfoley_tiny", data=str(tmp_path / "ds"), out=str(tmp_path / "run"), model_overrides=variant, steps=2,
        batch_size=2, warmup_steps=0, val_fraction=0.0, num_workers=0, progress=False, tensorboard=False, init=str(path),
        init_parts=tuple(sorted(_EVERY_PART)), ckpt_every=1,
    )  # fmt: skip
    _, _, told = _built_otherwise(lambda: train(cfg, stop_at=1))
    told.sort()
    assert len(told) == 2 and "backbone is 'specmaskgit' with other settings than the checkpoint trained it with (heads: 2 -> 4)" in told[0], told
    assert re.search(
        r"controlnet is 'copy' with other settings than the checkpoint trained it with \(injection: 'aligned' -> 'interval'; its copied blocks, "
        r"which the backbone builds: heads: 2 -> 4\); .*or build the controlnet and the backbone as the checkpoint did, controlnet=",
        told[1],
    )
    first = trained_as(read_metadata(RunDir(tmp_path / "run").step_dir(1) / "model.safetensors"))
    assert list(first) == ["backbone"] and first["backbone"]["settings"]["heads"] == 2 and first["backbone"]["source"] == str(path)
    train(cfg, resume=True)  # the resumed run's checkpoints and final model still say it
    assert trained_as(read_metadata(RunDir(tmp_path / "run").step_dir(2) / "model.safetensors")) == first
    assert trained_as(read_metadata(tmp_path / "run" / "model.safetensors")) == first
    _, _, told = _built_otherwise(lambda: from_pretrained(tmp_path / "run"))
    assert len(told) == 1 and told[0].startswith(f"from_pretrained({tmp_path / 'run'}): backbone is 'specmaskgit' with other settings than its weights were trained with (heads: 2 -> 4); the checkpoint records this")
    assert "controlnet" not in told[0]  # trained by the run with the blocks the backbone builds now


def test_strict_false_with_other_settings_warns_once_per_part(micro_model, tmp_path) -> None:
    """strict=False with a part built otherwise gave two warnings for it (what keeps its built
    weights, and that it was trained otherwise): one per part now, saying both; the other parts'
    count stays in the strict=False warning of its own, and a part that fits is warned of alone."""
    micro_model.trained_parts = set(_EVERY_PART)
    path = micro_model.save(tmp_path / "m.safetensors")
    deeper, seen, told = _built_otherwise(lambda: from_pretrained(path, strict=False, backbone={"depth": 4}))
    about = [str(w.message) for w in seen if "backbone" in str(w.message)]
    assert len(seen) == 1 and about == told, [str(w.message) for w in seen]
    assert re.search(
        r"backbone is 'specmaskgit' with other settings than the checkpoint trained it with \(depth: 3 -> 4\); loaded with strict=False: "
        r"\d+ tensors loaded; 12 of the model's keep their built \(untrained\) weights \(in backbone\), e.g. backbone.blocks.3[^;]*; "
        r"its weights load into the part where names and shapes agree.*drop the backbone override",
        told[0],
    )
    assert deeper.trained_parts == _EVERY_PART - {"backbone"} and deeper.trained_as == {}  # built weights in it: not a trained part
    _, seen, told = _built_otherwise(lambda: from_pretrained(path, strict=False, backbone={"depth": 4}, aligner="plain1d"))
    assert len(seen) == 2 and len(told) == 2, [str(w.message) for w in seen]
    assert sum("backbone" in t for t in told) == 1 and sum("aligner" in t for t in told) == 1
    # parts the model lacks: their unused weights in the strict=False warning of the rest, the backbone's in its own
    _, seen, told = _built_otherwise(
        lambda: from_pretrained(path, strict=False, backbone={"depth": 4}, controlnet=None, control_encoder=None, aligner=None, guidance="cfg_text")
    )
    rest = [str(w.message) for w in seen if str(w.message) not in told]
    assert len(told) == 1 and "(depth: 3 -> 4); loaded with strict=False" in told[0] and "controlnet" not in told[0], told
    assert len(rest) == 1 and re.search(r"m.safetensors loaded with strict=False: \d+ tensors loaded; "
                                        r"\d+ of the checkpoint's are not used, e.g. aligner", rest[0]), rest


def test_a_backbone_override_names_the_controlnet_blocks_it_builds(tmp_path) -> None:
    """The ControlNet's copied blocks are built by the backbone (new_block): an override of the
    backbone's heads changes them too, but the warning named the backbone alone. It names both (one
    warning), a backbone setting that does not shape the blocks names the backbone alone, and a
    ControlNet loaded alone into a backbone built otherwise is warned of itself."""
    from controlfoley.checkpoint import load_parts

    model = build_model("specmaskfoley_tiny")
    model.trained_parts = set(_EVERY_PART)
    heads = model.config.backbone.kwargs["heads"]
    path = model.save(tmp_path / "tiny.safetensors")
    _, _, told = _built_otherwise(lambda: from_pretrained(path, backbone={"heads": heads * 2}))
    assert len(told) == 1, told
    assert re.search(
        rf"backbone is 'specmaskgit' with other settings than the checkpoint trained it with \(heads: {heads} -> {heads * 2}\), as are the "
        r"controlnet's copied blocks, which the backbone builds; their weights load into the parts where names and shapes agree.*: retrain "
        r"backbone and controlnet as they are now, or drop the backbone override to use them as trained$",
        told[0],
    )
    with pytest.warns(UserWarning, match=r"as are the controlnet's copied blocks"):
        changed = from_pretrained(path, backbone={"heads": heads * 2})
    assert set(changed.trained_as) == {"backbone", "controlnet"}
    _, _, told = _built_otherwise(lambda: from_pretrained(path, strict=False, backbone={"depth": model.backbone.depth + 1}))
    assert len(told) == 1 and told[0].count("controlnet") == 0, told  # the number of blocks: the ControlNet copies the first ones alike
    into = build_model("specmaskfoley_tiny", backbone={"heads": heads * 2})
    with pytest.warns(UserWarning, match=rf"load_parts\(.*\): controlnet is 'copy' with other settings than the checkpoint trained it with "
                      rf"\(its copied blocks, which the backbone builds: heads: {heads} -> {heads * 2}\); .*build the backbone as the checkpoint "
                      rf"did, backbone=\{{\"name\": \"specmaskgit\", .*\"heads\": {heads}"):  # fmt: skip
        load_parts(into, path, ["controlnet"])


def test_saving_to_another_weights_format_is_refused(micro_model, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"cannot save to .*m.bin: controlfoley checkpoints are safetensors files.*m.safetensors"):
        micro_model.save(tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()
    assert micro_model.save(tmp_path / "run.v2") == tmp_path / "run.v2" / "model.safetensors"  # any other suffix: a folder


def test_resolve_guidance_is_what_generate_samples_with(micro_model):
    from controlfoley.guidance import CFG

    assert micro_model.resolve_guidance() is micro_model.guidance
    rule = micro_model.resolve_guidance("cfg_video")
    assert isinstance(rule, CFG) and rule.needs_video and not rule.needs_text
    mine = CFG(condition="text", scale=2.0)
    assert micro_model.resolve_guidance(mine) is mine
    with pytest.raises(ConfigError, match="guidance must be a GuidanceRule or a GUIDANCE name, got int"):
        micro_model.resolve_guidance(3)


def test_atomic_writes_read_the_umask_without_setting_it(monkeypatch):
    """Setting the umask to read it (os.umask(0), then back) gives files that another thread
    creates in between world-writable permissions: the current umask is read from /proc."""
    import os
    import sys

    from controlfoley import _io

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status is Linux's")
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: (_ for _ in ()).throw(AssertionError("os.umask called")))
        assert _io._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_a_seed_for_a_generator_and_a_1d_waveform_are_named(micro_model) -> None:
    """What users meet (past the suite's runtime type checks): a seed passed as `generator` and
    one waveform without its batch axis."""
    import inspect

    generate = inspect.unwrap(type(micro_model).generate)
    x = micro_inputs(micro_model, b=1)
    with pytest.raises(ConfigError, match=r"generator must be a torch.Generator, a list of them \(one per row\) or None, got int.*generator=torch.Generator\('cpu'\).manual_seed\(5\)"):
        generate(micro_model, x["features"], x["text"], steps=2, generator=5)
    encode = inspect.unwrap(type(micro_model).encode_audio)
    with pytest.raises(ShapeError, match=r"encode_audio takes float waveforms \[batch, samples\].*got a 1-D .*pass wav\[None\]"):
        encode(micro_model, torch.zeros(micro_model.n_samples))
    # integer PCM of the right shape: the dtype is named with its scale, not "pass wav[None]" (a walkthrough)
    with pytest.raises(ShapeError, match=r"got a 2-D torch.int16 tensor .*integer samples are PCM: pass floats in \[-1, 1\], e.g. wav.float\(\) / 32768$"):
        encode(micro_model, torch.zeros(1, micro_model.n_samples, dtype=torch.int16))
    assert encode(micro_model, torch.zeros(1, micro_model.n_samples)).shape == (1, *micro_model.grid)


def test_control_parts_added_to_a_backbone_checkpoint_copy_the_loaded_backbone(tmp_path) -> None:
    """from_pretrained(backbone checkpoint, strict=False, control parts added): the ControlNet must
    start as a copy of the LOADED backbone's first blocks, not of the randomly built one."""
    from controlfoley.presets import get_preset

    torch.manual_seed(1)
    bb = build_model("specmaskgit_tiny")
    with torch.no_grad():
        for p in bb.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a "pretrained" backbone, unlike any built one
    path = bb.save(tmp_path / "bb.safetensors")
    full = get_preset("specmaskfoley_tiny")
    with pytest.warns(UserWarning, match=r"loaded with strict=False: .* keep their built \(untrained\) weights"):
        m = from_pretrained(path, strict=False, control_encoder=full.control_encoder, aligner=full.aligner, controlnet=full.controlnet, guidance=full.guidance)
    for i, blk in enumerate(m.controlnet.blocks):
        for k, v in blk.state_dict().items():
            assert torch.equal(v, m.backbone.blocks[i].state_dict()[k]), (i, k)
    assert torch.equal(m.backbone.blocks[0].attn.qkv.weight, bb.backbone.blocks[0].attn.qkv.weight)


def test_sampling_runs_in_eval_mode_and_loading_gives_an_eval_model(tmp_path) -> None:
    """A part with dropout (a user's plugin, say) must not make sampling random beyond its
    generator: generate runs every module in eval mode and puts each one's mode back; from_pretrained
    returns an eval model, as diffusers' does."""
    from torch import nn

    torch.manual_seed(0)
    m = build_model("specmaskfoley_tiny", **micro_overrides())
    assert m.training and not from_pretrained(m.save(tmp_path / "m.safetensors")).training
    blk = m.backbone.blocks[0].attn
    blk.proj = nn.Sequential(blk.proj, nn.Dropout(0.5))  # stands in for a plugin part with dropout
    m.tokenizer.eval()  # a frozen part kept in eval by its trainer: its mode must come back as it was
    x = micro_inputs(m, b=1)
    a, b = (m.generate(x["features"], x["text"], steps=2, generator=torch.Generator().manual_seed(0)) for _ in range(2))
    assert torch.equal(a, b)
    assert m.training and blk.proj.training and not m.tokenizer.training


def test_loading_an_unknown_part_lists_the_parts(tmp_path) -> None:
    from controlfoley.checkpoint import load_parts

    m = build_model("specmaskgit_tiny")
    path = m.save(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"model has no part 'foo'; its parts are mel, tokenizer, backbone.*--init-parts"):
        load_parts(build_model("specmaskgit_tiny"), path, ["tokenizer", "foo"])


def test_the_controlnet_branch_computes_blocks_over_embedding_plus_control(micro_model) -> None:
    """Each residual is out_i(block_i(...block_1(emb + cond_in(control)))): the copy sees the
    backbone's embedding and the aligned video (the zero-init tests alone pass if it drops either)."""
    x = micro_inputs(micro_model, b=2)
    cn = micro_model.controlnet
    with torch.no_grad():
        for p in cn.outs.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
        control = micro_model.encode_control(x["features"])
        codes = x["codes"].flatten(1)
        emb = micro_model.backbone.embed(codes, torch.zeros_like(codes, dtype=torch.bool))
        got = cn(emb, control)
        h = emb + cn.cond_in(control)
        want = []
        for blk, out in zip(cn.blocks, cn.outs):
            h = blk(h)
            want.append(out(h))
        # one entry per backbone block: the copy's i-th output where the map injects it, else None
        assert len(got) == len(micro_model.backbone.blocks) and len(cn.map) == len(got)
        assert sorted(i for i in cn.map if i is not None) == list(range(len(cn.blocks)))
        for g, i in zip(got, cn.map):
            if i is None:
                assert g is None
            else:
                torch.testing.assert_close(g, want[i])


def test_mask_vectors_are_the_projected_prompt_where_on_and_the_learned_mask_elsewhere(micro_model) -> None:
    bb = micro_model.backbone
    with torch.no_grad():
        bb.mask_emb.normal_(generator=torch.Generator().manual_seed(0))
        cond = torch.randn(2, bb.cond_dim, generator=torch.Generator().manual_seed(1))
        v = bb.mask_vectors(cond, torch.tensor([True, False]), 2)
        torch.testing.assert_close(v[0], bb.cond_proj(cond[0]))
        torch.testing.assert_close(v[1], bb.mask_emb.reshape(-1))
        torch.testing.assert_close(bb.mask_vectors(None, None, 2), bb.mask_emb.reshape(1, -1).expand(2, -1))


@pytest.mark.parametrize("name, kwargs", [("synchformer_clip", {"sync_dim": 8, "clip_dim": 6}), ("sync_only", {"sync_dim": 8})])
def test_control_encoders_refuse_a_feature_stream_with_zero_frames(name, kwargs):
    from controlfoley import CONTROL_ENCODERS
    from controlfoley.errors import ShapeError

    enc = CONTROL_ENCODERS.build(name, **kwargs)
    feats = {"sync": torch.zeros(2, 0, 8), "clip": torch.zeros(2, 3, 6)}
    with pytest.raises(ShapeError, match="'sync' has zero frames"):
        enc(feats)
    if name == "synchformer_clip":  # the semantic stream too: its time mean would be NaN
        with pytest.raises(ShapeError, match="'clip' has zero frames"):
            enc({"sync": torch.zeros(2, 4, 8), "clip": torch.zeros(2, 0, 6)})


def test_a_missing_condition_names_the_rule_that_fits_and_an_unused_input_is_said(micro_model, caplog) -> None:
    """Each 'needs ...' error points to a rule that fits what was given (unconditional when nothing
    was); features or text a rule (or a backbone alone) does not read are warned about, not dropped
    silently, and the tokens are those of the call without them."""
    import logging

    x = micro_inputs(micro_model, b=1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with pytest.raises(ConfigError, match=r"needs video features; pass features=\.\.\., or use guidance GUIDANCE.build\('none', condition='uncond'\)"):
        micro_model.generate(batch_size=1, steps=2)
    with pytest.raises(ConfigError, match=r"needs video features; pass features=\.\.\., or use guidance 'cfg_text' \(text-only"):
        micro_model.generate(None, x["text"], guidance="cfg_text_video", steps=2)
    with pytest.raises(ConfigError, match=r"needs a text \(CLAP\) embedding; pass text=\.\.\., or use guidance 'cfg_video' \(video-only"):
        micro_model.generate(x["features"], steps=2)
    with pytest.raises(ConfigError, match=r"needs video features; .*condition='uncond'"):
        micro_model.generate(batch_size=1, guidance="none", steps=2)  # 'none' follows text+video by default
    with caplog.at_level(logging.WARNING, logger="controlfoley"):
        with_text = micro_model.generate(x["features"], x["text"], guidance="cfg_video", steps=2, generator=g())
        assert sum("text is ignored: guidance CFG" in r.getMessage() for r in caplog.records) == 1
        assert torch.equal(with_text, micro_model.generate(x["features"], guidance="cfg_video", steps=2, generator=g()))
        caplog.clear()
        micro_model.generate(x["features"], x["text"], guidance="cfg_text", steps=2)
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["features are ignored"]
        alone = build_model("specmaskgit_tiny", tokenizer=micro_overrides()["tokenizer"])
        caplog.clear()
        with_feats = alone.generate(x["features"], torch.randn(1, alone.backbone.cond_dim), guidance="cfg_text", steps=2, generator=g())
        assert any("features are ignored: this model has no video control" in r.getMessage() for r in caplog.records)
        assert with_feats.shape == (1, *alone.grid)
        caplog.clear()
        micro_model.generate(x["features"], x["text"], steps=2)  # the rule reads both: nothing said
        assert not caplog.records


def test_an_int_passes_where_a_float_is_annotated_under_the_runtime_checks(micro_model) -> None:
    """The suite runs with jaxtyping + beartype (PEP 484's numeric tower, controlfoley.typing.TYPECHECKER),
    as users with CONTROLFOLEY_TYPECHECK=1 do: cfg_scale=3 is 3.0, as static checkers allow; a str
    is still refused."""
    import jaxtyping

    from controlfoley.typing import TYPECHECKER

    assert "is_pep484_tower=True" in TYPECHECKER
    x = micro_inputs(micro_model, b=1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    as_int = micro_model.generate(x["features"], x["text"], steps=2, cfg_scale=3, temperature=1, generator=g())
    assert torch.equal(as_int, micro_model.generate(x["features"], x["text"], steps=2, cfg_scale=3.0, temperature=1.0, generator=g()))
    with pytest.raises(jaxtyping.TypeCheckError):  # the checker is on (generate's own check would raise a ConfigError)
        micro_model.generate(x["features"], x["text"], steps=2, cfg_scale="3")


def test_a_save_that_cannot_be_written_names_the_target(micro_model, tmp_path, monkeypatch) -> None:
    """Not a raw OSError naming the hidden temporary file: a CheckpointError naming the path asked for."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=rf"cannot write {blocker}/m.safetensors: .*nothing was written") as e:
        micro_model.save(blocker / "m.safetensors")
    assert isinstance(e.value.__cause__, OSError) and ".tmp-" not in str(e.value)
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    # a write that fails inside safetensors (a full disk: its SafetensorError, not an OSError) is named alike
    from safetensors import SafetensorError

    import controlfoley.checkpoint as checkpoint

    def full_disk(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write {tmp_path}/m.safetensors: .*No space left"):
        micro_model.save(tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the temporary file removed


def test_an_override_that_breaks_the_fit_is_named_as_the_cause(micro_model, tmp_path) -> None:
    """from_pretrained(file, backbone={...}) whose shapes the file cannot fill: the advice is to drop
    the override (or strict=False), not 'build from the checkpoint's own config', which the user did."""
    path = micro_model.save(tmp_path / "m.safetensors")
    depth = micro_model.config.backbone.kwargs["depth"]
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys .*The override\(s\) backbone build parts .*drop them .*strict=False") as e:
        from_pretrained(path, backbone={"depth": depth - 1})
    assert "own config" not in str(e.value)
    assert len(from_pretrained(path, strict=False, backbone={"depth": depth - 1}).backbone.blocks) == depth - 1
    # a file missing a tensor, loaded with an override that has nothing to do with it: not blamed
    from controlfoley.checkpoint import FORMAT_KEY, read_state_dict, save_state_dict

    state, meta = read_state_dict(path)
    del state[next(k for k in state if k.startswith("aligner."))]
    meta.pop(FORMAT_KEY)
    save_state_dict(path, state, meta)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): aligner\..*own config") as e:
        from_pretrained(path, guidance="cfg_video")
    assert "The override" not in str(e.value)


def test_the_opt_in_type_checks_use_the_same_checker(tmp_path) -> None:
    """CONTROLFOLEY_TYPECHECK=1 outside pytest: a str for a float is refused by the checker, an int passes."""
    import subprocess
    import sys

    code = (
        "import torch, jaxtyping, controlfoley\n"
        "from controlfoley.guidance import scale_at\n"
        "assert scale_at(1, 4, 3, 'linear') == scale_at(1, 4, 3.0, 'linear')\n"
        "try:\n    scale_at(1, 4, '3', 'linear')\nexcept jaxtyping.TypeCheckError:\n    print('checked')\n"
    )
    env = {**os.environ, "CONTROLFOLEY_TYPECHECK": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr[-2000:]


def test_one_generator_per_row_makes_each_row_its_batch_1_sample(micro_model) -> None:
    """generate(generator=[g0, g1, g2]): row i draws from generator i only, so it is the sample that
    generator gives alone (diffusers' lists of generators), and one row's seed can be re-made."""
    x = micro_inputs(micro_model, b=3, seed=4)
    seeds = (11, 12, 13)
    batch = micro_model.generate(x["features"], x["text"], steps=3, generator=[torch.Generator().manual_seed(s) for s in seeds])
    for i, s in enumerate(seeds):
        feats = {k: v[i : i + 1] for k, v in x["features"].items()}
        alone = micro_model.generate(feats, x["text"][i : i + 1], steps=3, generator=torch.Generator().manual_seed(s))
        assert torch.equal(alone[0], batch[i]), f"row {i}"
    # one generator for the batch is a different draw: row 1 is not its seed's batch-1 sample
    shared = micro_model.generate(x["features"], x["text"], steps=3, generator=torch.Generator().manual_seed(12))
    feats = {k: v[1:2] for k, v in x["features"].items()}
    alone = micro_model.generate(feats, x["text"][1:2], steps=3, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(shared[1], alone[0])


def test_a_list_of_generators_is_checked_against_the_batch(micro_model) -> None:
    import inspect

    generate = inspect.unwrap(type(micro_model).generate)  # the library's own messages, past the suite's type checks
    x = micro_inputs(micro_model, b=2)
    with pytest.raises(ConfigError, match=r"one torch.Generator per row of the batch \(2\), got 1"):
        generate(micro_model, x["features"], x["text"], steps=2, generator=[torch.Generator()])
    with pytest.raises(ConfigError, match=r"a list must hold torch.Generator objects, one per row; got int"):
        generate(micro_model, x["features"], x["text"], steps=2, generator=[1, 2])
    with pytest.raises(ConfigError, match=r"manual_seed\(SEED\)"):  # no repr of a list in the advice
        generate(micro_model, x["features"], x["text"], steps=2, generator={"a": 1})


def test_predrawn_noise_with_one_generator_per_row_equals_drawing_as_it_goes() -> None:
    from controlfoley.sampling import PredrawnUniforms

    noise = PredrawnUniforms(2, 3, 5, 7, torch.device("cpu"))
    noise.fill([torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    for k in range(2):
        assert torch.equal(noise(torch.Size([3, 5, 7])), _uniform_rows((3, 5, 7), gens))
        assert torch.equal(noise(torch.Size([3, 5])), _uniform_rows((3, 5), gens))


def _uniform_rows(shape, gens) -> torch.Tensor:
    return torch.stack([torch.rand(shape[1:], generator=g) for g in gens])


def test_wrong_inputs_to_generate_loss_and_audio_calls_are_named(micro_model, caplog) -> None:
    """Inputs users get wrong, each refused with what to do (past the suite's runtime type checks,
    which would otherwise answer first): found by an audit of the public API."""
    import inspect
    import logging

    m = micro_model
    unwrap = lambda name: functools.partial(inspect.unwrap(getattr(type(m), name)), m)  # noqa: E731
    generate, loss, decode, vocode, encode_audio = (unwrap(n) for n in ("generate", "loss", "decode", "vocode", "encode_audio"))
    x = micro_inputs(m, b=2)
    f, t, codes = x["features"], x["text"], x["codes"]
    with pytest.raises(ShapeError, match=r"text holds NaN or inf values \(rows \[1\]\)"):
        generate(f, torch.cat([t[:1], torch.full_like(t[:1], float("nan"))]), steps=2)
    with pytest.raises(ShapeError, match=r"known_codes must be integer token ids, got torch.float32"):
        generate(f, t, steps=2, known_codes=codes.float(), known_mask=torch.ones_like(codes, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"known_mask given without known_codes"):
        generate(f, t, steps=2, known_mask=torch.ones_like(codes, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"known_codes must be a torch.Tensor .*torch.as_tensor"):
        generate(f, t, steps=2, known_codes=codes.numpy(), known_mask=torch.ones_like(codes, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"known_codes must be a token map \[batch, F, T\], got 2-D .*known_codes\[None\]"):
        generate(f, t, steps=2, known_codes=codes[0], known_mask=torch.ones_like(codes[0], dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"batch_size must be an int >= 1, got -1"):
        generate(batch_size=-1, guidance="none", steps=2)
    with pytest.raises(ShapeError, match=r"batch sizes disagree \(features 2, text 1\)"):
        generate(f, t[:1], steps=2)
    # loss
    with pytest.raises(ShapeError, match=r"loss takes the token map, not a batch dict: loss\(batch\['tokens'\]"):
        loss({"tokens": codes})
    with pytest.raises(ShapeError, match=r"codes must be integer token ids, got torch.float32"):
        loss(codes.float(), features=f)
    with pytest.raises(ShapeError, match=r"batch sizes disagree \(codes 2, features 2, cond 1\)"):
        loss(codes, features=f, cond=t[:1])
    with pytest.raises(ConfigError, match=r"uncond_prob .* in \[0, 1\]; got 1.5"):
        loss(codes, features=f, cond=t, uncond_prob=1.5)
    with pytest.raises(ConfigError, match=r"generator must be a torch.Generator or None, got int"):
        loss(codes, features=f, generator=0)
    with caplog.at_level(logging.WARNING, logger="controlfoley.model"):
        loss(codes, cond=t)
    assert "no features given, so the ControlNet gets no video" in caplog.text
    # decode / vocode / encode_audio
    with pytest.raises(ShapeError, match=r"codes must be a torch.Tensor .*torch.as_tensor"):
        decode(codes.numpy())
    mel = decode(codes)
    with pytest.raises(ShapeError, match=r"mel holds NaN or inf values"):
        vocode(torch.full_like(mel, float("nan")))
    with pytest.raises(ShapeError, match=r"mel has 0 frames"):
        vocode(mel[..., :0])
    with pytest.raises(ShapeError, match=r"mel must be a float tensor"):
        vocode(mel.long())
    wav = 0.1 * torch.randn(m.n_samples, 2)
    with pytest.raises(ShapeError, match=r"looks like \[samples, channels\].*wav.T"):
        encode_audio(wav)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="controlfoley.model"):
        encode_audio(wav.T[:1] * 32767)
    assert "the waveform peaks at 1.4" in caplog.text and "divide by 32768" in caplog.text


def test_encode_audio_resamples_a_waveform_at_another_rate(micro_model) -> None:
    """encode_audio(wav, sample_rate=48000) gives the tokens of the same sound at the model's rate."""
    import math

    m = micro_model
    sr = m.sample_rate
    n = m.n_samples
    t = torch.arange(n, dtype=torch.float32) / sr
    tone = 0.3 * torch.sin(2 * math.pi * 440.0 * t) * (t < t[-1] / 2)
    t48 = torch.arange(round(n * 48000 / sr), dtype=torch.float32) / 48000
    tone48 = 0.3 * torch.sin(2 * math.pi * 440.0 * t48) * (t48 < t[-1] / 2)
    native = m.encode_audio(tone[None])
    resampled = m.encode_audio(tone48[None], sample_rate=48000)
    wrong = m.encode_audio(tone48[None])  # read as if at the model's rate: another sound
    same = (resampled == native).float().mean().item()
    assert same > 0.8, same
    assert (wrong == native).float().mean().item() < same
    with pytest.raises(ConfigError, match="encode_audio: sample_rate is in Hz, a positive whole number"):
        m.encode_audio(tone[None], sample_rate=0)


def test_a_guidance_rule_with_a_nan_scale_is_refused() -> None:
    from controlfoley import GUIDANCE

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="a guidance rule's scale must be a finite number"):
            GUIDANCE.build("multi", scale=bad)
    with pytest.raises(ConfigError, match="a guidance rule's scale must be a finite number"):
        build_model("specmaskfoley_tiny", guidance={"scale": float("nan")})


def test_a_step_callback_sees_each_step_s_tokens_and_mask(micro_model) -> None:
    """generate(callback=fn): fn(step, n_steps, codes [b, F, T], mask [b, F, T]) after each step;
    the mask shrinks to nothing and the last codes are the result."""
    x = micro_inputs(micro_model, b=2)
    seen = []
    out = micro_model.generate(
        x["features"], x["text"], steps=4, generator=torch.Generator().manual_seed(0),
        callback=lambda k, n, c, m: seen.append((k, n, c.clone(), m.clone())),
    )  # fmt: skip
    assert [(k, n) for k, n, _, _ in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    masked = [int(m.sum()) for _, _, _, m in seen]
    assert all(c.shape == m.shape == (2, *micro_model.grid) for _, _, c, m in seen)
    assert masked == sorted(masked, reverse=True) and masked[0] < 2 * micro_model.n_tokens and masked[-1] == 0
    assert torch.equal(seen[-1][2], out)
    plain = micro_model.generate(x["features"], x["text"], steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, out)  # watching changes nothing
    import inspect

    generate = inspect.unwrap(type(micro_model).generate)  # past the suite's type checks, to the library's message
    with pytest.raises(ConfigError, match="callback must be a function"):
        generate(micro_model, x["features"], x["text"], steps=2, callback=3)
    with pytest.raises(ConfigError, match="callback cannot run inside a captured CUDA graph"):
        micro_model.generate(x["features"], x["text"], steps=2, callback=print, cuda_graph=True)


def test_control_scale_weighs_the_controlnet_residuals(micro_model) -> None:
    """generate(control_scale=s) multiplies every ControlNet residual by s: 1 is the model as
    trained, 0 removes the video (multi-CFG then equals text-only CFG, token for token), and the
    ControlNet is left as it was after the call."""
    m = micro_model
    with torch.no_grad():  # an untrained ControlNet's zero linears give no residual at all: give it some
        for out in m.controlnet.outs:
            out.weight.normal_(0.0, 0.05)
    x = micro_inputs(m, b=2)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    try:
        base = m.generate(x["features"], x["text"], steps=4, generator=g())
        assert torch.equal(m.generate(x["features"], x["text"], steps=4, generator=g(), control_scale=1.0), base)
        strong = m.generate(x["features"], x["text"], steps=4, generator=g(), control_scale=3.0)
        assert not torch.equal(strong, base)
        off = m.generate(x["features"], x["text"], steps=4, generator=g(), control_scale=0.0)
        text_only = m.generate(x["features"], x["text"], steps=4, generator=g(), guidance=GUIDANCE.build("cfg_text", scale=m.guidance.scale))
        assert torch.equal(off, text_only)
        # the scale travels with the call, not on the shared model: two threads at other scales
        # each get their own call's tokens, and the model is left as it was
        import threading

        got = {}
        calls = [threading.Thread(target=lambda s=s: got.__setitem__(s, m.generate(x["features"], x["text"], steps=4, generator=g(), control_scale=s))) for s in (0.0, 3.0)]
        for t in calls:
            t.start()
        for t in calls:
            t.join()
        assert torch.equal(got[0.0], off) and torch.equal(got[3.0], strong)
        assert torch.equal(m.generate(x["features"], x["text"], steps=4, generator=g()), base)
        with pytest.raises(ConfigError, match="control_scale must be a finite number"):
            m.generate(x["features"], x["text"], steps=2, control_scale=float("nan"))
    finally:
        with torch.no_grad():
            for out in m.controlnet.outs:
                out.weight.zero_()


def test_a_safetensors_suffix_in_any_case_is_a_file_not_a_folder(micro_model, tmp_path) -> None:
    """save_model("lib/Model.SAFETENSORS") writes that file (as the other suffix check reads it,
    case-blind), not a folder of that name holding model.safetensors."""
    path = micro_model.save(tmp_path / "lib" / "Model.SAFETENSORS")
    assert path == tmp_path / "lib" / "Model.SAFETENSORS" and path.is_file()
    reloaded = from_pretrained(path)
    assert all(torch.equal(v, micro_model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_a_damaged_config_in_a_checkpoint_and_a_non_path_are_named(micro_model, tmp_path) -> None:
    import inspect

    from safetensors.torch import load_file, save_file

    from controlfoley.checkpoint import CONFIG_KEY, load_model, read_metadata
    from controlfoley.errors import CheckpointError

    path = micro_model.save(tmp_path / "m.safetensors")
    meta = read_metadata(path)
    meta[CONFIG_KEY] = meta[CONFIG_KEY][:-7]  # cut short, as a hand edit or a damaged copy leaves it
    save_file(load_file(path), tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: its controlfoley config .* is not valid JSON"):
        from_pretrained(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="from_pretrained takes a checkpoint path or the name of a preset that ships weights, got NoneType"):
        inspect.unwrap(load_model)(None)  # past the suite's type checks, to the library's own message


def test_an_override_that_cannot_build_the_checkpoints_model_says_to_drop_it(micro_model, tmp_path) -> None:
    """from_pretrained(FILE, backbone={"depth": 2}) on a model with a 3-block ControlNet: the build
    error's own advice (set controlnet n_blocks 2) would build parts the weights do not fit either;
    the message says to drop the override or build the variant and load what fits."""
    path = micro_model.save(tmp_path / "m.safetensors")
    n = micro_model.config.controlnet.kwargs.get("n_blocks", 3)
    with pytest.raises(ConfigError, match=r"the override\(s\) backbone cannot build a model for this checkpoint .*drop the override\(s\) to load it as saved"):
        from_pretrained(path, backbone={"depth": max(1, n - 1)})


def test_a_mistyped_checkpoint_path_is_called_missing_and_its_neighbours_listed(micro_model, tmp_path) -> None:
    """from_pretrained("runs/modle.safetensors") said it was "neither a checkpoint file/folder nor a
    preset that ships weights", as if the name were meant as a preset; a path is said to be missing,
    with the checkpoints beside it (the typo is then plain)."""
    from controlfoley.errors import CheckpointError

    micro_model.save(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*modle.safetensors does not exist; .* holds model.safetensors"):
        from_pretrained(tmp_path / "modle.safetensors")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*x.safetensors does not exist; its folder .*nowhere does not exist either"):
        from_pretrained(tmp_path / "nowhere" / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"specmaskfoley_tiny is neither a checkpoint file/folder nor a preset that ships weights.*build_model"):
        from_pretrained("specmaskfoley_tiny")  # a preset name keeps its own advice


def test_a_model_whose_control_encoder_was_removed_says_so(micro_model):
    """has_control follows the ControlNet; with the control encoder set to None after building,
    encode_control raised "'NoneType' object is not callable" and pipeline / recipe code an
    AttributeError. Now a ConfigError naming the missing part (mypy found the unguarded None)."""
    from controlfoley.control.encoders import control_encoder_of

    x = micro_inputs(micro_model)
    micro_model.control_encoder = None
    assert micro_model.has_control
    with pytest.raises(ConfigError, match="incomplete: it has no control_encoder"):
        micro_model.encode_control(x["features"])
    with pytest.raises(ConfigError, match="has no control encoder"):
        control_encoder_of(micro_model)


def warns_until_copied(model):
    """freeze_backbone warns that the untrained ControlNet is not a copy of the backbone, naming
    copy_from; after model.controlnet.copy_from(model.backbone) it does not."""
    import warnings

    with pytest.warns(UserWarning, match=r"not a copy of the backbone.*model\.controlnet\.copy_from\(model\.backbone\)"):
        model.freeze_backbone()
    model.controlnet.copy_from(model.backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.freeze_backbone()


def test_freeze_backbone_warns_when_an_untrained_controlnet_is_not_a_copy_of_the_backbone():
    """Backbone weights loaded by hand after build_model leave the ControlNet a copy of the weights it
    was built with; the paper's ControlNet starts from the pretrained backbone, so training it warns
    and names the fix. A copy, or a trained ControlNet (non-zero linears), does not warn."""
    import warnings

    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    torch.manual_seed(1)
    other = build_model("specmaskfoley_tiny", **micro_overrides())
    model.backbone.load_state_dict(other.backbone.state_dict())  # "pretrained" weights, loaded by hand
    warns_until_copied(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model.backbone.blocks[0].norm1.weight.add_(1.0)  # differs again, but the branch is trained now
            model.controlnet.outs[0].weight.add_(0.01)
        model.freeze_backbone()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh step 0 runs it)")
def test_loss_with_a_cpu_generator_on_a_cuda_model_draws_the_cpu_masks(micro_model):
    """model.loss(generator=torch.Generator()) on a CUDA model: the masks come from the CPU generator
    (torch.rand on a CUDA device refuses a CPU generator), the same masks and loss as on the CPU."""
    x = micro_inputs(micro_model)
    cpu = micro_model.loss(x["codes"], features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(3))[1]
    model = micro_model.cuda()
    feats = {k: v.cuda() for k, v in x["features"].items()}
    gpu = model.loss(x["codes"].cuda(), features=feats, cond=x["text"].cuda(), generator=torch.Generator().manual_seed(3))[1]
    # the same masks: one token more or fewer moves mask_frac by 1 / 320 here; the mean itself is summed
    # in another order on the GPU (0.99375004 against the CPU's 0.99374998 on an H200)
    assert gpu["mask_frac"] == pytest.approx(cpu["mask_frac"], abs=1e-6)
    assert abs(gpu["loss"] - cpu["loss"]) < 1e-3 * max(1.0, abs(cpu["loss"]))


def test_a_backbone_runs_file_loads_as_saved_and_its_untrained_controlnet_is_warned_about(tmp_path):
    """A backbone-recipe run of a preset with a ControlNet saves the ControlNet untouched: a copy of
    the random initial backbone. from_pretrained loads the file as saved (its weights, bit for bit);
    training that ControlNet warns, naming copy_from, after which it does not; load_parts of the
    backbone alone (the CLI's --init) copies it."""
    from controlfoley.checkpoint import load_parts

    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    with torch.no_grad():  # "trained" backbone; the ControlNet still the build-time copy
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "bb.safetensors")
    loaded = from_pretrained(tmp_path / "bb.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    warns_until_copied(loaded)
    fresh = build_model("specmaskfoley_tiny", **micro_overrides())
    load_parts(fresh, tmp_path / "bb.safetensors", ["backbone"])
    assert not fresh.controlnet.differs_from(fresh.backbone)


def test_differs_from_compares_tensors_only():
    """A block with extra state (a quantised or fp8 block's get_extra_state: not a tensor) is
    compared by its tensors, without failing (freeze_backbone, and so the ControlNet recipe, calls it)."""
    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    for blk in (*model.controlnet.blocks, *model.backbone.blocks):
        blk.__class__ = type("WithExtraState", (type(blk),), {"get_extra_state": lambda self: {"scale": 1.0}, "set_extra_state": lambda self, state: None})
    assert "_extra_state" in model.controlnet.blocks[0].state_dict()
    assert not model.controlnet.differs_from(model.backbone)
    with torch.no_grad():
        model.backbone.blocks[1].norm1.weight.add_(1.0)
    assert model.controlnet.differs_from(model.backbone)


def test_an_all_zero_text_row_is_no_prompt_in_sampling_as_in_training(micro_model, monkeypatch) -> None:
    """A dataset stores an untagged clip's CLAP row as zeros and training gives it the unconditional
    mask (loss); generate gave it cond_on=True, the projection of a zero vector, an input the model
    never trained on. Now the zero row is unprompted in every text row, and a warning says so."""
    seen = {}
    orig = micro_model.backbone.embed

    def spy(codes, mask, cond=None, cond_on=None):
        seen["cond_on"] = cond_on.clone()
        return orig(codes, mask, cond, cond_on)

    monkeypatch.setattr(micro_model.backbone, "embed", spy)
    x = micro_inputs(micro_model, b=2)
    text = x["text"].clone()
    text[1] = 0.0
    with pytest.warns(UserWarning, match=r"text rows \[1\] are all zeros, which the model reads as no prompt.*without_text"):
        micro_model.generate(x["features"], text, steps=1, generator=torch.Generator().manual_seed(0))
    # multi-CFG rows: [uncond (b), video (b), text_video (b)]; row 1 of text_video is unprompted
    assert seen["cond_on"].tolist() == [False, False, False, False, True, False]
    neg = torch.randn_like(text)
    neg[0] = 0.0
    with pytest.warns(UserWarning, match=r"negative_text rows \[0\]"):
        micro_model.generate(x["features"], x["text"], negative_text=neg, steps=1, generator=torch.Generator().manual_seed(0))
    assert seen["cond_on"].tolist() == [False, True, False, False, True, True]


def test_compact_integer_token_maps_are_read_as_token_ids(micro_model, monkeypatch) -> None:
    """uint8 / int8 maps (a compact dataset's): the range check compared them with the vocabulary
    size in their own dtype (256 overflows) and refused in-range ids; decode failed inside torch.
    The library's own messages are checked with the runtime type checks off, as users run."""
    from jaxtyping import config

    monkeypatch.setattr(config, "jaxtyping_disable", True)
    v = micro_model.backbone.vocab_size
    codes = torch.randint(0, min(v, 128), (2, *micro_model.grid), generator=torch.Generator().manual_seed(0))
    x = micro_inputs(micro_model, b=2)
    want = micro_model.loss(codes, features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(1))
    for dt in (torch.uint8, torch.int8, torch.int16):
        got = micro_model.loss(codes.to(dt), features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(1))
        assert torch.equal(got[0], want[0]), dt
        assert torch.equal(micro_model.decode(codes.to(dt)), micro_model.decode(codes)), dt
        known = torch.zeros_like(codes, dtype=torch.bool)
        known[:, 0] = True
        out = micro_model.generate(x["features"], x["text"], steps=2, known_codes=codes.to(dt), known_mask=known, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[known], codes[known]), dt
    with pytest.raises(ShapeError, match="integer token ids, got torch.float32"):
        micro_model.decode(codes.float())


def test_encode_mel_names_a_window_of_the_wrong_length_and_a_non_float_mel(micro_model, monkeypatch) -> None:
    from jaxtyping import config

    monkeypatch.setattr(config, "jaxtyping_disable", True)  # the library's messages, as users see them
    n_mels, n = int(micro_model.mel.n_mels), micro_model.config.n_frames
    with pytest.raises(ShapeError, match=rf"encode_mel takes float mel windows \[batch, {n_mels}, {n}\].*crop or pad its frames to {n}"):
        micro_model.encode_mel(torch.zeros(1, n_mels, n // 2))
    for bad in (torch.zeros(1, n_mels, n, dtype=torch.long), torch.zeros(1, n_mels, n, dtype=torch.bool)):
        with pytest.raises(ShapeError, match=f"got a {bad.dtype} tensor"):
            micro_model.encode_mel(bad)
    assert micro_model.encode_mel(torch.zeros(1, n_mels, n) - 1.0).shape == (1, *micro_model.grid)


def test_on_off_arguments_take_bools_only(micro_model, tmp_path, monkeypatch) -> None:
    """"no" is truthy: generate(compile="no") compiled (22 s), strict="no" loaded strictly."""
    from jaxtyping import config

    monkeypatch.setattr(config, "jaxtyping_disable", True)  # the library's messages, as users see them
    x = micro_inputs(micro_model, b=1)
    for flag in ("compile", "prune_rows", "cuda_graph"):
        with pytest.raises(ConfigError, match=f"{flag} must be True or False, got str 'no'"):
            micro_model.generate(x["features"], x["text"], steps=1, **{flag: "no"})
    path = micro_model.save(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="strict must be True or False"):
        from_pretrained(path, strict="no")
    import numpy as np

    micro_model.generate(x["features"], x["text"], steps=1, prune_rows=np.bool_(False))  # numpy's bools are bools


def test_a_non_finite_sampler_temperature_is_refused_when_the_config_is_made() -> None:
    from controlfoley.config import SamplerConfig

    for t in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="sampler.temperature must be a finite number >= 0"):
            SamplerConfig(temperature=t)
    with pytest.raises(ConfigError, match="sampler.temperature"):
        build_model("specmaskfoley_tiny", sampler={"temperature": float("inf")})


def test_parts_called_with_another_signature_are_named_when_the_model_is_built():
    """An aligner's forward(x, grid) (the grid is a builder argument), a control encoder's
    forward(sync, clip), a backbone's embed without cond_on and a guidance rule's combine(logits)
    were TypeErrors mid-training or at the first generate (a bad combine even trained)."""
    from conftest import registered

    from controlfoley import ALIGNERS, BACKBONES, CONTROL_ENCODERS
    from controlfoley.backbones.specmaskgit import specmaskgit
    from controlfoley.control.aligners import Plain1DAligner
    from controlfoley.control.encoders import SyncOnlyEncoder
    from controlfoley.guidance import MultiCFG

    class GridAligner(Plain1DAligner):
        def forward(self, x, grid):  # type: ignore[override]
            return super().forward(x)

    class TwoStreams(SyncOnlyEncoder):
        def forward(self, sync, clip):  # type: ignore[override]
            return super().forward({"sync": sync})

    class OneArgCombine(MultiCFG):
        def combine(self, logits):  # type: ignore[override]
            return logits[0]

    def grid_aligner(*, in_dim, out_dim, grid):
        return GridAligner(in_dim, out_dim, tuple(grid))

    def two_streams(*, sync_dim=768):
        return TwoStreams(sync_dim)

    def one_arg(*, scale=3.0, schedule="linear"):
        return OneArgCombine(scale, schedule)

    def no_cond_on(*, vocab_size, grid, dim=768, depth=24, heads=8, ffn_dim=3072, cond_dim=512):
        bb = specmaskgit(vocab_size=vocab_size, grid=grid, dim=dim, depth=depth, heads=heads, ffn_dim=ffn_dim, cond_dim=cond_dim)
        real = bb.embed
        bb.embed = lambda codes, mask, cond=None: real(codes, mask, cond)
        return bb

    cases = [
        (ALIGNERS, grid_aligner, "aligner", r"aligner 'grid_aligner' \(GridAligner\)\.forward takes \(x, grid\) but is called as forward\(x\)"),
        (CONTROL_ENCODERS, two_streams, "control_encoder", r"\.forward takes \(sync, clip\) but is called as forward\(features\)"),
        (GUIDANCE, one_arg, "guidance", r"combine takes \(logits\) but is called as combine\(logits, scale\)"),
        (BACKBONES, no_cond_on, "backbone", r"\.embed takes \(codes, mask, cond=None\) but is called as embed\(codes, mask, cond, cond_on\)"),
    ]
    for registry, builder, key, message in cases:
        with registered(registry, builder.__name__, builder):
            with pytest.raises(ConfigError, match=message):
                build_model("specmaskfoley_tiny", **{key: builder.__name__})
