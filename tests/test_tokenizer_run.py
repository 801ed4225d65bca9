"""python -m pretrain.train_tokenizer: trains a VQ-NSP on shards with the shared trainer and exports what pretraining loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.config import DemoConfig
from pretrain.demo import build_demo_shards
from pretrain.objectives import MaskedTokenObjective, build_backbone
from pretrain.train_tokenizer import TokenizerRunConfig, main
from tokenizer.vqnsp import VQNSP


@pytest.fixture(scope="session")
def demo_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.getbasetemp() / "pretrain_demo"
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


def _args(spec: str, out: Path, steps: int = 6) -> list[str]:
    return ["--data.shards", spec, "--data.crop_s", "2", "--data.batch_size", "4", "--data.shuffle_buffer", "32",
            "--model.codebook_size", "64", "--train.max_steps", str(steps), "--train.save_every", str(steps),
            "--train.log_every", "2", "--train.out_dir", str(out), "--train.progress", "false"]


@pytest.fixture(scope="module")
def trained(demo_spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "run"
    assert main(_args(demo_spec, out)) == 0
    return out


def test_trains_and_exports_a_loadable_tokenizer(trained, capsys):
    tok = VQNSP.from_pretrained(trained / "model")
    assert tok.codebook_size == 64 and not tok.training
    assert (trained / "checkpoints" / "step_00000006" / "train_state.json").is_file()
    assert json.loads((trained / "model" / "preprocess.json").read_text())["sfreq"] == 200.0
    events = list((trained / "logs" / "tokenizer").glob("events.out.tfevents.*"))
    assert events


def test_logs_codebook_perplexity_and_usage(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "logs" / "tokenizer"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/perplexity", "train/usage", "train/loss_amp", "train/loss_phase", "train/loss_quant"} <= tags
    perplexity = [e.value for e in acc.Scalars("train/perplexity")]
    usage = [e.value for e in acc.Scalars("train/usage")]
    assert len(perplexity) == 3 and all(1.0 <= p <= 64.0 for p in perplexity)
    assert all(0.0 < u <= 1.0 for u in usage)


def test_masked_token_objective_loads_the_export(trained, demo_spec):
    obj = MaskedTokenObjective.from_tokenizer_dir(build_backbone("tiny", {}, 2), trained / "model")
    assert obj.codebook_size == 64 and not obj.tokenizer.training
    b, c, t = 2, 19, 400
    batch = {"x": torch.randn(b, c, t), "channel_ids": torch.arange(1, c + 1).repeat(b, 1),
             "channel_mask": torch.ones(b, c, dtype=torch.bool)}
    out = obj(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad


def test_pretrain_run_uses_the_trained_tokenizer(trained, demo_spec, tmp_path):
    from pretrain.config import DataConfig, ObjectiveConfig, OptimConfig, PretrainConfig, TrainConfig
    from pretrain.run import run

    config = PretrainConfig(
        data=DataConfig(shards=demo_spec, batch_size=2, crop_s=2.0, shuffle_buffer=8),
        objective=ObjectiveConfig(name="masked_token", tokenizer=str(trained / "model")),
        optim=OptimConfig(warmup_steps=1),
        train=TrainConfig(out_dir=str(tmp_path / "pre"), max_steps=2, save_every=2, progress=False),
    )
    result = run(config)
    assert result.steps == 2 and {"loss_mask", "loss_sym", "acc_mask"} <= set(result.logs[-1])
    assert json.loads((result.export_dir / "pretraining.json").read_text())["objective"] == "masked_token"


def test_bad_key_and_defaults(capsys):
    assert main(["--model.codebook", "3"]) == 2
    assert "unknown config key 'model.codebook'" in capsys.readouterr().err
    assert TokenizerRunConfig().train.out_dir == "runs/tokenizer-demo"


@pytest.mark.slow
def test_pretrain_with_tokenizer_auto_trains_one_first(demo_spec, tmp_path):
    from pretrain.config import DataConfig, ObjectiveConfig, OptimConfig, PretrainConfig, TrainConfig
    from pretrain.run import run

    config = PretrainConfig(
        data=DataConfig(shards=demo_spec, batch_size=2, crop_s=2.0, shuffle_buffer=8),
        objective=ObjectiveConfig(name="masked_token", tokenizer="auto", tokenizer_steps=3),
        optim=OptimConfig(warmup_steps=1),
        train=TrainConfig(out_dir=str(tmp_path / "pre"), max_steps=2, save_every=2, progress=False),
    )
    result = run(config)
    assert VQNSP.from_pretrained(tmp_path / "pre" / "tokenizer" / "model").codebook_size == 512
    assert result.steps == 2 and (result.export_dir / "model.safetensors").is_file()
    # the two fits shared one accelerator: the backbone's checkpoint holds one model, not two
    ckpt = result.checkpoint
    assert [p.name for p in ckpt.glob("model*.safetensors")] == ["model.safetensors"]


def test_crop_counts_the_configured_patch_size(demo_spec, tmp_path):
    # 1.5-s crops are 3 patches of 100 samples (not a whole number of the default 200-sample patches)
    args = _args(demo_spec, tmp_path / "run", steps=1) + ["--data.crop_s", "1.5", "--model.patch_size", "100",
                                                          "--model.max_patches", "2"]
    assert main(args) == 0
    tok = VQNSP.from_pretrained(tmp_path / "run" / "model")
    assert tok.config.patch_size == 100 and tok.config.max_patches == 3
