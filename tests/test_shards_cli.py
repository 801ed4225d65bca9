"""``python -m shards`` end to end in subprocesses: synth, build, inspect (and its validation), list, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shards(*args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "shards", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_help_and_list(capsys):
    from shards.__main__ import main

    for sub in ("build", "inspect", "synth"):
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "usage: python -m shards " + sub in out
        if sub == "build":
            assert "--part I/N" in out and "--max_abs_uv" in out
    listed = shards("list").stdout
    for name in ("synth", "bonn", "recordings", "eegmmidb"):
        assert name in listed


def test_synth_build_inspect_and_detect_damage(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    p = shards("synth", raw, "--subjects", 2, "--duration_s", 48)
    assert "wrote 8 recordings" in p.stdout and len(list(raw.glob("*.edf"))) == 8
    p = shards("build", "synth", "--root", raw, "--out", out, "--workers", 2, "--window_s", 4, "--stride_s", 2,
               "--max_abs_uv", "none", "--split", "0.5,0.5,0", "--quiet")
    m = json.loads((out / "synth" / "manifest.json").read_text())
    assert m["build"]["config"]["window_s"] == 4.0 and m["build"]["config"]["stride_s"] == 2.0
    assert m["build"]["config"]["max_abs_uv"] is None and m["build"]["split"] == [0.5, 0.5, 0.0]
    assert f"{m['totals']['samples']} samples" in p.stdout

    p = shards("inspect", out)
    assert "validation: OK" in p.stdout and "synth:" in p.stdout and "left_hand" in p.stdout
    assert "non-eeg" in p.stdout  # dropped EOG/ECG channels are reported

    # A shard that lost samples (or an extra tar the manifest does not know) fails validation.
    tar = sorted((out / "synth").glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[: 10 * 1024])
    (out / "synth" / "train-000777.tar").write_bytes(b"")
    p = shards("inspect", out, check=False)
    assert p.returncode == 1
    assert f"MISMATCH {tar}" in p.stdout and "not in the manifest" in p.stdout


def test_build_errors_are_clear(tmp_path, capsys):
    """Bad arguments: exit status 2 and a message naming the corpus / folder / option (in-process: fast)."""
    from shards.__main__ import main

    assert main(["build", "nosuchcorpus", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown corpus 'nosuchcorpus'" in capsys.readouterr().err
    assert main(["build", "synth", "--root", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "absent" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["build", "synth", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--part", "3/2"])
    assert e.value.code == 2 and "--part I/N needs 0 <= I < N" in capsys.readouterr().err


@pytest.mark.slow
def test_parts_build_and_inspect_merges(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shards("synth", raw, "--subjects", 2, "--duration_s", 48)
    for i in range(2):
        shards("build", "synth", "--root", raw, "--out", out, "--part", f"{i}/2", "--quiet")
    p = shards("inspect", out)
    assert "validation: OK" in p.stdout and "INCOMPLETE" not in p.stdout and "8 recordings" in p.stdout
