"""shards.writer: round trip, determinism, kill-and-resume, partitions, splits, bad input, real data sets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest

from shards.corpora import get_corpus
from shards.corpora.base import Adapter, LabelError, Loaded, Recording
from shards.dataset import load_windows, read_manifest
from shards.preprocess import Segment, cut_windows, preprocess_raw
from shards.readers import read_raw
from shards.synth import simulate
from shards.sample import encode_sample, npy_bytes
from shards.shardfile import OpenShard
from shards.shardfile import tar_header
from shards.splits import assign_split
from shards.writer import BuildMismatchError, build, process_recording, resolve_config

REPO = Path(__file__).resolve().parents[1]


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    """3 subjects x 4 tasks x 64 s: 12 recordings, for the builds this module repeats."""
    folder = tmp_path_factory.mktemp("small_raw")
    simulate(folder, n_subjects=3, duration_s=64.0, seed=1)
    return folder


# --- round trip -------------------------------------------------------------------------------------


def test_round_trip_equals_preprocessed_signal(synth_raw, synth_shards):
    """raw -> shard -> array equals preprocess_raw + cut_windows of the same file (float16 precision)."""
    adapter = get_corpus("synth")
    cfg = resolve_config(adapter, None, None)
    windows = load_windows(synth_shards)
    by_rec: dict[str, list] = {}
    for w in windows:
        by_rec.setdefault(w.meta["recording"], []).append(w)
    checked = 0
    for rec in adapter.find(synth_raw)[:8]:  # two subjects x four tasks
        loaded = adapter.load(rec)
        signal = preprocess_raw(loaded.raw, cfg)
        ref, _ = cut_windows(signal, loaded.segments, cfg)
        got = sorted(by_rec[rec.recording], key=lambda w: w.meta["onset_s"])
        assert len(got) == len(ref) > 0
        for g, r in zip(got, ref):
            data = np.asarray(getattr(r, "data", None) if hasattr(r, "data") else r.eeg)
            assert g.eeg.shape == data.shape == (19, int(cfg.window_s * cfg.sfreq))
            np.testing.assert_allclose(g.eeg, data, rtol=2**-10, atol=1e-4)
            assert g.meta["channels"] == list(signal.channels)
            assert g.meta["onset_s"] == pytest.approx(r.onset_s)
            assert g.meta["label"] == r.label and g.meta["label_name"] == r.label_name
            assert g.meta["task"] == rec.task and g.meta["subject"] == rec.subject
            assert g.meta["source"] == rec.source and g.meta["sfreq"] == cfg.sfreq
            checked += 1
        # Every labelled window lies inside an annotation with that label.
        for g in got:
            seg = [s for s in loaded.segments if s.onset_s - 1e-6 <= g.meta["onset_s"]
                   and g.meta["onset_s"] + g.meta["duration_s"] <= s.onset_s + s.duration_s + 1e-6]
            assert seg and seg[0].label_name == g.meta["label_name"]
    assert checked > 50


def test_sample_contract(synth_shards):
    """Keys, members, dtypes, EOG/ECG dropped, channel names canonical; manifest counts agree."""
    m = read_manifest(synth_shards)
    assert m["complete"] and m["totals"]["skipped"] == 0
    n = 0
    for tar_path in sorted(synth_shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert all(mm.mtime == 0 and mm.uname == "eegfm" for mm in members)
            names = [mm.name for mm in members]
            assert len(names) % 2 == 0
            for a, b in zip(names[::2], names[1::2]):
                key = a.split(".", 1)[0]
                assert (a, b) == (f"{key}.eeg.npy", f"{key}.json")
                corpus, rec, win = key.split("__")
                assert corpus == "synth" and len(win) == 6 and all(c.isalnum() or c in "_-" for c in key)
                eeg = np.load(io.BytesIO(tar.extractfile(a).read()), allow_pickle=False)
                meta = json.loads(tar.extractfile(b).read())
                assert eeg.dtype == np.float16 and eeg.shape == (19, 800)
                assert set(meta) == {"corpus", "recording", "subject", "session", "channels", "sfreq", "onset_s",
                                     "duration_s", "task", "label", "label_name", "source"}
                assert meta["channels"][:3] == ["FP1", "FP2", "F7"] and "T7" in meta["channels"]
                assert meta["recording"] == rec
                n += 1
        assert n > 0
    assert n == m["totals"]["samples"] == sum(s["samples"] for s in m["shards"])
    assert set(m["dropped_channels"]) and sum(sum(v.values()) for v in m["dropped_channels"].values()) == 2 * 24
    assert {t for t in m["label_counts"]} >= {"left_hand", "right_hand", "seizure", "background", "calm", "stress", "W", "N3"}


def test_split_is_subject_wise_and_recorded(synth_shards):
    m = read_manifest(synth_shards)
    subj = m["splits"]["subjects"]
    assert set(subj.values()) <= {"train", "val", "test"}
    for rec in m["recordings"]:
        assert rec["split"] == subj[rec["subject"]]
        assert m["splits"]["recordings"][rec["recording"]] == rec["split"]
    for s in m["shards"]:
        assert s["name"].startswith(s["split"] + "-")
        for r in s["recordings"]:
            assert m["splits"]["recordings"][r] == s["split"]


def test_assign_split_fractions_and_official_split():
    recs = [Recording("c", f"r{i}", f"s{i}", "", f"r{i}.edf", Path(f"/r{i}.edf"), None, {}) for i in range(4000)]
    counts = Counter(assign_split(r, (0.7, 0.2, 0.1), seed=3) for r in recs)
    assert abs(counts["train"] / 4000 - 0.7) < 0.03 and abs(counts["test"] / 4000 - 0.1) < 0.02
    # Deterministic, and the seed changes the assignment.
    assert [assign_split(r, (0.7, 0.2, 0.1), 3) for r in recs[:50]] == [assign_split(r, (0.7, 0.2, 0.1), 3) for r in recs[:50]]
    assert [assign_split(r, (0.5, 0.25, 0.25), 3) for r in recs[:50]] != [assign_split(r, (0.5, 0.25, 0.25), 4) for r in recs[:50]]
    official = Recording("c", "x", "s0", "", "x.edf", Path("/x.edf"), None, {"split": "eval"})
    assert assign_split(official, (1.0, 0.0, 0.0), 0) == "test"
    with pytest.raises(ValueError, match="x.edf.*holdout"):
        assign_split(Recording("c", "x", "s0", "", "x.edf", Path("/x.edf"), None, {"split": "holdout"}), (1, 0, 0), 0)


# --- determinism ------------------------------------------------------------------------------------


def test_rebuild_is_byte_identical_also_with_two_workers(small_raw, tmp_path):
    m1 = build("synth", small_raw, tmp_path / "a", max_samples_per_shard=30, progress=False)
    build("synth", small_raw, tmp_path / "b", max_samples_per_shard=30, progress=False)
    m3 = build("synth", small_raw, tmp_path / "c", max_samples_per_shard=30, workers=2, progress=False)
    a, b, c = (tar_bytes(tmp_path / x / "synth") for x in "abc")
    assert len(a) >= 4 and a == b == c
    assert m1 == m3
    texts = {(tmp_path / x / "synth" / "manifest.json").read_text() for x in "abc"}
    assert len(texts) == 1
    assert not list((tmp_path / "a" / "synth").glob(".*.tmp-*"))  # no temporary files left behind


@pytest.mark.parametrize("name_len", [12, 99, 100, 101, 180])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 1600, 10**9])
def test_tar_header_equals_tarfile_gnu_header(name_len, size):
    name = ("synth__rec-" + "x" * 200)[: name_len - 5] + ".json"
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o444, "eegfm", "eegfm"
    ref = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    got = tar_header(name, size)
    assert got == ref
    assert len(got) == (512 if name_len <= 100 else 512 * (2 + (name_len + 1 + 511) // 512))  # GNU LongLink


@pytest.mark.parametrize("shape", [(1, 800), (23, 800), (64, 1), (3, 0)])
def test_npy_bytes_equal_np_save_and_load_back(shape):
    rng = np.random.default_rng(0)
    full = rng.normal(size=(shape[0], shape[1] + 7)).astype(np.float16)
    eeg = full[:, 3: 3 + shape[1]]  # a non-contiguous view, as the builder passes
    ref = io.BytesIO()
    np.save(ref, np.ascontiguousarray(eeg), allow_pickle=False)
    got = npy_bytes(eeg)
    assert got == ref.getvalue()
    back = np.load(io.BytesIO(got))
    assert back.dtype == np.float16 and back.shape == shape and np.array_equal(back, eeg)
    with pytest.raises(TypeError, match="float16"):
        npy_bytes(eeg.astype(np.float32))


def test_fast_encoding_equals_webdataset_tarwriter(small_raw, tmp_path):
    """The builder's hand-made members are byte for byte what webdataset's TarWriter (GNU tar) writes
    for the canonical sample (np.save + sorted compact JSON), including the archive's end padding."""
    import webdataset as wds

    adapter = get_corpus("synth")
    cfg = resolve_config(adapter, None, None)
    recs = adapter.find(small_raw)[:2]
    results = [process_recording(adapter, rec, cfg, "train") for rec in recs]
    shard = OpenShard(tmp_path, "train-000000.tar", "train")
    for r in results:
        shard.add(r)
    info = shard.commit()
    assert info["samples"] == sum(r.n_samples for r in results) > 0

    ref = io.BytesIO()
    w = wds.TarWriter(ref, user="eegfm", group="eegfm", mode=0o444, mtime=0, encoder=False)
    w.tarstream.format = tarfile.GNU_FORMAT
    n = 0
    for rec in recs:
        loaded = adapter.load(rec)
        signal = preprocess_raw(loaded.raw, cfg, source=rec.source, channel_map=getattr(adapter, "channel_map", None))
        windows, _ = cut_windows(signal, loaded.segments, cfg)
        for k, win in enumerate(windows):
            meta = {"corpus": rec.corpus, "recording": rec.recording, "subject": rec.subject, "session": rec.session,
                    "channels": list(signal.channels), "sfreq": float(signal.sfreq), "onset_s": round(win.onset_s, 6),
                    "duration_s": round(win.eeg.shape[1] / signal.sfreq, 6), "task": rec.task,
                    "label": None if win.label is None else int(win.label), "label_name": win.label_name,
                    "source": rec.source}
            w.write(encode_sample(f"synth__{rec.recording}__{k:06d}", win.eeg.astype(np.float16), meta))
            n += 1
    w.close()
    assert n == info["samples"]
    got = (tmp_path / "train-000000.tar").read_bytes()
    assert got == ref.getvalue()
    assert len(got) % tarfile.RECORDSIZE == 0
    with tarfile.open(tmp_path / "train-000000.tar") as tf:
        names = tf.getnames()
    assert len(names) == 2 * n and names[0].endswith(".eeg.npy") and names[1].endswith(".json")


def test_recording_result_is_one_block_of_whole_members(small_raw):
    adapter = get_corpus("synth")
    rec = adapter.find(small_raw)[0]
    r = process_recording(adapter, rec, resolve_config(adapter, None, None), "val")
    blob = b"".join(r.tar)
    assert len(blob) == r.nbytes and len(blob) % 512 == 0 and r.n_samples > 0
    with tarfile.open(fileobj=io.BytesIO(blob + b"\0" * 1024)) as tf:
        assert len(tf.getnames()) == 2 * r.n_samples
    assert r.summary["samples"] == r.n_samples and r.summary["split"] == "val"
    bad = Recording(corpus="synth", recording="gone", subject="s", session="0", source="gone.edf",
                    path=small_raw / "gone.edf", task=None, extra={})
    r = process_recording(adapter, bad, resolve_config(adapter, None, None), "train")
    assert r.tar == [] and r.n_samples == 0 and "gone.edf" in r.summary["skipped"]


def test_manifest_is_line_per_item_json_and_state_one_line(small_raw, tmp_path):
    build("synth", small_raw, tmp_path, max_samples_per_shard=30, progress=False)
    text = (tmp_path / "synth" / "manifest.json").read_text()
    m = json.loads(text)
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and text.endswith("}\n")
    # each recording's entry on its own line, so the manifest diffs and greps per recording
    assert sum('"recording": "' in ln and ln.startswith("  {") for ln in lines) == len(m["recordings"]) == 12
    state = (tmp_path / "synth" / ".build-state.json").read_text()
    assert state.count("\n") == 1 and json.loads(state)["complete"] is True


def test_rebuild_over_finished_build_is_a_no_op(small_raw, tmp_path):
    build("synth", small_raw, tmp_path, max_samples_per_shard=30, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "synth").glob("*.tar")}
    build("synth", small_raw, tmp_path, max_samples_per_shard=30, progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "synth").glob("*.tar")}
    with pytest.raises(BuildMismatchError, match="different parameters"):
        build("synth", small_raw, tmp_path, max_samples_per_shard=31, progress=False)


# --- kill and resume --------------------------------------------------------------------------------


def test_killed_build_resumes_without_loss_or_duplicates(small_raw, tmp_path):
    code = ("import sys; from shards.writer import build; "
            "build('synth', sys.argv[1], sys.argv[2], max_samples_per_shard=20, progress=False)")
    env = {**os.environ, "EEGFM_SHARDS_CRASH_AFTER": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(small_raw), str(tmp_path / "killed")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr  # died on purpose right after the third committed shard
    folder = tmp_path / "killed" / "synth"
    state = json.loads((folder / ".build-state.json").read_text())
    assert len(state["shards"]) == 3 and not state["complete"]
    assert not (folder / "manifest.json").exists()
    survivors = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.tar")}
    assert len(survivors) == 3
    # A half-written shard left by the killed process (other splits' open shards look like this).
    (folder / ".train-000009.tar.tmp-99999").write_bytes(b"partial")

    m = build("synth", small_raw, tmp_path / "killed", max_samples_per_shard=20, progress=False)
    ref = build("synth", small_raw, tmp_path / "ref", max_samples_per_shard=20, progress=False)
    assert tar_bytes(folder) == tar_bytes(tmp_path / "ref" / "synth")
    assert m == ref
    for name, stamp in survivors.items():  # shards written before the kill were not rewritten
        p = folder / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    assert not list(folder.glob(".*.tmp-*"))
    keys = [w.meta["__key__"] for w in load_windows(folder)]
    assert len(keys) == len(set(keys)) == m["totals"]["samples"]
    assert {w.meta["recording"] for w in load_windows(folder)} == {r.recording for r in get_corpus("synth").find(small_raw)}


# --- parts ------------------------------------------------------------------------------------------


def test_parts_partition_recordings_and_merge(small_raw, tmp_path):
    whole = build("synth", small_raw, tmp_path / "whole", max_samples_per_shard=30, progress=False)
    for i in range(3):
        build("synth", small_raw, tmp_path / "parts", part=(i, 3), max_samples_per_shard=30, progress=False)
    folder = tmp_path / "parts" / "synth"
    assert sorted(p.name for p in folder.glob("manifest-part-*.json")) == [f"manifest-part-{i:03d}-of-003.json" for i in range(3)]
    assert all(len(p.name.split("-")) == 3 for p in folder.glob("*.tar"))  # {split}-{part}-{shard}.tar
    merged = read_manifest(folder)
    assert merged["complete"] and merged["parts"] == [0, 1, 2]
    for key in ("label_counts", "drops", "recordings_by_label", "splits"):
        assert merged[key] == whole[key], key
    assert merged["totals"]["samples"] == whole["totals"]["samples"]
    per_part = [json.loads((folder / f"manifest-part-{i:03d}-of-003.json").read_text())["totals"]["recordings"] for i in range(3)]
    assert sum(per_part) == 12 and all(n > 0 for n in per_part)
    a = {w.meta["__key__"]: w.eeg for w in load_windows(folder)}
    b = {w.meta["__key__"]: w.eeg for w in load_windows(tmp_path / "whole")}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_overrides_reach_preprocessing_and_manifest(small_raw, tmp_path):
    m = build("synth", small_raw, tmp_path, overrides={"window_s": 8.0, "stride_s": 8.0}, progress=False)
    assert m["build"]["config"]["window_s"] == 8.0
    assert m["build"]["config"]["notch"] == 50.0  # the corpus's mains frequency
    w = load_windows(tmp_path / "synth")[0]
    assert w.eeg.shape == (19, 1600)
    with pytest.raises(ValueError, match="window_length"):
        build("synth", small_raw, tmp_path / "x", overrides={"window_length": 8.0}, progress=False)


# --- bad input --------------------------------------------------------------------------------------


class FolderWithSidecars(Adapter):
    """Test adapter: every file in a folder is a recording (any extension) plus one that is missing;
    ``NAME.labels.txt`` sidecars hold ``onset,duration,label`` lines."""

    name = "badfolder"
    task = "seizure"
    label_names = ("background", "seizure")
    mains_hz = 50.0

    def find(self, root):
        paths = sorted(p for p in Path(root).iterdir() if not p.name.endswith(".labels.txt"))
        paths.append(Path(root) / "vanished.edf")
        return [Recording(self.name, p.name.replace(".", "_"), p.stem, "", p.name, p, self.task, {}) for p in paths]

    def load(self, rec):
        raw = read_raw(rec.path)
        sidecar = rec.path.with_name(rec.path.stem + ".labels.txt")
        if not sidecar.exists():
            return Loaded(raw, None)
        segments = []
        for lineno, line in enumerate(sidecar.read_text().splitlines(), 1):
            try:
                onset, dur, name = line.split(",")
                segments.append(Segment(float(onset), float(dur), self.label_names.index(name), name))
            except ValueError:
                raise LabelError(sidecar, f"line {lineno}: {line[:40]!r} is not 'onset,duration,label'") from None
        return Loaded(raw, segments)


def _edf(path: Path, ch_names, ch_types, sfreq=256.0, seconds=30.0, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((len(ch_names), int(sfreq * seconds))) * 20e-6
    raw = mne.io.RawArray(data, mne.create_info(ch_names, sfreq, ch_types), verbose="error")
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")


EEG3 = (["Fz", "C3", "C4"], ["eeg"] * 3)


def test_bad_inputs_are_skipped_with_reasons_and_do_not_stop_the_build(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _edf(raw / "good1.edf", *EEG3, seed=1)
    (raw / "good1.labels.txt").write_text("0,16,background\n16,14,seizure\n")
    _edf(raw / "good2.edf", *EEG3, seed=2)
    _edf(raw / "truncated.edf", *EEG3, seed=3)
    blob = (raw / "truncated.edf").read_bytes()
    (raw / "truncated.edf").write_bytes(blob[: len(blob) // 3])
    (raw / "garbage.edf").write_bytes(np.random.default_rng(0).bytes(5000))
    (raw / "notes.xyz").write_text("not EEG at all\n")
    _edf(raw / "only_eog_ecg.edf", ["EOG left", "ECG"], ["eog", "ecg"])
    _edf(raw / "bad_sfreq.edf", *EEG3)
    blob = bytearray((raw / "bad_sfreq.edf").read_bytes())
    blob[244:252] = b"1000    "  # data-record duration field: 1000 s per record -> ~0.25 Hz
    (raw / "bad_sfreq.edf").write_bytes(bytes(blob))
    _edf(raw / "bad_labels.edf", *EEG3, seed=4)
    (raw / "bad_labels.labels.txt").write_text("0,16,background\nseizure starts here\n")

    m = build(FolderWithSidecars(), raw, tmp_path / "out", progress=False)
    skipped = {s["recording"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"truncated_edf", "garbage_edf", "notes_xyz", "only_eog_ecg_edf", "bad_sfreq_edf",
                            "bad_labels_edf", "vanished_edf"}
    for rec, reason in skipped.items():  # every reason names the file
        stem = rec.rsplit("_", 1)[0]
        assert stem in reason, (rec, reason)
    assert "does not exist" in skipped["vanished_edf"] or "not found" in skipped["vanished_edf"]
    assert "unknown format" in skipped["notes_xyz"]
    assert "sampling rate" in skipped["bad_sfreq_edf"]
    assert "line 2" in skipped["bad_labels_edf"]
    assert "EEG" in skipped["only_eog_ecg_edf"] or "channel" in skipped["only_eog_ecg_edf"]
    assert "truncat" in skipped["truncated_edf"].lower() or "record" in skipped["truncated_edf"]
    # The good recordings were sharded normally.
    assert m["totals"]["recordings"] == 2 and m["totals"]["samples"] > 0
    assert m["recordings_by_label"].get("background") == 1
    assert {w.meta["recording"] for w in load_windows(tmp_path / "out" / "badfolder")} == {"good1_edf", "good2_edf"}


def test_bad_input_never_damages_written_shards(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        _edf(raw / f"a{k}.edf", *EEG3, seed=k)
    m1 = build(FolderWithSidecars(), raw, tmp_path / "out", max_samples_per_shard=1, progress=False)
    before = tar_bytes(tmp_path / "out" / "badfolder")
    assert len(before) == 3 and m1["totals"]["skipped"] == 1  # vanished.edf
    # A corrupt file added later goes into a fresh build; the finished shards are untouched.
    (raw / "z_corrupt.edf").write_bytes(b"0       " + b"\x00" * 300)
    m2 = build(FolderWithSidecars(), raw, tmp_path / "out2", max_samples_per_shard=1, progress=False)
    assert tar_bytes(tmp_path / "out" / "badfolder") == before
    assert tar_bytes(tmp_path / "out2" / "badfolder") == before
    assert m2["totals"]["skipped"] == 2


# --- real data sets ---------------------------------------------------------------------------------


def _label_recordings(m) -> dict[str, int]:
    return m["recordings_by_label"]


def test_bonn_builds_with_right_label_counts(shared_data, tmp_path):
    m = build("bonn", shared_data / "seizure" / "bonn", tmp_path, workers=1, progress=False)
    assert m["totals"]["skipped"] == 0 and m["totals"]["recordings"] == 500
    assert _label_recordings(m) == {"non_seizure": 400, "seizure": 100}
    assert m["label_counts"]["seizure"] > 0
    assert m["channel_sets"][0]["recordings"] == 500
    # Each 23.6-s segment gives the same number of windows; no window straddles recordings.
    per_rec = Counter(w.meta["recording"] for w in load_windows(tmp_path / "bonn"))
    assert len(per_rec) == 500 and len(set(per_rec.values())) == 1


def test_eegmmidb_builds(shared_data, tmp_path):
    m = build("eegmmidb", shared_data / "motor_imagery" / "eegmmidb", tmp_path, workers=2, progress=False)
    assert m["totals"]["skipped"] == 0 and m["totals"]["recordings"] == 10
    assert [len(cs["channels"]) for cs in m["channel_sets"]] == [64]
    # Runs 3-11 and 13: every run has rest (T0); left/right fist in runs 3, 4, 7, 8, 11; fists/feet in 5, 6, 9, 10, 13.
    assert _label_recordings(m) == {"rest": 10, "left_fist": 5, "right_fist": 5, "both_fists": 5, "both_feet": 5}
    assert all(v > 20 for v in m["label_counts"].values())
    assert len(m["splits"]["subjects"]) == 1  # one subject -> one split, never straddling


def test_mental_stress_builds(shared_data, tmp_path):
    m = build("mental_stress", shared_data / "emotion" / "mental_stress_emotiv", tmp_path, workers=2, progress=False)
    # relaxing_music/recording_03.edf is byte for byte horror_video/recording_05.edf: one signal, two labels
    assert m["totals"]["skipped"] == 1 and m["totals"]["recordings"] == 31
    assert m["duplicates"] == [{"recording": "relaxing_music_03", "source": "relaxing_music/recording_03.edf",
                                "duplicate_of": "horror_video_05", "duplicate_of_source": "horror_video/recording_05.edf"}]
    assert m["skipped"][0]["reason"].endswith("sharded once, as horror_video_05, whose labels it keeps (stress x6; "
                                              "this copy's: calm x6): check which is right")
    assert [cs["channels"] for cs in m["channel_sets"]] == [["AF3", "T7", "PZ", "T8", "AF4"]]
    assert _label_recordings(m) == {"calm": 14, "stress": 17}
    # The ~25 Emotiv housekeeping channels (counters, contact quality, time stamps) are dropped and reported.
    assert sum(len(v) for v in m["dropped_channels"].values()) >= 20


def test_dreams_builds(shared_data, tmp_path):
    m = build("dreams", shared_data / "sleep" / "dreams_spindles", tmp_path, workers=2, progress=False)
    assert m["totals"]["skipped"] == 0 and m["totals"]["recordings"] == 6
    assert m["totals"]["hours"] == pytest.approx(3.0)  # 6 x 30 min, every 5-s epoch kept
    assert set(m["label_counts"]) >= {"W", "N1", "N2", "N3"}
    assert sum(m["label_counts"].values()) == m["totals"]["samples"]


def test_unlabeled_recordings_build(shared_data, tmp_path):
    m = build("recordings", shared_data / "unlabeled", tmp_path, workers=2, progress=False)
    assert m["totals"]["recordings"] == 5 and m["totals"]["samples"] > 0
    assert set(m["label_counts"]) == {"unlabeled"}
    # test.bdf labels its electrodes A1..A16 (BioSemi ABC layout, cap-dependent positions): no usable EEG.
    assert [s["source"] for s in m["skipped"]] == ["eeglab/test.bdf"]
    assert "no usable EEG channel" in m["skipped"][0]["reason"] and "test.bdf" in m["skipped"][0]["reason"]
    assert m["dropped_channels"]


def test_concurrent_build_of_the_same_part_is_refused(small_raw, tmp_path):
    from shards.buildlock import acquire

    (tmp_path / "synth").mkdir()
    held = acquire(tmp_path / "synth" / ".build.lock")
    try:
        with pytest.raises(RuntimeError, match="another build of this part is running"):
            build("synth", small_raw, tmp_path, progress=False)
    finally:
        held.close()
    assert build("synth", small_raw, tmp_path, progress=False)["complete"]
