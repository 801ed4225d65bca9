"""A recording found twice in one build (an export next to its original) is sharded once, with a notice in the
manifest and on the console; recordings that only share duration, rate and montage are both kept.

Real EEGMMIDB runs from ../shared/data (skipped when absent): S001R04.edf with its EDF and BrainVision exports
(``mne.export``: other digital ranges, other channel spellings, another file format) in one folder, and S001R08,
a different run of the same 64 channels, 160 Hz and 125 s.
"""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

from shards.manifest import read_manifest
from shards.twins import ATOL, ContentProbe, TwinIndex
from shards.writer import build


@pytest.fixture()
def folder_with_exports(shared_data, tmp_path):
    s001 = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    raw_dir = tmp_path / "raw" / "S001"
    raw_dir.mkdir(parents=True)
    for run in ("S001R04.edf", "S001R08.edf"):
        (raw_dir / run).symlink_to(s001 / run)
    raw = mne.io.read_raw_edf(s001 / "S001R04.edf", preload=True, verbose="error")
    raw.rename_channels(lambda name: name.strip("."))  # an export spells the channels its own way
    mne.export.export_raw(raw_dir / "S001R04_export.edf", raw, fmt="edf", verbose="error")
    mne.export.export_raw(raw_dir / "S001R04_copy.vhdr", raw, fmt="brainvision", verbose="error")
    return tmp_path / "raw"


def test_an_export_next_to_its_original_is_sharded_once(folder_with_exports, tmp_path, capsys):
    manifest = build("recordings", folder_with_exports, tmp_path / "shards", split=(1.0, 0.0, 0.0), progress=True)
    err = capsys.readouterr().err
    kept = {r["recording"] for r in manifest["recordings"] if not r["skipped"]}
    dups = manifest["duplicates"]
    # ids in order: S001R04_copy, S001R04_edf, S001R04_export, S001R08_edf -> the first of the three twins stays
    assert len(kept) == 2 and "S001_S001R08_edf" in kept, manifest["recordings"]
    (first,) = kept - {"S001_S001R08_edf"}
    assert sorted(d["recording"] for d in dups) == sorted({"S001_S001R04_copy_vhdr", "S001_S001R04_edf",
                                                           "S001_S001R04_export_edf"} - {first})
    assert all(d["duplicate_of"] == first for d in dups)
    assert {d["source"] for d in dups} | {dups[0]["duplicate_of_source"]} == {
        "S001/S001R04.edf", "S001/S001R04_export.edf", "S001/S001R04_copy.vhdr"}
    n = {r["recording"]: r["samples"] for r in manifest["recordings"]}
    assert n[first] >= 8 and n["S001_S001R08_edf"] >= 8
    reasons = {s["recording"]: s["reason"] for s in manifest["skipped"]}
    for d in dups:
        assert reasons[d["recording"]] == (f"duplicate of {d['duplicate_of_source']} (recording {first}): the same "
                                           f"{n[first]} windows of 64 channels; sharded once, as {first}")
        assert f"skipped {d['source']}: duplicate of {d['duplicate_of_source']}" in err
        assert n[d["recording"]] == 0
    # the windows of S001R04 are in the shards once
    assert manifest["totals"]["samples"] == n[first] + n["S001_S001R08_edf"] and manifest["totals"]["recordings"] == 2
    assert read_manifest(tmp_path / "shards" / "recordings")["duplicates"] == dups
    on_disk = json.loads((tmp_path / "shards" / "recordings" / "manifest.json").read_text())
    assert on_disk["duplicates"] == dups


def test_the_twin_check_resumes_and_does_not_depend_on_workers(folder_with_exports, tmp_path):
    one = build("recordings", folder_with_exports, tmp_path / "a", split=(1.0, 0.0, 0.0), progress=False,
                max_samples_per_shard=1)
    two = build("recordings", folder_with_exports, tmp_path / "b", split=(1.0, 0.0, 0.0), progress=False, workers=2,
                max_samples_per_shard=1)
    assert one["duplicates"] == two["duplicates"] and one["shards"] == two["shards"]
    # a build killed after its first shard (the original's) resumes and still knows the original
    import os
    import subprocess
    import sys

    code = ("import sys; from shards.writer import build; "
            f"build('recordings', {str(folder_with_exports)!r}, {str(tmp_path / 'c')!r}, split=(1.0, 0.0, 0.0), "
            "progress=False, max_samples_per_shard=1)")
    env = {**os.environ, "EEGFM_SHARDS_CRASH_AFTER": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 17
    resumed = build("recordings", folder_with_exports, tmp_path / "c", split=(1.0, 0.0, 0.0), progress=False,
                    max_samples_per_shard=1)
    assert resumed["duplicates"] == one["duplicates"] and resumed["totals"] == one["totals"]


def test_runs_of_one_montage_and_length_are_not_twins(shared_data):
    """The probe values of two different runs (same 64 channels, 160 Hz, 125 s) are far apart; those of a run and
    its EDF export (re-quantised to 16 bits over another range) agree within the rounding."""
    from shards.preprocess import PreprocessConfig, cut_windows, preprocess_raw
    from shards.readers import read_raw

    s001 = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    cfg = PreprocessConfig(window_s=4.0, stride_s=4.0, max_abs_uv=None)  # every window: the same layout

    def content(raw):
        sig = preprocess_raw(raw, cfg)
        windows, _ = cut_windows(sig, None, cfg)
        probe = ContentProbe(sig.channels, sig.sfreq)
        for w in windows:
            probe.add(w.eeg.astype(np.float16), w.onset_s)
        return probe.result()

    r04, r08 = content(read_raw(s001 / "S001R04.edf")), content(read_raw(s001 / "S001R08.edf"))
    assert r04["key"] == r08["key"]  # same channels, rate, windows: what duration/rate/montage alone would flag
    gap = np.abs(np.array(r04["probe"]) - np.array(r08["probe"]))
    assert np.median(gap) > 10 * ATOL  # 10 µV
    index = TwinIndex()
    index.add({"recording": "r04", "source": "S001R04.edf", "skipped": None, "content": r04})
    assert index.twin_of({"skipped": None, "content": r08}) is None
    assert index.twin_of({"skipped": None, "content": r04})["recording"] == "r04"
