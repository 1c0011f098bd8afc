"""Registries: names, duplicate and unknown names, user registration usable from build_model."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import controlfoley
from controlfoley import ALIGNERS, ALL_REGISTRIES, GUIDANCE, PRESETS, Registry, RegistryError, build_model
from controlfoley.config import ConfigError
from controlfoley.control.aligners import FTAligner


def test_every_registry_has_entries():
    for kind, reg in ALL_REGISTRIES.items():
        assert len(reg.names()) >= 1, kind


def test_paper_parts_are_registered():
    assert {"ft", "plain1d"} <= set(ALIGNERS.names())
    assert {"none", "cfg", "cfg_video", "cfg_text", "cfg_text_video", "multi"} <= set(GUIDANCE.names())
    assert {"specmaskfoley", "specmaskgit", "specmaskfoley_tiny"} <= set(PRESETS.names())
    assert PRESETS.names("*_tiny") == sorted(n for n in PRESETS.names() if n.endswith("_tiny"))


def test_unknown_name_lists_what_exists():
    with pytest.raises(RegistryError) as e:
        ALIGNERS.get("ftt")
    msg = str(e.value)
    assert "'ftt'" in msg and "plain1d" in msg and "Did you mean 'ft'" in msg


def test_duplicate_registration_is_an_error():
    reg = Registry("thing", "THINGS")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", override=True)(lambda: 3)
    assert reg.build("a") == 3


def test_unknown_and_missing_builder_arguments_are_named():
    with pytest.raises(RegistryError, match="unknown argument.*'bogus'"):
        ALIGNERS.build("ft", in_dim=4, out_dim=4, grid=[1, 2], bogus=1)
    with pytest.raises(RegistryError, match="'kernal_size': did you mean 'kernel_size'"):
        ALIGNERS.build("ft", in_dim=4, out_dim=4, grid=[1, 2], kernal_size=5)
    with pytest.raises(RegistryError, match="missing required argument"):
        ALIGNERS.build("ft", in_dim=4)


def test_a_setting_a_part_refuses_is_a_config_error_and_wired_arguments_are_not_offered():
    """An unknown, missing or mistyped builder argument is a ConfigError (ValueError) as the README
    says of a refused setting, and still a RegistryError (KeyError); through build_model, the
    arguments it fills in (n_mels, grid, ...) are not listed as settable nor suggested."""
    from controlfoley import ConfigError

    with pytest.raises(ConfigError) as e:
        build_model("specmaskfoley_tiny", tokenizer={"n_embd": 64})
    assert isinstance(e.value, RegistryError) and isinstance(e.value, ValueError) and isinstance(e.value, KeyError)
    msg = str(e.value)
    assert "'n_embd': did you mean 'n_embed'?" in msg and "(n_mels filled in from the other parts)" in msg
    assert "It accepts: ch, " in msg and ", n_mels," not in msg.split("It accepts:")[1].split("(")[0]
    with pytest.raises(ConfigError, match=r"did you mean 'heads'\?.*\(vocab_size, grid filled in from the other parts\)"):
        build_model("specmaskfoley_tiny", backbone={"hedas": 2})
    with pytest.raises(ConfigError, match="must be float"):
        GUIDANCE.build("cfg", scale="high")


def test_an_int_for_a_float_argument_reaches_the_builder_as_a_float():
    """`--guidance cfg,scale=5` parses 5 as an int; the builder declares a float and gets one (with
    runtime type checks on, as in this suite, an int would fail inside the builder)."""
    rule = GUIDANCE.build("cfg", scale=5)
    assert rule.scale == 5.0 and isinstance(rule.scale, float)
    with pytest.raises(RegistryError, match=r"scale=True must be float"):
        GUIDANCE.build("cfg", scale=True)  # a bool is not a number here


def test_string_annotations_of_a_plugin_builder_are_checked_and_converted(tmp_path, monkeypatch):
    """A plugin written with `from __future__ import annotations` has string annotations
    ("Optional[float]"): its float argument still gets a float for an int, and a wrong type is
    still named."""
    import importlib.util

    (tmp_path / "future_parts.py").write_text(
        "from __future__ import annotations\n"
        "from typing import Optional\n"
        "from controlfoley.guidance import CFG\n"
        "def build(*, scale: Optional[float] = 3.0, condition: str | None = None) -> CFG:\n"
        "    assert isinstance(scale, float), type(scale)\n"
        "    return CFG(scale=scale)\n"
    )
    spec = importlib.util.spec_from_file_location("future_parts", tmp_path / "future_parts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reg = Registry("thing", "THINGS")
    reg.register("future_cfg")(mod.build)
    assert reg.build("future_cfg", scale=5).scale == 5.0
    with pytest.raises(RegistryError, match=r"scale='x' must be None or float"):
        reg.build("future_cfg", scale="x")


def test_user_registered_part_is_usable_by_name():
    calls = []

    @ALIGNERS.register("test_user_aligner")
    def user_aligner(*, in_dim: int, out_dim: int, grid: list, kernel_size: int = 3) -> nn.Module:
        calls.append((in_dim, out_dim, tuple(grid)))
        return FTAligner(in_dim, out_dim, tuple(grid), 1)

    try:
        m = build_model(
            "specmaskfoley_tiny",
            aligner="test_user_aligner",
            backbone={"dim": 32, "depth": 2, "heads": 2, "ffn_dim": 64},
            controlnet={"n_blocks": 1},
            tokenizer={"ch": 8, "z_channels": 8, "embed_dim": 8, "norm_groups": 8},
        )
        assert calls == [(128, 32, m.grid)]
        assert isinstance(m.aligner, FTAligner) and m.aligner.proj.conv.kernel_size == (1,)
    finally:
        ALIGNERS.unregister("test_user_aligner")


def test_import_is_light():
    code = "import sys, controlfoley; print(any(m in sys.modules for m in ('controlfoley.model', 'controlfoley.tokenizers.specvqgan', 'timm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    with pytest.raises(AttributeError):
        controlfoley.does_not_exist  # noqa: B018
    public = [n for n in dir(controlfoley) if not n.startswith("_")]
    assert {"build_model", "FoleyPipeline", "ControlFoleyError"} <= set(public)
    assert not {"os", "importlib", "Any"} & set(public)  # the package's own imports are not its API


def test_the_preset_that_ships_weights_is_a_preset_too() -> None:
    """specmaskfoley_synthetic builds (untrained) and is listed like any preset; from_pretrained
    of a preset without weights names the ones that have them."""
    from controlfoley import build_model, from_pretrained
    from controlfoley.cli import list_names
    from controlfoley.errors import CheckpointError

    from controlfoley.errors import RandomWeightsWarning

    trained = from_pretrained("specmaskfoley_synthetic")
    with pytest.warns(RandomWeightsWarning, match=r"random weights; its trained weights load with build_model\('specmaskfoley_synthetic', pretrained=True\) or controlfoley.from_pretrained\('specmaskfoley_synthetic'\)"):
        fresh = build_model("specmaskfoley_synthetic")  # the name of weights: says they are not loaded
    assert fresh.config == trained.config
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in trained.state_dict().items()}
    assert "specmaskfoley_synthetic (trained weights shipped)" in list_names("preset")
    with pytest.raises(CheckpointError, match=r"ships weights \(specmaskfoley_synthetic\); build_model\('specmaskfoley_tiny'\)"):
        from_pretrained("specmaskfoley_tiny")


def test_list_takes_plural_kinds_and_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.cli import list_names, main

    assert list_names("presets") == list_names("preset")
    assert list_names("Vocoders").startswith("vocoder: ") and "griffinlim" in list_names("vocoders")
    assert list_names("control-encoders") == list_names("control_encoder")
    assert list_names("guidance").startswith("guidance: ") and list_names("MEL_FRONTENDS").startswith("mel_frontend: ")
    with pytest.raises(ConfigError, match=r"unknown registry kind 'presetz'; choose one of aligner, backbone.*plurals work"):
        list_names("presetz")
    assert main(["list", "presetz"]) == 2  # an argument error, as everywhere else
    capsys.readouterr()
    assert main(["list", "presets"]) == 0 and capsys.readouterr().out.startswith("preset: specmaskfoley")


def test_info_of_a_checkpoint_prints_its_own_config(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file, a checkpoint folder and a training run folder (holding model.safetensors) all work."""
    from conftest import micro_overrides

    from controlfoley.cli import info, main

    model = build_model("specmaskfoley_tiny", **micro_overrides())
    run = tmp_path / "run"
    file = model.save(run / "model.safetensors")
    want_backbone = sum(p.numel() for p in model.backbone.parameters())
    for target in (file, run):
        table = info(str(target))
        assert table.startswith(f"checkpoint {file} (config specmaskfoley_tiny): grid {model.grid[0]}x{model.grid[1]}")
        assert f"{want_backbone / 1e6:8.2f}M" in table.split("beside the paper")[0]
    assert info("specmaskfoley_tiny") != info(str(run))  # the tiny preset's own widths differ from the checkpoint's
    # the parts it was built with, marked where they differ from its preset
    ablation = build_model("specmaskfoley_tiny", aligner="plain1d", guidance="cfg_video").save(tmp_path / "ablation.safetensors")
    table = info(str(ablation))
    assert "* changed from the specmaskfoley_tiny preset" in table
    assert "* aligner         plain1d(kernel_size=3)" in table and "* guidance        cfg_video(scale=3.0, schedule='linear')" in table
    assert "  backbone        specmaskgit(" in table  # unchanged: no mark
    assert "the specmaskfoley_tiny preset's)" in info("specmaskfoley_tiny") and "*" not in info("specmaskfoley_tiny").split("parts (")[1]
    alone = info(str(build_model("specmaskfoley_tiny", control_encoder=None, aligner=None, controlnet=None).save(tmp_path / "alone.safetensors")))
    assert "* control_encoder, aligner, controlnet: removed" in alone and "* guidance        cfg_text(" in alone
    assert main(["info", str(run)]) == 0 and "checkpoint" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "neither a preset nor an existing checkpoint" in err and "specmaskfoley_tiny" in err and "Traceback" not in err


def test_info_says_what_the_weights_are(tmp_path) -> None:
    """The parts a checkpoint records as trained (what generate checks), the split of the recipe
    that trained it (a tokenizer run's: the tokenizer trainable), untrained for a preset, and the
    shipped weights for the preset that has them."""
    from controlfoley.cli import info

    model = build_model("specmaskfoley_tiny")
    model.trained_parts = {"tokenizer"}
    table = info(str(model.save(tmp_path / "tok.safetensors")))
    assert "trained parts: tokenizer (not backbone, controlnet: generate refuses it for foley)" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith(("tokenizer ", "controlnet "))}
    assert rows["tokenizer"][2] != "0.00M" and rows["controlnet"][2] == "0.00M" and "as the tokenizer recipe trains it" in table
    model.trained_parts = None
    assert "trained parts: not recorded" in info(str(model.save(tmp_path / "old.safetensors")))
    assert "weights: untrained" in info("specmaskfoley_tiny")
    import controlfoley.builder as builder

    with pytest.MonkeyPatch.context() as mp:  # a user preset built with an official codebook: still the ControlNet split
        mp.setattr(builder, "weight_file_parts", lambda cfg: ["tokenizer"])
        preset = info("specmaskfoley_tiny")
    assert "made from weights files: tokenizer" in preset and "as the controlnet recipe trains it" in preset
    shipped = info("specmaskfoley_synthetic")
    assert shipped.startswith("preset specmaskfoley_synthetic (its shipped weights)") and "trained parts: aligner, backbone, control_encoder, controlnet, tokenizer" in shipped


def test_plugin_option_is_taken_anywhere_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.cli import _take_plugins, main

    argv = ["generate", "v.mp4", "--plugin", "a.py", "--model", "m", "--plugin=b", "--out", "o"]
    assert _take_plugins(argv) == (["a.py", "b"], ["generate", "v.mp4", "--model", "m", "--out", "o"])
    assert _take_plugins(["--plugin", "a", "list", "--", "--plugin", "x"]) == (["a"], ["list", "--", "--plugin", "x"])
    with pytest.raises(SystemExit, match="--plugin needs a module name"):
        _take_plugins(["list", "--plugin"])
    assert main(["list", "presets", "--plugin", "/no/such/parts.py"]) == 2  # loaded (and refused), not "unrecognized arguments"
    assert "from --plugin" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "controlfoley", "--help"], capture_output=True, text=True, check=True)
    assert "--plugin X / --plugin=X may stand anywhere" in done.stdout


def test_info_counts_trainable_parameters_as_the_recipes_train_them(capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.cli import main

    assert main(["info", "specmaskgit_tiny"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("tokenizer", "backbone"))}
    assert rows["tokenizer"][2] == "0.00M" and rows["backbone"][2] != "0.00M"  # backbone recipe: tokenizer frozen


def test_info_compares_with_the_paper_only_at_the_papers_width(capsys: pytest.CaptureFixture[str]) -> None:
    from controlfoley.cli import main

    assert main(["info", "specmaskfoley_tiny"]) == 0
    out = capsys.readouterr().out
    assert "this backbone is 128 wide: not compared" in out and "fewer" not in out
    assert main(["info", "specmaskfoley"]) == 0
    assert "beside the paper (sec. 4.2, Table 1):" in capsys.readouterr().out


def test_a_user_part_under_a_builtin_name_is_refused_even_before_the_builtins_load() -> None:
    """In a fresh process, registering a built-in's name first took the name; the built-in's own
    registration then failed inside every later build_model, blaming the library."""
    script = (
        "from controlfoley import VOCODERS, build_model\n"
        "from controlfoley.errors import RegistryError\n"
        "try:\n"
        "    VOCODERS.register('hifigan')(lambda **kw: None)\n"
        "    print('accepted')\n"
        "except RegistryError as e:\n"
        "    print('refused:', e)\n"
        "print('built', type(build_model('specmaskfoley_tiny').vocoder).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CONTROLFOLEY_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: vocoder 'hifigan' is already registered (by controlfoley." in out.stdout and "override=True" in out.stdout
    assert "built GriffinLimVocoder" in out.stdout


@pytest.mark.parametrize("first", ["controlfoley.audio.hifigan", "controlfoley.audio.vocoders", "controlfoley.control.aligners", "controlfoley.data.clap"])
def test_importing_a_builtin_module_first_then_building_works(first: str) -> None:
    """A fresh process (as CI's first test file) importing one built-in module before anything
    else: its own registrations must not pull the other built-ins in mid-import (circular)."""
    env = {k: v for k, v in os.environ.items() if k != "CONTROLFOLEY_PLUGINS"}
    code = f"import {first}\nfrom controlfoley import build_model\nprint(type(build_model('specmaskfoley_tiny')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "SpecMaskFoley" in out.stdout, out.stderr[-2000:]


def test_every_registry_kind_is_listed_by_its_singular_and_plural_name():
    from controlfoley import ALL_REGISTRIES
    from controlfoley.cli import registry_kind

    for kind in ALL_REGISTRIES:
        for given in (kind, kind + "s", kind.upper() + "S", kind.replace("_", "-") + "s"):
            assert registry_kind(given) == kind, given


def test_list_describe_gives_every_builtin_part_a_line_of_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    """`controlfoley list -v`: one line per registered name from its builder's docstring; every
    built-in part has one (a user part without a docstring says so)."""
    from controlfoley import ALIGNERS
    from controlfoley.cli import list_names, main

    from controlfoley import ALL_REGISTRIES

    # built-ins only: parts other tests (and examples) register live in the same process
    for kind, registry in ALL_REGISTRIES.items():
        for name in registry.names():
            if getattr(registry.get(name), "__module__", "").startswith("controlfoley"):
                assert f"  {name}: (no docstring)" not in list_names(kind, describe=True), (kind, name)
    described = list_names(None, describe=True)
    assert "  specmaskfoley: The paper's model (sec. 4.2)" in described  # not cut at "sec."
    # the first sentence, also where the next one starts with `code` (it printed the whole paragraph)
    assert "  specvqgan: SpecVQGAN tokenizer; defaults are the official VGGSound codebook (configs/vggsound_codebook.yaml)\n" in described + "\n"
    assert main(["list", "presets", "--describe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("preset:\n") and "  specmaskfoley_synthetic (trained weights shipped): The model trained" in out

    @ALIGNERS.register("undocumented_test_aligner")
    def undocumented(**kw):  # noqa: ANN003, ANN202
        raise AssertionError("not built")

    try:
        assert "  undocumented_test_aligner: (no docstring)" in list_names("aligner", describe=True)
    finally:
        ALIGNERS.unregister("undocumented_test_aligner")


def test_info_and_bench_take_model_overrides_and_json_configs(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`controlfoley info PRESET --model controlnet.n_blocks=2`: the variant's table without writing
    code; a .json config (what build_model and train --preset take) is read as one, not as a broken
    checkpoint; bench times the variant the same way."""
    from controlfoley.bench import bench_main
    from controlfoley.cli import main
    from controlfoley.train import TrainConfig

    assert main(["info", "specmaskfoley_tiny", "--model", "controlnet.n_blocks=2", "--model", "aligner=plain1d"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("preset specmaskfoley_tiny with controlnet={'n_blocks': 2}, aligner='plain1d': ")
    assert "* controlnet      copy(n_blocks=2" in out and "* aligner         plain1d(" in out
    cfg = build_model("specmaskfoley_tiny", backbone={"depth": 3}).config
    path = tmp_path / "variant.json"
    path.write_text(cfg.to_json())
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"config {path} (built untrained)") and "depth=3" in out
    run = tmp_path / "run"  # a training run's config.json is not a model config: named, with what to give instead
    run.mkdir()
    (run / "config.json").write_text(TrainConfig.for_recipe("controlnet", preset="specmaskfoley_tiny", data="d", out=str(run)).to_json())
    assert main(["info", str(run / "config.json")]) == 2
    err = capsys.readouterr().err
    assert f"is a training run's config (recipe 'controlnet'), not a model config: give the run folder ({run})" in err and "known:" not in err
    assert main(["info", "specmaskfoley_tiny", "--model", "backbone.depht=2"]) == 2
    assert "depht" in capsys.readouterr().err
    rc = bench_main(["specmaskfoley_tiny", "--model", "backbone.depth=2", "--model", "controlnet.n_blocks=1", "--runs", "1", "--warmup", "0", "--steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "preset specmaskfoley_tiny with backbone={'depth': 2}, controlnet={'n_blocks': 1}" in out


def test_build_model_pretrained_loads_shipped_weights_as_timm_does() -> None:
    """build_model(name, pretrained=True) is from_pretrained(name); list_presets(pretrained=True)
    names the presets that ship weights; a preset without weights says which have them."""
    from controlfoley import from_pretrained, list_presets

    assert list_presets(pretrained=True) == ["specmaskfoley_synthetic"]
    assert set(list_presets(pretrained=True)) < set(list_presets())
    built = build_model("specmaskfoley_synthetic", pretrained=True)
    loaded = from_pretrained("specmaskfoley_synthetic")
    assert {"backbone", "controlnet"} <= built.trained_parts
    for (k, a), (_, b) in zip(built.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match=r"no weights ship for it \(presets with weights: specmaskfoley_synthetic\)"):
        build_model("specmaskfoley_tiny", pretrained=True)


def test_info_with_overrides_still_says_what_the_weights_are(tmp_path) -> None:
    """`info NAME --model ...` on shipped weights reads them as loaded (the label grew a suffix and
    the table said 'untrained'); a .json config is built untrained."""
    from controlfoley.cli import info

    shipped = info("specmaskfoley_synthetic", {"sampler": {"steps": 16}})
    assert "trained parts: aligner, backbone" in shipped and "untrained" not in shipped.splitlines()[1]
    path = tmp_path / "v.json"
    path.write_text(build_model("specmaskfoley_tiny").config.to_json())
    assert info(str(path)).splitlines()[1].startswith("weights: untrained")


def test_an_empty_preset_name_says_it_is_empty_and_how_to_list_the_presets() -> None:
    """build_model("") read "" as the current folder: "that is a file or folder"."""
    for name in ("", "  "):
        with pytest.raises(ConfigError, match=rf"^build_model\({name!r}\): the preset name is empty; give one of .*specmaskfoley_tiny.* "
                           r"\(controlfoley\.list_presets\(\) in Python, `controlfoley list presets` on the command line\)") as e:
            build_model(name)
        assert "file or folder" not in str(e.value)


def test_a_mistyped_package_attribute_gets_a_did_you_mean() -> None:
    import controlfoley

    with pytest.raises(AttributeError, match=r"no attribute 'ALINGERS'; did you mean 'ALIGNERS'\?"):
        controlfoley.ALINGERS  # noqa: B018
    with pytest.raises(AttributeError, match=r"no attribute 'zzz_not_a_name'$"):
        controlfoley.zzz_not_a_name  # noqa: B018
    with pytest.raises(AttributeError, match=r"no attribute 'os'$"):  # not its private import _os
        controlfoley.os  # noqa: B018
    assert not hasattr(controlfoley, "__wrapped__")  # probes (inspect, doctest) get a plain AttributeError
