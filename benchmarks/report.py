"""The tables of ``benchmarks/downstream.py``'s report: aggregation over seeds, the Markdown tables and aims,
paired differences, the layout of runs without the leak-free protocol and the README results block.
``benchmarks.report_render`` picks the layout of a payload and writes results.md / results.json."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.tasks import TASKS

SCRATCH, BAND = "EEGMamba from scratch", "band power + LR"
PROBE = "EEGMamba linear probe ({})"
RANDOM_PROBE = "EEGMamba linear probe (random init)"
RELEASE = "EEGMamba released checkpoint (eegmamba-tiny-open), finetuned"
MULTI = "EEGMamba multi-task ({} backbone), one model for all tasks"
METRICS = ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc")
METRIC_TITLES = {"balanced_accuracy": "bal. acc.", "cohen_kappa": "kappa", "weighted_f1": "weighted F1", "auroc": "AUROC"}


def pretrained_name(objective: str) -> str:
    return f"EEGMamba pretrained ({objective}), finetuned"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and sample std (ddof=1; 0 with one value) of the finite values; nan when there are none."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}


def fmt(stat: Mapping[str, float] | None) -> str:
    """``0.912 ± 0.013``, or ``–`` for a metric that does not apply."""
    if not stat or not math.isfinite(stat.get("mean", math.nan)):
        return "–"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per-seed runs ``[{task, method, seed, metrics, seconds}]`` -> ``{task: {method: {metric: stat, seconds}}}``."""
    out: dict[str, dict] = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    table: dict[str, dict] = {}
    for task, methods in out.items():
        table[task] = {}
        for method, rs in methods.items():
            entry = {m: summarize([r["metrics"].get(m, math.nan) for r in rs]) for m in METRICS}
            entry["seconds"] = summarize([r["seconds"] for r in rs])
            entry["seeds"] = sorted(r["seed"] for r in rs)
            table[task][method] = entry
    return table


def results_table(table: Mapping[str, Mapping[str, Mapping]], titles: Mapping[str, str]) -> str:
    """Markdown table: one row per (task, method), metrics as mean ± std, seconds per run."""
    head = "| task | method | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | s / run |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for task, methods in table.items():
        for method, entry in methods.items():
            cells = [fmt(entry.get(m)) for m in METRICS]
            sec = entry.get("seconds", {}).get("mean", math.nan)
            lines.append(f"| {titles.get(task, task)} | {method} | " + " | ".join(cells) + f" | {sec:.0f} |")
    return "\n".join(lines)


def stage_table(stages: Mapping[str, float]) -> str:
    lines = ["| stage | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in stages.items()]
    lines.append(f"| total | {sum(stages.values()):.0f} |")
    return "\n".join(lines)


def aims(table: Mapping[str, Mapping[str, Mapping]], pretrained: Sequence[str], scratch: str, band: str,
         seizure_task: str = "seizure") -> list[str]:
    """The issue's aims, checked on mean test balanced accuracy (lines for the report)."""
    def ba(task, method):
        return table.get(task, {}).get(method, {}).get("balanced_accuracy", {}).get("mean", math.nan)

    lines = []
    for method in pretrained:
        wins = [t for t in table if ba(t, method) > ba(t, scratch)]
        not_worse = [t for t in table if ba(t, method) >= ba(t, band)]
        lines.append(f"- {method}: beats from-scratch on {len(wins)}/{len(table)} tasks ({', '.join(wins) or 'none'}); "
                     f"no worse than band power on {len(not_worse)}/{len(table)} ({', '.join(not_worse) or 'none'}).")
    for method in [*pretrained, scratch, band]:
        if seizure_task in table and method in table[seizure_task]:
            v = ba(seizure_task, method)
            lines.append(f"- seizure balanced accuracy >= 0.95 with {method}: {'yes' if v >= 0.95 else 'no'} ({v:.3f})")
    return lines


def paired_differences(runs: Sequence[Mapping[str, Any]], method: str, reference: str,
                       metric: str = "balanced_accuracy") -> dict[str, dict]:
    """Per task: ``method - reference`` on the same split (seed), mean ± std over seeds, and wins/seeds."""
    by = {(r["task"], r["method"], r["seed"]): r["metrics"].get(metric) for r in runs}
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        diffs = [by[(task, method, s)] - by[(task, reference, s)] for (t, m, s) in by
                 if t == task and m == method and by.get((task, reference, s)) is not None and by[(t, m, s)] is not None]
        out[task] = {**summarize(diffs), "wins": int(sum(d > 0 for d in diffs))}
    return out


@dataclass(frozen=True)
class Facts:
    """What every report reads off a results.json payload."""

    runs: list
    table: dict  # aggregate(runs)
    titles: dict  # task -> title
    methods: list  # in the order the runs hold them
    pretrained: list  # the "EEGMamba pretrained (...)" methods
    command: str
    machine: str  # "Machine: ..." line


def facts(payload: Mapping[str, Any]) -> Facts:
    runs = payload["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    info = payload["machine"]
    return Facts(
        runs=runs, table=aggregate(runs), titles={t.name: t.title for t in TASKS}, methods=methods,
        pretrained=[m for m in methods if m.startswith("EEGMamba pretrained")],
        command=" ".join(payload["command"]) if isinstance(payload["command"], list) else str(payload["command"]),
        machine=(f"Machine: {info.get('cpu', info.get('processor'))}, {info['cpu_count']} CPU cores, torch {info['torch']} "
                 f"({info['torch_threads']} threads), Python {info['python']}  "),
    )


def render_legacy(payload: Mapping[str, Any]) -> str:
    """The report of a payload from before issue 15 (transductive, no test predictions), byte for byte."""
    f = facts(payload)
    runs, table, titles, methods, pretrained, command = f.runs, f.table, f.titles, f.methods, f.pretrained, f.command
    if not command.startswith("python"):
        command = "python " + command
    finished = f"Finished: {payload['finished']}, " if payload.get("finished") else ""
    diff_lines = []
    for method in pretrained:
        for ref in (SCRATCH, BAND):
            if ref not in methods:
                continue
            d = paired_differences(runs, method, ref)
            cells = "; ".join(f"{titles.get(t, t).split(' (')[0]} {v['mean']:+.3f} ± {v['std']:.3f} ({v['wins']}/{v['n']} seeds)"
                              for t, v in d.items() if v["n"])
            diff_lines.append(f"- {method} minus {ref}: {cells}")
    md = [
        f"# Downstream benchmark{' (--quick smoke test)' if payload.get('quick') else ''}",
        "",
        f"Command: `{command}`  ",
        f.machine,
        f"{finished}total wall time {payload['total_s'] / 60:.1f} min",
        "",
        "Test-split metrics, mean ± std over seeds (seed s = fold s mod k of a group k-fold, "
        "groups = segments / excerpts / runs / subjects; same split for every method).",
        "",
        results_table(table, titles),
        "",
        "## Aims (issue 7), on mean balanced accuracy",
        "",
        *aims(table, pretrained, SCRATCH, BAND),
        "",
        "Paired by seed (same split), balanced accuracy differences, mean ± std (seeds where the first is better):",
        "",
        *diff_lines,
        "",
        *pretraining_and_stage_lines(payload),
    ]
    return "\n".join(md)


def pretraining_and_stage_lines(payload: Mapping[str, Any]) -> list[str]:
    """The closing sections of every report: pretraining loss first/last 10 % and the wall time per stage."""
    losses = payload.get("pretrain_losses", {})
    return [
        "## Pretraining",
        "",
        *[f"- {name}: {len(ls)} steps, loss {np.mean(ls[:max(1, len(ls) // 10)]):.4f} (first 10 %) -> "
          f"{np.mean(ls[-max(1, len(ls) // 10):]):.4f} (last 10 %)" for name, ls in losses.items() if ls],
        "",
        "## Wall time per stage",
        "",
        stage_table(payload["stages_s"]),
        "",
    ]


README_BEGIN = "<!-- downstream-results:begin -->"
README_END = "<!-- downstream-results:end -->"


def update_readme(readme: Path, report: str) -> None:
    """Put ``report`` (the results.md text) between the README's markers, headings one level down.

    So the README's numbers are the script's output, never typed by hand.
    """
    write_block(readme, report, README_BEGIN, README_END, demote="#")
    log(f"updated the results block of {readme}")


def write_block(readme: Path, report: str, begin: str, end: str, *, demote: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``readme`` with ``report`` less its title, every
    ``## `` heading prefixed with ``demote`` (so the block nests under the README's own section)."""
    text = readme.read_text()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{readme}: expected one {begin} and one {end} marker")
    body = "\n".join((demote + line if line.startswith("## ") else line) for line in report.splitlines()
                     if not line.startswith("# "))
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}")
