"""The release command (publishable folder + generated model card + checksums) and the shipped checkpoint.

The shipped ``eegmamba-tiny-open`` must load, carry its contract and a card naming only data sets whose
terms allow derived weights, and finetune from its name on shards built from a shared set, after which
``python -m finetune.predict`` labels a recording.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from finetune.predict import main as predict_main
from finetune.run import main as run_main
from foundation.checkpoint import released_checkpoints, resolve_checkpoint
from foundation.contract import InputContract, read_contract
from foundation.model import EEGMamba, EEGMambaConfig
from pretrain.release import ReleaseError, downstream_table, main, release, verify_checksums

REPO = Path(__file__).resolve().parents[1]
SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}
DATASETS = {
    "eegmmidb": {"title": "PhysioNet EEGMMIDB", "license": "ODC-By-1.0", "url": "https://physionet.org/content/eegmmidb/",
                 "citation": "Schalk et al. 2004", "why": "open licence"},
    "synth": {"title": "eegfm simulator", "license": "Apache-2.0", "why": "ours"},
}


def _front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model_dir = tmp_path / "run" / "model"
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(model_dir)
    InputContract(l_freq=0.1, h_freq=75.0, channels=("C3", "C4", "CZ"), objective="masked_stft", steps=1200,
                  window_s=4.0, vocabulary_size=376, data_hours=1.25,
                  corpora=({"name": "eegmmidb", "hours": 0.75, "shards": 1}, {"name": "synth", "hours": 0.5, "shards": 2})).save(model_dir)
    (model_dir / "pretraining.json").write_text(json.dumps({"objective": "masked_stft", "steps": 1200, "config": {
        "optim": {"lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 60, "weight_decay": 0.05}, "data": {"batch_size": 16}}}))
    return tmp_path / "run"


def test_release_writes_weights_contract_card_and_checksums(run_dir, tmp_path):
    downstream = json.loads((REPO / "benchmarks" / "results" / "results.json").read_text())
    out = release(run_dir, tmp_path / "pub", DATASETS, name="eegmamba-test", downstream=downstream)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "SHA256SUMS", "config.json", "contract.json", "model.safetensors"]
    assert verify_checksums(out) == []
    loaded = EEGMamba.from_pretrained(out)
    ref = EEGMamba.from_pretrained(run_dir / "model")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ref.state_dict().values()))
    meta, body = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "eegfm"
    assert "eeg" in meta["tags"] and "masked_stft" in meta["tags"]
    assert meta["datasets"] == ["PhysioNet EEGMMIDB", "eegfm simulator"]
    assert "| eegmmidb | [PhysioNet EEGMMIDB](https://physionet.org/content/eegmmidb/) | ODC-By-1.0 | 0.75 | 1 |" in body
    assert "for 1200 steps on 1.25 h of EEG" in body and "lr 0.001 -> 1e-05" in body
    # the downstream table comes from the results file, row by row
    bonn = downstream["table"]["seizure"]["band power + LR"]["balanced_accuracy"]
    assert f"| Bonn seizure (S vs Z/O/N/F) | band power + LR | {bonn['mean']:.3f} ± {bonn['std']:.3f} |" in body
    assert "Intended use and limits" in body and "Not for diagnosis" in body
    # generated, not typed: the same inputs give the same card
    again = release(run_dir, tmp_path / "pub2", DATASETS, name="eegmamba-test", downstream=downstream)
    assert (again / "README.md").read_text() == (out / "README.md").read_text()
    (out / "contract.json").write_text((out / "contract.json").read_text() + " ")
    assert verify_checksums(out) == ["contract.json"]


def test_card_table_keeps_the_checkpoints_own_rows_and_the_yardsticks():
    stat = {"balanced_accuracy": {"mean": 0.9, "std": 0.01}}
    results = {"tasks": {"seizure": {"title": "Bonn seizure"}},
               "table": {"seizure": {"EEGMamba released checkpoint (eegmamba-tiny-open), finetuned": stat,
                                     "EEGMamba pretrained (masked STFT), finetuned": stat,
                                     "EEGMamba from scratch": stat, "band power + LR": stat}}}
    rows = [line.split(" | ")[1] for line in downstream_table(results, "eegmamba-tiny-open").splitlines()[2:]]
    assert rows == ["EEGMamba released checkpoint (eegmamba-tiny-open), finetuned", "EEGMamba from scratch",
                    "band power + LR"]
    # a run released under a name the benchmark never saw: its table is every row
    assert len(downstream_table(results, "my-run").splitlines()) == 2 + 4
    assert "| Bonn seizure | band power + LR | 0.900 ± 0.010 |" in downstream_table(results)


def test_release_refuses_unlicensed_or_restricted_data(run_dir, tmp_path, capsys):
    with pytest.raises(ReleaseError, match="corpus 'synth' of the run has no entry"):
        release(run_dir, tmp_path / "pub", {"eegmmidb": DATASETS["eegmmidb"]})
    nc = {**DATASETS, "eegmmidb": {**DATASETS["eegmmidb"], "license": "CC BY-NC-ND 4.0"}}
    with pytest.raises(ReleaseError, match="'eegmmidb' is licensed 'CC BY-NC-ND 4.0'"):
        release(run_dir, tmp_path / "pub", nc)
    (tmp_path / "nc.json").write_text(json.dumps(nc))
    assert main([str(run_dir), str(tmp_path / "pub"), "--datasets", str(tmp_path / "nc.json")]) == 2
    assert "non-commercial or no-derivatives" in capsys.readouterr().err
    (tmp_path / "ok.json").write_text(json.dumps(DATASETS))
    assert main([str(run_dir / "model"), str(tmp_path / "pub"), "--datasets", str(tmp_path / "ok.json")]) == 0
    assert "upload_folder" in capsys.readouterr().out and (tmp_path / "pub" / "SHA256SUMS").is_file()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_release_never_deletes_the_run_or_a_foreign_folder(run_dir, tmp_path, monkeypatch, capsys):
    before = _tree(tmp_path)
    # OUT_DIR = the run, its model folder, or a folder holding the run ("." where the run lies below)
    for out in (run_dir, run_dir / "model", tmp_path, tmp_path / "run" / ".."):
        with pytest.raises(ReleaseError, match="is or contains the run being released"):
            release(run_dir, out, DATASETS)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.json").write_text(json.dumps(DATASETS))
    assert main(["run", ".", "--datasets", "ok.json"]) == 2
    assert "would delete the run" in capsys.readouterr().err
    (tmp_path / "ok.json").unlink()
    assert _tree(tmp_path) == before
    # a non-empty folder that is not an earlier release: notes, or a release with a file it does not list
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("months of work")
    with pytest.raises(ReleaseError, match="not an earlier release .no SHA256SUMS"):
        release(run_dir, notes, DATASETS)
    assert (notes / "thesis.tex").read_text() == "months of work"
    pub = release(run_dir, tmp_path / "pub", DATASETS)
    (pub / "mine.txt").write_text("keep")
    with pytest.raises(ReleaseError, match=r"does not list \['mine.txt'\]"):
        release(run_dir, pub, DATASETS)
    assert (pub / "mine.txt").read_text() == "keep"
    # an earlier release (and an empty folder) is replaced
    (pub / "mine.txt").unlink()
    (pub / "README.md").write_text("stale card")
    again = release(run_dir, pub, DATASETS)
    assert verify_checksums(again) == [] and "stale card" not in (again / "README.md").read_text()
    (tmp_path / "empty").mkdir()
    assert verify_checksums(release(run_dir, tmp_path / "empty", DATASETS)) == []
    assert (run_dir / "model" / "model.safetensors").is_file()


# -- the shipped checkpoint ------------------------------------------------------------------------------

ALLOWED = {"eegmmidb", "eegmat", "eeglab", "yasa", "synth"}


def test_shipped_checkpoint_loads_with_contract_card_and_checksums():
    assert "eegmamba-tiny-open" in released_checkpoints()
    folder = resolve_checkpoint("eegmamba-tiny-open")
    assert verify_checksums(folder) == []
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3e6
    model = EEGMamba.from_pretrained("eegmamba-tiny-open")
    assert not model.training and model.num_parameters() < 1e6
    contract = read_contract(folder)
    assert contract.objective == "masked_stft" and contract.steps > 0 and contract.data_hours > 0
    names = {c["name"] for c in contract.corpora}
    assert names <= ALLOWED and {"eegmmidb", "synth"} <= names  # no DREAMS / Bonn / mental stress
    assert {"C3", "CZ", "C4", "FP1", "O2"} <= set(contract.channels)
    meta, body = _front_matter((folder / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and len(meta["datasets"]) == len(names)
    assert "python -m pretrain.release_tiny" in body and "ODC-By-1.0" in body
    table = body.split("## Training data and licences")[1].split("Left out:")
    assert "DREAMS" not in table[0] and "NC" not in table[0] and "DREAMS" in table[1]  # said which, and why


@pytest.mark.slow
def test_finetune_the_shipped_checkpoint_on_dreams_then_label_a_recording(shared_data, tmp_path, capsys):
    from shards.writer import build

    dreams = shared_data / "sleep" / "dreams_spindles"
    raw = tmp_path / "raw"
    raw.mkdir()
    for n in (1, 2, 4):
        for name in (f"excerpt{n}.txt", f"Hypnogram_excerpt{n}.txt"):
            (raw / name).symlink_to(dreams / name)
    build("dreams", raw, tmp_path / "shards", progress=False)
    out = tmp_path / "ft"
    assert run_main(["--recipe", "sleep", "--checkpoint", "eegmamba-tiny-open", "--data", str(tmp_path / "shards" / "dreams"),
                     "--out", str(out), "--epochs", "1", "--batch_size", "32", "--max_windows", "300", "--progress", "false"]) == 0
    assert json.loads((out / "config.json").read_text())["checkpoint"] == "eegmamba-tiny-open"
    assert read_contract(out / "model").objective == "masked_stft"
    capsys.readouterr()
    assert predict_main(["--model", str(out / "model"), str(dreams / "excerpt3.edf"), "--out", str(tmp_path / "labels.csv")]) == 0
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    classes = json.loads((out / "model" / "recipe.json").read_text())["sleep"]["classes"]
    assert len(rows) > 100 and all(r.split(",")[2] in classes for r in rows[1:])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eegfm contract:")]
    # the conversions, then: a one-channel sleep model labels the PSG's EEG channels one by one and averages
    assert len(err) == 2 and all("excerpt3.edf" in line for line in err)
    assert "the model was finetuned on one channel (CZ)" in err[1] and "averaged over its channels" in err[1]


def test_release_tiny_config_runs_and_releases(synth_shards, tmp_path):
    """The release script's pretraining config and release call, on the simulated shards (2 steps)."""
    from pretrain.release_tiny import EXCLUDED, NAME, SETS, release_config
    from pretrain.run import run

    config = release_config({"synth": synth_shards}, tmp_path / "run", steps=2)
    assert config.model == EEGMambaConfig.from_size("tiny") and config.train.seed == 0 and config.data.num_workers == 0
    run(config)
    out = release(tmp_path / "run", tmp_path / "pub", {"synth": SETS["synth"][2]}, name=NAME, excluded=EXCLUDED)
    assert verify_checksums(out) == [] and read_contract(out).steps == 2
    assert "DREAMS" in (out / "README.md").read_text().split("Left out:")[1]


def test_release_tiny_refuses_a_missing_adapter_instead_of_substituting_one(monkeypatch):
    import shards.corpora
    from pretrain.release_tiny import checked_adapter

    assert checked_adapter("eegmat") == "eegmat"
    real = shards.corpora.get_corpus

    def without_eegmat(name):
        if name == "eegmat":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(shards.corpora, "get_corpus", without_eegmat)
    with pytest.raises(RuntimeError, match="no 'eegmat' corpus adapter"):
        checked_adapter("eegmat")
