"""What a finetuning run looked like while it ran: TensorBoard scalars and the learning-curve figure.

:class:`RunCurves` is handed every optimiser step (training loss, learning rate) and every epoch's validation
record (the ``log.jsonl`` line of ``finetune.train``) and writes them, on the main process only, to

- ``{out}/logs/``: TensorBoard event files (``tensorboard --logdir {out}/logs``), the tags pretraining uses for
  the same quantities: ``train/loss`` and ``train/lr`` per step (``train/loss/<task>`` per task of a multi-task
  run), ``train/epoch_loss``, ``val/loss``, ``val/score`` (the selection score) and ``val/<task>/<metric>`` per
  epoch, plotted at the step the epoch ended (the probe the head starts from, epoch -1, at step 0);
- ``{out}/learning_curves.png`` (:func:`plot_learning_curves`): loss per step and per epoch, the validation
  metrics with the kept epoch marked, and the learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["RunCurves", "plot_learning_curves", "CURVES_FILE", "LOG_DIR", "VAL_METRICS"]

CURVES_FILE = "learning_curves.png"
LOG_DIR = "logs"
# Per-task validation metrics sent to TensorBoard and drawn (those a task's metrics dict holds).
VAL_METRICS = ("auroc", "balanced_accuracy", "cohen_kappa", "weighted_f1", "nll")


class RunCurves:
    """Collects a run's per-step and per-epoch numbers; writes TensorBoard events as they come (``active``:
    the main process) and the figure at the end (:meth:`close`)."""

    def __init__(self, out_dir: str | Path, active: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict[str, Any]] = []  # {"step", "epoch", "task", "loss", "lr"}
        self.epochs: list[dict[str, Any]] = []  # the log.jsonl records
        self.writer = None
        if active:
            from torch.utils.tensorboard import SummaryWriter

            # A finetuning run replaces its folder's outputs whole: an earlier run's curves are not this run's.
            for old in (self.out_dir / LOG_DIR).glob("events.out.tfevents.*"):
                old.unlink()
            self.writer = SummaryWriter(log_dir=str(self.out_dir / LOG_DIR))

    def step(self, step: int, epoch: int, task: str, loss: float, lr: float, multitask: bool = False) -> None:
        """One optimiser step (1-based ``step``): its training loss and the learning rate it used."""
        self.steps.append({"step": step, "epoch": epoch, "task": task, "loss": loss, "lr": lr})
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            if multitask:
                self.writer.add_scalar(f"train/loss/{task}", loss, step)

    def epoch(self, record: Mapping[str, Any]) -> None:
        """An epoch's record (``epoch, step, train_loss, lr, val_score, val_loss, val: {task: metrics}``)."""
        self.epochs.append(dict(record))
        if self.writer is None:
            return
        step = int(record["step"])
        scalars = {"val/score": record.get("val_score"), "val/loss": record.get("val_loss"),
                   "train/epoch_loss": record.get("train_loss")}
        for task, metrics in (record.get("val") or {}).items():
            scalars.update({f"val/{task}/{k}": metrics.get(k) for k in VAL_METRICS})
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self, best_epoch: int | None = None) -> Path | None:
        """Close the event file and draw ``learning_curves.png`` (main process; returns its path)."""
        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        return plot_learning_curves(self.steps, self.epochs, self.out_dir / CURVES_FILE, best_epoch=best_epoch)


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Running mean over the last ``n`` values (shorter at the start): per-batch losses are noisy."""
    if len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - n, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _finite(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["step"], r.get(key)) for r in records]
    pairs = [(s, v) for s, v in pairs if isinstance(v, (int, float)) and math.isfinite(v)]
    return np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)


def plot_learning_curves(steps: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]], path: str | Path,
                         best_epoch: int | None = None) -> Path:
    """Three panels over optimiser steps: (1) training loss per batch (thin), its running mean and per epoch,
    validation loss per epoch; (2) each task's validation AUROC and balanced accuracy per epoch (the probe the head
    starts from at step 0), the kept epoch as a dashed line; (3) the learning rate of the top layer and head."""
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.0), dpi=110, sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 1.6]})
    s = np.array([r["step"] for r in steps], float)
    loss = np.array([r["loss"] for r in steps], float)
    ax = axes[0]
    if len(s):
        ax.plot(s, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (batch)")
        ax.plot(s, _smooth(loss, max(1, len(s) // 30)), color="tab:blue", lw=1.5, label="train (running mean)")
    for key, style, name in (("train_loss", dict(color="tab:blue", marker="o", ls="none"), "train (epoch mean)"),
                             ("val_loss", dict(color="tab:orange", marker="s", ls="-"), "validation")):
        xs, ys = _finite(epochs, key)
        if len(xs):
            ax.plot(xs, ys, ms=4, label=name, **style)
    ax.set_ylabel("loss")
    ax.set_title("learning curves", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[1]
    tasks = sorted({t for r in epochs for t in (r.get("val") or {})})
    for i, task in enumerate(tasks):
        color = plt.cm.tab10(i % 10)
        per_task = [{"step": r["step"], **(r.get("val") or {}).get(task, {})} for r in epochs]
        for metric, ls in (("auroc", "-"), ("balanced_accuracy", "--")):
            xs, ys = _finite(per_task, metric)
            if len(xs):
                ax.plot(xs, ys, ls=ls, marker="o", ms=3, color=color, label=f"{task} {metric.replace('_', ' ')}")
    best = next((r for r in epochs if r.get("epoch") == best_epoch), None)
    if best is not None:
        for a in axes:
            a.axvline(best["step"], color="gray", ls=":", lw=1)
        axes[1].annotate(f"kept: epoch {best_epoch}", (best["step"], 0.02), fontsize=7, color="gray", ha="right",
                         xytext=(-3, 0), textcoords="offset points")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("validation")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    if len(s):
        ax.plot(s, [r["lr"] for r in steps], color="tab:green", lw=1.2)
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.set_xlabel("optimiser step")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
