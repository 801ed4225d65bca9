"""One signal contract: every default rate, patch length, unit and task id of the suite refers to its owner
(``runtime.signal`` for rate / patch / units, ``foundation.tasks`` for task ids); a literal copy fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from runtime import signal

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "foundation", "tokenizer", "shards", "pretrain", "finetune", "benchmarks")
OWNERS = {"runtime/signal.py", "foundation/tasks.py"}
# Parameters and fields whose default is the suite's rate or patch length.
RATE_OR_PATCH = {"sfreq", "patch_size", "patch_samples", "n_fft"}
CONTRACT_NAMES = {"SFREQ", "PATCH_SAMPLES", "PATCH_SIZE", "UNIT_UV", "UNIT_SCALE", "UNITS"}
CONTRACT_VALUES = {signal.SFREQ, signal.PATCH_SAMPLES, signal.UNIT_UV, signal.UNIT_SCALE, signal.UNITS}
# tokenizer/spectral.py still spells its STFT defaults out (n_fft, and sfreq twice); its values are checked
# against the owner in test_defaults_agree_with_the_owner until they refer to it.
SPELLED_OUT = {("tokenizer/spectral.py", "n_fft"): 1, ("tokenizer/spectral.py", "sfreq"): 2}


def _numeric(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            ids.add(id(body[0].value))
    return ids


def literal_copies(name: str, tree: ast.AST) -> list[tuple[str, int, str]]:
    """(key, line, what) of every literal rate / patch length / unit / task id in one module."""
    found = []
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            found += [(arg.arg, d.lineno, f"default {arg.arg}={d.value!r}") for arg, d in pairs
                      if arg.arg in RATE_OR_PATCH and _numeric(d)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
            if (target in RATE_OR_PATCH or target in CONTRACT_NAMES) and _numeric(value):
                found.append((target, node.lineno, f"{target} = {value.value!r}"))
            if target == "task_id" and _numeric(value):
                found.append((target, node.lineno, f"task_id = {value.value!r}"))
        elif isinstance(node, ast.Assign):
            # A corpus's own rate (Bonn's 173.61 Hz) is a fact of that corpus, not a copy.
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in CONTRACT_NAMES and isinstance(node.value, ast.Constant) \
                        and node.value.value in CONTRACT_VALUES:
                    found.append((t.id, node.lineno, f"{t.id} = {node.value.value!r}"))
        elif isinstance(node, ast.keyword) and node.arg == "task_id" and _numeric(node.value):
            found.append(("task_id", node.value.lineno, f"task_id={node.value.value!r}"))
        elif isinstance(node, ast.Constant) and node.value == signal.UNITS and id(node) not in docstrings:
            found.append(("units", node.lineno, f"{signal.UNITS!r}"))
    return sorted(found, key=lambda f: f[1])


def test_no_literal_copy_of_the_signal_contract():
    bad, spelled = [], {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name in OWNERS:
                continue
            for key, line, what in literal_copies(name, ast.parse(path.read_text(), name)):
                if (name, key) in SPELLED_OUT:
                    spelled[(name, key)] = spelled.get((name, key), 0) + 1
                else:
                    bad.append(f"{name}:{line}: {what}")
    assert not bad, "refer to runtime.signal / foundation.tasks instead of: " + "; ".join(bad)
    assert all(spelled.get(k, 0) <= n for k, n in SPELLED_OUT.items()), spelled


def test_the_scan_finds_a_copy():
    tree = ast.parse("from dataclasses import dataclass\n@dataclass\nclass C:\n    sfreq: float = 200.0\n"
                     "def f(x, patch_size=200): ...\nUNITS = '100uV'\nR = dict(task_id=3)\n")
    assert [k for k, _, _ in literal_copies("x.py", tree)] == ["sfreq", "patch_size", "UNITS", "units", "task_id"]


def test_defaults_agree_with_the_owner():
    from finetune.recipes import RECIPES
    from foundation.augment import AugmentConfig
    from foundation.contract import InputContract
    from foundation.model import EEGMambaConfig
    from foundation.tasks import TASK_IDS
    from shards import sample
    from shards.preprocess import PreprocessConfig
    from tokenizer.spectral import MaskConfig, STFTConfig
    from tokenizer.vqnsp import VQNSPConfig

    assert signal.PATCH_SAMPLES == signal.SFREQ and signal.UNIT_SCALE == 1e6 / signal.UNIT_UV == 1e4
    assert (sample.SFREQ, sample.PATCH_SAMPLES, sample.UNIT_SCALE) == (signal.SFREQ, signal.PATCH_SAMPLES, signal.UNIT_SCALE)
    contract = InputContract()
    assert (contract.sfreq, contract.patch_samples, contract.units) == (signal.SFREQ, signal.PATCH_SAMPLES, signal.UNITS)
    assert EEGMambaConfig().patch_size == VQNSPConfig().patch_size == signal.PATCH_SAMPLES
    assert AugmentConfig().sfreq == PreprocessConfig().sfreq == signal.SFREQ
    assert STFTConfig().sfreq == MaskConfig().sfreq == signal.SFREQ and STFTConfig().n_fft == signal.PATCH_SAMPLES
    assert {name: r.task_id for name, r in RECIPES.items()} == {name: TASK_IDS[r.task] for name, r in RECIPES.items()}
