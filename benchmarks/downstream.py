"""Does pretraining help? End-to-end downstream benchmark on the real recordings in ``../shared/data``.

One run does everything, from raw files to the results table::

    python benchmarks/downstream.py                      # full run (~30 min on a 2-core CPU)
    python benchmarks/downstream.py --quick              # smoke test (a few minutes, fewer windows/steps)
    python benchmarks/downstream.py --data /path/to/data --out runs/downstream --seeds 3
    python benchmarks/downstream.py --render benchmarks/results/results.json   # re-render the table only
    # ablations (own --results folder): longer pretraining, another finetuning LR, a subset of the tasks
    python benchmarks/downstream.py --tasks seizure,sleep --pretrain-steps 1200 --out runs/downstream-long \
        --results benchmarks/results/ablation-pretrain-1200-steps

Stages (each timed; the wall times are part of the table):

1. shards: every set of the data folder through ``shards.writer.build`` (Bonn, DREAMS, EEGMMIDB subject 1,
   mental-stress, the unlabeled recordings). An existing build in ``--out`` with the same parameters is reused.
2. pretraining of a tiny EEGMamba on ALL windows of those shards (labels unused), once per objective:
   the VQ tokenizer (``pretrain.train_tokenizer.train_tokenizer``) then masked-token prediction, and the Gaussian-masked
   STFT (``pretrain.run.run``). Reused when ``{out}/pretrain/<name>`` holds a run of the same settings.
3. per task and seed, one split fixed with ``finetune.splits.split_windows`` (the function ``finetune`` uses,
   with the same arguments, and checked against the split every finetune run reports): EEGMamba finetuned from
   each pretrained backbone, the same architecture from scratch, a linear probe on each frozen pretrained
   backbone (``finetune.train.finetune``).
4. baselines on the same splits: log band power (delta..gamma per channel, ``scipy.signal.welch``) +
   standardised, class-balanced logistic regression (C picked on the validation split), and braindecode's
   EEGNet (AdamW, class-weighted cross-entropy, early stopping on validation balanced accuracy).
5. a table of test-split balanced accuracy, Cohen's kappa, weighted F1 and AUROC (binary tasks), mean ± std
   over seeds, plus wall time per stage: printed, and written to ``--results`` (results.md + results.json).

Tasks and splits (test = one fold, validation = the next fold, the rest trains; seed ``s`` uses fold
``s mod k`` and shuffles the group-to-fold assignment with ``s``):

- seizure: Bonn S (ictal) vs Z/O/N/F, 5-s windows; groups = segments (the set has no patient ids), 5 folds.
- sleep: DREAMS excerpts, one 5-s hypnogram epoch per window; groups = excerpts (one subject each),
  leave-one-excerpt-out (6 folds). The six excerpts contain no REM epoch, so the head has 4 classes.
- motor_imagery: EEGMMIDB subject 1, imagined left vs right fist (runs 4 and 8), one 4-s window per cue,
  8 sensorimotor channels (see MOTOR_CHANNELS); groups = runs (2 folds: one run tests; validation is the
  last 20 % of the other run in time).
- emotion: mental-stress horror video vs relaxing music, the first 4 s of each 10-s window; groups =
  subjects, 5 folds.

Bonn, DREAMS and mental stress are capped to an evenly spaced subset of their windows (``TaskPlan.max_windows``)
to fit the time budget. Pretraining sees every window of every set, test windows included (labels unused):
the transductive setting of a foundation model pretrained on a large pool that happens to contain them.
Torch runs on one thread (``--threads``): on a shared 2-core machine two threads per process were 15-20x slower.

Every number in the written table comes from this script.

Modules: ``benchmarks/tasks.py`` (tasks, shard sets, budgets), ``benchmarks/stages.py`` (shards, pretraining,
finetune runs), ``benchmarks/baselines.py`` (band power + LR, EEGNet), ``benchmarks/report.py`` (tables, aims,
paired differences, results files, README block); this file orchestrates them and holds the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import the suite from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.baselines import import_eegnet, run_baselines
from benchmarks.report import README_BEGIN, README_END, aggregate, log, render, update_readme, write_results
from benchmarks.stages import build_shards, machine, pretrain_backbone, run_eegmamba, task_split, train_vq_tokenizer
from benchmarks.tasks import FULL, QUICK, TASKS

REPO = Path(__file__).resolve().parents[1]

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/downstream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the real-data folder (../shared/data)")
    p.add_argument("--out", type=Path, default=Path("runs/downstream"), help="work dir: shards, pretrained models, finetune runs")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.md/json go (default benchmarks/results; with --quick {out}/results-quick)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (= splits and initialisations) per task and method")
    p.add_argument("--quick", action="store_true", help="smoke test: few pretraining steps and epochs, at most 240 windows per task")
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset of the tasks")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only rewrite results.md next to an existing results.json (no training)")
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
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    known = {t.name for t in TASKS}
    args.task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.task_names) - known)
    if unknown or not args.task_names:
        p.error(f"--tasks: unknown task(s) {unknown}; known: {sorted(known)}")
    if args.results is None:
        args.results = args.out / "results-quick" if args.quick else REPO / "benchmarks" / "results"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        payload["table"] = aggregate(payload["runs"])
        write_results(payload, args.render.parent)
        if args.readme is not None:
            update_readme(args.readme, render(payload))
        return 0
    budget = QUICK if args.quick else FULL
    if args.pretrain_steps is not None:
        if args.pretrain_steps < 1:
            raise SystemExit("--pretrain-steps must be >= 1")
        budget = dataclasses.replace(budget, pretrain_steps=args.pretrain_steps)
    if args.finetune_lr is not None:
        if not args.finetune_lr > 0:
            raise SystemExit("--finetune-lr must be > 0")
        budget = dataclasses.replace(budget, finetune_lr=args.finetune_lr)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    notes: list[str] = []
    t_start = time.time()
    import_eegnet()  # fail early, and print the torchaudio note once

    log(f"stage 1/4: shards from {args.data}")
    t0 = time.time()
    folders = build_shards(args.data, out)
    stages["1 shards (build or reuse)"] = time.time() - t0

    from pretrain.config import ObjectiveConfig

    log("stage 2/4: self-supervised pretraining on all windows (labels unused)")
    t0 = time.time()
    tok_dir, reused = train_vq_tokenizer(folders, out, budget, seed=0)
    stages["2a VQ tokenizer" + (" (reused)" if reused else "")] = time.time() - t0
    pretrained: dict[str, Path] = {}
    losses: dict[str, list[float]] = {}
    for name, objective in (
        ("VQ masked-token", ObjectiveConfig(name="masked_token", tokenizer=str(tok_dir))),
        ("masked STFT", ObjectiveConfig(name="masked_stft")),
    ):
        t0 = time.time()
        slug = "masked_token" if name.startswith("VQ") else "masked_stft"
        pretrained[name], reused, losses[name] = pretrain_backbone(slug, objective, folders, out, budget, seed=0)
        stages[f"2{'b' if slug == 'masked_token' else 'c'} pretrain {name}" + (" (reused)" if reused else "")] = time.time() - t0

    log("stage 3-4/4: finetuning and baselines on fixed splits")
    methods: list[tuple[str, str, str]] = []  # (method name, checkpoint, mode)
    for name, path in pretrained.items():
        methods.append((f"EEGMamba pretrained ({name}), finetuned", str(path), "finetune"))
    methods.append(("EEGMamba from scratch", "none", "finetune"))
    if not args.no_probe:
        for name, path in pretrained.items():
            methods.append((f"EEGMamba linear probe ({name})", str(path), "linear_probe"))
    runs: list[dict] = []
    splits_record: dict[str, dict] = {}
    plans = [t for t in TASKS if t.name in args.task_names]
    for plan in plans:
        t_task = time.time()
        for seed in range(args.seeds):
            data, split = task_split(plan, folders[plan.corpus], seed, budget)
            described = split.describe()
            splits_record.setdefault(plan.name, {})[str(seed)] = described
            log(f"{plan.name} seed {seed}: {len(data.windows)} windows, classes {list(data.recipe.classes)}, "
                f"{described['group_key']} fold {described['fold']}/{described['n_folds']}, windows {described['n_windows']}")
            for method, checkpoint, mode in methods:
                slug = hashlib.sha256(method.encode()).hexdigest()[:8]
                r = run_eegmamba(plan, folders[plan.corpus], seed, budget, checkpoint=checkpoint, mode=mode,
                                 out=out / "finetune" / plan.name / f"{slug}-seed{seed}", pool=args.pool)
                if r["split"]["groups"] != described["groups"]:
                    raise RuntimeError(f"{plan.name} seed {seed}: finetune's split differs from the benchmark's "
                                       f"({r['split']['groups']} vs {described['groups']})")
                runs.append({"task": plan.name, "method": method, "seed": seed, **{k: v for k, v in r.items() if k != "split"}})
                log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s, "
                    f"best epoch {r['best_epoch']} of {r['epochs_run']})")
            for method, r in run_baselines(plan, data, split, seed, budget).items():
                runs.append({"task": plan.name, "method": method, "seed": seed, **r})
                log(f"  {method}: bal.acc {r['metrics']['balanced_accuracy']:.3f} ({r['seconds']:.0f} s)")
        stages[f"3 {plan.name}: all methods x {args.seeds} seeds"] = time.time() - t_task

    info = machine()
    payload = {
        "command": ["python", *sys.argv], "quick": args.quick, "seeds": args.seeds, "budget": dataclasses.asdict(budget),
        "machine": info, "stages_s": stages, "total_s": time.time() - t_start,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pretrain_losses": losses, "runs": runs,
        "splits": splits_record, "notes": notes, "tasks": {t.name: dataclasses.asdict(t) for t in plans},
    }
    payload["table"] = aggregate(runs)
    write_results(payload, args.results)
    if args.readme is not None:
        update_readme(args.readme, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
