"""End-to-end finetuning on the simulated shards (``synth_shards`` fixture): training beats chance on
held-out subjects, multi-task runs, checkpoints, report files, the CLI, and predict on an EDF file.

Small on purpose (a 1-layer, 32-wide backbone on 1-6 channels) so a CPU run takes seconds; the margins
over chance stated in each test are what that model reaches on the simulator's held-out subjects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.config import FinetuneConfig
from finetune.predict import main as predict_main
from finetune.predict import predict_file
from finetune.run import main as run_main
from finetune.train import finetune
from foundation.model import EEGMamba, EEGMambaConfig

SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}


def small_config(tmp: Path, recipe: str, data: Path, **kw) -> FinetuneConfig:
    base = dict(
        recipe=recipe, checkpoint=None, data=str(data), out=str(tmp / f"run-{recipe.replace(',', '+')}"),
        epochs=6, warmup_epochs=1, batch_size=16, lr=3e-3, pool="mean", layer_decay=1.0, drop_path=0.0,
        patience=100, progress=False, model=EEGMambaConfig.from_size("tiny", **SMALL),
    )
    base.update(kw)
    return FinetuneConfig(**base)


def held_out_groups_disjoint(result: dict) -> None:
    for res in result["results"].values():
        g = res["split"]["groups"]
        assert not set(g["train"]) & set(g["test"]) and not set(g["val"]) & set(g["test"])


@pytest.fixture(scope="module")
def seizure_run(synth_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft_seizure")
    return finetune(small_config(tmp, "seizure", synth_shards, channels=("CZ",)))


def test_seizure_beats_chance_on_held_out_subjects(seizure_run):
    res = seizure_run["results"]["seizure"]
    assert res["classes"] == ["non_seizure", "seizure"]  # synth "background" mapped to non_seizure
    test = res["splits"]["test"]
    # chance is 0.5; spike-wave discharges are obvious even on one channel
    assert test["balanced_accuracy"] >= 0.8, test
    assert test["auroc"] >= 0.85 and test["auc_pr"] >= 0.8
    assert res["split"]["group_key"] == "subject"
    held_out_groups_disjoint(seizure_run)
    assert test["n"] == res["split"]["n_windows"]["test"]


def test_outputs_model_report_and_logs(seizure_run):
    out = Path(seizure_run["out"])
    model = out / "model"
    for name in ("config.json", "model.safetensors", "recipe.json", "metrics.json"):
        assert (model / name).is_file(), name
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # no pickles
    recipe = json.loads((model / "recipe.json").read_text())["seizure"]
    assert recipe["window_s"] == 4.0 and recipe["channels"] == ["CZ"]
    assert recipe["preprocessing"]["synth"]["config"]["sfreq"] == 200.0  # the shards' manifest travels along
    metrics = json.loads((model / "metrics.json").read_text())["seizure"]
    report = json.loads((out / "report.json").read_text())
    test = report["results"]["seizure"]["splits"]["test"]
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(test["balanced_accuracy"])
    md = (out / "report.md").read_text()
    assert f"| seizure | test | {test['balanced_accuracy']:.4f} |" in md
    assert (out / "confusion_seizure_test.png").stat().st_size > 1000
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # epoch -1 scores the probe the head starts from; then one line per training epoch
    assert len(log) == 7 and log[0]["epoch"] == -1 and log[0]["train_loss"] is None
    assert log[-1]["train_loss"] < log[1]["train_loss"]
    assert report["run"]["best_epoch"] == seizure_run["best_epoch"]


def test_curves_in_tensorboard_and_a_figure_next_to_the_report(seizure_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = Path(seizure_run["out"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "logs")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/epoch_loss", "val/loss", "val/score", "val/seizure/auroc",
            "val/seizure/balanced_accuracy"} <= tags
    steps = seizure_run["run"]["steps_run"]
    loss = events.Scalars("train/loss")
    # one point per optimiser step, 1..steps; the epoch losses are their means
    assert [e.step for e in loss] == list(range(1, steps + 1))
    per_epoch = steps // 6
    first_epoch = np.mean([e.value for e in loss[:per_epoch]])
    assert first_epoch == pytest.approx(log[1]["train_loss"], rel=1e-5)
    lr = [e.value for e in events.Scalars("train/lr")]
    assert lr[0] < max(lr) and lr[-1] < max(lr)  # warm-up, then the cosine
    val = events.Scalars("val/seizure/auroc")  # the probe at step 0, then each epoch's end
    assert [e.step for e in val] == [r["step"] for r in log] and val[0].step == 0
    assert [e.value for e in val] == pytest.approx([r["val"]["seizure"]["auroc"] for r in log], rel=1e-6)
    png = out / "learning_curves.png"
    assert png.stat().st_size > 20_000
    assert "![learning curves](learning_curves.png)" in (out / "report.md").read_text()


def test_progress_bar_moves_per_batch(synth_shards, tmp_path, capsys):
    result = finetune(small_config(tmp_path, "seizure", synth_shards, channels=("CZ",), epochs=2, progress=True))
    steps = result["run"]["steps_run"]
    assert steps == result["run"]["total_steps"] > 2 * 2
    err = capsys.readouterr().err
    # the bar counts optimiser steps (batches), not the 2 epochs
    assert f"0/{steps}" in err and f"{steps}/{steps}" in err and "step" in err


def test_predict_labels_every_window_of_an_edf(seizure_run, synth_raw, tmp_path):
    edf = synth_raw / "sub-05_task-seizure.edf"
    rows = predict_file(Path(seizure_run["out"]) / "model", edf)
    # 96 s recording, 4-s windows back to back -> 24 windows at 0, 4, ..., 92 s
    assert [r["onset_s"] for r in rows] == pytest.approx([4.0 * i for i in range(24)])
    assert {r["label_name"] for r in rows} <= {"non_seizure", "seizure"}
    assert all(0.5 <= r["probability"] <= 1.0 for r in rows)
    # the simulator alternates 16-s blocks starting with background: windows 4-7, 12-15, 20-23 are ictal
    truth = np.array([(i // 4) % 2 for i in range(24)])
    pred = np.array([r["label"] for r in rows])
    assert (pred == truth).mean() >= 0.8
    out_csv = tmp_path / "labels.csv"
    assert predict_main(["--model", str(Path(seizure_run["out"]) / "model"), str(edf), "--out", str(out_csv)]) == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("onset_s,label,label_name,probability") and len(lines) == 25
    # 8-s windows on request (a shift the model was not trained for): 12 rows
    assert predict_main(["--model", str(Path(seizure_run["out"]) / "model"), str(edf), "--out", str(out_csv),
                         "--window_s", "8"]) == 0
    assert len(out_csv.read_text().splitlines()) == 1 + 12


def test_predict_writes_mne_annotations_bids_events_and_a_timeline(seizure_run, synth_raw, tmp_path, capsys):
    import csv

    import mne

    model = Path(seizure_run["out"]) / "model"
    edf = synth_raw / "sub-05_task-seizure.edf"
    out_csv = tmp_path / "sub-05_pred.csv"
    assert predict_main(["--model", str(model), str(edf), "--out", str(out_csv), "--plot"]) == 0
    err = capsys.readouterr().err
    rows = predict_file(model, edf)
    for name in ("sub-05_pred_annot.fif", "sub-05_pred_annot.txt", "sub-05_pred_events.tsv",
                 "sub-05_pred_events.json", "sub-05_pred_timeline.png"):
        assert (tmp_path / name).is_file() and name in err, name
    assert (tmp_path / "sub-05_pred_timeline.png").stat().st_size > 20_000
    # the annotations tile the 96 s: consecutive windows of one label are one annotation
    for path in ("sub-05_pred_annot.fif", "sub-05_pred_annot.txt"):
        ann = mne.read_annotations(tmp_path / path)
        assert ann.onset[0] == 0.0 and ann.onset[-1] + ann.duration[-1] == pytest.approx(96.0)
        np.testing.assert_allclose(ann.onset[1:], ann.onset[:-1] + ann.duration[:-1], atol=1e-6)
        assert all(a != b for a, b in zip(ann.description[1:], ann.description[:-1]))
        # every window's label is the description of the annotation that holds it
        for r in rows:
            k = np.searchsorted(ann.onset, r["onset_s"], side="right") - 1
            assert ann.description[k] == r["label_name"]
    # onto the recording they came from
    raw = mne.io.read_raw_edf(edf, verbose="error")
    raw.set_annotations(mne.read_annotations(tmp_path / "sub-05_pred_annot.fif"))
    assert len(raw.annotations) == len(ann)
    with open(tmp_path / "sub-05_pred_events.tsv", newline="") as f:
        events = list(csv.DictReader(f, delimiter="\t"))
    assert list(events[0]) == ["onset", "duration", "trial_type", "probability", "n_windows", "skipped"]
    assert [e["trial_type"] for e in events] == list(ann.description)
    assert sum(int(e["n_windows"]) for e in events) == len(rows) == 24
    assert {e["skipped"] for e in events} == {"n/a"}
    sidecar = json.loads((tmp_path / "sub-05_pred_events.json").read_text())
    assert set(sidecar["trial_type"]["Levels"]) == {"non_seizure", "seizure", "BAD_no_label"}
    # the simulator's ictal blocks are 16 s long: detected events of 4-s windows
    seizures = [e for e in events if e["trial_type"] == "seizure"]
    assert 1 <= len(seizures) <= 5 and all(float(e["duration"]) % 4.0 == 0 for e in seizures)


def test_predict_plot_needs_out(seizure_run, synth_raw, capsys):
    edf = synth_raw / "sub-05_task-seizure.edf"
    assert predict_main(["--model", str(Path(seizure_run["out"]) / "model"), str(edf), "--plot"]) == 2
    assert "--plot needs --out" in capsys.readouterr().err


def test_predict_names_a_corrupt_recording_in_one_line(seizure_run, tmp_path, capsys):
    bad = tmp_path / "broken.edf"
    bad.write_bytes(b"0       not an EDF header at all")
    assert predict_main(["--model", str(Path(seizure_run["out"]) / "model"), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.edf" in err[0] and "python -m finetune.predict: error:" in err[0]


def test_pretrained_checkpoint_finetunes_and_mismatch_errors(synth_shards, tmp_path):
    ckpt = tmp_path / "pretrained"
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(ckpt)
    cfg = small_config(tmp_path, "seizure", synth_shards, checkpoint=str(ckpt), model=None, channels=("CZ",), epochs=1)
    result = finetune(cfg)
    assert result["run"]["checkpoint"]["kind"] == "pretrained"
    saved = json.loads((Path(result["out"]) / "model" / "config.json").read_text())
    assert saved["backbone"]["d_model"] == 32
    from finetune.model import CheckpointError

    with pytest.raises(CheckpointError, match="d_model=32 but the finetune config asks for model.d_model=64"):
        finetune(small_config(tmp_path, "seizure", synth_shards, checkpoint=str(ckpt),
                                   model=EEGMambaConfig.from_size("tiny", **{**SMALL, "d_model": 64}), epochs=1))


def test_heads_read_the_middle_layer_and_the_layers_above_are_dropped(synth_shards, tmp_path, capsys):
    import torch

    from finetune.model import TaskModel

    ckpt = tmp_path / "pretrained-2-layers"
    torch.manual_seed(0)
    pretrained = EEGMamba(EEGMambaConfig.from_size("tiny", **{**SMALL, "n_layers": 2}))
    pretrained.save_pretrained(ckpt)

    def run(name, checkpoint, **kw):
        cfg = small_config(tmp_path, "seizure", synth_shards, checkpoint=str(checkpoint), model=None, channels=("CZ",),
                           epochs=1, mode="linear_probe", out=str(tmp_path / name), **kw)
        result = finetune(cfg)
        return result, Path(result["out"]) / "model"

    result, folder = run("middle", ckpt)
    assert result["run"]["checkpoint"]["layers"] == {"read": 1, "of": 2}
    assert "heads read layer 1 of the backbone's 2" in capsys.readouterr().err
    assert json.loads((folder / "config.json").read_text())["backbone"]["n_layers"] == 1
    model = TaskModel.from_pretrained(folder)
    frozen = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(("blocks.1.", "moes.1."))}
    kept = model.backbone.state_dict()
    assert kept.keys() == frozen.keys()
    for k in kept:  # the frozen pretrained weights (the task rows are set up for the recipe's task)
        if "task_" not in k:
            torch.testing.assert_close(kept[k], frozen[k], msg=k)
    # a finetuned model finetuned again keeps the layers it has; -1 keeps every pretrained layer
    assert run("again", folder)[0]["run"]["checkpoint"]["layers"] == {"read": 1, "of": 1}
    result, folder = run("last", ckpt, read_layer=-1)
    assert result["run"]["checkpoint"]["layers"] == {"read": 2, "of": 2}
    assert json.loads((folder / "config.json").read_text())["backbone"]["n_layers"] == 2
    argv = ["--recipe", "seizure", "--checkpoint", str(ckpt), "--data", str(synth_shards), "--out", str(tmp_path / "bad"),
            "--read_layer", "3", "--progress", "false"]
    assert run_main(argv) == 2
    assert "read_layer=3: the backbone has 2 layer(s) (expected 1..2" in capsys.readouterr().err


def test_multitask_two_recipes_one_head_each(synth_shards, tmp_path):
    cfg = small_config(tmp_path, "seizure,emotion", synth_shards, channels=("CZ",), epochs=3)
    result = finetune(cfg)
    assert set(result["results"]) == {"seizure", "emotion"}
    saved = json.loads((Path(result["out"]) / "model" / "config.json").read_text())
    assert saved["heads"]["seizure"]["task_id"] == 1 and saved["heads"]["emotion"]["task_id"] == 3
    assert saved["heads"]["emotion"]["n_classes"] == 2
    for task in ("seizure", "emotion"):
        assert (Path(result["out"]) / f"confusion_{task}_test.png").is_file()
    # the multi-task model still detects seizures on held-out subjects
    assert result["results"]["seizure"]["splits"]["test"]["balanced_accuracy"] >= 0.75
    held_out_groups_disjoint(result)
    # predict picks a head by task


def test_cli_runs_and_rejects_unknown_keys(synth_shards, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--recipe", "seizure", "--checkpoint", "none", "--data", str(synth_shards), "--out", str(out),
            "--epochs", "1", "--batch_size", "32", "--channels", "CZ", "--progress", "false",
            "--model", "{d_model = 32, n_layers = 1, n_experts = 2, top_k = 1, moe_hidden = 32}"]
    assert run_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and "seizure" in printed["metrics"]
    assert run_main(argv + ["--epoch", "3"]) == 2
    assert "unknown config key 'epoch'" in capsys.readouterr().err
    assert run_main(["--recipe", "seizure", "--data", str(synth_shards)]) == 2
    assert "--checkpoint DIR" in capsys.readouterr().err
    assert run_main(["--recipe", "seizure", "--checkpoint", "none", "--data", str(tmp_path / "nothing")]) == 2
    assert f"shard path {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err


def test_bad_task_data_errors(synth_shards, tmp_path):
    with pytest.raises(KeyError, match="not in label space"):
        finetune(small_config(tmp_path, "motor_imagery", synth_shards, classes=("left_hand", "jump")))
    with pytest.raises(ValueError, match="do not fit the backbone"):
        finetune(small_config(tmp_path, "seizure", synth_shards, window_s=2.5, channels=("CZ",)))
    with pytest.raises(ValueError, match="shorter than window_s"):
        finetune(small_config(tmp_path, "seizure", synth_shards, window_s=8.0, channels=("CZ",)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, channels, epochs, margin",
    [
        ("sleep", ("CZ", "C3"), 15, 0.40),  # 5 classes: chance 0.2
        ("emotion", ("F3", "F4"), 15, 0.75),  # chance 0.5; frontal alpha asymmetry
    ],
)
def test_recipe_beats_chance_on_synth(synth_shards, tmp_path, recipe, channels, epochs, margin):
    result = finetune(small_config(tmp_path, recipe, synth_shards, channels=channels, epochs=epochs))
    test = result["results"][recipe]["splits"]["test"]
    assert test["balanced_accuracy"] >= margin, test
    held_out_groups_disjoint(result)


@pytest.mark.slow
def test_motor_imagery_beats_chance_on_a_larger_synth_set(tmp_path):
    """Lateralised mu/beta desynchronisation needs more trials than the shared fixture's 12 per subject,
    and the class token: a mean over C3 and C4 tokens is symmetric in the two hands (it stays at chance)."""
    from shards.synth import simulate
    from shards.writer import build

    simulate(tmp_path / "raw", n_subjects=12, duration_s=240.0, seed=0, tasks=("motor_imagery",))
    build("synth", tmp_path / "raw", tmp_path / "shards", max_samples_per_shard=500, progress=False)
    result = finetune(small_config(tmp_path, "motor_imagery", tmp_path / "shards" / "synth", channels=("C3", "C4"),
                                   epochs=15, batch_size=32, pool="cls"))
    res = result["results"]["motor_imagery"]
    assert res["classes"] == ["left_hand", "right_hand"]
    assert res["splits"]["test"]["balanced_accuracy"] >= 0.75, res["splits"]["test"]  # chance 0.5
    held_out_groups_disjoint(result)


def test_shards_split_and_deterministic_seeding(synth_shards, tmp_path):
    from shards.dataset import read_manifest

    runs = [finetune(small_config(tmp_path / str(i), "seizure", synth_shards, channels=("CZ",), epochs=2, split="shards"))
            for i in range(2)]
    a, b = runs
    # same seed -> same batches, same initialisation, same numbers
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["results"]["seizure"]["splits"] == b["results"]["seizure"]["splits"]
    # split="shards" follows the writer's assignment of recordings
    assigned = read_manifest(synth_shards)["splits"]["recordings"]
    groups = a["results"]["seizure"]["split"]["groups"]
    for side in ("train", "val", "test"):
        assert all(assigned[g.split("/", 1)[1]] == side for g in groups[side])


def test_predict_rejects_a_rate_the_build_rejects_with_the_same_message(seizure_run, tmp_path):
    import mne

    from shards.sample import MIN_SFREQ, check_sfreq
    from shards.writer import build

    slow = tmp_path / "raw" / "slow.edf"
    slow.parent.mkdir()
    rng = np.random.default_rng(0)
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (2, 10 * 60)), mne.create_info(["Cz", "Pz"], 10.0, "eeg"), verbose="error")
    mne.export.export_raw(slow, raw, fmt="edf", verbose="error")
    assert 10.0 < MIN_SFREQ
    with pytest.raises(ValueError) as e:
        check_sfreq(10.0)
    rule = str(e.value)
    assert rule == "sampling rate 10 Hz in the header is implausible for EEG (expected 25-100000 Hz)"
    with pytest.raises(ValueError) as e:
        predict_file(Path(seizure_run["out"]) / "model", slow)
    assert str(e.value) == f"{slow}: {rule}"
    m = build("recordings", slow.parent, tmp_path / "shards", progress=False)
    assert [s["source"] for s in m["skipped"]] == ["slow.edf"] and rule in m["skipped"][0]["reason"]


# -- issue 14 item 7: the guard's message, one-line CLI errors ------------------------------------------------------


def test_a_huge_learning_rate_ends_with_the_guards_message(synth_shards, tmp_path):
    from runtime.engine import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="non-finite value .*Lower --lr"):
        finetune(small_config(tmp_path, "seizure", synth_shards, lr=1e6, epochs=1, warmup_epochs=0, channels=("CZ",)))
    assert not (tmp_path / "run-seizure" / "model").exists()


def test_cli_errors_are_one_line_naming_the_file(synth_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    ckpt = tmp_path / "broken"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    (ckpt / "model.safetensors").write_bytes(b"")
    argv = ["--recipe", "seizure", "--checkpoint", str(ckpt), "--data", str(synth_shards), "--out", str(tmp_path / "o"),
            "--epochs", "1", "--channels", "CZ", "--progress", "false"]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt / "config.json") in err[0] and "not valid JSON" in err[0] and "Traceback" not in err[0]
    from foundation.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):  # the traceback on request
        run_main(argv + ["--debug"])
    monkeypatch.setenv("EEGFM_DEBUG", "1")
    with pytest.raises(CheckpointError):
        run_main(argv)
    monkeypatch.delenv("EEGFM_DEBUG")
    assert predict_main(["--model", str(ckpt), str(tmp_path / "missing.edf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "python -m finetune.predict: error:" in err[0]
