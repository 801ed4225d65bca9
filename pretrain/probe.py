"""The validation probe of a pretraining run: how good the backbone's frozen features are, every few hundred steps.

A self-supervised loss does not tell a good backbone from a bad one: runs whose final losses agree within 0.05
differ by 0.05 balanced accuracy downstream, and features can get worse while the loss still falls. The probe
measures what the features are for. Every ``probe.every`` steps (and at the end) the backbone encodes a small
labelled set declared in the config (``probe.shards``; it must be kept out of the pretraining data, which is
checked against the manifests), and a standardised logistic regression is cross-validated on the frozen
features with folds by subject (by recording where the set names no subject). Balanced accuracy and, for
two-class sets, AUROC go to TensorBoard (``probe/<set>/...``), beside the features' effective rank
(``effective_rank``, RankMe: a backbone whose features collapse onto a few directions shows it there first);
the run exports the weights of the step the probe selects (``probe.select``), saved as they arrive in
``{out_dir}/probe_best``, so a resumed run keeps them.

Selection is the one-standard-error rule (Breiman et al. 1984; Hastie et al., *Elements of Statistical Learning*
7.10): the latest step whose score is within ``probe.tolerance`` standard errors of the best score so far, the
larger of the two scores' errors (the best of many noisy scores is biased upwards, and a later step scored with more
noise is not measurably worse for falling short of it by less than that noise). A small probe set scores each step
with noise of a few hundredths, so the maximum over many probes is mostly the luckiest draw (in the benchmark's
4800-step runs, a 4-subject EEGMAT probe hovering near chance exported step 300 of one backbone); later weights have
seen more data, so a step that is not measurably worse is preferred. The standard error is the larger of the
window-level one (Hanley & McNeil 1982 for AUROC, binomial per class for balanced accuracy) and a bootstrap over the
set's subjects (``runtime.score_error.group_bootstrap_se``): windows of one subject are not independent. Both matter
on small sets: in the benchmark's 2,400-step runs a 4-subject EEGMAT probe scored one backbone 0.745 at step 600 and
0.63-0.66 at every later step; counting windows (error 0.044) or the best's error alone (0.058 over subjects)
exported step 600, and the benchmark's probes of that seed fell by 0.020 balanced accuracy on average over its five
tasks against the same run's last step (motor imagery -0.067); the later steps' own errors (0.06-0.11 over subjects)
let the rule keep the last step.

Features are the tokens a finetuned head reads (``foundation.readout``), from the layer it reads
(``probe.read_layer``, by default the middle one, as heads read; the layers above are not run): one token mean per
channel (in vocabulary order) when every window has two or more channels, else the mean of all tokens. The head's
other input, each channel's log RMS amplitude, is left out: it is the same at every step, so it cannot tell steps
apart and would only blur the differences the probe is there to see.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundation.readout import align_channels, channel_means, read_depth
from foundation.tasks import task_ids as task_ids_of
from runtime.score_error import score_se
from shards.dataset import collate, expand_urls, load_windows, read_manifest
from shards.vocabulary import channel_id

__all__ = ["ProbeSet", "ProbeResult", "load_probe_sets", "probe_backbone", "effective_rank", "score_se", "check_probe_leak",
           "keep_selected", "probe_layer", "BEST_DIR"]

BEST_DIR = "probe_best"


@dataclass
class ProbeSet:
    """One labelled probe set: its windows (each with ``meta["label"]``), their groups and label count."""

    name: str
    windows: list
    labels: np.ndarray
    groups: np.ndarray
    n_classes: int
    channels: list[str]  # the per-channel readout's channel order; [] = mean of all tokens


@dataclass
class ProbeResult:
    """Cross-validated scores per set and the run's one number (mean over sets of AUROC, else balanced accuracy)."""

    scores: dict[str, dict[str, float]]
    score: float
    se: float = 0.0  # standard error of ``score`` (from each set's ``score_se``)
    layer: dict[str, int] = field(default_factory=dict)  # the layer read: {"read": k, "of": n_layers}


def load_probe_sets(specs: Sequence[str], *, max_windows: int, task: str = "", name_of=None) -> list[ProbeSet]:
    """Read every labelled window (of shard task ``task``, when given) of each shard spec (folder / glob / brace
    pattern), at most ``max_windows`` evenly spaced ones per set.

    Raises:
        ValueError: a set with fewer than two labels or two groups per fold to learn from, naming it.
    """
    sets = []
    for spec in specs:
        windows = [w for w in load_windows(spec) if w.meta.get("label") not in (None, -1)
                   and (not task or w.meta.get("task") == task)]
        name = Path(str(spec).rstrip("/*")).name if name_of is None else name_of(spec)
        if len(windows) > max_windows:
            keep = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
            windows = [windows[i] for i in keep]
        labels = np.asarray([int(w.meta["label"]) for w in windows], dtype=np.int64)
        classes = sorted(set(labels.tolist()))
        if len(classes) < 2:
            raise ValueError(f"probe set {spec}: {len(windows)} labelled windows of {len(classes)} class(es); "
                             "a probe needs two or more")
        remap = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([remap[c] for c in labels.tolist()], dtype=np.int64)
        subjects = [w.meta.get("subject") for w in windows]
        key = "subject" if all(s not in (None, "") for s in subjects) and len(set(subjects)) >= 3 else "recording"
        groups = np.asarray([f"{w.meta.get('corpus')}/{w.meta.get(key)}" for w in windows], dtype=object)
        if len(set(groups.tolist())) < 2:
            raise ValueError(f"probe set {spec}: all windows come from one {key}; cross-validation needs two or more")
        multi = all(len(w.meta.get("channels", ())) >= 2 for w in windows)
        channels = sorted({c for w in windows for c in w.meta["channels"]}, key=channel_id) if multi else []
        sets.append(ProbeSet(name, windows, labels, groups, len(classes), channels))
    return sets


def _subjects(urls: Sequence[str]) -> set[tuple[str, str]]:
    """``(corpus, subject)`` of every recording in the local shards ``urls``, from their folders' manifests."""
    by_folder: dict[Path, set[str]] = {}
    for u in urls:
        if "://" not in u and not u.startswith("pipe:"):
            by_folder.setdefault(Path(u).parent, set()).add(Path(u).name)
    out = set()
    for folder, names in by_folder.items():
        try:
            manifest = read_manifest(folder)
        except FileNotFoundError:
            continue
        corpus = manifest.get("corpus", folder.name)
        recordings = {r for sh in manifest.get("shards", []) if sh.get("name") in names for r in sh.get("recordings", [])}
        out |= {(corpus, str(r.get("subject") or r["recording"])) for r in manifest.get("recordings", [])
                if r.get("recording") in recordings}
    return out


def check_probe_leak(probe_specs: Sequence[str], pretrain_urls: Sequence[str]) -> None:
    """ValueError when a subject of a probe set (per the shards' manifests) is also in the pretraining shards: a
    probe on people the backbone was pretrained on flatters it."""
    seen = _subjects(pretrain_urls)
    for spec in probe_specs:
        both = _subjects(expand_urls(spec)) & seen
        if both:
            shown = ", ".join(f"{c}/{r}" for c, r in sorted(both)[:3])
            raise ValueError(f"probe.shards {spec}: {len(both)} subject(s) are also in the pretraining data (e.g. {shown}); "
                             "the probe set must be held out of pretraining (other subjects, or a split the run does not read)")


@torch.no_grad()
def _features(backbone, probe: ProbeSet, batch_size: int, device) -> np.ndarray:
    was = backbone.training
    backbone.eval()
    wanted = torch.as_tensor([channel_id(c) for c in probe.channels], dtype=torch.long, device=device)
    out = []
    try:
        for i in range(0, len(probe.windows), batch_size):
            b = collate(probe.windows[i:i + batch_size])
            x, ids, mask = b["x"].to(device), b["channel_ids"].to(device), b["channel_mask"].to(device)
            tasks = task_ids_of([w.meta.get("task") for w in probe.windows[i:i + batch_size]], x.shape[0], device)
            o = backbone(x, ids, mask, tasks)
            if probe.channels:
                f = align_channels(channel_means(o.tokens, o.token_mask, x.shape[1]), ids, mask, wanted).flatten(1)
            else:
                f = o.pooled
            out.append(f.float().cpu())
    finally:
        backbone.train(was)
    return torch.cat(out).numpy().astype(np.float64)


def _cross_validate(f: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, folds: int, C: float,
                    seed: int) -> dict[str, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(folds, len(set(groups.tolist())))
    proba = np.zeros((len(y), n_classes))
    for train, test in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(f, y, groups):
        if len(set(y[train].tolist())) < n_classes:
            proba[test] = 1.0 / n_classes
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(f[train], y[train])
        proba[test] = clf.predict_proba(f[test])
    scores = {"balanced_accuracy": float(balanced_accuracy_score(y, proba.argmax(1)))}
    if n_classes == 2:
        scores["auroc"] = float(roc_auc_score(y, proba[:, 1]))
    scores["score_se"] = score_se(y, proba, scores, groups)
    return scores


def effective_rank(f: np.ndarray) -> float:
    """RankMe (Garrido et al., ICML 2023) of features ``f [n, D]``: ``exp`` of the entropy of the centred features'
    normalised singular values, between 1 (every window on one line: collapse) and ``min(n, D)`` (energy spread
    evenly). A collapse alarm, not a quality score: random features spread their energy evenly too."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or min(f.shape) < 2:
        return math.nan
    s = np.linalg.svd(f - f.mean(0), compute_uv=False)
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def probe_backbone(backbone, sets: Sequence[ProbeSet], *, folds: int = 5, C: float = 0.01, seed: int = 0,
                   batch_size: int = 64, device: torch.device | str = "cpu", read_layer: int | None = None) -> ProbeResult:
    """Cross-validated probe scores of ``backbone``'s frozen features, read at ``read_layer``
    (:func:`foundation.readout.read_depth`: None = the middle layer), on every set, with the features'
    ``effective_rank`` (the score itself is AUROC, else balanced accuracy)."""
    layer = probe_layer(read_layer, backbone)
    reader = backbone.first_layers(layer["read"])
    scores = {}
    for probe in sets:
        f = _features(reader, probe, batch_size, device)
        scores[probe.name] = _cross_validate(f, probe.labels, probe.groups, probe.n_classes, folds, C, seed)
        scores[probe.name]["effective_rank"] = effective_rank(f)
    main = [s.get("auroc", s["balanced_accuracy"]) for s in scores.values()]
    se = math.sqrt(sum(s["score_se"] ** 2 for s in scores.values())) / len(scores) if scores else math.nan
    return ProbeResult(scores, float(np.mean(main)) if main else math.nan, float(se), layer)


def probe_layer(read_layer: int | None, backbone) -> dict[str, int]:
    """The layer a probe at ``read_layer`` reads of ``backbone``: ``{"read": k, "of": n_layers}``."""
    n_layers = backbone.config.n_layers
    return {"read": read_depth(read_layer, n_layers), "of": n_layers}


def keep_selected(out_dir: Path, backbone, step: int, result: ProbeResult, tolerance: float) -> bool:
    """Save ``step``'s weights as the selected ones when its score is within ``tolerance`` standard errors of the
    best score so far (the larger of the best's and this step's standard error), a new best included; returns
    whether they were saved.

    Applied at every probe, in step order, this leaves the latest step within ``tolerance`` standard errors of the
    highest score of the run; ``probe.json`` keeps that highest score (``top``) so a resumed run goes on alike.
    """
    saved = read_best(out_dir)
    top = (saved.get("top") or {"step": saved["step"], "score": saved["score"], "se": 0.0}) if saved else None
    if top is None or result.score > top["score"] + 1e-9:
        top = {"step": step, "score": result.score, "se": result.se}
    if saved is not None and not result.score >= top["score"] - tolerance * max(top["se"], result.se) - 1e-9:
        return False
    folder = Path(out_dir) / BEST_DIR
    backbone.save_pretrained(folder)
    (folder / "probe.json").write_text(json.dumps(
        {"step": step, "score": result.score, "se": result.se, "scores": result.scores, "top": top}, indent=2))
    return True


def read_best(out_dir: Path) -> dict[str, Any] | None:
    """``probe.json`` of the saved selected checkpoint, or None."""
    file = Path(out_dir) / BEST_DIR / "probe.json"
    return json.loads(file.read_text()) if file.is_file() else None
