"""The report of ``benchmarks/downstream.py``: folds pooled into one prediction per window, metrics per seed, mean ±
std over seeds with bootstrap intervals over groups, constant predictors flagged and counted, paired differences,
the aims, and the README block. ``render`` is a pure function of the results.json payload, so ``--render``
reproduces a report from the JSON alone."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bootstrap import Ranking, balanced_accuracy, group_bootstrap
from benchmarks.published import published_lines
from benchmarks.units import BAND, EEGNET, PRETRAINED, PROBE, RANDOM_PROBE, SCRATCH

METRICS = ("balanced_accuracy", "auroc", "cohen_kappa", "weighted_f1")
TITLES = {"balanced_accuracy": "bal. acc.", "auroc": "AUROC", "cohen_kappa": "kappa", "weighted_f1": "weighted F1"}
ALIGNED = " [aligned]"
STANDARDISED = " [standardised]"
SUFFIXES = {"plain": "", "aligned": ALIGNED, "standardised": STANDARDISED}
# (row, reference) pairs the report compares, in every protocol both rows have
PAIRS = ((PRETRAINED, SCRATCH), (PRETRAINED, BAND), (PRETRAINED, PROBE), (PROBE, RANDOM_PROBE), (PROBE, BAND))
README_BEGIN = "<!-- downstream-results:begin -->"
README_END = "<!-- downstream-results:end -->"


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


def row_name(method: str, protocol: str) -> str:
    return method + SUFFIXES[protocol]


def protocol_of(row: str) -> str:
    return next((p for p, suffix in SUFFIXES.items() if suffix and row.endswith(suffix)), "plain")


METHOD_ORDER = (PRETRAINED, SCRATCH, PROBE, RANDOM_PROBE, BAND, EEGNET)


def row_order(row: str) -> tuple[int, int, str]:
    """Where a row goes in the table: by protocol, then by method (not in the order its jobs happened to finish)."""
    protocol = protocol_of(row)
    method = row[: len(row) - len(SUFFIXES[protocol])] if SUFFIXES[protocol] else row
    return (list(SUFFIXES).index(protocol), METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER),
            method)


# ------------------------------------------------------------------------------------------- pooling the folds
def pool_predictions(units: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per task: the windows of every fold in fold order (``y``, ``groups``) and per row and seed the pooled
    ``pred`` (each fold's own threshold applied) and probabilities ``p`` (the positive class's for binary tasks).
    A row/seed missing a fold (a failed unit) is left out, with the reason in ``missing``."""
    out: dict[str, Any] = {}
    by_task: dict[str, list] = {}
    for u in units:
        by_task.setdefault(u["task"], []).append(u)
    for task, us in by_task.items():
        folds = sorted({u["fold"] for u in us})
        ref = {}
        for u in us:
            if "error" not in u:
                ref.setdefault(u["fold"], (u["y"], u["groups"]))
        if set(ref) != set(folds):
            continue
        entry = {"y": [v for f in folds for v in ref[f][0]], "groups": [g for f in folds for g in ref[f][1]],
                 "folds": [f for f in folds for _ in ref[f][0]], "rows": {}, "missing": {}, "constant": {}}
        cells: dict[tuple[str, int], dict[int, Mapping]] = {}
        for u in us:
            cells.setdefault((row_name(u["method"], u["protocol"]), u["seed"]), {})[u["fold"]] = u
        for (row, seed), per_fold in cells.items():
            bad = [f"fold {f}: {per_fold[f].get('error', 'missing')}" for f in folds
                   if f not in per_fold or "error" in per_fold[f]]
            if bad:
                entry["missing"].setdefault(row, {})[str(seed)] = bad
                continue
            if any(per_fold[f]["y"] != ref[f][0] or per_fold[f]["groups"] != ref[f][1] for f in folds):
                entry["missing"].setdefault(row, {})[str(seed)] = ["test windows differ from the other methods'"]
                continue
            from finetune.metrics import is_constant_predictor, predict_labels

            pred, prob, constant = [], [], 0
            for f in folds:
                proba = np.asarray(per_fold[f]["proba"], dtype=np.float64)
                labels = predict_labels(proba, per_fold[f].get("threshold"))
                pred += labels.tolist()
                prob += (proba[:, 1] if proba.shape[1] == 2 else proba).round(4).tolist()
                spread = float(np.ptp(proba[:, np.bincount(labels).argmax()]))
                constant += int(is_constant_predictor({"predicted_classes": len(set(labels.tolist())), "proba_spread": spread}))
            entry["rows"].setdefault(row, {})[str(seed)] = {"pred": pred, "p": prob}
            entry["constant"].setdefault(row, {})[str(seed)] = constant
        out[task] = entry
    return out


def _proba(p: Sequence, n_classes: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if n_classes == 2:
        return np.c_[1 - p, p]
    return p / p.sum(axis=1, keepdims=True)  # stored rounded to 4 decimals: rows sum to 1 within ~1e-4 only


def metrics_of(y: Sequence[int], pred: Sequence[int], p: Sequence, n_classes: int) -> dict[str, float]:
    from finetune.metrics import classification_metrics

    m = classification_metrics(np.asarray(y), _proba(p, n_classes), y_pred=np.asarray(pred), n_classes=n_classes)
    if n_classes > 2:
        m["auroc"] = m.get("auroc_macro", math.nan)
    return {k: m[k] for k in (*METRICS, "predicted_classes")}


def table_of(pooled: Mapping[str, Any], n_classes: Mapping[str, int]) -> dict[str, dict]:
    """``{task: {row: {metric: {mean, std, n}, seeds: {seed: metrics}, constant_folds, folds_run}}}``."""
    table: dict[str, dict] = {}
    for task, entry in pooled.items():
        k = n_classes[task]
        n_folds = len(set(entry["folds"]))
        table[task] = {}
        for row, seeds in entry["rows"].items():
            per_seed = {s: metrics_of(entry["y"], v["pred"], v["p"], k) for s, v in seeds.items()}
            cell = {m: summarize([v[m] for v in per_seed.values()]) for m in METRICS}
            cell["seeds"] = per_seed
            cell["constant_folds"] = int(sum(entry["constant"][row].values()))
            cell["folds_run"] = n_folds * len(seeds)
            cell["ci"] = bootstrap_ci(entry, row, k)
            table[task][row] = cell
        for suffix in SUFFIXES.values():
            for row, ref in PAIRS:
                if row + suffix in entry["rows"] and ref + suffix in entry["rows"]:
                    table[task][row + suffix].setdefault("paired_ci", {})[ref + suffix] = {
                        m: paired_ci(entry, row + suffix, ref + suffix, k, m) for m in ("balanced_accuracy", "auroc")}
    return table


def bootstrap_ci(entry: Mapping[str, Any], row: str, n_classes: int) -> dict[str, float] | None:
    """95 % interval of the seed-mean balanced accuracy under resampling groups (subjects / recordings)."""
    seeds = sorted(entry["rows"][row])
    y = np.asarray(entry["y"], dtype=np.int64)
    preds = [np.asarray(entry["rows"][row][s]["pred"], dtype=np.int64) for s in seeds]
    return group_bootstrap([entry["groups"]] * len(seeds), lambda i, w: balanced_accuracy(y, preds[i], n_classes, w))


def paired_ci(entry: Mapping[str, Any], row: str, ref: str, n_classes: int,
              metric: str = "balanced_accuracy") -> dict[str, float] | None:
    """95 % interval of the seed-mean difference ``row - ref`` under resampling groups, both rows scored on the
    same resampled groups (the seeds both rows have). Whether a difference between two methods is more than which
    subjects happened to be tested: an interval that holds 0 does not rank them."""
    seeds = sorted(set(entry["rows"][row]) & set(entry["rows"][ref]))
    if not seeds:
        return None
    y = np.asarray(entry["y"], dtype=np.int64)
    if metric == "balanced_accuracy":
        pairs = [tuple(np.asarray(entry["rows"][name][s]["pred"], dtype=np.int64) for name in (row, ref)) for s in seeds]
        return group_bootstrap([entry["groups"]] * len(seeds), lambda i, w: balanced_accuracy(y, pairs[i][0], n_classes, w)
                               - balanced_accuracy(y, pairs[i][1], n_classes, w))
    # binary rows store the positive class's probability, multi-class rows every class's (rounded: renormalised)
    score = lambda p: np.asarray(p, dtype=np.float64) if n_classes == 2 else _proba(p, n_classes)  # noqa: E731
    ranked = [tuple(Ranking(y, score(entry["rows"][name][s]["p"]), n_classes) for name in (row, ref)) for s in seeds]
    return group_bootstrap([entry["groups"]] * len(seeds), lambda i, w: ranked[i][0].auroc(w) - ranked[i][1].auroc(w))


def stored_paired_ci(table: Mapping[str, Any], task: str, row: str, ref: str, metric: str) -> dict | None:
    """The interval of ``row - ref`` that ``table_of`` stored (None: the run has none, e.g. too few groups)."""
    return table.get(task, {}).get(row, {}).get("paired_ci", {}).get(ref, {}).get(metric)


def separated(table: Mapping[str, Any], task: str, row: str, ref: str, metric: str) -> int:
    """+1 when the interval of ``row - ref`` (:func:`paired_ci`) lies above 0, -1 below, 0 when it holds 0 or the
    run has none."""
    ci = stored_paired_ci(table, task, row, ref, metric)
    return 0 if not ci else (1 if ci["lo"] > 0 else -1 if ci["hi"] < 0 else 0)


def paired(table: Mapping[str, Any], task: str, row: str, ref: str, metric: str = "balanced_accuracy") -> dict | None:
    """``row - ref`` per seed (same folds), mean ± std, and the seeds where ``row`` is better."""
    a, b = table.get(task, {}).get(row), table.get(task, {}).get(ref)
    if not a or not b:
        return None
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    diffs = [a["seeds"][s][metric] - b["seeds"][s][metric] for s in seeds]
    diffs = [d for d in diffs if math.isfinite(d)]
    return {**summarize(diffs), "wins": int(sum(d > 0 for d in diffs))} if diffs else None


# ---------------------------------------------------------------------------------------------------- report
def _mean(table, task, row, metric="balanced_accuracy") -> float:
    return table.get(task, {}).get(row, {}).get(metric, {}).get("mean", math.nan)


def aims_lines(table: Mapping[str, Any], tasks: Mapping[str, Any], protocol: str = "plain") -> list[str]:
    """The aims, each checked on the table (means over pretraining seeds); rows this run has no results for are
    left out of a comparison, never counted as a loss or a win."""
    r = lambda m: row_name(m, protocol)  # noqa: E731
    has = lambda t, m: r(m) in table.get(t, {})  # noqa: E731
    names = [t for t in table if has(t, PROBE) or has(t, PRETRAINED)]
    lines = []
    eeg_rows = [r(m) for m in (PRETRAINED, SCRATCH, PROBE, RANDOM_PROBE)]
    const = sum(table[t][row]["constant_folds"] for t in names for row in eeg_rows if row in table[t])
    runs = sum(table[t][row]["folds_run"] for t in names for row in eeg_rows if row in table[t])
    lines.append(f"- constant predictors among the EEGMamba fold models: {const} of {runs}")
    tuned = [t for t in names if has(t, PRETRAINED) and has(t, PROBE)]
    if tuned:
        below = [t for t in tuned if _mean(table, t, r(PRETRAINED)) < _mean(table, t, r(PROBE)) - 1e-9]
        clear = [t for t in tuned if separated(table, t, r(PRETRAINED), r(PROBE), "balanced_accuracy") < 0]
        lines.append(f"- finetuned (LP-FT) below its own frozen probe (test balanced accuracy): on {len(below)}/{len(tuned)} "
                     f"tasks ({', '.join(below) or 'none'}); 95 % group interval of the difference below 0 on "
                     f"{', '.join(clear) or 'none'}")
    best = PRETRAINED if tuned else PROBE
    for metric in ("balanced_accuracy", "auroc"):
        pairs = [(t, ref) for ref in (SCRATCH if best == PRETRAINED else RANDOM_PROBE, BAND) for t in names
                 if has(t, best) and has(t, ref)]
        for ref in dict.fromkeys(ref for _, ref in pairs):
            ts = [t for t, rr in pairs if rr == ref]
            ok = [t for t in ts if _mean(table, t, r(best), metric) > _mean(table, t, r(ref), metric)
                  or (ref == BAND and _mean(table, t, r(best), metric) >= _mean(table, t, r(ref), metric))]
            types = sorted({tasks[t]["recipe"] for t in ok})
            relation = ">=" if ref == BAND else ">"
            above = [t for t in ts if separated(table, t, r(best), r(ref), metric) > 0]
            below = [t for t in ts if separated(table, t, r(best), r(ref), metric) < 0]
            lines.append(f"- {TITLES[metric]}: {r(best)} {relation} {r(ref)} on {len(ok)}/{len(ts)} tasks "
                         f"({', '.join(ok) or 'none'}; task types {', '.join(types) or 'none'}); 95 % group interval "
                         f"of the difference above 0 on {', '.join(above) or 'none'}, below 0 on {', '.join(below) or 'none'}")
    if "eegmat" in names:
        v = _mean(table, "eegmat", r(best))
        lines.append(f"- EEGMAT, subject-wise CV over every window: {r(best)} {v:.3f} balanced accuracy (aim >= 0.75: "
                     f"{'met' if v >= 0.75 else 'not met'}); band power + LR {_mean(table, 'eegmat', r(BAND)):.3f}")
    return lines


def results_table(table: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    head = ("| task | method | " + " | ".join(TITLES[m] for m in METRICS)
            + " | 95 % CI of bal. acc. (groups) | constant fold models |")
    lines = [head, "|" + "---|" * (len(METRICS) + 4)]
    for task, rows in table.items():
        for row, cell in rows.items():
            ci = cell.get("ci")
            ci_text = f"[{ci['lo']:.3f}, {ci['hi']:.3f}] ({ci['n_groups']} groups)" if ci else "–"
            flag = f"**{cell['constant_folds']}** of {cell['folds_run']}" if cell["constant_folds"] else f"0 of {cell['folds_run']}"
            lines.append(f"| {titles.get(task, task)} | {row} | " + " | ".join(fmt(cell.get(m)) for m in METRICS)
                         + f" | {ci_text} | {flag} |")
    return "\n".join(lines)


def paired_lines(table: Mapping[str, Any], titles: Mapping[str, str], protocol: str = "plain") -> list[str]:
    lines = []
    r = lambda m: row_name(m, protocol)  # noqa: E731
    for row, ref in PAIRS:
        cells = []
        for task in table:
            for metric in ("balanced_accuracy", "auroc"):
                d = paired(table, task, r(row), r(ref), metric)
                if d:
                    ci = stored_paired_ci(table, task, r(row), r(ref), metric)
                    cells.append(f"{titles.get(task, task).split(' (')[0]} {TITLES[metric]} {d['mean']:+.3f} ± {d['std']:.3f} "
                                 f"({d['wins']}/{d['n']})" + (f" [{ci['lo']:+.3f}, {ci['hi']:+.3f}]" if ci else ""))
        if cells:
            lines.append(f"- {r(row)} minus {r(ref)}: " + "; ".join(cells))
    return lines


def exported_step(info: Mapping[str, Any]) -> int:
    """The step whose weights a backbone's pretraining exported (``selected_step`` None: the last step)."""
    return info.get("selected_step") or info.get("steps", len(info.get("losses") or []))


def pretraining_lines(payload: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, info in payload.get("pretraining", {}).items():
        losses = info.get("losses") or []
        k = max(1, len(losses) // 10)
        probe = info.get("probe") or []
        steps = info.get("steps", len(losses))
        exported = exported_step(info)
        lines.append(f"- {name}: {steps} steps, loss {np.mean(losses[:k]):.3f} -> {np.mean(losses[-k:]):.3f}"
                     + (f"; probe score {' '.join(format(h['score'], '.3f') for h in probe)} (steps "
                        f"{' '.join(str(h['step']) for h in probe)}), exported step {exported}" if probe else "")
                     + f"; {info.get('seconds', 0) / 60:.1f} min")
    return lines


def compute_time(payload: Mapping[str, Any]) -> str:
    """The work behind the numbers, summed over jobs, beside this invocation's wall time (which is short when the
    work folder's cache held the backbones and units)."""
    pre = sum(v.get("seconds", 0.0) for v in payload.get("pretraining", {}).values()) / 60
    units = sum(u.get("seconds", 0.0) or 0.0 for u in payload.get("units", [])) / 60
    return (f"compute summed over jobs (one thread each): pretraining {pre:.0f} min, finetuning, probes and baselines "
            f"{units:.0f} min; wall time of this invocation {payload['total_s'] / 60:.1f} min (cached work is reused)")


def render(payload: Mapping[str, Any]) -> str:
    """The Markdown report of one run (a pure function of its results.json payload)."""
    tasks = payload["tasks"]
    titles = {t: v["title"] for t, v in tasks.items()}
    # rows in one order (protocol, then method), not in the order a run's jobs happened to finish
    table = {t: dict(sorted(rows.items(), key=lambda item: row_order(item[0]))) for t, rows in payload["table"].items()}
    b = payload["budget"]
    schedule = ("the recipes' own schedule" if b["finetune_epochs"] is None else
                f"{b['finetune_epochs']} epochs ({b['warmup_epochs']} warm-up, patience {b['patience']})")
    info = payload["machine"]
    found = {protocol_of(row) for rows in table.values() for row in rows}
    protocols = [p for p in SUFFIXES if p in found]
    md = [
        f"# Downstream benchmark ({payload['mode']} mode)",
        "",
        f"Command: `{' '.join(payload['command'])}`  ",
        f"Machine: {info.get('cpu', info.get('processor'))}, {info['cpu_count']} CPU cores, torch {info['torch']}, "
        f"{payload.get('jobs', 1)} worker process(es)  ",
        f"Finished: {payload['finished']} ({payload['mode']} mode), {compute_time(payload)}",
        "",
        f"Protocol: every window of every task; groups (subjects, else recordings) dealt into stratified folds nested in "
        f"two halves; each of {b['seeds']} pretraining seeds pretrains two tiny backbones ({b['pretrain_steps']} steps), "
        "each without one half of every task and without the probe pool, and each fold is tested by the backbone that "
        "never saw it; every test window is predicted once per seed, and the folds are pooled before scoring. Seed s "
        f"also seeds finetuning (split of the other groups into train / validation, initialisation). "
        + ("Frozen-feature methods only (`--frozen-only`): no model is finetuned. " if payload.get("frozen_only") else
           f"Finetuning: {schedule}; model selection on validation AUROC; binary thresholds chosen on validation. ")
        + "Mean ± std over seeds: for the "
        "pretrained probe the spread of pretraining seeds alone (the probe is deterministic), for the from-scratch model "
        "that of finetuning seeds. Intervals: bootstrap over groups of the seed-mean balanced accuracy. "
        f"{ALIGNED.strip()} rows: Euclidean alignment per subject, for every method listed"
        + ("." if b["aligned_finetune"] else " (the fast mode aligns the probes and band power only).")
        + (f" {STANDARDISED.strip()} rows: each subject's frozen features (the probe's, band power's) standardised by that "
           "subject's own mean and standard deviation before the classifier (no label used; a finetuned backbone's "
           "features move every step, so finetuned models have no such row)." if "standardised" in found else ""),
        "",
        results_table(table, titles),
        "",
    ]
    for protocol in protocols:
        md += [f"## Aims ({protocol} protocol)", "", *aims_lines(table, tasks, protocol), "",
               "Paired by seed (same folds), mean ± std of the difference (seeds where the first is better) [95 % "
               "interval of the seed-mean difference, resampling test groups, both methods on the same draw]:", "",
               *paired_lines(table, titles, protocol), ""]
    md += published_lines(table, fmt)
    md += ["## Pretraining", "", *pretraining_lines(payload), "", "## Notes", "",
           *[f"- {n}" for n in payload.get("notes", [])], "", "## Wall time per stage", "",
           "| stage | minutes |", "|---|---|", *[f"| {k} | {v / 60:.1f} |" for k, v in payload["stages_s"].items()], ""]
    return "\n".join(md)


def write_results(payload: Mapping[str, Any], folder: Path) -> str:
    """``results.json`` (first: a rendering bug must never cost the run behind it) and ``results.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(_json_safe(payload), separators=(",", ":")))
    text = render(payload)
    (folder / "results.md").write_text(text)
    log(f"wrote {folder / 'results.json'} and results.md")
    return text


def readme_summary(report: str) -> str:
    """The README's share of a report (the results.md text): its ``Finished:`` line and each ``## Aims`` section up
    to its paired differences, then where the whole report is. The README stays short; the documentation site
    shows the whole report."""
    out: list[str] = []
    in_aims = False
    for line in report.splitlines():
        if line.startswith("Finished:"):
            out += [line.rstrip(), ""]
        elif line.startswith("## "):
            in_aims = line.startswith("## Aims")
            if in_aims:
                out += [line, ""]
        elif in_aims and line.startswith("Paired by seed"):
            in_aims = False
        elif in_aims and line.strip():
            out.append(line)
        elif in_aims and out and out[-1]:
            out.append("")
    out += ["", "The whole report: [benchmarks/results/results.md](benchmarks/results/results.md) (the documentation "
            "site's Results page)."]
    return "\n".join(out)


def update_readme(readme: Path, report: str) -> None:
    """Put the README's share of ``report`` (``readme_summary``) between the README's markers, headings one level
    down: the README's numbers are the script's output, never typed by hand."""
    write_block(readme, readme_summary(report), README_BEGIN, README_END, demote="#")
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


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


__all__ = ["ALIGNED", "EEGNET", "METRICS", "README_BEGIN", "README_END", "STANDARDISED", "aims_lines", "bootstrap_ci",
           "fmt", "log", "metrics_of", "paired", "paired_ci", "pool_predictions", "protocol_of", "render", "row_name", "summarize",
           "table_of", "update_readme", "write_block", "write_results"]
