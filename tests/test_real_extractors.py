"""Real-video feature extractors: CLIP through open_clip from a local file (a random tiny model),
and precomputed Synchformer / CLIP features (per-clip files and MMAudio's memmap layout)."""

import json
import logging
import math
import sys
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pipeline_helpers import as_trained, micro_model
from safetensors.torch import save_file

from controlfoley import EXTRACTORS, cli
from controlfoley.data import real_extractors  # noqa: F401  (registers its extractors)
from controlfoley.data.real_extractors import MMAudioFeatures
from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
from controlfoley.errors import CheckpointError, ConfigError, DataError, MissingDependencyError, ShapeError
from controlfoley.pipeline import FoleyPipeline

# the pipelines here run small models built untrained, on purpose
pytestmark = pytest.mark.filterwarnings("ignore::controlfoley.errors.RandomWeightsWarning")

TINY_CLIP = {
    "embed_dim": 12,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A randomly initialised small open_clip model, its JSON config and its weights on disk."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (pip install 'controlfoley[clip]')")
    d = tmp_path_factory.mktemp("clip")
    config = d / "cf-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("cf-tiny-clip").eval()
    weights = d / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    pt = d / "tiny.pt"
    torch.save(model.state_dict(), pt)
    return {"config": config, "weights": weights, "pt": pt}


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_mp4(SyntheticWorld().clip(7, duration_s=3.0), tmp_path_factory.mktemp("v") / "clipvid.mp4")


def test_openclip_extractor_matches_open_clip_on_preprocessed_frames(tiny_clip: dict[str, Path]) -> None:
    import open_clip

    ext = EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["weights"]), model_config=str(tiny_clip["config"]))
    assert (ext.name, ext.output_key, ext.fps, ext.dim, ext.frame_size) == ("clip_openclip", "clip", 8.0, 12, 32)
    frames = torch.randint(0, 256, (5, 40, 48, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    feats = ext(frames)
    assert feats.shape == (5, 12) and torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)
    ref = open_clip.create_model("cf-tiny-clip", pretrained=str(tiny_clip["pt"])).eval()
    x = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    with torch.no_grad():
        want = F.normalize(ref.encode_image((x - mean[:, None, None]) / std[:, None, None]), dim=-1)
    assert torch.allclose(feats, want, atol=1e-5)
    legacy = EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["pt"]), model_name="cf-tiny-clip", batch_size=2)
    assert torch.allclose(legacy(frames), feats, atol=1e-5)  # a pickle (weights_only) loads the same; batching changes nothing


def test_openclip_normalises_frames_as_the_weights_tag_was_trained(tiny_clip: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A local file names no pretrained tag, so open_clip normalises with OpenAI's mean/std: wrong
    for SigLIP-style weights (0.5). tag= takes the tag's; without it, the one normalisation all the
    architecture's tags share; where they disagree, OpenAI's with a warning naming tag=."""
    import open_clip

    half = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    cfgs = {"webli": half, "openai": {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}}
    tags: list[str] = []
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: list(tags) if name == "cf-tiny-clip" else [])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: cfgs[tag])

    def build(**kw: Any) -> Any:
        return EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["weights"]), model_config=str(tiny_clip["config"]), **kw)

    frames = torch.randint(0, 256, (3, 32, 32, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    plain = build()  # no tags known: open_clip's own (OpenAI's), as before
    assert torch.allclose(plain.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    tags[:] = ["webli", "openai"]
    tagged = build(tag="webli")
    assert torch.equal(tagged.mean.flatten(), torch.full((3,), 0.5)) and torch.equal(tagged.std.flatten(), torch.full((3,), 0.5))
    x = frames.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = F.normalize(tagged.model.encode_image((x - 0.5) / 0.5), dim=-1)
    assert torch.allclose(tagged(frames), want, atol=1e-5) and not torch.allclose(plain(frames), want, atol=1e-3)
    with pytest.raises(ConfigError, match=r"no pretrained tag 'laion' for 'cf-tiny-clip' \(its tags: webli, openai\)"):
        build(tag="laion")
    with pytest.warns(UserWarning, match=r"normalise images differently.*tag=NAME"):
        mixed = build()
    assert torch.allclose(mixed.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    tags[:] = ["webli"]
    assert torch.equal(build().mean.flatten(), torch.full((3,), 0.5))  # every tag of it agrees


def test_openclip_extractor_errors_name_the_fix(tiny_clip: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        EXTRACTORS.build("clip_openclip", weights=str(tmp_path / "none.safetensors"), model_config=str(tiny_clip["config"]))
    with pytest.raises(CheckpointError, match="does not load"):
        EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["weights"]), model_name="ViT-S-32")
    with pytest.raises(ConfigError, match="no architecture"):
        EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["weights"]), model_name="ViT-Nope")


def test_openclip_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an environment without the package looks like
    with pytest.raises(MissingDependencyError, match=r"pip install 'controlfoley\[clip\]'"):
        EXTRACTORS.build("clip_openclip", weights="w.safetensors")


def test_pipeline_with_openclip_features(tiny_clip: dict[str, Path], clip_video: Path) -> None:
    model = micro_model()
    clip = EXTRACTORS.build("clip_openclip", weights=str(tiny_clip["weights"]), model_config=str(tiny_clip["config"]))
    pipe = FoleyPipeline(model, {"sync": ("synthetic_sync", {"dim": 24}), "clip": clip}, ("synthetic_clap", {"dim": 16}))
    streams, duration = pipe.read_features(clip_video)
    assert streams["clip"].shape == (47, 12) and streams["sync"].shape == (142, 24)
    result = pipe.generate(streams, duration, steps=2)
    assert result.wav.shape[0] == round(duration * 22050)


# -- precomputed features ---------------------------------------------------------------------


def _write_mmaudio(folder: Path, ids: list[str], arrays: dict[str, np.ndarray]) -> Path:
    """The layout of MMAudio's extraction: TensorDict.memmap_ folder + `<folder>.tsv` of ids and labels."""
    folder.mkdir(parents=True)
    meta: dict[str, object] = {}
    for key, arr in arrays.items():
        arr.tofile(folder / f"{key}.memmap")
        meta[key] = {"device": "cpu", "shape": list(arr.shape), "dtype": f"torch.{arr.dtype}", "is_nested": False}
    meta.update({"shape": [], "device": "cpu", "_type": "<class 'tensordict._td.TensorDict'>"})
    (folder / "meta.json").write_text(json.dumps(meta))
    rows = ["id\tlabel", *(f"{i}\tsome caption" for i in ids)]
    folder.with_name(folder.name + ".tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_mmaudio_layout_reads_one_clip_per_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "clip_features": rng.standard_normal((3, 64, 12)).astype(np.float32),
        "sync_features": rng.standard_normal((3, 192, 24)).astype(np.float16),
        "text_features": rng.standard_normal((3, 77, 12)).astype(np.float32),
    }
    root = _write_mmaudio(tmp_path / "vgg-test", ["a", "b", "c"], arrays)
    store = MMAudioFeatures(root)
    assert store.keys() == ["clip_features", "sync_features", "text_features"] and store.ids == ["a", "b", "c"]
    assert torch.equal(store.get("b", "text_features"), torch.from_numpy(arrays["text_features"][1]))
    sync = EXTRACTORS.build("synchformer_precomputed", root=str(root), dim=24)
    clip = EXTRACTORS.build("clip_precomputed", root=str(root), dim=12)
    assert (sync.output_key, sync.fps, clip.output_key, clip.fps) == ("sync", 24.0, "clip", 8.0)
    assert torch.equal(sync.features_for("videos/c.mp4"), torch.from_numpy(arrays["sync_features"][2]).float())
    assert torch.equal(clip.features_for(Path("a.mkv")), torch.from_numpy(arrays["clip_features"][0]))
    with pytest.raises(DataError, match="no clip with id 'zz'"):
        sync.features_for("zz.mp4")
    with pytest.raises(ShapeError, match=r"\[frames, 768\]"):
        EXTRACTORS.build("synchformer_precomputed", root=str(root)).features_for("a.mp4")
    with pytest.raises(DataError, match="no feature 'mean'"):
        store.get("a", "mean")


def test_per_clip_files_and_their_errors(tmp_path: Path) -> None:
    good = torch.randn(50, 24)
    np.save(tmp_path / "n.npy", good.numpy())
    save_file({"sync_features": good, "other": torch.zeros(2)}, str(tmp_path / "s.safetensors"))
    save_file({"x": good}, str(tmp_path / "one.safetensors"))
    save_file({"x": good, "y": good.clone()}, str(tmp_path / "two.safetensors"))
    np.save(tmp_path / "wide.npy", np.zeros((50, 25), np.float32))
    np.save(tmp_path / "nan.npy", np.full((50, 24), np.nan, np.float32))
    ext = EXTRACTORS.build("synchformer_precomputed", root=str(tmp_path), dim=24)
    for stem in ("n", "s", "one"):
        assert torch.equal(ext.features_for(f"{stem}.mp4"), good)
    with pytest.raises(DataError, match="not 'sync_features'"):
        ext.features_for("two.mp4")
    with pytest.raises(ShapeError, match="wide.npy"):
        ext.features_for("wide.mp4")
    with pytest.raises(ShapeError, match="NaN"):
        ext.features_for("nan.mp4")
    with pytest.raises(DataError, match=r"missing\.safetensors and \.npy"):
        ext.features_for("dir/missing.mp4")
    with pytest.raises(DataError, match="does not exist"):
        EXTRACTORS.build("synchformer_precomputed", root=str(tmp_path / "nowhere"))


def test_pipeline_and_cli_with_precomputed_features(
    tmp_path: Path, clip_video: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = micro_model()
    frame_pipe = FoleyPipeline(model, {"sync": ("synthetic_sync", {"dim": 24}), "clip": ("synthetic_clip", {"dim": 12})})
    streams, duration = frame_pipe.read_features(clip_video)
    n24, n8 = math.floor(duration * 24), math.floor(duration * 8)
    feats = tmp_path / "feats"
    feats.mkdir()
    save_file({"sync_features": streams["sync"][:n24].contiguous(), "clip_features": streams["clip"][:n8].contiguous()}, str(feats / "clipvid.safetensors"))
    spec = {"sync": ("synchformer_precomputed", {"root": str(feats), "dim": 24}), "clip": ("clip_precomputed", {"root": str(feats), "dim": 12})}
    pre = FoleyPipeline(model, spec)
    got, got_duration = pre.read_features(clip_video)
    assert got_duration == pytest.approx(duration, abs=1e-3)
    assert torch.equal(got["sync"][:n24], streams["sync"][:n24]) and got["sync"].shape == streams["sync"].shape
    assert torch.equal(got["clip"][n8:], got["clip"][n8 - 1 :].expand(got["clip"].shape[0] - n8 + 1, -1)[1:])  # held last row
    save_file({"sync_features": torch.zeros(10, 24)}, str(feats / "short.safetensors"))
    with pytest.raises(ShapeError, match="cover 0.42 s"):
        pre._precomputed(pre.extractors["sync"], Path("short.mp4"), duration, 142)
    # far more rows than the video lasts (another rate, or another clip's): said, and the start used
    save_file({"sync_features": torch.randn(24 * 20, 24)}, str(feats / "long.safetensors"))
    with caplog.at_level(logging.WARNING, logger="controlfoley"):
        rows = pre._precomputed(pre.extractors["sync"], Path("long.mp4"), duration, 142)
    assert rows.shape == (142, 24) and any("cover 20.00 s at fps=24 but the video lasts" in r.getMessage() for r in caplog.records)
    # a rate or width that cannot be: named when the pipeline is built, not a ZeroDivisionError per file
    for bad, phrase in (({"fps": 0}, "fps must be a positive number"), ({"fps": float("nan")}, "fps must be"), ({"dim": 0}, "dim must be a positive int")):
        with pytest.raises(ConfigError, match=phrase):
            FoleyPipeline(model, {**spec, "sync": ("synchformer_precomputed", {"root": str(feats), "dim": 24, **bad})})
    # the wrong width: the fix is the dim= argument (its files must match)
    with pytest.raises(ConfigError, match=r"e\.g\. synchformer_precomputed,dim=24; its feature files must hold features of that width"):
        FoleyPipeline(model, {**spec, "sync": ("synchformer_precomputed", {"root": str(feats)})})
    model_file = as_trained(model).save(tmp_path / "m.safetensors")
    orphan = tmp_path / "orphan.mp4"
    orphan.write_bytes(clip_video.read_bytes())
    out = tmp_path / "out"
    argv = ["generate", str(clip_video), str(orphan), "--model", str(model_file), "--out", str(out), "--steps", "2"]
    argv += ["--extractor", f"sync=synchformer_precomputed,root={feats},dim=24", "--extractor", f"clip=clip_precomputed,root={feats},dim=12"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "orphan.mp4" in err and "no features for video orphan.mp4" in err
    assert sorted(p.name for p in out.iterdir()) == ["clipvid.mp4", "clipvid.wav", "generate.json"]
    # two inputs with one file stem would get one feature file: refused before any file is read
    other = tmp_path / "other"
    other.mkdir()
    twin = other / "clipvid.mp4"
    twin.write_bytes(clip_video.read_bytes())
    argv = ["generate", str(clip_video), str(twin), "--model", str(model_file), "--out", str(tmp_path / "out2"), "--steps", "2", *argv[9:]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"share one: {clip_video} and {twin}" in err and "would get the same features" in err
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_extraction_refuses_inputs_whose_precomputed_features_would_be_one_file(tmp_path: Path, clip_video: Path) -> None:
    """`extract --list` with precomputed features: a/clip.mp4 and b/clip.mp4 (or clip.mp4 and
    clip.mov) find one feature file; a ConfigError names the pair before any file is read."""
    from controlfoley.data.extract import Extraction, extract_files

    feats = tmp_path / "feats"
    feats.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d in (a, b):
        (d / "clipvid.mp4").write_bytes(clip_video.read_bytes())
    ex = Extraction(
        "specmaskfoley_tiny", extractors=[("synchformer_precomputed", {"root": str(feats), "dim": 128}), ("synthetic_clip", {})]
    )
    with pytest.raises(ConfigError, match=rf"share one: {a / 'clipvid.mp4'} and {b / 'clipvid.mp4'}"):
        extract_files(tmp_path / "ds", ex, [str(a / "clipvid.mp4"), str(b / "clipvid.mp4")])
    assert not (tmp_path / "ds").exists()


def test_openclip_extractor_takes_a_timm_image_tower(tmp_path: Path) -> None:
    """open_clip builds some architectures' image towers through timm (ConvNeXt, SigLIP: the JSON
    config names `timm_model_name`; open_clip/timm_model.py TimmModel), and such a tower has
    `image_size` but no `output_dim`. The extractor still loads, with the width its embeddings have."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (pip install 'controlfoley[clip]')")
    pytest.importorskip("timm", reason="timm is not installed")
    cfg = {
        "embed_dim": 12,
        "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 500, "width": 32, "heads": 2, "layers": 1},
    }
    config = tmp_path / "cf-tiny-timm-clip.json"
    config.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("cf-tiny-timm-clip").eval()
    assert not hasattr(model.visual, "output_dim")  # what the extractor must cope with
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ext = EXTRACTORS.build("clip_openclip", weights=str(tmp_path / "w.safetensors"), model_config=str(config))
    assert (ext.dim, ext.frame_size) == (12, 32)
    frames = torch.randint(0, 256, (3, 32, 32, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    feats = ext(frames)
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    with torch.no_grad():
        want = F.normalize(model.encode_image((frames.permute(0, 3, 1, 2).float() / 255 - mean[:, None, None]) / std[:, None, None]), dim=-1)
    assert feats.shape == (3, 12) and torch.allclose(feats, want, atol=1e-5)
