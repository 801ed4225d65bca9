"""Input contracts: written at export, compared by finetune/run.py and finetune.predict.

A recording at another sampling rate and one stored in volts are converted with one notice line (and
labelled like the µV original); a montage the contract cannot map is one clear error; old checkpoints
without a contract still load with a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.config import FinetuneConfig
from finetune.contract import ContractError, check_montage, conform_windows
from finetune.predict import main as predict_main
from finetune.predict import predict_file
from finetune.train import finetune
from foundation.contract import CONTRACT_NAME, InputContract, read_contract
from foundation.model import EEGMamba, EEGMambaConfig
from pretrain.contract import run_contract
from pretrain.data import resolve_corpora
from shards.dataset import Window
from shards.vocabulary import CHANNELS

SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}
SYNTH_CHANNELS = ("C3", "C4", "CZ", "F3", "F4", "F7", "F8", "FP1", "FP2", "FZ", "O1", "O2", "P3", "P4", "P7", "P8",
                  "PZ", "T7", "T8")


def test_contract_round_trip_is_strict(tmp_path):
    c = InputContract(l_freq=0.1, h_freq=75.0, channels=("CZ", "C3"), objective="masked_stft", steps=3, window_s=4.0)
    c.save(tmp_path)
    back = read_contract(tmp_path)
    assert back == c and back.channels == ("C3", "CZ")
    data = json.loads((tmp_path / CONTRACT_NAME).read_text())
    data["sampling_rate"] = 250
    (tmp_path / CONTRACT_NAME).write_text(json.dumps(data))
    with pytest.raises(ContractError, match="sampling_rate"):
        read_contract(tmp_path)
    with pytest.raises(ContractError, match="units"):
        InputContract(units="uV")
    with pytest.warns(UserWarning, match="no contract.json"):
        assert read_contract(tmp_path / "old") is None


def test_run_contract_from_the_shards_manifest(synth_shards):
    corpora = resolve_corpora([("synth", str(synth_shards / "train-*.tar"), 1.0)])
    c = run_contract(corpora, objective="masked_stft", steps=7, crop_s=4.0)
    assert c.sfreq == 200.0 and (c.l_freq, c.h_freq) == (0.1, 75.0) and c.patch_samples == 200
    assert c.channels == tuple(sorted(SYNTH_CHANNELS))
    assert c.vocabulary_size == len(CHANNELS) and c.steps == 7 and c.objective == "masked_stft"
    manifest = json.loads((synth_shards / "manifest.json").read_text())
    train_hours = sum(s["hours"] for s in manifest["shards"] if s["split"] == "train")
    assert c.data_hours == pytest.approx(train_hours, abs=1e-3) and 0 < c.data_hours < manifest["totals"]["hours"]


def _window(sfreq: float, channels=("C3", "CZ")) -> Window:
    t = np.arange(int(4 * sfreq)) / sfreq
    data = np.stack([np.sin(2 * np.pi * 10 * t + i) for i in range(len(channels))]).astype(np.float32)
    return Window(data, {"channels": list(channels), "sfreq": sfreq})


def test_shard_windows_at_another_rate_are_resampled_with_one_notice():
    contract = InputContract(channels=SYNTH_CHANNELS, h_freq=75.0, l_freq=0.1)
    windows, line = conform_windows(contract, [_window(250.0), _window(250.0)], {}, "shards/x")
    assert [w.eeg.shape for w in windows] == [(2, 800), (2, 800)] and windows[0].meta["sfreq"] == 200.0
    assert line == "shards/x: resampled 250 Hz -> 200 Hz"
    # a 10-Hz sine keeps its frequency and amplitude
    spec = np.abs(np.fft.rfft(windows[0].eeg[0]))
    assert np.argmax(spec) == 40 and np.abs(windows[0].eeg[0, 100:-100]).max() == pytest.approx(1.0, abs=0.05)
    same, none = conform_windows(contract, [_window(200.0)], {}, "shards/y")
    assert none is None and same[0].eeg.shape == (2, 800)


def test_unmappable_montage_is_one_clear_error():
    contract = InputContract(channels=("C3", "C4", "CZ"))
    assert check_montage(["C3", "O1"], contract, "rec.edf") == ["O1"]
    assert check_montage(["EEG"], contract, "bonn") == []  # position-less channel: own id, never an error
    with pytest.raises(ContractError, match=r"rec\.edf: montage \['AF7', 'AF8'\] cannot be mapped.*C3, C4, CZ"):
        check_montage(["AF7", "AF8"], contract, "rec.edf")
    with pytest.raises(ContractError, match="added to the vocabulary after"):
        check_montage([CHANNELS[-1]], InputContract(channels=("C3",), vocabulary_size=len(CHANNELS) - 1), "x")


# -- end to end: a pretrained folder with a contract -> finetune -> predict on converted recordings ---------


@pytest.fixture(scope="module")
def finetuned(synth_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract_ft")
    import torch

    torch.manual_seed(0)
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(tmp / "pre")
    InputContract(l_freq=0.1, h_freq=75.0, channels=SYNTH_CHANNELS, objective="masked_stft", steps=1).save(tmp / "pre")
    cfg = FinetuneConfig(recipe="seizure", checkpoint=str(tmp / "pre"), data=str(synth_shards), out=str(tmp / "ft"),
                         epochs=2, warmup_epochs=1, batch_size=16, lr=3e-3, pool="mean", layer_decay=1.0, drop_path=0.0,
                         patience=100, progress=False, model=SMALL, channels=("CZ",), max_windows=120)
    finetune(cfg)
    return tmp / "ft" / "model"


def _edf(path: Path, sfreq: float, unit: str, names=("EEG Cz-REF", "EEG C3-REF", "EOG LOC")) -> Path:
    import edfio

    scale = {"uV": 1.0, "V": 1e-6}[unit]
    rng = np.random.default_rng(0)
    t = np.arange(int(24 * sfreq)) / sfreq
    signals = []
    for i, name in enumerate(names):
        uv = 30 * np.sin(2 * np.pi * 3 * t + i) + 5 * rng.standard_normal(t.size)
        signals.append(edfio.EdfSignal(uv * scale, sampling_frequency=sfreq, label=name, physical_dimension=unit,
                                       physical_range=(-500 * scale, 500 * scale)))
    edfio.Edf(signals).write(path)
    return path


def test_finetuned_model_carries_the_contract(finetuned):
    c = read_contract(finetuned)
    assert c is not None and c.channels == tuple(sorted(SYNTH_CHANNELS))


def test_recording_at_another_rate_and_in_volts_is_converted_with_one_notice(finetuned, tmp_path, capsys):
    ref = predict_file(finetuned, _edf(tmp_path / "uv200.edf", 200.0, "uV"))
    capsys.readouterr()
    rows = predict_file(finetuned, _edf(tmp_path / "uv250.edf", 250.0, "uV"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resampled 250 Hz -> 200 Hz" in err[0] and "units" not in err[0], err
    assert len(rows) == len(ref) == 6
    volts = predict_file(finetuned, _edf(tmp_path / "v200.edf", 200.0, "V"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "units V -> µV / 100" in err[0] and "resampled" not in err[0], err
    # the same signal stored in volts is labelled exactly like the µV file
    for a, b in zip(volts, ref):
        assert a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-3)


def test_unmappable_recording_is_refused_by_predict(finetuned, tmp_path, capsys):
    path = _edf(tmp_path / "af.edf", 200.0, "uV", names=("AF7", "AF8"))
    with pytest.raises(ContractError, match="montage"):
        predict_file(finetuned, path)
    assert predict_main(["--model", str(finetuned), str(path)]) == 2
    assert "cannot be mapped" in capsys.readouterr().err


def test_model_finetuned_from_scratch_gets_its_data_contract(synth_shards, tmp_path):
    cfg = FinetuneConfig(recipe="seizure", checkpoint="none", data=str(synth_shards), out=str(tmp_path / "ft"), epochs=1,
                         batch_size=16, progress=False, model=SMALL, channels=("CZ", "C3"), max_windows=40)
    finetune(cfg)
    c = read_contract(tmp_path / "ft" / "model")
    assert c.channels == ("C3", "CZ") and c.sfreq == 200.0 and (c.l_freq, c.h_freq) == (0.1, 75.0)


def test_pretraining_export_writes_the_contract(synth_shards, tmp_path):
    from pretrain.config import DataConfig, OptimConfig, PretrainConfig, TrainConfig
    from pretrain.run import run

    cfg = PretrainConfig(
        data=DataConfig(shards=str(synth_shards / "train-*.tar"), batch_size=4, crop_s=2.0, shuffle_buffer=16, epoch_steps=2),
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        train=TrainConfig(out_dir=str(tmp_path / "run"), progress=False, max_steps=2, save_every=2, log_every=1),
    )
    result = run(cfg)
    c = read_contract(result.export_dir)
    assert (c.objective, c.steps, c.window_s, c.sfreq) == ("masked_stft", 2, 2.0, 200.0)
    assert c.channels == tuple(sorted(SYNTH_CHANNELS)) and c.data_hours > 0 and c.corpora[0]["name"] == "synth"


def _linked_corpus(src: Path, dest: Path, **build_config) -> dict:
    """``dest``: links to ``src``'s shards and a copy of its manifest with ``build.config`` changed."""
    dest.mkdir(parents=True)
    for tar in src.glob("*.tar"):
        (dest / tar.name).symlink_to(tar)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["build"]["config"].update(build_config)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_run_contract_records_filters_only_where_corpora_agree_and_reads_every_folder(synth_shards, tmp_path):
    europe = _linked_corpus(synth_shards, tmp_path / "europe" / "synth", notch=50.0)
    _linked_corpus(synth_shards, tmp_path / "america" / "synth", notch=60.0)
    train_hours = sum(s["hours"] for s in europe["shards"] if s["split"] == "train")
    corpora = resolve_corpora([("eu", str(tmp_path / "europe" / "synth" / "train-*.tar"), 1.0),
                               ("us", str(tmp_path / "america" / "synth" / "train-*.tar"), 1.0)])
    c = run_contract(corpora, objective="masked_stft", steps=1, crop_s=4.0)
    assert c.notch is None and (c.l_freq, c.h_freq, c.sfreq) == (0.1, 75.0, 200.0)  # the band agrees, the notch not
    assert [e["preprocess"]["notch"] for e in c.corpora] == [50.0, 60.0]
    assert c.data_hours == pytest.approx(2 * train_hours, abs=1e-3)
    same = run_contract(corpora[:1], objective="masked_stft", steps=1, crop_s=4.0)
    assert same.notch == 50.0
    # one corpus whose glob spans two folders: both manifests count (hours, channels, filters)
    other = _linked_corpus(synth_shards, tmp_path / "more" / "synth", notch=60.0)
    other["channel_sets"].append({"channels": ["OZ"], "recordings": 0})
    (tmp_path / "more" / "synth" / "manifest.json").write_text(json.dumps(other))
    both = resolve_corpora([("mix", str(tmp_path / "{europe,more}" / "synth" / "train-*.tar"), 1.0)])
    assert {Path(u).parent.parent.name for u in both[0].urls} == {"europe", "more"}
    c = run_contract(both, objective="masked_stft", steps=1, crop_s=4.0)
    assert c.data_hours == pytest.approx(2 * train_hours, abs=1e-3) and "OZ" in c.channels
    assert c.notch is None and c.corpora[0]["preprocess"]["notch"] is None and c.corpora[0]["preprocess"]["l_freq"] == 0.1


def test_run_contract_has_no_notch_where_recordings_stated_their_own_mains(synth_shards, tmp_path):
    """A BIDS build notches each recording at its PowerLineFrequency (manifest ``notch_hz``), not at the build's."""
    manifest = _linked_corpus(synth_shards, tmp_path / "bids" / "synth", notch=50.0)
    corpora = resolve_corpora([("bids", str(tmp_path / "bids" / "synth" / "train-*.tar"), 1.0)])
    assert run_contract(corpora, objective="masked_stft", steps=1, crop_s=4.0).notch == 50.0
    manifest["recordings"][0]["notch_hz"] = 60.0
    (tmp_path / "bids" / "synth" / "manifest.json").write_text(json.dumps(manifest))
    c = run_contract(corpora, objective="masked_stft", steps=1, crop_s=4.0)
    assert c.notch is None and c.l_freq == 0.1
