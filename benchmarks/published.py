"""Published EEGMAT results, COPIED FROM THE PAPERS (not measured here), and our rows beside them.

``python benchmarks/downstream.py --render benchmarks/results/results.json --published eegmat`` prints two
separate tables: ours (measured by this script, with its protocol) and the papers' (copied, with their
citations). The two are never merged into one table: the protocols differ (see ``PROTOCOL_NOTE``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmarks.report import summarize

# method, balanced accuracy, AUC-PR, AUROC (mean over the papers' runs), source: copied from the tables cited in
# the last column; the papers report mean ± std, we keep the means.
PUBLISHED: dict[str, list[tuple[str, float, float, float, str]]] = {
    "eegmat": [
        ("EEGNet", 0.6770, 0.5763, 0.7321, "CBraMod paper (ICLR 2025), Table 12"),
        ("BIOT", 0.6875, 0.6004, 0.7536, "CBraMod paper (ICLR 2025), Table 12"),
        ("LaBraM-Base", 0.6909, 0.5999, 0.7721, "CBraMod paper (ICLR 2025), Table 12"),
        ("CBraMod", 0.7256, 0.6267, 0.7905, "CBraMod paper (ICLR 2025), Table 12"),
        ("REVE-Base", 0.7660, 0.7470, 0.8450, "REVE (NeurIPS 2025), Table 10"),
        ("NeurIPT", 0.8646, 0.7827, 0.9111, "NeurIPT (NeurIPS 2025), Table 18 (64 Hz, average reference)"),
    ],
}
PROTOCOL_NOTE = {
    "eegmat": (
        "Papers: 5-s windows at 200 Hz, files sorted, subjects 00-27 train / 28-31 validation / 32-35 test (all 36 "
        "subjects). An independent rerun of CBraMod's released code and weights reported 0.589 / 0.511 / 0.734 "
        "(BAcc / AUC-PR / AUROC), so protocol details matter. Ours: see the protocol line above the table."
    ),
}


def _cell(values: list[float]) -> str:
    s = summarize(values)
    return f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n"] else "–"


def published_comparison(payload: Mapping[str, Any], task: str) -> str:
    """Markdown: our measured rows of ``task`` (mean ± std over seeds), then the published table."""
    if task not in PUBLISHED:
        raise SystemExit(f"--published: no published table for {task!r}; have {sorted(PUBLISHED)}")
    runs = [r for r in payload["runs"] if r["task"] == task]
    if not runs:
        raise SystemExit(f"--published {task}: the results hold no {task} rows (run the benchmark with that task)")
    split = payload.get("eegmat_split", "folds")
    pool = payload.get("pools", {}).get(task, {})
    protocol = (f"{payload.get('protocol', 'transductive')} protocol, EEGMAT split '{split}'"
                + (f", test pool {len(pool.get('groups', []))} of {pool.get('n_groups')} subjects" if pool else "")
                + f", {payload.get('seeds')} seeds, shared subjects only" * (split == "folds"))
    lines = [f"## {task}: measured by benchmarks/downstream.py ({protocol})", "",
             "| method | BAcc | AUC-PR | AUROC |", "|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r["metrics"] for r in runs if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(_cell([m.get(k, math.nan) for m in mine])
                                                  for k in ("balanced_accuracy", "auc_pr", "auroc")) + " |")
    lines += ["", f"## {task}: published (COPIED FROM THE PAPERS, not measured here)", "",
              "| method | BAcc | AUC-PR | AUROC | source |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {b:.4f} | {p:.4f} | {a:.4f} | {src} |" for m, b, p, a, src in PUBLISHED[task]]
    lines += ["", PROTOCOL_NOTE[task], ""]
    return "\n".join(lines)
