"""The report of a leak-free (or ``--transductive`` ablation) run of ``benchmarks/downstream.py``: the protocol
and its caps, the results table with bootstrap intervals over test groups, the aims of issues 13 and 15,
paired differences, the shift table and the notes. A pure function of the results.json payload."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.bootstrap import N_BOOT, balanced_accuracy, group_bootstrap
from benchmarks.report import (
    BAND, METRIC_TITLES, METRICS, RANDOM_PROBE, SCRATCH, aggregate, facts, fmt, paired_differences,
    pretrained_name, pretraining_and_stage_lines,
)
from benchmarks.tasks import TASKS

FOUR = ("seizure", "sleep", "motor_imagery", "emotion")  # the tasks issue 15's aims count


def _test_sets(payload: Mapping[str, Any], task: str, method: str) -> dict[int, tuple[np.ndarray, np.ndarray, list[str]]]:
    """seed -> (labels [n], predicted class [n], test group of each window) of one task and method."""
    out = {}
    for r in payload["runs"]:
        if r["task"] != task or r["method"] != method or not r.get("test_proba"):
            continue
        split = payload.get("splits", {}).get(task, {}).get(str(r["seed"]), {})
        if "test_window_groups" not in split:
            continue
        out[r["seed"]] = (np.asarray(split["test_labels"]), np.asarray(r["test_proba"]).argmax(1), split["test_window_groups"])
    return out


def n_classes(payload, task: str) -> int:
    return len(payload.get("tasks", {}).get(task, {}).get("classes", ())) or 2


def ci_of(payload, task: str, method: str, reference: str | None = None) -> dict | None:
    """Bootstrap 95% interval over test groups of the seed-mean balanced accuracy (or of ``method - reference``)."""
    k = n_classes(payload, task)
    a = _test_sets(payload, task, method)
    b = _test_sets(payload, task, reference) if reference else {}
    seeds = sorted(s for s in a if reference is None or s in b)
    if not seeds:
        return None

    def stat(i: int, sel: np.ndarray) -> float:
        y, pred, _ = a[seeds[i]]
        value = balanced_accuracy(y[sel], pred[sel], k)
        if reference:
            value -= balanced_accuracy(y[sel], b[seeds[i]][1][sel], k)
        return value

    return group_bootstrap([a[s][2] for s in seeds], stat)


def _ci_text(ci: dict | None) -> str:
    return "–" if ci is None else f"[{ci['lo']:.3f}, {ci['hi']:.3f}]"


def results_table_ci(payload, table: Mapping[str, Mapping[str, Mapping]], titles: Mapping[str, str]) -> str:
    """Like ``report.results_table`` with a column: the 95% interval over test groups of balanced accuracy."""
    head = ("| task | method | " + METRIC_TITLES["balanced_accuracy"] + " | 95% CI (test groups) | "
            + " | ".join(METRIC_TITLES[m] for m in METRICS[1:]) + " | s / run |")
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for task, methods in table.items():
        for method, entry in methods.items():
            cells = [fmt(entry.get("balanced_accuracy")), _ci_text(ci_of(payload, task, method))]
            cells += [fmt(entry.get(m)) for m in METRICS[1:]]
            sec = entry.get("seconds", {}).get("mean", math.nan)
            lines.append(f"| {titles.get(task, task)} | {method} | " + " | ".join(cells) + f" | {sec:.0f} |")
    return "\n".join(lines)


def _ba(table, task, method, metric="balanced_accuracy") -> float:
    return table.get(task, {}).get(method, {}).get(metric, {}).get("mean", math.nan)


def aims_lines(payload, table, pretrained: Sequence[str]) -> list[str]:
    """Issue 15 (in distribution, under shift) and issue 13 (EEGMAT) aims, met or not, with the numbers."""
    four = [t for t in FOUR if t in table]
    lines = []
    for m in pretrained:
        wins = [t for t in four if _ba(table, t, m) > _ba(table, t, SCRATCH)]
        ok = [t for t in four if _ba(table, t, m) >= _ba(table, t, BAND)]
        lines.append(f"- In distribution ({payload['protocol']}), {m}: beats from-scratch on {len(wins)}/{len(four)} "
                     f"({', '.join(wins) or 'none'}; aim 4/4: {'met' if len(wins) == 4 == len(four) else 'not met'}); "
                     f"no worse than band power on {len(ok)}/{len(four)} ({', '.join(ok) or 'none'}; aim 3/4: "
                     f"{'met' if len(ok) >= 3 and len(four) == 4 else 'not met'}).")
    if "eegmat" in table:
        for m in pretrained:
            b, a = _ba(table, "eegmat", m), _ba(table, "eegmat", m, "auroc")
            bb, ba_ = _ba(table, "eegmat", BAND), _ba(table, "eegmat", BAND, "auroc")
            met = b >= bb and a >= ba_
            lines.append(f"- EEGMAT (issue 13), {m} vs band power + LR: bal. acc. {b:.3f} vs {bb:.3f}, AUROC {a:.3f} vs "
                         f"{ba_:.3f}: {'met' if met else 'not met'}.")
    shift = payload.get("shift") or []
    if not shift:
        lines.append("- Under shift (issue 15: beat band power on 2/4 tasks and scratch on 4/4): not measured in this "
                     "run (see Notes).")
    else:
        lines += shift_aims(shift, pretrained)
    for m in [*pretrained, SCRATCH, BAND]:
        if "seizure" in table and m in table["seizure"]:
            v = _ba(table, "seizure", m)
            lines.append(f"- seizure balanced accuracy >= 0.95 (issue 7) with {m}: {'yes' if v >= 0.95 else 'no'} ({v:.3f})")
    return lines


def shift_aims(shift: Sequence[Mapping], pretrained: Sequence[str]) -> list[str]:
    """Under shift: per pretrained method, on how many tasks its mean over shifts beats band power / scratch."""
    def mean(task, method):
        # a shift that applied to no recording (one-channel Bonn / DREAMS: drop_half_channels) has metrics None
        vals = [(r["metrics"] or {}).get("balanced_accuracy") for r in shift if r["task"] == task and r["method"] == method]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    tasks = [t for t in dict.fromkeys(r["task"] for r in shift) if t in FOUR]
    has_band = any(r["method"] == BAND for r in shift)
    no_band = [t for t in tasks if not math.isfinite(mean(t, BAND))]  # e.g. training windows of several montages
    lines = []
    for m in pretrained:
        vs_band = [t for t in tasks if mean(t, m) > mean(t, BAND)]
        vs_scr = [t for t in tasks if mean(t, m) > mean(t, SCRATCH)]
        band = (f"beats band power on {len(vs_band)}/{len(tasks)} ({', '.join(vs_band) or 'none'}; aim 2/4: "
                f"{'met' if len(vs_band) >= 2 else 'not met'}"
                + (f"; band power has no shift rows on {', '.join(no_band)}, see Notes)" if no_band else ")") if has_band
                else "band power was not run under shift (aim 2/4: not measured)")
        lines.append(f"- Under shift, {m} (mean balanced accuracy over the shifts, 'none' included): {band}; beats "
                     f"scratch on {len(vs_scr)}/{len(tasks)} ({', '.join(vs_scr) or 'none'}; aim 4/4: "
                     f"{'met' if len(vs_scr) == 4 else 'not met'}).")
    return lines


def paired_lines(payload, methods: Sequence[str], titles) -> list[str]:
    """Paired by seed (same split): mean ± std of the differences, wins, and the 95% interval over test groups."""
    runs = payload["runs"]
    pairs = [(m, ref) for m in methods if m.startswith("EEGMamba pretrained") for ref in (SCRATCH, BAND)]
    pairs += [(m, pretrained_name(found.group(1))) for m in methods
              if (found := re.match(r"EEGMamba multi-task \((.+) backbone\)", m))]
    pairs += [(m, RANDOM_PROBE) for m in methods if m.startswith("EEGMamba linear probe (") and m != RANDOM_PROBE]
    lines = []
    for method, ref in pairs:
        if ref not in methods:
            continue
        d = paired_differences(runs, method, ref)
        cells = "; ".join(f"{titles.get(t, t).split(' (')[0]} {v['mean']:+.3f} ± {v['std']:.3f} ({v['wins']}/{v['n']} "
                          f"seeds) {_ci_text(ci_of(payload, t, method, ref))}" for t, v in d.items() if v["n"])
        lines.append(f"- {method} minus {ref}: {cells}")
    return lines


def shift_table(shift: Sequence[Mapping]) -> list[str]:
    if not shift:
        return ["No shift rows in this run (see Notes)."]
    lines = ["| task | shift | method | bal. acc. | AUROC | recordings |", "|---|---|---|---|---|---|"]
    for r in shift:
        m = r.get("metrics") or {}
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) else "–"
                 for k in ("balanced_accuracy", "auroc")]
        lines.append(f"| {r['task']} | {r['shift']} | {r['method']} | {cells[0]} | {cells[1]} | {r.get('n_recordings', '–')} |")
    return lines


def protocol_lines(payload) -> list[str]:
    b, caps = payload["budget"], payload.get("caps", {})
    if payload["protocol"] == "leak-free":
        pools = "; ".join(f"{t} {len(p['groups'])}/{p['n_groups']} {p['group_key']}s"
                          + (" (published split: 32-35 test, 28-31 validation)" if p.get("published") else "")
                          for t, p in payload.get("pools", {}).items())
        head = ("Protocol: leak-free. Per task a fixed test pool (fold 0 of a stratified group k-fold, seed 0) never "
                "entered pretraining or the tokenizer (its recordings, and every recording of a pool subject, are left "
                "out of the pretraining shards); every seed tests on the whole pool, the seed picks the validation "
                f"fold of the other groups and the initialisation. Test pools: {pools}.")
    else:
        head = ("Protocol: TRANSDUCTIVE ABLATION. Pretraining saw every window, test windows included (labels unused); "
                "seed s tests on group fold s mod k.")
    cap = ", ".join(f"{t} {c if c is not None else 'all'}" for t, c in caps.items())
    return [head, "",
            f"Caps (to fit 30 min on 2 cores): windows per task, evenly spaced: {cap}; {payload['seeds']} seeds; "
            f"tokenizer {b['tokenizer_steps']} steps, pretraining {b['pretrain_steps']} steps x {b['pretrain_batch']} "
            f"windows of 4 s; finetuning at most {b['finetune_epochs']} epochs (patience {b['finetune_patience']}), "
            f"EEGNet at most {b['eegnet_epochs']} epochs; shift rows on seed 0 only"
            + (f" ({', '.join(payload['shift_setup']['shifts'])}; the cross-dataset row where a partner corpus "
               f"exists; models: {', '.join(payload['shift_setup']['methods'])})." if payload.get("shift_setup") else ".")]


def render_protocol(payload: Mapping[str, Any]) -> str:
    f = facts(payload)
    table, titles, methods, pretrained, command = f.table, f.titles, f.methods, f.pretrained, f.command
    abl = payload.get("ablation")
    estimate = sum((payload.get("estimate_s") or {}).values())
    md = [
        f"# Downstream benchmark{' (--quick smoke test)' if payload.get('quick') else ''}"
        + (f": ablation {abl['name']}" if abl else ""),
        "",
        *([f"Ablation: {abl['description']}", ""] if abl else []),
        f"Command: `{command}`  ",
        f.machine,
        f"Finished: {payload['finished']}, total wall time {payload['total_s'] / 60:.1f} min "
        f"(estimated {estimate / 60:.1f} min before the run)",
        "",
        *protocol_lines(payload),
        "",
        "Test metrics, mean ± std over seeds (same split for every method); 95% CI: bootstrap over test groups "
        f"({N_BOOT} resamples of groups, not windows) of the seed-mean balanced accuracy ('–': fewer than 2 test groups).",
        "",
        results_table_ci(payload, table, titles),
        "",
        "## Aims (issues 13 and 15), on mean balanced accuracy",
        "",
        *aims_lines(payload, table, pretrained),
        "",
        "Paired by seed (same split), balanced accuracy differences, mean ± std (seeds where the first is better) "
        "[95% CI over test groups]:",
        "",
        *paired_lines(payload, methods, titles),
        "",
        "## Under shift (deployment-style, seed 0)",
        "",
        *shift_table(payload.get("shift") or []),
        "",
        "## Notes",
        "",
        *([f"- {n}" for n in payload.get("notes", [])] or ["- none"]),
        "",
        *pretraining_and_stage_lines(payload),
    ]
    return "\n".join(md)
