"""Training run folders: one run at a time, no silent reuse, branch resumes that --resume auto cannot confuse, no
resume without the checkpoint's settings, finetuning that cannot write over its input, no write through a planted
link, and one line (exit 2) for a full disk or a damaged state file. Each test is a fault-probe finding: it
failed before the fix."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import DataConfig, DemoConfig, OptimConfig, PretrainConfig, TrainConfig
from pretrain.demo import build_demo_shards
from pretrain.run import main, run
from runtime.engine import latest_checkpoint, read_train_state

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("run_folder_demo")
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


def _config(spec: str, out: Path, lr: float = 2e-3, seed: int = 0, **train) -> PretrainConfig:
    return PretrainConfig(
        data=DataConfig(shards=spec, batch_size=2, crop_s=2.0, shuffle_buffer=8, epoch_steps=4),
        optim=OptimConfig(lr=lr, warmup_steps=2),
        train=TrainConfig(out_dir=str(out), progress=False, seed=seed, **{"max_steps": 4, "save_every": 2, **train}),
    )


def _args(spec: str, out: Path, *extra: str) -> list[str]:
    return ["--data.shards", spec, "--data.batch_size", "2", "--data.crop_s", "2", "--data.shuffle_buffer", "8",
            "--data.epoch_steps", "4", "--optim.lr", "2e-3", "--optim.warmup_steps", "2", "--train.max_steps", "4",
            "--train.save_every", "2",
            "--train.out_dir", str(out), "--train.progress", "false", *extra]


def _main(argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    capsys.readouterr()  # only what this command prints
    code = main(argv)
    return code, capsys.readouterr().err


def _hold(path: Path) -> subprocess.Popen:
    """A live process holding the flock on ``path`` with its PID written in it, as a running run does."""
    code = ("import fcntl, os, socket, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write(f'{os.getpid()} {socket.gethostname()}\\n'); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


# --- one run per folder --------------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(demo_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    holder = _hold(out / ".run.lock")
    try:
        code, err = _main(_args(demo_spec, out, "--train.seed", "2"), capsys, monkeypatch)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and err.count("\n") == 1
    assert f"another pretrain run is writing into {out} (lock .run.lock is held by PID {holder.pid}" in err
    assert not (out / "checkpoints").exists() and not (out / "run_config.json").exists()
    assert _main(_args(demo_spec, out), capsys, monkeypatch)[0] == 0  # the holder gone, the run goes on


def test_a_fresh_run_into_a_used_folder_is_refused_unless_asked(demo_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    run(_config(demo_spec, out, seed=1))
    weights = (out / "model" / "model.safetensors").read_bytes()
    code, err = _main(_args(demo_spec, out, "--train.seed", "2"), capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"{out} holds an earlier run (checkpoints/, model/, run_config.json)" in err
    assert "--resume auto" in err and "--train.overwrite true" in err
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "run_config.json").read_text())["train"]["seed"] == 1

    code, err = _main(_args(demo_spec, out, "--train.seed", "2", "--train.overwrite", "true"), capsys, monkeypatch)
    assert code == 0 and "train.overwrite: removed the earlier run's checkpoints/, model/, run_config.json" in err
    assert json.loads((out / "run_config.json").read_text())["train"]["seed"] == 2
    assert (out / "model" / "model.safetensors").read_bytes() != weights
    assert read_train_state(latest_checkpoint(out))["config"]["train"]["seed"] == 2


def test_a_branch_resume_keeps_the_branch_point_and_auto_follows_the_branch(demo_spec, tmp_path, capsys):
    out = tmp_path / "run"
    run(_config(demo_spec, out, max_steps=6, keep_checkpoints=2))  # keeps steps 4 and 6
    names = lambda: sorted(p.name for p in (out / "checkpoints").iterdir())  # noqa: E731
    assert names() == ["step_00000004", "step_00000006"]
    six = (out / "checkpoints" / "step_00000006" / "model.safetensors").read_bytes()
    branch = _config(demo_spec, out, lr=1e-3, max_steps=6, keep_checkpoints=2, resume_override="optim.lr")
    run(branch, resume=str(out / "checkpoints" / "step_00000004"))
    assert "branches from it and saves its checkpoints as step_NNNNNNNN-b1" in capsys.readouterr().out
    assert names() == ["step_00000004", "step_00000006", "step_00000006-b1"]  # the branch point and old run kept
    assert (out / "checkpoints" / "step_00000006" / "model.safetensors").read_bytes() == six
    assert latest_checkpoint(out).name == "step_00000006-b1"
    state = read_train_state(out / "checkpoints" / "step_00000006-b1")
    assert state["lineage"] == "b1" and state["config"]["optim"]["lr"] == 1e-3
    # --resume auto continues the branch: its settings (lr 1e-3) are what it compares against
    result = run(_config(demo_spec, out, lr=1e-3, max_steps=8, keep_checkpoints=2, resume_override="train.max_steps"),
                 resume="auto")
    assert result.steps == 8 and latest_checkpoint(out).name == "step_00000008-b1"
    assert names() == ["step_00000004", "step_00000006", "step_00000006-b1", "step_00000008-b1"]


# --- resume needs the checkpoint's settings --------------------------------------------------------------


def test_a_checkpoint_without_its_settings_is_not_resumed_silently(demo_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    run(_config(demo_spec, out, stop_after=2))
    state_file = out / "checkpoints" / "step_00000002" / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]
    state_file.write_text(json.dumps(state))
    code, err = _main(_args(demo_spec, out, "--optim.lr", "1e-3", "--resume", "auto"), capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"{state_file} records no settings" in err and "--train.resume_override all" in err
    code, err = _main(_args(demo_spec, out, "--optim.lr", "1e-3", "--resume", "auto", "--train.resume_override", "all"),
                      capsys, monkeypatch)
    assert code == 0
    assert json.loads((out / "run_config.json").read_text())["optim"]["lr"] == 1e-3
    assert read_train_state(latest_checkpoint(out))["config"]["optim"]["lr"] == 1e-3


@pytest.mark.parametrize("scheduler", [[1, 2], "cosine", {"last_epoch": "two"}])
def test_a_damaged_scheduler_state_is_one_line_naming_the_file(demo_spec, tmp_path, capsys, monkeypatch, scheduler):
    out = tmp_path / "run"
    run(_config(demo_spec, out, stop_after=2))
    state_file = out / "checkpoints" / "step_00000002" / "train_state.json"
    state = json.loads(state_file.read_text())
    state["scheduler"] = scheduler
    state_file.write_text(json.dumps(state))
    code, err = _main(_args(demo_spec, out, "--resume", str(state_file.parent)), capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and str(state_file) in err and "'scheduler'" in err
    assert "settings differ" not in err  # the resume itself is legitimate: only the damaged entry stops it


def test_a_float_option_that_is_not_a_number_is_one_line(demo_spec, tmp_path, capsys, monkeypatch):
    code, err = _main(_args(demo_spec, tmp_path / "run", "--optim.lr", "abc"), capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "optim.lr: expected a number, got 'abc'" in err


# --- no write through a planted link ---------------------------------------------------------------------


def test_a_planted_run_config_link_is_refused_and_its_target_untouched(demo_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    run(_config(demo_spec, out, stop_after=2))
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / "run_config.json").unlink()
    (out / "run_config.json").symlink_to(target)
    code, err = _main(_args(demo_spec, out, "--resume", "auto"), capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"{out / 'run_config.json'} is a symbolic link" in err
    assert target.read_text() == "keep me"


def test_a_planted_checkpoints_link_is_refused(demo_spec, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "checkpoints").symlink_to(elsewhere)
    code, err = _main(_args(demo_spec, out), capsys, monkeypatch)
    assert code == 2 and f"{out / 'checkpoints'} is a symbolic link" in err and not any(elsewhere.iterdir())


# --- a full disk during a checkpoint save ----------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_a_full_disk_during_a_checkpoint_save_is_one_line(demo_spec, tmp_path):
    """The kernel refuses writes past a file-size limit (EFBIG, as ENOSPC on a full disk): one line naming the
    checkpoint and the fix, exit 2, and no partial checkpoint left for --resume auto to trip over."""
    out = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # the tiny model's weights are ~1.2 MB

    proc = subprocess.run([sys.executable, "pretrain/run.py", *_args(demo_spec, out)], cwd=REPO, capture_output=True,
                          text=True, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert err[-1].startswith("pretrain/run.py: error: cannot write checkpoint ") and "step_00000002" in err[-1]
    assert "--resume auto" in err[-1] and "Traceback" not in proc.stderr
    assert not (out / "checkpoints" / "step_00000002").exists()


# --- finetuning writes next to its input, never over it ------------------------------------------------------


def test_finetuning_refuses_an_output_that_holds_its_checkpoint(demo_spec, synth_shards, tmp_path, capsys, monkeypatch):
    from finetune.run import main as finetune_main

    out = tmp_path / "run"
    run(_config(demo_spec, out))
    weights = (out / "model" / "model.safetensors").read_bytes()
    monkeypatch.delenv("EEGFM_DEBUG", raising=False)
    base = ["--recipe", "seizure", "--data", str(synth_shards), "--epochs", "1", "--max_windows", "32",
            "--channels", "CZ", "--progress", "false"]
    capsys.readouterr()
    for target in (out, out / "model"):
        assert finetune_main([*base, "--checkpoint", str(out / "model"), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {target} is or holds the input --checkpoint" in err
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    # a pretraining run folder is not a finetuning output either, whatever the checkpoint
    assert finetune_main([*base, "--checkpoint", "none", "--out", str(out)]) == 2
    assert f"--out {out} holds a training run (checkpoints)" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == weights
