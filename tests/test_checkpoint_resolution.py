"""Loading a checkpoint by name: local folder, Hub repo id (pinned revision, offline cache), shipped name.

The Hub tests write huggingface_hub's cache layout themselves under a temporary HF_HOME
(``hub/models--org--name/snapshots/<commit>/...`` + ``refs/<branch or tag>``) and set HF_HUB_OFFLINE=1:
nothing reaches the network.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from finetune.model import load_backbone
from foundation.checkpoint import released_checkpoints, resolve_checkpoint
from foundation.model import EEGMamba, EEGMambaConfig

SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}
REV_A = "a" * 40
REV_B = "b" * 40


def _model(seed: int) -> EEGMamba:
    torch.manual_seed(seed)
    return EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding org/eeg-small at two commits: main -> REV_B, tag v1 -> REV_A."""
    repo = tmp_path / "hf" / "hub" / "models--org--eeg-small"
    for rev, seed in ((REV_A, 1), (REV_B, 2)):
        _model(seed).save_pretrained(repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV_B)
    (repo / "refs" / "v1").write_text(REV_A)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo


def _same(a: EEGMamba, b: EEGMamba) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_hub_repo_id_offline_with_revision_pinning(hub_cache):
    assert resolve_checkpoint("org/eeg-small") == hub_cache / "snapshots" / REV_B
    assert resolve_checkpoint("org/eeg-small@v1") == hub_cache / "snapshots" / REV_A
    assert resolve_checkpoint("org/eeg-small", revision=REV_A) == hub_cache / "snapshots" / REV_A
    assert _same(EEGMamba.from_pretrained("org/eeg-small@v1"), _model(1))
    assert _same(EEGMamba.from_pretrained("org/eeg-small", revision=REV_B), _model(2))
    backbone, info = load_backbone(f"org/eeg-small@{REV_A}")
    assert _same(backbone, _model(1)) and info["checkpoint"].endswith(REV_A)


def test_hub_miss_offline_is_a_clear_error(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"org/other.*HF_HUB_OFFLINE is set"):
        EEGMamba.from_pretrained("org/other")
    with pytest.raises(FileNotFoundError, match="revision nope"):
        resolve_checkpoint("org/eeg-small@nope")
    with pytest.raises(FileNotFoundError, match="--checkpoint none"):
        load_backbone("org/other")


def test_local_folder_wins_and_missing_paths_say_what_was_tried(tmp_path, monkeypatch):
    _model(3).save_pretrained(tmp_path / "org" / "local")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("org/local") == Path("org/local")  # an existing folder is never a Hub id
    with pytest.raises(FileNotFoundError, match="no such local folder .*starts like a path"):
        resolve_checkpoint(tmp_path / "a" / "b" / "c")
    with pytest.raises(FileNotFoundError, match="does not exist.*shipped checkpoint name"):
        resolve_checkpoint("no-such-name")


def test_a_mistyped_local_path_is_never_looked_up_on_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    fetched = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: fetched.append(a) or str(tmp_path))
    (tmp_path / "runs" / "pretrain").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for text, why in (("runs/model", "first segment runs/ is a local folder"), ("./org/name", "starts like a path"),
                      ("../org/name", "starts like a path"), ("~/eegfm-no-such-folder/model", "starts like a path")):
        with pytest.raises(FileNotFoundError, match=f"no such local folder .*{why}"):
            resolve_checkpoint(text)
        with pytest.raises(FileNotFoundError, match="no such local folder"):
            EEGMamba.from_pretrained(text)
    assert fetched == []
    # org/name whose "org" is no folder here is still a Hub id
    assert resolve_checkpoint("org/name") == tmp_path and fetched == [("org/name",)]


def test_shipped_checkpoint_by_name(monkeypatch, tmp_path):
    import foundation.checkpoint as ckpt

    shipped = tmp_path / "released"
    _model(4).save_pretrained(shipped / "eegmamba-test")
    monkeypatch.setattr(ckpt, "RELEASED_DIR", shipped)
    assert released_checkpoints() == ["eegmamba-test"]
    assert _same(EEGMamba.from_pretrained("eegmamba-test"), _model(4))
    with pytest.raises(FileNotFoundError, match="eegmamba-test"):
        resolve_checkpoint("eegmamba-nope")
    shutil.rmtree(shipped)
