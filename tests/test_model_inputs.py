"""What reaches a model, and what a model folder may claim: channel order, NaN weights, a config.json that does
not describe its weights, implausible rates in contract.json / recipe.json, NaN stretches in a recording,
damaged JSON files. Each test is a fault-probe finding: it failed before the fix."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import mne
import numpy as np
import pytest
import safetensors.torch
import torch

from finetune.config import FinetuneConfig
from finetune.model import TaskModel
from finetune.predict import main as predict_main
from finetune.predict import predict_file, prediction_rows
from finetune.train import finetune
from foundation.checkpoint import CheckpointError
from foundation.contract import InputContract
from foundation.model import EEGMamba, EEGMambaConfig

SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}


@pytest.fixture(scope="module")
def model_dir(synth_shards, tmp_path_factory) -> Path:
    """A small seizure model finetuned on all 19 channels of the simulated shards (per-channel head)."""
    tmp = tmp_path_factory.mktemp("inputs_ft")
    torch.manual_seed(0)
    cfg = FinetuneConfig(recipe="seizure", checkpoint=None, data=str(synth_shards), out=str(tmp / "ft"), epochs=1,
                         warmup_epochs=1, batch_size=16, lr=3e-3, layer_decay=1.0, drop_path=0.0, patience=100,
                         progress=False, model=EEGMambaConfig.from_size("tiny", **SMALL), max_windows=96)
    finetune(cfg)
    return tmp / "ft" / "model"


def _cli(argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    code = predict_main(argv)
    return code, capsys.readouterr().err


# --- one canonical channel order ------------------------------------------------------------------


def test_backbone_output_does_not_depend_on_channel_order():
    torch.manual_seed(0)
    model = EEGMamba(EEGMambaConfig.from_size("tiny")).eval()
    x = torch.randn(2, 6, 800)
    ids = torch.tensor([[3, 9, 4, 20, 7, 11], [5, 6, 7, 8, 2, 0]])
    mask = ids > 0
    perm = torch.tensor([4, 2, 0, 5, 3, 1])
    with torch.no_grad():
        a, b = model(x, ids, mask), model(x[:, perm], ids[:, perm], mask[:, perm])
    assert torch.allclose(a.cls, b.cls, atol=1e-5) and torch.allclose(a.pooled, b.pooled, atol=1e-5)
    # tokens come back in the caller's order: channel perm[i] of the first call is channel i of the second
    ta, tb = a.tokens.view(2, 6, 4, -1), b.tokens.view(2, 6, 4, -1)
    assert torch.allclose(ta[:, perm], tb, atol=1e-5)


def test_predictions_do_not_depend_on_the_order_of_channels_in_the_file(model_dir, synth_raw, tmp_path):
    raw = mne.io.read_raw_edf(synth_raw / "sub-05_task-seizure.edf", preload=True, verbose="error")
    names = list(raw.ch_names)
    rng = np.random.default_rng(1)
    shuffled = raw.copy().reorder_channels([names[i] for i in rng.permutation(len(names))])
    a, b = tmp_path / "a.fif", tmp_path / "b.fif"
    raw.save(a, verbose="error")
    shuffled.save(b, verbose="error")
    rows_a, rows_b = predict_file(model_dir, a), predict_file(model_dir, b)
    assert len(rows_a) == len(rows_b) == 24
    assert [r["label"] for r in rows_a] == [r["label"] for r in rows_b]
    np.testing.assert_allclose([r["probability"] for r in rows_a], [r["probability"] for r in rows_b], atol=1e-5)


# --- weights that must not predict -----------------------------------------------------------------


def _copy_model(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


def test_nan_weights_are_refused_at_load_naming_the_tensor(model_dir, synth_raw, tmp_path, capsys, monkeypatch):
    bad = _copy_model(model_dir, tmp_path / "bad")
    state = safetensors.torch.load_file(str(bad / "model.safetensors"))
    name = sorted(k for k in state if k.startswith("backbone.blocks.0"))[0]
    state[name] = torch.full_like(state[name], float("nan"))
    safetensors.torch.save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {name} holds {state[name].numel()} NaN/inf"):
        TaskModel.from_pretrained(bad)
    code, err = _cli(["--model", str(bad), str(synth_raw / "sub-05_task-seizure.edf"), "--out", str(tmp_path / "x.csv")],
                     capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and name in err and not (tmp_path / "x.csv").exists()


def test_a_non_finite_output_never_becomes_a_label():
    proba = np.array([[0.2, 0.8], [np.nan, np.nan], [0.9, 0.1]])
    rows = prediction_rows([0.0, 4.0, 8.0], proba, ["a", "b"])
    assert [r["label_name"] for r in rows] == ["b", None, "a"]
    assert rows[1]["probability"] is None and "not finite" in rows[1]["skipped"]


@pytest.mark.parametrize("edit", [{"n_layers": 100000}, {"d_model": 10**6}, {"n_layers": 3}, {"d_state": 64}])
def test_a_config_json_that_does_not_describe_its_weights_is_refused_before_building(tmp_path, monkeypatch, edit):
    folder = tmp_path / "ckpt"
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    built = []  # models built with real memory (not on the meta device) from the edited config
    init = EEGMamba.__init__

    def spy(self, cfg):
        if torch.empty(0).device.type != "meta":
            built.append(cfg)
        init(self, cfg)

    monkeypatch.setattr(EEGMamba, "__init__", spy)
    key = next(iter(edit))
    with pytest.raises((CheckpointError, ValueError), match=rf"{key}=\d+ is above|does not match the model .*config\.json"):
        EEGMamba.from_pretrained(folder)
    assert built == []


def test_a_finetuned_config_asking_for_a_billion_classes_is_refused(model_dir, tmp_path):
    bad = _copy_model(model_dir, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["heads"]["seizure"]["n_classes"] = 10**9
    config["heads"]["seizure"]["classes"] = []
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"heads\.seizure\..*weights \(\d+, \d+\) vs config \(1000000000"):
        TaskModel.from_pretrained(bad)


# --- rates: one rule for every file the suite reads -----------------------------------------------------


def test_implausible_rates_in_contract_and_recipe_are_one_line_naming_the_file(model_dir, synth_raw, tmp_path, capsys,
                                                                                 monkeypatch):
    edf = str(synth_raw / "sub-05_task-seizure.edf")
    bad = _copy_model(model_dir, tmp_path / "contract")
    contract = json.loads((bad / "contract.json").read_text())
    (bad / "contract.json").write_text(json.dumps({**contract, "sfreq": 1e12}))
    code, err = _cli(["--model", str(bad), edf], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"{bad / 'contract.json'}: sampling rate 1e+12 Hz as InputContract.sfreq is implausible" in err
    with pytest.raises(ValueError, match="as InputContract.sfreq is implausible"):
        InputContract(sfreq=1e9)

    bad = _copy_model(model_dir, tmp_path / "recipe")
    recipe = json.loads((bad / "recipe.json").read_text())
    recipe["seizure"]["sfreq"] = 1e9
    (bad / "recipe.json").write_text(json.dumps(recipe))
    code, err = _cli(["--model", str(bad), edf], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"{bad / 'recipe.json'}: sampling rate 1e+09 Hz (task 'seizure': sfreq) is implausible" in err

    (bad / "recipe.json").write_text(json.dumps(recipe)[:40])
    code, err = _cli(["--model", str(bad), edf], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"{bad / 'recipe.json'} is not valid JSON" in err


# --- a NaN stretch is listed, never left out -----------------------------------------------------------


def test_windows_of_a_nan_stretch_are_listed_as_skipped_with_the_reason(model_dir, synth_raw, tmp_path, capsys,
                                                                        monkeypatch):
    raw = mne.io.read_raw_edf(synth_raw / "sub-05_task-seizure.edf", preload=True, verbose="error")
    sfreq = raw.info["sfreq"]
    raw._data[3, int(41 * sfreq): int(46 * sfreq)] = np.nan  # 41-46 s: the windows at 40 and 44 s
    path = tmp_path / "gap.fif"
    raw.save(path, verbose="error")
    rows = predict_file(model_dir, path)
    assert [r["onset_s"] for r in rows] == pytest.approx([4.0 * i for i in range(24)])
    skipped = {r["onset_s"]: r["skipped"] for r in rows if r["skipped"]}
    assert skipped == {40.0: "NaN/inf samples in the recording", 44.0: "NaN/inf samples in the recording"}
    assert all(r["label"] is None for r in rows if r["skipped"]) and all(r["label"] is not None for r in rows if not r["skipped"])

    out = tmp_path / "labels.csv"
    code, err = _cli(["--model", str(model_dir), str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 0 and "2 window(s) not labelled" in err
    table = list(csv.DictReader(out.open()))
    assert len(table) == 24 and table[10]["skipped"] == "NaN/inf samples in the recording" and table[10]["label"] == ""
    assert table[9]["skipped"] == "" and table[9]["label_name"] in ("non_seizure", "seizure")


# --- the release command names the file it could not read --------------------------------------------------


def test_release_names_a_truncated_json_file(tmp_path, capsys):
    from pretrain.release import main

    run = tmp_path / "run" / "model"
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(run)
    InputContract(channels=("C3",), objective="masked_stft", steps=1, corpora=({"name": "synth", "hours": 0.1},)).save(run)
    datasets = tmp_path / "datasets.json"
    datasets.write_text('{"synth": {"title": "sim", "lic')
    assert main([str(tmp_path / "run"), str(tmp_path / "pub"), "--datasets", str(datasets)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{datasets} is not valid JSON" in err
    datasets.write_text(json.dumps({"synth": {"title": "sim", "license": "Apache-2.0"}}))
    (run / "pretraining.json").write_text('{"objective": "masked')
    assert main([str(tmp_path / "run"), str(tmp_path / "pub"), "--datasets", str(datasets)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'pretraining.json'} is not valid JSON" in err


# --- a corpus whose labels the recipe does not use is never dropped silently ------------------------------


def _bids_emotion(root: Path, events: tuple[str, ...]) -> Path:
    """Three subjects of 48 s whose events.tsv name ``events`` (8 s each, in turn): a BIDS emotion corpus."""
    mne_bids = pytest.importorskip("mne_bids", reason="the bids extra is not installed (pip install -e '.[bids]')")
    rng = np.random.default_rng(0)
    info = mne.create_info(["Fp1", "Fp2", "F3", "F4", "C3", "C4"], 200.0, "eeg")
    for sub in ("01", "02", "03"):
        raw = mne.io.RawArray(rng.standard_normal((6, 200 * 48)) * 2e-5, info, verbose="error")
        onsets = np.arange(0.0, 48.0, 8.0)
        raw.set_annotations(mne.Annotations(onsets, [8.0] * len(onsets), [events[i % len(events)] for i in range(len(onsets))]))
        mne_bids.write_raw_bids(raw, mne_bids.BIDSPath(subject=sub, task="mood", datatype="eeg", root=root),
                                overwrite=True, verbose="error", allow_preload=True, format="EDF")
    return root


def test_a_corpus_that_contributes_nothing_is_refused_and_partial_drops_are_reported(synth_raw, tmp_path, capsys):
    from shards.writer import build

    both = tmp_path / "both"
    build("synth", synth_raw, both, split=(0.5, 0.25, 0.25), progress=False)
    shutil.copytree(both, tmp_path / "other")
    build("bids", _bids_emotion(tmp_path / "bids_sad", ("negative", "positive")), tmp_path / "other", progress=False)
    config = dict(recipe="emotion", checkpoint=None, epochs=1, warmup_epochs=1, batch_size=16, lr=3e-3,
                  layer_decay=1.0, drop_path=0.0, patience=100, progress=False, pool="mean",
                  model=EEGMambaConfig.from_size("tiny", **SMALL))
    with pytest.raises(ValueError, match=r"corpus 'bids' of .* contributes none of its 36 windows \(negative x18, "
                                         r"positive x18\): its labels are not the classes \['calm', 'stress'\]"):
        finetune(FinetuneConfig(data=str(tmp_path / "other"), out=str(tmp_path / "ft_other"), **config))
    assert not (tmp_path / "ft_other").exists()

    build("bids", _bids_emotion(tmp_path / "bids_mixed", ("calm", "stress", "neutral")), both, progress=False)
    capsys.readouterr()
    result = finetune(FinetuneConfig(data=str(both), out=str(tmp_path / "ft_both"), **config))
    line = ("task 'emotion': 12 window(s) of corpus 'bids' left out (label neutral x12); the recipe's classes are "
            "['calm', 'stress']")
    assert f"warning: {line}" in capsys.readouterr().err
    assert line in (tmp_path / "ft_both" / "report.md").read_text()
    assert result["results"]["emotion"]["left_out_labels"] == {"neutral": 12}
