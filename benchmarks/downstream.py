"""Does pretraining help? End-to-end downstream benchmark on the real recordings in ``../shared/data``.

Length (over 450 lines): orchestration and the CLI only; every stage lives in its own module (below).

One run does everything, from raw files to the results table::

    python benchmarks/downstream.py                      # full run (estimate printed first; < 30 min on 2 cores)
    python benchmarks/downstream.py --quick              # smoke test (a few minutes, fewer windows/steps)
    python benchmarks/downstream.py --data /path/to/data --out runs/downstream --seeds 3
    python benchmarks/downstream.py --render benchmarks/results/results.json   # re-render the table only
    python benchmarks/downstream.py --render benchmarks/results/results.json --published eegmat
    python benchmarks/downstream.py --ablation legacy-patch-norm   # -> benchmarks/results/ablation-legacy-patch-norm/
    python benchmarks/downstream.py --transductive       # the old protocol (pretraining saw the test windows)
    python benchmarks/downstream.py --tasks eegmat --eegmat-split published --data /path/with/all/36/subjects

Stages (each timed; the wall times are part of the table):

1. shards: every set of the data folder through ``shards.writer.build`` (Bonn, DREAMS, EEGMMIDB subject 1,
   mental stress, EEGMAT, the unlabeled recordings); then per task a fixed test pool (``protocol.py``) and
   the pretraining shards without the pools (``{out}/shards-pretrain``). Finished builds are reused.
2. pretraining of a tiny EEGMamba on the pretraining shards (labels unused), once per objective: the VQ
   tokenizer (``pretrain.train_tokenizer.train_tokenizer``) then masked-token prediction, and the Gaussian-masked STFT
   (``pretrain.run.run``). Reused when ``{out}/pretrain/<name>`` holds a run of the same settings.
3. per task and seed, one split fixed with ``finetune.splits.split_windows`` (the function ``finetune`` uses,
   with the same arguments, and checked against the split every finetune run reports): EEGMamba finetuned from
   each pretrained backbone and from the released checkpoint, the same architecture from scratch, linear probes
   on each frozen pretrained backbone and on a frozen random-init one (``finetune.train.finetune``); then one
   multi-task model on the four recipes at once.
4. baselines on the same splits: log band power (delta..gamma per channel, ``scipy.signal.welch``) +
   standardised, class-balanced logistic regression (C picked on the validation split), and braindecode's
   EEGNet (AdamW, class-weighted cross-entropy, early stopping on validation balanced accuracy); shift rows
   from ``benchmarks/shift.py`` on the seed-0 models and the seed-0 band power + LR (same files, same read path).
5. a table of test balanced accuracy (with a 95% bootstrap interval over test groups), Cohen's kappa,
   weighted F1 and AUROC (binary tasks), mean ± std over seeds, the aims of issues 13 and 15, paired
   differences, wall time per stage: printed, and written to ``--results`` (results.md + results.json).

Tasks (groups = what a split assigns whole; the test pool is a fixed share of them, see ``tasks.TASKS``):

- seizure: Bonn S (ictal) vs Z/O/N/F, 5-s windows; groups = segments (the set has no patient ids).
- sleep: DREAMS excerpts, one 5-s hypnogram epoch per window; groups = excerpts (one subject each). The six
  excerpts contain no REM epoch, so the head has 4 classes.
- motor_imagery: EEGMMIDB subject 1, imagined left vs right fist (runs 4 and 8), one 4-s window per cue,
  8 sensorimotor channels (see MOTOR_CHANNELS); groups = runs (one run tests; validation is the last 20 % of
  the other run in time).
- emotion: mental-stress horror video vs relaxing music, the first 4 s of each 10-s window; groups = subjects.
- eegmat: EEGMAT rest vs serial subtraction, 5-s windows, 19 channels; groups = subjects (02-27 here).

Windows are capped to an evenly spaced subset per task (``TaskPlan.max_windows``; ``--quick`` 120) to fit the
time budget; every cap is printed in the report. Torch runs on one thread (``--threads``): on a shared 2-core
machine two threads per process were 15-20x slower.

Every number in the written table comes from this script.

Modules: ``tasks.py`` (tasks, shard sets, budgets), ``protocol.py`` (test pools, pretraining shards),
``stages.py`` (shards, pretraining, finetune runs), ``baselines.py`` (band power + LR, EEGNet), ``bootstrap.py``
(intervals over test groups), ``estimate.py`` (run time), ``ablations.py`` (``--ablation``), ``published.py``
(EEGMAT papers' table), ``report.py`` / ``report_protocol.py`` / ``report_render.py`` (tables, aims, README block),
``report_ablations.py`` (``--ablation-table``: ablations vs the main run); this file orchestrates them and
holds the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: import the suite from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.ablations import ABLATIONS, ablation, apply
from benchmarks.baselines import eegnet_unavailable, run_baselines
from benchmarks.estimate import estimate_seconds, format_estimate
from benchmarks.protocol import build_pretrain_shards, choose_pool
from benchmarks.published import published_comparison
from benchmarks.report import (
    BAND, MULTI, PROBE, RANDOM_PROBE, RELEASE, SCRATCH, README_BEGIN, README_END, aggregate, log, pretrained_name,
    update_readme,
)
from benchmarks.report_render import render, write_results
from benchmarks.stages import (
    build_shards, finetune_config, machine, pretrain_backbone, run_eegmamba, task_split, train_vq_tokenizer,
)
from benchmarks.tasks import FULL, MULTITASK, PRETRAIN_CHANNELS, QUICK, SHARD_SETS, TASKS, TaskPlan, max_windows

REPO = Path(__file__).resolve().parents[1]
RELEASE_NAME = "eegmamba-tiny-open"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/downstream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real-data folder (../shared/data)")
    p.add_argument("--out", type=Path, default=None,
                   help="work dir: shards, pretrained models, finetune runs (default runs/downstream, "
                        "runs/downstream-ablation-NAME with --ablation)")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.md/json go (default benchmarks/results, benchmarks/results/ablation-NAME "
                        "with --ablation; with --quick {out}/results-quick)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds (= train/val splits and initialisations) per task and method (default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="smoke test: few pretraining steps and epochs, at most 120 windows per task")
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset of the tasks")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes (pretrained and random-init)")
    p.add_argument("--no-multitask", action="store_true", help="skip the multi-task finetuning row")
    p.add_argument("--multitask-backbone", default="masked STFT", choices=("masked STFT", "VQ masked-token"),
                   help="the pretrained backbone the multi-task model starts from")
    p.add_argument("--no-shift", action="store_true", help="skip the shift rows (benchmarks/shift.py on the seed-0 models)")
    p.add_argument("--no-release", action="store_true", help=f"skip the row of the released checkpoint {RELEASE_NAME}")
    p.add_argument("--transductive", action="store_true",
                   help="ablation: pretrain on every window (test pools included) and test on group fold seed mod k")
    p.add_argument("--eegmat-split", choices=("folds", "published"), default="folds",
                   help="folds: a test pool of the shared subjects (02-27); published: subjects 32-35 test, 28-31 "
                        "validate (the papers' split; needs all 36 subjects from PhysioNet in --data)")
    p.add_argument("--ablation", default=None, metavar="NAME",
                   help=f"run with one named change (benchmarks/ablations.py): {', '.join(ABLATIONS)}")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only rewrite results.md next to an existing results.json (no training)")
    p.add_argument("--redo-shift", type=Path, default=None, metavar="RESULTS_JSON",
                   help="no finetuning: rerun only the shift stage of the finished run in --out (its seed-0 models, "
                        "band power refitted on seed 0) and replace that results.json's shift rows")
    p.add_argument("--ablation-table", action="store_true",
                   help="no training: compare every benchmarks/results/ablation-*/results.json with the main "
                        "results.json, paired by seed -> benchmarks/results/ablations.md (and the README block "
                        "with --readme)")
    p.add_argument("--published", choices=("eegmat",), default=None,
                   help="with --render: print our rows of the task beside the published table (copied from the papers)")
    p.add_argument("--readme", type=Path, default=None, metavar="README",
                   help="also replace the README's results block (between the "
                        f"{README_BEGIN} / {README_END} markers) with this run's report")
    p.add_argument("--pool", choices=("cls", "mean"), default="cls",
                   help="head input of the finetuned EEGMamba variants (linear probes always use the token mean)")
    p.add_argument("--finetune-lr", type=float, default=None, help="override the mode's finetuning peak LR (ablation)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the mode's pretraining steps (ablation)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 because the tiny model's ops are too small to split, and on a shared "
                        "machine two spinning OpenMP threads per process ran 15-20x slower than one")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    known = {t.name for t in TASKS}
    args.task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.task_names) - known)
    if unknown or not args.task_names:
        p.error(f"--tasks: unknown task(s) {unknown}; known: {sorted(known)}")
    if args.published and args.render is None:
        p.error("--published needs --render RESULTS_JSON")
    args.ablation_spec = ablation(args.ablation) if args.ablation else None
    if args.eegmat_split == "published" and (args.transductive or (args.ablation_spec and args.ablation_spec.protocol.get("transductive"))):
        p.error("--eegmat-split published is a test pool; the transductive protocol has none")
    suffix = f"-ablation-{args.ablation}" if args.ablation else ""
    if args.out is None:
        args.out = Path(f"runs/downstream{suffix}")
    if args.results is None:
        folder = REPO / "benchmarks" / "results"
        args.results = args.out / "results-quick" if args.quick else (folder / f"ablation-{args.ablation}" if args.ablation else folder)
    if args.ablation_spec and args.ablation_spec.protocol.get("transductive"):
        args.transductive = True
    return args


def budget_of(args: argparse.Namespace):
    """The mode's Budget with the ablation's and the command line's overrides."""
    budget = QUICK if args.quick else FULL
    if args.ablation_spec:
        budget = apply(budget, args.ablation_spec.budget, where=f"ablation {args.ablation} budget")
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            raise SystemExit("--pretrain-steps must be >= 1")
        budget = dataclasses.replace(budget, pretrain_steps=args.pretrain_steps)
    if args.finetune_lr is not None:
        if not args.finetune_lr > 0:
            raise SystemExit("--finetune-lr must be > 0")
        budget = dataclasses.replace(budget, finetune_lr=args.finetune_lr)
    return budget


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        if args.published:
            print(published_comparison(payload, args.published))
            return 0
        payload["table"] = aggregate(payload["runs"])
        write_results(payload, args.render.parent)
        if args.readme is not None:
            update_readme(args.readme, render(payload))
        return 0
    if args.ablation_table:
        write_ablation_table(REPO / "benchmarks" / "results", args.readme)
        return 0
    if args.redo_shift is not None:
        payload = redo_shift(json.loads(args.redo_shift.read_text()), args)
        write_results(payload, args.redo_shift.parent)
        if args.readme is not None:
            update_readme(args.readme, render(payload))
        return 0
    payload = run(args)
    write_results(payload, args.results)
    if args.readme is not None:
        update_readme(args.readme, render(payload))
    return 0


def write_ablation_table(folder: Path, readme: Path | None) -> None:
    """``folder``/ablations.md (and the README block) from the stored main and ablation results."""
    from benchmarks.report import write_block
    from benchmarks.report_ablations import README_BEGIN as BEGIN, README_END as END, render_ablations

    main_file = folder / "results.json"
    if not main_file.is_file():
        raise SystemExit(f"{main_file}: no main run to compare with (run the benchmark first)")
    ablations = {d.name.removeprefix("ablation-"): json.loads((d / "results.json").read_text())
                 for d in sorted(folder.glob("ablation-*")) if (d / "results.json").is_file()}
    text = render_ablations(json.loads(main_file.read_text()), ablations)
    print(text)
    (folder / "ablations.md").write_text(text)
    log(f"wrote {folder / 'ablations.md'} ({len(ablations)} ablation runs)")
    if readme is not None:
        write_block(readme, text, BEGIN, END, demote="#")


def available_sets(data_root: Path, notes: list[str]) -> list[str]:
    """The shard sets whose adapter is registered and whose folder exists (EEGMAT needs both)."""
    from shards.corpora import get_corpus

    sets = []
    for name, (adapter, rel, _) in SHARD_SETS.items():
        try:
            get_corpus(adapter)
        except (KeyError, ValueError) as err:
            notes.append(f"shard set {name} skipped: no corpus adapter {adapter!r} ({err})")
            continue
        if name == "eegmat" and not (data_root / rel).is_dir():
            notes.append(f"shard set {name} skipped: {data_root / rel} does not exist")
            continue
        sets.append(name)
    return sets


def test_pools(plans: Sequence[TaskPlan], folders: Mapping[str, Path], args) -> dict[str, dict]:
    """Per task its fixed test pool (``protocol.choose_pool``; EEGMAT's published split when asked)."""
    pools = {}
    for plan in plans:
        if plan.name == "eegmat" and args.eegmat_split == "published":
            from finetune.data import load_task_data
            from finetune.recipes import get_recipe
            from finetune.splits import published_split

            # The papers' split (finetune.splits.PUBLISHED_SPLITS: subjects 32-35 test, 28-31 validation); it
            # names the subjects a partial download lacks. Its test subjects are the pool.
            metas = load_task_data(get_recipe(plan.recipe_name), str(folders[plan.corpus]), classes=plan.classes).metas
            try:
                published = published_split(metas).groups
            except ValueError as err:
                raise SystemExit(f"--eegmat-split published: {err}") from None
            pools[plan.name] = {"group_key": "subject", "groups": list(published["test"]), "val_groups": list(published["val"]),
                                "recordings": [], "subjects": [g.split("/", 1)[1] for g in published["test"]],
                                "n_groups": len({m["subject"] for m in metas}), "published": True}
        else:
            pools[plan.name] = choose_pool(plan, folders[plan.corpus])
        pool = pools[plan.name]
        log(f"{plan.name}: test pool of {len(pool['groups'])}/{pool['n_groups']} {pool['group_key']}s, "
            f"{len(pool['recordings'])} recordings held out of pretraining")
    return pools


def pretraining(args, budget, pretrain_folders, stages) -> tuple[dict[str, Path], dict[str, list[float]]]:
    """Stage 2: the VQ tokenizer, then one backbone per objective, on ``pretrain_folders``."""
    from pretrain.config import ObjectiveConfig

    abl = args.ablation_spec
    t0 = time.time()
    tok_dir, reused = train_vq_tokenizer(pretrain_folders, args.out, budget, seed=0, ablation=abl)
    stages["2a VQ tokenizer" + (" (reused)" if reused else "")] = time.time() - t0
    pretrained: dict[str, Path] = {}
    losses: dict[str, list[float]] = {}
    for name, objective in (
        ("VQ masked-token", ObjectiveConfig(name="masked_token", tokenizer=str(tok_dir))),
        ("masked STFT", ObjectiveConfig(name="masked_stft")),
    ):
        t0 = time.time()
        slug = "masked_token" if name.startswith("VQ") else "masked_stft"
        pretrained[name], reused, losses[name] = pretrain_backbone(slug, objective, pretrain_folders, args.out, budget,
                                                                   seed=0, ablation=abl)
        stages[f"2{'b' if slug == 'masked_token' else 'c'} pretrain {name}" + (" (reused)" if reused else "")] = time.time() - t0
    return pretrained, losses


def release_checkpoint(notes: list[str]) -> str | None:
    """``RELEASE_NAME`` when it resolves (the installed package ships it), else None with a note."""
    from finetune.model import load_backbone

    try:
        load_backbone(RELEASE_NAME)
    except Exception as err:  # noqa: BLE001 - any failure means: not shipped here
        notes.append(f"no row for the released checkpoint {RELEASE_NAME}: it does not resolve here ({type(err).__name__}: {err})")
        return None
    notes.append(f"the released checkpoint {RELEASE_NAME} was pretrained on its own data (see its README: EEGMMIDB S001 and "
                 "EEGMAT among them), test pools included: its row is not leak-free")
    return RELEASE_NAME


def method_list(pretrained: Mapping[str, Path], args, notes: list[str]) -> list[tuple[str, str, str]]:
    """(method name, checkpoint, finetune mode) of every single-task EEGMamba row."""
    methods = [(pretrained_name(name), str(path), "finetune") for name, path in pretrained.items()]
    methods.append((SCRATCH, "none", "finetune"))
    if not args.no_release and (release := release_checkpoint(notes)):
        methods.append((RELEASE, release, "finetune"))
    if not args.no_probe:
        methods += [(PROBE.format(name), str(path), "linear_probe") for name, path in pretrained.items()]
        methods.append((RANDOM_PROBE, "none", "linear_probe"))
    return methods


def split_record(data, split) -> dict[str, Any]:
    """The split as the report keeps it: finetune's description plus, per test window in order, its group
    and label (what the bootstrap over test groups resamples)."""
    from finetune.splits import group_names

    described = split.describe()
    groups = group_names([data.metas[i] for i in split.test], described["group_key"])
    return {**described, "test_window_groups": groups, "test_labels": [int(data.labels[i]) for i in split.test]}


def check_split(plan: TaskPlan, seed: int, reported: Mapping, described: Mapping) -> None:
    if reported["groups"] != described["groups"]:
        raise RuntimeError(f"{plan.name} seed {seed}: finetune's split differs from the benchmark's "
                           f"({reported['groups']} vs {described['groups']})")


def run_task(plan: TaskPlan, folder: Path, seed: int, budget, methods, pool, args,
             labellers: dict[str, Any] | None = None) -> tuple[list[dict], dict, Any]:
    """Every single-task row of one task and seed: EEGMamba variants, then the baselines. For seed 0,
    ``labellers[task]`` gets the band-power shift labeller (or the note why there is none)."""
    data, split = task_split(plan, folder, seed, budget, pool)
    record = split_record(data, split)
    log(f"{plan.name} seed {seed}: {len(data.windows)} windows, classes {list(data.recipe.classes)}, "
        f"{record['group_key']} fold {record['fold']}/{record['n_folds']}, windows {record['n_windows']}")
    runs = []
    overrides = args.ablation_spec.finetune if args.ablation_spec else {}
    for method, checkpoint, mode in methods:
        slug = hashlib.sha256(method.encode()).hexdigest()[:8]
        config = finetune_config(plan, folder, seed, budget, checkpoint=checkpoint, mode=mode, pool=args.pool,
                                 out=args.out / "finetune" / plan.name / f"{slug}-seed{seed}",
                                 test_groups=pool["groups"] if pool else (), val_groups=pool.get("val_groups", ()) if pool else (),
                                 overrides=overrides)
        r = run_eegmamba(config, {plan.name: (plan.recipe_name, data, split)})[plan.name]
        check_split(plan, seed, r.pop("split"), record)
        runs.append({"task": plan.name, "method": method, "seed": seed, **r})
        log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s, "
            f"best epoch {r['best_epoch']} of {r['epochs_run']})")
    for method, r in run_baselines(plan, data, split, seed, budget).items():
        labeller, why = r.pop("labeller", None), r.pop("labeller_note", None)
        if labellers is not None and seed == 0 and (labeller or why):
            labellers[plan.name] = labeller or why
        runs.append({"task": plan.name, "method": method, "seed": seed, **r})
        log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s)")
    return runs, record, (data, split)


def run_multitask(plans: Sequence[TaskPlan], folders, seed: int, budget, checkpoint: Path, pools, task_data, args) -> list[dict]:
    """One EEGMamba finetuned on all MULTITASK tasks at once (task-aware MoE), same splits as the single-task rows."""
    from finetune.config import TaskSpec

    mine = [p for p in plans if p.name in MULTITASK and p.recipe_name == p.name]
    if len(mine) < 2 or not pools:
        return []  # the multi-task row needs the leak-free pools: transductive folds differ per task (n_folds)
    specs = tuple(TaskSpec(recipe=p.recipe_name, data=str(folders[p.corpus]), classes=p.classes, window_s=p.window_s,
                           max_windows=max_windows(p, budget)) for p in mine)
    test_groups = tuple(g for p in mine for g in (pools[p.name]["groups"] if pools else ()))
    base = finetune_config(mine[0], folders[mine[0].corpus], seed, budget, checkpoint=str(checkpoint), mode="finetune",
                           pool=args.pool, out=args.out / "finetune" / "multitask" / f"seed{seed}", test_groups=test_groups,
                           overrides=args.ablation_spec.finetune if args.ablation_spec else {})
    # n_folds 5 for every task: with a test pool it only sets the validation folds of the other groups,
    # the same as each task's own n_folds wherever the two differ (sleep: min(6, 4) = min(5, 4)).
    config = dataclasses.replace(base, recipe="", data="", classes=(), tasks=specs, window_s=None, max_windows=None,
                                 n_folds=5)
    results = run_eegmamba(config, {p.name: (p.recipe_name, *task_data[(p.name, seed)]) for p in mine})
    method = MULTI.format(args.multitask_backbone)
    runs = []
    for p in mine:
        r = results[p.name]
        check_split(p, seed, r.pop("split"), task_data[(p.name, seed)][1].describe())
        runs.append({"task": p.name, "method": method, "seed": seed, **r})
        log(f"  {method} [{p.name}]: bal.acc {r['metrics']['balanced_accuracy']:.3f}")
    return runs


# The shifts the benchmark runs (a subset of benchmarks.shift.default_shifts, to fit the budget): another rate,
# another gain, half the channels; "none" is the same files unshifted; plus the cross-dataset row where the
# label space has a partner corpus (mental stress <-> EEGMAT). Run on these seed-0 models, and on the seed-0
# band power + LR (read with the seed-0 scratch model's preprocessing and recipe):
SHIFTS = ("none", "resample_256hz", "amplitude_x2", "drop_half_channels")
SHIFT_METHODS = (pretrained_name("VQ masked-token"), pretrained_name("masked STFT"), SCRATCH)


def run_shift(seed0_models: Mapping[tuple[str, str], Path], args, notes: list[str],
              labellers: Mapping[str, Any] | None = None, partners: Mapping[str, Sequence[str]] | None = None) -> list[dict]:
    """Deployment-style shift rows (issue 15 item 2, issue 13 item 4) from ``benchmarks.shift.shift_rows``:
    each seed-0 model of ``SHIFT_METHODS`` labels its own test-pool recordings, read raw, under ``SHIFTS``;
    so does the seed-0 band power + LR (``labellers``: task -> ``baselines.BandPowerLabeller`` or the note why
    there is none), through the scratch model's folder: the same recordings, preprocessing and windows.
    ``partners`` (shard set -> its test-pool subjects) limits the cross-dataset rows to recordings pretraining
    never saw.

    A failing model is a note, not a lost run.
    """
    from benchmarks import shift

    shifts = [s for s in shift.default_shifts() if s.name in SHIFTS]
    (args.out / "shift").mkdir(parents=True, exist_ok=True)
    jobs = [(task, method, model_dir, None) for (task, method), model_dir in seed0_models.items() if method in SHIFT_METHODS]
    for task, labeller in (labellers or {}).items():
        if isinstance(labeller, str) or (task, SCRATCH) not in seed0_models:
            notes.append(labeller if isinstance(labeller, str) else f"{task}: no band-power shift rows without a scratch model")
        else:
            jobs.append((task, BAND, seed0_models[(task, SCRATCH)], labeller))
    order = list(dict.fromkeys(task for task, _ in seed0_models))
    rows = []
    for task, method, model_dir, labeller in sorted(jobs, key=lambda job: order.index(job[0])):
        t0 = time.time()
        try:
            new = shift.shift_rows(task=task, method=method, model_dir=model_dir, data_root=args.data, shifts=shifts,
                                   work_dir=args.out / "shift", labeller=labeller, partner_subjects=partners)
        except Exception as err:  # noqa: BLE001 - one model's failure must not lose the run
            notes.append(f"shift rows of {task} / {method} failed: {type(err).__name__}: {err}")
            continue
        rows += [{k: v for k, v in r.items() if k in ("task", "method", "shift", "metrics", "recording_metrics",
                                                          "n_windows", "n_recordings", "applicable")} for r in new]
        log(f"  shift {task} / {method}: {len(new)} rows ({time.time() - t0:.0f} s)")
    return rows


def seed0_models(out: Path, plans: Sequence[TaskPlan], methods: Sequence[str]) -> dict[tuple[str, str], Path]:
    """(task, method) -> the seed-0 finetuned model folder ``run_task`` wrote."""
    return {(p.name, m): out / "finetune" / p.name / f"{hashlib.sha256(m.encode()).hexdigest()[:8]}-seed0" / "model"
            for p in plans for m in methods}


def redo_shift(payload: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``payload`` with its shift rows recomputed by the current shift code (and a note saying so): the
    seed-0 models of ``args.out``, band power refitted on the same seed-0 split (deterministic), the stored
    pools. Everything else in the payload is the original run's."""
    from benchmarks.baselines import band_power_run
    from benchmarks.tasks import Budget

    if payload.get("protocol") != "leak-free":
        raise SystemExit("--redo-shift needs a leak-free run (the transductive protocol has no test pools)")
    budget = Budget(**payload["budget"])
    plans = [t for t in TASKS if t.name in payload["tasks"]]
    pools = payload["pools"]
    methods = sorted({r["method"] for r in payload["runs"] if r["method"] in SHIFT_METHODS})
    models = {k: v for k, v in seed0_models(args.out, plans, methods).items() if (v / "config.json").is_file()}
    if not models:
        raise SystemExit(f"--redo-shift: no seed-0 model of {methods} under {args.out / 'finetune'} (is --out the run's work dir?)")
    notes = [n for n in payload["notes"] if "shift" not in n]
    labellers = {}
    for plan in plans:
        data, split = task_split(plan, args.out / "shards" / plan.corpus, 0, budget, pools.get(plan.name))
        result, labellers[plan.name] = band_power_run(plan, data, split, seed=0)
        stored = next(r for r in payload["runs"] if r["task"] == plan.name and r["method"] == BAND and r["seed"] == 0)
        if result["test_proba"] != stored["test_proba"]:  # same shards, split and seed: the run's own model
            raise SystemExit(f"--redo-shift: band power refitted on {plan.name} seed 0 differs from the run's "
                             f"(other shards in {args.out}?)")
    t0 = time.time()
    partners = {p.corpus: pools[p.name]["subjects"] for p in plans if pools.get(p.name, {}).get("subjects")}
    rows = run_shift(models, args, notes, labellers, partners)
    notes.append(f"shift rows recomputed on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by --redo-shift "
                 "(same seed-0 models; current shift code)")
    stages = {k: v for k, v in payload["stages_s"].items() if not k.startswith("4 shift")}
    stages["4 shift evaluation (seed 0, --redo-shift)"] = time.time() - t0
    return {**payload, "shift": rows, "notes": notes, "stages_s": stages, "total_s": sum(stages.values()),
            "shift_setup": {"shifts": list(SHIFTS), "methods": [*SHIFT_METHODS, BAND]}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results.json payload."""
    budget = budget_of(args)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    notes: list[str] = []
    t_start = time.time()
    if why := eegnet_unavailable():  # once, before any work (also prints the torchaudio note once)
        log(why)
        notes.append(why)

    log(f"stage 1/4: shards from {args.data}")
    t0 = time.time()
    sets = available_sets(args.data, notes)
    folders = build_shards(args.data, out, sets=sets)
    all_plans = [t for t in TASKS if t.corpus in folders]
    plans = [t for t in all_plans if t.name in args.task_names]
    notes += [f"task {t} skipped: its shard set was not built" for t in args.task_names if t not in {p.name for p in plans}]
    estimate = estimate_seconds(plans, args.seeds, budget, probes=not args.no_probe, multitask=not args.no_multitask,
                                release=not args.no_release, shift_models=0 if args.no_shift else len(SHIFT_METHODS))
    log(format_estimate(estimate))
    if args.transductive:
        pools: dict[str, dict] = {}
        exclusions: dict[str, dict] = {}
        notes.append("transductive ablation: pretraining saw every window, test windows included")
    else:
        pools = test_pools(all_plans, folders, args)
        exclusions = {p.corpus: {"pool": pools[p.name], "match": p.pretrain_match} for p in all_plans}
    pretrain_folders = build_pretrain_shards(args.data, out, sets, exclusions)
    notes += [f"pretraining shards of {s} keep only the channels {', '.join(c)} (batch padding cost); the task's "
              "other channels reach finetuning with the embeddings pretraining left them" for s, c in PRETRAIN_CHANNELS.items()
              if s in sets]
    stages["1 shards (build or reuse)"] = time.time() - t0

    log("stage 2/4: self-supervised pretraining " + ("on all windows (labels unused)" if args.transductive
                                                    else "without the test pools (labels unused)"))
    pretrained, losses = pretraining(args, budget, pretrain_folders, stages)

    log("stage 3-4/4: finetuning and baselines on fixed splits")
    methods = method_list(pretrained, args, notes)
    runs: list[dict] = []
    splits_record: dict[str, dict] = {}
    task_data: dict[tuple[str, int], tuple] = {}
    labellers: dict[str, Any] = {}  # task -> seed-0 band-power labeller for the shift rows (or why none)
    for plan in plans:
        t_task = time.time()
        for seed in range(args.seeds):
            task_runs, record, task_data[(plan.name, seed)] = run_task(plan, folders[plan.corpus], seed, budget, methods,
                                                                       pools.get(plan.name), args, labellers)
            runs += task_runs
            splits_record.setdefault(plan.name, {})[str(seed)] = record
        stages[f"3 {plan.name}: all methods x {args.seeds} seeds"] = time.time() - t_task
    if not args.no_multitask and not args.transductive:
        t0 = time.time()
        for seed in range(args.seeds):
            runs += run_multitask(plans, folders, seed, budget, pretrained[args.multitask_backbone], pools, task_data, args)
        stages[f"3 multi-task finetuning x {args.seeds} seeds"] = time.time() - t0
    elif not args.no_multitask:
        notes.append("no multi-task row in the transductive ablation (its folds differ per task)")
    t0 = time.time()
    seed0 = seed0_models(out, plans, [m for m, _, mode in methods if mode == "finetune"])
    partners = {p.corpus: pools[p.name]["subjects"] for p in all_plans if pools.get(p.name, {}).get("subjects")}
    shift_rows = [] if args.no_shift else run_shift(seed0, args, notes, labellers, partners)
    stages["4 shift evaluation (seed 0)"] = time.time() - t0
    del task_data

    return {
        "command": ["python", *sys.argv], "quick": args.quick, "seeds": args.seeds, "budget": dataclasses.asdict(budget),
        "machine": machine(), "stages_s": stages, "total_s": time.time() - t_start,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pretrain_losses": losses, "runs": runs,
        "splits": splits_record, "notes": notes, "tasks": {t.name: dataclasses.asdict(t) for t in plans},
        "protocol": "transductive" if args.transductive else "leak-free",
        "pools": {name: {k: v for k, v in pool.items() if k != "recordings"} | {"n_recordings": len(pool["recordings"])}
                  for name, pool in pools.items()},
        "caps": {t.name: max_windows(t, budget) for t in plans}, "estimate_s": estimate,
        "ablation": {"name": args.ablation, **dataclasses.asdict(args.ablation_spec)} if args.ablation_spec else None,
        "eegmat_split": args.eegmat_split, "shift": shift_rows,
        "shift_setup": None if args.no_shift else {"shifts": list(SHIFTS), "methods": [*SHIFT_METHODS, BAND]},
    }


if __name__ == "__main__":
    sys.exit(main())
