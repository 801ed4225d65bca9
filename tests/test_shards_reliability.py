"""Shard builds under kill -9, stale locks, mixed layouts and damaged shards (issue 14 items 4-7).

Kill tests run ``python -m shards build`` in real subprocesses and send real signals.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.buildlock import BuildLockedError
from shards.dataset import load_windows, read_manifest
from shards.shardfile import DamagedShardError, read_shard
from shards.synth import simulate
from shards.writer import build

REPO = Path(__file__).resolve().parents[1]
BUILD = dict(max_samples_per_shard=20, progress=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """2 subjects x 4 tasks x 48 s: 8 recordings, several 20-sample shards."""
    folder = tmp_path_factory.mktemp("reliability_raw")
    simulate(folder, n_subjects=2, duration_s=48.0, seed=3)
    return folder


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory) -> Path:
    """A finished build of :func:`raw` (``OUT/synth``); tests copy it before damaging anything."""
    out = tmp_path_factory.mktemp("reliability_built")
    build("synth", raw, out, **BUILD)
    return out / "synth"


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped by its new parent


def _shards_cmd(raw: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shards", "build", "synth", "--root", str(raw), "--out", str(out),
            "--max_samples_per_shard", "20", "--quiet", *extra]


# --- item 4: kill -9 of the build process alone -----------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill9_of_build_process_takes_its_workers_along_and_rerun_resumes(raw, built, tmp_path):
    out, paused = tmp_path / "out", tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EEGFM_SHARDS_PAUSE_AFTER": "1",
           "EEGFM_SHARDS_PAUSE_FILE": str(paused)}
    proc = subprocess.Popen(_shards_cmd(raw, out, "--workers", "2"), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not paused.exists():  # the build committed a shard and now waits, its workers alive
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the build never reached its first shard"
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert workers and all(_running(w) for w in workers)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as `kill -9 PID` does
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _running(w)]
    for w in left:  # do not leave them running if the assertion below fails
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived the killed build"

    rerun = subprocess.run(_shards_cmd(raw, out, "--workers", "2"), cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    folder = out / "synth"
    assert {p.name: p.read_bytes() for p in folder.glob("*.tar")} == {p.name: p.read_bytes() for p in built.glob("*.tar")}
    assert json.loads((folder / "manifest.json").read_text()) == json.loads((built / "manifest.json").read_text())


def _hold_lock(path: Path, pid_text: str) -> subprocess.Popen:
    """A process that holds the flock on ``path`` with ``pid_text`` written in it (as our lock does)."""
    code = ("import fcntl, socket, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write(sys.argv[2] + ' ' + socket.gethostname() + '\\n'); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(path), pid_text], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_held_for_a_dead_pid_is_stale_and_the_build_resumes(raw, built, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no longer runs: the build that wrote it is dead
    holder = _hold_lock(tmp_path / "synth" / ".build.lock", str(gone.pid))  # e.g. an orphan of that build
    try:
        m = build("synth", raw, tmp_path, **BUILD)
    finally:
        holder.kill()
        holder.wait()
    assert m["complete"] and m == json.loads((built / "manifest.json").read_text())
    assert (tmp_path / "synth" / f".build.lock.stale-{gone.pid}").exists()


def test_lock_of_a_live_build_is_refused_with_one_line_naming_it(raw, tmp_path, capsys, monkeypatch):
    from shards.__main__ import main

    lock = tmp_path / "synth" / ".build.lock"
    holder = _hold_lock(lock, str(os.getpid()))  # a live PID
    try:
        with pytest.raises(BuildLockedError, match=f"held by PID {os.getpid()}"):
            build("synth", raw, tmp_path, **BUILD)
        argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path), "--quiet"]
        monkeypatch.delenv("EEGFM_DEBUG", raising=False)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: another build of this part is running")
        assert str(lock.parent) in err and ".build.lock" in err and "re-run the same command" in err
        with pytest.raises(BuildLockedError):  # the traceback on request
            main([*argv, "--debug"])
        monkeypatch.setenv("EEGFM_DEBUG", "1")
        with pytest.raises(BuildLockedError):
            main(argv)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("damage", ["truncated", "not an object"])
def test_damaged_build_state_is_refused_naming_it_and_nothing_is_lost(shared_data, tmp_path, capsys, monkeypatch,
                                                                       damage):
    """A truncated or hand-edited .build-state.json: one line naming the file and the way out, every shard kept."""
    from shards.__main__ import main

    root = tmp_path / "raw"
    root.mkdir()
    for run in ("S001R03.edf", "S001R04.edf"):
        (root / run).symlink_to(shared_data / "motor_imagery/eegmmidb/S001" / run)
    build("recordings", root, tmp_path / "out", max_samples_per_shard=1, progress=False)
    folder = tmp_path / "out" / "recordings"
    shards = {p.name: p.read_bytes() for p in folder.glob("*.tar")}
    assert len(shards) == 2 and all(shards.values())
    state = folder / ".build-state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2] if damage == "truncated" else "[]")
    damaged = state.read_bytes()
    with pytest.raises(ValueError) as err:
        build("recordings", root, tmp_path / "out", max_samples_per_shard=1, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{state}: ") and "restore the file" in msg and "another --out" in msg
    assert ("not valid JSON" if damage == "truncated" else "not a build state") in msg
    argv = ["build", "recordings", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet",
            "--max_samples_per_shard", "1"]
    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    assert main(argv) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and str(state) in line and "restore the file" in line
    assert {p.name: p.read_bytes() for p in folder.glob("*.tar")} == shards and state.read_bytes() == damaged


# --- item 5: one layout per folder ------------------------------------------------------------------


def test_whole_and_part_builds_do_not_mix_in_one_folder(raw, built, tmp_path, capsys):
    from shards.__main__ import main

    whole = _copy(built, tmp_path / "whole" / "synth")
    with pytest.raises(ValueError, match=r"already holds a whole build \(no --part\) \(manifest.json\)"):
        build("synth", raw, tmp_path / "whole", part=(0, 2), **BUILD)
    assert not list(whole.glob("*-000-*.tar"))  # nothing written

    build("synth", raw, tmp_path / "parts", part=(0, 2), **BUILD)
    with pytest.raises(ValueError, match=r"build split into 2 parts .*manifest-part-000-of-002.json"):
        build("synth", raw, tmp_path / "parts", **BUILD)
    with pytest.raises(ValueError, match="split into 2 parts"):
        build("synth", raw, tmp_path / "parts", part=(1, 3), **BUILD)
    build("synth", raw, tmp_path / "parts", part=(1, 2), **BUILD)  # the same layout goes on
    assert read_manifest(tmp_path / "parts" / "synth")["complete"]

    argv = ["build", "synth", "--root", str(raw), "--out", str(tmp_path / "parts"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would duplicate its samples" in err and "use another --out" in err

    # A folder mixed by hand (or by an older version) is refused by the readers too.
    (tmp_path / "parts" / "synth" / "manifest.json").write_bytes((built / "manifest.json").read_bytes())
    with pytest.raises(ValueError, match="mixes builds of different layouts"):
        read_manifest(tmp_path / "parts" / "synth")


# --- item 6: checksums ------------------------------------------------------------------------------


def _flip(path: Path, offset: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = bytes(b ^ 0x5A for b in data[offset:offset + n])
    path.write_bytes(bytes(data))


def test_manifest_records_sha256_of_each_shard_and_recording(built):
    import hashlib

    from shards.shardfile import recording_digests

    manifest = json.loads((built / "manifest.json").read_text())
    shards = manifest["shards"]
    assert len(shards) >= 3
    per_recording = {r["recording"]: r["sha256"] for r in manifest["recordings"] if r["samples"]}
    for s in shards:
        data = (built / s["name"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)
        # and each recording's span of members inside it, as inspect recomputes it
        assert recording_digests(str(built / s["name"]), "synth") == {r: per_recording[r] for r in s["recordings"]}


def test_flipped_bytes_fail_inspect_and_the_readers_skip_that_shard(built, tmp_path, capsys, caplog):
    from pretrain.data import Corpus, ShardStream
    from shards.__main__ import main

    import tarfile

    folder = _copy(built, tmp_path / "out" / "synth")
    manifest = json.loads((folder / "manifest.json").read_text())
    victim = manifest["shards"][1]
    with tarfile.open(folder / victim["name"]) as tar:  # the recording whose samples hold byte 4096
        hit = next(m for m in tar.getmembers() if m.offset_data <= 4096 < m.offset_data + m.size)
    hit_recording = hit.name.split("__")[1]
    assert hit_recording in victim["recordings"] and len(victim["recordings"]) > 1
    _flip(folder / victim["name"], 4096)  # inside a sample's float16 data: still decodes, values changed

    assert main(["inspect", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"MISMATCH {folder / victim['name']}: sha256" in out and "differs from the manifest's" in out
    assert f"damaged samples of recording(s) {hit_recording}\n" in out  # only that one of the shard's recordings
    assert "1 problem(s)" in out

    skipped: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="shards.dataset"):
        windows = load_windows(folder, skipped=skipped)
    assert list(skipped) == [str(folder / victim["name"])] and "sha256" in skipped[str(folder / victim["name"])]
    assert [r.message.count(victim["name"]) for r in caplog.records] == [1]
    assert len(windows) == manifest["totals"]["samples"] - victim["samples"]
    assert not any(w.meta["recording"] in victim["recordings"] for w in windows)

    urls = sorted(str(p) for p in folder.glob("*.tar"))
    stream = ShardStream([Corpus("synth", tuple(urls))], batch_size=4, crop_samples=400, sfreq=200.0,
                         epoch_batches=60, shuffle_buffer=8, seed=0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        used = {m["__url__"] for batch in stream for m in batch["meta"]}
    assert str(folder / victim["name"]) not in used and len(used) == len(urls) - 1
    assert list(stream.damaged) == [str(folder / victim["name"])]
    warnings = [r.message for r in caplog.records if victim["name"] in r.message]
    assert len(warnings) == 1 and f"{victim['samples']} sample(s)" in warnings[0]


def test_a_damaged_member_header_never_yields_half_a_shard(built, tmp_path):
    import tarfile

    folder = _copy(built, tmp_path / "synth")
    name = json.loads((folder / "manifest.json").read_text())["shards"][0]["name"]
    with tarfile.open(folder / name) as tar:
        members = tar.getmembers()
    _flip(folder / name, members[len(members) // 2].offset + 20, 8)  # a header in the middle of the shard
    assert len(list(tarfile.open(folder / name))) < len(members)  # what tarfile alone does: stops quietly

    with pytest.raises(DamagedShardError, match=f"{name}: sha256"):
        read_shard(str(folder / name), json.loads((folder / "manifest.json").read_text())["shards"][0]["sha256"])
    with pytest.raises(DamagedShardError, match="the tar ends at byte"):  # no manifest needed for this one
        read_shard(str(folder / name))
    (folder / "manifest.json").unlink()
    skipped: dict[str, str] = {}
    windows = load_windows(folder, skipped=skipped)
    assert list(skipped) == [str(folder / name)] and "ends at byte" in skipped[str(folder / name)]
    assert not any(w.meta["__key__"] in {m.name.split(".")[0] for m in members} for w in windows)
