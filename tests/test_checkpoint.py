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
