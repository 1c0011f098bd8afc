"""User parts from outside the package: the 1-D tokenizer of examples/tokenizer_1d.py through the
model, the training recipe and the command line (`--plugin`, CONTROLFOLEY_PLUGINS), and the
contract checks that turn a broken user tokenizer into a ConfigError at build time."""

import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import micro_inputs, micro_overrides, registered
from test_train import config, write_data
from torch import nn

from controlfoley import ALIGNERS, TOKENIZERS, build_model
from controlfoley._registry import PLUGIN_ENV, PluginError, RegistryError, load_plugins
from controlfoley.cli import main as cli_main
from controlfoley.config import ConfigError
from controlfoley.data.extract import extract_main
from controlfoley.data.shards import ShardIndex
from controlfoley.train import train
from controlfoley.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tokenizer_1d.py"
TOK_1D = {"name": "conv1d_vq", "hidden": 16, "embed_dim": 16, "n_embed": 64}


def _forget(name: str) -> None:
    if name in TOKENIZERS:
        TOKENIZERS.unregister(name)
    for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(EXAMPLE)]:
        del sys.modules[mod]


@pytest.fixture
def plugin() -> Iterator[None]:
    _forget("conv1d_vq")
    load_plugins(str(EXAMPLE))
    yield
    _forget("conv1d_vq")


@pytest.fixture
def scratch_tokenizer() -> Iterator[Any]:
    """Register a builder under "scratch" for the duration of one test."""
    names: list[str] = []

    def register(builder: Any) -> str:
        TOKENIZERS.register("scratch", override=True)(builder)
        names.append("scratch")
        return "scratch"

    yield register
    for n in names:
        if n in TOKENIZERS:
            TOKENIZERS.unregister(n)


def micro_1d() -> dict:
    return {**micro_overrides(), "tokenizer": dict(TOK_1D)}


def test_a_1d_tokenizer_runs_the_whole_model(plugin: None) -> None:
    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_1d()).eval()
    assert model.grid == (1, 32) and model.backbone.vocab_size == 64
    inp = micro_inputs(model)
    assert inp["codes"].shape == (2, 1, 32)
    loss, _ = model.loss(inp["codes"], features=inp["features"], cond=inp["text"], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    out = model.generate(inp["features"], inp["text"], steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 32) and int(out.min()) >= 0 and int(out.max()) < 64
    mel = model.decode(out)
    assert mel.shape == (2, 80, 512) and torch.isfinite(mel).all()
    # encode(decode(codes)) round-trips through the tokenizer's own shapes
    assert model.tokenizer.encode(mel).shape == (2, 1, 32)


def test_the_tokenizer_recipe_trains_a_1d_tokenizer_with_restarts(plugin: None, tmp_path: Path) -> None:
    ds = write_data(tmp_path / "mel", n=8, mel=True)
    cfg = config("tokenizer", ds, tmp_path / "run", steps=2, warmup_steps=0, batch_size=4, codebook_restart_every=1)
    cfg = cfg.replace(model_overrides=micro_1d())
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_model("specmaskfoley_tiny", **micro_1d()).tokenizer.state_dict().items()}
    result = train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert rows[0]["codes_restarted"] > 0 and result["train"]["codebook_used"] >= 1
    from controlfoley.checkpoint import read_state_dict

    after = read_state_dict(tmp_path / "run" / "model.safetensors")[0]
    assert any(not torch.equal(after[f"tokenizer.{k}"], v) for k, v in before.items())


def test_the_cli_loads_plugins_by_path_and_by_environment(
    plugin: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forget("conv1d_vq")  # as in a fresh process: only --plugin can bring the name in
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    monkeypatch.chdir(EXAMPLE.parent)
    assert cli_main(["--plugin", EXAMPLE.name, "list", "tokenizer"]) == 0  # a path relative to the working folder
    assert "conv1d_vq" in capsys.readouterr().out
    assert os.environ[PLUGIN_ENV] == str(EXAMPLE)  # absolute, for processes started in other folders
    monkeypatch.delenv(PLUGIN_ENV)
    monkeypatch.setenv("HOME", str(EXAMPLE.parent.parent))  # "--plugin=~/...": no shell expands a ~ after "="
    assert cli_main([f"--plugin=~/{EXAMPLE.parent.name}/{EXAMPLE.name}", "list", "tokenizer"]) == 0
    assert os.environ[PLUGIN_ENV] == str(EXAMPLE)  # what the child processes import, ~ expanded
    monkeypatch.delenv(PLUGIN_ENV)
    # a fresh interpreter imports what the environment names (as every torchrun rank does)
    env = {**os.environ, PLUGIN_ENV: str(EXAMPLE)}
    out = subprocess.run([sys.executable, "-m", "controlfoley", "list", "tokenizer"], env=env, capture_output=True, text=True, check=True)
    assert "conv1d_vq" in out.stdout


def test_the_torchrun_entry_point_takes_plugin_options(plugin: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m controlfoley.train ... --plugin X` (what torchrun runs) loads X as `controlfoley
    --plugin X train ...` does; a missing one is one line, exit 2, said by local rank 0 only."""
    from controlfoley.train.cli import main as train_main

    _forget("conv1d_vq")
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    argv = ["backbone", "--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o", "--model", "tokenizer=conv1d_vq", "--print-config"]
    assert train_main([*argv, "--plugin", str(EXAMPLE)]) == 0
    assert "conv1d_vq" in TOKENIZERS and os.environ[PLUGIN_ENV] == str(EXAMPLE)
    assert json.loads(capsys.readouterr().out)["model_overrides"]["tokenizer"] == "conv1d_vq"
    monkeypatch.delenv(PLUGIN_ENV)
    assert train_main([*argv, "--plugin", "/no/such/parts.py"]) == 2
    assert "from --plugin" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert train_main([*argv, "--plugin", "/no/such/parts.py"]) == 2 and capsys.readouterr().err == ""


def test_extract_takes_model_overrides(plugin: None, tmp_path: Path) -> None:
    args = ["--preset", "specmaskfoley_tiny", "--synthetic", "4", "--out", str(tmp_path / "d"), "--shard-size", "4"]
    for k, v in micro_1d().items():
        args += ["--model", f"{k}={__import__('json').dumps(v)}"]
    with pytest.warns(UserWarning, match="untrained tokenizer"):
        assert extract_main(args) == 0
    index = ShardIndex.load(tmp_path / "d")
    assert tuple(index.features["tokens"].shape) == (1, 32)
    assert index.info["model"]["tokenizer"]["name"] == "conv1d_vq"


def test_bad_plugins_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="not a file"):
        load_plugins(str(tmp_path / "missing.py"))
    with pytest.raises(PluginError, match="cannot be imported.*PYTHONPATH"):
        load_plugins("no_such_plugin_module")
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from controlfoley import ALIGNERS\n\n@ALIGNERS.register('half_registered')\ndef f(**kw):\n    return None\n\nraise RuntimeError('boom')\n"
    )
    try:
        for _ in range(2):  # a retry reports the same error, not "already registered"
            with pytest.raises(PluginError, match=r"broken.py.* failed to import at .*broken.py:7: RuntimeError: boom"):
                load_plugins(str(broken))
    finally:
        ALIGNERS.unregister("half_registered")
    assert cli_main(["--plugin", str(tmp_path / "missing.py"), "list"]) == 2
    assert "from --plugin" in capsys.readouterr().err


def test_an_unknown_name_says_how_the_cli_loads_plugins() -> None:
    with pytest.raises(RegistryError, match="--plugin"):
        build_model("specmaskfoley_tiny", tokenizer="not_registered_anywhere")


class _Incomplete(nn.Module):
    n_mels, codebook_size, downsample = 80, 64, (16, 16)

    def grid(self, n_frames: int) -> Any:
        return (5, n_frames // 16)


def test_build_model_checks_the_tokenizer_contract(scratch_tokenizer: Any) -> None:
    name = scratch_tokenizer(lambda **kw: _Incomplete())
    with pytest.raises(ConfigError, match="lacks encode, decode, embed_codes of the Tokenizer contract"):
        build_model("specmaskfoley_tiny", tokenizer=name)

    class Transposed(_Incomplete):
        def grid(self, n_frames: int) -> Any:
            return (n_frames // 16, 5)  # (T, F): frequency rows must come first

        def encode(self, mel: Any) -> Any: ...
        def decode(self, codes: Any) -> Any: ...
        def embed_codes(self, codes: Any) -> Any: ...

    scratch_tokenizer(lambda **kw: Transposed())
    with pytest.raises(ConfigError, match=r"grid\(512\) = \(32, 5\) does not match its downsample"):
        build_model("specmaskfoley_tiny", tokenizer=name)

    class FlatGrid(Transposed):
        def grid(self, n_frames: int) -> Any:
            return n_frames // 16

    scratch_tokenizer(lambda **kw: FlatGrid())
    with pytest.raises(ConfigError, match="two positive ints"):
        build_model("specmaskfoley_tiny", tokenizer=name)


def test_the_tokenizer_recipe_names_what_a_tokenizer_lacks(plugin: None, scratch_tokenizer: Any, tmp_path: Path) -> None:
    import importlib

    mod = importlib.import_module(TOKENIZERS.get("conv1d_vq").__module__)

    class NoRestarts(mod.Conv1dVQ):
        restart_dead_codes = None

    class NoForward(NoRestarts):
        forward = nn.Module.forward

    ds = write_data(tmp_path / "mel", n=4, mel=True)
    for cls, flag, match in ((NoRestarts, 1, "--codebook-restart-every 1 needs tokenizer.restart_dead_codes"), (NoForward, 0, "forward\\(mel\\)")):
        scratch_tokenizer(lambda cls=cls, **kw: cls(80, 16, 16, 64, 4, 0.25))
        cfg = config("tokenizer", ds, tmp_path / f"run{flag}", steps=1, warmup_steps=0, batch_size=2, codebook_restart_every=flag)
        cfg = cfg.replace(model_overrides={**micro_overrides(), "tokenizer": {"name": "scratch"}})
        with pytest.raises(ConfigError, match=match):
            train(cfg)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_every_example_runs(script: str) -> None:
    """The scripts the README points to run as a user runs them (a fresh interpreter, no test hooks)."""
    env = {k: v for k, v in os.environ.items() if k != PLUGIN_ENV}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), f"{script} printed nothing"


def test_the_readme_python_blocks_run(tmp_path: Path) -> None:
    """Every ```python block of the README, in order, as one script (later blocks use names the
    first defines), in a folder holding the `clip.mp4` (and `a.mp4`, `b.mp4`, `c.mp4`) the pipeline block reads."""
    import re

    from controlfoley.data.synthetic import SyntheticWorld
    from controlfoley.video import write_video

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 4
    world = SyntheticWorld(seed=0, duration_s=3.0)
    clip = world.clip(0)
    write_video(tmp_path / "clip.mp4", clip.frames, clip.fps)
    for name, i in (("a", 1), ("b", 2), ("c", 3)):  # the videos of the batched pipeline call
        other = world.clip(i)
        write_video(tmp_path / f"{name}.mp4", other.frames, other.fps)
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks) + "\nprint('readme ok', tuple(out.shape), tuple(result.wav.shape), len(results))\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != PLUGIN_ENV}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "readme ok (1, 5, 32)" in out.stdout and out.stdout.rstrip().endswith(" 3")
    assert (tmp_path / "clip.wav").stat().st_size > 0 and (tmp_path / "clip-foley.mp4").stat().st_size > 0


def test_one_plugin_by_path_and_by_module_name_registers_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a plugin by name and loading it by path (or the reverse, or a re-run notebook cell)
    is the same definition again, not a duplicate-name error."""
    (tmp_path / "my_parts_x.py").write_text(
        "from controlfoley import ALIGNERS\nfrom controlfoley.control.aligners import FTAligner\n\n"
        "@ALIGNERS.register('my_al_x')\ndef my_al_x(*, in_dim: int, out_dim: int, grid: list):\n"
        "    return FTAligner(in_dim, out_dim, tuple(grid))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins(str(tmp_path / "my_parts_x.py"))
        # another builder under the name fails, naming the file of the first (not its made-up module name)
        with pytest.raises(RegistryError, match=rf"already registered \(by my_al_x in {re.escape(str(tmp_path / 'my_parts_x.py'))}\)"):
            ALIGNERS.register("my_al_x")(lambda **kw: None)
        import my_parts_x  # noqa: F401  (runs the file a second time, under its own name)

        assert load_plugins("my_parts_x", str(tmp_path / "my_parts_x.py"))[1] in sys.modules
        assert "my_al_x" in ALIGNERS
        with pytest.raises(RegistryError, match=r"already registered \(by my_parts_x\.my_al_x\)"):  # a different builder still fails
            ALIGNERS.register("my_al_x")(lambda **kw: None)
    finally:
        ALIGNERS.unregister("my_al_x")
        for m in [m for m, v in sys.modules.items() if getattr(v, "__file__", "") == str(tmp_path / "my_parts_x.py")]:
            del sys.modules[m]


def test_a_broken_plugin_in_the_environment_is_one_line_in_every_command(tmp_path: Path) -> None:
    env = {**os.environ, PLUGIN_ENV: str(tmp_path / "nope.py")}
    out = subprocess.run([sys.executable, "-m", "controlfoley", "list"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: plugin") and "Traceback" not in out.stderr


def test_a_checkpoint_needing_an_unregistered_part_names_where_it_came_from(plugin: None, tmp_path: Path) -> None:
    from controlfoley import from_pretrained
    from controlfoley.errors import CheckpointError

    torch.manual_seed(0)
    build_model("specmaskfoley_tiny", **micro_1d()).save(tmp_path / "m.safetensors")
    _forget("conv1d_vq")  # as in a process that did not load the plugin
    with pytest.raises(CheckpointError, match=r"unknown tokenizer 'conv1d_vq'.*its tokenizer came from the plugin file .*tokenizer_1d\.py.*--plugin") as e:
        from_pretrained(tmp_path / "m.safetensors")
    assert "controlfoley_plugin_" not in str(e.value)  # the made-up module name of a plugin loaded by path


def test_a_plugin_registering_a_taken_name_is_named_at_its_own_line(tmp_path: Path) -> None:
    """A duplicate name raised inside the registry: the error points at the plugin's line that
    registered it, as other plugin errors do (it had no file and line)."""
    f = tmp_path / "dup_parts.py"
    f.write_text("from controlfoley import ALIGNERS\n\n\n@ALIGNERS.register('ft')\ndef mine(**kw):\n    return None\n")
    with pytest.raises(PluginError, match=rf"{re.escape(str(f))}' \(from load_plugins\) failed to import at {re.escape(str(f))}:4: .*'ft' is already registered"):
        load_plugins(str(f))


def test_builder_arguments_of_the_wrong_simple_type_are_named() -> None:
    from controlfoley import EXTRACTORS, RegistryError

    with pytest.raises(RegistryError, match="extractor 'synthetic_sync': dim='abc' must be int"):
        EXTRACTORS.build("synthetic_sync", dim="abc")
    with pytest.raises(RegistryError, match="fps=True must be float"):
        EXTRACTORS.build("clip_precomputed", root=".", fps=True)  # a bool is not a number here


def test_a_bad_override_when_loading_is_not_called_a_missing_plugin(tmp_path: Path) -> None:
    from controlfoley import RegistryError, from_pretrained

    build_model("specmaskfoley_tiny", **micro_overrides()).save(tmp_path / "m.safetensors")
    with pytest.raises(RegistryError, match="kernel_size=3.5 must be int"):
        from_pretrained(tmp_path / "m.safetensors", aligner={"kernel_size": 3.5})


def test_isinstance_against_a_part_protocol_sees_a_modules_submodules() -> None:
    """`isinstance(part, Backbone)` (and the other part protocols) holds for nn.Modules on every
    supported Python. Python 3.12 looks protocol members up with inspect.getattr_static, which does
    not see a module's submodules (`blocks`), so the check was False for every backbone there (an
    H200 machine's Python 3.12.3 failed the test below); `controlfoley._protocol` restores 3.11's
    lookup for modules. On 3.11 this test passes without it."""
    import copy

    from controlfoley.audio.vocoders import Vocoder
    from controlfoley.backbones.base import Backbone
    from controlfoley.tokenizers.base import Tokenizer, TrainableTokenizer

    model = build_model("specmaskfoley_tiny", **micro_overrides())
    assert isinstance(model.backbone, Backbone) and isinstance(model.tokenizer, TrainableTokenizer)
    assert isinstance(model.tokenizer, Tokenizer) and isinstance(model.vocoder, Vocoder)
    no_blocks = copy.deepcopy(model.backbone)
    del no_blocks.blocks  # nn.Module.__delattr__: gone from _modules
    assert not isinstance(no_blocks, Backbone)
    unset = copy.deepcopy(model.backbone)
    unset.new_block = None  # a method member set to None is not implemented, as in Python's own check
    assert not isinstance(unset, Backbone) and not isinstance(model.tokenizer, Backbone)


def test_a_user_backbone_trains_and_samples_and_a_broken_one_is_named() -> None:
    """examples/custom_backbone.py's backbone (torch's nn.TransformerEncoderLayer), loaded as a
    plugin: it trains and samples with its ControlNet copy; broken variants are named at build."""
    from controlfoley import BACKBONES
    from controlfoley.backbones.base import Backbone

    example = ROOT / "examples" / "custom_backbone.py"
    load_plugins(str(example))
    base = BACKBONES.get("encoder_layers")

    class ListBlocks(base):  # a plain list of blocks: the ControlNet cannot copy it (nor would an optimizer see it)
        def __init__(self, *, vocab_size: int, grid: list, dim: int = 32, depth: int = 3, heads: int = 2, cond_dim: int = 16) -> None:
            super().__init__(vocab_size=vocab_size, grid=grid, dim=dim, depth=depth, heads=heads, cond_dim=cond_dim)
            blocks = list(self.blocks)
            del self.blocks
            self.blocks = blocks

    BACKBONES.register("test_vocab")(lambda *, vocab_size, grid: base(vocab_size=vocab_size + 1, grid=grid))
    BACKBONES.register("test_no_blocks")(ListBlocks)
    try:
        small = {"name": "encoder_layers", "dim": 32, "depth": 3, "heads": 2, "cond_dim": 16}
        model = build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": small})
        assert isinstance(model.backbone, Backbone) and model.backbone.dim == 32
        x = micro_inputs(model)
        loss, _ = model.loss(x["codes"], features=x["features"], cond=x["text"], generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert model.controlnet.blocks[0].linear1.weight.grad is not None  # the ControlNet copied torch's layers
        codes = model.generate(x["features"], x["text"], steps=2, generator=torch.Generator().manual_seed(0))
        assert codes.shape == (2, *model.grid) and int(codes.max()) < model.backbone.vocab_size
        with pytest.raises(ConfigError, match=r"backbone 'no_logits' \(NoLogits\) lacks logits of the Backbone contract"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": "no_logits"})
        with pytest.raises(ConfigError, match=r"has vocab_size 65 but the tokenizer's codebook has 64"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": "test_vocab"})
        with pytest.raises(ConfigError, match=r"\.blocks must be a non-empty nn.ModuleList"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": "test_no_blocks"})
        # a backbone-only model does not need the ControlNet's members
        alone = build_model("specmaskgit_tiny", tokenizer=micro_overrides()["tokenizer"], backbone="test_no_blocks")
        assert alone.generate(None, torch.randn(1, alone.backbone.cond_dim), steps=2).shape == (1, *alone.grid)
    finally:
        for name in ("encoder_layers", "no_logits", "test_vocab", "test_no_blocks"):
            BACKBONES.unregister(name)
        for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(example)]:
            del sys.modules[mod]


class _SyncProjection(nn.Module):
    """A user control encoder reading 768-wide 'sync' features: it declares `out_dim` and its
    projection gives `width` (the same, or not, for the shape checks)."""

    required_features = ("sync",)

    def __init__(self, out_dim: int, width: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.proj = nn.Linear(768, width)

    def forward(self, features):
        return self.proj(features["sync"])


def test_a_user_control_encoder_fed_the_wrong_width_is_named() -> None:
    """A plugin encoder that declares no feature widths, given features of another width, failed in
    generate with torch's bare 'mat1 and mat2 shapes cannot be multiplied'."""
    from controlfoley import CONTROL_ENCODERS, build_model
    from controlfoley.errors import ShapeError

    with registered(CONTROL_ENCODERS, "test_wide_sync", lambda: _SyncProjection(out_dim=16, width=16)):
        m = build_model("specmaskfoley_tiny", control_encoder="test_wide_sync")
        with pytest.raises(ShapeError, match=r"control encoder 'test_wide_sync' failed on video features \{'sync': \[1, 20, 128\]\}.*feature_dims"):
            m.encode_control({"sync": torch.randn(1, 20, 128)})


def test_a_parts_output_that_breaks_its_declared_shape_is_blamed_on_that_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """A control encoder whose output width is not its out_dim is named (the error blamed the
    aligner, or was torch's bare matmul message); a tokenizer whose codes are not [b, F, T] is named
    where audio is tokenized (it used to reach training, blamed on the data)."""
    from controlfoley import CONTROL_ENCODERS
    from controlfoley.errors import ShapeError

    with registered(CONTROL_ENCODERS, "test_liar", lambda: _SyncProjection(out_dim=96, width=128)):  # declares 96, gives 128
        m = build_model("specmaskfoley_tiny", control_encoder="test_liar")
        with pytest.raises(ShapeError, match=r"control encoder 'test_liar' returned \[1, 20, 128\], but it declares out_dim=96"):
            m.encode_control({"sync": torch.randn(1, 20, 768)})

    m = build_model("specmaskfoley_tiny")
    wav = torch.randn(2, m.n_samples)
    assert m.encode_audio(wav).shape == (2, *m.grid)
    real = m.tokenizer.encode
    monkeypatch.setattr(m.tokenizer, "encode", lambda mel: real(mel)[:, 0])  # [b, T]: the row dimension dropped
    with pytest.raises(ShapeError, match=rf"tokenizer 'specvqgan' encoded mel \[2, {m.mel.n_mels}, {m.config.n_frames}\] to \[2, {m.grid[1]}\].*\[batch, F, T\]"):
        m.encode_audio(wav)
    monkeypatch.setattr(m.tokenizer, "encode", lambda mel: real(mel).float())
    with pytest.raises(ShapeError, match="integer codes"):
        m.encode_audio(wav)
    monkeypatch.setattr(m.tokenizer, "encode", lambda mel: torch.full_like(real(mel), m.tokenizer.codebook_size))  # one past the last code
    with pytest.raises(ShapeError, match="outside its codebook"):
        m.encode_audio(wav)
    monkeypatch.setattr(m.tokenizer, "encode", lambda mel: torch.full_like(real(mel), m.tokenizer.codebook_size - 1))  # the last code: fine
    assert int(m.encode_audio(wav).max()) == m.tokenizer.codebook_size - 1


def test_a_builder_default_changed_after_saving_rebuilds_the_saved_model(tmp_path: Path) -> None:
    """A checkpoint records the builder defaults its config relied on: a plugin whose default changes
    later (or a library update) still rebuilds the saved model, with a warning naming the change,
    where it silently built another one (here: a different guidance scale, no weight to notice)."""
    import warnings

    from controlfoley import GUIDANCE, Part, build_model, from_pretrained
    from controlfoley.guidance import CFG

    GUIDANCE.register("test_cfg_default")(lambda condition="video", scale=2.0: CFG(condition, scale))
    try:
        model = build_model("specmaskfoley_tiny", guidance=Part("test_cfg_default", {}))  # the builder's defaults
        assert model.config.guidance.kwargs == {} and model.guidance.scale == 2.0
        path = model.save(tmp_path / "m.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert from_pretrained(path).guidance.scale == 2.0  # unchanged builder: no warning
        GUIDANCE.register("test_cfg_default", override=True)(lambda condition="video", scale=5.0: CFG(condition, scale))
        with pytest.warns(UserWarning, match=r"guidance builder 'test_cfg_default' now defaults to scale=5.0 \(saved with 2.0\)"):
            loaded = from_pretrained(path)
        assert loaded.guidance.scale == 2.0 and loaded.config.guidance.kwargs == {"scale": 2.0}
        assert build_model("specmaskfoley_tiny", guidance=Part("test_cfg_default", {})).guidance.scale == 5.0  # new builds: the new default
    finally:
        GUIDANCE.unregister("test_cfg_default")


def test_a_part_default_named_like_a_wired_argument_is_recorded(tmp_path: Path) -> None:
    """`out_dim` is wired into the aligner, but a control encoder's own `out_dim` is its setting: a
    checkpoint records its default, so a changed default still rebuilds the saved widths. Before,
    every argument called out_dim / in_dim / n_mels / grid was skipped in every part, and loading
    failed with shape mismatches whose advice was the from_pretrained the user had just called."""
    import warnings

    from controlfoley import CONTROL_ENCODERS, build_model, from_pretrained

    class Proj(nn.Module):
        required_features = ("sync",)

        def __init__(self, out_dim: int) -> None:
            super().__init__()
            self.out_dim = out_dim
            self.proj = nn.Linear(768, out_dim)

        def forward(self, features):
            return self.proj(features["sync"])

    CONTROL_ENCODERS.register("test_proj_default")(lambda out_dim=96: Proj(out_dim))
    try:
        path = build_model("specmaskfoley_tiny", control_encoder="test_proj_default").save(tmp_path / "m.safetensors")
        CONTROL_ENCODERS.register("test_proj_default", override=True)(lambda out_dim=80: Proj(out_dim))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loaded = from_pretrained(path)
        assert loaded.control_encoder.out_dim == 96 and loaded.aligner is not None
        assert any("now defaults to out_dim=80 (saved with 96)" in str(w.message) for w in seen)
    finally:
        CONTROL_ENCODERS.unregister("test_proj_default")


def test_a_broken_env_plugin_is_reported_again_on_the_next_lookup(tmp_path, monkeypatch):
    import controlfoley._registry as registry
    from controlfoley import ALIGNERS
    from controlfoley._registry import PLUGIN_ENV, PluginError

    ALIGNERS.get("ft")  # built-ins loaded for real first
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "missing_parts.py"))
    for _ in range(2):
        with pytest.raises(PluginError, match="missing_parts.py"):
            ALIGNERS.get("ft")
    monkeypatch.delenv(PLUGIN_ENV)
    assert ALIGNERS.get("ft") is not None  # fixed: the next lookup loads again and works


def test_the_1d_example_tokenizer_refuses_a_mel_shorter_than_one_token():
    from pathlib import Path

    from controlfoley import TOKENIZERS, load_plugins
    from controlfoley.errors import ShapeError

    load_plugins(str(Path(__file__).resolve().parents[1] / "examples" / "tokenizer_1d.py"))
    tok = TOKENIZERS.build("conv1d_vq", n_mels=8, hidden=8, embed_dim=4, n_embed=16, n_down=2)
    assert tok.grid(8) == (1, 2)
    for n in (0, 3, 6):
        with pytest.raises(ShapeError, match="positive multiple of 4"):
            tok.grid(n)


def _example_backbone() -> Any:
    """The backbone class of examples/custom_backbone.py (imported as a module, not registered)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_backbone_for_tests", ROOT / "examples" / "custom_backbone.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        return module.EncoderLayerBackbone
    finally:
        from controlfoley import BACKBONES

        for name in ("encoder_layers", "no_logits"):
            if name in BACKBONES:
                BACKBONES.unregister(name)
        del sys.modules[spec.name]


def test_a_user_backbone_whose_logits_do_not_fit_is_named_not_sampled() -> None:
    """A backbone whose head is one token short, or whose logits(h, index) ignores `index`, sampled
    and trained without an error: the sampler drew from a smaller vocabulary, or scattered the logits
    of the first positions onto the still-masked ones (silently wrong tokens)."""
    from controlfoley import BACKBONES
    from controlfoley.errors import ShapeError

    base = _example_backbone()
    small = {"dim": 32, "depth": 3, "heads": 2, "cond_dim": 16}

    class ShortHead(base):
        def logits(self, h, index=None):
            return super().logits(h, index)[..., :-1]

    class NoIndex(base):
        def logits(self, h, index=None):
            return self.head(self.norm(h))  # every position, whatever index asks for

    for name, cls in (("test_short_head", ShortHead), ("test_no_index", NoIndex)):
        with registered(BACKBONES, name, cls):
            m = build_model("specmaskfoley_tiny", **{**micro_overrides(), "backbone": {"name": name, **small}}).eval()
            x = micro_inputs(m)
            # static_shapes=False: the sampler asks for the still-masked positions only (the CPU default)
            gen = lambda: m.generate(x["features"], x["text"], steps=3, static_shapes=False, generator=torch.Generator().manual_seed(0))  # noqa: E731
            if cls is ShortHead:
                with pytest.raises(ShapeError, match=rf"backbone 'test_short_head' \(ShortHead\)\.logits returned \[2, {m.n_tokens}, 63\].*vocab_size is 64"):
                    m.loss(x["codes"], features=x["features"], cond=x["text"])
                with pytest.raises(ShapeError, match=r"'test_short_head'.*its vocabulary head gives 63 logits per position"):
                    gen()
            else:
                m.loss(x["codes"], features=x["features"], cond=x["text"])  # every position asked: it fits
                with pytest.raises(ShapeError, match=r"backbone 'test_no_index' \(NoIndex\)\.logits returned .*must gather those positions"):
                    gen()


def test_a_user_control_encoder_gets_its_features_checked_by_key_and_declared_width() -> None:
    """A user encoder that declares `required_features` and `feature_dims` (which the docs say are
    checked up front) got a bare KeyError for a missing key, and features of another width reached
    its forward, where a pooling took them without an error."""
    from controlfoley import CONTROL_ENCODERS
    from controlfoley.errors import ShapeError

    class Pooled(nn.Module):  # reads 'flow' [b, t, 8]; its mean over the width hides a wrong width
        required_features, feature_dims, out_dim = ("flow",), {"flow": 8}, 4

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(1, 4)

        def forward(self, features):
            return self.proj(features["flow"].mean(-1, keepdim=True))

    with registered(CONTROL_ENCODERS, "test_pooled", Pooled):
        m = build_model("specmaskfoley_tiny", **{**micro_overrides(), "control_encoder": "test_pooled"})
        text = torch.randn(2, m.backbone.cond_dim)
        assert m.generate({"flow": torch.randn(2, 20, 8)}, text, steps=2).shape == (2, *m.grid)
        with pytest.raises(ShapeError, match=r"video feature 'flow' is missing; got keys \['sync'\], and control encoder 'test_pooled' reads \['flow'\]"):
            m.generate({"sync": torch.randn(2, 20, 8)}, text, steps=2)
        with pytest.raises(ShapeError, match=r"video feature 'flow' must be \[batch, frames, 8\] for control encoder 'test_pooled' \(its feature_dims\), got \[2, 20, 5\]"):
            m.generate({"flow": torch.randn(2, 20, 5)}, text, steps=2)


def test_user_guidance_rules_mel_front_ends_and_vocoders_must_keep_their_contracts() -> None:
    """A guidance rule with string conditions, none, or no combine; a mel front end without n_mels;
    and a vocoder returning [b, 1, s] failed inside sampling or building with AttributeError,
    NotImplementedError, torch.cat of nothing, or (the vocoder) not at all."""
    from controlfoley import GUIDANCE, MEL_FRONTENDS, VOCODERS
    from controlfoley.errors import ShapeError
    from controlfoley.guidance import TEXT_VIDEO, UNCOND, GuidanceRule

    class StrConds(GuidanceRule):
        conditions = ("uncond", "video")

        def combine(self, logits, scale):
            return logits[-1]

    class NoConds(StrConds):
        conditions = ()

    class NoCombine(GuidanceRule):
        conditions = (UNCOND, TEXT_VIDEO)

    class NoInit(StrConds):
        conditions = (UNCOND, TEXT_VIDEO)

        def __init__(self) -> None:  # GuidanceRule.__init__ not called: no scale, no schedule
            pass

    class NoMels(nn.Module):
        sample_rate, hop_length = 22050, 256

    class ChannelVoc(nn.Module):
        sample_rate = 22050

        def forward(self, mel):
            return mel.new_zeros(mel.shape[0], 1, mel.shape[-1] * 256)

    rules = {"test_str": (StrConds, r"holds 'uncond'"), "test_empty": (NoConds, r"it is \(\)"), "test_nocomb": (NoCombine, r"does not define combine"), "test_noinit": (NoInit, r"scale=None.*super\(\)\.__init__")}
    for name, (cls, why) in rules.items():
        with registered(GUIDANCE, name, lambda cls=cls: cls()):
            with pytest.raises(ConfigError, match=rf"guidance '{name}' \({cls.__name__}\).*{why}"):
                build_model("specmaskfoley_tiny", **{**micro_overrides(), "guidance": name})
    m = build_model("specmaskfoley_tiny", **micro_overrides())
    x = micro_inputs(m)
    with pytest.raises(ConfigError, match=r"guidance \(StrConds\): conditions must be a non-empty tuple of controlfoley.Condition"):
        m.generate(x["features"], x["text"], steps=2, guidance=StrConds())
    with registered(MEL_FRONTENDS, "test_no_mels", NoMels):
        with pytest.raises(ConfigError, match=r"mel_frontend 'test_no_mels' \(NoMels\) needs positive int attributes n_mels.*\(n_mels: none\)"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "mel": "test_no_mels"})
    with registered(VOCODERS, "test_channel", lambda *, mel: ChannelVoc()):
        m = build_model("specmaskfoley_tiny", **{**micro_overrides(), "vocoder": "test_channel"})
        mel = m.decode(x["codes"])
        with pytest.raises(ShapeError, match=r"vocoder ChannelVoc turned mel \[2, 80, 512\] into \[2, 1, 131072\].*\[batch, samples\].*wav\[:, 0\]"):
            m.vocode(mel)

    class TwoArgVoc(ChannelVoc):  # a walkthrough's: built fine, then a raw TypeError at the first vocode
        def forward(self, mel, lengths):
            return mel.new_zeros(mel.shape[0], mel.shape[-1] * 256)

    with registered(VOCODERS, "test_two_arg", lambda *, mel: TwoArgVoc()):
        with pytest.raises(ConfigError, match=r"vocoder 'test_two_arg' \(TwoArgVoc\).forward takes \(mel, lengths\) but is called as vocoder\(mel\)"):
            build_model("specmaskfoley_tiny", **{**micro_overrides(), "vocoder": "test_two_arg"})


def test_a_tokenizer_decoding_to_another_shape_and_a_vocoder_returning_nan_are_named() -> None:
    """A walkthrough's parts: a tokenizer whose decode gave [b, frames, n_mels] was blamed on the
    vocoder ("mel must be [batch, 80, frames] for this model's vocoder"); a vocoder returning NaN went
    through model.vocode, and generate then failed in save_audio naming a temporary file."""
    from controlfoley.errors import ShapeError

    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    codes = torch.randint(0, model.backbone.vocab_size, (1, *model.grid))
    decode = model.tokenizer.decode
    model.tokenizer.decode = lambda c: decode(c).transpose(1, 2)  # type: ignore[method-assign]
    with pytest.raises(ShapeError, match=rf"tokenizer SpecVQGAN.decode turned codes \[1, {model.grid[0]}, {model.grid[1]}\] into \[1, \d+, 80\].*\[1, 80, frames\]"):
        model.decode(codes)
    model.tokenizer.decode = decode  # type: ignore[method-assign]

    class NanVoc(nn.Module):
        sample_rate = model.sample_rate

        def forward(self, mel):
            return torch.full((mel.shape[0], mel.shape[-1] * int(model.mel.hop_length)), float("nan"))

    model.vocoder = NanVoc()
    with pytest.raises(ShapeError, match=r"vocoder NanVoc returned NaN samples; a vocoder must return finite waveforms"):
        model.vocode(model.decode(codes))


def test_a_rule_with_its_own_scale_at_names_its_schedule_and_its_hidden_settings_are_warned_of() -> None:
    """A rule ramping its scale its own way (scale_at) was refused for schedule='cosine' ('unknown
    CFG scale schedule', not naming the rule), so it had to claim 'linear', which its repr, info and
    generate.json then reported. Its no-prompt fallback must be its own. And an __init__ argument
    kept under another name (examples/custom_parts.py kept video_weight as self.wv) is missing
    from the repr that generate --skip-existing compares: an output made with other weights was
    kept (seen by a walkthrough); a warning names it."""
    import math as _math

    from controlfoley import GUIDANCE
    from controlfoley.guidance import UNCOND, VIDEO, GuidanceRule, check_rule

    class Cosine(GuidanceRule):
        conditions = (UNCOND, VIDEO)

        def __init__(self, scale: float = 3.0, schedule: str = "cosine") -> None:
            super().__init__(scale, schedule)

        def scale_at(self, step: int, n_steps: int) -> float:
            return self.scale * (1 - _math.cos(_math.pi * step / max(1, n_steps - 1))) / 2

        def combine(self, logits, scale):
            return logits[0] + scale * (logits[1] - logits[0])

    rule = Cosine()
    check_rule(rule, "guidance 'cosine'")
    assert "schedule='cosine'" in repr(rule) and rule.scale_at(11, 12) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match=r"Cosine has its own schedule 'cosine'.*define without_text\(self\)"):
        rule.without_text()
    with pytest.raises(ConfigError, match=r"unknown CFG scale schedule 'cosine'"):  # the built-in schedules stay checked
        GUIDANCE.build("cfg_video", schedule="cosine")

    class Hidden(Cosine):
        def __init__(self, scale: float = 3.0, weight: float = 1.0) -> None:
            super().__init__(scale, "cosine")
            self.w = weight

    with pytest.warns(UserWarning, match=r"guidance 'hidden' \(Hidden\) keeps its argument\(s\) weight under no attribute.*store them as self.weight"):
        check_rule(Hidden(weight=2.0), "guidance 'hidden'")
    assert "2.0" not in repr(Hidden(weight=2.0))  # why: the repr cannot show it

    # an nn.Module rule keeps its submodules and parameters outside vars(): warned of wrongly, and left out of
    # the repr, so two rules with different heads read alike (a review's g3)
    from controlfoley.guidance import MultiCFG

    class ModRule(MultiCFG, nn.Module):
        def __init__(self, scale: float = 3.0, schedule: str = "linear", head: nn.Module | None = None) -> None:
            nn.Module.__init__(self)
            MultiCFG.__init__(self, scale, schedule)
            self.head = head if head is not None else nn.Linear(2, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_rule(ModRule(), "guidance 'mod'")
    assert "head=Linear(sha256:" in repr(ModRule()) and repr(ModRule()) != repr(ModRule())  # each a new random head

    # the video parts removed (a backbone-only variant): text-only CFG cannot follow the rule's own schedule; named
    class CosineV(Cosine):
        conditions = (UNCOND, VIDEO)

    with registered(GUIDANCE, "test_cos_v", lambda scale=3.0, schedule="cosine": CosineV(scale, schedule)):
        with pytest.raises(ConfigError, match=r"guidance 'test_cos_v' \(CosineV\) reads video and has its own schedule 'cosine'"):
            with_video = build_model("specmaskfoley_tiny", **{**micro_overrides(), "guidance": {"name": "test_cos_v", "schedule": "cosine"}})
            build_model(with_video.config, control_encoder=None, aligner=None, controlnet=None)  # the documented way to drop them


def test_a_resume_whose_parts_plugin_is_gone_names_the_file_the_parts_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A built-in recipe with a plugin's part, the plugin file gone: --resume warned that "the code
    of recipe 'backbone'" had changed, then failed with a bare "unknown guidance 'gone_multi'". Now
    the error names the file, the part it provided and --plugin NEW/PATH.py, with a checkpoint (its
    record of the parts) and before the first one (config.json's overrides); the new place resumes."""
    from test_train_usability import cli_args

    from controlfoley import GUIDANCE
    from controlfoley.train.cli import main as train_main

    plugin = (tmp_path / "mine" / "myguide.py").resolve()
    plugin.parent.mkdir()
    plugin.write_text(
        "from controlfoley import GUIDANCE\nfrom controlfoley.guidance import MultiCFG\n\n\n@GUIDANCE.register('gone_multi')\n"
        "def gone_multi(*, scale: float = 3.0, schedule: str = 'linear') -> MultiCFG:\n    return MultiCFG(scale=scale, schedule=schedule)\n"
    )
    data = write_data(tmp_path / "ds")
    monkeypatch.setenv(PLUGIN_ENV, "")
    run, early = tmp_path / "run", tmp_path / "early"

    def forget() -> None:  # as in a new shell
        if "gone_multi" in GUIDANCE:
            GUIDANCE.unregister("gone_multi")
        for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) in (str(plugin), str(moved))]:
            del sys.modules[mod]
        monkeypatch.setenv(PLUGIN_ENV, "")

    moved = tmp_path / "elsewhere.py"
    try:
        args = cli_args("backbone", data, run, "--plugin", str(plugin), "--model", "guidance=gone_multi", steps=3)
        assert train_main([*args, "--stop-at", "1"]) == 0
        early.mkdir()
        (early / "config.json").write_text((run / "config.json").read_text())  # as a run killed before its first checkpoint leaves it
        plugin.rename(moved)
        for out in (run, early):
            forget()
            assert train_main(["backbone", "--out", str(out), "--resume", "--stop-at", "2"]) == 2
            err = capsys.readouterr().err
            assert f"error: --resume: the run in {out} uses code of guidance 'gone_multi' from plugin file {plugin} ({out / 'config.json'} records it)" in err
            assert f"that file is gone. Give its new place: controlfoley train backbone --out {out} --resume --plugin NEW/PATH.py" in err
            assert "unknown guidance" not in err and "the code of recipe" not in err and "Traceback" not in err
        forget()
        assert train_main(["backbone", "--out", str(run), "--resume", "--stop-at", "2", "--plugin", str(moved)]) == 0, capsys.readouterr().err
        assert read_metrics(run, "train")[-1]["step"] == 2
    finally:
        forget()


def test_plugin_code_names_the_recipe_or_the_parts_a_plugin_provides() -> None:
    """What the --resume warnings about a run's plugin files name: the recipe only when it is a
    plugin's, else the model's parts registered outside the library ("the code of recipe
    'controlnet'" was said of a file that held only an aligner)."""
    from controlfoley import GUIDANCE
    from controlfoley.builder import model_config
    from controlfoley.guidance import MultiCFG
    from controlfoley.train.provenance import plugin_code

    with registered(GUIDANCE, "test_code_multi", lambda *, scale=3.0, schedule="linear": MultiCFG(scale=scale, schedule=schedule)):
        cfg = model_config("specmaskfoley_tiny", guidance="test_code_multi")
        assert plugin_code("controlnet", cfg) == "guidance 'test_code_multi'"
    assert plugin_code("controlnet", model_config("specmaskfoley_tiny")) == "recipe 'controlnet'"  # the library's code: as before


def test_a_plugin_file_imports_a_module_beside_it(tmp_path: Path) -> None:
    """A plugin file's own folder is on sys.path while it is imported, as for `python FILE.py`
    (it failed with "No module named 'sib_helpers'"), and only then."""
    folder = tmp_path / "sib"
    folder.mkdir()
    (folder / "sib_helpers.py").write_text("KERNEL = 5\n")
    (folder / "plug.py").write_text(
        "from controlfoley import ALIGNERS\nfrom controlfoley.control.aligners import ft\nfrom sib_helpers import KERNEL\n\n\n"
        "@ALIGNERS.register('sib_aligner')\ndef sib_aligner(*, in_dim: int, out_dim: int, grid: list):\n"
        "    return ft(in_dim=in_dim, out_dim=out_dim, grid=grid, kernel_size=KERNEL)\n"
    )
    before = list(sys.path)
    try:
        load_plugins(str(folder / "plug.py"))
        assert "sib_aligner" in ALIGNERS and sys.path == before
    finally:
        if "sib_aligner" in ALIGNERS:
            ALIGNERS.unregister("sib_aligner")
        for mod in [m for m, v in sys.modules.items() if str(getattr(v, "__file__", "") or "").startswith(str(folder))]:
            del sys.modules[mod]


def test_a_checkpoint_s_missing_parts_are_grouped_by_file_and_a_script_s_are_not_told_to_run_it(tmp_path):
    """The advice named the same plugin file once per part, said `--plugin FILE` instead of the file,
    did not say when it was gone, and for parts registered in a script (__main__) advised loading
    the script, which runs it (a training script trains)."""
    import json

    from controlfoley.checkpoint import _plugin_advice

    here = tmp_path / "my_parts.py"
    here.write_text("")
    gone = tmp_path / "old_parts.py"
    advice = _plugin_advice(json.dumps({"aligner": f"the plugin file {here}", "backbone": f"the plugin file {here}", "vocoder": f"the plugin file {gone}"}))
    assert advice.count(str(here)) == 3  # once where it came from, twice in the fix (CLI and Python)
    assert f"its aligner, backbone came from the plugin file {here}" in advice and f"`controlfoley --plugin {here} ...`" in advice
    assert f"its vocoder came from the plugin file {gone} (gone)" in advice and "--plugin NEW/PATH.py" in advice
    script = _plugin_advice(json.dumps({"aligner": f"__main__ ({tmp_path / 'train.py'})"}))
    assert f"its aligner came from the script {tmp_path / 'train.py'}, run as __main__" in script
    assert "move the registration of its aligner out of" in script and 'if __name__ == "__main__":' in script
    assert "Load it" not in _plugin_advice("{}") and "Load the module that registers it" in _plugin_advice("{}")
    # a module imported by name (saved after `import my_parts`): `--plugin my_parts` fails where it is not on
    # sys.path (the console script's, from the module's own folder too); the recorded file works
    imported = _plugin_advice(json.dumps({"tokenizer": f"my_parts ({here})"}))
    assert f"import my_parts in Python (or controlfoley.load_plugins); on the command line `controlfoley --plugin {here} ...`" in imported
    moved = _plugin_advice(json.dumps({"tokenizer": f"my_parts ({gone})"}))
    assert "on the command line `controlfoley --plugin my_parts ...` with it importable" in moved
    # a module inside a package (its relative imports fail when loaded by path): by name, the package's folder on the path
    (tmp_path / "pk" / "mypkg").mkdir(parents=True)
    for name in ("__init__.py", "parts.py"):
        (tmp_path / "pk" / "mypkg" / name).write_text("")
    packaged = _plugin_advice(json.dumps({"tokenizer": f"mypkg.parts ({tmp_path / 'pk' / 'mypkg' / 'parts.py'})"}))
    assert f"`PYTHONPATH={tmp_path / 'pk'} controlfoley --plugin mypkg.parts ...`" in packaged
    package = _plugin_advice(json.dumps({"tokenizer": f"mypkg ({tmp_path / 'pk' / 'mypkg' / '__init__.py'})"}))
    assert f"`PYTHONPATH={tmp_path / 'pk'} controlfoley --plugin mypkg ...`" in package


def test_a_duplicate_of_a_class_from_a_plugin_file_names_the_file(tmp_path: Path) -> None:
    """A class builder (recipes are classes) has no __code__: the message showed the made-up module
    name of a plugin loaded by path."""
    plugin = tmp_path / "cls_parts.py"
    plugin.write_text(
        "from controlfoley import ALIGNERS\nfrom controlfoley.control.aligners import Plain1DAligner\n\n\n"
        "@ALIGNERS.register('cls_al_test')\nclass ClsAl(Plain1DAligner):\n    pass\n"
    )
    try:
        load_plugins(str(plugin))
        with pytest.raises(RegistryError, match=rf"already registered \(by ClsAl in {re.escape(str(plugin))}\)"):
            ALIGNERS.register("cls_al_test")(lambda **kw: None)
    finally:
        ALIGNERS.unregister("cls_al_test")
