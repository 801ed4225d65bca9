"""No function on the data and training paths is longer than 80 lines: a reader should see a function whole."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATHS = ("runtime", "foundation", "tokenizer", "shards", "pretrain", "finetune")
MAX_LINES = 80
# The Triton selective-scan backward kernel is one fused kernel; its split is its own change.
KNOWN = {("foundation/ssm_triton.py", "_scan_bwd")}


def test_no_function_over_80_lines():
    long = []
    for package in PATHS:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            for node in ast.walk(ast.parse(path.read_text(), name)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (name, node.name) not in KNOWN:
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
