"""pretrain.engine's checkpoint files: train_state.json written atomically, damaged checkpoints skipped on resume."""

from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator
from torch import nn

import shards.atomic
from pretrain.engine import STATE_FILE, latest_checkpoint, save_checkpoint


def _save(out, step, acc):
    torch.manual_seed(step)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(acc, model, optimizer, out, step, {"step": step, "micro_batches": step, "scheduler": {}})


def test_a_save_killed_while_writing_the_state_leaves_no_state_file(tmp_path, monkeypatch):
    acc = Accelerator(cpu=True)
    first = _save(tmp_path, 1, acc)
    assert json.loads((first / STATE_FILE).read_text())["step"] == 1

    def killed(fd):  # the process dies after the bytes are handed to the OS, before they are on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(shards.atomic.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, acc)
    monkeypatch.setattr(shards.atomic.os, "fsync", os.fsync)
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
