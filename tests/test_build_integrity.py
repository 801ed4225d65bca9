"""Shard folders that must never be read wrong: parts of one build with different settings, tars no manifest
lists, hand-edited manifests and build states, planted links, malformed participants.tsv, NaN channels and
implausible rates. Each test is a fault-probe finding: it failed before the fix."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from shards.dataset import expand_urls, load_windows, read_manifest
from shards.synth import simulate
from shards.writer import build

BUILD = dict(max_samples_per_shard=20, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """3 subjects x 4 tasks x 32 s of simulated EDF+."""
    folder = tmp_path_factory.mktemp("integrity_raw")
    simulate(folder, n_subjects=3, duration_s=32.0, seed=5)
    return folder


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity_built")
    build("synth", raw, out, **BUILD)
    return out / "synth"


def _copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _cli(argv, capsys, monkeypatch) -> tuple[int, str, str]:
    from shards.__main__ import main

    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- parts of one build must share every setting --------------------------------------------------


def test_a_part_with_another_seed_split_or_window_is_refused_before_writing(raw, tmp_path, capsys, monkeypatch):
    build("synth", raw, tmp_path, part=(0, 2), **BUILD)
    folder = tmp_path / "synth"
    written = lambda: sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))  # noqa: E731
    before = written()
    with pytest.raises(ValueError, match=r"other settings .*seed: 0 vs 3.*split: \[0\.8, 0\.1, 0\.1\] vs \[0\.4, 0\.3, 0\.3\]"):
        build("synth", raw, tmp_path, part=(1, 2), seed=3, split=(0.4, 0.3, 0.3), **BUILD)
    with pytest.raises(ValueError, match=r"config\.window_s: 4\.0 vs 2\.0"):
        build("synth", raw, tmp_path, part=(1, 2), overrides={"window_s": 2.0}, **BUILD)
    assert written() == before  # nothing of part 1 was written (its lock aside)

    argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path), "--part", "1/2", "--seed", "3",
            "--max_samples_per_shard", "20", "--quiet"]
    code, _, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "part [0, 2] of a build with other settings" in err
    build("synth", raw, tmp_path, part=(1, 2), **BUILD)  # the same settings go on
    assert read_manifest(folder)["complete"]


def test_readers_and_inspect_refuse_a_folder_mixed_from_two_builds(raw, tmp_path, capsys, monkeypatch):
    build("synth", raw, tmp_path / "a", part=(0, 2), **BUILD)
    build("synth", raw, tmp_path / "b", part=(1, 2), seed=3, split=(0.4, 0.3, 0.3), **BUILD)
    mixed = tmp_path / "mixed" / "synth"
    mixed.mkdir(parents=True)
    for src in (tmp_path / "a" / "synth", tmp_path / "b" / "synth"):
        for p in src.iterdir():
            if not p.name.startswith("."):
                shutil.copy(p, mixed / p.name)
    with pytest.raises(ValueError, match="mixes parts built with different settings.*seed: 0 vs 3"):
        read_manifest(mixed)
    with pytest.raises(ValueError, match="mixes parts"):
        load_windows(mixed)
    code, out, err = _cli(["inspect", str(mixed)], capsys, monkeypatch)
    assert code == 2 and "mixes parts built with different settings" in err and "OK" not in out


def test_a_subject_in_two_splits_is_an_error(built, tmp_path):
    folder = _copy_tree(built, tmp_path / "synth")
    manifest = json.loads((folder / "manifest.json").read_text())
    recs = [r for r in manifest["recordings"] if r["samples"]]
    subject = recs[0]["subject"]
    victim = next(r for r in recs[1:] if r["subject"] == subject)
    victim["split"] = "test" if victim["split"] != "test" else "train"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"subject '{subject}' has recordings in 2 splits"):
        read_manifest(folder)


# --- readers of a folder use its manifest's list only ---------------------------------------------


def test_tars_no_manifest_lists_are_left_out_and_named_by_inspect(built, tmp_path, capsys, monkeypatch, caplog):
    from pretrain.data import resolve_corpora

    folder = _copy_tree(built, tmp_path / "out" / "synth")
    manifest = read_manifest(folder)
    first = manifest["shards"][0]["name"]
    copy = folder / f"{first[:-4]} (copy).tar"
    shutil.copy(folder / first, copy)
    (folder / "old").mkdir()
    shutil.copy(folder / first, folder / "old" / first)

    with caplog.at_level(logging.WARNING, logger="shards.dataset"):
        urls = expand_urls(folder)
    assert sorted(Path(u).name for u in urls) == sorted(s["name"] for s in manifest["shards"])
    assert "left out 2 tar(s)" in caplog.text and "(copy).tar" in caplog.text and "old/" in caplog.text
    assert len(load_windows(folder)) == manifest["totals"]["samples"]
    assert len(load_windows(str(folder / "train-*.tar"))) == manifest["by_split"]["train"]["samples"]
    (corpus,) = resolve_corpora([("", str(tmp_path / "out"), 1.0)])  # the parent folder: corpora below it
    assert len(corpus.urls) == len(manifest["shards"])

    code, out, _ = _cli(["inspect", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 1
    assert f"MISMATCH {copy}: tar on disk but not in the manifest" in out
    assert f"MISMATCH {folder / 'old' / first}: tar on disk but not in the manifest" in out

    (folder / manifest["shards"][-1]["name"]).unlink()
    with pytest.raises(FileNotFoundError, match="listed in .* manifest but missing"):
        expand_urls(folder)


# --- hand-edited files: one line naming the file ---------------------------------------------------


@pytest.mark.parametrize("content", ["[1, 2]", '{"format": "eegfm-shards/1"}', "{"])
def test_a_manifest_that_is_not_one_is_one_line_naming_it(built, tmp_path, capsys, monkeypatch, content):
    folder = _copy_tree(built, tmp_path / "synth")
    (folder / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match=f"{folder / 'manifest.json'}: not (a manifest|valid JSON)"):
        read_manifest(folder)
    code, _, err = _cli(["inspect", str(folder)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and str(folder / "manifest.json") in err


def test_a_hand_edited_build_state_with_a_valid_fingerprint_is_refused(raw, tmp_path, capsys, monkeypatch):
    build("synth", raw, tmp_path, **BUILD)
    state_path = tmp_path / "synth" / ".build-state.json"
    state = json.loads(state_path.read_text())
    del state["shards"][0]["recordings"][0]["samples"]
    state_path.write_text(json.dumps(state))
    argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path), "--max_samples_per_shard", "20", "--quiet"]
    code, _, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"{state_path}: not a build state this suite wrote" in err and "missing or mistyped samples" in err


# --- participants.tsv is read as BIDS defines it, or refused naming the line -------------------------


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    """Two subjects of 40 s, 4 EEG channels, written by mne_bids.write_raw_bids (participants.tsv replaced per test)."""
    mne_bids = pytest.importorskip("mne_bids", reason="the bids extra is not installed (pip install -e '.[bids]')")
    import mne

    root = tmp_path_factory.mktemp("bids_participants")
    rng = np.random.default_rng(0)
    info = mne.create_info(["Fp1", "Fp2", "C3", "C4"], 200.0, "eeg")
    for sub in ("01", "02"):
        raw = mne.io.RawArray(rng.standard_normal((4, 200 * 40)) * 2e-5, info, verbose="error")
        mne_bids.write_raw_bids(raw, mne_bids.BIDSPath(subject=sub, task="rest", datatype="eeg", root=root),
                                overwrite=True, verbose="error", allow_preload=True, format="EDF")
    return root


MALFORMED = {
    "ragged row": ("participant_id\tage\tsex\nsub-01\t42\nsub-02\t30\tM\n", "line 2: 2 tab-separated field(s), the header has 3"),
    "no participant_id": ("subject\tage\nsub-01\t42\nsub-02\t30\n", "line 1: the header ['subject', 'age'] has no participant_id"),
    "empty file": ("", "empty file"),
    "duplicate id": ("participant_id\tage\nsub-01\t42\nsub-02\t30\nsub-01\t43\n", "line 4: sub-01 is listed again (first on line 2)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_participants_table_stops_the_build_naming_the_line(bids_root, tmp_path, capsys, monkeypatch, case):
    text, message = MALFORMED[case]
    root = _copy_tree(bids_root, tmp_path / "bids")
    (root / "participants.tsv").write_text(text)
    argv = ["build", "bids", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"]
    code, out, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{root / 'participants.tsv'}: {message}" in err
    assert not (tmp_path / "out" / "bids" / "manifest.json").exists()


def test_bom_crlf_and_quotes_are_read_as_bids_tsv(bids_root, tmp_path):
    root = _copy_tree(bids_root, tmp_path / "bids")
    (root / "participants.tsv").write_bytes('\ufeffparticipant_id\tage\tnote\r\nsub-01\t42\t"unbalanced\r\n'
                                            'sub-02\t30\tok\r\n'.encode())
    manifest = build("bids", root, tmp_path / "out", progress=False)
    assert manifest["totals"]["skipped"] == 0 and manifest["totals"]["recordings"] == 2
    info = {w.meta["subject"]: w.meta.get("subject_info") for w in load_windows(tmp_path / "out" / "bids")}
    assert info == {"sub-01": {"age": 42, "note": '"unbalanced'}, "sub-02": {"age": 30, "note": "ok"}}


# --- NaN channels and implausible rates ---------------------------------------------------------------


def test_an_all_nan_channel_is_dropped_and_the_recording_kept(raw, tmp_path):
    import mne

    rec = mne.io.read_raw_edf(raw / "sub-01_task-sleep.edf", preload=True, verbose="error")
    dead = rec.ch_names[2]
    rec._data[2] = np.nan
    root = tmp_path / "raw"
    root.mkdir()
    rec.save(root / "night_raw.fif", verbose="error")
    manifest = build("recordings", root, tmp_path / "out", progress=False)
    assert manifest["totals"]["skipped"] == 0 and manifest["totals"]["samples"] == 3  # 32 s in 10-s windows
    assert manifest["dropped_channels"]["NaN/inf in 100% of the recording"] == {dead: 1}
    windows = load_windows(tmp_path / "out" / "recordings")
    assert all(np.isfinite(w.eeg).all() and len(w.meta["channels"]) == 18 for w in windows)


def test_an_implausible_build_rate_is_refused(raw, tmp_path, capsys, monkeypatch):
    argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path), "--sfreq", "1e12", "--quiet"]
    code, _, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert "sampling rate 1e+12 Hz as PreprocessConfig.sfreq (--sfreq) is implausible for EEG" in err


# --- no write through a planted link --------------------------------------------------------------------


@pytest.mark.parametrize("name", [".build.lock", ".build-state.json", "manifest.json"])
def test_a_planted_link_in_the_build_folder_is_refused_and_its_target_untouched(raw, tmp_path, capsys, monkeypatch,
                                                                                 name):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    folder = tmp_path / "out" / "synth"
    folder.mkdir(parents=True)
    (folder / name).symlink_to(target)
    argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path / "out"), "--max_samples_per_shard", "20",
            "--quiet"]
    code, _, err = _cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"{folder / name} is a symbolic link" in err
    assert target.read_text() == "keep me"


def test_a_build_by_an_earlier_writer_revision_is_not_resumed_or_reused(raw, tmp_path, monkeypatch):
    import shards.writer as writer

    monkeypatch.setattr(writer, "WRITER_REVISION", 1)
    build("synth", raw, tmp_path, **BUILD)
    before = {p.name: p.read_bytes() for p in (tmp_path / "synth").iterdir() if p.is_file()}
    monkeypatch.undo()
    with pytest.raises(writer.BuildMismatchError, match=rf"revision 1 of the shard writer.*\(revision {writer.WRITER_REVISION}\); delete"):
        build("synth", raw, tmp_path, **BUILD)
    assert {p.name: p.read_bytes() for p in (tmp_path / "synth").iterdir() if p.is_file()} == before
    # A build state from before revisions were recorded counts as revision 1.
    state = tmp_path / "synth" / ".build-state.json"
    data = json.loads(state.read_text())
    data["params"].pop("writer_revision")
    state.write_text(json.dumps(data))
    with pytest.raises(writer.BuildMismatchError, match="revision 1 of the shard writer"):
        build("synth", raw, tmp_path, **BUILD)
