"""The CLAP text encoder through transformers, from local folders holding tiny random CLAP models
(a full ClapModel and a text tower alone), against transformers' own text features; its errors;
and a prompt through the pipeline, the generate command and extraction."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pipeline_helpers import MICRO, as_trained, micro_model
from safetensors.torch import load_file, save_file

from controlfoley import EXTRACTORS, cli
from controlfoley.config import ConfigError
from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
from controlfoley.errors import CheckpointError, MissingDependencyError
from controlfoley.pipeline import FoleyPipeline

# the pipelines here run small models built untrained, on purpose
pytestmark = pytest.mark.filterwarnings("ignore::controlfoley.errors.RandomWeightsWarning")

PROJ = 16  # the micro model's text width (backbone cond_dim)
TEXTS = ["a dog barks", "glass breaks, thud", "bell rings", "footsteps on gravel", "rain"]


def _tokenizer(transformers, folder: Path):
    """A byte-level BPE RoBERTa tokenizer trained here on a few phrases (no download)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 5, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    return transformers.RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def clap_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`full`: a random ClapModel (text and audio towers) with its tokenizer; `text`: its text tower
    alone (ClapTextModelWithProjection, the same weights); `other`: a non-CLAP model folder."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'controlfoley[clap]')")
    root = tmp_path_factory.mktemp("clap")
    tok = _tokenizer(transformers, root)
    text_cfg = transformers.ClapTextConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, projection_dim=PROJ,
    )  # fmt: skip
    # stages of 4, 8, 16, 32 channels: the last is hidden_size, what the audio projection reads
    audio_cfg = transformers.ClapAudioConfig(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], hidden_size=32, patch_embeds_hidden_size=4, projection_dim=PROJ)
    torch.manual_seed(0)
    full = transformers.ClapModel(transformers.ClapConfig(text_config=text_cfg.to_dict(), audio_config=audio_cfg.to_dict(), projection_dim=PROJ)).eval()
    dirs = {name: root / name for name in ("full", "text", "other")}
    full.save_pretrained(dirs["full"])
    tok.save_pretrained(dirs["full"])
    transformers.ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(dirs["full"])  # an unfused model's setting
    text = transformers.ClapTextModelWithProjection(text_cfg)
    text.text_model.load_state_dict(full.text_model.state_dict())
    text.text_projection.load_state_dict(full.text_projection.state_dict())
    text.save_pretrained(dirs["text"])
    tok.save_pretrained(dirs["text"])
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)).save_pretrained(dirs["other"])
    return dirs


def _reference(folder: Path, texts: list[str]) -> torch.Tensor:
    """transformers' own unit-normalised CLAP text features (ClapModel.get_text_features)."""
    import transformers

    model = transformers.ClapModel.from_pretrained(str(folder), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(**enc)
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4 / 5


def test_clap_encoder_gives_transformers_text_features(clap_dirs: dict[str, Path]) -> None:
    texts = ["a dog barks", "bell rings, thud", ""]
    ref = _reference(clap_dirs["full"], texts)
    assert ref.shape == (3, PROJ) and torch.allclose(ref.norm(dim=-1), torch.ones(3), atol=1e-5)
    for name in ("full", "text"):
        enc = EXTRACTORS.build("clap_transformers", folder=str(clap_dirs[name]))
        assert (enc.name, enc.output_key, enc.fps, enc.dim) == ("clap_transformers", "clap", None, PROJ)
        got = enc.encode_text(texts)
        assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-5), name
        assert torch.allclose(enc(texts[:1]), ref[:1], atol=1e-5)  # __call__ is encode_text; batch-independent
    raw = EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["text"]), normalize=False).encode_text(texts)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3) and torch.allclose(F.normalize(raw, dim=-1), ref, atol=1e-5)


def test_clap_encoder_truncates_long_prompts_to_the_model_positions(clap_dirs: dict[str, Path]) -> None:
    enc = EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["text"]), max_length=77)
    assert enc.max_length == 38  # 40 positions, RoBERTa's first two reserved
    long = ", ".join(TEXTS * 20)
    assert torch.allclose(enc.encode_text([long]), enc.encode_text([long + ", rain, rain"]), atol=1e-6)  # cut at 38 tokens
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode_text("a dog barks")


def test_clap_encoder_errors_name_the_fix(clap_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="folder .* not found; this encoder loads a local save_pretrained folder"):
        EXTRACTORS.build("clap_transformers", folder=str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="has no config.json"):
        EXTRACTORS.build("clap_transformers", folder=str(tmp_path))
    with pytest.raises(CheckpointError, match="holds a 'bert' model, not CLAP"):
        EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["other"]))
    # a checkpoint without a text-tower weight: transformers would fill it at random
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in clap_dirs["text"].iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(cut / "model.safetensors"))
    dropped = next(k for k in weights if "text_projection" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(cut / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks 1 weight\(s\) of the CLAP text tower .*text_projection"):
        EXTRACTORS.build("clap_transformers", folder=str(cut))
    with pytest.raises(ConfigError, match="max_length must be >= 1"):
        EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["text"]), max_length=0)
    monkeypatch.setitem(sys.modules, "transformers", None)  # an environment without the package
    with pytest.raises(MissingDependencyError, match=r"pip install 'controlfoley\[clap\]'"):
        EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["text"]))


def test_clap_encoder_keeps_transformers_logging_settings(clap_dirs: dict[str, Path]) -> None:
    import transformers

    logging = transformers.utils.logging
    before = (logging.get_verbosity(), logging.is_progress_bar_enabled())
    EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["full"]))
    assert (logging.get_verbosity(), logging.is_progress_bar_enabled()) == before


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_mp4(SyntheticWorld().clip(3, duration_s=2.0), tmp_path_factory.mktemp("v") / "bell.mp4")


def test_prompt_through_the_pipeline_and_generate(clap_dirs: dict[str, Path], clip_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = micro_model()
    video = {"sync": ("synthetic_sync", {"dim": 24}), "clip": ("synthetic_clip", {"dim": 12})}
    pipe = FoleyPipeline(model, video, ("clap_transformers", {"folder": str(clap_dirs["full"])}))
    emb = pipe.encode_text(["dog", "bark"])
    assert torch.allclose(emb, _reference(clap_dirs["full"], ["dog, bark"]), atol=1e-5)
    with_prompt = pipe(clip_video, prompt="a dog barks", steps=2, seed=3)
    without = pipe(clip_video, steps=2, seed=3)
    assert with_prompt.wav.shape == without.wav.shape and not torch.equal(with_prompt.wav, without.wav)  # the prompt reaches the sampler
    with pytest.raises(ConfigError, match=r"gives 16-wide embeddings but the model takes 24; use one of width 24 \(its width is fixed by its weights: use another CLAP checkpoint\)"):
        FoleyPipeline(micro_model(backbone={**MICRO["backbone"], "cond_dim": 24}), video, ("clap_transformers", {"folder": str(clap_dirs["full"])}))
    with pytest.raises(ConfigError, match=r"--text-encoder clap_transformers,folder=DIR"):
        FoleyPipeline(model, video).encode_text("a dog barks")
    model_file = as_trained(model).save(tmp_path / "m.safetensors")
    out = tmp_path / "out"
    argv = ["generate", str(clip_video), "--model", str(model_file), "--out", str(out), "--steps", "2", "--prompt", "a dog barks"]
    assert cli.main([*argv, "--text-encoder", f"clap_transformers,folder={clap_dirs['text']}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bell.mp4", "bell.wav", "generate.json"]
    assert cli.main([*argv, "--overwrite", "--text-encoder", f"clap_transformers,folder={tmp_path / 'none'}"]) == 2
    assert "clap_transformers: folder" in capsys.readouterr().err


def test_extraction_stores_clap_embeddings_of_the_tags(clap_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`controlfoley extract --list` with `--clap clap_transformers,folder=DIR`: each file's tags
    become its `clap` vector, the encoder's output; a text width the preset cannot take is refused."""
    import soundfile as sf

    from controlfoley.data.dataset import ShardDataset
    from controlfoley.data.extract import extract_main

    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", 0.1 * torch.randn(22050).numpy(), 22050)
    listing = tmp_path / "clips.tsv"
    listing.write_text(f"{tmp_path / 'a.wav'}\tbell, thud\n{tmp_path / 'b.wav'}\ta dog barks\n", encoding="utf-8")
    clap = f"clap_transformers,folder={clap_dirs['full']}"
    base = ["--preset", "specmaskgit_tiny", "--list", str(listing), "--clap", clap]
    assert extract_main([*base, "--out", str(tmp_path / "wide")]) == 2
    assert "gives 16-wide embeddings but preset 'specmaskgit_tiny' takes 64" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main([*base, "--model", 'backbone={"cond_dim": 16}', "--out", str(tmp_path / "ok")]) == 0
    ds = ShardDataset(tmp_path / "ok")
    want = _reference(clap_dirs["full"], ["bell, thud", "a dog barks"])
    got = torch.stack([ds[i]["clap"].float() for i in range(2)])
    assert torch.allclose(got, want, atol=1e-3)  # stored as fp16
    assert ds.index.info["features"]["clap"] == {"extractor": "clap_transformers", "args": {"folder": str(clap_dirs["full"])}, "dim": 16}


def _reference_audio(folder: Path, wavs_48k: list) -> torch.Tensor:
    """transformers' own CLAP audio features (ClapModel.get_audio_features, unit-normalised)."""
    import transformers

    model = transformers.ClapModel.from_pretrained(str(folder), local_files_only=True).eval()
    features = transformers.ClapFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        out = model.get_audio_features(**features(wavs_48k, sampling_rate=48000, return_tensors="pt"))
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(out, dim=-1)


def test_clap_audio_encoder_gives_transformers_audio_features(clap_dirs: dict[str, Path], tmp_path: Path) -> None:
    """`clap_audio_transformers`: the audio tower of the same folder, resampled to 48 kHz first;
    it embeds no text, and a folder without the feature extractor's settings is refused."""
    import librosa

    enc = EXTRACTORS.build("clap_audio_transformers", folder=str(clap_dirs["full"]))
    assert (enc.name, enc.output_key, enc.fps, enc.dim, enc.sample_rate) == ("clap_audio_transformers", "clap", None, PROJ, 48000)
    torch.manual_seed(0)
    wavs = 0.1 * torch.randn(2, 22050 * 2)
    got = enc.encode_audio(wavs, 22050)
    want = _reference_audio(clap_dirs["full"], [librosa.resample(w.numpy(), orig_sr=22050, target_sr=48000) for w in wavs])
    assert got.shape == (2, PROJ) and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # each clip its own
    with pytest.raises(ConfigError, match="embeds audio .* not text; embed prompts with clap_transformers"):
        enc.encode_text(["a dog barks"])
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in clap_dirs["full"].iterdir():
        if f.name != "preprocessor_config.json":
            (bare / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="has no preprocessor_config.json"):
        EXTRACTORS.build("clap_audio_transformers", folder=str(bare))
    with pytest.raises(CheckpointError, match="holds a 'clap_text_model' model, not CLAP"):
        EXTRACTORS.build("clap_audio_transformers", folder=str(clap_dirs["text"]))


def test_extraction_with_the_audio_tower_embeds_each_clips_own_audio(clap_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The paper's training prompt: `--clap clap_audio_transformers,folder=DIR` stores the CLAP audio
    embedding of each clip's audio over the model's window; tags are not needed (and not used)."""
    import soundfile as sf

    from controlfoley.data.dataset import ShardDataset
    from controlfoley.data.extract import extract_main

    torch.manual_seed(1)
    audio = {name: 0.1 * torch.randn(22050 * 8) for name in ("a", "b")}  # longer than the tiny window: cut to it
    for name, wav in audio.items():
        sf.write(tmp_path / f"{name}.wav", wav.numpy(), 22050)
    listing = tmp_path / "clips.tsv"
    listing.write_text(f"{tmp_path / 'a.wav'}\tbell\n{tmp_path / 'b.wav'}\tdog\n", encoding="utf-8")
    argv = ["--preset", "specmaskgit_tiny", "--model", 'backbone={"cond_dim": 16}', "--list", str(listing), "--out", str(tmp_path / "ds")]
    with pytest.warns(UserWarning, match="the tags are not used: clap_audio_transformers embeds each clip's own audio"):
        assert extract_main([*argv, "--clap", f"clap_audio_transformers,folder={clap_dirs['full']}"]) == 0
    ds = ShardDataset(tmp_path / "ds")
    enc = EXTRACTORS.build("clap_audio_transformers", folder=str(clap_dirs["full"]))
    n = round(512 * 256)  # the tiny preset's window: 512 mel frames of hop 256
    want = enc.encode_audio(torch.stack([audio["a"][:n], audio["b"][:n]]), 22050)
    got = torch.stack([ds[i]["clap"].float() for i in range(2)])
    assert torch.allclose(got, want, atol=2e-3)  # stored as fp16
    assert ds.index.info["features"]["clap"]["extractor"] == "clap_audio_transformers"


def test_an_untagged_line_of_a_tagged_list_is_stored_without_a_prompt(clap_dirs: dict[str, Path], tmp_path: Path) -> None:
    """It was stored as the embedding of "" and trained as a text condition; now as an all-zero
    vector, which the recipes train with the unconditional mask (tests/test_train.py), with a warning."""
    import soundfile as sf

    from controlfoley.data.dataset import ShardDataset
    from controlfoley.data.extract import extract_main

    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", 0.1 * torch.randn(22050).numpy(), 22050)
    listing = tmp_path / "clips.tsv"
    listing.write_text(f"{tmp_path / 'a.wav'}\tbell, thud\n{tmp_path / 'b.wav'}\n", encoding="utf-8")
    argv = ["--preset", "specmaskgit_tiny", "--model", 'backbone={"cond_dim": 16}', "--list", str(listing), "--out", str(tmp_path / "ds")]
    with pytest.warns(UserWarning, match=r"1 of 2 inputs have no tags .*stored without a prompt"):
        assert extract_main([*argv, "--clap", f"clap_transformers,folder={clap_dirs['full']}"]) == 0
    ds = ShardDataset(tmp_path / "ds")
    vectors = [ds[i]["clap"].float() for i in range(2)]
    assert sum(bool((v == 0).all()) for v in vectors) == 1 and sum(bool(v.abs().sum() > 0) for v in vectors) == 1


def test_a_folder_without_the_derived_constant_buffers_loads_the_same(clap_dirs: dict[str, Path], tmp_path: Path) -> None:
    """transformers' CLAP keeps three constant buffers in its state dict (modeling_clap.py:
    ClapTextEmbeddings.position_ids = arange, .token_type_ids = zeros; ClapAudioSelfAttention
    .relative_position_index, computed from the window size). Checkpoints saved where they were not
    persistent, or converted from LAION-CLAP (diffusers' conversion scripts list
    text_model.embeddings.token_type_ids as expected missing), lack them; transformers rebuilds them
    exactly, so such a folder is no random-weights risk and loads to the same embeddings. A missing
    trained buffer (the audio BatchNorm's running statistics) is still refused."""
    weights = load_file(str(clap_dirs["full"] / "model.safetensors"))
    constants = [k for k in weights if k.endswith((".position_ids", ".token_type_ids", ".relative_position_index"))]
    assert {k.rsplit(".", 1)[1] for k in constants} == {"position_ids", "token_type_ids", "relative_position_index"}

    def folder(name: str, drop: list[str]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in clap_dirs["full"].iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        save_file({k: v for k, v in weights.items() if k not in drop}, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    lean = folder("lean", constants)
    texts = ["a dog barks", "rain"]
    want_text = EXTRACTORS.build("clap_transformers", folder=str(clap_dirs["full"])).encode_text(texts)
    assert torch.allclose(EXTRACTORS.build("clap_transformers", folder=str(lean)).encode_text(texts), want_text, atol=1e-6)
    torch.manual_seed(0)
    wavs = 0.1 * torch.randn(1, 48000)
    want_audio = EXTRACTORS.build("clap_audio_transformers", folder=str(clap_dirs["full"])).encode_audio(wavs, 48000)
    got_audio = EXTRACTORS.build("clap_audio_transformers", folder=str(lean)).encode_audio(wavs, 48000)
    assert torch.allclose(got_audio, want_audio, atol=1e-6)
    stats = folder("no_stats", [k for k in weights if k.endswith("batch_norm.running_mean")])
    with pytest.raises(CheckpointError, match=r"lacks 1 weight\(s\) of the CLAP audio tower .*running_mean"):
        EXTRACTORS.build("clap_audio_transformers", folder=str(stats))
