"""The shell commands the documentation shows parse with the real command line.

README.md, CONTRIBUTING.md, docs/*.md and the docstrings of examples/*.py show `controlfoley ...`
command lines (also as `python -m controlfoley ...`, `torchrun ... -m controlfoley ...`) in fenced
code blocks and indented examples, and `make TARGET` lines (the Makefile's own controlfoley command,
which `make demo` runs, is checked too). Every such command is parsed here by
the argument parser of the subcommand it names, reached the way the `controlfoley` program reaches
it (`controlfoley.cli.main`: `--plugin` loading, the dispatch to the module that owns the
subcommand, `train`'s check of the recipe name, `bench`'s reordering of its positional), and
stopped right after parsing: `argparse.ArgumentParser.parse_args` is wrapped so that the first,
outermost parse raises once it has parsed, and nothing after it (model loading, training,
sampling) runs. An unknown flag, a value outside a flag's choices, a missing required argument, an
unknown subcommand or recipe, or a plugin that does not load fails, naming the file, line and
command. So does a name the parsed command gives that nothing registers (with its plugins loaded):
a preset, the part names of its `--model` overrides, an extractor, vocoder or guidance rule.

Conventions of the docs, as a reader takes them:
- a line ending in `\\` continues on the next; a trailing `# comment` is not part of the command;
- `...` stands for arguments left out: the token is dropped and the command is not held to its
  required arguments (`controlfoley extract ... --resume`), but every flag it does show must exist;
- placeholders (`NAME_SYNC,NAME_CLIP`, `DIR`) are passed as they are: argparse takes any string,
  and the check of registered names leaves names in capitals alone;
- flags are spelled out: an abbreviation argparse would take (`--overw`) fails here;
- each command is parsed as a fresh process would see it: plugins it loads (`--plugin FILE`) are
  forgotten after it, and `CONTROLFOLEY_PLUGINS` is not set;
- `controlfoley train RECIPE ... --resume` of a recipe that an example registers is parsed with
  that example loaded, as the CLI loads it from the run's config.json.
Commands run from a scratch folder that links `examples/` (relative `--plugin examples/x.py` paths
work, and no run folder of the checkout is read).
"""

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SHELL_FENCES = {"", "sh", "bash", "shell", "console", "text"}  # fenced blocks whose lines may be commands
ELLIPSIS = "..."


@dataclass(frozen=True)
class Command:
    """One command line of the docs: where it is, as written, and what it runs."""

    file: str  # relative to the checkout
    line: int  # its first line
    text: str  # as written (continuations joined, comment dropped)
    program: str  # "controlfoley" or "make"
    argv: tuple[str, ...]  # the program's arguments (`...` dropped)
    elided: bool  # it had `...`: arguments left out
    env: tuple[tuple[str, str], ...] = ()  # leading NAME=VALUE assignments
    shell_error: str = ""  # why a line that starts a command is not valid shell (an unbalanced quote)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


# -- collecting --------------------------------------------------------------------------------

_PYTHONS = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$|^\$\(VPY\)$")  # python, python3, .venv/bin/python, /usr/bin/python3.11
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _command(tokens: list[str]) -> tuple[str, list[str], list[tuple[str, str]]] | None:
    """(program, its arguments, env assignments) of a shell line's tokens, or None where the line
    runs neither controlfoley nor make. `python -m controlfoley.train X` is `controlfoley train X`."""
    env = []
    while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env.append((name, value))
    if not tokens:
        return None
    head = tokens[0]
    if head == "controlfoley":
        return "controlfoley", tokens[1:], env
    if head == "make":
        return "make", tokens[1:], env
    if _PYTHONS.match(head) or head == "torchrun":  # `python [opts] -m MODULE` / `torchrun [opts] -m MODULE`
        if "-m" not in tokens[:-1]:
            return None
        i = tokens.index("-m")
        module, rest = tokens[i + 1], tokens[i + 2 :]
        if module == "controlfoley":
            return "controlfoley", rest, env
        if module == "controlfoley.train":  # the training command's own entry point (torchrun's)
            return "controlfoley", ["train", *rest], env
    return None


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(first line number, text) with `\\`-continued lines joined."""
    buf: list[str] = []
    start = 0
    for number, raw in lines:
        text = raw.strip()
        if not buf:
            start = number
        if text.endswith("\\"):
            buf.append(text[:-1].strip())
            continue
        buf.append(text)
        yield start, " ".join(b for b in buf if b)
        buf = []
    if buf:
        yield start, " ".join(b for b in buf if b)


def _commands_of(file: Path, lines: list[tuple[int, str]]) -> list[Command]:
    out = []
    for number, text in _logical_lines(lines):
        if text.startswith("$ "):
            text = text[2:]
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError as e:  # a command a reader cannot paste (an unbalanced quote)
            if _starts_command(text):
                out.append(Command(str(file.relative_to(ROOT)), number, text, "controlfoley", (), False, shell_error=str(e)))
            continue
        shown = shlex.join(tokens)
        found = _command(tokens)
        if found is None:
            continue
        program, args, env = found
        out.append(
            Command(
                str(file.relative_to(ROOT)), number, shown, program, tuple(a for a in args if a != ELLIPSIS), ELLIPSIS in args, tuple(env)
            )
        )
    return out


def _starts_command(text: str) -> bool:
    first = text.strip().removeprefix("$ ").split(" ", 1)[0]
    return first in ("controlfoley", "make", "torchrun") or bool(_PYTHONS.match(first)) or bool(_ENV_ASSIGNMENT.match(first))


def _indented_examples(numbered: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines indented by 4 or more spaces that start a command, with their `\\` continuations."""
    picked: list[tuple[int, str]] = []
    continuing = False
    for number, raw in numbered:
        if continuing or (raw.startswith("    ") and _starts_command(raw)):
            picked.append((number, raw))
            continuing = raw.rstrip().endswith("\\")
    return picked


def markdown_commands(file: Path) -> list[Command]:
    """Commands in the file's shell-like fenced blocks and in its indented code outside fences."""
    fenced: list[tuple[int, str]] = []
    outside: list[tuple[int, str]] = []
    fence: str | None = None  # the info string of the open fence
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", raw)
        if m:
            fence = m.group(2).lower() if fence is None else None
            continue
        if fence is None:
            outside.append((number, raw))
        elif fence in SHELL_FENCES:
            fenced.append((number, raw))
    return _commands_of(file, fenced) + _commands_of(file, _indented_examples(outside))


def docstring_commands(file: Path) -> list[Command]:
    """Commands in the indented examples of a script's module docstring."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    node = tree.body[0] if tree.body else None
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
        return []
    numbered = list(enumerate(node.value.value.splitlines(), node.lineno))  # the docstring opens on the line of its quotes
    return _commands_of(file, _indented_examples(numbered))


def makefile_commands(file: Path) -> list[Command]:
    """The controlfoley commands of the Makefile's recipes (`$(VPY) -m controlfoley demo ...`: what
    `make demo` runs); its `make` lines are not documentation and are left out."""
    recipes = [(n, raw) for n, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), 1) if raw.startswith("\t")]
    return [c for c in _commands_of(file, recipes) if c.program == "controlfoley"]


def all_commands() -> list[Command]:
    found = [c for f in MARKDOWN for c in markdown_commands(f)]
    return found + [c for f in EXAMPLES for c in docstring_commands(f)] + makefile_commands(ROOT / "Makefile")


COMMANDS = all_commands()
CLI_COMMANDS = [c for c in COMMANDS if c.program == "controlfoley"]


# -- parsing -----------------------------------------------------------------------------------


class _Parsed(Exception):
    """Raised by the wrapped parse_args once the command line parsed: nothing after it runs."""


def _strict(parser: argparse.ArgumentParser, relax: bool) -> None:
    """`parser` and its subcommands' parsers take no abbreviated flag (the docs spell flags out: a
    flag renamed to a longer one must not keep an old spelling alive as its prefix), and with
    `relax` (a command with `...`, whose required arguments may be among those left out) no argument
    is required. Subcommand choices stay required."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub, relax)
        elif relax:
            action.required = False
    for group in parser._mutually_exclusive_groups if relax else []:
        group.required = False


@contextlib.contextmanager
def _stop_after_parsing(relax: bool) -> Iterator[None]:
    """The outermost `parse_args` / `parse_known_args` (subcommand parsers nest inside it) raises
    `_Parsed` once it parsed; argparse's errors (SystemExit) come through as they would."""
    real_args, real_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = [0]

    def call(real: Callable[..., Any], self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        outer = depth[0] == 0
        if outer:
            _strict(self, relax)
        depth[0] += 1
        try:
            result = real(self, *a, **k)
        finally:
            depth[0] -= 1
        if outer:
            raise _Parsed(result[0] if isinstance(result, tuple) else result)  # parse_known_args: (namespace, extras)
        return result

    argparse.ArgumentParser.parse_args = lambda self, *a, **k: call(real_args, self, *a, **k)  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = lambda self, *a, **k: call(real_known, self, *a, **k)  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real_args  # type: ignore[method-assign]
        argparse.ArgumentParser.parse_known_args = real_known  # type: ignore[method-assign]


@contextlib.contextmanager
def _as_a_fresh_process(env: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """The registries' user entries, the plugin modules and CONTROLFOLEY_PLUGINS as they were before
    the block: a command's `--plugin` does not leak into the next one (each is its own process)."""
    from controlfoley import ALL_REGISTRIES
    from controlfoley._registry import PLUGIN_ENV, PLUGIN_MODULE_PREFIX

    before = {kind: set(reg.names()) for kind, reg in ALL_REGISTRIES.items()}  # names() loads the built-ins first
    modules = set(sys.modules)
    saved = dict(os.environ)
    os.environ.pop(PLUGIN_ENV, None)
    os.environ.update(dict(env))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for kind, reg in ALL_REGISTRIES.items():
            for name in set(reg.names()) - before[kind]:
                if not str(getattr(reg.get(name), "__module__", "")).startswith("controlfoley."):  # a plugin's, not a lazily imported built-in
                    reg.unregister(name)
        for module in [m for m in sys.modules if m.startswith(PLUGIN_MODULE_PREFIX) and m not in modules]:
            del sys.modules[module]


def _example_registering(kind: str, name: str) -> Path | None:
    """The example script that registers `name` in the registry `kind` (e.g. RECIPES)."""
    pattern = re.compile(rf"\b{kind}\.register\(\s*[\"']{re.escape(name)}[\"']")
    return next((f for f in EXAMPLES if pattern.search(f.read_text(encoding="utf-8"))), None)


def _resumed_plugin(argv: tuple[str, ...]) -> Path | None:
    """`train RECIPE ... --resume` (or --auto-resume) of a recipe an example registers, with no
    --plugin: the example, which the run's config.json would name for the CLI to load."""
    from controlfoley.cli import _take_plugins
    from controlfoley.train.config import RECIPES

    plugins, rest = _take_plugins(list(argv))
    if plugins or len(rest) < 2 or rest[0] != "train" or not ({"--resume", "--auto-resume"} & set(rest)) or rest[1] in RECIPES:
        return None
    return _example_registering("RECIPES", rest[1])


_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # NAME_SYNC, DIR: a name for the reader to fill in


def _names_error(args: argparse.Namespace) -> str | None:
    """What the parsed command names that is not registered (with its plugins loaded): the preset
    (`--preset`, or a `--model` / PRESET_OR_CHECKPOINT that is a name rather than a path), the
    `--model KEY=VALUE` overrides on it (part names resolved as `model_config` resolves them, no
    weights built), extractors (`--extractors`, `--extractor [KEY=]NAME,...`, `--clap`,
    `--text-encoder`), `--vocoder` and `--guidance`. Placeholders (all capitals) are left alone."""
    from controlfoley import EXTRACTORS, GUIDANCE, PRESETS, VOCODERS
    from controlfoley.builder import model_config
    from controlfoley.config import parse_overrides, parse_spec

    given = vars(args)
    problems = []

    def unknown(registry: Any, spec: str, flag: str) -> None:
        name = parse_spec(spec)[0]
        if not _PLACEHOLDER.match(name) and name not in registry:
            problems.append(f"{flag} {spec!r}: no {registry.kind} {name!r} is registered ({', '.join(registry.names())})")

    try:
        base = given.get("preset") or given.get("model")
        is_name = isinstance(base, str) and "/" not in base and "." not in base and not _PLACEHOLDER.match(base)
        if is_name:
            unknown(PRESETS, str(base), "preset")
        overrides = parse_overrides(given.get("model_overrides") or given.get("overrides") or [])
        if overrides and is_name and base in PRESETS:
            model_config(str(base), **overrides)
        for flag, key, registry in (("--extractors", "extractors", EXTRACTORS), ("--clap", "clap", EXTRACTORS),
                                    ("--text-encoder", "text_encoder", EXTRACTORS), ("--vocoder", "vocoder", VOCODERS),
                                    ("--guidance", "guidance", GUIDANCE)):  # fmt: skip
            value = given.get(key)
            for spec in value.split(",") if key == "extractors" and isinstance(value, str) else [value] if isinstance(value, str) else []:
                if spec.strip():
                    unknown(registry, spec, flag)
        for item in given.get("extractor") or []:  # [KEY=]NAME[,ARG=VALUE...]
            head, sep, rest = item.partition(",")
            unknown(EXTRACTORS, head.split("=", 1)[-1] + sep + rest, "--extractor")
    except Exception as e:  # noqa: BLE001  (a malformed override or spec: the finding)
        problems.append(f"{type(e).__name__}: {e}")
    return "; ".join(problems) or None


def parse_error(cmd: Command) -> str | None:
    """None where `controlfoley` parses the command line, else what it said."""
    from controlfoley._registry import load_plugins
    from controlfoley.cli import main

    err = io.StringIO()
    with _as_a_fresh_process(cmd.env), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            plugin = _resumed_plugin(cmd.argv)
            if plugin is not None:
                load_plugins(str(plugin), source="the run's config.json (as --resume loads it)")
            with _stop_after_parsing(relax=cmd.elided):
                status = main(list(cmd.argv))
        except _Parsed as parsed:
            return _names_error(parsed.args[0])
        except SystemExit as e:  # argparse: --help exits 0, an error 2
            return None if e.code in (0, None) else _last_line(err.getvalue()) or f"exit status {e.code}"
        except Exception as e:  # noqa: BLE001  (anything else is the finding; say what it was)
            return f"{type(e).__name__}: {e} {_last_line(err.getvalue())}".strip()
    return f"it did not parse (exit status {status}): {_last_line(err.getvalue())}"


def _last_line(text: str) -> str:
    """The message of argparse's usage + error, or of a one-line error the CLI printed."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with examples/ linked in: what the docs' relative paths need, and nothing else."""
    folder = tmp_path_factory.mktemp("docs_cwd")
    (folder / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return folder


# -- the tests ---------------------------------------------------------------------------------


def test_the_docs_show_commands_to_check() -> None:
    """The collection itself works: the files that show commands give some (a regression here would
    make every other test pass on nothing)."""
    by_file = {c.file for c in CLI_COMMANDS}
    assert {"README.md", "docs/DATA.md", "examples/custom_recipe.py", "examples/tokenizer_1d.py"} <= by_file, by_file
    subcommands = {c.argv[c.argv.index("--plugin") + 2 if c.argv[:1] == ("--plugin",) else 0] for c in CLI_COMMANDS}
    assert {"generate", "extract", "train", "evaluate", "bench"} <= subcommands, subcommands
    assert any(c.text.startswith("torchrun") for c in CLI_COMMANDS)
    assert any(c.elided for c in CLI_COMMANDS)
    joined = [c for c in CLI_COMMANDS if c.file == "README.md" and "--codebook-restart-every" in c.argv]
    assert joined and "conv1d_vq" in " ".join(joined[0].argv)  # a `\` continuation joined to its line


def test_every_documented_command_parses(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controlfoley._registry import PLUGIN_ENV

    monkeypatch.delenv(PLUGIN_ENV, raising=False)
    monkeypatch.chdir(scratch)
    failures = [f"{cmd}\n    -> {cmd.shell_error or error}" for cmd in CLI_COMMANDS if cmd.shell_error or (error := parse_error(cmd)) is not None]
    assert not failures, f"{len(failures)} of {len(CLI_COMMANDS)} documented commands do not parse:\n" + "\n".join(failures)


def test_the_check_fails_on_a_broken_command(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the check catches: each kind of mistake, on a copy of a documented command."""
    monkeypatch.chdir(scratch)
    gen = next(c for c in CLI_COMMANDS if c.argv[:1] == ("generate",))
    plugin_recipe = next(c for c in CLI_COMMANDS if "controlnet_smoothed" in c.argv and "--plugin" in c.argv)
    resumed = next(c for c in CLI_COMMANDS if "controlnet_smoothed" in c.argv and "--plugin" not in c.argv)
    extract_elided = next(c for c in CLI_COMMANDS if c.argv[:1] == ("extract",) and c.elided)
    assert parse_error(gen) is None and parse_error(plugin_recipe) is None and parse_error(resumed) is None
    assert parse_error(extract_elided) is None  # required arguments left out with `...` are fine

    def broken(cmd: Command, argv: list[str], elided: bool | None = None) -> str:
        error = parse_error(Command(cmd.file, cmd.line, shlex.join(argv), cmd.program, tuple(argv), cmd.elided if elided is None else elided))
        assert error is not None, f"not caught: {argv}"
        return error

    assert "unrecognized arguments: --no-such-flag" in broken(gen, [*gen.argv, "--no-such-flag"])
    assert "unrecognized arguments: --overw" in broken(gen, [*gen.argv, "--overw"])  # the CLI takes the prefix; the docs spell it out
    assert "invalid choice: 'ogg'" in broken(gen, [*gen.argv, "--format", "ogg"])
    assert "required: --out" in broken(gen, [a for i, a in enumerate(gen.argv) if "--out" not in gen.argv[max(i - 1, 0) : i + 1]])
    assert "invalid choice: 'generat'" in broken(gen, ["generat", *gen.argv[1:]])
    assert "controlnet_smothed" in broken(plugin_recipe, [a.replace("controlnet_smoothed", "controlnet_smothed") for a in plugin_recipe.argv])
    # the recipe's own option exists only with its plugin loaded
    no_plugin = list(plugin_recipe.argv)
    del no_plugin[no_plugin.index("--plugin") : no_plugin.index("--plugin") + 2]
    assert "unknown recipe 'controlnet_smoothed'" in broken(plugin_recipe, no_plugin)
    assert "--label-smoothing" in broken(plugin_recipe, ["train", "controlnet", *no_plugin[2:]])
    assert "no preset 'specmaskfoley_tinyy'" in broken(gen, [*gen.argv, "--model", "specmaskfoley_tinyy"])
    assert "no extractor 'clip_opencip'" in broken(gen, [*gen.argv, "--extractor", "clip=clip_opencip,weights=c.safetensors"])
    assert "unknown tokenizer 'conv1d_vqq'" in broken(plugin_recipe, [*plugin_recipe.argv, "--model", "tokenizer=conv1d_vqq"])
    assert "unrecognized arguments: --no-such-flag" in broken(extract_elided, [*extract_elided.argv, "--no-such-flag"])
    assert "arguments are required: --preset, --out" in broken(extract_elided, list(extract_elided.argv), elided=False)
    # a broken line of a doc file is reported with its file and line; so is one that is not shell
    text = "```\ncontrolfoley bench specmaskfoley_tiny \\\n    --precision fp16\ncontrolfoley generate a.mp4 --prompt 'bell --out o/\n```\n"
    (scratch / "BROKEN.md").write_text(text, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", scratch)
    cmd, unquoted = markdown_commands(scratch / "BROKEN.md")
    assert str(cmd).startswith("BROKEN.md:2: controlfoley bench") and "invalid choice: 'fp16'" in (parse_error(cmd) or "")
    assert str(unquoted).startswith("BROKEN.md:4: controlfoley generate") and "quotation" in unquoted.shell_error


def test_the_make_targets_the_docs_name_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.MULTILINE))
    named = [(c, a) for c in COMMANDS if c.program == "make" for a in c.argv if not a.startswith("-") and "=" not in a]
    for file in MARKDOWN:  # and `make TARGET` in running text
        text = file.read_text(encoding="utf-8")
        for m in re.finditer(r"`make ([A-Za-z0-9_.-]+)", text):
            line = text.count("\n", 0, m.start()) + 1
            named.append((Command(str(file.relative_to(ROOT)), line, m.group(0).strip("`"), "make", (m.group(1),), False), m.group(1)))
    assert any(c.file == "README.md" for c, _ in named)
    missing = [f"{c}: no target {t!r} in the Makefile" for c, t in named if t not in targets]
    assert not missing, "\n".join(missing)
