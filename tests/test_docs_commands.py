"""Every command and import the documentation shows works: the docs check.

Each shell command of a fenced ``bash`` block in ``README.md`` and ``docs/**/*.md`` is either

- run by a named test or by CI (``RUN_BY``: the test must exist), or
- parsed by the real entry point, without running it: ``python -m M ...`` / ``python path.py ...`` call the
  module's ``main(argv)`` with every argument parser stopped right after it parsed (argparse, and
  ``runtime.configfile.parse_cli`` for the config-file entry points), so every option the docs spell must exist
  and take the value shown; ``accelerate launch`` options go through Accelerate's own parser first, and
  ``pip install`` may name only this project's extras and the torch version CI pins.

A command of any other program fails the check. Each ``python`` block must parse, and every name it imports must
import (a module of an optional extra that is not installed is skipped with the reason).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(p for p in (REPO / "docs").rglob("*.md") if "hooks" not in p.parts)])

# Commands the docs show that a test or CI runs for real (parsing them would prove little).
RUN_BY = {
    "python -m pytest": ".ci/run",
    "mkdocs build --strict": "tests/test_docs_build.py::test_the_site_builds_with_warnings_as_errors",
}
# Placeholders the docs use in shell variables, with a value of the shape the option parses.
SHELL_VARIABLES = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}
# Environment variables a command may set in front of it.
ENVIRONMENT = {"OMP_NUM_THREADS", "ACCELERATE_USE_CPU", "EEGFM_SCAN_BACKEND", "EEGFM_DEBUG", "HF_HUB_OFFLINE"}
# Packages of optional extras: a docs import that needs one is skipped when it is not installed.
OPTIONAL = ("braindecode", "skorch", "mne_bids", "mamba_ssm", "causal_conv1d", "triton", "moabb")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def fenced_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """``(first line number, text)`` of every ```` ```language ```` block of a Markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def shell_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        rel = page.relative_to(REPO).as_posix()
        for start, block in fenced_blocks(page, "bash"):
            logical: list[tuple[int, str]] = []
            for n, line in enumerate(block.splitlines()):
                if logical and logical[-1][1].endswith("\\"):
                    logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line.strip())
                else:
                    logical.append((start + n, line))
            for n, line in logical:
                words = shlex.split(line, comments=True)
                for part in " ".join(shlex.quote(w) if w != "&&" else w for w in words).split(" && "):
                    if part.strip():
                        commands.append(Command(rel, n, part.strip()))
    return commands


def python_blocks() -> list[tuple[str, str]]:
    return [(f"{p.relative_to(REPO).as_posix()}:{start}", text) for p in PAGES for start, text in fenced_blocks(p, "python")]


COMMANDS = shell_commands()


# ------------------------------------------------------------------------------------------- parsing, not running
class Parsed(BaseException):
    """Raised by the patched parsers once the command line is parsed: the entry point stops there."""


@contextlib.contextmanager
def parse_only(module):
    """Within it, the first argument parser an entry point runs raises ``Parsed`` instead of returning."""
    from runtime import configfile

    real_parse_args = argparse.ArgumentParser.parse_args
    real_parse_known = argparse.ArgumentParser.parse_known_args
    depth = [0]

    def outermost(real):
        # parse_args calls parse_known_args, and a subcommand's parser runs inside its parent's: only the call
        # the entry point made stops it, after argparse has checked everything (leftover arguments included).
        def parse(self, args=None, namespace=None):
            depth[0] += 1
            try:
                result = real(self, args, namespace)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise Parsed(result)
            return result
        return parse

    real_parse_cli = configfile.parse_cli

    def parse_cli(*args, **kwargs):
        raise Parsed(real_parse_cli(*args, **kwargs))

    patched = [(m, "parse_cli") for m in list(sys.modules.values())
               if getattr(m, "parse_cli", None) is real_parse_cli]
    argparse.ArgumentParser.parse_args = outermost(real_parse_args)
    argparse.ArgumentParser.parse_known_args = outermost(real_parse_known)
    for m, name in patched:
        setattr(m, name, parse_cli)
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = real_parse_args
        argparse.ArgumentParser.parse_known_args = real_parse_known
        for m, name in patched:
            setattr(m, name, real_parse_cli)


def entry_module(target: str, as_module: bool) -> str:
    if as_module:
        spec = importlib.util.find_spec(target)
        assert spec is not None, f"no module {target}"
        return f"{target}.__main__" if spec.submodule_search_locations else target
    path = Path(target)
    assert (REPO / path).is_file() and path.suffix == ".py", f"no script {target} in the repository"
    return ".".join(path.with_suffix("").parts)


def parse_python(command: Command, argv: list[str]) -> None:
    """``python -m M args`` or ``python script.py args``: the entry point parses ``args`` and accepts them."""
    if argv[:1] == ["-m"]:
        module, args = entry_module(argv[1], as_module=True), argv[2:]
    else:
        module, args = entry_module(argv[0], as_module=False), argv[1:]
    main = getattr(importlib.import_module(module), "main", None)
    assert callable(main), f"{command}: {module} has no main(argv)"
    err = io.StringIO()
    with parse_only(module), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = main(args)
        except Parsed:
            result = None
        except SystemExit as exit_:
            result = f"exit {exit_.code}"
    if result is None:
        # the suite's entry points read a dashed spelling with a notice; the docs spell options as the keys
        assert "note: options are spelled" not in err.getvalue(), f"{command}: {err.getvalue().strip()}"
        return
    pytest.fail(f"{command}: the entry point did not accept its arguments ({result}): {err.getvalue().strip()[-800:]}")


def check_accelerate(command: Command, argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert argv[:1] == ["launch"], f"{command}: only `accelerate launch` is checked"
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            args = launch_command_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{command}: accelerate launch rejects its options: {err.getvalue().strip()}")
    if args.config_file:
        assert (REPO / args.config_file).is_file(), f"{command}: no {args.config_file}"
    script = ["-m", args.training_script] if args.module else [args.training_script]
    parse_python(command, script + list(args.training_script_args))


def check_pip(command: Command, argv: list[str]) -> None:
    assert argv[:1] == ["install"], f"{command}: only `pip install` is checked"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    pinned = re.search(r"pip install -q (torch==\S+)", (REPO / ".ci" / "run").read_text()).group(1)
    for arg in argv[1:]:
        if arg in ("-e", "-q", "-U"):
            continue
        m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", arg)
        if m:
            unknown = set((m.group(1) or "").split(",")) - extras - {""}
            assert not unknown, f"{command}: no extra {sorted(unknown)} in pyproject.toml (extras: {sorted(extras)})"
        elif arg.startswith("torch=="):
            assert arg == pinned, f"{command}: CI installs {pinned}, the docs {arg}"
        else:
            pytest.fail(f"{command}: pip installs {arg!r}, which is neither this project nor the pinned torch")


def check_run_by(command: Command) -> None:
    where = RUN_BY[command.text]
    path, _, test = where.partition("::")
    assert (REPO / path).is_file(), f"{command}: {path} does not exist"
    if test:
        assert re.search(rf"^def {re.escape(test)}\(", (REPO / path).read_text(), re.M), f"{command}: no {where}"
    else:  # .ci/run runs the README's test command
        assert "<!-- command: tests -->" in (REPO / path).read_text()


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_command_in_the_docs_exists_with_the_options_it_shows(command, monkeypatch, tmp_path):
    if command.text in RUN_BY:
        return check_run_by(command)
    words = shlex.split(command.text)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        name = words.pop(0).split("=")[0]
        assert name in ENVIRONMENT, f"{command}: unknown environment variable {name}"
    unknown = set(re.findall(r"\$\{?(\w+)", " ".join(words))) - set(SHELL_VARIABLES)
    assert not unknown, f"{command}: shell variables without an example value: {sorted(unknown)}"
    words = [re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VARIABLES[m.group(1)], w) for w in words]
    program, argv = words[0], words[1:]
    monkeypatch.chdir(REPO)  # the docs' relative paths (pretrain/configs/...) are from the repository root
    if program == "python":
        parse_python(command, argv)
    elif program == "accelerate":
        check_accelerate(command, argv)
    elif program == "pip":
        check_pip(command, argv)
    else:
        pytest.fail(f"{command}: unknown program {program!r}: add a check for it or name the test that runs it in RUN_BY")


def test_the_docs_show_commands_and_the_check_finds_them():
    texts = {c.text for c in COMMANDS}
    assert len(COMMANDS) >= 40, len(COMMANDS)
    # the README's two commands are among them, split at &&
    assert {"pip install -e '.[dev]'", "python -m pytest"} <= texts, sorted(texts)[:20]
    assert any(t.startswith("accelerate launch --config_file pretrain/configs/accelerate.yaml pretrain/run.py") for t in texts)


def test_the_parse_check_rejects_an_option_that_does_not_exist(monkeypatch):
    monkeypatch.chdir(REPO)
    for text in ("python -m shards build synth --root r --out o --window-length 4",
                 "accelerate launch pretrain/run.py --optim.learning_rate 1e-3",
                 "accelerate launch finetune/run.py --recipe sleep --no_such_key 1"):
        words = shlex.split(text)
        check = check_accelerate if words[0] == "accelerate" else parse_python
        with pytest.raises(pytest.fail.Exception, match="did not accept"):
            check(Command("test", 0, text), words[1:])


# ------------------------------------------------------------------------------------------------- Python blocks
PYTHON_BLOCKS = python_blocks()


def imported_names(source: str) -> list[tuple[str, str | None]]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [(node.module, a.name) for a in node.names]
    return names


@pytest.mark.parametrize("where, source", PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_every_python_block_parses_and_its_imports_exist(where, source, monkeypatch):
    monkeypatch.chdir(REPO)
    names = imported_names(source)  # a syntax error fails here
    for module, name in names:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            missing = [p for p in OPTIONAL if p in str(err) and importlib.util.find_spec(p) is None]
            if missing:
                pytest.skip(f"{where}: {module} needs the optional package {missing[0]}, not installed")
            raise AssertionError(f"{where}: import {module} fails: {err}") from err
        if name is not None and not hasattr(mod, name):
            assert importlib.util.find_spec(f"{module}.{name}") is not None, f"{where}: {module} has no {name}"


def test_the_python_blocks_import_the_suite():
    modules = {m.split(".")[0] for _, src in PYTHON_BLOCKS for m, _ in imported_names(src)}
    assert {"shards", "foundation", "tokenizer", "finetune", "benchmarks"} <= modules, modules
