"""Issue 14 items 1-3: resume with changed settings, the guard before every save/export, no pickle on resume."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from pretrain.config import DataConfig, DemoConfig, OptimConfig, PretrainConfig, TrainConfig
from pretrain.demo import build_demo_shards
from runtime.engine import NonFiniteLossError, warmup_cosine
from pretrain.resume_settings import ResumeSettingsError
from pretrain.run import main, run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("resume_demo")
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


def _config(spec: str, out: Path, lr: float = 2e-3, warmup: int = 2, **train) -> PretrainConfig:
    return PretrainConfig(
        data=DataConfig(shards=spec, batch_size=2, crop_s=2.0, shuffle_buffer=8, epoch_steps=4),
        optim=OptimConfig(lr=lr, warmup_steps=warmup),
        train=TrainConfig(out_dir=str(out), progress=False, **{"max_steps": 4, "save_every": 2, **train}),
    )


# -- item 1: changed hyper-parameters on --resume ----------------------------------------------------------------


def test_resume_refuses_changed_settings_then_applies_them_when_asked(demo_spec, tmp_path, capsys):
    out = tmp_path / "run"
    run(_config(demo_spec, out, stop_after=2))
    with pytest.raises(ResumeSettingsError) as err:
        run(_config(demo_spec, out, lr=1e-3, warmup=1), resume="auto")
    message = str(err.value)
    assert "optim.lr: checkpoint 0.002, now 0.001" in message and "optim.warmup_steps: checkpoint 2, now 1" in message
    assert "--train.resume_override optim.lr,optim.warmup_steps" in message
    assert json.loads((out / "run_config.json").read_text())["optim"]["lr"] == 0.002  # records what really ran
    # the command line says the same and exits 2
    args = ["--data.shards", demo_spec, "--data.batch_size", "2", "--data.crop_s", "2", "--data.shuffle_buffer", "8",
            "--data.epoch_steps", "4", "--train.max_steps", "4", "--train.out_dir", str(out), "--train.progress", "false",
            "--optim.lr", "1e-3", "--resume", "auto"]
    assert main(args) == 2 and "optim.lr: checkpoint 0.002, now 0.001" in capsys.readouterr().err

    config = _config(demo_spec, out, lr=1e-3, warmup=1, resume_override="optim.lr,optim.warmup_steps")
    result = run(config, resume="auto")
    assert "applying changed settings" in capsys.readouterr().out
    # the new peak LR and warm-up drive the schedule from the restored step on
    floor = config.optim.min_lr / 1e-3
    assert [log["lr"] for log in result.logs] == pytest.approx([1e-3 * warmup_cosine(s, 1, 4, floor) for s in (3, 4)])
    assert json.loads((out / "run_config.json").read_text())["optim"]["lr"] == 0.001


def test_nan_guard_advice_is_what_works(demo_spec, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        run(_config(demo_spec, out, inject_nan_at=3))
    advice = str(err.value)
    assert "step_00000002" in advice and "--resume auto --train.resume_override optim.lr,optim.warmup_steps" in advice
    # follow the advice literally: lower LR, longer warm-up, resume with the override
    result = run(_config(demo_spec, out, lr=1e-3, warmup=3, resume_override="optim.lr,optim.warmup_steps"),
                 resume="auto")
    assert result.steps == 4 and result.export_dir is not None
    assert result.logs[0]["lr"] == pytest.approx(1e-3 * warmup_cosine(3, 3, 4, 1e-5 / 1e-3))


# -- item 2: parameters checked before every save and export ----------------------------------------------------


def test_a_huge_learning_rate_fails_loudly_and_writes_nothing(demo_spec, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data.shards", demo_spec, "--data.batch_size", "2", "--data.crop_s", "2", "--data.shuffle_buffer", "8",
            "--train.out_dir", str(out), "--train.progress", "false", "--train.max_steps", "1",
            "--train.save_every", "1", "--optim.warmup_steps", "0", "--optim.lr", "1e6"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "non-finite value after step 1" in err and "no checkpoint for step 1" in err
    assert not (out / "model").exists() and not list(out.glob("checkpoints/step_*"))


# -- item 3: no pickle on resume ---------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_runs_a_pickle_planted_in_the_checkpoint(demo_spec, tmp_path):
    out = tmp_path / "run"
    first = run(_config(demo_spec, out, stop_after=2))
    ckpt = first.checkpoint
    files = sorted(p.name for p in ckpt.iterdir())
    assert files and not [f for f in files if f.endswith((".pkl", ".bin", ".pt"))], files
    for name in files:
        planted = tmp_path / f"planted-{name}"
        shutil.copytree(ckpt, planted)
        marker = tmp_path / f"ran-{name}"
        (planted / name).write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            run(_config(demo_spec, tmp_path / f"resumed-{name}"), resume=str(planted))
        assert not marker.exists(), f"resume executed a pickle planted in {name}"
    # the files Accelerate's loader used to unpickle are never opened at all
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (ckpt / name).write_bytes(pickle.dumps(_Payload(tmp_path / f"ran-{name}")))
    result = run(_config(demo_spec, out), resume="auto")
    assert result.steps == 4 and not list(tmp_path.glob("ran-*"))
