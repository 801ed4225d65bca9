"""What ``python -m finetune.predict`` hands to EEG tools, on real recordings from ../shared/data (skipped when
absent): MNE annotations and BIDS events of a DREAMS night excerpt with its hypnogram, detected seizures on
Bonn segments joined into one recording, and the notice a motor-imagery model without a rest class gives on a
continuous EEGMMIDB run, and the notice when a recording's montage is not the one the model was finetuned on.

Each test finetunes a small backbone for an epoch or two (seconds on a CPU); what is checked is the outputs'
content against the rows and the recording, and (Bonn) that the detected events are where the ictal segments are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mne
import numpy as np
import pytest

from finetune.annotations import Span, label_spans
from finetune.config import FinetuneConfig
from finetune.predict import main as predict_main
from finetune.predict import predict_file, predict_recording, write_outputs
from finetune.timeline import is_sleep, plot_prediction
from finetune.train import finetune
from foundation.model import EEGMambaConfig
from shards.writer import build

SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}


def _model(tmp: Path, corpus: str, root: Path, recipe: str, **kw) -> Path:
    manifest = build(corpus, root, tmp / "shards", progress=False)
    assert manifest["totals"]["samples"] > 0 and not manifest["skipped"], manifest["skipped"]
    cfg = dict(recipe=recipe, checkpoint=None, data=str(tmp / "shards" / corpus), out=str(tmp / "run"),
               warmup_epochs=1, batch_size=32, lr=3e-3, pool="mean", layer_decay=1.0, drop_path=0.0, patience=100,
               progress=False, model=EEGMambaConfig.from_size("tiny", **SMALL), epochs=1)
    cfg.update(kw)
    return Path(finetune(FinetuneConfig(**cfg))["out"]) / "model"


def _link(files, root: Path) -> Path:
    for f in files:
        dst = root / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(f)
    return root


def test_dreams_night_as_annotations_events_and_a_hypnogram(shared_data, tmp_path):
    from shards.corpora import get_corpus

    dreams = shared_data / "sleep" / "dreams_spindles"
    root = tmp_path / "raw"
    root.mkdir()
    for n in (1, 2, 3, 4):
        for name in (f"excerpt{n}.txt", f"Hypnogram_excerpt{n}.txt"):
            (root / name).symlink_to(dreams / name)
    model = _model(tmp_path, "dreams", root, "sleep", max_windows=600, n_folds=4)
    excerpt = dreams / "excerpt5.txt"  # a night excerpt the model never saw
    pred = predict_recording(model, excerpt)
    assert is_sleep(pred.recipe, pred.classes) and pred.window_s == 5.0
    assert len(pred.rows) == 360 and all(r["label_name"] in pred.classes for r in pred.rows)
    written = write_outputs(pred, tmp_path / "excerpt5.csv", plot=True)
    assert [p.name for p in written] == ["excerpt5.csv", "excerpt5_annot.fif", "excerpt5_annot.txt",
                                         "excerpt5_events.tsv", "excerpt5_events.json", "excerpt5_hypnogram.png"]
    ann = mne.read_annotations(tmp_path / "excerpt5_annot.fif")
    # 360 epochs of 5 s merged into stage runs that tile the 30 minutes
    assert ann.onset[0] == 0.0 and float(ann.onset[-1] + ann.duration[-1]) == pytest.approx(1800.0)
    np.testing.assert_allclose(ann.onset[1:], ann.onset[:-1] + ann.duration[:-1], atol=1e-6)
    stages = np.array([r["label_name"] for r in pred.rows])
    runs = 1 + int((stages[1:] != stages[:-1]).sum())
    assert len(ann) == runs
    for r in pred.rows[::17]:
        k = np.searchsorted(ann.onset, r["onset_s"], side="right") - 1
        assert ann.description[k] == r["label_name"]
    txt = mne.read_annotations(tmp_path / "excerpt5_annot.txt")
    np.testing.assert_allclose(txt.onset, ann.onset, atol=1e-6)
    assert list(txt.description) == list(ann.description)
    # on the recording: the stages as MNE events, one per run
    from shards.readers import read_raw

    raw = read_raw(excerpt)
    raw.set_annotations(ann)
    events, ids = mne.events_from_annotations(raw, verbose="error")
    assert len(events) == runs and set(ids) == set(ann.description)
    with open(tmp_path / "excerpt5_events.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert sum(int(r["n_windows"]) for r in rows) == 360
    assert [float(r["duration"]) for r in rows] == pytest.approx(list(ann.duration), abs=1e-3)
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)
    # the figure with the scorer's hypnogram under the model's
    rec = next(r for r in get_corpus("dreams").find(dreams) if r.recording == "excerpt5")
    scored = [Span(s.onset_s, s.duration_s, s.label_name, None, 1)
              for s in get_corpus("dreams").load(rec).segments]
    png = plot_prediction(pred.rows, pred.classes, pred.window_s, tmp_path / "with_reference.png", task=pred.recipe,
                          reference=scored)
    assert png.stat().st_size > (tmp_path / "excerpt5_hypnogram.png").stat().st_size * 0.8 > 20_000


def test_bonn_segments_joined_detected_seizures_on_the_timeline(shared_data, tmp_path):
    bonn = shared_data / "seizure" / "bonn"
    # from the shipped backbone (its probe head, two epochs): from scratch, a few epochs leave p(seizure) near 0.5
    model = _model(tmp_path, "bonn", _link(sorted((bonn / "Z").glob("*.txt"))[:6] + sorted((bonn / "S").glob("*.txt"))[:6],
                                          tmp_path / "raw"), "seizure", epochs=2, n_folds=4,
                   checkpoint="eegmamba-tiny-open", model=None, layer_decay=0.65, lr=1e-3)
    # unseen segments, healthy and ictal in turn, as one recording: 6 x 4097 samples at 173.61 Hz
    order = ["Z", "S", "Z", "S", "Z", "S"]
    picks = {k: iter(sorted((bonn / k).glob("*.txt"))[40:]) for k in ("Z", "S")}
    samples = [np.loadtxt(next(picks[k])) for k in order]
    joined = tmp_path / "joined.txt"
    np.savetxt(joined, np.concatenate(samples), fmt="%d")
    out = tmp_path / "joined.csv"
    assert predict_main(["--model", str(model), str(joined), "--sfreq", "173.61", "--out", str(out), "--plot"]) == 0
    assert (tmp_path / "joined_timeline.png").stat().st_size > 20_000
    rows = predict_file(model, joined, sfreq=173.61)
    seg_s = 4097 / 173.61
    truth = np.array([order[int((r["onset_s"] + 2.5) // seg_s)] == "S" for r in rows])
    pred = np.array([r["label_name"] == "seizure" for r in rows])
    assert (pred == truth).mean() >= 0.75, (pred.astype(int), truth.astype(int))
    with open(tmp_path / "joined_events.tsv", newline="") as f:
        events = [e for e in csv.DictReader(f, delimiter="\t") if e["trial_type"] == "seizure"]
    assert events and sum(int(e["n_windows"]) for e in events) == int(pred.sum())
    spans = label_spans(rows, 5.0)
    assert [s.onset_s for s in spans if s.label_name == "seizure"] == [float(e["onset"]) for e in events]


def test_motor_imagery_model_without_rest_says_so_on_a_continuous_run(shared_data, tmp_path, capsys):
    s001 = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    root = _link([s001 / "S001R04.edf", s001 / "S001R08.edf"], tmp_path / "raw")
    lr = _model(tmp_path / "lr", "eegmmidb", root, "motor_imagery", channels=("C3", "CZ", "C4"), n_folds=2)
    assert json.loads((lr / "recipe.json").read_text())["motor_imagery"]["rest_classes"] == ["rest"]
    capsys.readouterr()
    rows = predict_file(lr, s001 / "S001R04.edf")
    err = capsys.readouterr().err
    assert ("S001R04.edf: the model has no rest class (its classes: left_fist, right_fist): it was finetuned on "
            "windows cut at cues, so every window of this continuous recording gets one of them") in err
    assert "--classes rest,left_fist,right_fist" in err
    # what the notice is about: the run's rest periods (T0, about half of its 125 s) all get a hand
    assert {r["label_name"] for r in rows} <= {"left_fist", "right_fist"} and len(rows) == 31
    with_rest = _model(tmp_path / "rest", "eegmmidb", root, "motor_imagery", channels=("C3", "CZ", "C4"), n_folds=2,
                       classes=("rest", "left_fist", "right_fist"))
    capsys.readouterr()
    predict_file(with_rest, s001 / "S001R04.edf")
    assert "rest class" not in capsys.readouterr().err


def test_a_montage_other_than_the_finetuning_one_is_named(shared_data, tmp_path, capsys):
    """A model finetuned on all 64 EEGMMIDB channels labels an export of a run that lost ten of them: the notice
    names what is missing; the same run whole and a model reading three named channels give none."""
    s001 = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    root = _link([s001 / "S001R04.edf", s001 / "S001R08.edf"], tmp_path / "raw")
    every = _model(tmp_path / "all", "eegmmidb", root, "motor_imagery", n_folds=2)
    trained = json.loads((every / "recipe.json").read_text())["motor_imagery"]["trained_channels"]
    assert len(trained) == 64 and {"FP1", "AF8", "T9", "T10", "C3"} <= set(trained)
    raw = mne.io.read_raw_edf(s001 / "S001R04.edf", preload=True, verbose="error")
    raw.rename_channels(lambda name: name.strip("."))
    lost = ["Fp1", "Fpz", "Fp2", "Af7", "Af3", "Afz", "Af4", "Af8", "T9", "T10"]  # a frontal strip and the ear leads
    raw.drop_channels(lost)
    export = tmp_path / "S001R04_54ch.edf"
    mne.export.export_raw(export, raw, fmt="edf", verbose="error")
    capsys.readouterr()
    rows = predict_file(every, export)
    err = capsys.readouterr().err
    missing = ", ".join(c.upper() for c in ["Fp1", "Fpz", "Fp2", "Af7", "Af3", "Afz", "Af4", "Af8"])
    assert (f"S001R04_54ch.edf: montage differs from the model's finetuning data: lacks 10 of the 64 channels the "
            f"model was finetuned on ({missing}, ...); a per-channel head reads them as zeros") in err, err
    assert "finetuning never saw" not in err and len(rows) == 31
    predict_file(every, s001 / "S001R08.edf")
    assert "montage differs" not in capsys.readouterr().err
    three = _model(tmp_path / "three", "eegmmidb", root, "motor_imagery", channels=("C3", "CZ", "C4"), n_folds=2)
    predict_file(three, export)  # reads C3, CZ, C4 alone: the lost frontal channels do not matter to it
    assert "montage differs" not in capsys.readouterr().err
