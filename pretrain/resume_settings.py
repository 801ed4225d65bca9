"""What may change when a run is resumed, and how a deliberate change reaches the restored optimiser.

A checkpoint restores the optimiser and the LR schedule as they were, so a changed ``--optim.lr`` on
``--resume`` would otherwise be recorded but silently not used. The rule:

* every setting that changes the training math must equal the checkpoint's (``train_state.json``
  keeps the run's config); otherwise the resume is refused with every differing key named;
* ``--train.resume_override optim.lr,optim.warmup_steps`` applies the listed keys deliberately: the
  optimiser's learning rate / betas / weight decay and the schedule are rebuilt from the new values at
  the restored step, and the run says so;
* the architecture (``model.*``) cannot change: the weights fix it;
* a checkpoint that records no settings is refused too (nothing to compare), unless the resume says
  ``--train.resume_override all``, which applies this run's optimiser settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ResumeSettingsError", "IGNORED", "changed_settings", "check_resume_settings", "apply_overrides"]

#: Settings that do not change what is computed (where to log, how often to save, when to stop, which kernel).
IGNORED = frozenset({
    "train.out_dir", "train.stop_after", "train.progress", "train.log_every", "train.log_sample_keys",
    "train.keep_checkpoints", "train.save_every", "train.inject_nan_at", "train.resume_override", "train.overwrite",
    "data.demo_dir",
    "model.scan_backend",  # which selective-scan kernel runs here (EEGMambaConfig.RUNTIME_FIELDS), not the maths
})
#: ``--train.resume_override all``: resume a checkpoint that records no settings, with this run's.
ALL = "all"
#: Optimiser group entries rebuilt from the new config when their key is overridden.
GROUP_KEYS = {"optim.lr": "initial_lr", "optim.betas": "betas", "optim.weight_decay": "weight_decay"}


class ResumeSettingsError(ValueError):
    """``--resume`` with settings that differ from the checkpoint's and were not listed as overrides."""


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (checkpoint's value, this run's value) for every setting that differs (``IGNORED`` aside)."""
    old, new = _flat(saved), _flat(current)
    keys = (set(old) | set(new)) - IGNORED
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def parse_override(text: str) -> list[str]:
    """``"optim.lr, optim.warmup_steps"`` -> ``["optim.lr", "optim.warmup_steps"]``."""
    return [k.strip() for k in text.split(",") if k.strip()]


def check_resume_settings(saved: Mapping[str, Any] | None, current: Mapping[str, Any], override: str,
                          checkpoint: Path) -> dict[str, tuple[Any, Any]]:
    """The changed settings the run may apply; raises when any other setting differs.

    Returns:
        key -> (old, new) for the overridden keys that really differ (empty when nothing changes).
    Raises:
        ResumeSettingsError: naming each differing key with both values, or an override of ``model.*``.
    """
    allowed = parse_override(override)
    if saved is None:
        if not current:
            return {}  # a run that keeps no settings (an API caller without hparams): nothing to compare
        if ALL not in allowed:
            raise ResumeSettingsError(
                f"--resume {checkpoint}: {checkpoint / 'train_state.json'} records no settings ('config' is missing or "
                f"null), so this run's settings cannot be checked against the checkpoint's (a new learning rate would "
                f"be recorded but not used). Restore the file from the run that wrote it, or resume deliberately with "
                f"--train.resume_override {ALL}: the optimiser and schedule then follow this run's settings")
        flat = _flat(current)
        return {k: (None, flat[k]) for k in GROUP_KEYS if k in flat}
    changes = changed_settings(saved, current)
    fixed = [k for k in allowed if k.startswith("model.") and k in changes]
    if fixed:
        raise ResumeSettingsError(
            f"--resume {checkpoint}: {', '.join(fixed)} cannot change on resume (the weights fix the architecture); "
            "start a new run instead")
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in refused.items())
        raise ResumeSettingsError(
            f"--resume {checkpoint}: these settings differ from the checkpoint's ({checkpoint / 'train_state.json'}): "
            f"{listed}. Resume with the checkpoint's values, or apply the new ones deliberately with "
            f"--train.resume_override {','.join(refused)}")
    return {k: v for k, v in changes.items() if k in allowed}


def apply_overrides(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    fresh_groups: Sequence[Mapping[str, Any]], applied: Mapping[str, Any]) -> None:
    """Put the new config's values into the restored optimiser and schedule at the restored step.

    ``fresh_groups`` are the optimiser's param groups as built from the new config, before the checkpoint
    was loaded. The LR function already follows the new warm-up / length / floor; the peak LR, betas and
    weight decay come back from ``fresh_groups``, and every group's current LR is recomputed.
    """
    for key, entry in GROUP_KEYS.items():
        if key in applied:
            for group, fresh in zip(optimizer.param_groups, fresh_groups):
                group[entry] = fresh[entry]
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
