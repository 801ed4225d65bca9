"""Does pretraining help? End-to-end downstream benchmark on the real recordings in ``../shared/data``.

One run does everything, from raw files to the results table::

    python benchmarks/downstream.py --jobs 2 --readme README.md   # fast default (about 40 minutes on 2 cores)
    python benchmarks/downstream.py --full --jobs 2               # the recipes' own schedule (many hours on a CPU)
    python benchmarks/downstream.py --tasks eegmat,sleep --seeds 2 # a subset
    python benchmarks/downstream.py --full --score eegmat --jobs 2  # -> benchmarks/results/full-eegmat/, same backbones
    python benchmarks/downstream.py --render benchmarks/results/results.json   # re-render the report only
    python benchmarks/downstream.py --ablation no-band-power      # -> benchmarks/results/ablation-no-band-power/
    python benchmarks/downstream.py --ablation-table --readme README.md       # ablations vs the main run

Stages (each timed; the wall times are part of the report):

1. shards: every set of the data folder through ``shards.writer.build`` (Bonn, DREAMS, EEGMMIDB subject 1, mental
   stress, EEGMAT, the unlabeled recordings), every window kept.
2. folds (``benchmarks.folds``): per task the groups (subjects, else recordings) dealt into stratified folds nested
   in two halves; four EEGMAT subjects set aside as the pretraining's validation probe; the pretraining shards of
   each half (everything but that half's groups and the probe pool; labels unused).
3. pretraining: per seed, two tiny EEGMamba backbones with the suite's default objective, one per half, the
   validation probe picking the exported step.
4. per task, fold, seed and protocol (``benchmarks.units``): EEGMamba finetuned from the backbone that never saw the
   fold (LP-FT), the same from scratch, linear probes of that backbone and of a random-init one, band power +
   logistic regression and (with braindecode and ``--eegnet`` or ``--full``) EEGNet, all on the same split; the
   aligned protocol (Euclidean alignment per subject) repeats them where a task has subjects, and the standardised
   protocol repeats the frozen-feature methods with each subject's features standardised by their own statistics.
5. report (``benchmarks.report``): folds pooled into one prediction per window and seed, metrics per seed, mean ±
   std over seeds, bootstrap intervals over groups, constant predictors counted, paired differences, the aims;
   ``--results`` gets results.json + results.md (the docs site shows results.md as it is), ``--readme README.md``
   the run line and the aims between the README's markers.

Every number in the written report comes from this script. Work is cached in ``--out`` (shards, backbones, one
JSON per unit): a rerun after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: import the suite from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablations import ABLATIONS, ablation, apply
from benchmarks.folds import TaskFolds, assign_folds, probe_pool, published_folds
from benchmarks.report import log, pool_predictions, table_of, update_readme, write_results
from benchmarks.stages import (backbone_root, both, build_shards, excluding, finetune_selection, head_readout,
                               in_fraction, machine, pretrain_backbone, probe_selection, subset_shards)
from benchmarks.tasks import FAST, FULL, SHARD_SETS, TASKS, TaskPlan
from benchmarks.units import EEGNET, FEATURES, PRETRAINED, PROBE, SCRATCH, Context, FeatureJob, Unit, run_units

REPO = Path(__file__).resolve().parents[1]
# Tasks whose groups are people: the subject-adaptive protocols adapt to each subject's (excerpt's, run's) windows. Bonn's
# groups are segments of unknown patients, where alignment would only normalise each segment's amplitude away.
ALIGNABLE = ("sleep", "motor_imagery", "emotion", "eegmat")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/downstream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real-data folder (../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="work dir (default runs/downstream[-ablation-NAME])")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.json/md go (default benchmarks/results; a run scoring a subset of the "
                        "tasks: benchmarks/results/[full-]TASK[-TASK...]); an ablation's go to RESULTS/ablation-NAME, "
                        "and --ablation-table compares those with RESULTS/results.json")
    p.add_argument("--full", action="store_true", help="the recipes' own finetuning schedule, aligned finetuned rows, EEGNet")
    p.add_argument("--seeds", type=int, default=None, help="pretraining (and finetuning) seeds (default: the mode's, 3)")
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset of the tasks")
    p.add_argument("--score", default=None, metavar="TASKS",
                   help="finetune and score only these of --tasks (comma-separated); the others still keep their "
                        "held-out halves out of pretraining, so the backbones of a run of every task are reused")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the mode's pretraining steps (quick trials)")
    p.add_argument("--epochs", type=int, default=None, help="override the mode's finetuning epochs (quick trials)")
    p.add_argument("--frozen-only", action="store_true",
                   help="only the frozen-feature methods (probes, band power): no finetuning, a fraction of the time; "
                        "for judging a pretraining change (e.g. an objective ablation) by its probes")
    p.add_argument("--no-aligned", action="store_true",
                   help="leave out the subject-adaptive protocols (aligned, standardised)")
    p.add_argument("--eegnet", action="store_true", help="EEGNet rows in the fast mode too (needs braindecode)")
    p.add_argument("--ablation", default=None, metavar="NAME",
                   help=f"run with one named change (benchmarks/ablations.py): {', '.join(ABLATIONS)}")
    p.add_argument("--ablation-table", action="store_true",
                   help="no training: compare every ablation-*/results.json of --results (default "
                        "benchmarks/results) with the main run there")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON", help="only re-render results.md")
    p.add_argument("--readme", type=Path, default=None, metavar="README", help="also replace the README's results block")
    args = p.parse_args(argv)
    known = {t.name for t in TASKS}
    args.task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.task_names) - known)
    if unknown or not args.task_names:
        p.error(f"--tasks: unknown task(s) {unknown}; known: {sorted(known)}")
    args.scored = args.task_names if args.score is None else [t.strip() for t in args.score.split(",") if t.strip()]
    outside = sorted(set(args.scored) - set(args.task_names))
    if outside or not args.scored:
        p.error(f"--score: {outside or 'no task'} not among --tasks {args.task_names}")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    args.ablation_spec = ablation(args.ablation) if args.ablation else None
    suffix = f"-ablation-{args.ablation}" if args.ablation else ""
    args.out = args.out or Path(f"runs/downstream{suffix}")
    # An ablation writes beside the main run, never over it: DIR/ablation-NAME; so does a run that scores a
    # subset of the tasks unless --results names its folder: DIR/[full-]TASK[-TASK...].
    args.results_root = args.results or REPO / "benchmarks" / "results"
    if args.ablation:
        args.results = args.results_root / f"ablation-{args.ablation}"
    elif args.results is None and set(args.scored) != known:
        args.results = args.results_root / "-".join((["full"] if args.full else []) + args.scored)
    else:
        args.results = args.results_root
    args.budget = budget_of(args, p)
    return args


def budget_of(args: argparse.Namespace, parser: argparse.ArgumentParser):
    budget = FULL if args.full else FAST
    if args.ablation_spec:
        budget = apply(budget, args.ablation_spec.budget, where=f"ablation {args.ablation} budget")
    for name, field in (("seeds", "seeds"), ("pretrain_steps", "pretrain_steps"), ("epochs", "finetune_epochs")):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
            budget = dataclasses.replace(budget, **{field: value})
    if args.pretrain_steps is not None:
        budget = dataclasses.replace(budget, probe_every=max(1, min(budget.probe_every, args.pretrain_steps // 2)))
    if args.epochs is not None:
        budget = dataclasses.replace(budget, warmup_epochs=min(budget.warmup_epochs or 1, args.epochs),
                                     patience=budget.patience or args.epochs)
    return budget


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        text = write_results(payload, args.render.parent)
    elif args.ablation_table:
        from benchmarks.report_ablations import write_ablation_table

        write_ablation_table(args.results_root, args.readme)
        return 0
    else:
        payload = run(args)
        if args.ablation is None:
            from benchmarks.report_ablations import keep_replaced_main

            keep_replaced_main(args.results, payload)
        text = write_results(payload, args.results)
    print(text)
    if args.readme is not None:
        update_readme(args.readme, text)
    return 0


# --------------------------------------------------------------------------------------------------- stages
def available_sets(data_root: Path, notes: list[str]) -> list[str]:
    """The shard sets whose adapter is registered and whose folder exists."""
    from shards.corpora import get_corpus

    sets = []
    for name, (adapter, rel, _) in SHARD_SETS.items():
        try:
            get_corpus(adapter)
        except KeyError as err:
            notes.append(f"shard set {name} skipped: no corpus adapter {adapter!r} ({err})")
            continue
        if not (data_root / rel).is_dir():
            notes.append(f"shard set {name} skipped: {data_root / rel} does not exist")
            continue
        sets.append(name)
    return sets


def task_folds(plan: TaskPlan, folder: Path) -> tuple[TaskFolds, Any, TaskFolds | None]:
    """The task's folds (and its data, for the counts) from its shards, and its published split when the data hold
    every subject of one (EEGMAT: subjects 00-35)."""
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import choose_group_key

    data = load_task_data(get_recipe(plan.recipe_name), str(folder), classes=plan.classes, window_s=plan.window_s)
    key = choose_group_key(data.metas, prefer=data.recipe.group_by)
    pool = probe_pool(data.metas, data.labels, plan.probe_pool, group_key=key) if plan.probe_pool else ()
    folds = assign_folds(plan.name, data.metas, data.labels, plan.folds, group_key=key, pool=pool)
    return folds, data, published_folds(f"{plan.name}_published", data.metas, pool)


def backbone_name(plan: TaskPlan, seed: int, half: int) -> str:
    """The backbone that tests a half of ``plan``: ``s{seed}-h{half}``, or ``s{seed}-pub`` for a published split."""
    return f"s{seed}-pub" if plan.name.endswith("_published") else f"s{seed}-h{half}"


def pretraining_sets(args, sets: Sequence[str], plans: Sequence[TaskPlan], folds: Mapping[str, TaskFolds],
                     notes: list[str]) -> tuple[dict[int, dict[str, Path]], list[Path]]:
    """Per half the pretraining shards (every set without that half's groups and the probe pool), and the probe
    pool's shards."""
    halves: dict[Any, dict[str, Path]] = {}
    published = [p for p in plans if p.name.endswith("_published")]
    for half in (0, 1) + (("pub",) if published else ()):
        held: dict[str, dict[str, set[str]]] = {}
        for plan in plans:
            if (half == "pub") != plan.name.endswith("_published"):
                continue
            h = folds[plan.name].held_out(0 if half == "pub" else half)
            entry = held.setdefault(plan.corpus, {"recordings": set(), "subjects": set()})
            for kind in entry:
                entry[kind] |= h[kind]
        stamp = {c: {k: sorted(v) for k, v in h.items()} for c, h in held.items()}
        keep = {c: excluding(h) for c, h in held.items()}
        fraction = args.budget.pretrain_data_fraction
        if fraction < 1:  # the main run's stamps stay as they were
            keep = {c: both(keep.get(c), in_fraction(fraction, salt=c)) for c in sets}
            stamp = {c: {**stamp.get(c, {}), "fraction": fraction, "draw": "sha256 of set/recording"} for c in sets}
        halves[half] = subset_shards(args.data, args.out, f"shards-pretrain-h{half}", sets, keep, stamp)
    probe = []
    for plan in plans:
        if plan.name.endswith("_published"):
            continue
        pool = [g for g, f in folds[plan.name].fold_of.items() if f == -1]
        if pool:
            subjects = {s for g in pool for s in folds[plan.name].members[g]["subjects"]}
            recs = {r for g in pool for r in folds[plan.name].members[g]["recordings"]}
            keep = {plan.corpus: (lambda rec, s=subjects, r=recs: rec.subject in s or rec.recording in r)}
            probe += list(subset_shards(args.data, args.out, "shards-probe", [plan.corpus], keep,
                                        {plan.corpus: sorted(subjects | recs)}).values())
            notes.append(f"{plan.name}: {len(pool)} groups are the pretraining's validation probe (never pretrained on, "
                         f"never tested; finetuning trains on them): {', '.join(sorted(pool))}")
    return halves, probe


def _pretrain_job(job):
    name, folders, root, budget, seed, probe, ablation_spec = job
    import torch

    torch.set_num_threads(1)
    return name, pretrain_backbone(name, folders, root, budget, seed, probe=probe, ablation=ablation_spec)


def pretraining(args, halves: Mapping[int, Mapping[str, Path]], probe: Sequence[Path]) -> dict[str, dict]:
    """One backbone per seed and half (``s{seed}-h{half}``), in ``--jobs`` processes."""
    root = backbone_root(args.out, args.ablation, args.ablation_spec)
    jobs = [(f"s{seed}-{'pub' if half == 'pub' else f'h{half}'}", dict(halves[half]), root, args.budget, seed,
             list(probe), args.ablation_spec) for seed in range(args.budget.seeds) for half in halves]
    if args.jobs <= 1:
        return dict(map(_pretrain_job, jobs))
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
        return dict(pool.map(_pretrain_job, jobs))


def scored_plans(plans: Sequence[TaskPlan], extends: Mapping[str, str], scored: Sequence[str]) -> list[TaskPlan]:
    """The plans to finetune and score: those of the ``scored`` tasks, with a published-split plan (named in
    ``extends``: its name -> the task it splits) kept or left out with its task. Called after the pretraining sets
    are drawn, so every task of the run still keeps its held-out half out of pretraining."""
    return [p for p in plans if extends.get(p.name, p.name) in scored]


def unit_work(args, plans, folders, folds, backbones, braindecode: bool) -> list[tuple[Any, list[Context]]]:
    """Every job of the run with its contexts: one ``Unit`` per finetuned model and fold, one ``FeatureJob`` per
    frozen-feature method, task, seed, protocol and half; the slow finetuning first so the workers stay busy."""
    budget = dataclasses.asdict(args.budget)
    overrides = dict(args.ablation_spec.finetune) if args.ablation_spec else {}
    finetuned = [] if args.frozen_only else [PRETRAINED, SCRATCH] + ([EEGNET] if braindecode else [])
    work: list[tuple[Any, list[Context]]] = []
    for plan in plans:
        tf = folds[plan.name]
        ctx = {fold: Context(shards=str(folders[plan.corpus]), recipe=plan.recipe_name, classes=plan.classes,
                             window_s=plan.window_s, test_groups=tuple(tf.groups(fold)), n_folds=tf.k, budget=budget,
                             finetune_overrides=overrides, out=str(args.out), val_groups=tf.val) for fold in range(tf.k)}
        protocols = ["plain"] + (["aligned", "standardised"] if plan.name in ALIGNABLE and not args.no_aligned else [])
        for seed in range(args.budget.seeds):
            for protocol in protocols:
                for half in sorted({tf.half(f) for f in range(tf.k)}):
                    backbone = backbones[backbone_name(plan, seed, half)]
                    in_half = [f for f in range(tf.k) if tf.half(f) == half]
                    for method in FEATURES:
                        pre = method == PROBE
                        job = FeatureJob(plan.name, seed, method, protocol, tuple(in_half), backbone["model"] if pre else None,
                                         backbone["weights"] if pre else None)
                        work.append((job, [ctx[f] for f in in_half]))
                    if protocol == "standardised" or (protocol == "aligned" and not args.budget.aligned_finetune):
                        continue
                    for fold in in_half:
                        for method in finetuned:
                            pre = method == PRETRAINED
                            unit = Unit(plan.name, fold, seed, method, protocol, backbone["model"] if pre else None,
                                        backbone["weights"] if pre else None)
                            work.append((unit, [ctx[fold]]))
    order = {PRETRAINED: 0, SCRATCH: 1, EEGNET: 2}
    return sorted(work, key=lambda w: order.get(w[0].method, 3))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results.json payload."""
    from benchmarks.baselines import eegnet_unavailable

    t_start, stages, notes = time.time(), {}, []
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"stage 1/5: shards from {args.data}")
    t0 = time.time()
    sets = available_sets(args.data, notes)
    folders = build_shards(args.data, args.out, sets=sets)
    plans = [t for t in TASKS if t.corpus in folders and t.name in args.task_names]
    notes += [f"task {t} skipped: its shard set was not built" for t in args.task_names if t not in {p.name for p in plans}]
    stages["1 shards"] = time.time() - t0

    log("stage 2/5: folds and the pretraining shards of each half")
    t0 = time.time()
    folds, counts, extends = {}, {}, {}
    for plan in list(plans):
        folds[plan.name], data, published = task_folds(plan, folders[plan.corpus])
        counts[plan.name] = {"windows": len(data.windows), "classes": dict(zip(plan.classes, data.class_counts()))}
        log(f"  {plan.name}: {len(data.windows)} windows, {len(folds[plan.name].fold_of)} {folds[plan.name].group_key}s, "
            f"{folds[plan.name].k} folds")
        if published is not None:
            extra = dataclasses.replace(plan, name=published.task, title=f"{plan.title}, published split", folds=1)
            plans.append(extra)
            extends[extra.name] = plan.name
            folds[extra.name], counts[extra.name] = published, counts[plan.name]
        elif plan.name == "eegmat":
            notes.append("EEGMAT's published split (subjects 00-27 / 28-31 / 32-35) is not scored: the data folder "
                         f"holds {len({m['subject'] for m in data.metas})} of its 36 subjects")
    halves, probe = pretraining_sets(args, sets, plans, folds, notes)
    plans = scored_plans(plans, extends, args.scored)
    stages["2 folds and pretraining shards"] = time.time() - t0

    log(f"stage 3/5: pretraining, {args.budget.seeds} seeds x 2 halves")
    t0 = time.time()
    backbones = pretraining(args, halves, probe)
    stages["3 pretraining"] = time.time() - t0

    braindecode = (args.full or args.eegnet) and not eegnet_unavailable()
    if (args.full or args.eegnet) and not braindecode:
        notes.append(eegnet_unavailable())
    work = unit_work(args, plans, folders, folds, backbones, braindecode)
    n_cells = sum(len(c) for _, c in work)
    log(f"stage 4/5: {n_cells} cells (task x fold x seed x method x protocol) in {len(work)} jobs, {args.jobs} process(es)")
    t0 = time.time()
    done = [0]

    def progress(r):
        done[0] += 1
        status = r.get("error") or f"{r['seconds']:.0f} s"
        log(f"  [{done[0]}/{n_cells}] {r['task']} fold {r['fold']} seed {r['seed']} {r['method']} ({r['protocol']}): {status}")

    units = run_units(work, args.out / "units", args.jobs, progress)
    notes += [f"{u['task']} fold {u['fold']} seed {u['seed']} {u['method']} ({u['protocol']}) failed: {u['error']}"
              for u in units if "error" in u]
    stages["4 finetuning, probes and baselines"] = time.time() - t0

    pooled = pool_predictions(units)
    table = table_of(pooled, {p.name: len(p.classes) for p in plans})
    return {
        "command": ["python", *sys.argv], "mode": "full" if args.full else "fast", "jobs": args.jobs,
        "frozen_only": args.frozen_only,
        "budget": dataclasses.asdict(args.budget), "machine": machine(), "stages_s": stages,
        "total_s": time.time() - t_start, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tasks": {p.name: {"title": p.title, "recipe": p.recipe_name, "classes": list(p.classes), **counts[p.name],
                           "folds": folds[p.name].to_dict()} for p in plans},
        "pretraining": {k: {kk: v[kk] for kk in ("losses", "selected_step", "probe", "seconds", "steps") if kk in v}
                        for k, v in backbones.items()},
        "probe_selection": probe_selection(),
        "finetune_selection": finetune_selection(args.ablation_spec), "head_readout": head_readout(args.ablation_spec),
        "ablation": {"name": args.ablation, **dataclasses.asdict(args.ablation_spec)} if args.ablation_spec else None,
        "units": [{k: v for k, v in u.items() if k not in ("y", "proba", "groups", "traceback")} for u in units],
        "predictions": pooled, "table": table, "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
