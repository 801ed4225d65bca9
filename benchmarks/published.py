"""Published EEGMAT results, COPIED FROM THE PAPERS (not measured here), printed beside our measured rows.

``benchmarks/report.render`` appends ``published_lines(table)`` to every ``results.md``: our EEGMAT rows first
(measured by ``benchmarks/downstream.py``; the published split's rows when the data hold all 36 subjects, else the
subject-wise cross-validation, whose protocol differs from the papers'), then the papers' table with its citations.
The two are never merged into one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
        "(BAcc / AUC-PR / AUROC), so protocol details matter. Ours: the protocol paragraph at the top of this report."
    ),
}


def published_lines(table: Mapping[str, Any], fmt) -> list[str]:
    """Markdown lines: our EEGMAT rows (``fmt`` formats a table cell), then the papers' table; [] without EEGMAT."""
    task = "eegmat_published" if "eegmat_published" in table else "eegmat"
    if task not in table:
        return []
    how = ("the published split (subjects 00-27 / 28-31 / 32-35)" if task == "eegmat_published" else
           "subject-wise cross-validation over the subjects the data hold (not the papers' split)")
    lines = ["## EEGMAT beside published results", "", f"Measured here, {how}:", "",
             "| method | bal. acc. | AUROC |", "|---|---|---|"]
    lines += [f"| {row} | {fmt(cell.get('balanced_accuracy'))} | {fmt(cell.get('auroc'))} |"
              for row, cell in table[task].items()]
    lines += ["", "Published (COPIED FROM THE PAPERS, not measured here):", "",
              "| method | bal. acc. | AUC-PR | AUROC | source |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {b:.4f} | {p:.4f} | {a:.4f} | {src} |" for m, b, p, a, src in PUBLISHED["eegmat"]]
    return lines + ["", PROTOCOL_NOTE["eegmat"], ""]
