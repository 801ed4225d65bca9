"""The report of one ``benchmarks/downstream.py`` run: the layout its payload asks for, and the files.

``render`` is a pure function of the results.json payload, so ``--render`` reproduces a report byte for byte.
The leak-free protocol's layout is ``benchmarks.report_protocol``; the layout of payloads without a
``protocol`` key and the shared tables are ``benchmarks.report``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import aggregate, log, render_legacy
from benchmarks.report_protocol import render_protocol


def render(payload: Mapping[str, Any]) -> str:
    """The Markdown report of one benchmark run (a pure function of its results.json payload).

    Payloads written before the leak-free protocol (no ``protocol`` key) render as they always did.
    """
    if "protocol" in payload:
        return render_protocol(payload)
    return render_legacy(payload)


def write_results(payload: Mapping[str, Any], folder: Path) -> None:
    # results.json first: a rendering bug must never cost the half hour of training behind it
    # (``--render`` rebuilds results.md from the JSON alone).
    folder.mkdir(parents=True, exist_ok=True)
    # "table" (the aggregate) is what pretrain.release's model card reads.
    payload = {**payload, "table": aggregate(payload["runs"])}
    (folder / "results.json").write_text(json.dumps(_json_safe(payload), indent=1))
    text = render(payload)
    print(text)
    (folder / "results.md").write_text(text)
    log(f"wrote {folder / 'results.md'} and results.json")


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    if isinstance(x, Path):
        return str(x)
    return x

