"""The packages depend one way (issue 10): no cycle; tokenizer/ and foundation/ import no training code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("foundation", "tokenizer", "shards", "pretrain", "finetune", "benchmarks")


def imports_of(package: str) -> dict[str, set[str]]:
    """Top-level packages of the suite imported anywhere in ``package`` (also inside functions), by file."""
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = {n for n in names if n in PACKAGES and n != package}
    return found


def test_libraries_import_no_training_package():
    for package, forbidden in (("foundation", {"tokenizer", "shards", "pretrain", "finetune", "benchmarks"}),
                               ("tokenizer", {"pretrain", "finetune", "benchmarks"}),
                               ("shards", {"foundation", "tokenizer", "pretrain", "finetune", "benchmarks"})):
        bad = {f: sorted(names & forbidden) for f, names in imports_of(package).items() if names & forbidden}
        assert not bad, f"{package}/ imports {bad}"


def test_no_import_cycle_between_packages():
    graph = {p: set().union(*imports_of(p).values()) for p in PACKAGES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = [p for p in PACKAGES if reaches(p, p, {p})]
    assert not cycles, {p: sorted(graph[p]) for p in cycles}


def test_tokenizer_launcher_runs_the_training_entry(tmp_path):
    # As users start it (accelerate launch runs `python tokenizer/run.py`), from another folder.
    env = {**os.environ, "PYTHONPATH": ""}
    bad = subprocess.run([sys.executable, str(REPO / "tokenizer" / "run.py"), "--model.codebook", "3"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "tokenizer/run.py: error: unknown config key 'model.codebook'" in bad.stderr
