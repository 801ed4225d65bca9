"""Figures of a labelled recording (``python -m finetune.predict --plot``).

- Sleep models (:func:`is_sleep`): a hypnogram (stages W, REM, N1, N2, N3 top to bottom over hours, REM in
  red) above the hypnodensity (each stage's probability per window, stacked), with a reference hypnogram (a
  scorer's) drawn under the model's when one is given.
- Binary models (seizure, calm/stress, ...): the probability of the second class per window, the decision
  threshold, and the detected events (spans labelled with the second class) shaded.
- Other models: each class's probability per window, stacked, with the label as a colour strip.

Windows without a label (``skipped``) are grey hatched spans in every figure. Time runs in seconds, minutes or
hours, whichever suits the recording's length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from finetune.annotations import Span, label_spans  # noqa: E402

__all__ = ["is_sleep", "plot_prediction", "plot_hypnogram", "plot_binary", "plot_probabilities", "SLEEP_ORDER"]

# Top to bottom, as clinical hypnograms draw them.
SLEEP_ORDER = ("W", "REM", "N1", "N2", "N3")


def is_sleep(task: str, classes: Sequence[str]) -> bool:
    """A sleep-staging model: the sleep recipe, or classes that are all AASM stages (at least three)."""
    return task == "sleep" or (len(classes) >= 3 and set(classes) <= set(SLEEP_ORDER))


def _time_axis(total_s: float) -> tuple[float, str]:
    if total_s >= 2 * 3600:
        return 3600.0, "time (h)"
    if total_s >= 5 * 60:
        return 60.0, "time (min)"
    return 1.0, "time (s)"


def _arrays(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(onsets [n], proba [n, k])`` in time order; NaN rows for windows without a label."""
    rows = sorted(rows, key=lambda r: r["onset_s"])
    onsets = np.array([r["onset_s"] for r in rows], float)
    proba = np.array([[(r.get("probabilities") or {}).get(c, np.nan) for c in classes] for r in rows], float)
    return onsets, proba.reshape(len(rows), len(classes))


def _shade_skipped(ax, spans: Sequence[Span], scale: float) -> None:
    for s in spans:
        if s.label_name is None:
            ax.axvspan(s.onset_s / scale, (s.onset_s + s.duration_s) / scale, facecolor="0.85", hatch="///",
                       edgecolor="0.6", lw=0, zorder=0)


def _steps(spans: Sequence[Span], level: Mapping[str, int], scale: float) -> tuple[list[float], list[float]]:
    """A step line through the spans' levels; NaN breaks it over unlabelled spans."""
    xs, ys = [], []
    for s in spans:
        y = level.get(s.label_name, np.nan) if s.label_name is not None else np.nan
        xs += [s.onset_s / scale, (s.onset_s + s.duration_s) / scale]
        ys += [y, y]
    return xs, ys


def plot_hypnogram(rows: Sequence[Mapping[str, Any]], classes: Sequence[str], window_s: float, path: str | Path, *,
                   title: str = "", reference: Sequence[Span] | None = None) -> Path:
    """Hypnogram + hypnodensity (module doc); ``reference``: a scorer's spans, drawn grey under the model's."""
    spans = label_spans(rows, window_s)
    onsets, proba = _arrays(rows, classes)
    total = max((s.onset_s + s.duration_s for s in spans), default=window_s)
    scale, xlabel = _time_axis(total)
    stages = [c for c in SLEEP_ORDER if c in classes] + [c for c in classes if c not in SLEEP_ORDER]
    level = {c: len(stages) - 1 - i for i, c in enumerate(stages)}
    fig, (ax, dens) = plt.subplots(2, 1, figsize=(10, 4.6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if reference:
        xs, ys = _steps(reference, level, scale)
        ax.plot(xs, np.asarray(ys) - 0.12, color="0.55", lw=1.2, label="reference (scorer)")
    xs, ys = _steps(spans, level, scale)
    ax.plot(xs, ys, color="black", lw=1.2, label="model")
    rem = [s for s in spans if s.label_name == "REM"]
    for s in rem:
        ax.plot([s.onset_s / scale, (s.onset_s + s.duration_s) / scale], [level["REM"]] * 2, color="tab:red", lw=4,
                solid_capstyle="butt")
    _shade_skipped(ax, spans, scale)
    ax.set_yticks([level[c] for c in stages], stages)
    ax.set_ylim(-0.6, len(stages) - 0.4)
    ax.set_ylabel("stage")
    ax.set_title(title or "hypnogram", fontsize=10)
    if reference:
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    colors = {"W": "#f2c14e", "REM": "#d1495b", "N1": "#a8dadc", "N2": "#457b9d", "N3": "#1d3557"}
    order = [c for c in stages]
    if len(onsets):
        idx = [list(classes).index(c) for c in order]
        edges = np.append(onsets, onsets[-1] + window_s) / scale
        dens.stackplot(np.repeat(edges, 2)[1:-1], *[np.repeat(np.nan_to_num(proba[:, i]), 2) for i in idx],
                       labels=order, colors=[colors.get(c, None) for c in order], step=None, lw=0)
    _shade_skipped(dens, spans, scale)
    dens.set_ylim(0, 1)
    dens.set_ylabel("probability")
    dens.set_xlabel(xlabel)
    dens.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)


def plot_binary(rows: Sequence[Mapping[str, Any]], classes: Sequence[str], window_s: float, path: str | Path, *,
                threshold: float | None = None, title: str = "", reference: Sequence[Span] | None = None) -> Path:
    """p(second class) per window, the threshold, detected events shaded; ``reference``: true event spans drawn as
    a bar above the curve."""
    spans = label_spans(rows, window_s)
    onsets, proba = _arrays(rows, classes)
    positive = classes[1]
    total = max((s.onset_s + s.duration_s for s in spans), default=window_s)
    scale, xlabel = _time_axis(total)
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=110)
    events = [s for s in spans if s.label_name == positive]
    for k, s in enumerate(events):
        ax.axvspan(s.onset_s / scale, (s.onset_s + s.duration_s) / scale, color="tab:red", alpha=0.18, lw=0,
                   label=f"detected {positive}" if k == 0 else None)
    for k, s in enumerate(reference or ()):
        if s.label_name == positive:
            ax.plot([s.onset_s / scale, (s.onset_s + s.duration_s) / scale], [1.04, 1.04], color="black", lw=3,
                    solid_capstyle="butt", label=f"reference {positive}" if k == 0 else None)
    _shade_skipped(ax, spans, scale)
    centres = (onsets + window_s / 2) / scale
    ax.plot(centres, proba[:, 1], color="tab:blue", lw=1.0, marker="." if len(onsets) < 200 else None, ms=3,
            label=f"p({positive})")
    cut = 0.5 if threshold is None else threshold
    ax.axhline(cut, color="0.4", ls="--", lw=1, label=f"threshold {cut:.2f}" + (" (validation)" if threshold is not None else ""))
    ax.set_ylim(-0.02, 1.1)
    ax.set_xlim(0, total / scale)
    ax.set_ylabel(f"p({positive})")
    ax.set_xlabel(xlabel)
    count = f"{len(events)} detected {positive} event(s)"
    ax.set_title(f"{title}: {count}" if title else count, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)


def plot_probabilities(rows: Sequence[Mapping[str, Any]], classes: Sequence[str], window_s: float, path: str | Path, *,
                       title: str = "") -> Path:
    """Each class's probability per window (stacked) under a colour strip of the labels."""
    spans = label_spans(rows, window_s)
    onsets, proba = _arrays(rows, classes)
    total = max((s.onset_s + s.duration_s for s in spans), default=window_s)
    scale, xlabel = _time_axis(total)
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    fig, (strip, ax) = plt.subplots(2, 1, figsize=(10, 3.6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [1, 5]})
    for s in spans:
        if s.label_name is not None:
            strip.axvspan(s.onset_s / scale, (s.onset_s + s.duration_s) / scale, color=colors[s.label_name], lw=0)
    _shade_skipped(strip, spans, scale)
    strip.set_yticks([])
    strip.set_ylabel("label", rotation=0, ha="right", va="center")
    strip.set_title(title or "class probabilities", fontsize=10)
    if len(onsets):
        edges = np.append(onsets, onsets[-1] + window_s) / scale
        ax.stackplot(np.repeat(edges, 2)[1:-1], *[np.repeat(np.nan_to_num(proba[:, i]), 2) for i in range(len(classes))],
                     labels=list(classes), colors=[colors[c] for c in classes], lw=0)
    _shade_skipped(ax, spans, scale)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, total / scale)
    ax.set_ylabel("probability")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)


def plot_prediction(rows: Sequence[Mapping[str, Any]], classes: Sequence[str], window_s: float, path: str | Path, *,
                    task: str = "", threshold: float | None = None, title: str = "",
                    reference: Sequence[Span] | None = None) -> Path:
    """The figure that suits the model (module doc)."""
    if is_sleep(task, classes):
        return plot_hypnogram(rows, classes, window_s, path, title=title, reference=reference)
    if len(classes) == 2:
        return plot_binary(rows, classes, window_s, path, threshold=threshold, title=title, reference=reference)
    return plot_probabilities(rows, classes, window_s, path, title=title)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
