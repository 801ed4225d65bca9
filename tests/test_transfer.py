"""Readout, LP-FT, selection, thresholds and alignment of finetuning: each on values, not just that it ran."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.align import ALIGNED_RMS_UV, FeatureMoments, align_array, align_groups, standardize_groups
from finetune.config import FinetuneConfig
from finetune.heads import ClassificationHead
from finetune.metrics import choose_threshold, classification_metrics, is_constant_predictor, selection_score
from finetune.probe import fit_probe
from foundation.model import EEGMamba, EEGMambaConfig
from foundation.readout import align_channels, channel_log_rms, channel_means
from runtime.signal import UNIT_UV
from shards.sample import Window

SMALL = dict(d_model=32, n_layers=1, n_experts=2, top_k=1, moe_hidden=32)


def test_threshold_maximises_balanced_accuracy_and_is_used():
    y = np.repeat([0, 0, 0, 0, 1, 1], 4)
    p1 = np.repeat([0.05, 0.10, 0.15, 0.20, 0.30, 0.35], 4)  # perfectly ranked, all below 0.5
    proba = np.c_[1 - p1, p1]
    t = choose_threshold(y, proba)
    assert 0.20 < t <= 0.30
    at_half = classification_metrics(y, proba)
    calibrated = classification_metrics(y, proba, threshold=t)
    assert at_half["balanced_accuracy"] == 0.5 and at_half["predicted_classes"] == 1 and is_constant_predictor(at_half)
    assert calibrated["balanced_accuracy"] == 1.0 and calibrated["auroc"] == 1.0 and not is_constant_predictor(calibrated)
    assert choose_threshold(np.zeros(24, dtype=int), proba) is None  # one class: nothing to calibrate
    # a few windows are separated perfectly by many thresholds: too few to move the boundary from 0.5
    assert choose_threshold(y[::4], proba[::4]) is None and choose_threshold(y[::4], proba[::4], min_windows=6) == t


def test_no_threshold_from_a_validation_set_ranked_backwards():
    y = np.repeat([0, 0, 0, 0, 1, 1, 1, 1], 3)
    p1 = np.repeat([0.58, 0.52, 0.55, 0.49, 0.47, 0.50, 0.51, 0.60], 3)  # AUROC 0.375: the subjects are ranked backwards
    proba = np.c_[1 - p1, p1]
    assert classification_metrics(y, proba)["auroc"] < 0.5
    assert choose_threshold(y, proba) is None  # decide at 0.5, not at an extreme that calls all but one alike
    flat = np.full((24, 2), 0.5)
    assert choose_threshold(y, flat) is None  # ties everywhere: AUROC 0.5
    better = np.c_[1 - p1[::-1], p1[::-1]]  # the same scores in an order that ranks the set above chance
    assert classification_metrics(y, better)["auroc"] > 0.5 and choose_threshold(y, better) is not None


def test_selection_score_cannot_prefer_a_constant_predictor():
    y = np.array([0, 1] * 10)
    constant = np.tile([0.6, 0.4], (20, 1))
    informative = np.c_[1 - (y * 0.3 + 0.35), y * 0.3 + 0.35]
    assert selection_score(classification_metrics(y, constant)) == 0.5
    assert selection_score(classification_metrics(y, informative)) == 1.0
    multi = classification_metrics(np.array([0, 1, 2, 0, 1, 2]), np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3)
    assert multi["auroc_macro"] == 1.0 and selection_score(multi) == 1.0


def test_selection_never_prefers_an_epoch_whose_outputs_barely_move():
    from types import SimpleNamespace

    from finetune.metrics import responds
    from finetune.train import keep_if_best

    y = np.array([0, 1, 1])  # three validation windows, as a tiny task's split leaves
    still = np.c_[1 - np.array([0.5000, 0.5004, 0.5008]), [0.5000, 0.5004, 0.5008]]  # a fresh head: ranks them all right
    moving = np.c_[1 - np.array([0.30, 0.70, 0.20]), [0.30, 0.70, 0.20]]
    m_still, m_moving = classification_metrics(y, still), classification_metrics(y, moving)
    assert m_still["auroc"] == 1.0 and m_moving["auroc"] == 0.5
    assert not responds(m_still) and responds(m_moving) and is_constant_predictor(m_still)

    fit = _fit()
    acc = SimpleNamespace(unwrap_model=lambda m: m)
    # a margin does not protect an unresponsive probe: any responsive epoch replaces it
    assert keep_if_best(fit, -1, (responds(m_still), selection_score(m_still), -m_still["nll"]), 0.3, acc, 1.0)
    assert keep_if_best(fit, 0, (responds(m_moving), selection_score(m_moving), -m_moving["nll"]), 0.3, acc, 1.0)
    assert fit.best_epoch == 0  # lower AUROC, but it responds to its input
    assert not keep_if_best(fit, 1, (False, 1.0, 0.0), 0.0, acc) and fit.best_epoch == 0
    assert keep_if_best(fit, 2, (True, 0.75, -1.0), 0.0, acc) and fit.best_epoch == 2
    assert not keep_if_best(fit, 3, (True, 0.75, -2.0), 0.0, acc)  # equal score: the lower loss stays
    assert keep_if_best(fit, 4, (True, 0.75, -0.5), 0.0, acc) and fit.best_epoch == 4


def _fit():
    from types import SimpleNamespace

    return SimpleNamespace(best_score=(False, -np.inf, -np.inf), best_se=0.0, best_epoch=-2, best_state=None,
                           model=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("margin, kept", [(0.0, [-1, 0, 1, 3, 4]), (1.0, [-1, 1, 3, 4]), (2.0, [-1, 4])])
def test_a_finetuned_epoch_replaces_the_probe_only_by_more_than_the_margin(margin, kept):
    from types import SimpleNamespace

    from finetune.train import keep_if_best

    acc = SimpleNamespace(unwrap_model=lambda m: m)
    fit = _fit()
    # the probe scores 0.70 +- 0.05; then the epochs' validation scores, each as noisy as the probe's
    scores = {-1: 0.70, 0: 0.74, 1: 0.76, 2: 0.755, 3: 0.78, 4: 0.81}
    got = [e for e, v in scores.items() if keep_if_best(fit, e, (True, v, 0.0), 0.05, acc, margin)]
    assert got == kept and fit.best_epoch == 4
    # once a finetuned epoch is kept, the next must only beat it (no margin against a finetuned epoch)
    fit = _fit()
    for e, v in [(-1, 0.70), (0, 0.76), (1, 0.761)]:
        keep_if_best(fit, e, (True, v, 0.0), 0.05, acc, 1.0)
    assert fit.best_epoch == 1 and fit.best_se == 0.05


def test_an_epoch_noisier_than_the_probe_must_beat_it_by_its_own_error():
    from types import SimpleNamespace

    from finetune.train import keep_if_best

    acc = SimpleNamespace(unwrap_model=lambda m: m)
    fit = _fit()
    assert keep_if_best(fit, -1, (True, 0.70, 0.0), 0.02, acc, 1.0)
    # 0.75 is 2.5 probe errors above the probe, but within the epoch's own error of 0.06
    assert not keep_if_best(fit, 0, (True, 0.75, 0.0), 0.06, acc, 1.0) and fit.best_epoch == -1
    assert keep_if_best(fit, 1, (True, 0.77, 0.0), 0.06, acc, 1.0) and fit.best_epoch == 1
    # with no margin the errors play no part: the best validation score is kept
    fit = _fit()
    for e, v in [(-1, 0.70), (0, 0.75)]:
        keep_if_best(fit, e, (True, v, 0.0), 0.02 if e < 0 else 0.06, acc, 0.0)
    assert fit.best_epoch == 0


def test_selection_error_counts_validation_subjects():
    from finetune.metrics import selection_se

    # 4 validation subjects of 50 windows each, two of them much easier than the others: the score depends on
    # which subjects were drawn far more than 200 independent windows would say
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(4)], 50)
    y = np.tile(np.r_[np.zeros(25, int), np.ones(25, int)], 4)
    shift = np.repeat([2.0, 2.0, 0.0, 0.1], 50)
    p1 = 1 / (1 + np.exp(-(y - 0.5) * shift - rng.normal(0, 0.5, 200)))
    proba = np.c_[1 - p1, p1]
    m = classification_metrics(y, proba)
    windows, subjects = selection_se(y, proba, m), selection_se(y, proba, m, groups)
    assert subjects > 2 * windows
    # one recording whose windows drift the same way in time: blocks of it are resampled and show the drift
    assert selection_se(y, proba, m, np.repeat("s0", 200)) > 1.5 * windows
    # the same windows in an order that mixes them: the blocks are alike and the window-level error stands
    mixed = np.argsort(np.tile(np.arange(50), 4), kind="stable")
    assert selection_se(y[mixed], proba[mixed], m, np.repeat("s0", 200)) == pytest.approx(windows, rel=0.3)


def test_selection_error_of_macro_auroc_counts_one_recordings_drift():
    from finetune.metrics import selection_se

    # one sleep-like recording of 400 windows in stage bouts of 10, four classes; the model separates the stages
    # well in its first half and barely in its second: resampling windows alone misses that the halves differ
    rng = np.random.default_rng(1)
    y = np.repeat(rng.permutation(np.repeat(np.arange(4), 10)), 10)
    strength = np.r_[np.full(200, 3.0), np.full(200, 0.3)]
    logits = rng.normal(size=(400, 4)) + strength[:, None] * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba)
    windows = selection_se(y, proba, m)
    assert math.isfinite(m["auroc_macro"]) and selection_se(y, proba, m, np.repeat("night", 400)) > 2 * windows


def test_selection_error_is_the_score_error_of_the_windows():
    from finetune.metrics import selection_se
    from runtime.score_error import auroc_se

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    p1 = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 40), 0.01, 0.99)
    m = classification_metrics(y, np.c_[1 - p1, p1])
    assert selection_se(y, np.c_[1 - p1, p1], m) == pytest.approx(auroc_se(m["auroc"], 10, 30))
    assert 0.02 < selection_se(y, np.c_[1 - p1, p1], m) < 0.15
    # three windows: an error as large as the score's whole range above chance
    tiny = classification_metrics(np.array([0, 1, 1]), np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]))
    assert selection_se(np.array([0, 1, 1]), np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]), tiny) > 0.2
    # multi-class: macro AUROC's error shrinks with more windows
    y3 = np.repeat([0, 1, 2], 10)
    p3 = np.eye(3)[y3] * 0.5 + 0.5 / 3
    m3 = classification_metrics(y3, p3)
    y30 = np.repeat([0, 1, 2], 100)
    m30 = classification_metrics(y30, np.eye(3)[y30] * 0.5 + 0.5 / 3)
    assert m3["auroc_macro"] == 1.0 and 0 <= selection_se(y30, np.eye(3)[y30], m30) < selection_se(y3, p3, m3)


def test_probe_head_reproduces_sklearn_predictions():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(120, 6)) * [1, 2, 3, 0.5, 1, 4] + [0, 1, 2, 3, 4, 5]
    y = (f[:, 0] + 0.5 * f[:, 2] > 1.0).astype(int)
    probe = fit_probe(f[:80], y[:80], f[80:], y[80:], 2)
    head = ClassificationHead(6, 2, pool="mean", norm="standard")
    head.set_statistics(torch.from_numpy(probe.mean), torch.from_numpy(probe.std))
    head.set_linear(torch.from_numpy(probe.weight), torch.from_numpy(probe.bias))
    out = type("Out", (), {"pooled": torch.from_numpy(f).float()})()
    ours = torch.softmax(head(out), -1).detach().numpy()
    theirs = torch.softmax(torch.from_numpy(probe.logits(f)), -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert probe.C in probe.scores and probe.scores[probe.C] == max(probe.scores.values())


def test_channel_readout_does_not_depend_on_file_channel_order():
    torch.manual_seed(0)
    tokens = torch.randn(2, 3 * 4, 5)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False  # sample 1: third channel is padding
    per = channel_means(tokens, mask, 3)
    torch.testing.assert_close(per[0, 1], tokens[0, 4:8].mean(0))
    assert torch.all(per[1, 2] == 0)
    ids = torch.tensor([[10, 20, 30], [30, 10, 0]])
    cmask = torch.tensor([[True, True, True], [True, True, False]])
    out = align_channels(per, ids, cmask, torch.tensor([10, 20, 30]))
    torch.testing.assert_close(out[0], per[0])
    torch.testing.assert_close(out[1, 0], per[1, 1])  # id 10 was the file's second channel
    torch.testing.assert_close(out[1, 2], per[1, 0])
    assert torch.all(out[1, 1] == 0)  # id 20 missing from sample 1


def test_gain_readout_gives_back_the_amplitude_the_patch_encoder_normalises_away():
    from finetune.model import TaskModel
    from shards.vocabulary import channel_ids

    torch.manual_seed(0)
    backbone = EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).eval()
    names = ["C3", "CZ", "C4"]
    heads = {"t": {"n_classes": 2, "task_id": 0, "pool": "channels", "channels": names, "norm": "standard", "gain": True}}
    model = TaskModel(backbone, heads, mode="linear_probe")
    assert model.heads["t"].in_features == 3 * 32 + 3
    x = torch.randn(4, 3, 400) * torch.tensor([0.2, 1.0, 3.0]).view(1, 3, 1)
    ids = torch.as_tensor([channel_ids(names)] * 4)
    mask = torch.ones(4, 3, dtype=torch.bool)
    with torch.no_grad():
        f = model.features(x, ids, mask, "t")
        loud = model.features(10 * x, ids, mask, "t")
        swapped = model.features(x[:, [2, 0, 1]], ids[:, [2, 0, 1]], mask, "t")
    expected = 0.5 * torch.log(x.var(-1, unbiased=False))
    torch.testing.assert_close(f[:, -3:], expected, atol=1e-5, rtol=1e-5)
    # ten times louder: the gain columns move by exactly ln 10, whatever the tokens do
    torch.testing.assert_close(loud[:, -3:] - f[:, -3:], torch.full((4, 3), float(np.log(10.0))), atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped, f, atol=1e-5, rtol=1e-5)  # the file's channel order does not matter
    # a padded channel reads zero; mean pooling reads the mean over the real channels
    assert torch.all(channel_log_rms(x, torch.tensor([[True, True, False]] * 4))[:, 2] == 0)
    mean_head = ClassificationHead(32, 2, pool="mean", norm="standard", gain=True)
    out = backbone(x, ids, mask)
    torch.testing.assert_close(mean_head.features(out, ids, mask, x)[:, -1], expected.mean(1))
    with pytest.raises(ValueError, match="pass x"):
        mean_head.features(out, ids, mask)
    with pytest.raises(ValueError, match="norm='standard'"):
        ClassificationHead(32, 2, pool="mean", norm="layer", gain=True)


def test_a_head_saved_without_gain_loads_without_it(tmp_path):
    from finetune.model import TaskModel

    backbone = EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL))
    heads = {"t": {"n_classes": 2, "task_id": 0, "pool": "mean", "norm": "standard"}}
    model = TaskModel(backbone, heads)
    assert model.head_specs["t"]["gain"] is False and model.heads["t"].in_features == 32
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["heads"]["t"]["gain"]  # a folder written before heads could read the gain
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    again = TaskModel.from_pretrained(tmp_path / "old")
    assert again.head_specs["t"]["gain"] is False and again.heads["t"].in_features == 32
    with_gain = TaskModel(backbone, {"t": {**heads["t"], "gain": True}})
    with_gain.save_pretrained(tmp_path / "new")
    assert TaskModel.from_pretrained(tmp_path / "new").heads["t"].in_features == 33


def test_euclidean_alignment_whitens_each_subject_to_the_fixed_level():
    rng = np.random.default_rng(1)
    mix = np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.1, 0.0, 0.2]])
    a = np.einsum("cd,ndt->nct", mix, rng.normal(size=(20, 3, 400))) * 0.3
    b = rng.normal(size=(10, 3, 400)) * 5.0
    windows = [Window(x.astype(np.float32), {"channels": ["C3", "CZ", "C4"]}) for x in np.concatenate([a, b])]
    aligned = align_groups(windows, ["s1"] * 20 + ["s2"] * 10)
    level = (ALIGNED_RMS_UV / UNIT_UV) ** 2
    for idx in (range(20), range(20, 30)):
        x = np.stack([aligned[i].eeg for i in idx]).astype(np.float64)
        cov = np.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[2])
        np.testing.assert_allclose(cov, level * np.eye(3), atol=1e-3 * level)
    np.testing.assert_allclose(align_array(a), np.stack([aligned[i].eeg for i in range(20)]), rtol=1e-5, atol=1e-7)
    assert aligned[0].meta is windows[0].meta


def _small_run(tmp_path, shards, **kw):
    from finetune.train import finetune

    cfg = dict(recipe="seizure", data=str(shards), out=str(tmp_path / "run"), channels=("CZ",), epochs=2,
               batch_size=32, warmup_epochs=1, progress=False, model=EEGMambaConfig.from_size("tiny", **SMALL))
    cfg.update(kw)
    return finetune(FinetuneConfig(**cfg))


def test_subject_standardisation_removes_each_subjects_offset_and_scale():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(60, 3))
    groups = ["s1"] * 20 + ["s2"] * 25 + ["s3"] * 15
    offset = {"s1": (5.0, 3.0), "s2": (-2.0, 0.5), "s3": (0.0, 10.0)}  # (shift, scale) per subject
    raw = np.stack([signal[i] * offset[g][1] + offset[g][0] for i, g in enumerate(groups)])
    raw[:, 2] = 7.0  # a feature constant everywhere is centred, not divided by zero
    z = standardize_groups(raw, groups)
    for g in offset:
        rows = np.array(groups) == g
        assert np.allclose(z[rows].mean(0), 0.0) and np.allclose(z[rows, :2].std(0), 1.0)
        direct = (signal[rows, :2] - signal[rows, :2].mean(0)) / signal[rows, :2].std(0)
        assert np.allclose(z[rows, :2], direct)  # the subject's shift and scale are gone
    assert np.all(z[:, 2] == 0.0)
    order = rng.permutation(60)
    assert np.allclose(standardize_groups(raw[order], [groups[i] for i in order]), z[order])
    with pytest.raises(ValueError, match="one group per row"):
        standardize_groups(raw, groups[:-1])


def test_lpft_never_ends_below_its_probe_on_validation(synth_shards, tmp_path, monkeypatch):
    ckpt = tmp_path / "pre"
    torch.manual_seed(0)
    EEGMamba(EEGMambaConfig.from_size("tiny", **SMALL)).save_pretrained(ckpt)
    result = _small_run(tmp_path, synth_shards, checkpoint=str(ckpt), lr=5e-2, probe_margin=0.0)  # wrecks features
    history = result["history"]
    assert history[0]["epoch"] == -1 and result["run"]["head_init"] == "probe"
    probe_score = history[0]["val_score"]
    assert history[0]["val_responsive"]
    best = max(h["val_score"] for h in history if h["val_responsive"])
    assert result["run"]["best_val_score"] == pytest.approx(best) and best >= probe_score
    # with the default margin the probe is kept unless an epoch beats it by one standard error (its own or the probe's)
    import finetune.train
    from finetune.metrics import selection_se

    seen = []

    def recording(y, p, metrics, groups=None):
        seen.append((len(y), None if groups is None else list(groups)))
        return selection_se(y, p, metrics, groups)

    monkeypatch.setattr(finetune.train, "selection_se", recording)
    kept = _small_run(tmp_path / "margin", synth_shards, checkpoint=str(ckpt), lr=5e-2)
    h = kept["history"]
    assert [r["val_score"] for r in h] == pytest.approx([r["val_score"] for r in history])  # the same training
    assert h[0]["val_score_se"] > 0 and kept["run"]["probe_margin"] == 1.0
    # every epoch's error is taken with each validation window's subject (the synthetic split validates on sub-03)
    assert len(seen) == len(h) and all(groups == ["synth/sub-03"] * n for n, groups in seen)
    gains = [r for r in h[1:] if r["val_responsive"]
             and r["val_score"] > h[0]["val_score"] + max(h[0]["val_score_se"], r["val_score_se"])]
    expected = max(gains, key=lambda r: r["val_score"])["epoch"] if gains else -1
    assert kept["best_epoch"] == expected
    res = result["results"]["seizure"]
    assert res["threshold"] is not None and 0 < res["threshold"] < 1
    saved = json.loads((Path(result["out"]) / "model" / "config.json").read_text())["heads"]["seizure"]
    recipe = json.loads((Path(result["out"]) / "model" / "recipe.json").read_text())["seizure"]
    assert saved["threshold"] == recipe["threshold"] == res["threshold"] and saved["norm"] == "standard"
    assert saved["pool"] == "mean" and recipe["trained_channels"] == ["CZ"]


def test_auto_pool_reads_channels_and_a_linear_probe_run_is_the_probe(synth_shards, tmp_path):
    result = _small_run(tmp_path, synth_shards, checkpoint="none", channels=(), recipe="sleep", mode="linear_probe")
    assert [h["epoch"] for h in result["history"]] == [-1] and result["best_epoch"] == -1
    saved = json.loads((Path(result["out"]) / "model" / "config.json").read_text())["heads"]["sleep"]
    assert saved["pool"] == "channels" and len(saved["channels"]) == 19
    from shards.vocabulary import channel_id

    assert saved["channels"] == sorted(saved["channels"], key=channel_id)


def test_small_validation_and_long_warmup_are_warned(synth_shards, tmp_path, capsys):
    result = _small_run(tmp_path, synth_shards, checkpoint="none", warmup_epochs=3, epochs=2)
    err = capsys.readouterr().err
    warned = result["run"]["warnings"]
    assert any("warm-up (3 epochs) is as long as the run (2 epochs)" in w for w in warned)
    assert any("validation holds" in w and "model selection and the decision threshold need" in w for w in warned)
    assert all(f"warning: {w}" in err for w in warned)
    assert "## Warnings" in (Path(result["out"]) / "report.md").read_text()


def _head_proba(model, x: np.ndarray, channels, task: str, groups) -> np.ndarray:
    """By hand: ``task``'s frozen features of windows ``x [n, c, t]``, standardised per group, through the head."""
    from shards.dataset import collate

    batch = collate([Window(w, {"channels": list(channels)}) for w in x])
    with torch.no_grad():
        f = model.features(batch["x"], batch["channel_ids"], batch["channel_mask"], task).double().numpy()
        logits = model.head_logits(torch.from_numpy(standardize_groups(f, groups)).float(), task)
    return torch.softmax(logits, -1).numpy()


def test_subject_feature_norm_probe_is_what_training_scored_and_what_predict_applies(synth_shards, synth_raw, tmp_path):
    import csv

    from finetune.model import TaskModel
    from finetune.predict import main as predict_main
    from finetune.predict import predict_recording, recording_windows
    from finetune.train import load_tasks, make_split, subject_features

    torch.manual_seed(0)
    result = _small_run(tmp_path, synth_shards, checkpoint="none", mode="linear_probe", feature_norm="subject")
    model_dir = Path(result["out"]) / "model"
    assert [h["epoch"] for h in result["history"]] == [-1] and result["run"]["feature_norm"] == "subject"
    saved = json.loads((model_dir / "config.json").read_text())["heads"]["seizure"]
    assert saved["feature_norm"] == "subject"
    assert json.loads((model_dir / "recipe.json").read_text())["seizure"]["feature_norm"] == "subject"

    # the saved head on each test subject's own standardised features gives the test outputs training scored
    model = TaskModel.from_pretrained(model_dir)
    config = FinetuneConfig(recipe="seizure", data=str(synth_shards), channels=("CZ",), mode="linear_probe",
                            feature_norm="subject")
    tasks, _ = load_tasks(config)
    split = make_split(config, tasks["seizure"])
    z = subject_features(model, tasks, 64, torch.device("cpu"))["seizure"][split.test]
    with torch.no_grad():
        again = torch.softmax(model.head_logits(torch.from_numpy(z).float(), "seizure"), -1).numpy()
    scored = np.asarray(result["predictions"]["seizure"]["proba"])
    assert scored.shape == again.shape and np.allclose(scored, again, atol=1e-5)

    # prediction standardises the recording by its own windows, or by the subject's recordings given together
    edf, other = synth_raw / "sub-04_task-seizure.edf", synth_raw / "sub-04_task-sleep.edf"
    rec, rec_other = recording_windows(model_dir, edf), recording_windows(model_dir, other)
    rows = [r for r in predict_recording(model_dir, edf, model=model).rows if not r["skipped"]]
    got = np.array([[r["probabilities"][c] for c in ("non_seizure", "seizure")] for r in rows])
    assert np.allclose(got, _head_proba(model, rec.x, rec.channels, "seizure", ["r"] * len(rec.x)), atol=1e-5)
    rows = [r for r in predict_recording(model_dir, edf, model=model, subject_files=[other]).rows if not r["skipped"]]
    pooled = np.array([[r["probabilities"][c] for c in ("non_seizure", "seizure")] for r in rows])
    both = _head_proba(model, np.concatenate([rec.x, rec_other.x]), rec.channels, "seizure",
                       ["s"] * (len(rec.x) + len(rec_other.x)))
    assert np.allclose(pooled, both[:len(rec.x)], atol=1e-5) and not np.allclose(pooled, got, atol=1e-3)
    # the command line pools the same way
    out_csv = tmp_path / "pooled.csv"
    assert predict_main(["--model", str(model_dir), str(edf), "--subject_files", str(other), "--out", str(out_csv)]) == 0
    with out_csv.open() as f:
        cli = np.array([[float(r["p_non_seizure"]), float(r["p_seizure"])] for r in csv.DictReader(f) if not r["skipped"]])
    assert np.allclose(cli, pooled, atol=1e-5)


def test_a_subject_standardised_model_says_when_a_recording_is_too_short_to_standardise(synth_shards, synth_raw,
                                                                                          tmp_path, capsys):
    from finetune.predict import MIN_SUBJECT_WINDOWS, predict_recording

    torch.manual_seed(0)
    result = _small_run(tmp_path, synth_shards, checkpoint="none", mode="linear_probe", feature_norm="subject")
    edf = synth_raw / "sub-04_task-seizure.edf"  # 96 s: 24 windows of 4 s, 12 of 8 s
    capsys.readouterr()
    predict_recording(Path(result["out"]) / "model", edf, window_s=8.0)
    assert f"fewer than {MIN_SUBJECT_WINDOWS}): the labels rest on noisy statistics" in capsys.readouterr().err
    predict_recording(Path(result["out"]) / "model", edf)
    assert "noisy statistics" not in capsys.readouterr().err


def test_subject_files_are_refused_by_a_model_that_does_not_use_them(synth_shards, synth_raw, tmp_path):
    from finetune.predict import predict_recording

    result = _small_run(tmp_path, synth_shards, checkpoint="none", mode="linear_probe")
    with pytest.raises(ValueError, match="subject_files: the model .* neither aligns nor standardises by subject"):
        predict_recording(Path(result["out"]) / "model", synth_raw / "sub-04_task-seizure.edf",
                          subject_files=[synth_raw / "sub-04_task-sleep.edf"])


def test_streamed_subject_statistics_match_standardize_groups():
    rng = np.random.default_rng(0)
    f = np.c_[1e4 + 1e-3 * rng.normal(size=300), rng.normal(size=300), np.full(300, 5.0)]  # large mean, tiny spread
    moments = FeatureMoments()
    for part in np.array_split(f, 7):
        moments.add(part)
    assert np.allclose(moments.standardize(f), standardize_groups(f, ["s"] * 300), atol=1e-6)


def test_subject_feature_norm_is_refused_when_the_backbone_is_finetuned(synth_shards, tmp_path):
    with pytest.raises(ValueError, match="feature_norm='subject' needs mode='linear_probe'"):
        _small_run(tmp_path, synth_shards, checkpoint="none", feature_norm="subject")
