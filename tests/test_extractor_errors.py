"""Weights files that do not load into the CLIP (open_clip) and CLAP (transformers) extractors give
one-line CheckpointErrors that name the file and the tensor or problem, and the fix: a tensor of
another shape, a missing or an extra tensor, another kind of weights file (a HiFi-GAN generator, a
SpecVQGAN Lightning checkpoint), a truncated safetensors file, a pickle holding arbitrary objects,
an HTML page saved in place of the weights. Files that load still load the same tensors."""

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from controlfoley import EXTRACTORS
from controlfoley.data import real_extractors  # noqa: F401  (registers its extractors)
from controlfoley.errors import CheckpointError
from test_clap import TEXTS, clap_dirs  # noqa: F401  (a fixture)
from test_real_extractors import TINY_CLIP


class Payload:
    """An arbitrary object: `torch.load(weights_only=True)` refuses a pickle holding one."""


def _one_line(e: pytest.ExceptionInfo[CheckpointError]) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


# -- CLIP (open_clip) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny open_clip model: its JSON config, state dict, and weights files."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (pip install 'controlfoley[clip]')")
    d = tmp_path_factory.mktemp("clip_errors")
    config = d / "cf-tiny-clip-errors.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in open_clip.create_model("cf-tiny-clip-errors").eval().state_dict().items()}
    return {"dir": d, "config": str(config), "sd": sd, "weights": _save(sd, d / "w.safetensors")}


def _build_clip(clip: dict, weights: Path):
    return EXTRACTORS.build("clip_openclip", weights=str(weights), model_config=clip["config"])


def test_clip_wrong_shape_names_the_tensor_both_shapes_and_the_fix(clip: dict) -> None:
    bad = dict(clip["sd"])
    bad["visual.conv1.weight"] = torch.randn(32, 3, 8, 8)
    path = _save(bad, clip["dir"] / "badshape.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build_clip(clip, path)
    text = _one_line(e)
    assert str(path) in text and "'cf-tiny-clip-errors'" in text
    assert "visual.conv1.weight: checkpoint (32, 3, 8, 8) vs model (32, 3, 16, 16)" in text
    assert "model_name=" in text  # the fix: the architecture the weights were trained as


def test_clip_missing_tensor_is_named(clip: dict) -> None:
    path = _save({k: v for k, v in clip["sd"].items() if k != "visual.proj"}, clip["dir"] / "missing.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build_clip(clip, path)
    text = _one_line(e)
    assert str(path) in text and "1 missing key(s): visual.proj" in text


def test_clip_extra_tensor_is_named(clip: dict) -> None:
    path = _save({**clip["sd"], "visual.extra": torch.zeros(2)}, clip["dir"] / "extra.safetensors")
    with pytest.raises(CheckpointError) as e:
        _build_clip(clip, path)
    text = _one_line(e)
    assert str(path) in text and "1 more (visual.extra)" in text


def test_clip_names_a_hifigan_generator_and_where_it_loads(clip: dict) -> None:
    hifigan = {
        "conv_pre.weight_g": torch.ones(8, 1, 1), "conv_pre.weight_v": torch.randn(8, 80, 7), "conv_pre.bias": torch.zeros(8),
        "ups.0.weight_v": torch.randn(8, 4, 16), "resblocks.0.convs1.0.weight_v": torch.randn(4, 4, 3), "conv_post.weight_v": torch.randn(1, 4, 7),
    }  # fmt: skip
    torch.save({"generator": hifigan}, clip["dir"] / "g_00000001")  # HiFi-GAN's own generator file
    _save(hifigan, clip["dir"] / "hifigan.safetensors")  # its bare state dict
    for path in (clip["dir"] / "g_00000001", clip["dir"] / "hifigan.safetensors"):
        with pytest.raises(CheckpointError) as e:
            _build_clip(clip, path)
        text = _one_line(e)
        assert str(path) in text and "is a HiFi-GAN generator (a vocoder)" in text and "vocoder={'name': 'hifigan'" in text


def test_clip_names_a_lightning_checkpoint_of_another_model(clip: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lightning .ckpt pickles Lightning's classes: read with inert stand-ins, it is named for what it holds."""
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    checkpoint_cls = type("ModelCheckpoint", (), {"__module__": module.__name__, "__qualname__": "ModelCheckpoint"})
    setattr(module, "ModelCheckpoint", checkpoint_cls)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = {"quantize.embedding.weight": torch.randn(4, 2), "encoder.conv_in.weight": torch.randn(2, 1, 3, 3)}
    path = clip["dir"] / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": state, "callbacks": {checkpoint_cls: {"best": 1.0}}}, path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError) as e:
        _build_clip(clip, path)
    text = _one_line(e)
    assert str(path) in text and "is an official SpecVQGAN codebook" in text


def test_clip_unreadable_files_name_the_file_and_the_problem(clip: dict) -> None:
    d = clip["dir"]
    data = clip["weights"].read_bytes()
    (d / "trunc.safetensors").write_bytes(data[:-200])
    torch.save({**clip["sd"], "x": Payload()}, d / "objects.bin")
    (d / "page.bin").write_text("<html><body>404 not found</body></html>")
    expected = {
        "trunc.safetensors": "is not a readable safetensors file: truncated or corrupt",
        "objects.bin": "holds Python objects besides tensors",
        "page.bin": "is not a readable PyTorch checkpoint",
    }
    for name, phrase in expected.items():
        with pytest.raises(CheckpointError) as e:
            _build_clip(clip, d / name)
        text = _one_line(e)
        assert str(d / name) in text and phrase in text, text
        assert "trust_checkpoint" not in text  # advice of loaders that have that option, not this one


def test_clip_files_that_load_give_the_same_tensors(clip: dict) -> None:
    """A safetensors file, a plain pickle, and open_clip's own training checkpoint (DDP `module.`
    keys under "state_dict", beside the optimizer) load the same weights."""
    d = clip["dir"]
    torch.save(clip["sd"], d / "plain.pt")
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in clip["sd"].items()}, "optimizer": {"state": {}, "param_groups": []}}, d / "epoch_3.pt")
    for path in (clip["weights"], d / "plain.pt", d / "epoch_3.pt"):
        got = _build_clip(clip, path).model.state_dict()
        assert set(got) == set(clip["sd"]) and all(torch.equal(got[k], v) for k, v in clip["sd"].items()), path


def test_clip_a_batchnorm_tower_file_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    """open_clip's RN (ModifiedResNet) tower has BatchNorms; a file without their
    num_batches_tracked (a converted or safetensors file) loaded through open_clip, which torch
    fills in, and was refused by the first version of the key check ('19 missing key(s)': a
    review's clip_compare)."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (pip install 'controlfoley[clip]')")
    config = tmp_path / "cf-tiny-rn-errors.json"
    config.write_text(json.dumps({**TINY_CLIP, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16, "patch_size": None}}))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in open_clip.create_model("cf-tiny-rn-errors").eval().state_dict().items() if not k.endswith("num_batches_tracked")}
    got = EXTRACTORS.build("clip_openclip", weights=str(_save(sd, tmp_path / "rn.safetensors")), model_name="cf-tiny-rn-errors").model.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in got) and all(torch.equal(got[k], v) for k, v in sd.items())


# -- CLAP (transformers) -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clap(clap_dirs: dict[str, Path]) -> Path:
    """The random tiny ClapModel folder (both towers, tokenizer, feature extractor) of test_clap's fixture."""
    return clap_dirs["full"]


def _copy(clap: Path, tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(clap, d)
    return d


def _weights(clap: Path) -> dict[str, torch.Tensor]:
    return load_file(str(clap / "model.safetensors"))


def test_clap_wrong_shape_names_the_tensor_and_both_shapes(clap: Path, tmp_path: Path) -> None:
    """A tensor of another shape in one tower is named with both shapes; the other tower, which
    does not read it, still loads."""
    for tower, key, other in (
        ("clap_transformers", "text_projection.linear1.weight", "clap_audio_transformers"),
        ("clap_audio_transformers", "audio_projection.linear1.weight", "clap_transformers"),
    ):
        d = _copy(clap, tmp_path, tower)
        sd = _weights(clap)
        rows, cols = sd[key].shape
        sd[key] = torch.randn(rows, cols + 1)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointError) as e:
            EXTRACTORS.build(tower, folder=str(d))
        text = _one_line(e)
        assert str(d / "model.safetensors") in text and f"{key}: checkpoint ({rows}, {cols + 1}) vs model ({rows}, {cols})" in text, text
        assert "ignore_mismatched_sizes" not in text
        EXTRACTORS.build(other, folder=str(d))


def test_clap_unreadable_weights_name_the_file(clap: Path, tmp_path: Path) -> None:
    trunc = _copy(clap, tmp_path, "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[:-500])
    objects = _copy(clap, tmp_path, "objects")
    (objects / "model.safetensors").unlink()
    torch.save({**_weights(clap), "x": Payload()}, objects / "pytorch_model.bin")
    page = _copy(clap, tmp_path, "page")
    (page / "model.safetensors").unlink()
    (page / "pytorch_model.bin").write_text("<!DOCTYPE html><html><body>sign in</body></html>")
    cases = [
        (trunc / "model.safetensors", "is not a readable safetensors file: truncated or corrupt"),
        (objects / "pytorch_model.bin", "holds Python objects besides tensors"),
        (page / "pytorch_model.bin", "is not a readable PyTorch checkpoint"),
    ]
    for file, phrase in cases:
        for tower in ("clap_transformers", "clap_audio_transformers"):
            with pytest.raises(CheckpointError) as e:
                EXTRACTORS.build(tower, folder=str(file.parent))
            text = _one_line(e)
            assert text.startswith(f"{tower}: {file} ") and phrase in text, text


def test_clap_a_cut_shard_of_a_sharded_folder_is_the_file_named(clap: Path, tmp_path: Path) -> None:
    """A sharded save_pretrained folder with one shard cut: the message named the index (a JSON
    file, intact), a review's q4_clap."""
    transformers = pytest.importorskip("transformers")
    sharded = tmp_path / "sharded"
    shutil.copytree(clap, sharded)
    (sharded / "model.safetensors").unlink()
    transformers.ClapModel.from_pretrained(str(clap)).save_pretrained(sharded, max_shard_size="100KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    assert len(set(index["weight_map"].values())) > 1
    (sharded / shard).write_bytes((sharded / shard).read_bytes()[:-200])
    with pytest.raises(CheckpointError) as e:
        EXTRACTORS.build("clap_transformers", folder=str(sharded))
    assert _one_line(e).startswith(f"clap_transformers: {sharded / shard} is not a readable safetensors file: truncated or corrupt")


def test_clap_folder_with_a_pickled_state_dict_loads_the_same(clap: Path, tmp_path: Path) -> None:
    d = _copy(clap, tmp_path, "bin")
    (d / "model.safetensors").unlink()
    torch.save(_weights(clap), d / "pytorch_model.bin")
    want = EXTRACTORS.build("clap_transformers", folder=str(clap)).encode_text(TEXTS)
    assert torch.allclose(EXTRACTORS.build("clap_transformers", folder=str(d)).encode_text(TEXTS), want, atol=1e-6)
    a, b = (EXTRACTORS.build("clap_audio_transformers", folder=str(f)).model.state_dict() for f in (clap, d))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
