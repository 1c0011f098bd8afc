"""Config tree: JSON round trip, overrides, errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import registered

from controlfoley import PRESETS, ConfigError, ModelConfig, Part, build_model
from controlfoley.presets import get_preset


@pytest.mark.parametrize("name", ["specmaskfoley", "specmaskgit", "specmaskfoley_tiny", "specmaskfoley_plain1d"])
def test_json_round_trip(name):
    cfg = get_preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_string_override_keeps_compatible_kwargs():
    cfg = get_preset("specmaskfoley").override(aligner="plain1d", guidance="cfg_video")
    assert cfg.aligner == Part("plain1d", {"kernel_size": 3})
    assert cfg.guidance == Part("cfg_video", {"scale": 3.0, "schedule": "linear"})


def test_dict_override_merges_and_can_rename():
    cfg = get_preset("specmaskfoley_tiny").override(backbone={"depth": 2}, guidance={"name": "cfg", "condition": "text_video"})
    assert cfg.backbone.kwargs["depth"] == 2 and cfg.backbone.kwargs["dim"] == 128
    assert cfg.guidance.name == "cfg" and cfg.guidance.kwargs["condition"] == "text_video"


def test_sampler_override_and_bad_fields():
    cfg = get_preset("specmaskfoley").override(sampler={"steps": 16})
    assert cfg.sampler.steps == 16 and cfg.sampler.temperature == 9.0
    with pytest.raises(ConfigError, match="unknown sampler field"):
        cfg.override(sampler={"stepz": 3})
    with pytest.raises(ConfigError, match=r"unknown override 'bakbone' \(did you mean 'backbone'\?\)"):
        cfg.override(bakbone={})
    with pytest.raises(ConfigError, match=r"unknown override 'alinger' \(did you mean 'aligner'\?\)"):
        build_model("specmaskfoley_tiny", alinger="ft")
    with pytest.raises(ConfigError, match="steps"):
        cfg.override(sampler={"steps": 0})


def test_control_parts_come_together():
    with pytest.raises(ConfigError, match="come together"):
        get_preset("specmaskfoley").override(controlnet=None)
    with pytest.raises(ConfigError, match=r"controlnet removed alone.*add control_encoder=None, aligner=None"):
        get_preset("specmaskfoley").override(controlnet=None)
    cfg = get_preset("specmaskfoley").override(controlnet=None, aligner=None, control_encoder=None)
    assert not cfg.has_control


def test_removing_the_video_parts_moves_a_video_rule_to_text_cfg():
    """The backbone alone cannot sample multi-CFG or cfg_video (no ControlNet): removing the video
    parts makes such a rule text-only CFG at its scale and schedule, as the backbone-alone presets
    have it, and a dict of settings alone sets that rule's scale; a rule named in the same call is
    kept, with a warning where it reads video (the model trains, but its generate refuses it)."""
    base = get_preset("specmaskfoley").override(guidance={"scale": 2.5})
    alone = base.override(controlnet=None, aligner=None, control_encoder=None)
    assert alone.guidance == Part("cfg_text", {"scale": 2.5, "schedule": base.guidance.kwargs["schedule"]})
    assert alone.guidance.name == get_preset("specmaskgit").guidance.name
    kept = base.override(guidance=Part("none", {"condition": "text"}), controlnet=None, aligner=None, control_encoder=None)
    assert kept.guidance == Part("none", {"condition": "text"})
    # a dict of settings alone, given with the removal, sets the scale of the text-only CFG it becomes
    scaled = base.override(guidance={"scale": 5.0}, controlnet=None, aligner=None, control_encoder=None)
    assert scaled.guidance == Part("cfg_text", {"scale": 5.0, "schedule": base.guidance.kwargs["schedule"]})
    # a rule named with the removal that reads video is kept, and said where it is asked: its generate will refuse it
    with pytest.warns(UserWarning, match=r"guidance 'multi' reads video features, but this override removes the video parts.*leave guidance= out \(it then becomes 'cfg_text'") as seen:
        kept_multi = base.override(guidance="multi", controlnet=None, aligner=None, control_encoder=None)
    assert kept_multi.guidance.name == "multi" and all(w.filename == __file__ for w in seen)
    with pytest.warns(UserWarning, match=r"guidance 'none' reads video features"):  # 'none' samples text_video by default
        base.override(guidance="none", controlnet=None, aligner=None, control_encoder=None)
    with pytest.warns(UserWarning, match=r"guidance 'cfg_video' reads video features, but this model has no video parts \(a backbone alone\)"):
        get_preset("specmaskgit").override(guidance="cfg_video")
    unguided = base.override(guidance=Part("none", {"condition": "video"})).override(controlnet=None, aligner=None, control_encoder=None)
    assert unguided.guidance == Part("none", {"condition": "text"})  # unguided stays unguided (not CFG at scale 3)
    from controlfoley import GUIDANCE
    from controlfoley.guidance import MultiCFG

    with registered(GUIDANCE, "test_multi_scale5", lambda: MultiCFG(scale=5.0)):  # a rule whose scale is its builder's default
        mine = base.override(guidance=Part("test_multi_scale5", {})).override(controlnet=None, aligner=None, control_encoder=None)
        assert mine.guidance == Part("cfg_text", {"scale": 5.0, "schedule": "linear"})  # the built rule's scale is kept, not 3
    text_only = get_preset("specmaskfoley").override(guidance="cfg_text", controlnet=None, aligner=None, control_encoder=None)
    assert text_only.guidance == Part("cfg_text", {"scale": 3.0, "schedule": "linear"})  # as given (the old settings it accepts)
    assert get_preset("specmaskfoley").override(sampler={"steps": 4}).guidance == get_preset("specmaskfoley").guidance  # untouched otherwise


def test_non_json_values_are_refused():
    with pytest.raises(ConfigError, match="JSON"):
        Part("ft", {"x": object()})


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(1, 48), steps=st.integers(1, 64), scale=st.floats(0, 10, allow_nan=False))
def test_round_trip_property(depth, steps, scale):
    cfg = get_preset("specmaskfoley").override(backbone={"depth": depth}, sampler={"steps": steps}, guidance={"scale": scale})
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_every_preset_builds_a_config():
    for name in PRESETS.names():
        assert isinstance(get_preset(name), ModelConfig)


def test_malformed_json_override_is_named_not_read_as_a_part_name():
    from controlfoley.config import parse_overrides

    assert parse_overrides(["aligner=plain1d", 'backbone={"depth": 2}', "x=[1, 2]"]) == {
        "aligner": "plain1d", "backbone": {"depth": 2}, "x": [1, 2],
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"""--model 'backbone=\{"depth":2': the value is malformed JSON \(Expecting ','"""):
        parse_overrides(['backbone={"depth":2'])
    with pytest.raises(ConfigError, match=r"--set 'grid=\[1,': the value is malformed JSON"):
        parse_overrides(["grid=[1,"], flag="--set")


def test_config_values_of_the_wrong_type_are_named_as_users_meet_them(tmp_path) -> None:
    """Run without the suite's runtime type checks (a fresh interpreter, as users run it): each bad
    value is a ConfigError naming the field, not a TypeError / ValueError / ZeroDivisionError from
    deep inside a builder; a config with tuples survives its JSON round trip."""
    import subprocess
    import sys

    script = tmp_path / "bad.py"
    script.write_text(
        """
from controlfoley import build_model
from controlfoley.config import ConfigError, ModelConfig
cases = [dict(sampler={"steps": "12"}), dict(sampler={"temperature": "hot"}), dict(n_frames="512"), dict(n_frames=512.0),
         dict(controlnet={"n_blocks": "x"}), dict(backbone={"depth": -1}), dict(backbone={"dim": 0, "heads": 1}),
         dict(tokenizer={"ch_mult": "1,2"})]
for c in cases:
    try:
        build_model("specmaskfoley_tiny", **c)
        print("NO ERROR", c)
    except ConfigError as e:
        print("ConfigError:", str(e).split(";")[0])
d = build_model("specmaskfoley_tiny").config.to_dict()
for bad in [{**d, "backbone": {"name": "specmaskgit", "kwarg": {}}}, {k: v for k, v in d.items() if k != "n_frames"}, {**d, "sampler": {"stepz": 3}}]:
    try:
        ModelConfig.from_dict(bad)
        print("NO ERROR")
    except ConfigError as e:
        print("ConfigError:", str(e)[:120])
cfg = build_model("specmaskfoley_tiny", tokenizer={"ch_mult": (1, 1, 2, 2, 4)}).config
print("round trip", ModelConfig.from_json(cfg.to_json()) == cfg)
""",
        encoding="utf-8",
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "NO ERROR" not in out.stdout and len(lines) == 12 and lines[-1] == "round trip True", out.stdout
    for phrase in [
        "sampler.steps must be an int", "sampler.temperature must be a number", "n_frames must be a positive int",
        "controlnet: n_blocks must be an int", "specmaskgit: depth=-1", "specmaskgit: dim=0", "specvqgan: ch_mult must be a list of ints",
        "unknown key(s) ['kwarg']", "model config lacks ['n_frames']", "unknown sampler field(s) ['stepz']",
    ]:  # fmt: skip
        assert phrase in out.stdout, phrase


def test_build_model_from_a_config_file_or_dict(tmp_path) -> None:
    cfg = build_model("specmaskfoley_tiny", backbone={"depth": 4}, sampler={"steps": 4}).config
    (tmp_path / "cfg.json").write_text(cfg.to_json(), encoding="utf-8")
    assert build_model(tmp_path / "cfg.json").config == cfg == build_model(str(tmp_path / "cfg.json")).config
    assert build_model(cfg.to_dict(), aligner="plain1d").config == cfg.override(aligner="plain1d")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model config .*bad.json: Expecting"):
        build_model(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=r"model config .*none.json: cannot read it"):
        build_model(tmp_path / "none.json")
    for text in ("5", "null", '"abc"'):
        (tmp_path / "odd.json").write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match="a model config is a JSON object"):
            build_model(tmp_path / "odd.json")


def test_a_registered_builder_must_be_callable() -> None:
    from controlfoley import ALIGNERS
    from controlfoley._registry import RegistryError

    import inspect

    with pytest.raises(RegistryError, match="register a builder .*got int 42"):
        inspect.unwrap(ALIGNERS.register("test_not_callable"))(42)  # past the suite's runtime type checks
    assert "test_not_callable" not in ALIGNERS


def test_part_kwargs_are_read_only_but_copy_pickle_and_hash() -> None:
    import copy
    import pickle

    cfg = get_preset("specmaskfoley_tiny")
    depth = cfg.backbone.kwargs["depth"]
    with pytest.raises(ConfigError, match="read-only.*override"):
        cfg.backbone.kwargs["depth"] = depth + 1
    with pytest.raises(ConfigError, match="read-only"):
        cfg.backbone.kwargs.update(depth=depth + 1)
    assert cfg.backbone.kwargs["depth"] == depth
    # the way to change it
    assert cfg.override(backbone={"depth": depth + 1}).backbone.kwargs["depth"] == depth + 1
    # a frozen config is a value: it hashes, pickles (DataLoader workers, torchrun) and deep-copies
    assert hash(cfg) == hash(ModelConfig.from_json(cfg.to_json()))
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg
    # to_dict hands out a copy the caller may edit without touching the config
    d = cfg.to_dict()
    d["backbone"]["kwargs"]["depth"] = depth + 1
    assert cfg.backbone.kwargs["depth"] == depth


def test_preset_builders_returning_a_dict_or_the_wrong_thing_and_checkpoints_given_to_build_model(tmp_path) -> None:
    PRESETS.register("test_as_dict")(lambda: get_preset("specmaskfoley_tiny").to_dict())
    PRESETS.register("test_returns_int")(lambda: 42)
    try:
        assert build_model("test_as_dict").config == get_preset("specmaskfoley_tiny")  # its dict is a config too
        with pytest.raises(ConfigError, match="preset 'test_returns_int' returned a int; a preset builder returns a ModelConfig"):
            build_model("test_returns_int")
    finally:
        PRESETS.unregister("test_as_dict")
        PRESETS.unregister("test_returns_int")
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    for path in (ckpt, str(tmp_path / "m.safetensors")):
        with pytest.raises(ConfigError, match=r"not a preset or a \.json config.*controlfoley\.from_pretrained\(path\)"):
            build_model(path)


def test_a_spec_value_may_contain_an_equals_sign() -> None:
    from controlfoley.config import parse_spec

    assert parse_spec("clip_openclip,weights=/w/run=3/clip.safetensors,n=2") == (
        "clip_openclip", {"weights": "/w/run=3/clip.safetensors", "n": 2},
    )


def test_a_preset_name_builds_the_preset_beside_a_folder_of_that_name_and_a_path_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """build_model("specmaskfoley_tiny") where the working folder holds a folder of that name (a run
    trained into --out specmaskfoley_tiny, say) is the preset, as in `controlfoley info`; a
    checkpoint's path is refused with the way to load it."""
    from controlfoley.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "specmaskfoley_tiny").mkdir()
    assert build_model("specmaskfoley_tiny").config == get_preset("specmaskfoley_tiny")
    assert cli_main(["info", "specmaskfoley_tiny"]) == 0 and "specmaskfoley_tiny" in capsys.readouterr().out
    (tmp_path / "m.safetensors").write_bytes(b"")
    for path in ("m.safetensors", str(tmp_path / "specmaskfoley_tiny"), "./specmaskfoley_tiny"):
        with pytest.raises(ConfigError, match=r"that is a file or folder, not a preset.*from_pretrained\(path\)"):
            build_model(path)


def test_every_error_the_library_names_is_a_controlfoleyerror_and_build_model_names_the_part() -> None:
    """One base to catch (`except ControlFoleyError`), each error still its builtin (ValueError,
    KeyError) for older code; a setting a part's constructor refuses (a ShapeError or ValueError
    inside it) comes out of build_model as a ConfigError naming the part, its settings and the fix."""
    from controlfoley.errors import ControlFoleyError, RegistryError

    assert issubclass(ConfigError, ControlFoleyError) and issubclass(ConfigError, ValueError)
    assert issubclass(RegistryError, ControlFoleyError) and issubclass(RegistryError, KeyError)
    from controlfoley import PluginError, load_plugins

    assert issubclass(PluginError, ControlFoleyError) and issubclass(PluginError, ImportError)
    with pytest.raises(ControlFoleyError, match="no_such_plugin_module"):
        load_plugins("no_such_plugin_module")
    with pytest.raises(ControlFoleyError, match="unknown preset 'nope'"):
        build_model("nope")
    with pytest.raises(ConfigError, match=r"backbone 'specmaskgit' cannot be built with .*heads=3.*divisible by heads 3") as e:
        build_model("specmaskfoley_tiny", backbone={"heads": 3})
    assert type(e.value.__cause__).__name__ == "ShapeError"  # the part's own message kept as the cause
    with pytest.raises(ConfigError, match=r"aligner 'ft' cannot be built with kernel_size=0: kernel_size must be odd"):
        build_model("specmaskfoley_tiny", aligner={"kernel_size": 0})
    with pytest.raises(ConfigError, match=r"n_frames=100 does not fit tokenizer 'specvqgan'.*divisible by 16.*n_frames=N"):
        build_model("specmaskfoley_tiny", n_frames=100)
    with pytest.raises(ConfigError, match=r"n_blocks must be in \[1, 2\].*got 3; set it with build_model\(\.\.\., controlnet=\{'n_blocks': 2\}\)"):
        build_model("specmaskfoley_tiny", backbone={"depth": 2})  # the ControlNet copies 3 blocks of 2


def test_builder_defaults_and_wired_values_at_their_edges():
    """A checkpoint records only the defaults its config relied on (not what the config gives), and
    a value the config gives for a wired argument that contradicts the wired one is refused."""
    from controlfoley.builder import builder_defaults

    cfg = get_preset("specmaskfoley_tiny").override(backbone={"depth": 3})
    recorded = builder_defaults(cfg)
    assert recorded["backbone"] == {"fused_attn": True}  # its one default the config relied on; not depth, which it gives
    assert "n_mels" not in recorded["tokenizer"] and recorded["tokenizer"]["beta"] == 0.25  # wired (default 80): left out
    with pytest.raises(ConfigError, match=r"vocab_size=7 contradicts the value wired from the other parts"):
        build_model("specmaskfoley_tiny", backbone={"vocab_size": 7})


def test_dotted_overrides_set_one_setting_of_a_part() -> None:
    """`--model backbone.depth=2` (torchtune / Hydra style) is `backbone='{"depth": 2}'`; settings of
    one part merge, and with a part's name given before or after them."""
    from controlfoley.config import parse_overrides

    assert parse_overrides(["backbone.depth=2", "backbone.heads=4", "sampler.steps=16"]) == {
        "backbone": {"depth": 2, "heads": 4},
        "sampler": {"steps": 16},
    }
    assert parse_overrides(["aligner=plain1d", "aligner.kernel_size=5"]) == {"aligner": {"name": "plain1d", "kernel_size": 5}}
    assert parse_overrides(["aligner.kernel_size=5", "aligner=plain1d"]) == {"aligner": {"kernel_size": 5, "name": "plain1d"}}
    assert parse_overrides(["backbone.depth=2", 'backbone={"heads": 4}']) == {"backbone": {"depth": 2, "heads": 4}}
    with pytest.raises(ConfigError, match=r"an empty name in 'backbone\.'"):
        parse_overrides(["backbone.=2"])
    with pytest.raises(ConfigError, match=r"guidance was given as 3, which has no settings to set"):
        parse_overrides(["guidance=3", "guidance.scale=2"])
    m = build_model("specmaskfoley_tiny", **parse_overrides(["backbone.depth=3", "controlnet.n_blocks=2", "sampler.steps=4"]))
    assert len(m.backbone.blocks) == 3 and m.config.sampler.steps == 4


def test_a_setting_of_a_removed_part_is_refused() -> None:
    from controlfoley.config import parse_overrides

    with pytest.raises(ConfigError, match=r"aligner was removed \(null\) by an earlier --model; drop one of them"):
        parse_overrides(["aligner=null", "aligner.kernel_size=5"])
