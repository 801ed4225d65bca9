"""The strict checkpoint mixin shared by the backbone and the tokenizer."""

import pytest
import torch

from foundation.checkpoint import CheckpointError
from foundation.model import EEGMamba, EEGMambaConfig
from tokenizer.vqnsp import VQNSP, VQNSPConfig


def test_a_tokenizer_folder_is_not_a_backbone_and_vice_versa(tmp_path):
    VQNSP(VQNSPConfig.from_size("tiny")).save_pretrained(tmp_path / "tok")
    EEGMamba(EEGMambaConfig.from_size("tiny")).save_pretrained(tmp_path / "bb")
    with pytest.raises(CheckpointError, match=r"config\.json.*EEGMamba backbone checkpoint"):
        EEGMamba.from_pretrained(tmp_path / "tok")
    with pytest.raises(CheckpointError, match=r"config\.json.*VQNSP tokenizer checkpoint"):
        VQNSP.from_pretrained(tmp_path / "bb")


def test_missing_folder_names_the_class_and_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VQNSP tokenizer folder .*config\.json and model\.safetensors"):
        VQNSP.from_pretrained(tmp_path / "nowhere")


def test_loaded_models_are_in_eval_mode_with_equal_weights(tmp_path):
    torch.manual_seed(0)
    model = EEGMamba(EEGMambaConfig.from_size("tiny"))
    model.save_pretrained(tmp_path)
    loaded = EEGMamba.from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


SMALL = {"d_model": 32, "n_layers": 1, "n_experts": 2, "top_k": 1, "moe_hidden": 32}


def test_scan_backend_is_a_runtime_choice_never_stored(tmp_path, monkeypatch):
    import json

    import foundation.ssm as ssm
    from pretrain.resume_settings import check_resume_settings

    torch.manual_seed(0)
    forced = EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL, scan_backend="torch"))
    forced.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["scan_backend"] == "auto"
    # an export from before the fix, trained with the Triton kernel forced: it still loads, and runs on a CPU
    old = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**old, "scan_backend": "triton"}))
    loaded = EEGMamba.from_pretrained(tmp_path / "a")
    assert loaded.config.scan_backend == "auto" and loaded.config == forced.config.__class__(**{**forced.config.to_dict(), "scan_backend": "auto"})
    x, ids = torch.randn(2, 3, 400), torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.testing.assert_close(loaded(x, ids).pooled, forced.eval()(x, ids).pooled)
    # the environment variable (and a config value given at run time) still force the kernel
    monkeypatch.setenv(ssm.SCAN_BACKEND_ENV, "ref")
    assert ssm.selective_scan_backend(x) == "ref" and ssm.selective_scan_backend(x, "torch") == "torch"
    # resume compares the training maths, not the kernel
    saved, now = {"model": {"scan_backend": "triton", "d_model": 32}}, {"model": {"scan_backend": "torch", "d_model": 32}}
    assert check_resume_settings(saved, now, "", tmp_path) == {}


def test_save_pretrained_writes_a_card_of_the_model_not_a_template(tmp_path):
    import json

    config = EEGMambaConfig.from_size("tiny")
    EEGMamba(config).save_pretrained(tmp_path / "bb")
    VQNSP(VQNSPConfig.from_size("tiny")).save_pretrained(tmp_path / "tok")
    card = (tmp_path / "bb" / "README.md").read_text()
    assert "More Information Needed" not in card and "\n# EEGMamba\n" in card
    stored = json.loads((tmp_path / "bb" / "config.json").read_text())
    assert all(f"| {k} | `{json.dumps(v)}` |" in card for k, v in stored.items())
    assert 'EEGMamba.from_pretrained("path/to/this/folder")' in card
    tok = (tmp_path / "tok" / "README.md").read_text()
    assert "\n# VQNSP\n" in tok and "from tokenizer import VQNSP" in tok and "More Information Needed" not in tok
