"""Training recipes as a registry: a user recipe (examples/custom_recipe.py, loaded as a plugin)
trains by name through the command line, logs its own statistic, resumes, and without its plugin
is named with how to load it; unknown names list the registered ones; bad registrations are refused.
A run records its recipe's plugin (resumed without --plugin, on every torchrun rank; a changed or
gone file named); a recipe's `Options` are typed flags, recorded in the run and read by the recipe."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import cpu_env, micro_overrides
from test_train import write_data
from test_train_usability import cli_args

from controlfoley import RECIPES, RegistryError, build_model
from controlfoley._registry import PLUGIN_ENV, PluginError, load_plugins
from controlfoley.cli import main as cli_main
from controlfoley.config import ConfigError
from controlfoley.train import TrainConfig, train
from controlfoley.train.cli import main as train_main
from controlfoley.train.config import RECIPE_DEFAULTS, PluginChangedWarning, RecipeError
from controlfoley.train.metrics import read_metrics
from controlfoley.train.recipes import ControlNetRecipe, MaskedTokenRecipe, Recipe, TokenizerRecipe, get_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_recipe.py"
NAME = "controlnet_smoothed"


def _forget(name: str, file: Path) -> None:
    """As in a process that never loaded the plugin: the name unregistered, the module forgotten."""
    if name in RECIPES:
        RECIPES.unregister(name)
    for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(file)]:
        del sys.modules[mod]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture
def no_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example's recipe not loaded, and no plugin in the environment (the command line sets it;
    set first here, so that monkeypatch restores the variable as it was before the test)."""
    monkeypatch.setenv(PLUGIN_ENV, "")
    monkeypatch.delenv(PLUGIN_ENV)
    _forget(NAME, EXAMPLE)
    yield
    _forget(NAME, EXAMPLE)


@pytest.fixture
def scratch_recipes() -> Iterator[list[str]]:
    """Names registered in a test, unregistered after it."""
    names: list[str] = []
    yield names
    for n in names:
        if n in RECIPES:
            RECIPES.unregister(n)


def test_a_user_recipe_trains_by_name_logs_its_statistic_and_resumes_only_with_its_plugin(
    data: Path, tmp_path: Path, no_plugin: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = cli_args(NAME, data, run, "--plugin", str(EXAMPLE), steps=4)
    with pytest.warns(UserWarning, match="controlnet recipe without --init"):  # its base's checks and warnings
        assert train_main([*args, "--stop-at", "2"]) == 0
    assert os.environ[PLUGIN_ENV] == str(EXAMPLE)  # what every process the run starts imports
    assert json.loads((run / "config.json").read_text())["recipe"] == NAME
    capsys.readouterr()
    assert train_main([NAME, "--out", str(run), "--resume", "--plugin", str(EXAMPLE)]) == 0  # --resume of that run works
    assert json.loads(capsys.readouterr().out)["step"] == 4
    rows = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:  # the recipe's own statistics, beside its base's
        assert 0 < r["entropy_masked"] and r["loss_smoothed"] > 0 and "acc_masked" in r
    # its defaults: the controlnet recipe's, with its own `defaults` over them
    cfg = TrainConfig.for_recipe(NAME, preset="specmaskfoley_tiny", data="d", out="o")
    assert {k: getattr(cfg, k) for k in RECIPE_DEFAULTS["controlnet"] if k != "warmup_steps"} == {
        k: v for k, v in RECIPE_DEFAULTS["controlnet"].items() if k != "warmup_steps"
    }
    assert cfg.warmup_steps == 1_400 and TrainConfig.from_json(cfg.to_json()) == cfg
    # a process without the plugin, resuming a run whose config.json records none (written before
    # runs recorded their plugins): the run's recipe is named, with how to load it
    _forget(NAME, EXAMPLE)
    monkeypatch.delenv(PLUGIN_ENV)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "plugins"}))
    assert train_main([NAME, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"unknown recipe {NAME!r}" in err and "--plugin" in err and PLUGIN_ENV in err and "Traceback" not in err
    assert train_main(["controlnet", "--out", str(run), "--resume"]) == 2  # another recipe's name: its config.json is read
    err = capsys.readouterr().err
    assert f"--resume: the run in {run} uses recipe {NAME!r}, which is not registered (load the plugin that registered it): unknown recipe {NAME!r}" in err
    assert "--plugin" in err and "Did you mean" not in err  # not the name just typed
    with pytest.raises(RecipeError, match=rf"unknown recipe '{NAME}'.*--plugin"):  # the Python API's resume reads the same file
        TrainConfig.from_json((run / "config.json").read_text())
    capsys.readouterr()
    assert cli_main(["--plugin", str(EXAMPLE), "train", NAME, "--out", str(run), "--resume"]) == 0  # with it: nothing left to do
    err = capsys.readouterr().err
    # its "train longer" command loads the recipe's plugin, as the run's own did (it left --plugin out: 'unknown recipe')
    assert f"`controlfoley --plugin {EXAMPLE.resolve()} train {NAME} --init {run} --init-parts" in err
    assert "already finished at step 4" in err and "--init-parts tokenizer,backbone,control_encoder,aligner,controlnet " in err  # its base's parts


def test_train_help_lists_a_plugin_recipe_with_the_flags_of_its_base(no_plugin: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["train", "--help", "--plugin", str(EXAMPLE)])  # --plugin anywhere, as for model parts
    out = " ".join(capsys.readouterr().out.split())
    assert "{tokenizer,backbone,controlnet,controlnet_smoothed}" in out
    assert "controlnet_smoothed The ControlNet recipe with label smoothing" in out and "(a user recipe, based on controlnet)" in out
    with pytest.raises(SystemExit):
        train_main([NAME, "--help"])  # loaded in this process now
    out = " ".join(capsys.readouterr().out.split())
    assert "--uncond-prob" in out and "--trainable" in out and "--codebook-restart-every" not in out  # the controlnet recipe's flags
    assert "[default: 1400 for the recipe's 140000 steps" in out and "[default: 0.9]" in out  # its defaults over its base's


def test_an_unknown_recipe_lists_the_registered_ones(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert train_main(["contrlnet", "--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'contrlnet'. Did you mean 'controlnet'? Registered recipes: backbone, controlnet, tokenizer" in err
    assert "@controlfoley.RECIPES.register(name)" in err and "--plugin" in err and "invalid choice" not in err
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: said once per node
    assert train_main(["contrlnet", "--out", "o"]) == 2 and capsys.readouterr().err == ""
    for call in (lambda: TrainConfig.for_recipe("contrlnet", preset="p", data="d", out="o"), lambda: get_recipe("contrlnet")):
        with pytest.raises(RecipeError, match="Registered recipes: backbone, controlnet, tokenizer") as e:
            call()
        assert isinstance(e.value, ConfigError) and isinstance(e.value, RegistryError)  # as before (ConfigError), and the registry's
    cfg = TrainConfig.for_recipe("controlnet", preset="p", data="d", out="o").to_dict()
    with pytest.raises(RecipeError, match="unknown recipe 'gone'"):
        TrainConfig.from_dict({**cfg, "recipe": "gone"})
    # the built-ins are the registry's entries
    assert [RECIPES.get(n) for n in ("tokenizer", "backbone", "controlnet")] == [TokenizerRecipe, MaskedTokenRecipe, ControlNetRecipe]
    assert isinstance(get_recipe("backbone"), MaskedTokenRecipe) and get_recipe("backbone").name == "backbone"


def test_a_bad_recipe_registration_is_refused_naming_what_is_missing(scratch_recipes: list[str], tmp_path: Path) -> None:
    class Half(Recipe):  # prepare, needed_keys and check_data only
        def prepare(self, model): ...  # noqa: ANN001, ANN201
        def needed_keys(self, model, ds): ...  # noqa: ANN001, ANN201
        def check_data(self, model, ds): ...  # noqa: ANN001, ANN201

    with pytest.raises(RegistryError, match=r"recipe 'half' \(.*Half\) does not define objective, summarize: a Recipe subclass must define"):
        RECIPES.register("half")(Half)
    with pytest.raises(RegistryError, match=r"recipe 'fn': register a subclass of controlfoley.train.recipes.Recipe .*got function"):
        RECIPES.register("fn")(lambda **kw: ControlNetRecipe())
    with pytest.raises(RegistryError, match=r"got class .*TrainConfig"):
        RECIPES.register("cfg")(TrainConfig)

    class BadBase(ControlNetRecipe):
        base = "controlnett"

    with pytest.raises(RegistryError, match=r"recipe 'bad_base' \(.*BadBase\): base = 'controlnett'; it must be one of 'tokenizer', 'backbone', 'controlnet' or None"):
        RECIPES.register("bad_base")(BadBase)

    class BadDefaults(ControlNetRecipe):
        defaults = {"warmup": 10}

    with pytest.raises(RegistryError, match=r"defaults name unknown TrainConfig field\(s\) \['warmup'\] \('warmup': did you mean 'ema_warmup' or 'warmup_steps'\?\)"):
        RECIPES.register("bad_defaults")(BadDefaults)
    class Mine(ControlNetRecipe):
        pass

    with pytest.raises(RegistryError, match="'controlnet' is already registered .*override=True"):
        RECIPES.register("controlnet")(Mine)
    assert RECIPES.get("controlnet") is ControlNetRecipe
    assert not {"half", "fn", "cfg", "bad_base", "bad_defaults"} & set(RECIPES.names())
    # in a plugin: the file and its line
    bad = tmp_path / "bad_recipe.py"
    bad.write_text("from controlfoley import RECIPES\nfrom controlfoley.train.recipes import Recipe\n\n\n@RECIPES.register('empty')\nclass Empty(Recipe):\n    pass\n")
    with pytest.raises(PluginError, match=r"bad_recipe.py.* failed to import at .*bad_recipe.py:5: .*recipe 'empty' \(Empty\) does not define check_data, needed_keys"):
        load_plugins(str(bad))


def test_a_recipe_of_ones_own_has_the_common_flags_and_its_base_decides_the_checks(
    scratch_recipes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    class Scratch(TokenizerRecipe):  # based on "tokenizer", inherited
        defaults = {"steps": 500, "warmup_steps": 50}

    class FromScratch(Recipe):  # no base: the flags every recipe has, TrainConfig's defaults under its own
        defaults = {"batch_size": 8}

        def prepare(self, model): ...  # noqa: ANN001, ANN201  (none is called here)
        def needed_keys(self, model, ds): ...  # noqa: ANN001, ANN201
        def check_data(self, model, ds): ...  # noqa: ANN001, ANN201
        def objective(self, model, cfg): ...  # noqa: ANN001, ANN201
        def summarize(self, stats): ...  # noqa: ANN001, ANN201

    RECIPES.register("scratch_tok")(Scratch)
    RECIPES.register("from_scratch")(FromScratch)
    scratch_recipes += ["scratch_tok", "from_scratch"]
    tok = TrainConfig.for_recipe("scratch_tok", preset="p", data="d", out="o", steps=100)
    assert (tok.steps, tok.warmup_steps, tok.betas, tok.base_lr) == (100, 10, (0.5, 0.9), 8e-4)  # its 10% warm-up, the tokenizer's betas and LR
    with pytest.raises(ConfigError, match="the scratch_tok recipe trains the tokenizer"):  # the tokenizer recipe's check
        tok.replace(trainable=("backbone",))
    own = TrainConfig.for_recipe("from_scratch", preset="p", data="d", out="o")
    assert (own.batch_size, own.steps, own.init_parts) == (8, TrainConfig.steps, ())
    assert own.replace(trainable=("aligner",)).trainable == ("aligner",)  # no base: no recipe-specific check
    with pytest.raises(SystemExit):
        train_main(["from_scratch", "--help"])
    out = capsys.readouterr().out
    assert "--steps" in out and "--uncond-prob" not in out and "--codebook-restart-every" not in out and "[default: 8]" in out


def test_a_recipe_plugin_imported_by_path_and_by_name_registers_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe class defined twice at the same place (a plugin loaded by path and imported by its
    module name) is the same definition, not a duplicate name; another class under it still is."""
    (tmp_path / "my_recipe_x.py").write_text(
        "from controlfoley import RECIPES\nfrom controlfoley.train.recipes import ControlNetRecipe\n\n\n"
        "@RECIPES.register('my_recipe_x')\nclass MyRecipe(ControlNetRecipe):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins(str(tmp_path / "my_recipe_x.py"))
        import my_recipe_x  # noqa: F401  (the file run a second time, under its own name)

        assert RECIPES.get("my_recipe_x") is my_recipe_x.MyRecipe

        class MyRecipe(ControlNetRecipe):
            pass

        with pytest.raises(RegistryError, match="'my_recipe_x' is already registered"):
            RECIPES.register("my_recipe_x")(MyRecipe)
    finally:
        _forget("my_recipe_x", tmp_path / "my_recipe_x.py")


def test_token_provenance_advice_follows_a_user_recipes_base(scratch_recipes: list[str]) -> None:
    """A user recipe based on `backbone` gets the backbone recipe's advice (--init the tokenizer's
    run), one based on `controlnet` the controlnet recipe's (--init a backbone run), as the built-ins."""
    from controlfoley import build_model
    from controlfoley.train.provenance import token_provenance_problems

    class MyBackbone(MaskedTokenRecipe):
        base = "backbone"

    class MyControl(ControlNetRecipe):
        pass

    for name, cls in (("my_bb_prov", MyBackbone), ("my_cn_prov", MyControl)):
        RECIPES.register(name)(cls)
        scratch_recipes.append(name)
    config = build_model("specmaskfoley_tiny").config
    advice = {}
    for recipe in ("backbone", "my_bb_prov", "controlnet", "my_cn_prov"):
        cfg = TrainConfig.for_recipe(recipe, preset="specmaskfoley_tiny", data="d", out="o")
        (problem,) = token_provenance_problems(cfg, config, Path("d"), {"tokenizer": "runs/tok"})
        advice[recipe] = problem.split("Train with ")[-1]
    assert advice["my_bb_prov"] == advice["backbone"] == "--init runs/tok."
    assert advice["my_cn_prov"] == advice["controlnet"] == "--init BACKBONE_RUN, a backbone run trained on these tokens (its tokenizer from runs/tok)."


def test_the_train_longer_hint_names_the_parts_of_a_recipes_base(scratch_recipes: list[str]) -> None:
    from controlfoley.train.checkpoints import longer_run_hint

    class Mine(Recipe):  # from scratch: no base, so no parts the library could name
        def prepare(self, model): ...  # noqa: ANN001, ANN201
        def needed_keys(self, model, ds): return ("tokens",)  # noqa: ANN001, ANN201, E704
        def check_data(self, model, ds): ...  # noqa: ANN001, ANN201
        def objective(self, model, cfg): ...  # noqa: ANN001, ANN201
        def summarize(self, stats): return {}  # noqa: ANN001, ANN201, E704

    class MyControl(ControlNetRecipe):
        pass

    for name, cls in (("mine_hint", Mine), ("my_cn_hint", MyControl)):
        RECIPES.register(name)(cls)
        scratch_recipes.append(name)
    assert "--init-parts tokenizer,backbone,control_encoder,aligner,controlnet " in longer_run_hint("runs/a", "my_cn_hint")
    hint = longer_run_hint("runs/a", "mine_hint")
    assert "--init-parts PARTS --steps N" in hint and "(PARTS: the model parts it trains" in hint


# -- a run remembers its plugin ------------------------------------------------------------------------
@pytest.fixture
def plugin_copy(tmp_path: Path, no_plugin: None) -> Iterator[Path]:
    """A copy of the example's plugin, to edit, move and delete; forgotten after the test."""
    plugin = (tmp_path / "mine" / "smoothed.py").resolve()
    plugin.parent.mkdir()
    shutil.copy(EXAMPLE, plugin)
    yield plugin
    for file in (plugin, tmp_path.resolve() / "smoothed.py"):
        _forget(NAME, file)


def _new_process(plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new shell: the recipe not registered, CONTROLFOLEY_PLUGINS unset."""
    _forget(NAME, plugin)
    monkeypatch.delenv(PLUGIN_ENV, raising=False)


def test_a_resumed_run_loads_the_plugin_its_config_records_and_warns_when_it_changed(
    data: Path, tmp_path: Path, plugin_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin, run = plugin_copy, tmp_path / "run"
    with pytest.warns(UserWarning, match="controlnet recipe without --init"):
        assert train_main([*cli_args(NAME, data, run, "--plugin", str(plugin), steps=5), "--stop-at", "1"]) == 0
    sha = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert json.loads((run / "config.json").read_text())["plugins"] == [{"path": str(plugin), "sha256": sha}]
    _new_process(plugin, monkeypatch)
    capsys.readouterr()
    assert train_main([NAME, "--out", str(run), "--resume", "--stop-at", "2"]) == 0  # no --plugin: the recorded one, said in one line
    err = capsys.readouterr().err
    assert f"--resume: loading plugin {plugin}, which {run / 'config.json'} records for recipe {NAME!r}\n" in err
    assert read_metrics(run, "train")[-1]["step"] == 2 and os.environ[PLUGIN_ENV] == str(plugin)  # and the processes it starts load it
    # edited since: a warning naming the file; the run goes on, and config.json records the code it ran with now
    plugin.write_text(plugin.read_text() + "\n# edited after the run began\n")
    _new_process(plugin, monkeypatch)
    changed = rf"the code of recipe '{NAME}' is not what \S+config.json recorded: {re.escape(str(plugin))} changed since \(sha256 {sha[:12]}\.\.\. then"
    with pytest.warns(PluginChangedWarning, match=changed):
        assert train_main([NAME, "--out", str(run), "--resume", "--stop-at", "3"]) == 0
    assert read_metrics(run, "train")[-1]["step"] == 3
    new_sha = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert json.loads((run / "config.json").read_text())["plugins"] == [{"path": str(plugin), "sha256": new_sha}]
    # --plugin given explicitly is compared too: the same code is quiet
    _new_process(plugin, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginChangedWarning)
        assert train_main([NAME, "--out", str(run), "--resume", "--stop-at", "4", "--plugin", str(plugin)]) == 0
    assert read_metrics(run, "train")[-1]["step"] == 4
    capsys.readouterr()
    # the Python API, with the config read back from the run: compared and recorded anew alike
    plugin.write_text(plugin.read_text() + "# edited again\n")
    _new_process(plugin, monkeypatch)
    load_plugins(str(plugin))
    with pytest.warns(PluginChangedWarning, match=rf"changed since \(sha256 {new_sha[:12]}\.\.\. then"):
        train(TrainConfig.from_json((run / "config.json").read_text()), resume=True)
    assert read_metrics(run, "train")[-1]["step"] == 5
    assert json.loads((run / "config.json").read_text())["plugins"][0]["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()


def test_a_recipe_imported_by_module_name_is_resumed_by_it(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], scratch_recipes: list[str]
) -> None:
    """`--plugin my_pkg.recipes`, a package module with a relative import: the run records the
    module's name beside its file, and a resume imports it by name (from its path alone, its
    relative import fails)."""
    pkg = tmp_path / "pkgroot" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("WARMUP = 1\n")
    (pkg / "recipes.py").write_text(
        "from controlfoley import RECIPES\nfrom controlfoley.train.recipes import ControlNetRecipe\n\nfrom .helper import WARMUP\n\n\n"
        "@RECIPES.register('pkg_recipe')\nclass PkgRecipe(ControlNetRecipe):\n    defaults = {'warmup_steps': WARMUP}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    monkeypatch.setenv(PLUGIN_ENV, "")
    scratch_recipes.append("pkg_recipe")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="controlnet recipe without --init"):
        assert train_main([*cli_args("pkg_recipe", data, run, "--plugin", "mypkg.recipes", steps=3), "--stop-at", "1"]) == 0
    [record] = json.loads((run / "config.json").read_text())["plugins"]
    assert record["module"] == "mypkg.recipes" and record["path"] == str((pkg / "recipes.py").resolve())
    RECIPES.unregister("pkg_recipe")  # as in a new shell
    for mod in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[mod]
    monkeypatch.setenv(PLUGIN_ENV, "")
    capsys.readouterr()
    assert train_main(["pkg_recipe", "--out", str(run), "--resume", "--stop-at", "2"]) == 0, capsys.readouterr().err
    assert "--resume: loading plugin mypkg.recipes, which" in capsys.readouterr().err
    assert read_metrics(run, "train")[-1]["step"] == 2


def test_a_run_records_the_plugin_of_its_models_parts_and_a_resume_loads_it(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A built-in recipe with a plugin's part (here a guidance rule): config.json records the part's
    file, and --resume without --plugin loads it before rebuilding the model (it failed with
    'unknown guidance')."""
    from controlfoley import GUIDANCE

    plugin = (tmp_path / "myguide.py").resolve()
    plugin.write_text(
        "from controlfoley import GUIDANCE\nfrom controlfoley.guidance import MultiCFG\n\n\n@GUIDANCE.register('my_multi')\n"
        "def my_multi(*, scale: float = 3.0, schedule: str = 'linear') -> MultiCFG:\n    return MultiCFG(scale=scale, schedule=schedule)\n"
    )
    monkeypatch.setenv(PLUGIN_ENV, "")
    run = tmp_path / "run"
    try:
        assert train_main([*cli_args("backbone", data, run, "--plugin", str(plugin), "--model", "guidance=my_multi", steps=3), "--stop-at", "1"]) == 0
        records = json.loads((run / "config.json").read_text())["plugins"]
        assert [r["path"] for r in records] == [str(plugin)]
        GUIDANCE.unregister("my_multi")  # as in a new shell
        for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(plugin)]:
            del sys.modules[mod]
        monkeypatch.setenv(PLUGIN_ENV, "")
        capsys.readouterr()
        assert train_main(["backbone", "--out", str(run), "--resume", "--stop-at", "2"]) == 0, capsys.readouterr().err
        assert f"--resume: loading plugin {plugin}, which {run / 'config.json'} records for its model's parts" in capsys.readouterr().err
        assert read_metrics(run, "train")[-1]["step"] == 2
        # `controlfoley info RUN` shows where the run's code came from, and whether it is still there
        assert cli_main(["info", str(run)]) == 0
        assert f"training run: recipe 'backbone'; plugin files it records (what --resume loads, for its recipe or its model's parts): {plugin} (as recorded)" in capsys.readouterr().out
        plugin.write_text(plugin.read_text() + "\n# edited\n")
        assert cli_main(["info", str(run)]) == 0
        assert f"{plugin} (changed since the run recorded it)" in capsys.readouterr().out
        # resumed with the edited file: the warning names what the file provides (a part), not the built-in recipe
        with pytest.warns(PluginChangedWarning, match=r"--resume: the code of guidance 'my_multi' is not what"):
            assert train_main(["backbone", "--out", str(run), "--resume", "--stop-at", "3"]) == 0, capsys.readouterr().err
    finally:
        if "my_multi" in GUIDANCE:
            GUIDANCE.unregister("my_multi")


def test_a_resumed_run_whose_plugin_is_gone_names_the_recorded_file_and_the_fix(
    data: Path, tmp_path: Path, plugin_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin, run = plugin_copy, tmp_path / "run"
    args = [NAME, "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(run), "--plugin", str(plugin)]
    (run / "config.json").parent.mkdir()
    assert train_main([*args, "--print-config"]) == 0
    (run / "config.json").write_text(capsys.readouterr().out)  # as a run writes it (a run killed before its first checkpoint)
    moved = plugin.rename(tmp_path.resolve() / "smoothed.py")
    _new_process(plugin, monkeypatch)
    assert train_main([NAME, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: --resume: the run in {run} uses code of recipe {NAME!r} from plugin file {plugin} ({run / 'config.json'} records it)" in err
    assert f"controlfoley train {NAME} --out {run} --resume --plugin NEW/PATH.py (or set {PLUGIN_ENV})" in err and "Traceback" not in err
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: every rank stops, one per node says it
    assert train_main([NAME, "--out", str(run), "--resume"]) == 2 and capsys.readouterr().err == ""
    monkeypatch.delenv("LOCAL_RANK")
    # `controlfoley info RUN` (no checkpoint yet: no model to show) still says what it records, and that it is gone
    assert cli_main(["info", str(run)]) == 2
    assert f"training run: recipe {NAME!r}; plugin files it records (what --resume loads, for its recipe or its model's parts): {plugin} (gone" in capsys.readouterr().err
    # `controlfoley info` of the run's config says where its recipe came from, and that it is gone
    assert cli_main(["info", str(run / "config.json")]) == 2
    err = capsys.readouterr().err
    assert f"is a training run's config (recipe {NAME!r}, from plugin {plugin} (gone: --resume needs --plugin NEW/PATH.py), options label_smoothing=0.1)" in err
    # moved with its contents: given its new place, quiet (the same code), and recorded there
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginChangedWarning)
        assert train_main([NAME, "--out", str(run), "--resume", "--print-config", "--plugin", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["plugins"] == [{"path": str(moved), "sha256": hashlib.sha256(moved.read_bytes()).hexdigest()}]
    assert cli_main(["info", str(run / "config.json")]) == 2  # the file as written: still the old place
    assert "(gone: --resume needs --plugin" in capsys.readouterr().err


@pytest.mark.distributed
def test_every_torchrun_rank_of_a_resumed_run_loads_its_recorded_plugin(
    data: Path, tmp_path: Path, no_plugin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torchrun ... -m controlfoley.train NAME --out RUN --resume` without --plugin: each rank reads
    the plugin from the run's config.json before its subcommands are made (a rank without it would
    refuse NAME), the line saying so comes once, and the run goes on on both ranks."""
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="controlnet recipe without --init"):
        assert train_main([*cli_args(NAME, data, run, "--plugin", str(EXAMPLE), steps=2, ckpt_every=1), "--stop-at", "1"]) == 0
    env = {k: v for k, v in cpu_env(OMP_NUM_THREADS="1").items() if k != PLUGIN_ENV}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "controlfoley.train"]
    proc = subprocess.run([*torchrun, NAME, "--out", str(run), "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count(f"--resume: loading plugin {EXAMPLE}") == 1, proc.stderr[-4000:]
    rows = read_metrics(run, "train")
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["entropy_masked"] > 0


# -- a recipe's own settings ---------------------------------------------------------------------------
def test_a_recipe_option_is_a_typed_flag_recorded_in_the_run_and_read_by_the_recipe(
    data: Path, tmp_path: Path, no_plugin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [NAME, "--plugin", str(EXAMPLE), "--preset", "specmaskfoley_tiny", "--data", str(data), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        train_main([*base, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "options of the controlnet_smoothed recipe:" in out
    assert "--label-smoothing LABEL_SMOOTHING share of each masked token's target spread uniformly over the codebook" in out and "[default: 0.1]" in out

    def printed(*extra: str) -> dict:
        assert train_main([*base, *extra, "--print-config"]) == 0
        return json.loads(capsys.readouterr().out)

    assert printed()["recipe_options"] == {"label_smoothing": 0.1}  # every option, its default filled in
    assert printed("--label-smoothing", "0.25")["recipe_options"] == {"label_smoothing": 0.25}
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({**printed("--label-smoothing", "0.3"), "steps": 7}))  # --config: the file's options, flags over them
    assert printed("--config", str(file))["recipe_options"] == {"label_smoothing": 0.3}
    assert printed("--config", str(file), "--label-smoothing", "0")["recipe_options"] == {"label_smoothing": 0.0}
    # a bad value: named by argparse (the type), or by the recipe's own check, before anything runs
    with pytest.raises(SystemExit):
        train_main([*base, "--label-smoothing", "high"])
    assert "argument --label-smoothing: invalid float value: 'high'" in capsys.readouterr().err
    assert train_main([*base, "--label-smoothing", "1.5"]) == 2
    assert f"error: train config: recipe {NAME!r} refuses --label-smoothing 1.5: label_smoothing must be in [0, 1), got 1.5" in capsys.readouterr().err
    for options, message in (({"label_smothing": 0.3}, "has no option(s) ['label_smothing'] ('label_smothing': did you mean 'label_smoothing'?); "
                              "its options: label_smoothing (--label-smoothing)"),
                             ({"label_smoothing": "0.3"}, "option label_smoothing (--label-smoothing) of recipe 'controlnet_smoothed' must be float, got '0.3' (str)")):  # fmt: skip
        file.write_text(json.dumps({"recipe_options": options}))
        assert train_main([*base, "--config", str(file)]) == 2
        assert message in capsys.readouterr().err
    # the recipe reads it: with no smoothing the loss it trains on is the plain cross-entropy (with
    # its default, 0.1, they differ)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="without --init"):
        assert train_main([*cli_args(NAME, data, run, "--plugin", str(EXAMPLE), "--label-smoothing", "0", steps=2), "--stop-at", "1"]) == 0
    row = read_metrics(run, "train")[-1]
    assert row["loss_smoothed"] == pytest.approx(row["loss"], rel=1e-6)
    assert json.loads((run / "config.json").read_text())["recipe_options"] == {"label_smoothing": 0.0}
    capsys.readouterr()
    # --resume keeps it; a flag that would change it is refused like any other setting
    assert train_main([NAME, "--out", str(run), "--resume", "--label-smoothing", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "these differ: recipe_options.label_smoothing: run 0.0 vs now 0.2. Drop those flags, or start a new --out" in err
    assert train_main([NAME, "--out", str(run), "--resume", "--label-smoothing", "0"]) == 0
    assert json.loads((run / "config.json").read_text())["recipe_options"] == {"label_smoothing": 0.0}
    assert len(read_metrics(run, "train")) == 2


def test_recipe_options_are_declared_checked_and_reach_the_recipe(scratch_recipes: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    class Opts(ControlNetRecipe):
        @dataclass(frozen=True)
        class Options:
            temperature: float = 1.0  # softmax temperature
            mode: Literal["sum", "mean"] = "sum"
            extra_loss: bool = False
            every: int | None = None
            note: str = field(default="x", metadata={"help": "a note"})

    RECIPES.register("opts_recipe")(Opts)
    scratch_recipes.append("opts_recipe")
    cfg = TrainConfig.for_recipe("opts_recipe", preset="p", data="d", out="o", recipe_options={"temperature": 2, "every": 5})
    assert cfg.recipe_options == {"temperature": 2.0, "mode": "sum", "extra_loss": False, "every": 5, "note": "x"}
    assert isinstance(cfg.recipe_options["temperature"], float)  # an int given for a float: that float, in config.json too
    opts = get_recipe("opts_recipe").options(cfg)
    assert isinstance(opts, Opts.Options) and (opts.temperature, opts.every) == (2.0, 5)
    assert get_recipe("controlnet").options(TrainConfig.for_recipe("controlnet", preset="p", data="d", out="o")) is None
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.resume_conflicts(cfg.replace(recipe_options={**cfg.recipe_options, "mode": "mean"})) == {"recipe_options.mode": ("sum", "mean")}
    with pytest.raises(ConfigError, match=r"option mode \(--mode\) of recipe 'opts_recipe' must be one of 'sum', 'mean', got 'avg'"):
        cfg.replace(recipe_options={"mode": "avg"})
    with pytest.raises(ConfigError, match=r"option extra_loss \(--extra-loss\) of recipe 'opts_recipe' must be bool, got 1 \(int\)"):
        cfg.replace(recipe_options={"extra_loss": 1})
    with pytest.raises(ConfigError, match=r"recipe 'controlnet' has no option\(s\) \['temperature'\]; its options: none \(its class declares no Options\)"):
        TrainConfig.for_recipe("controlnet", preset="p", data="d", out="o", recipe_options={"temperature": 1.0})
    # each is a flag of its type: choices, --x/--no-x, "none" for None, metadata["help"] or the comment
    args = ["opts_recipe", "--preset", "specmaskfoley_tiny", "--data", "d", "--out", "o", "--print-config"]
    assert train_main([*args, "--mode", "mean", "--extra-loss", "--every", "none", "--temperature", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe_options"] == {"temperature": 3.0, "mode": "mean", "extra_loss": True, "every": None, "note": "x"}
    with pytest.raises(SystemExit):
        train_main([*args, "--mode", "avg"])
    assert "argument --mode: invalid choice: 'avg' (choose from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main([*args, "--every", "2.5"])
    assert "argument --every: invalid int or none value: '2.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["opts_recipe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--temperature TEMPERATURE softmax temperature [default: 1.0]" in out and "--mode {sum,mean}" in out
    assert "--extra-loss, --no-extra-loss" in out and "--note NOTE a note [default: x]" in out


def test_options_a_command_line_cannot_take_are_refused_when_registered(scratch_recipes: list[str]) -> None:
    def recipe(options: object) -> type:
        return type("Bad", (ControlNetRecipe,), {"Options": options})

    @dataclass
    class NoDefault:
        rate: float

    @dataclass
    class ListOption:
        sizes: list[int] = field(default_factory=list)

    @dataclass
    class Clash:
        steps: int = 3

    @dataclass
    class Reserved:
        resume: bool = False

    @dataclass
    class BadDefault:
        rate: float = "high"  # type: ignore[assignment]

    @dataclass
    class Refuses:
        rate: float = 2.0

        def __post_init__(self) -> None:
            if self.rate > 1:
                raise ValueError("rate must be <= 1")

    cases = [
        ({"rate": 0.1}, r"recipe 'bad' \(Bad\): Options must be a dataclass of the recipe's settings .* or None, got \{'rate': 0.1\}"),
        (NoDefault, r"option rate has no default; every option needs one"),
        (ListOption, r"option sizes: list\[int\] is not a type a flag can take; declare it int, float, str or bool"),
        (Clash, r"option steps would take the flag --steps of a TrainConfig field; give the option another name"),
        (Reserved, r"option resume would take the flag --resume of an option of the command line"),
        (BadDefault, r"option rate: its default 'high' is not float"),
        (Refuses, r"Options\(\) refuses its own defaults: ValueError: rate must be <= 1"),
    ]
    for options, message in cases:
        with pytest.raises(RegistryError, match=message):
            RECIPES.register("bad")(recipe(options))
    assert "bad" not in RECIPES

    class Defaults(ControlNetRecipe):
        defaults = {"recipe_options": {"x": 1}}

    with pytest.raises(RegistryError, match=r"unknown TrainConfig field\(s\) \['recipe_options'\].*the fields of its Options dataclass"):
        RECIPES.register("bad")(Defaults)


def test_a_recipe_derived_from_a_recipe_with_options_adds_its_own_and_keeps_the_inherited_help(
    scratch_recipes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A subclass adds options by deriving its Options from its parent's: it has both, and the
    inherited ones keep the help written in the parent's source (not an empty one)."""

    class Parent(ControlNetRecipe):
        @dataclass(frozen=True)
        class Options:
            alpha: float = 0.5  # weight of the parent's extra term

    class Child(Parent):
        @dataclass(frozen=True)
        class Options(Parent.Options):
            beta: int = 2  # the child's own count

    RECIPES.register("parent_recipe")(Parent)
    scratch_recipes.append("parent_recipe")
    RECIPES.register("child_recipe")(Child)
    scratch_recipes.append("child_recipe")
    cfg = TrainConfig.for_recipe("child_recipe", preset="p", data="d", out="o", recipe_options={"alpha": 0.25})
    assert cfg.recipe_options == {"alpha": 0.25, "beta": 2}
    with pytest.raises(SystemExit):
        train_main(["child_recipe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--alpha ALPHA weight of the parent's extra term [default: 0.5]" in out and "--beta BETA the child's own count [default: 2]" in out

    class Replacing(Parent):  # its own Options, not derived: Parent's code would miss `alpha`
        @dataclass(frozen=True)
        class Options:
            beta: int = 2

    class Dropping(Parent):
        Options = None

    for klass in (Replacing, Dropping):
        with pytest.raises(RegistryError, match=r"replaces Parent.Options instead of deriving from it.*class Options\(Parent.Options\)"):
            RECIPES.register(f"{klass.__name__.lower()}_recipe")(klass)


# -- the ControlNet recipe trains the rows multi-CFG samples with (paper sec. 3.4, eq. 1) --------
# l_u = backbone alone with the unconditional mask; l_v = ControlNet + unconditional mask (the 90% of
# steps whose CLAP is dropped); l_tv = ControlNet + CLAP conditional mask (the other 10%).
def test_training_rows_are_the_multi_cfg_rows() -> None:
    from controlfoley.model import _RowPlan, masked_token_mask

    torch.manual_seed(0)
    model = build_model("specmaskfoley_tiny", **micro_overrides()).eval()
    with torch.no_grad():  # a trained-looking ControlNet: its zero-initialised linears made non-zero
        for p in [*model.controlnet.outs.parameters(), *model.controlnet.cond_in.parameters()]:
            p.normal_(0, 0.02)
    b = 3
    codes = torch.randint(0, model.backbone.vocab_size, (b, model.n_tokens))
    mask = masked_token_mask(b, model.n_tokens, torch.Generator().manual_seed(1), torch.device("cpu"))
    enc = model.control_encoder
    feats = {"sync": torch.randn(b, 12, enc.sync_dim), "clip": torch.randn(b, 4, enc.clip_dim)}
    clap = torch.randn(b, model.backbone.cond_dim)
    control = model.encode_control(feats)
    rows = _RowPlan(model.guidance.conditions, b, clap, None, control, torch.device("cpu"))
    with torch.no_grad():
        l_u, l_v, l_tv = model(codes.repeat(3, 1), mask.repeat(3, 1), **rows.kwargs).split(b)
        dropped = model(codes, mask, cond=clap, cond_on=torch.zeros(b, dtype=torch.bool), control=control)
        kept = model(codes, mask, cond=clap, cond_on=torch.ones(b, dtype=torch.bool), control=control)
        alone = model.backbone(codes, mask)
    torch.testing.assert_close(l_u, alone)
    torch.testing.assert_close(l_v, dropped)
    torch.testing.assert_close(l_tv, kept)
    assert not torch.allclose(l_v, l_u)


def test_the_controlnet_plan_drops_clap_for_whole_steps_at_the_paper_rate() -> None:
    model = build_model("specmaskfoley_tiny", **micro_overrides())
    cfg = TrainConfig.for_recipe("controlnet", preset="specmaskfoley_tiny", data="d", out="o")
    recipe = get_recipe("controlnet")
    drops = []
    for step in range(1000):
        on = recipe.plan(cfg, model, step, 8).rows["cond_on"]
        assert bool((on == on[0]).all())  # one draw per step ("90% of the training steps")
        drops.append(float(~on[0]))
    assert 0.86 < sum(drops) / len(drops) < 0.94
