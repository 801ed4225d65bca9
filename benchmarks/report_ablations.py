"""``benchmarks/downstream.py --ablation-table``: every ablation run beside the main run, paired by seed.

An ablation changes one default (``benchmarks/ablations.py``) and reruns the benchmark with the same folds and
seeds, so each seed's pooled metric pairs with the main run's: the table gives, per task, the mean over seeds of
``ablation - main`` for the pretrained model finetuned, its probe and the model finetuned from scratch, and how
many seeds moved in the same direction. A positive number means the ablation's change (most undo a default) helped.

An ablation stored when the heads read other features than the main run's (``head_readout``) pairs instead with
the stored ablation that changes only the main run's readout to its own (e.g. ``no-head-gain``), so every row
still differs from its reference by one change; the table names that reference.

The table ends with whether the pretraining's validation probe, which picks each backbone's exported step, ranks
backbones as the benchmark does: every stored run with its own backbones gives one point per seed.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.ablations import NULL_ABLATION, Ablation
from benchmarks.tasks import BUDGET_DEFAULTS
from benchmarks.report import exported_step, log, paired, row_name, summarize, write_block
from benchmarks.units import PRETRAINED, PROBE, SCRATCH

README_BEGIN = "<!-- ablation-results:begin -->"
README_END = "<!-- ablation-results:end -->"
# The probe also with each subject's features standardised: what a pretraining change does to the features once
# each subject's offset and scale are gone; the model finetuned from scratch, because a finetuning change moves the
# baseline that pretraining has to beat as well.
ROWS = (PRETRAINED, PROBE, row_name(PROBE, "standardised"), SCRATCH)


# What a run stored without (part of) ``finetune_selection`` used: the best epoch, and where a margin was set, the
# probe's window-level standard error
OLD_FINETUNE_SELECTION = {"probe_margin": 0.0, "standard_error": "windows"}


def differences(main: Mapping[str, Any], other: Mapping[str, Any], task: str, row: str, metric: str) -> dict | None:
    """``other - main`` per seed of the pooled metric (the seeds both ran), with wins; None for a finetuned row
    when the two runs' LP-FT chose between probe and epochs by different rules and the ablation is not that rule."""
    if row == PRETRAINED and not same_finetune_selection(main, other):
        return None
    a = other.get("table", {}).get(task, {}).get(row)
    b = main.get("table", {}).get(task, {}).get(row)
    if not a or not b:
        return None
    both = {"t": {"x": a, "y": b}}
    return paired(both, "t", "x", "y", metric)


# What a run stored without a ``head_readout`` field read: the tokens alone (no gain), of the last layer.
OLD_HEAD_READOUT = {"gain": False, "read_layer": -1}
READOUT_FIELDS = frozenset(OLD_HEAD_READOUT)  # the FinetuneConfig fields a head_readout records


def readout_of(run: Mapping[str, Any]) -> dict[str, Any]:
    return {**OLD_HEAD_READOUT, **(run.get("head_readout") or {})}


def _own_finetune(run: Mapping[str, Any]) -> set[str]:
    return set(((run.get("ablation") or {}).get("finetune") or {}))


def reference(main: Mapping[str, Any], other: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]],
              earlier: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, Mapping[str, Any]] | None:
    """The run ``other`` pairs with: one whose heads read the same features apart from ``other``'s own change and,
    when ``other`` keeps the pretraining, with the same backbones (a finetuning change measured on other backbones
    would carry their pretraining noise). In order: the main run; an earlier main run (``earlier``, newest first:
    the run it was measured against, kept when a rerun replaced it); a stored ablation whose only change is the
    readout. A run whose LP-FT chose between probe and epochs by the same rule comes first; failing one, the
    finetuned row is left out (``differences``) and the others pair. None when there is none."""
    for strict in (True, False):
        def fits(run: Mapping[str, Any]) -> bool:
            return (_measured_alike(run, other) and not_comparable(run, other) is None
                    and (not strict or not _has_row(other, PRETRAINED) or same_finetune_selection(run, other)))

        if fits(main):
            return "main", main
        for name, run in sorted((earlier or {}).items(), reverse=True):
            if fits(run):
                return name, run
        for name, run in sorted(ablations.items()):
            if run is not other and _own_finetune(run) and _own_finetune(run) <= READOUT_FIELDS and fits(run):
                return name, run
    return None


def _measured_alike(run: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether ``run``'s heads read what ``other``'s read (apart from ``other``'s own change) and, when ``other``
    keeps the pretraining, from the same backbones."""
    keeps = not _changes_backbones(other)
    return _same_readout(run, other, but=_own_finetune(other)) and (not keeps or _same_backbones(run, other))


def _same_backbones(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs probed and finetuned the same backbones (the same pretraining losses, seed by seed)."""
    pa, pb = a.get("pretraining") or {}, b.get("pretraining") or {}
    shared = pa.keys() & pb.keys()
    return bool(shared) and all(pa[k].get("losses") == pb[k].get("losses") for k in shared)


def _same_readout(a: Mapping[str, Any], b: Mapping[str, Any], *, but: set[str]) -> bool:
    """Whether two runs' heads read the same features, apart from the readout fields in ``but`` (an ablation's
    own change)."""
    ra, rb = readout_of(a), readout_of(b)
    return all(ra[k] == rb[k] for k in READOUT_FIELDS - but)


def _pairing(main, other, ablations, earlier=None) -> tuple[str | None, Mapping[str, Any] | None, str | None]:
    """``(reference name, reference run, why not comparable)`` of one ablation."""
    ref = reference(main, other, ablations, earlier)
    if ref is not None:
        return ref[0], ref[1], None
    if _measured_alike(main, other):
        return None, None, not_comparable(main, other)
    if _same_readout(main, other, but=_own_finetune(other)):
        return None, None, "its backbones are not the main run's (pretrained again since); rerun it"
    return None, None, (f"heads read {readout_of(other)} (main {readout_of(main)}) and no stored run reads "
                        "the same with its backbones; rerun it")


# What a run stored without ``probe_selection`` used: the best-scoring step, read at the last layer, with the
# window-level standard error (a run that records only some of these used the older rule for the rest).
OLD_SELECTION = {"tolerance": 0.0, "read_layer": -1, "standard_error": "windows"}


def selection_of(run: Mapping[str, Any]) -> dict[str, Any]:
    return {**OLD_SELECTION, **(run.get("probe_selection") or {})}


def finetune_selection_of(run: Mapping[str, Any]) -> dict[str, Any]:
    return {**OLD_FINETUNE_SELECTION, **(run.get("finetune_selection") or {})}


def same_finetune_selection(main: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether the finetuned rows of ``other`` differ from ``main``'s only by the ablation's own change."""
    own = "probe_margin" in ((other.get("ablation") or {}).get("finetune") or {})
    return own or finetune_selection_of(main) == finetune_selection_of(other)


def _has_row(run: Mapping[str, Any], row: str) -> bool:
    return any(row in rows for rows in (run.get("table") or {}).values())


def not_comparable(main: Mapping[str, Any], other: Mapping[str, Any], *, selection: bool = True) -> str | None:
    """Why two runs cannot be paired (other folds, other mode, backbones exported by another probe rule unless
    ``selection`` is False), or None."""
    for task in set(main.get("tasks", {})) & set(other.get("tasks", {})):
        if main["tasks"][task]["folds"] != other["tasks"][task]["folds"]:
            return f"{task}: other folds"
    if main.get("mode") != other.get("mode"):
        return f"mode {other.get('mode')} vs {main.get('mode')}"
    # Backbones exported by another selection rule are other backbones (runs stored before the rule name none:
    # they exported the best-scoring step).
    ours_rule, their_rule = selection_of(main), selection_of(other)
    if selection and ours_rule != their_rule:
        differ = [f"{k} {their_rule.get(k)} (main {ours_rule.get(k)})" for k in sorted(ours_rule.keys() | their_rule.keys())
                  if their_rule.get(k) != ours_rule.get(k)]
        return f"backbones selected with probe {', '.join(differ)}; rerun it"
    # The budget must be the main run's but for the ablation's own overrides: an ablation stored before the
    # mode's defaults changed (e.g. its pretraining length) would otherwise be paired as if it changed one thing.
    # Seeds may differ (only the seeds both ran are paired).
    ours, theirs = main.get("budget") or {}, other.get("budget") or {}
    if ours and theirs:
        # a field added to the budget since a run was stored ran at its default there
        ours, theirs = {**BUDGET_DEFAULTS, **ours}, {**BUDGET_DEFAULTS, **theirs}
        expected = {**ours, **((other.get("ablation") or {}).get("budget") or {})}
        stale = [f"{k} {theirs.get(k)} (expected {expected.get(k)})" for k in sorted(expected.keys() | theirs.keys())
                 if k != "seeds" and theirs.get(k) != expected.get(k)]
        if stale:
            return "budget " + ", ".join(stale) + "; rerun it"
    return None


NO_ABLATIONS = ("No ablation run is stored beside this main run: `python benchmarks/downstream.py --ablation NAME` runs "
                "one (the names are in `benchmarks/ablations.py`), then `--ablation-table` compares them.")


def render_ablations(main: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]],
                     earlier: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    if not ablations:
        return "# Ablations\n\n" + NO_ABLATIONS + "\n"
    tasks = list(main.get("tasks", {}))
    lines = ["# Ablations (each minus the main run, paired by seed)", "",
             "Balanced accuracy / AUROC difference, mean over seeds (seeds where the ablation is better). Positive: "
             "the ablation's change helped. \"(minus X)\": the ablation was run when heads read other features than "
             "the main run's, or on backbones since pretrained again, so it is paired with X, run with the same "
             "features (and, for a finetuning change, the same backbones): a stored ablation, or an earlier main "
             "run kept beside this one (earlier-main-DATE).", ""]
    head = "| ablation | row | " + " | ".join(main["tasks"][t]["title"].split(" (")[0] for t in tasks) + " | mean |"
    lines += [head, "|---|---|" + "---|" * (len(tasks) + 1)]
    for name, other in sorted(ablations.items()):
        ref_name, ref, why = _pairing(main, other, ablations, earlier)
        if why:
            lines.append(f"| {name} | – | not comparable: {why} |")
            continue
        label = name if ref_name == "main" else f"{name} (minus {ref_name})"
        for row in ROWS:
            cells, means = [], []
            for task in tasks:
                ba = differences(ref, other, task, row, "balanced_accuracy")
                au = differences(ref, other, task, row, "auroc")
                if not ba:
                    cells.append("–")
                    continue
                means.append(ba["mean"])
                au_text = f" / {au['mean']:+.3f}" if au and math.isfinite(au["mean"]) else ""
                cells.append(f"{ba['mean']:+.3f}{au_text} ({ba['wins']}/{ba['n']})")
            mean = summarize(means)["mean"]
            mean_text = f"{mean:+.3f}" if means and math.isfinite(mean) else "–"
            lines.append(f"| {label} | {row} | " + " | ".join(cells) + f" | {mean_text} |")
    lines += ["", *[f"- **{n}**: {(o.get('ablation') or {}).get('description', '')}" for n, o in sorted(ablations.items())]]
    lines += [*noise_lines(main, ablations, earlier), ""]
    lines += validation_agreement(main, ablations)
    return "\n".join(lines)


MIN_POINTS = 5  # fewer backbones than this give no rank correlation


def _changes_backbones(run: Mapping[str, Any]) -> bool:
    spec = run.get("ablation") or {}
    return Ablation(description="", **{k: spec.get(k) or {} for k in ("model", "objective", "finetune", "budget")}
                    ).changes_pretraining


def validation_scores(run: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per pretraining seed, the validation probe at the step each backbone exported, mean over the seed's halves
    (``s{seed}-h{half}``): ``score`` and the features' ``effective_rank`` (mean over probe sets; absent when not
    logged). Seeds whose backbones logged no probe are left out."""
    by_seed: dict[str, dict[str, list[float]]] = {}
    for key, info in (run.get("pretraining") or {}).items():
        seed, _, half = key.partition("-")
        history = info.get("probe") or []
        if not (seed.startswith("s") and half.startswith("h") and history):
            continue
        entry = next((e for e in history if e["step"] == exported_step(info)), None)
        if entry is None or not math.isfinite(entry["score"]):
            continue
        found = by_seed.setdefault(seed[1:], {"score": [], "effective_rank": []})
        found["score"].append(entry["score"])
        ranks = [v["effective_rank"] for v in (entry.get("scores") or {}).values() if "effective_rank" in v]
        if ranks:
            found["effective_rank"].append(sum(ranks) / len(ranks))
    return {seed: {k: sum(v) / len(v) for k, v in found.items() if v} for seed, found in by_seed.items()}


def validation_agreement(main: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Whether the pretraining's validation probe (which picks the exported step) ranks backbones as the benchmark
    does: one point per seed of the main run and of every stored ablation with other backbones whose heads read
    the main run's features; Spearman's rho of the validation score, and of the features' effective rank, against
    each task's frozen-probe balanced accuracy of that seed and against its mean over tasks."""
    from scipy.stats import spearmanr

    # One run per set of backbones, all read and probed the same way: the readout and probe rule most of them were
    # run with (the main run's backbones enter through a readout-only ablation when the main run reads otherwise).
    pool = [main, *[r for _, r in sorted(ablations.items()) if not_comparable(main, r, selection=False) is None and (
        _changes_backbones(r) or (_own_finetune(r) and _own_finetune(r) <= READOUT_FIELDS and _same_backbones(r, main)))]]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in pool:
        groups.setdefault(json.dumps([readout_of(r), selection_of(r)], sort_keys=True), []).append(r)
    runs = max(groups.values(), key=len)
    tasks = list(main.get("tasks", {}))
    points: list[tuple[dict[str, float], dict[str, float]]] = []
    for run in runs:
        for seed, probe in validation_scores(run).items():
            found = {t: run.get("table", {}).get(t, {}).get(PROBE, {}).get("seeds", {}).get(seed, {})
                     .get("balanced_accuracy") for t in tasks}
            if all(v is not None and math.isfinite(v) for v in found.values()):
                points.append((probe, found))
    lines = ["## Does the validation probe rank backbones as the benchmark does?", ""]
    if len(points) < MIN_POINTS or not tasks:
        return lines + [f"Too few backbones with a validation probe ({len(points)}; {MIN_POINTS} needed).", ""]
    lines += [f"One point per pretraining seed of the main run and of each ablation that changes the backbones, "
              f"heads reading {readout_of(runs[0])}, the probe reading layer {selection_of(runs[0])['read_layer']} "
              f"({len(runs)} runs, {len(points)} points): the validation probe's score, and its features' effective "
              "rank, at the exported step (mean over the seed's halves) against that seed's frozen-probe balanced "
              "accuracy. Spearman's rho; points of one seed share their data, so p is indicative.", "",
              "| task | rho (score) | p | rho (effective rank) | p |", "|---|---|---|---|---|"]

    def rho(key: str, y: list[float]) -> str:
        pairs = [(p[0][key], v) for p, v in zip(points, y) if key in p[0]]
        if len(pairs) < MIN_POINTS:
            return "– | –"
        r, pval = spearmanr(*zip(*pairs))
        return f"{r:+.2f} | {pval:.3f}" if math.isfinite(r) else "– | –"

    for task in [*tasks, None]:
        y = [sum(p[1].values()) / len(tasks) if task is None else p[1][task] for p in points]
        title = "mean over tasks" if task is None else main["tasks"][task]["title"].split(" (")[0]
        lines.append(f"| {title} | {rho('score', y)} | {rho('effective_rank', y)} |")
    return lines + [""]


def keep_replaced_main(folder: Path, new: Mapping[str, Any]) -> Path | None:
    """Before ``new`` replaces ``{folder}/results.json``: when a stored ablation pairs with the current main run and
    would not pair with ``new`` (other backbones, another readout), or would lose its finetuned row (LP-FT selected
    by another rule), copy the current run's ``results.json`` and ``results.md`` to ``{folder}/earlier-main-DATE/``,
    so that ablation keeps the reference it was measured against. Returns the folder written, or None when nothing
    needed keeping."""
    main_file = folder / "results.json"
    if not main_file.is_file():
        return None
    old = json.loads(main_file.read_text())
    new = json.loads(json.dumps(new, default=str))  # as it will be stored
    ablations = stored_runs(folder, "ablation-")

    def pairs_with(main: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
        whole = not _has_row(run, PRETRAINED) or same_finetune_selection(main, run)
        return (reference(main, run, ablations) or ("",))[0] == "main" and whole

    orphaned = [name for name, run in ablations.items() if pairs_with(old, run) and not pairs_with(new, run)]
    if not orphaned:
        return None
    stamp = str(old.get("finished", "unknown")).removesuffix(" UTC").replace(" ", "-").replace(":", "")
    keep = folder / f"earlier-main-{stamp}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, keep / name)
    log(f"kept the replaced main run in {keep}: the ablations {', '.join(sorted(orphaned))} were measured against it")
    return keep


def stored_runs(folder: Path, prefix: str) -> dict[str, dict[str, Any]]:
    """The ``results.json`` of every ``{folder}/{prefix}NAME/``, by name: the ablations (``ablation-``, named
    without the prefix) or the earlier main runs (``earlier-main-``, named with it)."""
    keep = "" if prefix == "ablation-" else prefix
    return {keep + d.name.removeprefix(prefix): json.loads((d / "results.json").read_text())
            for d in sorted(folder.glob(f"{prefix}*")) if (d / "results.json").is_file()}


def write_ablation_table(folder: Path, readme: Path | None) -> str:
    main_file = folder / "results.json"
    if not main_file.is_file():
        raise SystemExit(f"{main_file}: no main run to compare with (run the benchmark first)")
    main = json.loads(main_file.read_text())
    ablations, earlier = stored_runs(folder, "ablation-"), stored_runs(folder, "earlier-main-")
    text = render_ablations(main, ablations, earlier)
    print(text)
    (folder / "ablations.md").write_text(text)
    log(f"wrote {folder / 'ablations.md'} ({len(ablations)} ablation runs)")
    if readme is not None:
        write_block(readme, readme_ablations(main, ablations, earlier), README_BEGIN, README_END,
                    demote="#")
        log(f"updated the ablation block of {readme}")
    return text


def readme_ablations(main: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]],
                     earlier: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The README's share of the ablation table: one line per ablation, the mean over tasks of each row's balanced
    accuracy difference (the per-task cells and AUROC are in ablations.md)."""
    if not ablations:
        return NO_ABLATIONS
    tasks = list(main.get("tasks", {}))
    lines = ["Each ablation minus the main run, balanced accuracy, mean over tasks of the seed-paired differences "
             "(positive: the ablation's change helped; \"(minus X)\": run when heads read other features or on "
             "backbones since pretrained again, paired with X, which reads the same with the same backbones); per task: "
             "[benchmarks/results/ablations.md](benchmarks/results/ablations.md).", "",
             "| ablation | " + " | ".join(ROWS) + " |", "|---|" + "---|" * len(ROWS)]
    for name, other in sorted(ablations.items()):
        ref_name, ref, why = _pairing(main, other, ablations, earlier)
        if why:
            lines.append(f"| {name} | not comparable: {why} |")
            continue
        cells = []
        for row in ROWS:
            means = [d["mean"] for t in tasks if (d := differences(ref, other, t, row, "balanced_accuracy"))]
            mean = summarize(means)["mean"]
            cells.append(f"{mean:+.3f}" if math.isfinite(mean) else "–")
        label = name if ref_name == "main" else f"{name} (minus {ref_name})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + noise_lines(main, ablations, earlier))


def noise_lines(main: Mapping[str, Any], ablations: Mapping[str, Mapping[str, Any]],
                earlier: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """What the null ablation (``NULL_ABLATION``: other pretraining seeds, nothing else) says of the table: how far
    pretraining noise alone moves the frozen probe, per task. Empty without it."""
    other = ablations.get(NULL_ABLATION)
    if other is None:
        return []
    ref_name, ref, why = _pairing(main, other, ablations, earlier)
    if why or ref is None:
        return []
    titles = {t: main["tasks"][t]["title"].split(" (")[0] for t in main.get("tasks", {})}
    diffs = {t: d["mean"] for t in titles if (d := differences(ref, other, t, PROBE, "balanced_accuracy"))}
    if not diffs:
        return []
    size = sum(abs(v) for v in diffs.values()) / len(diffs)
    worst = max(diffs, key=lambda t: abs(diffs[t]))
    return ["", f"Pretraining noise: `{NULL_ABLATION}` changes nothing but the pretraining's random stream, yet moves the "
            f"frozen probe by {size:.3f} balanced accuracy per task on average (up to {diffs[worst]:+.3f} on "
            f"{titles[worst]}; mean over tasks {sum(diffs.values()) / len(diffs):+.3f}): a pretraining change that moves "
            "a task by less is not told apart from noise at this size."]
