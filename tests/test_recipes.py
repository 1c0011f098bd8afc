"""Training recipes as a registry: a user recipe (examples/custom_recipe.py, loaded as a plugin)
trains by name through the command line, logs its own statistic, resumes, and without its plugin
is named with how to load it; unknown names list the registered ones; bad registrations are refused."""

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train import write_data
from test_train_usability import cli_args

from controlfoley import RECIPES, RegistryError
from controlfoley._registry import PLUGIN_ENV, PluginError, load_plugins
from controlfoley.cli import main as cli_main
from controlfoley.config import ConfigError
from controlfoley.train import TrainConfig
from controlfoley.train.cli import main as train_main
from controlfoley.train.config import RECIPE_DEFAULTS, RecipeError
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
    """The example's recipe not loaded, and no plugin in the environment (the command line sets it)."""
    monkeypatch.delenv(PLUGIN_ENV, raising=False)
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
    # a process without the plugin: the run's recipe is named, with how to load it
    _forget(NAME, EXAMPLE)
    monkeypatch.delenv(PLUGIN_ENV)
    assert train_main([NAME, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"unknown recipe {NAME!r}" in err and "--plugin" in err and PLUGIN_ENV in err and "Traceback" not in err
    assert train_main(["controlnet", "--out", str(run), "--resume"]) == 2  # another recipe's name: its config.json is read
    err = capsys.readouterr().err
    assert f"--resume: the run in {run} uses recipe {NAME!r}, which is not registered (load the plugin that registered it): unknown recipe {NAME!r}" in err
    assert "--plugin" in err and "Did you mean" not in err  # not the name just typed
    with pytest.raises(RecipeError, match=rf"unknown recipe '{NAME}'.*--plugin"):  # the Python API's resume reads the same file
        TrainConfig.from_json((run / "config.json").read_text())
    assert cli_main(["--plugin", str(EXAMPLE), "train", NAME, "--out", str(run), "--resume"]) == 0  # with it: nothing left to do
    err = capsys.readouterr().err
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

    with pytest.raises(RegistryError, match=r"defaults name unknown TrainConfig field\(s\) \['warmup'\] \('warmup': did you mean 'warmup_steps'\?\)"):
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
