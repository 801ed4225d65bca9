"""Deployment-style shift evaluation: a finetuned model labels whole held-out recordings it never saw, as
they are and under the shifts users meet, and across data sets (EEGMAT <-> the Emotiv stress set).

The one shift API the benchmark imports, in this order: the shifts, the file writer, the evaluation and the
benchmark's rows.

API (the downstream benchmark calls these; every result is a JSON-friendly dict)::

    from benchmarks.shift import held_out, default_shifts, evaluate_shifts, cross_dataset_shift

    recs = held_out("eegmat", root, subjects=["Subject26", "Subject27"])   # raw recordings + labelled spans
    res = evaluate_shifts("runs/finetune-emotion/model", recs)               # default_shifts() + "none"
    res["shifts"]["resample_128hz"]["windows"]["balanced_accuracy"]         # finetune.metrics keys
    res["shifts"]["resample_128hz"]["recordings"]                           # per-recording vote, or None

    # finetuned on the Emotiv stress set, labelling EEGMAT (rest -> calm, arithmetic -> stress), or the reverse
    res = cross_dataset_shift("runs/finetune-stress/model", "eegmat", eegmat_root)

    # the benchmark's rows for one finetuned model: its own test groups (recipe.json) under every shift,
    # plus the cross-dataset row where CORRESPONDENCES knows a partner corpus
    rows = shift_rows(task="eegmat", method="scratch", model_dir=model_dir, data_root="../shared/data")
    # [{task, method, shift, description, metrics, recording_metrics, n_windows, n_recordings, skipped, ...}]

How a recording is labelled: the adapter's raw signal (``Adapter.load``) is shifted, written as a real file
in a temporary folder (EDF through edfio with 1-s data records and the declared physical unit; FIF for rates
EDF cannot hold, e.g. Bonn's 173.61 Hz), and that file goes through ``finetune.predict.predict_file``:
``read_raw`` -> the model's saved preprocessing -> consecutive windows of the trained length -> the model.
So the whole read path (units, channel names, resampling) is exercised, not just the tensors. The baseline
``none`` is written the same way, so it differs from the shifts only by the shift. EDF keeps whole seconds:
a tail shorter than one data record (< 1 s) is cut. Another classifier takes the model's place through
``labeller`` (:data:`Labeller`; ``benchmarks.baselines.BandPowerLabeller`` reads the files through
``finetune.predict.recording_windows``, the same path without the model).

A window's true label is that of the labelled span holding its midpoint (``Segment``s from the adapter,
label names mapped through the model's ``recipe.json`` label map, and ``class_map`` first for another
corpus's names); windows outside every span, or of a class the model does not know, are left out and
counted in ``left_out``. Metrics are ``finetune.metrics.classification_metrics`` (balanced accuracy,
kappa, weighted F1, accuracy; AUROC and AUC-PR for binary heads) over windows, and, when every recording
carries one label (stress, EEGMAT), over recordings too: the recording's mean window probability.

Shifts (:func:`default_shifts`; :class:`Shift` builds others):

=====================  ========================================================================
``none``               the recording as it is (re-written, so it takes the same read path)
``resample_{r}hz``     resampled to ``r`` Hz (128, 256): another amplifier's rate
``amplitude_x{f}``     every sample scaled by ``f`` (0.5, 2): another gain / skull / impedance
``units_volts``        the same signal stored in V instead of µV (declared in the EDF header)
``average_reference``  re-referenced to the average of the EEG channels (needs >= 3)
``drop_half_channels`` every second EEG channel removed (needs >= 2)
``standard_1020``      only the 19 channels of the 10-20 system kept (n/a if nothing else is there)
``window_x{f}``        windows of ``f`` x the trained length, whole seconds (0.5, 2)
=====================  ========================================================================

A shift that cannot apply to a recording (one channel cannot be re-referenced; a recording shorter than
the longer window) skips that recording, named in ``skipped`` with the reason; a shift that applies to no
recording has ``applicable: False``.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edfio
import mne
import numpy as np

from finetune.metrics import classification_metrics
from finetune.model import TaskModel
from finetune.predict import predict_file
from finetune.recipes.base import normalize_label
from shards.corpora import get_corpus
from shards.corpora.base import Adapter
from shards.preprocess import Segment
from shards.vocabulary import canonical_name

__all__ = [
    "CORRESPONDENCES",
    "HeldOut",
    "Labeller",
    "NO_SHIFT",
    "NotApplicable",
    "STANDARD_1020",
    "Shift",
    "cross_dataset_shift",
    "default_shifts",
    "evaluate_shifts",
    "held_out",
    "shift_rows",
    "write_recording",
]

# The 19 electrodes of the international 10-20 system (canonical names; T3/T4/T5/T6 are T7/T8/P7/P8).
STANDARD_1020 = ("FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "T7", "C3", "CZ", "C4", "T8", "P7", "P3", "PZ", "P4",
                 "P8", "O1", "O2")

# Cross-dataset class correspondences: (model's label space, target corpus) -> target label -> model class.
# Mental arithmetic and horror-video fear are different stressors; mapping them onto each other is the
# hypothesis the cross-dataset rows test, so it is written here, not hidden in a label alias.
CORRESPONDENCES: dict[tuple[str, str], dict[str, str]] = {
    ("calm_stress", "eegmat"): {"rest": "calm", "arithmetic": "stress"},
    ("workload", "mental_stress"): {"calm": "rest", "stress": "arithmetic"},
}


# labeller(model_dir, path, *, task, window_s) -> one row per window of the file at ``path``, each with
# ``onset_s`` and ``probabilities`` (class name -> probability, in the recipe's class order). ``predict_file``
# is one; ValueError = this recording cannot be labelled (skipped, with the reason).
Labeller = Callable[..., list[dict[str, Any]]]


class NotApplicable(ValueError):
    """A shift cannot apply to this recording (the reason says why)."""


@dataclass(frozen=True)
class HeldOut:
    """One held-out recording: how to read its raw signal and where its labels are (seconds)."""

    recording: str
    subject: str
    segments: tuple[Segment, ...]
    load: Callable[[], mne.io.BaseRaw] = field(repr=False, compare=False)

    @property
    def label_names(self) -> set[str]:
        return {s.label_name for s in self.segments}


@dataclass(frozen=True)
class Shift:
    """One shift: a transform of the raw signal, the unit the file is written in, a window factor.

    ``transform(raw)`` returns a shifted copy (never changes ``raw``) or raises :class:`NotApplicable`.
    """

    name: str
    description: str
    transform: Callable[[mne.io.BaseRaw], mne.io.BaseRaw] | None = None
    units: str = "uV"  # "uV" | "V": the physical dimension written to the EDF header
    window_factor: float | None = None  # windows of factor x the trained length


def _eeg_picks(raw: mne.io.BaseRaw) -> list[int]:
    # read_raw types channels from the vocabulary: EEG-typed = scalp channels (A2-A1, ECG, counters are not)
    return [int(i) for i in mne.pick_types(raw.info, eeg=True, exclude=[])]


def _resample(rate: float) -> Callable[[mne.io.BaseRaw], mne.io.BaseRaw]:
    def f(raw):
        if abs(raw.info["sfreq"] - rate) < 1e-6:
            raise NotApplicable(f"already at {rate:g} Hz")
        return raw.copy().resample(rate, verbose="error")
    return f


def _scale(factor: float) -> Callable[[mne.io.BaseRaw], mne.io.BaseRaw]:
    def f(raw):
        out = raw.copy()
        out._data[_eeg_picks(out)] *= factor
        return out
    return f


def _average_reference(raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
    picks = _eeg_picks(raw)
    if len(picks) < 3:
        raise NotApplicable(f"{len(picks)} EEG channel(s): an average reference needs at least 3")
    out = raw.copy()
    out._data[picks] -= out._data[picks].mean(axis=0, keepdims=True)
    return out


def _keep_eeg(raw: mne.io.BaseRaw, keep: Sequence[int], why: str) -> mne.io.BaseRaw:
    picks = _eeg_picks(raw)
    drop = [raw.ch_names[i] for i in picks if i not in set(keep)]
    if not drop or len(drop) == len(picks):
        raise NotApplicable(why)
    return raw.copy().drop_channels(drop)


def _drop_half(raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
    picks = _eeg_picks(raw)
    return _keep_eeg(raw, picks[::2], f"{len(picks)} EEG channel(s): nothing to drop")


def _standard_1020(raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
    keep = [i for i in _eeg_picks(raw) if canonical_name(raw.ch_names[i]) in STANDARD_1020]
    return _keep_eeg(raw, keep, "every EEG channel is a 10-20 channel, or none is")


NO_SHIFT = Shift("none", "the held-out recording as it is")


def default_shifts(rates: Sequence[float] = (128.0, 256.0), scales: Sequence[float] = (0.5, 2.0),
                   windows: Sequence[float] = (0.5, 2.0)) -> list[Shift]:
    """``none`` and the shifts of the module docstring's table, in that order."""
    out = [NO_SHIFT]
    out += [Shift(f"resample_{r:g}hz", f"resampled to {r:g} Hz", _resample(r)) for r in rates]
    out += [Shift(f"amplitude_x{f:g}", f"amplitude x{f:g}", _scale(f)) for f in scales]
    out += [
        Shift("units_volts", "the same signal stored in V (declared in the file header)", units="V"),
        Shift("average_reference", "re-referenced to the average of the EEG channels", _average_reference),
        Shift("drop_half_channels", "every second EEG channel removed", _drop_half),
        Shift("standard_1020", "only the 19 channels of the 10-20 system kept", _standard_1020),
    ]
    out += [Shift(f"window_x{f:g}", f"windows of {f:g} x the trained length", window_factor=f) for f in windows]
    return out


# ------------------------------------------------------------------------------------------ held-out files
def held_out(corpus: str | Adapter, root: str | Path, *, subjects: Sequence[str] | None = None,
             recordings: Sequence[str] | None = None) -> list[HeldOut]:
    """The labelled recordings of ``corpus`` under ``root`` (optionally only these subjects / recording ids).

    Raises:
        ValueError: naming subjects / recordings that are not in the corpus, or an unlabelled corpus.
    """
    adapter = get_corpus(corpus) if isinstance(corpus, str) else corpus
    recs = adapter.find(Path(root))
    for wanted, key in ((subjects, "subject"), (recordings, "recording")):
        if wanted is not None:
            have = {getattr(r, key) for r in recs}
            unknown = sorted(set(wanted) - have)
            if unknown:
                raise ValueError(f"{adapter.name} under {root}: no {key}(s) {unknown}; it has {sorted(have)}")
            recs = [r for r in recs if getattr(r, key) in set(wanted)]
    out = []
    for rec in recs:
        if rec.task is None:
            continue
        loaded = adapter.load(rec)  # labels now (a LabelError names the file); the signal again on demand
        if not loaded.segments:
            continue
        out.append(HeldOut(rec.recording, rec.subject, tuple(loaded.segments), lambda a=adapter, r=rec: a.load(r).raw))
    if not out:
        raise ValueError(f"{adapter.name} under {root}: no labelled recording selected")
    return out


def write_recording(raw: mne.io.BaseRaw, path: Path, *, units: str = "uV") -> Path:
    """``raw`` as a real file: EDF (``path.edf``, 1-s records, physical dimension ``units``) when the rate is
    a whole number of Hz, else FIF (``path.fif``, always volts). Stim channels are left out."""
    raw = raw.copy().pick([i for i, t in enumerate(raw.get_channel_types()) if t != "stim"])
    sfreq = float(raw.info["sfreq"])
    if abs(sfreq - round(sfreq)) > 1e-9:
        if units != "uV":
            raise NotApplicable(f"{sfreq:g} Hz does not fit EDF's whole-second records; FIF stores volts only")
        out = path.with_suffix(".fif")
        raw.save(out, overwrite=True, verbose="error")
        return out
    n = (raw.n_times // int(round(sfreq))) * int(round(sfreq))  # whole 1-s data records
    if n == 0:
        raise NotApplicable(f"recording of {raw.n_times / sfreq:.2f} s is shorter than one EDF data record")
    scale = {"uV": 1e6, "V": 1.0}[units]
    signals = []
    for name, row in zip(raw.ch_names, raw.get_data()[:, :n] * scale):
        lo, hi = float(row.min()), float(row.max())
        span = (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)  # a flat channel still needs a range
        signals.append(edfio.EdfSignal(row, sampling_frequency=sfreq, label=name[:16], physical_dimension=units,
                                       physical_range=None if hi > lo else span))
    out = path.with_suffix(".edf")
    edfio.Edf(signals, data_record_duration=1.0).write(out)
    return out


# ------------------------------------------------------------------------------------------------ labels
def _label_index(recipe: Mapping[str, Any], class_map: Mapping[str, str] | None) -> Callable[[str], int | None]:
    classes = list(recipe["classes"])
    label_map = {normalize_label(k): v for k, v in (recipe.get("label_map") or {}).items()}
    label_map.update({normalize_label(c): c for c in classes})
    cmap = {normalize_label(k): v for k, v in (class_map or {}).items()}

    def index(name: str) -> int | None:
        key = normalize_label(name)
        if key in cmap:
            key = normalize_label(cmap[key])
        cls = label_map.get(key)
        return classes.index(cls) if cls in classes else None
    return index


def _span_label(segments: Sequence[Segment], t: float) -> str | None:
    for s in segments:
        if s.onset_s <= t < s.onset_s + s.duration_s:
            return s.label_name
    return None


# ------------------------------------------------------------------------------------------- evaluation
def evaluate_shifts(
    model_dir: str | Path,
    recordings: Sequence[HeldOut],
    shifts: Sequence[Shift] | None = None,
    *,
    task: str | None = None,
    class_map: Mapping[str, str] | None = None,
    work_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    labeller: Labeller | None = None,
) -> dict[str, Any]:
    """Label every recording under every shift with ``labeller`` (default: the model through ``predict_file``);
    metrics per shift.

    Args:
        model_dir: a finetuned model folder (``{out}/model`` of ``finetune/run.py``).
        recordings: held-out recordings (:func:`held_out`), never seen in finetuning or pretraining.
        shifts: default :func:`default_shifts` (``none`` first).
        task: the head (default: the model's first).
        class_map: target label name -> model class name, for recordings of another label space.
        work_dir: where the temporary folder of shifted files goes (default: the system's temp folder).
        labeller: another classifier (:data:`Labeller`) reading the files with this model folder's recipe and
            preprocessing; ``batch_size`` and ``device`` are then unused.

    Returns:
        ``{"model", "task", "classes", "window_s", "class_map", "shifts": {name: result}}``; each result has
        ``description, applicable, window_s, n_recordings, n_windows, left_out, skipped`` (recording ->
        reason), ``windows`` (metrics dict or None), ``recordings`` (metrics over per-recording mean
        probabilities when every recording has one label, else None) and ``per_recording`` rows.
    """
    model_dir = Path(model_dir)
    shifts = list(default_shifts() if shifts is None else shifts)
    if len({s.name for s in shifts}) != len(shifts):
        raise ValueError(f"shift names repeat: {[s.name for s in shifts]}")
    recipes = json.loads((model_dir / "recipe.json").read_text())
    if labeller is None:
        model = TaskModel.from_pretrained(model_dir, map_location=device)
        task = task or model.tasks[0]
        labeller = functools.partial(predict_file, model=model, batch_size=batch_size, device=device)
    task = task or next(iter(recipes))
    recipe = recipes[task]
    index = _label_index(recipe, class_map)
    trained_s = float(recipe["window_s"])
    collected = {s.name: {"rows": [], "skipped": {}} for s in shifts}
    with tempfile.TemporaryDirectory(prefix="shift-", dir=work_dir) as tmp:
        for rec in recordings:
            raw = rec.load()
            for shift in shifts:
                _label_one(labeller, model_dir, task, rec, raw, shift, trained_s, Path(tmp), collected[shift.name], index)
    results = {s.name: _summarise(s, collected[s.name], trained_s, len(recipe["classes"]), recordings)
               for s in shifts}
    return {"model": str(model_dir), "task": task, "classes": list(recipe["classes"]), "window_s": trained_s,
            "class_map": dict(class_map or {}), "shifts": results}


def _window_s(shift: Shift, trained_s: float) -> float:
    if shift.window_factor is None:
        return trained_s
    return float(max(1, round(trained_s * shift.window_factor)))


def _label_one(labeller: Labeller, model_dir, task, rec: HeldOut, raw, shift: Shift, trained_s: float, tmp: Path,
               bucket, index) -> None:
    window_s = _window_s(shift, trained_s)
    try:
        if shift.window_factor is not None and window_s == trained_s:
            raise NotApplicable(f"{shift.window_factor:g} x {trained_s:g} s rounds to the trained length")
        shifted = shift.transform(raw) if shift.transform is not None else raw
        path = write_recording(shifted, tmp / f"{rec.recording}__{shift.name}", units=shift.units)
    except NotApplicable as why:
        bucket["skipped"][rec.recording] = str(why)
        return
    try:
        rows = labeller(model_dir, path, task=task, window_s=window_s)
    except ValueError as err:  # predict_file's own refusals: shorter than one window, channels the recipe needs
        bucket["skipped"][rec.recording] = str(err)
        return
    finally:
        path.unlink()
    for row in rows:
        name = _span_label(rec.segments, row["onset_s"] + window_s / 2)
        y = index(name) if name is not None else None
        bucket["rows"].append({"recording": rec.recording, "label_name": name, "y": y,
                               "p": [row["probabilities"][c] for c in row["probabilities"]]})


def _summarise(shift: Shift, bucket, trained_s: float, n_classes: int, recordings: Sequence[HeldOut]) -> dict[str, Any]:
    rows = bucket["rows"]
    left_out = Counter("outside every labelled span" if r["label_name"] is None else f"class {r['label_name']!r} not in the model"
                       for r in rows if r["y"] is None)
    kept = [r for r in rows if r["y"] is not None]
    out: dict[str, Any] = {
        "description": shift.description,
        "applicable": bool(rows),
        "window_s": _window_s(shift, trained_s),
        "n_recordings": len({r["recording"] for r in rows}),
        "n_windows": len(kept),
        "left_out": dict(sorted(left_out.items())),
        "skipped": dict(bucket["skipped"]),
        "windows": None,
        "recordings": None,
        "per_recording": [],
    }
    if not kept:
        return out
    y = np.asarray([r["y"] for r in kept])
    proba = np.asarray([r["p"] for r in kept], dtype=np.float64)
    out["windows"] = classification_metrics(y, proba, n_classes=n_classes)
    by_rec: dict[str, list[int]] = {}
    for i, r in enumerate(kept):
        by_rec.setdefault(r["recording"], []).append(i)
    for rid, idx in by_rec.items():
        labels = set(y[idx].tolist())
        mean = proba[idx].mean(axis=0)
        out["per_recording"].append({"recording": rid, "n_windows": len(idx), "y": y[idx[0]] if len(labels) == 1 else None,
                                     "predicted": int(mean.argmax()), "mean_probability": mean.tolist()})
    single = all(len(r.label_names) == 1 for r in recordings)
    if single and all(r["y"] is not None for r in out["per_recording"]):
        out["recordings"] = classification_metrics(
            [int(r["y"]) for r in out["per_recording"]], np.asarray([r["mean_probability"] for r in out["per_recording"]]),
            n_classes=n_classes)
    for r in out["per_recording"]:
        r["y"] = None if r["y"] is None else int(r["y"])
    return out


def cross_dataset_shift(
    model_dir: str | Path,
    target: str | Adapter,
    root: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    class_map: Mapping[str, str] | None = None,
    shifts: Sequence[Shift] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A model finetuned on one corpus labels another's recordings (EEGMAT <-> Emotiv mental stress).

    ``class_map`` (target label -> model class) defaults to :data:`CORRESPONDENCES` for the model's label
    space and the target corpus. ``shifts`` defaults to ``none`` only: the other corpus is the shift (19
    clinical channels at 500 Hz vs 5 consumer channels at 128 Hz, other stressors, other people).
    Other keyword arguments (``task``, ``labeller``, ...) go to :func:`evaluate_shifts`.

    Raises:
        KeyError: no correspondence known for the pair and none given.
    """
    adapter = get_corpus(target) if isinstance(target, str) else target
    recipes = json.loads((Path(model_dir) / "recipe.json").read_text())
    task = kwargs.get("task") or next(iter(recipes))
    space = recipes[task].get("label_space", "")
    if class_map is None:
        if (space, adapter.name) not in CORRESPONDENCES:
            raise KeyError(f"no class correspondence for a {space!r} model on {adapter.name!r}; pass class_map "
                           f"(known: {sorted(CORRESPONDENCES)})")
        class_map = CORRESPONDENCES[(space, adapter.name)]
    res = evaluate_shifts(model_dir, held_out(adapter, root, subjects=subjects), [NO_SHIFT] if shifts is None else shifts,
                          class_map=class_map, **kwargs)
    res["target"] = adapter.name
    return res


# Where the benchmark's shard sets keep their raw files, for corpora benchmarks.tasks does not list.
CORPUS_FOLDERS = {"eegmat": "workload/eegmat", "mental_stress": "emotion/mental_stress_emotiv"}


def _shard_set(name: str, data_root: Path) -> tuple[Adapter, Path]:
    """The adapter (with the benchmark's channel subset) and raw folder of shard set / corpus ``name``."""
    from benchmarks import tasks

    if name in tasks.SHARD_SETS:
        corpus, folder, channels = tasks.SHARD_SETS[name]
        adapter = tasks.channel_subset_adapter(corpus, name, channels) if channels else get_corpus(corpus)
        return adapter, data_root / folder
    if name in CORPUS_FOLDERS:
        return get_corpus(name), data_root / CORPUS_FOLDERS[name]
    raise KeyError(f"shard set {name!r} is neither in benchmarks.tasks.SHARD_SETS nor in CORPUS_FOLDERS")


def _rows(res: Mapping[str, Any], task: str, method: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"task": task, "method": method, "shift": name, "description": r["description"], "metrics": r["windows"],
             "recording_metrics": r["recordings"], "n_windows": r["n_windows"], "n_recordings": r["n_recordings"],
             "applicable": r["applicable"], "skipped": r["skipped"], "left_out": r["left_out"], **extra}
            for name, r in res["shifts"].items()]


def shift_rows(
    *,
    task: str,
    method: str,
    model_dir: str | Path,
    data_root: str | Path,
    shifts: Sequence[Shift] | None = None,
    cross_dataset: bool = True,
    work_dir: str | Path | None = None,
    labeller: Labeller | None = None,
    partner_subjects: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The benchmark's shift rows for one finetuned model (or ``labeller`` reading with its folder).

    The held-out recordings are the model's own test groups (``recipe.json`` -> ``split.groups.test``:
    subjects or recordings of one shard set), read raw from ``data_root`` with the shard set's adapter (and
    channel subset); none of them was in finetuning, and the leak-free protocol keeps them out of pretraining.
    Each row: ``task, method, shift, description, metrics`` (windows; ``finetune.metrics`` keys or None),
    ``recording_metrics`` (per-recording vote or None), ``n_windows, n_recordings, applicable, skipped,
    left_out``. With ``cross_dataset`` and a :data:`CORRESPONDENCES` partner for the model's label space,
    one more row, ``shift = "cross_dataset:<corpus>"``, labels the partner corpus's recordings: those of
    ``partner_subjects[corpus]`` where given (the benchmark passes the partner's test pool, so pretraining
    never saw them: otherwise a pretrained model would label recordings it was pretrained on, and scratch
    would not), else every recording (``target_note`` says which).

    Args:
        task: the benchmark's task name (a recipe name, or a ``benchmarks.tasks.TASKS`` plan such as
            ``eegmat`` that reads another recipe).
        shifts: default :func:`default_shifts`; pass fewer to fit a time budget.
        labeller: see :func:`evaluate_shifts` (the same held-out recordings, recipe and preprocessing).
    """
    model_dir, data_root = Path(model_dir), Path(data_root)
    recipes = json.loads((model_dir / "recipe.json").read_text())
    recipe_name = task
    if task not in recipes:
        from benchmarks import tasks

        plan = next((p for p in tasks.TASKS if p.name == task), None)
        recipe_name = plan.recipe_name if plan is not None and plan.recipe_name in recipes else next(iter(recipes))
    split = recipes[recipe_name].get("split") or {}
    test = (split.get("groups") or {}).get("test") or []
    if not test:
        raise ValueError(f"{model_dir}/recipe.json: task {recipe_name!r} records no test groups to hold out")
    sets = sorted({g.split("/", 1)[0] for g in test})
    if len(sets) != 1:
        raise ValueError(f"{model_dir}: test groups of several shard sets {sets}; shift rows read one")
    adapter, root = _shard_set(sets[0], data_root)
    names = [g.split("/", 1)[1] for g in test]
    key = split.get("group_key", "subject")
    recs = held_out(adapter, root, **({"subjects": names} if key == "subject" else {"recordings": names}))
    res = evaluate_shifts(model_dir, recs, shifts, task=recipe_name, work_dir=work_dir, labeller=labeller)
    rows = _rows(res, task, method, held_out=names)
    space = recipes[recipe_name].get("label_space", "")
    for (model_space, target), _ in CORRESPONDENCES.items():
        if cross_dataset and model_space == space and target != sets[0]:
            adapter, root = _shard_set(target, data_root)
            subjects = (partner_subjects or {}).get(target)
            res = cross_dataset_shift(model_dir, adapter, root, task=recipe_name, work_dir=work_dir, labeller=labeller,
                                      subjects=list(subjects) if subjects else None)
            rows += _rows(res, task, method, target_note=(
                f"the {target} recordings of its test pool ({len(subjects)} subjects), never in pretraining" if subjects else
                f"every {target} recording: its labels were never seen by this model; its unlabelled windows may be "
                "in the pretraining pool unless the benchmark keeps them out"))
            rows[-1]["shift"] = f"cross_dataset:{target}"
    return rows
