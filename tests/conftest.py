"""Shared test fixtures.

Tests that need an optional extra (braindecode, triton, mne-bids, antio, curryreader, mffpy, pyxdf) skip with
the reason and the install command when it is absent; ``-rs`` in the pytest config lists every skip.

Real recordings live in ``../shared/data`` next to the repository (override with ``EEG_SHARED_DATA``).
A fresh clone does not have them, so every test that needs them takes the ``shared_data`` fixture and is
skipped cleanly when the folder is absent. The data are never copied into the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# EEGFM_HIDE_PACKAGES=braindecode,skorch runs the suite as if those packages were not installed (``import``
# raises ModuleNotFoundError, ``importlib.util.find_spec`` returns None): how tests/test_optional_extras.py
# proves that every test needing an optional extra skips, on a machine where the extra is installed.
for _name in filter(None, os.environ.get("EEGFM_HIDE_PACKAGES", "").split(",")):
    sys.modules[_name.strip()] = None  # type: ignore[assignment]

# Under pytest-xdist every worker is one process per core: intra-op threads in each (and in the scripts they
# start, which inherit the variable) would only oversubscribe the cores. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real EEG data folder {SHARED_DATA} is absent")
    return SHARED_DATA


SYNTH_SUBJECTS = 6
SYNTH_DURATION_S = 96.0


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory) -> Path:
    """Folder of simulated EDF+ recordings (``shards.synth.simulate``): 6 subjects x 4 tasks x 96 s."""
    from shards.synth import simulate

    folder = tmp_path_factory.mktemp("synth_raw")
    simulate(folder, n_subjects=SYNTH_SUBJECTS, duration_s=SYNTH_DURATION_S, seed=0)
    return folder


@pytest.fixture(scope="session")
def synth_shards(synth_raw, tmp_path_factory) -> Path:
    """A small simulated shard set: the corpus folder ``OUT/synth`` (tars + manifest.json).

    Built with ``shards.writer.build("synth", ...)`` from :func:`synth_raw`: 4-s windows at 200 Hz,
    19 EEG channels (EOG/ECG dropped), labelled windows of all four tasks (``meta["task"]``). Subjects are
    split by hash with fractions 0.5/0.25/0.25 and seed 0: sub-01, 02, 05, 06 train, sub-03 val, sub-04
    test (tars ``train-*.tar``, ``val-*.tar``, ``test-*.tar``). Reuse it in pretrain/finetune tests; never
    write into it.
    """
    from shards.writer import build

    out = tmp_path_factory.mktemp("synth_shards")
    build("synth", synth_raw, out, split=(0.5, 0.25, 0.25), seed=0, max_samples_per_shard=200, progress=False)
    return out / "synth"


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine (opt in per module)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


EEGMAT_TRAIN_SUBJECTS = ("Subject02", "Subject03", "Subject04")


@pytest.fixture(scope="session")
def eegmat_shards(shared_data, tmp_path_factory):
    """EEGMAT shards of subjects 02-04 (``EEGMAT_TRAIN_SUBJECTS``), as ``(corpus folder, manifest)``.

    Built from a folder of symlinks to the shared files (never copies); 5-s windows, 142 in all. Other
    subjects stay held out for tests that label raw recordings. Never write into it.
    """
    from shards.writer import build

    source = shared_data / "workload" / "eegmat"
    root = tmp_path_factory.mktemp("eegmat_raw")
    for name in ["subject-info.csv"] + [f"{s}_{k}.edf" for s in EEGMAT_TRAIN_SUBJECTS for k in (1, 2)]:
        (root / name).symlink_to(source / name)
    out = tmp_path_factory.mktemp("eegmat_shards")
    manifest = build("eegmat", root, out, progress=False)
    return out / "eegmat", manifest


@pytest.fixture(scope="session")
def annex():
    """``annex(path, dataset)``: see :func:`annex_file`."""
    return annex_file


def annex_file(path: Path, dataset: Path) -> Path:
    """Turn ``path`` into a git-annex link as DataLad / OpenNeuro datasets hold every data file: the content moves to
    ``{dataset}/.git/annex/objects/Xx/Yy/KEY/KEY`` (KEY = ``SHA256E-s{size}--{sha256}{ext}``, one folder per file)
    and ``path`` becomes a relative symlink to it. Returns the object's path."""
    import hashlib

    data = path.read_bytes()
    key = f"SHA256E-s{len(data)}--{hashlib.sha256(data).hexdigest()}{''.join(path.suffixes)}"
    digest = hashlib.md5(key.encode()).hexdigest()
    obj = dataset / ".git" / "annex" / "objects" / digest[:3] / digest[3:6] / key / key
    obj.parent.mkdir(parents=True)
    path.rename(obj)
    path.symlink_to(os.path.relpath(obj, path.parent))
    return obj


TEN_TWENTY = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz", "P4", "P8",
              "O1", "O2")


def write_long_edf(path: Path, hours: float, sfreq: int = 200, n_channels: int = 19, seed: int = 0) -> Path:
    """An EDF of ``hours`` of ``n_channels`` 10-20 channels at ``sfreq`` (1-s records, 16 bits, ±3276.7 µV),
    written a block of records at a time so that writing a 10-hour file (273 MB) takes a few MB of memory: a
    10-Hz alpha rhythm, white noise and a slow drift per channel."""
    import numpy as np

    names = [TEN_TWENTY[i % len(TEN_TWENTY)] + ("" if i < len(TEN_TWENTY) else f"-{i}") for i in range(n_channels)]
    n_records = int(round(hours * 3600))
    ns = n_channels

    def field(values, width):
        return "".join(str(v)[:width].ljust(width) for v in values).encode("ascii")

    header = (b"0".ljust(8) + b"X X X X".ljust(80) + b"Startdate X X X X".ljust(80) + b"01.01.20" + b"00.00.00"
              + str(256 * (ns + 1)).encode().ljust(8) + b"".ljust(44) + str(n_records).encode().ljust(8)
              + b"1".ljust(8) + str(ns).encode().ljust(4))
    header += field([f"EEG {n}" for n in names], 16) + field(["AgAgCl electrode"] * ns, 80) + field(["uV"] * ns, 8)
    header += field(["-3276.8"] * ns, 8) + field(["3276.7"] * ns, 8) + field(["-32768"] * ns, 8) + field(["32767"] * ns, 8)
    header += field(["HP:0.1Hz LP:75Hz"] * ns, 80) + field([sfreq] * ns, 8) + field([""] * ns, 32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, ns)
    with open(path, "wb") as f:
        f.write(header)
        step = 600  # records per block
        for r0 in range(0, n_records, step):
            r1 = min(r0 + step, n_records)
            t = np.arange(r0 * sfreq, r1 * sfreq) / sfreq
            x = 20.0 * np.sin(2 * np.pi * 10.0 * t[None] + phase[:, None])                # alpha, µV
            x += 8.0 * rng.standard_normal((ns, t.size)) + 30.0 * np.sin(2 * np.pi * t[None] / 600.0)
            digital = np.clip(np.round(x * 10.0), -32768, 32767).astype("<i2")            # 0.1 µV per step
            # EDF records: per record, each signal's samples in turn
            f.write(digital.reshape(ns, r1 - r0, sfreq).transpose(1, 0, 2).tobytes())
    return path


@pytest.fixture(params=["cpu", "torch"])
def cpu_scan_backend(request, monkeypatch) -> str:
    """Runs a test once per CPU selective scan (the C kernel, the chunked torch scan) through
    ``$EEGFM_SCAN_BACKEND``; the C kernel's run skips, with the reason, where it cannot be built."""
    from foundation import ssm, ssm_cpu

    if request.param == "cpu" and not ssm_cpu.available():
        pytest.skip(ssm_cpu.unavailable_reason())
    monkeypatch.setenv(ssm.SCAN_BACKEND_ENV, request.param)
    return request.param
