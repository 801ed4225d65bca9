"""The ablation table of ``benchmarks/downstream.py``: every ``ablation-NAME/results.json`` against the main
run's ``results.json``, paired by seed.

Why paired by seed: an ablation run differs from the main run by its one named change only; the same seed
tests on the same pool with the same validation fold and initialisation, so ``ablation - main`` per seed
removes the split's share of the noise (what is left is training noise, shown by the seeds' spread and
the count of seeds where the ablation is better). Only runs on the main run's protocol, seeds and pools
are compared; the others are listed with the reason (e.g. ablations run before the leak-free protocol).

``render_ablations`` is a pure function of the payloads, so ``--ablation-table`` can be rerun at will.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.report import PROBE, SCRATCH, pretrained_name, summarize
from benchmarks.tasks import TASKS

README_BEGIN = "<!-- ablation-results:begin -->"
README_END = "<!-- ablation-results:end -->"

# The rows an ablation of the model or the objectives can move (band power and EEGNet cannot change).
METHODS = (pretrained_name("masked STFT"), pretrained_name("VQ masked-token"), PROBE.format("masked STFT"), SCRATCH)
SHORT = {pretrained_name("masked STFT"): "masked STFT, finetuned", pretrained_name("VQ masked-token"): "VQ token, finetuned",
         PROBE.format("masked STFT"): "masked STFT, linear probe", SCRATCH: "from scratch"}


def not_comparable(main: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """Why ``other`` cannot be paired with ``main`` seed by seed, or None."""
    # Payloads from before issue 15 carry no protocol: they were transductive.
    mine, theirs = main.get("protocol", "transductive"), other.get("protocol", "transductive")
    if theirs != mine:
        return (f"protocol {theirs} vs the main run's {mine}"
                + (" (run before the leak-free protocol of issue 15)" if "protocol" not in other else ""))
    if other.get("quick") != main.get("quick"):
        return "a --quick run"
    pools = lambda p: {t: sorted(v["groups"]) for t, v in (p.get("pools") or {}).items()}  # noqa: E731
    if pools(other) != pools(main):
        return "other test pools"
    return None


def paired(main_runs: Sequence[Mapping], runs: Sequence[Mapping], task: str, method: str,
           metric: str = "balanced_accuracy") -> dict[str, float | int]:
    """``ablation - main`` of ``metric`` per seed run by both: mean, std, n and wins (seeds where it is higher)."""
    base = {r["seed"]: r["metrics"].get(metric) for r in main_runs if r["task"] == task and r["method"] == method}
    diffs = [r["metrics"].get(metric) - base[r["seed"]] for r in runs
             if r["task"] == task and r["method"] == method and base.get(r["seed"]) is not None
             and r["metrics"].get(metric) is not None]
    return {**summarize(diffs), "wins": int(sum(d > 0 for d in diffs))}


def shift_mean(rows: Sequence[Mapping], task: str, method: str) -> float:
    """Mean window balanced accuracy over a model's shift rows, 'none' included, the cross-dataset row left
    out: which partner recordings it reads changed between runs (every recording, then the partner's test
    pool only), so it is not the same row in an older ablation."""
    vals = [(r.get("metrics") or {}).get("balanced_accuracy") for r in rows
            if r["task"] == task and r["method"] == method and not r["shift"].startswith("cross_dataset")]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _cell(d: Mapping[str, float]) -> str:
    if not d.get("n"):
        return "–"
    return f"{d['mean']:+.3f} ({d['wins']}/{d['n']})"


def _num(v: float, signed: bool = False) -> str:
    return "–" if not math.isfinite(v) else (f"{v:+.3f}" if signed else f"{v:.3f}")


def render_ablations(main: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: the main run's balanced accuracy, then per comparable ablation and method the paired change
    in distribution and the change of the mean over shifts; the runs left out and why."""
    titles = {t.name: t.title.split(" (")[0] for t in TASKS}
    tasks = [t for t in dict.fromkeys(r["task"] for r in main["runs"])]
    methods = [m for m in METHODS if any(r["method"] == m for r in main["runs"])]
    head = "| run | method | " + " | ".join(titles.get(t, t) for t in tasks) + " |"
    rule = "|---|---|" + "---|" * len(tasks)
    mean = {(t, m): summarize([r["metrics"].get("balanced_accuracy") for r in main["runs"]
                               if r["task"] == t and r["method"] == m])["mean"] for t in tasks for m in methods}
    ind = [head, rule] + [f"| main run | {SHORT[m]} | " + " | ".join(_num(mean[(t, m)]) for t in tasks) + " |"
                          for m in methods]
    main_shift = main.get("shift") or []
    shift_tasks = [t for t in dict.fromkeys(r["task"] for r in main_shift)]
    shift_methods = [m for m in methods if any(r["method"] == m for r in main_shift)]
    sh_head = "| run | method | " + " | ".join(titles.get(t, t) for t in shift_tasks) + " |"
    sh = [sh_head, "|---|---|" + "---|" * len(shift_tasks)]
    sh += [f"| main run | {SHORT[m]} | " + " | ".join(_num(shift_mean(main_shift, t, m)) for t in shift_tasks) + " |"
           for m in shift_methods]
    left, described = [], []
    for name, other in sorted(ablations.items()):
        why = not_comparable(main, other)
        if why:
            left.append(f"- `{name}`: {why} (finished {other.get('finished', '?')}).")
            continue
        described.append(f"- `{name}`: {(other.get('ablation') or {}).get('description', '')} "
                         f"(finished {other.get('finished', '?')}).")
        for m in methods:
            ind.append(f"| `{name}` | {SHORT[m]} | "
                       + " | ".join(_cell(paired(main["runs"], other["runs"], t, m)) for t in tasks) + " |")
        for m in shift_methods:
            cells = [shift_mean(other.get("shift") or [], t, m) - shift_mean(main_shift, t, m) for t in shift_tasks]
            sh.append(f"| `{name}` | {SHORT[m]} | " + " | ".join(_num(c, signed=True) for c in cells) + " |")
    md = [
        "# Ablations against the main run",
        "",
        f"Main run: finished {main.get('finished', '?')}, protocol {main.get('protocol', 'transductive')}, "
        f"{main.get('seeds')} seeds. Each ablation reruns the whole benchmark with one named change "
        "(`benchmarks/ablations.py`); `python benchmarks/downstream.py --ablation-table --readme README.md` "
        "rebuilds this table from the stored results.",
        "",
        *(described or ["- no comparable ablation run yet"]),
        "",
        "## In distribution: balanced accuracy",
        "",
        "Main-run rows: mean over seeds. Ablation rows: ablation minus main run, paired by seed (same test pool, "
        "validation fold and seed), mean (seeds where the ablation is higher / seeds).",
        "",
        *ind,
        "",
        "## Under shift: mean balanced accuracy over the shift rows (seed 0)",
        "",
        "Main-run rows: the mean over `none` and the shifts (the cross-dataset row left out); ablation rows: that "
        "mean, ablation minus main run (one seed: no spread to show).",
        "",
        *(sh if shift_tasks else ["No shift rows in the main run."]),
        "",
    ]
    if left:
        md += ["## Not compared", "", *left, ""]
    return "\n".join(md)
