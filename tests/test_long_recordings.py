"""Long recordings in bounded memory: the build and predict read, preprocess and window them in blocks
(``shards.streaming``). A 10-hour 19-channel EDF (273 MB) took 3.5 GB to build and 3.7 GB to predict when
recordings were held whole; the slow test measures the whole-process peak on that file, the default ones
prove the blocks give the whole-recording result and that peak memory does not grow with the length."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import write_long_edf
from shards.dataset import load_windows
from shards.preprocess import PreprocessConfig, cut_windows, preprocess_raw
from shards.readers import read_raw
from shards.streaming import StreamedSignal, iter_windows, preprocess_recording, preprocess_stream
from shards.writer import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_edf(tmp_path_factory) -> Path:
    """40 minutes of 19 channels at 200 Hz: 73 MB in float64, above the size read_raw preloads."""
    folder = tmp_path_factory.mktemp("long_raw")
    return write_long_edf(folder / "rec.edf", hours=40 / 60)


def test_long_recordings_are_left_on_disk_and_streamed(long_edf):
    raw = read_raw(long_edf)
    assert not raw.preload
    assert isinstance(preprocess_recording(raw, PreprocessConfig()), StreamedSignal)
    assert read_raw(long_edf, preload=True).preload


def test_blocks_give_the_whole_recording_result(long_edf):
    """Equal to float rounding (1e-4 of 100 µV) away from the recording's two ends, where the 0.1-Hz high-pass
    edge response depends on each path's padding; the same windows, drops and channels throughout."""
    cfg = PreprocessConfig(window_s=10.0)
    whole = preprocess_raw(read_raw(long_edf, preload=True), cfg)
    streamed = preprocess_stream(read_raw(long_edf), cfg, block_s=120.0)
    assert streamed.channels == whole.channels and streamed.n_samples == whole.data.shape[1]
    data = np.concatenate([block for _, block in streamed.blocks()], axis=1)
    edge = int(20 * cfg.sfreq)
    assert np.abs(data - whole.data)[:, edge:-edge].max() < 1e-4
    assert np.abs(data - whole.data).max() < 0.05  # 5 µV at the very first samples
    a, drops_a = cut_windows(whole, None, cfg)
    it, drops_b = iter_windows(streamed, None, cfg)
    b = list(it)
    assert drops_a == drops_b and [w.onset_s for w in a] == [w.onset_s for w in b] and len(a) == 240
    assert max(np.abs(x.eeg - y.eeg)[:, :].max() for x, y in zip(a[2:-2], b[2:-2])) < 1e-4


def _peak_traced_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_build_memory_does_not_grow_with_the_recording_length(tmp_path, long_edf):
    """numpy's allocations (every sample array) are traced: the streamed build's peak is the same for 40 and 120
    minutes, and far below the whole-recording path's for 40."""
    long = write_long_edf((tmp_path / "raw120").mkdir() or tmp_path / "raw120" / "rec.edf", hours=2.0)
    (tmp_path / "raw40").mkdir()
    os.symlink(long_edf, tmp_path / "raw40" / "rec.edf")
    peak40 = _peak_traced_mib(lambda: build("recordings", tmp_path / "raw40", tmp_path / "out40", progress=False))
    peak120 = _peak_traced_mib(lambda: build("recordings", tmp_path / "raw120", tmp_path / "out120", progress=False))
    float64_mib = 19 * 200 * 7200 * 8 / 2**20  # 2 hours held whole: 209 MiB before any copy
    assert peak120 < 1.25 * peak40 and peak120 < 0.5 * float64_mib, (peak40, peak120)
    assert not list((tmp_path / "out120" / "recordings").glob(".spool*"))  # spooled samples moved into the shard
    assert len(load_windows(tmp_path / "out120" / "recordings")) == 720


def test_a_streamed_build_equals_the_whole_one_to_float16_rounding(tmp_path, long_edf, monkeypatch):
    (tmp_path / "raw").mkdir()
    os.symlink(long_edf, tmp_path / "raw" / "rec.edf")
    streamed = build("recordings", tmp_path / "raw", tmp_path / "streamed", progress=False)
    import shards.readers.dispatch
    import shards.streaming

    monkeypatch.setattr(shards.readers.dispatch, "PRELOAD_MAX_BYTES", 2**40)
    monkeypatch.setattr(shards.streaming, "STREAM_BYTES", 2**40)
    whole = build("recordings", tmp_path / "raw", tmp_path / "whole", progress=False)
    for key in ("totals", "drops", "channel_sets", "label_counts", "splits"):
        assert streamed[key] == whole[key], key
    a = load_windows(tmp_path / "streamed" / "recordings")
    b = load_windows(tmp_path / "whole" / "recordings")
    assert [w.meta for w in a] == [w.meta for w in b]
    # 99% of the float16 samples are the same bits; away from the ends (the high-pass edge response) the rest
    # differ by float16 rounding of the float32 results, under 0.1 µV
    inner = list(zip(a[6:-6], b[6:-6]))
    assert np.mean([(x.eeg == y.eeg).mean() for x, y in zip(a, b)]) > 0.98
    assert max(np.abs(x.eeg - y.eeg).max() for x, y in inner) < 1e-3


def test_predict_on_a_long_recording_streams_and_shows_progress(tmp_path, long_edf, synth_shards, capsys):
    from finetune.predict import predict_file

    model = _small_model(tmp_path, synth_shards)
    capsys.readouterr()
    rows = predict_file(model, long_edf)
    assert len(rows) == 600 and all(r["label"] is not None for r in rows)  # 40 min of 4-s windows
    err = capsys.readouterr().err
    assert "labelling rec.edf" in err and "600/600" in err


@pytest.mark.slow
def test_ten_hours_build_and_predict_in_under_a_gigabyte(tmp_path, synth_shards):
    """The probe's recording: 10 hours of 19 channels at 200 Hz (273 MB EDF). Peak resident memory of the whole
    process (imports and model included), measured by the kernel (``ru_maxrss`` of the child)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_long_edf(raw / "night.edf", hours=10.0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "shards", "build", "recordings", "--root", str(raw), "--out", str(tmp_path / "out"),
           "--quiet"]
    for what, cmd in (("build", cmd), ("predict", None)):
        if cmd is None:
            model = _small_model(tmp_path, synth_shards)
            cmd = [sys.executable, "-m", "finetune.predict", "--model", str(model), str(raw / "night.edf"), "--out",
                   str(tmp_path / "labels.csv")]
        # the child reports its own peak (RUSAGE_CHILDREN would keep the largest child of this whole test session)
        probe = [sys.executable, "-c", "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                 "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
        out = subprocess.run(probe, check=True, env=env, cwd=REPO, capture_output=True, text=True)
        peak_mib = int(out.stdout.split()[-1]) / 1024
        assert peak_mib < 1024, f"{what} peaked at {peak_mib:.0f} MiB"
    assert len(load_windows(tmp_path / "out" / "recordings")) == 3600
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 1 + 9000


def _small_model(tmp_path: Path, shards: Path) -> Path:
    import torch

    from finetune.config import FinetuneConfig
    from finetune.train import finetune
    from foundation.model import EEGMambaConfig

    torch.manual_seed(0)
    small = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}
    finetune(FinetuneConfig(recipe="seizure", checkpoint=None, data=str(shards), out=str(tmp_path / "ft"), epochs=1,
                            warmup_epochs=1, batch_size=16, lr=3e-3, layer_decay=1.0, drop_path=0.0, patience=100,
                            progress=False, model=EEGMambaConfig.from_size("tiny", **small), max_windows=64,
                            channels=("CZ",)))
    return tmp_path / "ft" / "model"
