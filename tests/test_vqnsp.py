"""VQ-NSP tokenizer: targets, short training on simulated and real EEG, encode, padding, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from foundation.model import CheckpointError
from tokenizer.vqnsp import VQNSP, VQNSPConfig, spectrum_targets

SFREQ = 200.0
# A short run needs a short EMA memory: with decay 0.99 dead codes are only recognised after ~400 steps.
SHORT_RUN = dict(decay=0.9, dead_code_threshold=0.1)


def _pink_alpha(rng: np.random.Generator, b: int, c: int, t: int) -> torch.Tensor:
    """Simulated EEG in 100 µV units: 1/f noise (~20 µV) plus an 8-12 Hz alpha of random strength."""
    white = rng.standard_normal((b, c, t))
    freqs = np.fft.rfftfreq(t, 1 / SFREQ)
    shaped = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(freqs, 0.5)), n=t)
    shaped *= 0.2 / shaped.std()
    tt = np.arange(t) / SFREQ
    alpha = rng.uniform(0, 0.6, (b, c, 1)) * np.sin(
        2 * np.pi * rng.uniform(8, 12, (b, 1, 1)) * tt + rng.uniform(0, 2 * np.pi, (b, c, 1))
    )
    return torch.from_numpy(shaped + alpha).float()


def _train(model: VQNSP, batches, steps: int, lr: float = 1e-3) -> list[dict]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    logs = []
    for step in range(steps):
        x, ids, mask = batches(step)
        out = model(x, ids, mask)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        logs.append({k: float(out[k].detach()) for k in ("loss_amp", "loss_phase", "loss_quant", "perplexity", "usage")})
    return logs


def _check_training(logs: list[dict], n_tokens: int) -> None:
    first = {k: np.mean([l[k] for l in logs[:3]]) for k in logs[0]}
    last = {k: np.mean([l[k] for l in logs[-3:]]) for k in logs[0]}
    # z-scored targets: predicting 0 scores 1.0; the trained decoder must beat its start clearly.
    assert last["loss_amp"] < 0.9 * first["loss_amp"] and last["loss_amp"] < 0.9, (first, last)
    assert last["loss_phase"] < first["loss_phase"], (first, last)
    # No collapse: many distinct codes per batch (floor: perplexity >= n_tokens / 4, >= 8% of the codebook).
    assert min(l["perplexity"] for l in logs[-3:]) >= n_tokens / 4, logs[-3:]
    assert min(l["usage"] for l in logs[-3:]) >= 0.08, logs[-3:]


def test_short_training_on_simulated_eeg():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = VQNSP(VQNSPConfig.from_size("tiny", **SHORT_RUN))
    b, c, t = 8, 4, 800
    ids = torch.arange(c).repeat(b, 1) + 5
    mask = torch.ones(b, c, dtype=torch.bool)
    logs = _train(model, lambda step: (_pink_alpha(rng, b, c, t), ids, mask), steps=20)
    _check_training(logs, n_tokens=b * c * 4)


def _real_windows(shared_data) -> tuple[torch.Tensor, list[str]]:
    """4-s windows [n, c, 800] of a real resting-state recording, preprocessed by shards (100 µV, 200 Hz)."""
    from shards.preprocess import PreprocessConfig, preprocess_raw
    from shards.readers import read_raw

    signal = preprocess_raw(read_raw(shared_data / "unlabeled/yasa/data_resting_EO_200Hz_raw.fif"), PreprocessConfig())
    data = signal.data
    n = data.shape[1] // 800
    windows = torch.from_numpy(data[:, : n * 800].reshape(data.shape[0], n, 800).transpose(1, 0, 2).copy()).float()
    return windows, list(signal.channels)


@pytest.mark.slow  # ~25 s alone on 2 cores, over a minute when they are shared
@pytest.mark.shared_data
def test_short_training_on_real_recording(shared_data):
    windows, names = _real_windows(shared_data)  # ~90 windows x 2 channels
    assert windows.shape[1:] == (2, 800) and len(windows) > 40
    torch.manual_seed(1)
    model = VQNSP(VQNSPConfig.from_size("tiny", **SHORT_RUN))
    b = 16
    from shards.vocabulary import channel_ids

    ids = torch.tensor([channel_ids(names)]).repeat(b, 1)
    mask = torch.ones(b, 2, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)

    def batches(step):
        return windows[torch.randint(len(windows), (b,), generator=gen)], ids, mask

    logs = _train(model, batches, steps=20)
    _check_training(logs, n_tokens=b * 2 * 4)


@pytest.mark.parametrize("freq", [4, 10, 27])
def test_sinusoid_amplitude_target_peaks_at_its_bin(freq):
    t = torch.arange(600) / SFREQ
    x = torch.stack([torch.sin(2 * math.pi * freq * t), 0.5 * torch.cos(2 * math.pi * (freq + 5) * t)]).unsqueeze(0)
    amp, phase = spectrum_targets(x, torch.ones(1, 2, dtype=torch.bool))
    assert amp.shape == phase.shape == (1, 2, 3, 101)
    assert (amp[0, 0].argmax(-1) == freq).all() and (amp[0, 1].argmax(-1) == freq + 5).all()
    # z-scored per sample over (channel, patch, bin)
    assert abs(amp.mean().item()) < 1e-5 and abs(amp.std(unbiased=False).item() - 1) < 1e-4
    # The sine's phase at its bin: -pi/2 for sin (every 1-s patch starts at phase 0).
    raw_phase = torch.fft.rfft(x[0, 0, :200]).angle()[freq]
    assert abs(raw_phase.item() + math.pi / 2) < 1e-3


def test_padding_excluded_from_targets_and_codes():
    torch.manual_seed(2)
    model = VQNSP(VQNSPConfig.from_size("tiny", kmeans_init=False)).eval()
    x = torch.randn(2, 3, 600) * 0.3
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    garbage = x.clone()
    garbage[1, 2] = 1e4
    a = model(x, ids, mask)
    b_ = model(garbage, ids, mask)
    assert torch.equal(a["codes"], b_["codes"]) and (a["codes"][1, 2] == -1).all()
    assert torch.allclose(a["loss"], b_["loss"])
    # Sample 1 alone (no padding) gets the same codes as inside the padded batch.
    alone = model.encode(x[1:, :2], ids[1:, :2], mask[1:, :2])
    assert torch.equal(alone[0], a["codes"][1, :2])
    assert torch.equal(model.encode(x, ids, mask), a["codes"])


def test_forward_outputs_and_encode_deterministic():
    torch.manual_seed(3)
    cfg = VQNSPConfig.from_size("tiny", drop_path=0.2)
    model = VQNSP(cfg)
    x = torch.randn(2, 3, 800) * 0.3
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = model(x, ids, torch.ones(2, 3, dtype=torch.bool))
    for key in ("loss", "loss_quant", "loss_amp", "loss_phase", "perplexity", "usage", "dead_fraction", "n_restarted"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    assert out["codes"].shape == (2, 3, 4) and out["codes"].dtype == torch.long
    assert out["pred_amp"].shape == out["target_phase"].shape == (2, 3, 4, 101)
    assert model.codebook_size == 512
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    c1 = model.encode(x, ids)
    c2 = model.encode(x, ids)
    assert torch.equal(c1, c2) and c1.min() >= 0 and c1.max() < 512
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # no codebook update
    model.train()  # encode is deterministic even from training mode, and restores the mode
    assert torch.equal(model.encode(x, ids), c1) and model.training


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(4)
    model = VQNSP(VQNSPConfig.from_size("tiny", kmeans_init_samples=64, **SHORT_RUN))
    x = torch.randn(8, 2, 400) * 0.3
    ids = torch.tensor([[3, 4]]).repeat(8, 1)
    for _ in range(3):  # past the k-means init, with EMA and BatchNorm statistics
        model(x, ids)
    model.eval()
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "config.json").is_file() and (tmp_path / "tok" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["codebook_size"] == 512
    loaded = VQNSP.from_pretrained(tmp_path / "tok")
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(loaded.codebook.embed, model.codebook.embed) and bool(loaded.codebook.initialized)
    assert torch.equal(loaded.encode(x, ids), model.encode(x, ids))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VQNSP.from_pretrained(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"d_model": 32, "n_experts": 4}))
    with pytest.raises(CheckpointError, match="n_experts"):
        VQNSP.from_pretrained(tmp_path / "bad")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"codebook_size": 16}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VQNSP.from_pretrained(tmp_path / "noweights")


def test_config_validation_and_input_errors():
    with pytest.raises(ValueError, match="unknown size"):
        VQNSPConfig.from_size("huge")
    with pytest.raises(ValueError, match="codebook_size"):
        VQNSPConfig(codebook_size=1)
    with pytest.raises(ValueError, match="code_norm"):
        VQNSPConfig(code_norm="layer")
    model = VQNSP(VQNSPConfig.from_size("tiny"))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model(torch.randn(1, 2, 350), torch.zeros(1, 2, dtype=torch.long))


def _train_then_compare_codes(code_norm: str, steps: int = 25) -> float:
    """Fraction of real tokens whose training-mode code equals ``encode``'s after a short run."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = VQNSP(VQNSPConfig.from_size("tiny", code_norm=code_norm, max_patches=4))
    ids = torch.arange(1, 5).repeat(8, 1)
    _train(model, lambda step: (_pink_alpha(rng, 8, 4, 800), ids, None), steps)
    x = _pink_alpha(rng, 8, 4, 800)
    model.train()
    model.codebook.eval()  # compare the normalisation paths, not this step's EMA update / restarts
    trained = model(x, ids)["codes"]
    return float((trained == model.encode(x, ids)).float().mean())


def test_training_codes_are_the_codes_encode_gives():
    assert _train_then_compare_codes("batchnorm") < 0.95  # batch statistics vs running statistics
    assert _train_then_compare_codes("running") >= 0.99


def test_old_tokenizer_config_keeps_the_legacy_patch_norm_and_dead_code_rule(tmp_path):
    tok = VQNSP(VQNSPConfig.from_size("tiny", patch_norm="patch", dead_decay=None))
    tok.save_pretrained(tmp_path / "tok")
    file = tmp_path / "tok" / "config.json"
    data = json.loads(file.read_text())
    for key in ("patch_norm", "dead_decay", "usage_window"):
        data.pop(key)
    file.write_text(json.dumps(data))
    loaded = VQNSP.from_pretrained(tmp_path / "tok")
    assert (loaded.config.patch_norm, loaded.config.dead_decay) == ("patch", None)
    assert loaded.embed.encoder.patch_norm == "patch" and loaded.codebook.dead_decay is None
    assert VQNSPConfig().patch_norm == "sample" and VQNSPConfig().code_norm == "running"
