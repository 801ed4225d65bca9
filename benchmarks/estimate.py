"""How long a run of ``benchmarks/downstream.py`` will take, printed before it starts (issue 13/15: the whole
benchmark must finish within 30 minutes on 2 cores).

The per-run seconds are the ``s / run`` column of the last full run on a quiet 2-core AMD EPYC (README
results, 2026-11-22: 10 finetuning epochs, batch 16, the task caps of ``tasks.TASKS``); pretraining is
that run's 289 s for 2 x 1200 steps of 16 windows. EEGMAT has no measured run yet: it is the mental-stress
cost per window scaled by its tokens per window (19 channels x 5 s against 5 x 4 s). Costs scale with
epochs and windows, plus a fixed start-up per run (measured by ``--quick``: about 1 s).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.tasks import MULTITASK, Budget, TaskPlan, max_windows

# task -> (finetune s/run, linear probe s/run, EEGNet s/run, windows) at 10 epochs
REFERENCE: dict[str, tuple[float, float, float, int]] = {
    "seizure": (7.4, 3.8, 5.4, 500),
    "sleep": (12.0, 4.5, 9.7, 720),
    "motor_imagery": (0.9, 0.5, 0.3, 30),
    "emotion": (6.7, 2.7, 2.5, 300),
    "eegmat": (6.7 / 300 * 240 * 4.75, 2.7 / 300 * 240 * 4.75, 2.5 / 300 * 240 * 4.75, 240),
}
PRETRAIN_S_PER_WINDOW = 289.0 / (2 * 1200 * 16)  # both objectives, per objective and window
TOKENIZER_S_PER_WINDOW = 0.0125  # 200 steps x 16 windows in about 40 s
SHARDS_S = 60.0  # both shard builds from scratch, EEGMAT included (about 5 s without EEGMAT)
SHIFT_S = 15.0  # per task and model, seed 0: 3 shifts + none (+ the cross-dataset row); emotion measured ~25 s user time with 12
# band power + LR under the same shifts: the same files, no network; 1.0 s against 2.9-3.6 s for a scratch model
# (2 EEGMAT subjects, 4 recordings x 4 shifts, one core)
SHIFT_BAND_S = SHIFT_S / 3
STARTUP_S = 1.0  # per finetune run (data loading, model build, saving)


def estimate_seconds(plans: Sequence[TaskPlan], seeds: int, budget: Budget, *, probes: bool = True,
                     multitask: bool = True, release: bool = True, shift_models: int = 3,
                     shift_band: bool = True) -> dict[str, float]:
    """Estimated wall seconds per stage of a run with these tasks, seeds and budget (fresh work dir); the
    shift stage: ``shift_models`` seed-0 models, plus band power + LR with ``shift_band``."""
    epochs = budget.finetune_epochs / 10.0
    out = {
        "shards": SHARDS_S,
        "tokenizer": budget.tokenizer_steps * budget.pretrain_batch * TOKENIZER_S_PER_WINDOW,
        "pretraining (2 objectives)": 2 * budget.pretrain_steps * budget.pretrain_batch * PRETRAIN_S_PER_WINDOW,
    }
    multi = 0.0
    for plan in plans:
        ft, probe, eegnet, n_ref = REFERENCE.get(plan.name, REFERENCE["emotion"])
        scale = (max_windows(plan, budget) or n_ref) / n_ref
        n_finetune = 3 + int(release)  # 2 pretrained, scratch, released checkpoint
        n_probe = 3 if probes else 0  # 2 pretrained, random init
        per_seed = (n_finetune * (STARTUP_S + ft * epochs * scale) + n_probe * (STARTUP_S + probe * epochs * scale)
                    + eegnet * budget.eegnet_epochs / 30.0 * scale)
        out[f"task {plan.name}"] = seeds * per_seed
        if multitask and plan.name in MULTITASK:
            multi += seeds * ft * epochs * scale
    if multitask and sum(p.name in MULTITASK for p in plans) >= 2:
        out["multi-task finetuning"] = multi + seeds * STARTUP_S
    if shift_models:
        out["shift (seed 0)"] = (SHIFT_S * shift_models + SHIFT_BAND_S * shift_band) * len(plans)
    return out


def format_estimate(estimate: dict[str, float]) -> str:
    total = sum(estimate.values())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in estimate.items())
    return f"estimated wall time {total / 60:.1f} min on a quiet 2-core CPU ({parts})"
