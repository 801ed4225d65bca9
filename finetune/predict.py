"""Label the windows of a raw recording with a finetuned model.

Usage::

    python -m finetune.predict --model runs/finetune-sleep-.../model night.edf [--out labels.csv] [--task sleep] [--plot]

With ``--out labels.csv`` the labels are also written as the events EEG tools read (``finetune.annotations``):
MNE annotations ``labels_annot.fif`` / ``labels_annot.txt`` (``mne.read_annotations``) and a BIDS
``labels_events.tsv`` with its ``labels_events.json``, consecutive windows of one label merged into one event;
``--plot`` adds ``labels_hypnogram.png`` (sleep models) or ``labels_timeline.png`` (``finetune.timeline``).

API::

    from finetune.predict import predict_file, predict_recording, write_outputs
    rows = predict_file("runs/.../model", "night.edf")   # [{onset_s, label, label_name, probability}, ...]
    pred = predict_recording("runs/.../model", "night.edf")  # rows + classes, window, threshold
    write_outputs(pred, "night.csv", plot=True)          # night.csv, night_annot.fif/.txt, night_events.tsv/.json, night_hypnogram.png
    rec = recording_windows("runs/.../model", "night.edf")  # the same windows, no model: rec.x [n, c, t]

The recording goes through the same path as the shards the model was trained on: ``shards.readers.read_raw``
-> ``shards.preprocess.preprocess_raw`` -> ``cut_windows`` with the preprocessing parameters saved in the
model's ``recipe.json`` (copied from the shards' manifest at training time), and windows of the trained
length. Windows are consecutive (stride = window length unless ``stride_s`` is given) and none is dropped
for amplitude or flatness: every span of the recording gets a row, which is what a hypnogram or a seizure
timeline needs. A window that cannot be labelled (NaN/inf samples, a model output that is not finite) keeps its
row without a label and with the reason in ``skipped``. A long recording is read and labelled in blocks
(``shards.streaming``: bounded memory for any length), with a progress bar on stderr. ``probability`` is the softmax probability of the predicted class;
``probabilities`` holds all classes. A binary model's label uses the decision threshold chosen on its
validation split (saved in ``recipe.json``); a model trained with Euclidean alignment gets the recording
aligned by its own windows, and a linear probe trained on per-subject standardised features
(``feature_norm="subject"``) gets the recording's features standardised by their own statistics; either takes
the subject's other recordings into those statistics with ``subject_files`` (``--subject_files``: needed when
one file holds one condition). The recording is checked against the checkpoint's input contract
(``finetune.contract``): another rate, units or channel spelling is converted with one notice line on
stderr; a montage the contract cannot map is a ``ContractError``; channels the model was finetuned on that
the recording lacks (or has in addition) are named in a notice.

A model without a rest class for a task cut at cues (``Recipe.rest_classes``: motor imagery's left vs right
fist) labels every window of a continuous recording as one of its cued classes; a notice says so.

A model finetuned on a single channel (Bonn's position-less ``EEG``, one sleep derivation) labels a
multi-channel recording channel by channel: every channel is read as the one the model knows, and each
window's label comes from the class probabilities averaged over the channels (a notice says so).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finetune.align import FeatureMoments, align_array, align_with, mean_covariance, whitening
from finetune.annotations import label_spans, write_annotations, write_events_tsv
from finetune.contract import contract_of, notice, recording_conversions
from finetune.metrics import predict_labels
from finetune.model import TaskModel
from finetune.recipes import get_recipe
from finetune.recipes.base import normalize_label
from finetune.timeline import is_sleep, plot_prediction
from runtime.cli_errors import DEBUG_ENV, run_cli
from runtime.cli_spelling import argparse_options, canonical_spelling
from shards.corpora import get_corpus
from shards.dataset import collate
from shards.preprocess import PreprocessConfig, Signal
from shards.readers import ReadError, read_raw
from shards.sample import Window, check_sfreq
from shards.streaming import StreamedSignal, iter_windows, preprocess_recording

# The longest window a recipe may ask for (a whole sleep epoch is 30 s; the backbone reads at most minutes).
MAX_WINDOW_S = 3600.0

__all__ = ["Prediction", "RecordingWindows", "prediction_rows", "predict_file", "predict_recording", "preprocess_config",
           "recording_windows", "write_outputs", "main"]


def _recipe_json(model_dir: Path) -> dict[str, Any]:
    """``{model_dir}/recipe.json``, checked: one object per task with a plausible ``sfreq`` and ``window_s``."""
    file = model_dir / "recipe.json"
    fix = "restore it from the finetuning run, or finetune again"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: a finetuned model folder holds config.json, model.safetensors and recipe.json")
    try:
        recipes = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); {fix}") from None
    if not isinstance(recipes, dict) or not recipes or not all(isinstance(r, dict) for r in recipes.values()):
        raise ValueError(f"{file}: expected a JSON object mapping each task to its recipe; {fix}")
    for task, recipe in recipes.items():
        if "sfreq" in recipe:
            check_sfreq(recipe["sfreq"], str(file), what=f"(task {task!r}: sfreq)")
        window = recipe.get("window_s")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= MAX_WINDOW_S:
            raise ValueError(f"{file}: task {task!r}: window_s {window!r} is not a window length in seconds "
                             f"(0-{MAX_WINDOW_S:g}); {fix}")
        if not isinstance(recipe.get("classes"), list) or not recipe["classes"]:
            raise ValueError(f"{file}: task {task!r} lists no classes; {fix}")
    return recipes


def preprocess_config(recipe: dict[str, Any], *, stride_s: float | None = None,
                      window_s: float | None = None) -> tuple[PreprocessConfig, str | None]:
    """The shards' preprocessing saved with the model, windowed for labelling a whole recording.

    Uses the first corpus the task was trained on (returned as the second item); windows of the trained
    length (or ``window_s``), hop ``stride_s`` (default: the window length), no amplitude/flatness drops.
    """
    fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
    builds = recipe.get("preprocessing") or {}
    saved: dict[str, Any] = {}
    corpus = None
    for corpus, build in sorted(builds.items()):
        saved = dict((build or {}).get("config") or {})
        break
    saved = {k: v for k, v in saved.items() if k in fields}
    window_s = float(recipe["window_s"] if window_s is None else window_s)
    saved.update(window_s=window_s, stride_s=window_s if stride_s is None else float(stride_s), max_abs_uv=None, flat_uv=None)
    if "sfreq" in recipe:
        saved["sfreq"] = float(recipe["sfreq"])
    return PreprocessConfig(**saved), corpus


def _channel_map(corpus: str | None) -> dict[str, str] | None:
    """The corpus adapter's explicit channel names (e.g. Bonn's position-less ``EEG``), if any."""
    if corpus is None:
        return None
    try:
        return dict(getattr(get_corpus(corpus), "channel_map", None) or {}) or None
    except KeyError:
        return None


@dataclasses.dataclass(frozen=True)
class RecordingWindows:
    """A raw recording cut as a finetuned model's shards were: ``x [n, c, t]`` float32 (100 µV units),
    ``onsets_s [n]`` (seconds from the recording's start), ``channels`` (canonical names, the rows of ``x``,
    the recipe's channels in its order when it names some), ``classes`` (the recipe's), ``sfreq`` of ``x``
    and the recipe ``task``."""

    x: np.ndarray
    onsets_s: list[float]
    channels: list[str]
    classes: list[str]
    sfreq: float
    task: str
    per_channel: str | None = None  # the one channel a single-channel model reads each row of x as


def _per_channel(recipe: dict[str, Any], channels: Sequence[str]) -> str | None:
    """The single channel a model was finetuned on, when the recording has several (labelled one by one)."""
    trained = recipe.get("trained_channels") or []
    return trained[0] if len(trained) == 1 and len(channels) > 1 and not recipe.get("channels") else None


def _montage_notice(recipe: dict[str, Any], channels: Sequence[str], path: str | Path) -> str | None:
    """What the recording's montage lacks or adds next to the one the model was finetuned on (None for a model
    that reads named channels, ``recipe["channels"]``: it reads those alone, and lacking one is an error)."""
    trained = recipe.get("trained_channels")
    if not trained or len(trained) == 1 or recipe.get("channels"):
        return None
    missing = [c for c in trained if c not in channels]
    extra = [c for c in channels if c not in trained]
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} of the {len(trained)} channels the model was finetuned on "
                     f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); a per-channel head reads them as zeros")
    if extra:
        parts.append(f"has {len(extra)} channel(s) finetuning never saw ({', '.join(extra[:8])}"
                     f"{', ...' if len(extra) > 8 else ''})")
    return f"{path}: montage differs from the model's finetuning data: " + "; ".join(parts)


def _rest_notice(recipe: dict[str, Any], classes: Sequence[str], path: str | Path) -> str | None:
    """What a model without a rest class does to a continuous recording (recipes with ``rest_classes``: cue-locked
    tasks such as motor imagery; a recipe.json without the key takes the registered recipe's)."""
    if "rest_classes" in recipe:
        rest = recipe["rest_classes"]
    else:
        try:
            rest = get_recipe(str(recipe.get("name", ""))).rest_classes
        except KeyError:
            rest = None
    if rest is None or {normalize_label(c) for c in classes} & {normalize_label(r) for r in rest}:
        return None
    return (f"{path}: the model has no rest class (its classes: {', '.join(classes)}): it was finetuned on windows cut "
            f"at cues, so every window of this continuous recording gets one of them, also where nothing was "
            f"imagined; read the probabilities, or finetune with a rest class (--classes "
            f"{','.join([rest[0], *classes]) if rest else '...'})")


@dataclasses.dataclass
class _Reading:
    """A recording opened as a model reads it: preprocessed (whole or in blocks), its window config, and the rows
    of each window the model gets (``rows``; ``channels`` names them)."""

    path: str
    task: str
    recipe: dict[str, Any]
    cfg: PreprocessConfig
    signal: Signal | StreamedSignal
    rows: list[int]
    channels: list[str]
    single: str | None

    @property
    def n_windows(self) -> int:
        """Candidate windows (before any is skipped for NaN/inf)."""
        n, stride = self.cfg.window_samples, self.cfg.stride_samples
        total = self.signal.data.shape[1] if isinstance(self.signal, Signal) else self.signal.n_samples
        return 0 if total < n else (total - n) // stride + 1


def _open(model_dir: Path, path: str | Path, *, task: str | None, stride_s: float | None, sfreq: float | None,
          window_s: float | None) -> _Reading:
    """``read_raw`` -> ``check_sfreq`` -> the model's saved preprocessing (in blocks for a long recording) -> the
    contract's conversion notice -> the recipe's channels."""
    recipes = _recipe_json(model_dir)
    task = task or next(iter(recipes))
    if task not in recipes:
        raise KeyError(f"model {model_dir} has no task {task!r}; its tasks: {list(recipes)}")
    recipe = recipes[task]
    cfg, corpus = preprocess_config(recipe, stride_s=stride_s, window_s=window_s)
    channel_map = _channel_map(corpus)
    if Path(path).suffix.lower() in (".txt", ".asc"):
        # Headerless text has no channel name: use the one the training corpus mapped (Bonn: "EEG").
        raw = read_raw(path, sfreq=sfreq, ch_name=next(iter(channel_map)) if channel_map else None)
    else:
        raw = read_raw(path)
    check_sfreq(raw.info["sfreq"], str(path))  # the build's rule and message: no labels for a 10-Hz file
    signal = preprocess_recording(raw, cfg, source=str(path), channel_map=channel_map)
    single = _per_channel(recipe, signal.channels)
    conversions = recording_conversions(raw, signal, contract_of(model_dir), str(path), montage=single is None)
    for line in (conversions, None if single else _montage_notice(recipe, signal.channels, path)):
        if line:
            notice(line)
    if single:
        notice(f"{path}: the model was finetuned on one channel ({single}): each of the recording's "
               f"{len(signal.channels)} channels is labelled as {single} on its own, and a window's label comes from "
               "the class probabilities averaged over its channels")
    channels = list(signal.channels)
    rows = list(range(len(channels)))
    keep = recipe.get("channels")
    if keep:
        missing = [c for c in keep if c not in channels]
        if missing:
            raise ValueError(f"{path}: the model's recipe needs channels {missing} that the recording lacks (has {channels})")
        rows, channels = [channels.index(c) for c in keep], list(keep)
    reading = _Reading(str(path), task, recipe, cfg, signal, rows, channels, single)
    if reading.n_windows == 0:
        raise ValueError(f"{path}: recording of {signal.duration_s:.1f} s is shorter than one {cfg.window_s:g}-s window")
    return reading


def _batches(reading: _Reading, batch_size: int, skipped: list[tuple[float, str]] | None = None,
             ) -> Iterator[tuple[list[float], np.ndarray]]:
    """``(onsets_s, x [b, c, t] float32)`` of the recording's windows, ``batch_size`` at a time; windows that
    cannot be labelled (NaN/inf samples) go to ``skipped`` as ``(onset_s, reason)``."""
    windows, _ = iter_windows(reading.signal, None, reading.cfg, dropped=skipped)
    onsets, xs = [], []
    for w in windows:
        onsets.append(float(w.onset_s))
        xs.append(np.asarray(w.eeg, dtype=np.float32)[reading.rows])
        if len(xs) == batch_size:
            yield onsets, np.stack(xs)
            onsets, xs = [], []
    if xs:
        yield onsets, np.stack(xs)


def _alignment(readings: Sequence[_Reading], batch_size: int) -> np.ndarray | None:
    """The subject's own Euclidean-alignment matrix (a first pass over the windows of ``readings``: the recording
    and the subject's other recordings), for a model trained aligned."""
    if readings[0].recipe.get("align") != "euclidean":
        return None
    cov, count = None, 0
    for reading in readings:
        for _, x in _batches(reading, batch_size):
            part = mean_covariance(x) * len(x)
            cov = part if cov is None else cov + part
            count += len(x)
    if cov is None:
        raise ValueError(f"{readings[0].path}: no window without NaN/inf samples to align the recording by")
    return whitening(cov / count)


def _head_inputs(model: TaskModel, reading: _Reading, x: np.ndarray, task: str, device: str,
                 features: bool) -> torch.Tensor:
    """The model on windows ``x [n, c, t]`` (a single-channel model: each channel as its own window, ``[n * c]``
    rows): logits, or (``features``) what the head reads, before its standardisation."""
    n, c, t = x.shape
    meta = {"channels": [reading.single] if reading.single else reading.channels}
    windows = x.reshape(n * c, 1, t) if reading.single else x
    batch = collate([Window(w, meta) for w in windows])
    args = (batch["x"].to(device), batch["channel_ids"].to(device), batch["channel_mask"].to(device), task)
    return model.features(*args).float() if features else model(*args)[0].float()


# Fewer windows than this give per-subject feature statistics too noisy to standardise by (a notice says so).
MIN_SUBJECT_WINDOWS = 20


def recording_windows(
    model_dir: str | Path,
    path: str | Path,
    *,
    task: str | None = None,
    stride_s: float | None = None,
    sfreq: float | None = None,
    window_s: float | None = None,
) -> RecordingWindows:
    """The windows :func:`predict_file` labels, without a model, all in memory: ``read_raw`` -> ``check_sfreq``
    -> the model's saved preprocessing -> the contract's conversion notice -> consecutive windows -> the recipe's
    channels. Any classifier trained on the model's shard windows (``benchmarks/baselines.py``'s band power)
    reads a recording through exactly this path. Windows with NaN/inf samples are left out (``predict_file``
    lists them as skipped).

    Args and errors: as :func:`predict_file` (``task`` default: the first recipe of ``recipe.json``), except
    that an unknown task lists the recipes.
    """
    reading = _open(Path(model_dir), path, task=task, stride_s=stride_s, sfreq=sfreq, window_s=window_s)
    onsets, xs = [], []
    for batch_onsets, x in _batches(reading, 256):
        onsets += batch_onsets
        xs.append(x)
    if not xs:
        raise ValueError(f"{path}: every window of the recording holds NaN/inf samples")
    x = np.concatenate(xs)
    if reading.recipe.get("align") == "euclidean":
        x = align_array(x)  # the recording aligned by its own windows, as finetuning aligned each subject
    return RecordingWindows(x, onsets, reading.channels, list(reading.recipe["classes"]), float(reading.cfg.sfreq),
                            reading.task, per_channel=reading.single)


# A recording with more windows than this gets a progress bar on stderr (10-s windows: about 40 minutes).
PROGRESS_WINDOWS = 256


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A labelled recording: :func:`predict_file`'s ``rows`` and what is needed to turn them into events and figures:
    the head's ``classes``, the ``task`` (head) and its recipe's name, the windows' ``window_s`` and ``stride_s``, the
    binary decision ``threshold`` (None: argmax), the recording ``path`` and the ``model_dir``."""

    rows: list[dict[str, Any]]
    classes: list[str]
    task: str
    recipe: str
    window_s: float
    stride_s: float
    threshold: float | None
    path: str
    model_dir: str


def predict_file(model_dir: str | Path, path: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    """One row per window of ``path``: :func:`predict_recording`'s ``rows`` (same arguments)."""
    return predict_recording(model_dir, path, **kwargs).rows


@torch.no_grad()
def predict_recording(
    model_dir: str | Path,
    path: str | Path,
    *,
    task: str | None = None,
    batch_size: int = 64,
    stride_s: float | None = None,
    device: str = "cpu",
    sfreq: float | None = None,
    model: TaskModel | None = None,
    window_s: float | None = None,
    progress: bool | None = None,
    subject_files: Sequence[str | Path] = (),
) -> Prediction:
    """Label every window of ``path``; ``rows``: one per window, ``onset_s, label, label_name, probability,
    probabilities, skipped``.

    A window that cannot be labelled (NaN/inf samples in the recording, or a model output that is not finite)
    keeps its row, with ``label`` None and the reason in ``skipped``. A long recording is read, preprocessed and
    labelled in blocks (``shards.streaming``), in bounded memory.

    Args:
        model_dir: folder written by ``finetune/run.py`` (``{out}/model``).
        path: a raw recording any ``shards.readers.read_raw`` format (EDF/BDF/FIF/SET/VHDR/...).
        task: which head (default: the model's only/first task).
        stride_s: hop between windows (default: the window length, i.e. consecutive epochs).
        sfreq: sampling rate of a headerless text recording (one sample per line); ignored otherwise.
        model: an already loaded model (labelling many files).
        window_s: window length in whole seconds (default: the trained length; other lengths are a shift
            the model was not trained for, see ``benchmarks/shift.py``).
        progress: a progress bar on stderr (None: for recordings of more than ``PROGRESS_WINDOWS`` windows).
        subject_files: the subject's other recordings, for a subject-adaptive model (``align="euclidean"`` or
            ``feature_norm="subject"``): its statistics come from the windows of ``path`` and these together. A
            session stored as one file per condition (rest, task) must be pooled so, or each file's own
            condition is what the alignment or standardisation removes. Only ``path`` is labelled.

    Raises:
        FileNotFoundError: the model folder or one of its files is missing.
        CheckpointError: the model folder cannot be loaded.
        shards.readers.ReadError: the recording cannot be read.
        KeyError: unknown task.
        finetune.contract.ContractError: a montage none of whose channels the checkpoint was pretrained on
            (a ValueError).
        ValueError: a recording shorter than one window, or a sampling rate a shard build would reject
            (``shards.sample.check_sfreq``).
    """
    model_dir = Path(model_dir)
    recipes = _recipe_json(model_dir)
    model = model if model is not None else TaskModel.from_pretrained(model_dir, map_location=device)
    model.eval()
    task = task or model.tasks[0]
    if task not in model.tasks or task not in recipes:
        raise KeyError(f"model {model_dir} has no task {task!r}; its tasks: {model.tasks}")
    reading = _open(model_dir, path, task=task, stride_s=stride_s, sfreq=sfreq, window_s=window_s)
    classes = model.head_specs[task]["classes"] or list(reading.recipe["classes"])
    rest = _rest_notice(reading.recipe, classes, path)
    if rest:
        notice(rest)
    adaptive = reading.recipe.get("align") == "euclidean" or model.head_specs[task].get("feature_norm") == "subject"
    if subject_files and not adaptive:
        raise ValueError(f"subject_files: the model {model_dir} neither aligns nor standardises by subject, so its labels "
                         f"of {path} do not depend on the subject's other recordings; leave them out")
    others = [_open(model_dir, p, task=task, stride_s=stride_s, sfreq=sfreq, window_s=window_s) for p in subject_files]
    skipped: list[tuple[float, str]] = []
    onsets, proba = _label_windows(model, task, reading, others, batch_size, device, skipped, progress)
    proba_all = np.concatenate(proba) if proba else np.zeros((0, len(classes)))
    threshold = model.head_specs[task].get("threshold")
    rows = prediction_rows(onsets, proba_all, classes, threshold)
    rows += [{"onset_s": onset, "label": None, "label_name": None, "probability": None, "probabilities": {},
              "skipped": SKIP_REASONS.get(reason, reason)} for onset, reason in skipped]
    return Prediction(sorted(rows, key=lambda r: r["onset_s"]), list(classes), task, str(reading.recipe.get("name", task)),
                      float(reading.cfg.window_s), float(reading.cfg.stride_s), threshold, str(path), str(model_dir))


def _label_windows(model: TaskModel, task: str, reading: _Reading, others: Sequence[_Reading], batch_size: int,
                   device: str, skipped: list[tuple[float, str]],
                   progress: bool | None) -> tuple[list[float], list[np.ndarray]]:
    """``(onsets_s, class probabilities per batch)`` of the recording's windows, aligned or standardised with the
    subject's statistics (the recording's and ``others``') where the model was trained so."""
    matrix = _alignment([reading, *others], batch_size)
    by_subject = model.head_specs[task].get("feature_norm") == "subject"
    onsets, outputs = [], []
    bar = tqdm(total=reading.n_windows, desc=f"labelling {Path(reading.path).name}", unit="window", dynamic_ncols=True,
               disable=not (progress if progress is not None else reading.n_windows > PROGRESS_WINDOWS))
    with bar:
        for batch_onsets, x in _batches(reading, batch_size, skipped):
            x = x if matrix is None else align_with(x, matrix)
            outputs.append(_head_inputs(model, reading, x, task, device, features=by_subject).cpu().numpy())
            onsets += batch_onsets
            bar.update(len(x))
        bar.update(len(skipped))
    if by_subject and outputs:
        outputs = _standardized_logits(model, task, outputs, others, batch_size, device, matrix)
    proba = []
    for logits in outputs:
        p = F.softmax(torch.as_tensor(logits), dim=-1).numpy()
        proba.append(p.reshape(-1, len(reading.channels), p.shape[-1]).mean(1) if reading.single else p)
    return onsets, proba


def _standardized_logits(model: TaskModel, task: str, features: list[np.ndarray], others: Sequence[_Reading],
                         batch_size: int, device: str, matrix: np.ndarray | None) -> list[np.ndarray]:
    """A ``feature_norm="subject"`` head on the recording's ``features`` (per batch), standardised by the
    statistics of the subject's windows: the recording's and those of ``others`` (its other recordings)."""
    moments = FeatureMoments()
    for f in features:
        moments.add(f)
    for other in others:
        for _, x in _batches(other, batch_size):
            moments.add(_head_inputs(model, other, x if matrix is None else align_with(x, matrix), task, device,
                                     features=True).cpu().numpy())
    if moments.n < MIN_SUBJECT_WINDOWS:
        print(f"eegfm predict: the model standardises its features by the subject's own windows, and {moments.n} "
              f"window(s) were given (fewer than {MIN_SUBJECT_WINDOWS}): the labels rest on noisy statistics; pass the "
              "subject's other recordings (subject_files / --subject_files)", file=sys.stderr, flush=True)
    return [model.head_logits(torch.from_numpy(moments.standardize(f)).float().to(device), task).float().cpu().numpy()
            for f in features]


SKIP_REASONS = {"nan": "NaN/inf samples in the recording", "flat": "flat channel", "amplitude": "amplitude bound"}
NONFINITE_OUTPUT = "the model's output is not finite (NaN/inf): no label"


def prediction_rows(onsets_s: Sequence[float], proba: np.ndarray, classes: Sequence[str],
                    threshold: float | None = None) -> list[dict[str, Any]]:
    """:func:`predict_file`'s rows from window onsets and class probabilities ``proba [n, k]`` (``classes`` order);
    a binary model's ``threshold`` on the second class's probability decides its label (None = argmax). A row
    whose probabilities are not finite gets no label: ``label`` None and the reason in ``skipped``."""
    out = []
    finite = np.isfinite(proba).all(axis=1) if len(proba) else np.zeros(0, bool)
    labels = predict_labels(np.where(finite[:, None], proba, 0.0), threshold) if len(proba) else np.zeros(0, int)
    for onset, p, k, ok in zip(onsets_s, proba, labels.tolist(), finite.tolist()):
        if not ok:
            out.append({"onset_s": float(onset), "label": None, "label_name": None, "probability": None,
                        "probabilities": {}, "skipped": NONFINITE_OUTPUT})
            continue
        out.append({
            "onset_s": float(onset),
            "label": k,
            "label_name": classes[k],
            "probability": float(p[k]),
            "probabilities": {c: float(v) for c, v in zip(classes, p)},
            "skipped": None,
        })
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, classes: Sequence[str] | None = None) -> Path:
    """``onset_s,label,label_name,probability,p_<class>...,skipped`` one line per window; a skipped window has empty
    label and probability cells and its reason in ``skipped``."""
    path = Path(path)
    if classes is None:
        classes = next((list(r["probabilities"]) for r in rows if r.get("probabilities")), [])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["onset_s", "label", "label_name", "probability"] + [f"p_{c}" for c in classes] + ["skipped"])
        for r in rows:
            if r.get("skipped"):
                writer.writerow([f"{r['onset_s']:.3f}", "", "", ""] + [""] * len(classes) + [r["skipped"]])
                continue
            writer.writerow([f"{r['onset_s']:.3f}", r["label"], r["label_name"], f"{r['probability']:.6f}"]
                            + [f"{r['probabilities'][c]:.6f}" for c in classes] + [""])
    return path


def output_paths(out_csv: str | Path, prediction: Prediction | None = None) -> dict[str, Path]:
    """The files written next to ``--out X.csv``: ``X_annot.fif``, ``X_annot.txt`` (MNE annotations),
    ``X_events.tsv`` + ``X_events.json`` (BIDS) and, with ``--plot``, ``X_hypnogram.png`` for a sleep model or
    ``X_timeline.png`` for others."""
    out = Path(out_csv)
    stem = out.with_suffix("") if out.suffix.lower() == ".csv" else out
    paths = {"csv": out, "annot_fif": Path(f"{stem}_annot.fif"), "annot_txt": Path(f"{stem}_annot.txt"),
             "events_tsv": Path(f"{stem}_events.tsv"), "events_json": Path(f"{stem}_events.json")}
    if prediction is not None:
        kind = "hypnogram" if is_sleep(prediction.recipe, prediction.classes) else "timeline"
        paths["plot"] = Path(f"{stem}_{kind}.png")
    return paths


def write_outputs(prediction: Prediction, out_csv: str | Path, *, plot: bool = False) -> list[Path]:
    """Write the CSV, the MNE annotations, the BIDS events and (``plot``) the figure of ``prediction``
    (:func:`output_paths`); returns the files written."""
    paths = output_paths(out_csv, prediction)
    written = [write_csv(prediction.rows, paths["csv"], prediction.classes)]
    spans = label_spans(prediction.rows, prediction.window_s)
    written += write_annotations(spans, paths["annot_fif"], paths["annot_txt"])
    written += write_events_tsv(spans, paths["events_tsv"], classes=prediction.classes, model=prediction.model_dir,
                                task=prediction.task)
    if plot:
        model = Path(prediction.model_dir)
        title = f"{Path(prediction.path).name}, {prediction.task} model {model.parent.name if model.name == 'model' else model.name}"
        written.append(plot_prediction(prediction.rows, prediction.classes, prediction.window_s, paths["plot"],
                                       task=prediction.recipe, threshold=prediction.threshold, title=title))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="raw recording (EDF/BDF/FIF/SET/VHDR/GDF/CNT/text)")
    io = parser.add_argument_group("model and output")
    io.add_argument("--model", required=True, help="finetuned model folder ({out}/model of finetune/run.py)")
    io.add_argument("--task", help="head to use in a multi-task model (default: the first)")
    io.add_argument("--out", help="CSV file to write, with MNE annotations (X_annot.fif, X_annot.txt) and BIDS events "
                                  "(X_events.tsv, X_events.json) beside it (default: print CSV to stdout)")
    io.add_argument("--plot", action="store_true",
                    help="also draw X_hypnogram.png (sleep models) or X_timeline.png (probabilities and detected events); "
                         "needs --out")
    windows = parser.add_argument_group("windows")
    windows.add_argument("--window_s", type=float, default=None,
                         help="window length in whole seconds (default: the trained length; others are a shift the "
                              "model was not trained for)")
    windows.add_argument("--stride_s", type=float, default=None, help="hop between windows in seconds (default: window length)")
    windows.add_argument("--sfreq", type=float, default=None, help="sampling rate of a headerless text recording")
    windows.add_argument("--subject_files", nargs="+", default=[], metavar="FILE",
                         help="the subject's other recordings: a subject-adaptive model (aligned, or standardising "
                              "features per subject) takes its statistics from FILE and these together; only FILE "
                              "is labelled")
    machine = parser.add_argument_group("machinery")
    machine.add_argument("--batch_size", type=int, default=64, help="windows per forward pass")
    machine.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    machine.add_argument("--debug", action="store_true", help=f"show tracebacks of errors (or set {DEBUG_ENV}=1)")
    args = parser.parse_args(canonical_spelling(sys.argv[1:] if argv is None else argv, argparse_options(parser),
                                                prog=parser.prog))
    return run_cli(parser.prog, lambda: _label(args), debug=args.debug, errors=(ReadError,))


def _label(args: argparse.Namespace) -> int:
    if args.plot and not args.out:
        raise ValueError("--plot needs --out X.csv: the figure is written next to it (X_hypnogram.png / X_timeline.png)")
    prediction = predict_recording(args.model, args.file, task=args.task, batch_size=args.batch_size,
                                   stride_s=args.stride_s, device=args.device, sfreq=args.sfreq, window_s=args.window_s,
                                   subject_files=args.subject_files)
    rows = prediction.rows
    skipped = [r for r in rows if r.get("skipped")]
    if args.out:
        written = write_outputs(prediction, args.out, plot=args.plot)
        print(f"{len(rows) - len(skipped)} windows labelled -> {', '.join(str(p) for p in written)}", file=sys.stderr)
    else:
        write_csv(rows, "/dev/stdout", prediction.classes)
    if skipped:
        reasons = sorted({r["skipped"] for r in skipped})
        print(f"{len(skipped)} window(s) not labelled, listed with their reason in the 'skipped' column: "
              f"{'; '.join(reasons)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
