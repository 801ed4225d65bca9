"""pretrain/run.py + pretrain.trainer: CLI errors, end-to-end run, exact resume, NaN guard, 2 real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation.model import EEGMamba, EEGMambaConfig
from pretrain.config import DataConfig, DemoConfig, OptimConfig, PretrainConfig, TrainConfig
from pretrain.demo import build_demo_shards
from pretrain.run import main, run
from runtime.engine import NonFiniteLossError, latest_checkpoint, param_groups, warmup_cosine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.getbasetemp() / "pretrain_demo"
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


def _config(spec: str, out: Path, **train) -> PretrainConfig:
    """A small, fast run on the demo shards."""
    return PretrainConfig(
        data=DataConfig(shards=spec, batch_size=4, crop_s=2.0, shuffle_buffer=32, epoch_steps=4),
        optim=OptimConfig(lr=2e-3, warmup_steps=2),
        train=TrainConfig(out_dir=str(out), progress=False, log_every=2, **{"max_steps": 6, "save_every": 3, **train}),
    )


# -- command line -----------------------------------------------------------------------------------


def test_unknown_key_is_a_clear_error(capsys):
    assert main(["--optim.lrr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'" in err and "lr" in err


def test_bad_value_of_a_nested_config_is_a_clear_error(capsys):
    assert main(["--objective.mask.fraction", "1.5"]) == 2
    assert "MaskConfig.fraction" in capsys.readouterr().err


def test_help_lists_keys_and_resume(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in ("--data.shards", "--objective.name", "--optim.grad_accum", "--train.save_every", "--resume"):
        assert key in out


def test_missing_shard_path_is_named(tmp_path, capsys):
    assert main(["--data.shards", str(tmp_path / "no_such_shards"), "--train.out_dir", str(tmp_path / "run")]) == 2
    assert f"shard path {tmp_path / 'no_such_shards'} does not exist" in capsys.readouterr().err


def test_masked_token_without_tokenizer_says_what_to_do(tmp_path, capsys):
    assert main(["--objective.name", "masked_token", "--train.out_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "pretrain.train_tokenizer" in err and "--objective.tokenizer auto" in err
    assert not (tmp_path / "run").exists()  # failed before simulating or reading anything


def test_checked_in_configs_parse_and_tiny_is_the_default():
    from runtime.configfile import load_toml

    assert load_toml(PretrainConfig, REPO / "pretrain" / "configs" / "tiny.toml") == PretrainConfig()
    for size in ("base", "large"):
        config = load_toml(PretrainConfig, REPO / "pretrain" / "configs" / f"{size}.toml")
        preset = {k: v for k, v in EEGMambaConfig.from_size(size).to_dict().items() if k != "drop_path"}
        assert {k: getattr(config.model, k) for k in preset} == preset and config.objective.name == "masked_token"


# -- optimiser pieces ----------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_the_floor():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.02) for s in range(111)]
    assert values[0] < values[5] < values[9] <= 1.0
    assert max(values) == pytest.approx(1.0, abs=1e-6)
    assert values[110] == pytest.approx(0.02)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_weight_decay_skips_norms_biases_embeddings():
    from pretrain.objectives import MaskedSTFTObjective, build_backbone

    obj = MaskedSTFTObjective(build_backbone("tiny", {}, 2))
    decay, no_decay = param_groups(obj, 0.05)
    names = {id(p): n for n, p in obj.named_parameters()}
    no_names = [names[id(p)] for p in no_decay["params"]]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("norm" in n for n in no_names) and any(n.endswith("bias") for n in no_names)
    assert any("embed" in n for n in no_names) and any("A_log" in n for n in no_names)
    assert any(p is obj.head.weight for p in decay["params"])


# -- training runs ----------------------------------------------------------------------------------


def test_short_run_checkpoints_logs_and_exports(demo_spec, tmp_path):
    result = run(_config(demo_spec, tmp_path / "run", max_steps=4, save_every=2))
    assert result.steps == 4 and len(result.losses) == 4 and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    state = json.loads((result.checkpoint / "train_state.json").read_text())
    assert {k: state[k] for k in ("step", "micro_batches")} == {"step": 4, "micro_batches": 4}
    assert list((tmp_path / "run" / "logs" / "pretrain").glob("events.out.tfevents.*"))
    model = EEGMamba.from_pretrained(result.export_dir)
    assert model.config.d_model == 64
    pre = json.loads((result.export_dir / "preprocess.json").read_text())
    assert pre["sfreq"] == 200.0 and pre["corpora"]["synth"]["preprocess"]["window_s"] == 4.0
    assert result.tokens_per_s > 0 and {"loss_stft", "lr", "grad_norm", "moe_aux"} <= set(result.logs[-1])
    # the card beside the weights is generated from this run, not huggingface_hub's template
    card = (result.export_dir / "README.md").read_text()
    assert "More Information Needed" not in card and card.startswith("---\nlibrary_name: eegfm\n")
    assert f"{model.num_parameters() / 1e6:.2f} M parameters" in card and "d_model 64, 2 layers" in card
    assert "| sampling rate | 200 Hz |" in card and "| pretraining crop | 2 s |" in card
    assert "`masked_stft` objective for 4 steps" in card and f"final loss {result.losses[-1]:.4f}" in card
    assert "| synth | " in card and f'EEGMamba.from_pretrained("{result.export_dir}")' in card


def test_a_run_with_longer_crops_records_the_lengths(demo_spec, tmp_path):
    import dataclasses

    config = _config(demo_spec, tmp_path / "run", max_steps=2, save_every=2)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, longer_crops_s=(4.0,)))
    result = run(config)
    assert result.steps == 2 and all(map(torch.isfinite, torch.tensor(result.losses)))
    pre = json.loads((result.export_dir / "preprocess.json").read_text())
    assert pre["crop_s"] == 2.0 and pre["longer_crops_s"] == [4.0]
    card = (result.export_dir / "README.md").read_text()
    assert "4 x 2 s crops per process (a window holding 4 s is cropped to the longest it holds)" in card


@pytest.mark.slow
def test_loss_falls_over_a_run(demo_spec, tmp_path):
    result = run(_config(demo_spec, tmp_path / "run", max_steps=40, save_every=40))
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.8 * first, result.losses


@pytest.mark.slow
def test_default_run_with_no_arguments(tmp_path, monkeypatch, capsys):
    """The zero-argument demo: simulate, shard, pretrain 120 steps, export (minutes on a CPU)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--train.progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "runs/pretrain-demo/model" in out and "tensorboard --logdir" in out
    run_dir = tmp_path / "runs" / "pretrain-demo"
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "demo_data" / "shards" / "synth" / "manifest.json").is_file()
    assert latest_checkpoint(run_dir).name == "step_00000120"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs" / "pretrain"))
    events.Reload()
    loss = [e.value for e in events.Scalars("train/loss_stft")]  # every 10 steps
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < 0.8 * sum(loss[:3]) / 3, loss


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(demo_spec, tmp_path):
    # 6 steps with data epochs of 4 batches: the interruption at step 3 is mid-epoch and the resumed
    # run crosses an epoch boundary, so both data-position paths are exercised.
    whole = run(_config(demo_spec, tmp_path / "whole"))
    part = run(_config(demo_spec, tmp_path / "split", stop_after=3))
    assert part.stopped_early and part.steps == 3 and part.export_dir is None
    assert not (tmp_path / "split" / "model").exists()
    rest = run(_config(demo_spec, tmp_path / "split"), resume="auto")
    assert rest.steps == 6
    assert part.losses + rest.losses == pytest.approx(whole.losses, rel=1e-5, abs=1e-6)
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_compiled_training_matches_eager(demo_spec, tmp_path, monkeypatch):
    """train.compile = true (torch.compile of the objective's step, channel buckets) trains like eager: with the
    compiled graph drawing random numbers as eager does (inductor's fallback_random), the same losses to
    float rounding and a model that loads. Both runs take the code path a GPU runs (EEGFM_SYNC_FREE): eagerly on a
    CPU the mask sampler otherwise draws only the bands each map's family needs, so its masks differ. Slow:
    compiling on a CPU takes minutes."""
    import torch._inductor.config as inductor_config

    from foundation.index_checks import SYNC_FREE_ENV

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    monkeypatch.setenv(SYNC_FREE_ENV, "1")
    eager = run(_config(demo_spec, tmp_path / "eager", max_steps=4))
    compiled = run(_config(demo_spec, tmp_path / "compiled", max_steps=4, compile=True, channel_bucket=1))
    assert compiled.steps == 4 and compiled.export_dir is not None
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3, abs=1e-4)


def test_resume_from_a_folder_that_is_not_a_checkpoint(demo_spec, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        run(_config(demo_spec, tmp_path / "run"), resume=str(tmp_path))


def test_nan_guard_stops_without_writing_a_model(demo_spec, tmp_path, capsys):
    with pytest.raises(NonFiniteLossError, match=r"step 3 on rank 0: loss=nan") as err:
        run(_config(demo_spec, tmp_path / "run", inject_nan_at=3, save_every=2))
    assert "step_00000002" in str(err.value)  # points at the last good checkpoint
    assert not (tmp_path / "run" / "model").exists()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    # the CLI turns it into a message and exit code 3
    args = ["--data.shards", demo_spec, "--data.crop_s", "2", "--data.batch_size", "2",
            "--data.shuffle_buffer", "8", "--train.out_dir", str(tmp_path / "cli"), "--train.inject_nan_at", "1",
            "--train.progress", "false"]
    assert main(args) == 3
    assert "non-finite value at step 1" in capsys.readouterr().err


# -- two real processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_read_different_shards_and_write_one_checkpoint(demo_spec, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(REPO / "pretrain" / "run.py"),
        "--data.shards", demo_spec, "--data.batch_size", "2", "--data.crop_s", "2", "--data.epoch_steps", "4",
        "--train.max_steps", "4", "--train.save_every", "4", "--train.out_dir", str(out),
        "--train.log_sample_keys", "true", "--train.progress", "false",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("done: 4 steps") == 1  # the summary is printed by the main process only
    reads = {}
    for rank in (0, 1):
        lines = [json.loads(x) for x in (out / "logs" / f"samples-rank{rank}.jsonl").read_text().splitlines()]
        assert len(lines) == 4 * 2  # same batch count on both ranks: 4 steps x 2 windows
        reads[rank] = {x["url"] for x in lines}
    assert reads[0] and reads[1] and not reads[0] & reads[1]
    ckpt = out / "checkpoints" / "step_00000004"
    assert len(list(ckpt.glob("model*.safetensors"))) == 1
    assert sorted(p.name for p in ckpt.glob("rng_*")) == ["rng_0.safetensors", "rng_1.safetensors"]  # one per rank, no pickle
    assert EEGMamba.from_pretrained(out / "model").config.d_model == 64
