"""The validation probe of pretraining: scores logged, the best step exported, held-out data enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrain.config import DataConfig, OptimConfig, PretrainConfig, ProbeConfig, TrainConfig
from pretrain.probe import check_probe_leak, load_probe_sets, probe_backbone
from pretrain.run import run
from shards.dataset import expand_urls


def _config(synth_shards, out, **probe):
    return PretrainConfig(
        data=DataConfig(shards=str(synth_shards / "train-*.tar"), batch_size=4, crop_s=2.0, shuffle_buffer=16, epoch_steps=4),
        optim=OptimConfig(lr=2e-3, warmup_steps=1),
        train=TrainConfig(out_dir=str(out), max_steps=6, save_every=6, log_every=2, progress=False),
        probe=ProbeConfig(**probe),
    )


def test_probe_on_pretraining_subjects_is_refused(synth_shards):
    train = expand_urls(str(synth_shards / "train-*.tar"))
    with pytest.raises(ValueError, match=r"probe.shards .*subject\(s\) are also in the pretraining data \(e.g. synth/"):
        check_probe_leak([str(synth_shards / "train-*.tar")], train)
    check_probe_leak([str(synth_shards / "test-*.tar")], train)  # other subjects: fine


def test_single_class_probe_set_is_named(synth_shards):
    with pytest.raises(ValueError, match=r"probe set .*val-\*\.tar: 0 labelled windows of 0 class\(es\); a probe needs two"):
        load_probe_sets([str(synth_shards / "val-*.tar")], max_windows=100, task="no_such_task")
    with pytest.raises(ValueError, match=r"val-\*\.tar: all windows come from one recording; cross-validation needs two"):
        load_probe_sets([str(synth_shards / "val-*.tar")], max_windows=40, task="sleep")  # one subject, one sleep recording
    (probe,) = load_probe_sets([str(synth_shards / "{val,test}-*.tar")], max_windows=40, task="sleep")
    assert len(probe.windows) == 40 and probe.n_classes >= 2 and len(set(probe.groups.tolist())) == 2
    assert len(probe.channels) == len(probe.windows[0].meta["channels"]) >= 2  # per-channel readout


def test_run_logs_the_probe_and_exports_its_best_step(synth_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    probe = str(synth_shards / "{val,test}-*.tar")
    result = run(_config(synth_shards, tmp_path / "run", shards=(probe,), task="sleep", every=2, folds=2, max_windows=60))
    record = json.loads((result.export_dir / "probe.json").read_text())
    steps = [h["step"] for h in record["history"]]
    assert steps == [2, 4, 6]
    scores = [h["score"] for h in record["history"]]
    assert all(0.0 <= s <= 1.0 for s in scores) and all(h["se"] > 0 for h in record["history"])
    top = max(range(3), key=lambda i: (scores[i], -i))
    best = max(s for i, s in enumerate(steps) if s >= steps[top] and scores[i] >= scores[top] - record["history"][top]["se"] - 1e-9)
    assert record["selected_step"] == result.selected_step == best
    assert record["layer"] == {"read": 1, "of": 2}  # the middle layer of the tiny backbone, as heads read
    exported = load_file(str(result.export_dir / "model.safetensors"))
    kept = load_file(str(tmp_path / "run" / "probe_best" / "model.safetensors"))
    assert exported.keys() == kept.keys() and all(torch.equal(exported[k], kept[k]) for k in kept)
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "pretrain"))
    events.Reload()
    assert [e.step for e in events.Scalars("probe/score")] == [2, 4, 6]
    assert f"step {best} of 6, selected by the validation probe" in (result.export_dir / "README.md").read_text()


def test_probing_leaves_the_training_unchanged(synth_shards, tmp_path):
    """The probe (a cut copy of the backbone, its forward passes) must not move the run's random stream: the same
    run with and without a probe every 2 steps trains through the same losses."""
    probe = str(synth_shards / "{val,test}-*.tar")
    plain = run(_config(synth_shards, tmp_path / "plain"))
    probed = run(_config(synth_shards, tmp_path / "probed", shards=(probe,), task="sleep", every=2, folds=2,
                         max_windows=60, select=False))
    assert len(plain.losses) == 6 and [float(v) for v in probed.losses] == [float(v) for v in plain.losses]


def test_probe_scores_real_eegmat_subjects(eegmat_shards):
    """Frozen random-init features of 3 real EEGMAT subjects (rest vs arithmetic), folds by subject."""
    from foundation.model import EEGMamba, EEGMambaConfig

    folder, _ = eegmat_shards
    sets = load_probe_sets([str(folder)], max_windows=200)
    assert sets[0].n_classes == 2 and len(sets[0].channels) == 19 and len(set(sets[0].groups.tolist())) == 3
    torch.manual_seed(0)
    result = probe_backbone(EEGMamba(EEGMambaConfig.from_size("tiny")), sets, folds=3)
    s = result.scores[folder.name]
    assert 0.0 <= s["balanced_accuracy"] <= 1.0 and 0.0 <= s["auroc"] <= 1.0 and result.score == s["auroc"]
    # random-init features of 19 channels x d spread their energy over many directions
    assert 20.0 < s["effective_rank"] <= min(len(sets[0].labels), 19 * EEGMambaConfig.from_size("tiny").d_model)


def test_probe_reads_the_layer_heads_read(eegmat_shards):
    """The probe's features come from the middle layer by default (the layers above are not run): the same scores
    as the 1-layer cut of the backbone read at its top, other scores than the full backbone's top layer."""
    from foundation.model import EEGMamba, EEGMambaConfig

    folder, _ = eegmat_shards
    sets = load_probe_sets([str(folder)], max_windows=120)
    torch.manual_seed(0)
    backbone = EEGMamba(EEGMambaConfig.from_size("tiny"))
    middle = probe_backbone(backbone, sets, folds=3)
    cut = probe_backbone(backbone.first_layers(1), sets, folds=3, read_layer=-1)
    top = probe_backbone(backbone, sets, folds=3, read_layer=-1)
    assert (middle.layer, cut.layer, top.layer) == ({"read": 1, "of": 2}, {"read": 1, "of": 1}, {"read": 2, "of": 2})
    assert middle.scores == cut.scores
    assert middle.scores[folder.name]["effective_rank"] != top.scores[folder.name]["effective_rank"]
    with pytest.raises(ValueError, match=r"read_layer=3: the backbone has 2 layer\(s\)"):
        probe_backbone(backbone, sets, read_layer=3)


def test_probe_layer_the_model_lacks_is_refused_with_the_config():
    from foundation.model import EEGMambaConfig

    with pytest.raises(ValueError, match=r"probe.read_layer=-3: the backbone has 2 layer\(s\)"):
        PretrainConfig(model=EEGMambaConfig.from_size("tiny"), probe=ProbeConfig(read_layer=-3))
    with pytest.raises(ValueError, match=r"probe.read_layer must be a non-zero integer .* got 0"):
        ProbeConfig(read_layer=0)


def test_effective_rank_counts_the_directions_features_use():
    from pretrain.probe import effective_rank

    rng = np.random.default_rng(0)
    iso = rng.normal(size=(500, 8))
    assert 7.0 < effective_rank(iso) <= 8.0  # eight equal directions
    assert effective_rank(np.outer(rng.normal(size=500), rng.normal(size=8)) + 3.0) == pytest.approx(1.0, abs=1e-6)
    two = np.c_[rng.normal(size=500), rng.normal(size=500), np.zeros((500, 6))]
    assert 1.9 < effective_rank(two) <= 2.0  # collapse onto two directions, whatever the dimension
    assert np.isnan(effective_rank(np.zeros((1, 8))))


def test_selection_keeps_the_latest_step_within_one_standard_error_of_the_best(tmp_path):
    from foundation.model import EEGMamba, EEGMambaConfig
    from pretrain.probe import ProbeResult, keep_selected, read_best

    backbone = EEGMamba(EEGMambaConfig.from_size("tiny"))

    def select(history, tolerance, out):
        for step, score in history:
            keep_selected(out, backbone, step, ProbeResult({}, score, 0.05), tolerance)
        return read_best(out)["step"]

    history = [(100, 0.60), (200, 0.70), (300, 0.62), (400, 0.67), (500, 0.64)]
    assert select(history, 1.0, tmp_path / "a") == 400  # 0.67 >= 0.70 - 0.05; 0.64 is not
    assert select(history, 0.0, tmp_path / "b") == 200  # the best-scoring step
    assert select(history, 2.0, tmp_path / "c") == 500
    assert read_best(tmp_path / "a")["top"] == {"step": 200, "score": 0.70, "se": 0.05}
    # a run resumed from a selection saved without ``top`` treats the saved step as the best, error unknown (0)
    old = tmp_path / "d"
    keep_selected(old, backbone, 100, ProbeResult({}, 0.7, 0.0), 1.0)
    record = json.loads((old / "probe_best" / "probe.json").read_text())
    del record["top"]
    (old / "probe_best" / "probe.json").write_text(json.dumps(record))
    assert not keep_selected(old, backbone, 200, ProbeResult({}, 0.69, 0.005), 1.0)
    assert keep_selected(old, backbone, 300, ProbeResult({}, 0.71, 0.05), 1.0)
    # a later step scored with more noise is compared within its own error when that is the larger one
    spike = tmp_path / "e"
    for step, score, se in [(300, 0.61, 0.06), (600, 0.745, 0.058), (900, 0.632, 0.069), (2400, 0.659, 0.112)]:
        keep_selected(spike, backbone, step, ProbeResult({}, score, se), 1.0)
    assert read_best(spike)["step"] == 2400  # 0.659 >= 0.745 - 0.112; 0.632 < 0.745 - 0.069 was not kept
    assert read_best(spike)["top"] == {"step": 600, "score": 0.745, "se": 0.058}
    with pytest.raises(ValueError, match=r"probe.tolerance: expected a number of standard errors >= 0, got -1"):
        ProbeConfig(tolerance=-1)


def test_score_standard_error_matches_the_bootstrap():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from pretrain.probe import score_se

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(300, int), np.ones(100, int)]
    logit = rng.normal(size=400) + 0.8 * y
    proba = np.c_[1 - 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(-logit))]
    auroc = roc_auc_score(y, proba[:, 1])
    boot_auc, boot_bacc = [], []
    for _ in range(400):
        i = rng.integers(0, 400, 400)
        boot_auc.append(roc_auc_score(y[i], proba[i, 1]))
        boot_bacc.append(balanced_accuracy_score(y[i], proba[i].argmax(1)))
    se_auc = score_se(y, proba, {"auroc": auroc})
    se_bacc = score_se(y, proba, {"balanced_accuracy": balanced_accuracy_score(y, proba.argmax(1))})
    assert 0.02 < se_auc < 0.05 and se_auc == pytest.approx(np.std(boot_auc), rel=0.25)
    assert se_bacc == pytest.approx(np.std(boot_bacc), rel=0.25)


def test_probe_error_counts_subjects_when_their_windows_agree_with_each_other():
    """Four subjects of 100 windows whose scores differ by subject: the window-level error takes 400 windows as
    independent; resampling subjects sees the spread between them, and the probe's error is the larger one."""
    from sklearn.metrics import roc_auc_score

    from runtime.score_error import group_bootstrap_se, score_se

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 100)
    y = np.tile(np.r_[np.zeros(50, int), np.ones(50, int)], 4)
    signal = np.array([0.0, 0.5, 1.5, 3.0])[groups]  # subject 0 at chance, subject 3 nearly separable
    logit = rng.normal(size=400) + signal * (2 * y - 1)
    proba = np.c_[1 - 1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(-logit))]
    scores = {"auroc": roc_auc_score(y, proba[:, 1])}
    window, subjects = score_se(y, proba, scores), group_bootstrap_se(y, proba, groups, score="auroc")
    assert window < 0.03 and subjects > 2 * window
    assert score_se(y, proba, scores, groups) == subjects
    # subjects alike: resampling them agrees with the window-level error, which the probe's error stays near
    alike = rng.normal(size=400) + 1.0 * (2 * y - 1)
    p2 = np.c_[1 - 1 / (1 + np.exp(-alike)), 1 / (1 + np.exp(-alike))]
    s2 = {"auroc": roc_auc_score(y, p2[:, 1])}
    assert group_bootstrap_se(y, p2, groups, score="auroc") == pytest.approx(score_se(y, p2, s2), rel=0.25)
    assert score_se(y, p2, s2, groups) == pytest.approx(score_se(y, p2, s2), rel=0.25)
    # one recording: blocks of its windows in time order are resampled. The same windows as one recording whose
    # separability drifts (the subjects above in turn) vary like the subjects; alike windows, like independent ones
    one = np.zeros(400)
    assert group_bootstrap_se(y, proba, one, score="auroc") > 2 * window
    assert group_bootstrap_se(y, p2, one, score="auroc") == pytest.approx(score_se(y, p2, s2), rel=0.25)
    assert np.isnan(group_bootstrap_se(y[:1], proba[:1], one[:1], score="auroc"))  # one window: nothing to resample
