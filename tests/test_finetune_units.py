"""finetune units without shards: heads, layer-wise LR decay, modes, schedule, batches, checkpoints, config."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from finetune.config import FinetuneConfig, TaskSpec
from finetune.data import TaskBatches, class_weights
from finetune.heads import ClassificationHead, layer_id, param_groups
from finetune.model import CheckpointError, TaskModel, load_backbone
from runtime.engine import warmup_cosine
from runtime.configfile import ConfigError, parse_cli
from foundation.model import EEGMamba, EEGMambaConfig
from shards.dataset import Window

SMALL = dict(d_model=32, n_layers=2, n_experts=2, top_k=1, moe_hidden=32)


def small_backbone(**kw) -> EEGMamba:
    torch.manual_seed(0)
    return EEGMamba(EEGMambaConfig.from_size("tiny", **{**SMALL, **kw}))


def batch(b=3, c=2, t=400):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, c, t, generator=g), torch.tensor([[5, 9]] * b), torch.ones(b, c, dtype=torch.bool)


def test_head_pools_and_shapes():
    model = TaskModel(small_backbone(), {"sleep": {"n_classes": 5, "task_id": 2}, "seizure": {"n_classes": 2, "task_id": 1}}, pool="mean")
    x, ids, mask = batch()
    logits, aux = model(x, ids, mask, "sleep")
    assert logits.shape == (3, 5) and aux.ndim == 0
    assert model(x, ids, mask, "seizure")[0].shape == (3, 2)
    with pytest.raises(KeyError, match="no head for task 'emotion'"):
        model(x, ids, mask, "emotion")
    # the head reads the feature its pool names
    model.eval()
    out = model.backbone(x, ids, mask, torch.full((3,), 2))
    head = model.heads["sleep"]
    assert torch.allclose(head(out), head.fc(head.norm(out.pooled)))
    head.pool = "cls"
    assert torch.allclose(head(out), head.fc(head.norm(out.cls)))
    with pytest.raises(ValueError, match="pool"):
        ClassificationHead(32, 2, pool="max")


def test_layer_decay_groups_follow_depth():
    model = TaskModel(small_backbone(), {"sleep": {"n_classes": 5, "task_id": 2}})
    L = model.backbone.config.n_layers
    assert layer_id("backbone.embed.encoder.net.0.weight", L) == 0
    assert layer_id("backbone.blocks.0.fwd.x_proj.weight", L) == 1
    assert layer_id("backbone.moes.1.gate.weight", L) == 2
    assert layer_id("backbone.norm.weight", L) == L + 1
    assert layer_id("heads.sleep.fc.weight", L) == L + 1
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.65, n_layers=L)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.embed.cls_token"]["lr"] == pytest.approx(1e-3 * 0.65 ** (L + 1))
    assert by_name["heads.sleep.fc.weight"]["lr"] == pytest.approx(1e-3)
    block1 = [n for n in by_name if n.startswith("backbone.blocks.1.")]
    assert block1 and all(by_name[n]["lr"] == pytest.approx(1e-3 * 0.65 ** (L + 1 - 2)) for n in block1)
    # no weight decay on biases, norms, embeddings tables, tokens and the SSM's A_log / D
    assert by_name["heads.sleep.fc.weight"]["weight_decay"] == 0.05
    assert by_name["heads.sleep.fc.bias"]["weight_decay"] == 0.0
    assert by_name["backbone.embed.spatial.weight"]["weight_decay"] == 0.0
    a_log = [n for n in by_name if n.endswith("A_log")]
    assert a_log and all(by_name[n]["weight_decay"] == 0.0 for n in a_log)
    # every trainable parameter is in exactly one group
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_linear_probe_freezes_backbone_and_keeps_it_in_eval():
    model = TaskModel(small_backbone(drop_path=0.2), {"emotion": {"n_classes": 2, "task_id": 3}}, mode="linear_probe")
    model.train()
    assert not model.backbone.training and model.heads.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.65, n_layers=2)
    assert {n.split(".")[0] for g in groups for n in g["names"]} == {"heads"}
    x, ids, mask = batch()
    before = [p.clone() for p in model.backbone.parameters()]
    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-2)
    logits, _ = model(x, ids, mask, "emotion")
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0])).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    # deterministic features in probe mode even while "training"
    assert torch.equal(model(x, ids, mask, "emotion")[0], model(x, ids, mask, "emotion")[0])


def test_lr_schedule_warmup_then_cosine():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.01)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def _windows(n, tag):
    return [Window(np.zeros((1, 200), np.float32), {"channels": ["CZ"], "label": i % 2, "id": f"{tag}{i}"}) for i in range(n)]


def test_task_batches_cover_every_window_once_and_interleave():
    windows = {"seizure": _windows(40, "a"), "sleep": _windows(120, "b")}
    tb = TaskBatches(windows, 8, seed=3, epoch=0)
    seen = Counter()
    order = []
    for task, idx in tb.plan:
        seen.update(f"{task}{i}" for i in idx)
        order.append(task)
    assert len(seen) == 160 and set(seen.values()) == {1}
    assert Counter(order) == {"seizure": 5, "sleep": 15}
    # proportional drawing interleaves: the smaller task is not all at the start or the end
    first_half = order[: len(order) // 2]
    assert 0 < first_half.count("seizure") < 5
    # the plan is a function of (seed, epoch) and ranks split it evenly without overlap
    assert TaskBatches(windows, 8, seed=3, epoch=0).plan == tb.plan
    assert TaskBatches(windows, 8, seed=3, epoch=1).plan != tb.plan
    r0 = TaskBatches(windows, 8, seed=3, rank=0, world_size=3).plan
    r1 = TaskBatches(windows, 8, seed=3, rank=1, world_size=3).plan
    assert len(r0) == len(r1) == 20 // 3
    assert not {(t, tuple(i)) for t, i in r0} & {(t, tuple(i)) for t, i in r1}
    task, b = next(iter(tb))
    assert b["x"].shape == (8, 1, 200) and b["label"].dtype == torch.long


def test_class_weights_inverse_frequency():
    w = class_weights([30, 10])
    assert w.tolist() == pytest.approx([40 / 60, 40 / 20])
    assert float((w * torch.tensor([30.0, 10.0])).sum() / 40) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\['N1'\]"):
        class_weights([5, 0, 3], ["W", "N1", "N2"])


def test_pretrained_checkpoint_loads_and_mismatch_is_a_clear_error(tmp_path):
    pre = small_backbone()
    pre.save_pretrained(tmp_path / "ckpt")
    backbone, info = load_backbone(tmp_path / "ckpt", drop_path=0.1)
    assert info["kind"] == "pretrained" and backbone.config.drop_path == 0.1
    for (k, a), b in zip(pre.state_dict().items(), backbone.state_dict().values()):
        assert torch.equal(a, b), k
    # architecture requested by the config must agree with the checkpoint
    with pytest.raises(CheckpointError, match=r"d_model=32 but the finetune config asks for model.d_model=64"):
        load_backbone(tmp_path / "ckpt", model_overrides={"d_model": 64})
    load_backbone(tmp_path / "ckpt", model_overrides={"d_model": 32})  # agreeing override is fine
    # weights of another width under this config.json
    other = small_backbone(d_model=48)
    other.save_pretrained(tmp_path / "wide")
    (tmp_path / "wide" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_backbone(tmp_path / "wide")
    with pytest.raises(FileNotFoundError, match="--checkpoint none"):
        load_backbone(tmp_path / "missing")
    fresh, info = load_backbone(None, size="tiny", model_overrides={"d_model": 48, "n_layers": 1})
    assert info["checkpoint"] is None and fresh.config.d_model == 48 and fresh.config.n_layers == 1


def test_task_model_round_trip_and_reuse_as_checkpoint(tmp_path):
    model = TaskModel(small_backbone(), {"sleep": {"n_classes": 3, "task_id": 2, "classes": ["W", "N2", "N3"]}}, pool="mean")
    folder = model.save_pretrained(tmp_path / "m", extra={"metrics": {"a": 1.0}})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["heads"]["sleep"]["classes"] == ["W", "N2", "N3"] and cfg["backbone"]["d_model"] == 32
    loaded = TaskModel.from_pretrained(folder)
    model.eval()
    x, ids, mask = batch()
    assert torch.allclose(model(x, ids, mask, "sleep")[0], loaded(x, ids, mask, "sleep")[0], atol=1e-6)
    # a finetuned folder can seed another run's backbone
    backbone, info = load_backbone(folder)
    assert info["kind"] == "finetuned"
    assert torch.equal(backbone.state_dict()["norm.weight"], model.backbone.state_dict()["norm.weight"])
    with pytest.raises(CheckpointError, match="not a finetuned model"):
        small_backbone().save_pretrained(tmp_path / "plain")
        TaskModel.from_pretrained(tmp_path / "plain")


def test_config_tasks_and_cli_errors(tmp_path):
    cfg, _ = parse_cli(FinetuneConfig, ["--recipe", "seizure,sleep", "--checkpoint", "none", "--data", "d", "--lr", "1e-3"])
    assert cfg.checkpoint is None and cfg.lr == 1e-3
    assert [t.recipe for t in cfg.task_specs()] == ["seizure", "sleep"]
    assert all(t.data == "d" for t in cfg.task_specs())
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        parse_cli(FinetuneConfig, ["--recipe", "sleep", "--learning_rate", "1"])
    toml = tmp_path / "mt.toml"
    toml.write_text('checkpoint = "none"\n[[tasks]]\nrecipe = "seizure"\ndata = "a"\n[[tasks]]\nrecipe = "sleep"\ndata = "b"\nclasses = ["W", "N2"]\n')
    cfg, _ = parse_cli(FinetuneConfig, ["--config", str(toml), "--epochs", "3"])
    assert cfg.task_specs() == (TaskSpec("seizure", "a", ()), TaskSpec("sleep", "b", ("W", "N2")))
    with pytest.raises(ValueError, match="no data for recipe 'sleep'"):
        FinetuneConfig(recipe="sleep").task_specs()
    with pytest.raises(ValueError, match="listed twice"):
        FinetuneConfig(recipe="sleep,sleep", data="x").task_specs()
    with pytest.raises(ValueError, match="single recipe"):
        FinetuneConfig(recipe="sleep,seizure", data="x", classes=("W", "N1")).task_specs()
    assert dataclasses.is_dataclass(cfg)


def test_shipped_multitask_config_parses():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "finetune" / "configs" / "multitask.toml"
    cfg, _ = parse_cli(FinetuneConfig, ["--config", str(path), "--checkpoint", "none"])
    specs = cfg.task_specs()
    assert [t.recipe for t in specs] == ["seizure", "sleep", "emotion", "motor_imagery"]
    assert specs[3].classes == ("left_fist", "right_fist") and cfg.checkpoint is None


def test_finetune_compares_only_the_model_keys_the_user_gave(tmp_path):
    from finetune.train import backbone_overrides
    from runtime.configfile import load_toml

    torch.manual_seed(0)
    base = tmp_path / "base"  # a checkpoint whose d_model / layers / experts are not tiny's
    EEGMamba(EEGMambaConfig.from_size("base", n_layers=1, moe_hidden=32)).save_pretrained(base)
    ckpt = ["--checkpoint", str(base)]

    def load(argv):
        config, _ = parse_cli(FinetuneConfig, [*ckpt, *argv])
        return load_backbone(str(base), model_overrides=backbone_overrides(config, str(base)))[0]

    # one field set, equal to the checkpoint's: the tiny preset it was filled in from is not compared
    assert load(["--model.n_tasks", "8"]).config.d_model == 128
    # the scan kernel is this run's choice, applied and never compared (the checkpoint stores "auto")
    torch_scan = load(["--model.scan_backend", "torch"])
    assert torch_scan.config.scan_backend == "torch" and torch_scan.blocks[0].fwd.scan_backend == "torch"
    shipped, _ = load_backbone("eegmamba-tiny-open", model_overrides=backbone_overrides(
        parse_cli(FinetuneConfig, ["--checkpoint", "eegmamba-tiny-open", "--model.scan_backend", "torch"])[0], "eegmamba-tiny-open"))
    assert shipped.config.scan_backend == "torch"
    # what the user did set is still held to the checkpoint
    with pytest.raises(CheckpointError, match="d_model=128 but the finetune config asks for model.d_model=64"):
        load(["--model.d_model", "64"])
    with pytest.raises(CheckpointError, match="but the finetune config asks for"):
        load(["--model.size", "tiny"])  # a preset asks for every field
    (tmp_path / "run.toml").write_text("[model]\nn_layers = 1\n")
    from_file = load_toml(FinetuneConfig, tmp_path / "run.toml")
    assert load_backbone(str(base), model_overrides=backbone_overrides(from_file, str(base)))[0].config.d_model == 128
    from_python = FinetuneConfig(model={"n_tasks": 8})
    assert backbone_overrides(from_python, str(base)) == {"n_tasks": 8}
    # from scratch the whole config is the model (tiny + the fields given)
    assert backbone_overrides(from_python, None)["d_model"] == 64
    # a finetuned model stores "auto" whatever kernel trained it
    model = TaskModel(torch_scan, {"seizure": {"n_classes": 2, "task_id": 1}})
    model.save_pretrained(tmp_path / "ft")
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["backbone"]["scan_backend"] == "auto"
    assert TaskModel.from_pretrained(tmp_path / "ft").backbone.config.scan_backend == "auto"


def test_read_depth_defaults_to_the_middle_layer_and_names_a_missing_one():
    from finetune.model import read_depth

    assert [read_depth(None, n) for n in (1, 2, 3, 8)] == [1, 1, 2, 4]  # ceil(n / 2)
    assert read_depth(None, 2, finetuned=True) == 2  # a finetuned backbone was cut already
    assert (read_depth(1, 8), read_depth(8, 8), read_depth(-1, 8), read_depth(-8, 8)) == (1, 8, 8, 1)
    for bad in (3, -3):
        with pytest.raises(ValueError, match=rf"read_layer={bad}: the backbone has 2 layer\(s\) \(expected 1\.\.2"):
            read_depth(bad, 2)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="read_layer must be a non-zero integer"):
            FinetuneConfig(recipe="seizure", read_layer=bad)
