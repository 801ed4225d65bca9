"""runtime.engine's checkpoint files: train_state.json written atomically, damaged checkpoints skipped on resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from torch import nn

import runtime.atomic
from runtime.engine import STATE_FILE, latest_checkpoint, save_checkpoint


def _save(out, step, acc):
    torch.manual_seed(step)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(acc, model, optimizer, out, step, {"step": step, "micro_batches": step, "scheduler": {}})


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names a descriptor's file through /proc")
def test_a_save_killed_while_writing_the_state_leaves_no_state_file(tmp_path, monkeypatch):
    acc = Accelerator(cpu=True)
    first = _save(tmp_path, 1, acc)
    assert json.loads((first / STATE_FILE).read_text())["step"] == 1

    real_fsync = os.fsync

    def killed(fd):  # the process dies after the state's bytes are handed to the OS, before they are on disk
        if STATE_FILE in os.readlink(f"/proc/self/fd/{fd}"):
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(runtime.atomic.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, acc)
    monkeypatch.setattr(runtime.atomic.os, "fsync", real_fsync)
    second = tmp_path / "checkpoints" / "step_00000002"
    assert (second / "model.safetensors").is_file() and not (second / STATE_FILE).exists()
    assert latest_checkpoint(tmp_path) == first


def test_latest_checkpoint_skips_a_state_file_that_does_not_parse(tmp_path):
    acc = Accelerator(cpu=True)
    first, second = _save(tmp_path, 1, acc), _save(tmp_path, 2, acc)
    assert latest_checkpoint(tmp_path) == second
    text = (second / STATE_FILE).read_text()
    (second / STATE_FILE).write_text(text[: len(text) // 2])  # damaged on disk
    with pytest.warns(RuntimeWarning, match=f"skipping checkpoint {second}.*not valid JSON"):
        assert latest_checkpoint(tmp_path) == first
    (second / STATE_FILE).write_text(json.dumps({"step": "two"}))
    with pytest.warns(RuntimeWarning, match="step_00000002"):
        assert latest_checkpoint(tmp_path) == first


def test_task_flags_of_every_rank_survive_the_ddp_buffer_broadcast():
    """Two ranks in threads with a fake sum all-reduce; DDP's broadcast_buffers is replayed by hand."""
    import copy
    import threading

    from foundation.model import EEGMamba, EEGMambaConfig
    from runtime.engine import SeenFlags

    torch.manual_seed(0)
    rank0 = EEGMamba(EEGMambaConfig.from_size("tiny", d_model=16, n_layers=2, n_experts=2, top_k=1, moe_hidden=16)).train()
    ranks = [rank0, copy.deepcopy(rank0)]
    seen = [SeenFlags(m) for m in ranks]
    tasks = [[0, 0, 0], [3, 2, 2]]  # rank 1 alone trains tasks 2 and 3; task 3 only at its first step
    x, ids = torch.randn(2, 2, 200), torch.tensor([[1, 2], [3, 4]])
    for step in range(3):
        for r, model in enumerate(ranks):
            for name, buf in model.named_buffers():  # DDP: rank 0's buffers overwrite the others' at each forward
                buf.copy_(dict(rank0.named_buffers())[name])
            model(x, ids, task_ids=torch.full((2,), tasks[r][step]))
            seen[r].collect(model)
    rows = lambda m: [moe.task_seen.nonzero().flatten().tolist() for moe in m.moes]  # noqa: E731
    assert rows(ranks[0]) == [[0], [0]] and rows(ranks[1]) == [[0, 2], [0, 2]]  # task 3 already lost

    slots, barrier = [None, None], threading.Barrier(2)

    class Rank:  # what SeenFlags.sync uses of an Accelerator
        num_processes = 2

        def __init__(self, index):
            self.index = index

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            slots[self.index] = tensor.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

    threads = [threading.Thread(target=seen[r].sync, args=(Rank(r), ranks[r])) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert rows(ranks[0]) == rows(ranks[1]) == [[0, 2, 3], [0, 2, 3]]
    trained = ranks[0].moes[0].task_embed.weight[3].clone()
    assert ranks[0].inherit_task_rows([1, 3]) == {0: [1], 1: [1]}  # row 3 was trained: kept
    assert torch.equal(ranks[0].moes[0].task_embed.weight[3], trained)


def test_a_resumed_codebook_restarts_dead_codes_as_an_uninterrupted_one(tmp_path):
    import torch.nn.functional as F

    from runtime.resume_state import load_training_state, save_training_state
    from tokenizer.codebook import EMACodebook

    acc = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(3, 8, generator=g), dim=-1)  # 3 clusters: most of 32 codes die and restart
    data = [centres[torch.randint(3, (48,), generator=g)] + 0.1 * torch.randn(48, 8, generator=g) for _ in range(40)]

    def fresh():
        torch.manual_seed(0)
        model = nn.Module()
        model.codebook = EMACodebook(32, 8, kmeans_init=False, dead_code_threshold=0.5, pool_size=64)
        model.head = nn.Linear(1, 1)
        return model.train(), torch.optim.SGD(model.head.parameters(), lr=0.1)

    whole, _ = fresh()
    restarts = sum(whole.codebook(z).n_restarted for z in data)
    first, optimizer = fresh()
    for z in data[:20]:
        first.codebook(z)
    save_training_state(acc, first, optimizer, tmp_path)
    assert (tmp_path / "buffers_0.safetensors").is_file()
    resumed, optimizer = fresh()
    load_training_state(acc, resumed, optimizer, tmp_path)
    later = sum(resumed.codebook(z).n_restarted for z in data[20:])
    assert restarts > later > 0
    for name in ("embed", "cluster_size", "recent_usage", "last_used", "pool"):
        assert torch.equal(getattr(resumed.codebook, name), getattr(whole.codebook, name)), name
    # the exported weights still hold none of it: an export loads strictly, as before
    assert not {"recent_usage", "pool", "steps"} & {k.split(".")[-1] for k in whole.state_dict()}


def test_extending_or_moving_a_run_needs_the_override_the_readme_names(tmp_path):
    from pretrain.resume_settings import ResumeSettingsError, check_resume_settings

    saved = {"train": {"max_steps": 100, "stop_after": 50}, "data": {"shards": "/a/*.tar"}}
    longer = {"train": {"max_steps": 200, "stop_after": None}, "data": {"shards": "/b/*.tar"}}
    with pytest.raises(ResumeSettingsError, match="--train.resume_override data.shards,train.max_steps"):
        check_resume_settings(saved, longer, "", tmp_path)
    applied = check_resume_settings(saved, longer, "train.max_steps,data.shards", tmp_path)
    assert applied == {"data.shards": ("/a/*.tar", "/b/*.tar"), "train.max_steps": (100, 200)}
    paused = {"train": {"max_steps": 100, "stop_after": None}, "data": {"shards": "/a/*.tar"}}
    assert check_resume_settings(saved, paused, "", tmp_path) == {}  # stop_after is not a training setting
