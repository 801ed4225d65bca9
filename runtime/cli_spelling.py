"""One spelling of every command-line option: words joined by underscores, as in the config keys and TOML files.

``python -m shards``, ``pretrain/run.py``, ``python -m pretrain.train_tokenizer``, ``finetune/run.py`` and
``python -m finetune.predict`` all write ``--window_s``, ``--max_abs_uv``, ``--optim.grad_accum``: the flag is
the key of the same setting in a TOML file or a manifest. The dashed spelling (``--window-s``) is still
accepted, with one notice line on stderr naming the spelling to use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

__all__ = ["canonical_spelling", "argparse_options"]


def canonical_spelling(argv: Sequence[str], known: Iterable[str] | None = None, *, prog: str = "") -> list[str]:
    """``argv`` with every ``--dashed-option`` written ``--dashed_option`` and one notice on stderr if any was.

    ``known``: the option names (without ``--``) that may be rewritten; None rewrites every option. Values
    (what follows ``=`` or a separate argument) are never touched, nor is anything after a bare ``--``.
    """
    known = None if known is None else set(known)
    out, renamed = [], []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            out += args[i:]
            break
        if arg.startswith("--") and "-" in arg[2:].partition("=")[0]:
            name, eq, value = arg[2:].partition("=")
            new = name.replace("-", "_")
            if known is None or new in known:
                renamed.append((f"--{name}", f"--{new}"))
                arg = f"--{new}{eq}{value}"
        out.append(arg)
    if renamed and os.environ.get("RANK", "0") == "0":  # one notice per run, not one per process
        pairs = ", ".join(f"{old} as {new}" for old, new in dict(renamed).items())
        print(f"{prog + ': ' if prog else ''}note: options are spelled with underscores; read {pairs}", file=sys.stderr)
    return out


def argparse_options(parser) -> set[str]:
    """Every ``--option`` name (without ``--``) of an ``argparse`` parser and its subcommands."""
    import argparse

    names, stack = set(), [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            names |= {s[2:] for s in action.option_strings if s.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):
                stack += list(action.choices.values())
    return names
