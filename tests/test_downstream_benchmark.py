"""benchmarks/downstream.py and its modules: band power, folds, pooling, metrics, the report, ablations, the jobs.

The benchmark itself (shards -> pretraining -> finetuning on real data) runs with ``python benchmarks/downstream.py``;
here each piece is checked on values, and one slow test runs the whole script on the smallest real task.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ablations, baselines, bootstrap, folds, report, tasks, units

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/downstream.py`` loaded as the script is (it puts the repository on the path itself)."""
    spec = importlib.util.spec_from_file_location("downstream_benchmark", REPO / "benchmarks" / "downstream.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["downstream_benchmark"] = mod
    spec.loader.exec_module(mod)
    return mod


def _sines(freqs_hz, n=1, c=2, t=1000, sfreq=200.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(t) / sfreq
    x = np.zeros((n, c, t))
    for ch, f in enumerate(freqs_hz):
        x[:, ch] = np.sin(2 * np.pi * f * time)
    return x + noise * rng.standard_normal(x.shape)


def test_band_power_puts_a_sine_in_its_band():
    # channel 0: 10 Hz (alpha), channel 1: 20 Hz (beta)
    feats = baselines.band_power_features(_sines([10.0, 20.0]))
    assert feats.shape == (1, 2 * 5)
    per = feats.reshape(2, 5)  # (c band): delta theta alpha beta gamma
    assert per[0].argmax() == 2 and per[1].argmax() == 3
    # a unit sine has power 1/2; Welch + band integration recovers it within leakage
    assert per[0, 2] == pytest.approx(math.log10(0.5), abs=0.05)
    assert per[0, 0] < per[0, 2] - 3  # far below in delta


def test_band_power_scales_with_amplitude():
    a = baselines.band_power_features(_sines([6.0]), sfreq=200.0)
    b = baselines.band_power_features(3 * _sines([6.0]), sfreq=200.0)
    theta = 1  # 6 Hz; the other bands hold (numerically) nothing and sit at the 1e-12 floor
    assert (b - a)[0, theta] == pytest.approx(math.log10(9), abs=1e-6)  # power x 9 -> log10 + 0.954


def test_band_power_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"x \[n, c, t\]"):
        baselines.band_power_features(np.zeros((4, 100)))


def test_band_power_classifier_separates_alpha_from_beta():
    rng = np.random.default_rng(1)
    n = 40
    freqs = np.where(rng.random(n) < 0.5, 10.0, 22.0)
    y = (freqs > 15).astype(int)
    time = np.arange(800) / 200.0
    x = np.sin(2 * np.pi * freqs[:, None] * time)[:, None, :] + 0.5 * rng.standard_normal((n, 1, 800))
    feats = baselines.band_power_features(x)
    model = baselines.fit_band_power(feats[:20], y[:20], feats[20:30], y[20:30])
    assert (model.predict(feats[30:]) == y[30:]).all()
    proba = model.predict_proba(feats[30:])
    assert proba.shape == (10, 2) and np.allclose(proba.sum(1), 1)



def test_summarize_ignores_nan_and_uses_sample_std():
    s = report.summarize([0.5, float("nan"), 0.7, None])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(math.sqrt(0.02))
    assert report.summarize([0.4])["std"] == 0.0 and math.isnan(report.summarize([])["mean"])


def test_parse_args_modes_and_errors(bench):
    args = bench.parse_args([])
    assert args.budget == tasks.FAST and args.out == Path("runs/downstream") and args.task_names[0] == "seizure"
    full = bench.parse_args(["--full", "--seeds", "5", "--pretrain-steps", "100"])
    assert full.budget.seeds == 5 and full.budget.pretrain_steps == 100 and full.budget.finetune_epochs is None
    assert full.budget.probe_every == 50 and full.budget.aligned_finetune
    assert args.scored == args.task_names
    assert bench.parse_args(["--tasks", "sleep,eegmat", "--score", "eegmat"]).scored == ["eegmat"]
    for bad in (["--tasks", "nope"], ["--jobs", "0"], ["--seeds", "0"], ["--ablation", "nope"],
                ["--tasks", "sleep", "--score", "eegmat"], ["--score", ","]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_scoring_a_subset_keeps_a_published_split_with_its_task(bench):
    plans = list(tasks.TASKS)
    extra = dataclasses.replace(plans[-1], name="eegmat_published")
    plans.append(extra)
    extends = {extra.name: plans[-2].name}
    kept = bench.scored_plans(plans, extends, ["eegmat"])
    assert [p.name for p in kept] == ["eegmat", "eegmat_published"]
    kept = bench.scored_plans(plans, extends, ["sleep", "motor_imagery"])
    assert [p.name for p in kept] == ["sleep", "motor_imagery"]


def test_ablation_flag_picks_its_folders_and_overrides(bench):
    args = bench.parse_args(["--ablation", "pretrain-600-steps"])
    assert args.out == Path("runs/downstream-ablation-pretrain-600-steps")
    assert args.results == REPO / "benchmarks" / "results" / "ablation-pretrain-600-steps"
    assert args.budget.pretrain_steps == 600 and args.budget.seeds == tasks.FAST.seeds
    # an ablation given the main run's --results writes beside it, not over it
    args = bench.parse_args(["--ablation", "no-calibration", "--results", "res"])
    assert args.results == Path("res") / "ablation-no-calibration" and args.results_root == Path("res")
    assert bench.parse_args(["--results", "res"]).results == Path("res")
    # a subset never replaces the main run's report unless told to
    results = REPO / "benchmarks" / "results"
    assert bench.parse_args(["--full", "--score", "eegmat"]).results == results / "full-eegmat"
    assert bench.parse_args(["--tasks", "sleep,eegmat"]).results == results / "sleep-eegmat"
    assert bench.parse_args(["--full"]).results == results
    assert bench.parse_args(["--score", "eegmat", "--results", "res"]).results == Path("res")


def test_an_ablation_keeps_its_own_backbones_only_when_it_changes_pretraining():
    from benchmarks.stages import backbone_root

    out = Path("work")
    assert backbone_root(out) == out / "pretrain"
    assert backbone_root(out, "no-calibration", ablations.ABLATIONS["no-calibration"]) == out / "pretrain"
    for name in ("pretrain-600-steps", "no-band-power", "legacy-patch-norm"):
        assert backbone_root(out, name, ablations.ABLATIONS[name]) == out / "pretrain" / f"ablation-{name}"


def test_a_backbone_keeps_its_key_when_its_work_dir_moves_and_not_when_its_inputs_change(synth_shards, tmp_path,
                                                                                           monkeypatch):
    import shutil

    from benchmarks.stages import backbone_key

    config = {"train": {"out_dir": "/work/a/pretrain/s0-h0", "max_steps": 2400, "seed": 0},
              "data": {"corpora": [{"urls": str(synth_shards), "weight": 1.0}]}, "probe": {"shards": []}}
    key = backbone_key(config)
    moved = json.loads(json.dumps(config))
    moved["train"]["out_dir"] = "/elsewhere/pretrain/s0-h0"
    assert backbone_key(moved) == key
    longer = json.loads(json.dumps(config))
    longer["train"]["max_steps"] = 4800
    assert backbone_key(longer) != key
    # a selection rule changed in code exports other weights from the same settings
    monkeypatch.setattr("benchmarks.stages.SELECTION_SE", "windows")
    assert backbone_key(config) != key
    monkeypatch.undo()
    # the same paths rebuilt with other contents
    copy = tmp_path / "copy"
    shutil.copytree(synth_shards, copy)
    config["data"]["corpora"][0]["urls"] = str(copy)
    key_copy = backbone_key(config)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert backbone_key(config) != key_copy


def test_the_pretraining_mix_weights_corpora_by_windows_to_the_budgets_power(synth_shards):
    from benchmarks.stages import pretrain_data_config
    from shards.dataset import read_manifest

    n = read_manifest(synth_shards)["totals"]["samples"]
    assert n > 1
    plain = pretrain_data_config({"a": synth_shards}, tasks.FAST)
    assert plain.corpora[0].weight == float(n) and plain.corpora[0].name == "a"
    tempered = pretrain_data_config({"a": synth_shards}, dataclasses.replace(tasks.FAST, pretrain_mix_power=0.5))
    assert tempered.corpora[0].weight == pytest.approx(math.sqrt(n))
    assert ablations.ABLATIONS["pretrain-mix-sqrt"].changes_pretraining


def test_every_named_ablation_applies_to_the_installed_configs():
    from finetune.config import FinetuneConfig
    from foundation.model import EEGMambaConfig
    from pretrain.config import ObjectiveConfig

    for name, abl in ablations.ABLATIONS.items():
        assert abl.description and name == name.lower()
        model = ablations.apply(EEGMambaConfig.from_size("tiny"), abl.model, where=name)
        objective = ablations.apply(ObjectiveConfig(), abl.objective, where=name)
        ablations.apply(FinetuneConfig(), abl.finetune, where=name)
        budget = ablations.apply(tasks.FAST, abl.budget, where=name)
        changed = (model != EEGMambaConfig.from_size("tiny") or objective != ObjectiveConfig() or abl.finetune
                   or budget != tasks.FAST)
        assert changed, f"ablation {name} changes nothing: its default is not the suite's default any more"
        pretraining = [f for f in dataclasses.asdict(tasks.FAST) if f.startswith("pretrain_") or f == "probe_every"]
        backbone_changed = (model != EEGMambaConfig.from_size("tiny") or objective != ObjectiveConfig()
                            or any(getattr(budget, f) != getattr(tasks.FAST, f) for f in pretraining))
        assert abl.changes_pretraining == backbone_changed, name
    with pytest.raises(SystemExit, match=r"no field\(s\) \['no_such_flag'\]"):
        ablations.apply(ObjectiveConfig(), {"no_such_flag": 1}, where="ablation x objective")


# ---- folds ---------------------------------------------------------------------------------------------


def _metas(n_groups, per=4, corpus="c", key="subject"):
    metas, labels = [], []
    for g in range(n_groups):
        for i in range(per):
            metas.append({"corpus": corpus, "subject": f"s{g:02d}", "recording": f"s{g:02d}_{i % 2}"})
            labels.append(i % 2)
    return metas, np.array(labels)


def test_folds_are_nested_in_halves_and_every_group_is_tested_once():
    metas, y = _metas(26)
    pool = folds.probe_pool(metas, y, 4, group_key="subject")
    assert len(pool) == 4 and pool == folds.probe_pool(metas, y, 4, group_key="subject")  # fixed
    tf = folds.assign_folds("t", metas, y, 4, group_key="subject", pool=pool)
    tested = [g for f in range(4) for g in tf.groups(f)]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 22 and not set(tested) & set(pool)
    assert [tf.half(f) for f in range(4)] == [0, 0, 1, 1]
    assert set(tf.half_groups(0)) == set(tf.groups(0)) | set(tf.groups(1))
    held = tf.held_out(0)  # what the backbone testing half 0 must not see: half 0 and the probe pool
    subjects = {g.split("/")[1] for g in tf.half_groups(0)} | {g.split("/")[1] for g in pool}
    assert held["subjects"] == subjects and held["recordings"] == {f"{s}_{i}" for s in subjects for i in (0, 1)}
    assert not held["subjects"] & {g.split("/")[1] for g in tf.half_groups(1)}
    two = folds.assign_folds("mi", metas[:8], y[:8], 4, group_key="subject")  # two groups: k capped at 2
    assert two.k == 2 and [two.half(0), two.half(1)] == [0, 1]
    with pytest.raises(ValueError, match="cross-validation needs two"):
        folds.assign_folds("one", metas[:4], y[:4], 4, group_key="subject")


# ---- pooling and the table ---------------------------------------------------------------------------------


def _unit(fold, seed, method, y, proba, groups, threshold=None, protocol="plain"):
    return {"task": "t", "fold": fold, "seed": seed, "method": method, "protocol": protocol, "y": y, "proba": proba,
            "groups": groups, "threshold": threshold}


def test_pooling_applies_each_folds_threshold_and_flags_constant_predictors():
    y0, y1 = [0, 1, 0, 1], [1, 0, 1, 0]
    g0, g1 = ["a", "a", "b", "b"], ["c", "c", "d", "d"]
    good0 = [[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.65, 0.35]]  # ranked right, all below 0.5: threshold 0.3 fixes it
    good1 = [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.7, 0.3]]
    const = [[0.6, 0.4]] * 4
    runs = [_unit(0, 0, units.PROBE, y0, good0, g0, threshold=0.3), _unit(1, 0, units.PROBE, y1, good1, g1),
            _unit(0, 0, units.BAND, y0, const, g0), _unit(1, 0, units.BAND, y1, const, g1),
            _unit(0, 1, units.BAND, y0, good0, g0, threshold=0.3), {**_unit(1, 1, units.BAND, y1, good1, g1), "error": "boom"}]
    pooled = report.pool_predictions(runs)["t"]
    assert pooled["y"] == y0 + y1 and pooled["groups"] == g0 + g1
    assert pooled["rows"][units.PROBE]["0"]["pred"] == [0, 1, 0, 1, 1, 0, 1, 0]
    assert pooled["constant"][units.BAND]["0"] == 2 and pooled["constant"][units.PROBE]["0"] == 0
    assert "1" not in pooled["rows"][units.BAND] and "boom" in pooled["missing"][units.BAND]["1"][0]
    table = report.table_of({"t": pooled}, {"t": 2})["t"]
    assert table[units.PROBE]["balanced_accuracy"]["mean"] == 1.0 and table[units.PROBE]["auroc"]["mean"] == 1.0
    assert table[units.BAND]["balanced_accuracy"]["mean"] == 0.5 and table[units.BAND]["constant_folds"] == 2
    assert table[units.PROBE]["ci"] is None  # 4 test groups: too few resamples for an interval over groups
    d = report.paired({"t": table}, "t", units.PROBE, units.BAND)
    assert d["mean"] == 0.5 and d["wins"] == 1


def test_pooled_metrics_match_sklearn_on_the_pooled_windows():
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).tolist()
    p = np.clip(np.asarray(y) * 0.3 + rng.random(60) * 0.7, 0, 1)
    pred = (p >= 0.5).astype(int).tolist()
    m = report.metrics_of(y, pred, p.tolist(), 2)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p)) and m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, pred))


def _payload(table_rows=None):
    tasks_ = {"t": {"title": "T task (x)", "recipe": "emotion", "classes": ["a", "b"], "windows": 8,
                    "folds": {"task": "t", "group_key": "subject", "k": 2, "folds": {"0": ["a"], "1": ["b"]}}}}
    y0, g0 = [0, 1, 0, 1], ["a", "a", "b", "b"]
    runs = []
    for seed in (0, 1):
        for method, proba in ((units.PRETRAINED, [[0.8, 0.2], [0.3, 0.7], [0.7, 0.3], [0.2, 0.8]]),
                              (units.SCRATCH, [[0.6, 0.4]] * 4), (units.PROBE, [[0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.45, 0.55]]),
                              (units.BAND, [[0.6, 0.4], [0.45, 0.55], [0.55, 0.45], [0.5, 0.5]])):
            runs += [_unit(f, seed, method, y0, proba, g0) for f in (0, 1)]
    pooled = report.pool_predictions(runs)
    return {"command": ["python", "benchmarks/downstream.py"], "mode": "fast", "jobs": 2, "budget": dataclasses.asdict(tasks.FAST),
            "machine": {"cpu": "x", "cpu_count": 2, "torch": "2.x"}, "stages_s": {"1 shards": 60.0}, "total_s": 120.0,
            "finished": "2026-12-05 12:00 UTC", "tasks": tasks_, "pretraining": {"s0-h0": {"losses": [3.0, 1.0], "steps": 2,
            "probe": [{"step": 1, "score": 0.7}, {"step": 2, "score": 0.68}], "selected_step": 2, "seconds": 60}},
            "units": [], "predictions": pooled, "table": report.table_of(pooled, {"t": 2}), "notes": ["a note"]}


def test_report_is_a_function_of_the_payload_and_states_the_aims(tmp_path):
    payload = _payload()
    text = report.write_results(payload, tmp_path)
    again = json.loads((tmp_path / "results.json").read_text())
    assert report.render(again) == text == (tmp_path / "results.md").read_text()
    assert "| T task (x) | EEGMamba from scratch, finetuned | 0.500 ± 0.000 |" in text
    assert "**4** of 4" in text  # the scratch rows are constant predictors: flagged with their count
    assert "- constant predictors among the EEGMamba fold models: 4 of 12" in text
    assert "- finetuned (LP-FT) below its own frozen probe (test balanced accuracy): on " in text
    assert "EEGMamba pretrained, finetuned (LP-FT) > EEGMamba from scratch, finetuned on 1/1 tasks (t; task types emotion)" in text
    # the step the run exported (within a standard error of the best), not the best-scoring one
    assert "probe score 0.700 0.680 (steps 1 2), exported step 2" in text and "- a note" in text
    assert "(fast mode), compute summed over jobs (one thread each): pretraining 1 min, finetuning, probes and baselines 0 min; wall time of this invocation 2.0 min" in text


def test_readme_results_block_is_replaced_by_the_report(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Suite\n\n## Results\n{report.README_BEGIN}\nold numbers\n{report.README_END}\n\n## After\nkept\n")
    report.update_readme(readme, "# Title\n\n## Aims\n\nnew numbers\n")
    text = readme.read_text()
    assert "old numbers" not in text and "### Aims" in text and "new numbers" in text and text.endswith("## After\nkept\n")
    assert "# Title" not in text


def test_the_readme_gets_the_run_line_and_the_aims_not_the_whole_report(tmp_path):
    full = report.render(_payload())
    readme = tmp_path / "README.md"
    readme.write_text(f"# Suite\n{report.README_BEGIN}\n{report.README_END}\n")
    report.update_readme(readme, full)
    block = readme.read_text().split(report.README_BEGIN)[1].split(report.README_END)[0]
    finished = next(line for line in full.splitlines() if line.startswith("Finished:"))
    aims = [line for line in full.split("## Aims", 1)[1].split("Paired by seed", 1)[0].splitlines() if line.startswith("- ")]
    assert finished.rstrip() in block and aims and all(a in block for a in aims)
    assert "### Aims (plain protocol)" in block and "benchmarks/results/results.md" in block
    # the results table, the paired differences and the later sections stay in results.md
    assert "| task |" not in block and "Paired by seed" not in block and "Wall time" not in block
    assert len(block.splitlines()) < len(full.splitlines()) // 2


def test_ablation_table_pairs_seeds(tmp_path):
    from benchmarks.report_ablations import render_ablations

    main = _payload()
    other = json.loads(json.dumps(report._json_safe(main)))
    for seed in ("0", "1"):
        other["table"]["t"][units.PRETRAINED]["seeds"][seed]["balanced_accuracy"] -= 0.1
    other["ablation"] = {"description": "undo something"}
    text = render_ablations(main, {"undo": other})
    assert "| undo | EEGMamba pretrained, finetuned (LP-FT) | -0.100 / +0.000 (0/2) | -0.100 |" in text
    assert "- **undo**: undo something" in text
    # a finetuning change also moves the from-scratch baseline: its row is in the table and the README block
    other["table"]["t"][units.SCRATCH]["seeds"]["0"]["balanced_accuracy"] += 0.2
    text = render_ablations(main, {"undo": other})
    assert "| undo | EEGMamba from scratch, finetuned | +0.100 / +0.000 (1/2) | +0.100 |" in text
    from benchmarks.report_ablations import readme_ablations

    assert "| undo | -0.100 | +0.000 | – | +0.100 |" in readme_ablations(main, {"undo": other})
    # a frozen-only run has no finetuned rows: a dash in every cell, the mean included, never "nan"
    frozen = json.loads(json.dumps(other))
    del frozen["table"]["t"][units.PRETRAINED]
    text = render_ablations(main, {"frozen": frozen})
    assert "| frozen | EEGMamba pretrained, finetuned (LP-FT) | – | – |" in text and "nan" not in text


def test_an_ablation_run_on_another_budget_is_not_paired(tmp_path):
    from benchmarks.report_ablations import render_ablations

    main = _payload()
    other = json.loads(json.dumps(report._json_safe(main)))
    other["ablation"] = {"description": "no band power", "budget": {}}
    other["budget"]["pretrain_steps"] = main["budget"]["pretrain_steps"] // 2  # stored before the default changed
    text = render_ablations(main, {"stale": other})
    assert (f"| stale | – | not comparable: budget pretrain_steps {main['budget']['pretrain_steps'] // 2} "
            f"(expected {main['budget']['pretrain_steps']}); rerun it |") in text
    # a budget field added since the ablation was stored ran at its default there
    other["budget"] = {k: v for k, v in main["budget"].items() if k != "pretrain_mix_power"}
    main["budget"]["pretrain_mix_power"] = 1.0
    assert "not comparable" not in render_ablations(main, {"stale": other})
    main["budget"]["pretrain_mix_power"] = 0.5
    assert "not comparable: budget pretrain_mix_power 1.0 (expected 0.5)" in render_ablations(main, {"stale": other})
    main["budget"]["pretrain_mix_power"] = 1.0
    other["budget"]["pretrain_steps"] = main["budget"]["pretrain_steps"] // 2
    # the ablation's own budget change, and fewer seeds, are what it is meant to differ by
    other["ablation"]["budget"] = {"pretrain_steps": main["budget"]["pretrain_steps"] // 2}
    other["budget"]["seeds"] = 1
    assert "not comparable" not in render_ablations(main, {"shorter": other})
    # backbones exported by another selection rule (a run stored before the rule was recorded: the best step)
    main["probe_selection"] = {"tolerance": 1.0}
    assert ("not comparable: backbones selected with probe tolerance 0.0 (main 1.0); rerun it"
            in render_ablations(main, {"shorter": other}))
    other["probe_selection"] = {"tolerance": 1.0}
    assert "not comparable" not in render_ablations(main, {"shorter": other})
    # a probe reading another layer selected other backbones (a run recording only its tolerance read the last)
    main["probe_selection"] = {"tolerance": 1.0, "read_layer": None}
    assert ("not comparable: backbones selected with probe read_layer -1 (main None); rerun it"
            in render_ablations(main, {"shorter": other}))
    # ... unless an earlier main run, selected as the ablation was, is kept beside it: it pairs with that one
    earlier = {**json.loads(json.dumps(main)), "probe_selection": {"tolerance": 1.0}}
    shown = render_ablations(main, {"shorter": other}, {"earlier-main-2026-01-01": earlier})
    assert "not comparable" not in shown and "shorter (minus earlier-main-2026-01-01)" in shown
    other["probe_selection"] = {"tolerance": 1.0, "read_layer": None}
    assert "not comparable" not in render_ablations(main, {"shorter": other})
    # finetuned models kept by another LP-FT rule: the frozen rows pair, the finetuned row does not
    from benchmarks.report_ablations import differences

    main["finetune_selection"] = {"probe_margin": 1.0}
    assert differences(main, other, "t", units.PRETRAINED, "balanced_accuracy") is None
    assert differences(main, other, "t", units.PROBE, "balanced_accuracy") is not None
    other["ablation"]["finetune"] = {"probe_margin": 0.0}  # unless that rule is what the ablation changes
    assert differences(main, other, "t", units.PRETRAINED, "balanced_accuracy") is not None
    # a finetuning ablation measured under the window-level LP-FT error pairs with the earlier main run measured so
    other["ablation"]["finetune"] = {"lr": 1e-4}
    other["finetune_selection"] = {"probe_margin": 1.0}
    main["finetune_selection"] = {"probe_margin": 1.0, "standard_error": units.LPFT_STANDARD_ERROR}
    earlier = {**json.loads(json.dumps(main)), "finetune_selection": {"probe_margin": 1.0}}
    shown = render_ablations(main, {"shorter": other}, {"earlier-main-2026-01-01": earlier})
    assert "shorter (minus earlier-main-2026-01-01)" in shown
    # with none kept, the frozen rows pair with the main run and the finetuned row is left out
    shown = render_ablations(main, {"shorter": other})
    assert "| shorter | EEGMamba pretrained, finetuned (LP-FT) | – | – |" in shown
    assert "| shorter | EEGMamba pretrained, linear probe | +0.000" in shown


def test_the_readme_gets_one_line_per_ablation(tmp_path):
    from benchmarks import report_ablations

    folder = tmp_path / "results"
    main = report._json_safe(_payload())
    other = json.loads(json.dumps(main))
    for seed in ("0", "1"):
        other["table"]["t"][units.PRETRAINED]["seeds"][seed]["balanced_accuracy"] -= 0.1
    other["ablation"] = {"description": "undo something"}
    (folder / "ablation-undo").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(main))
    (folder / "ablation-undo" / "results.json").write_text(json.dumps(other))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Suite\n{report_ablations.README_BEGIN}\nold\n{report_ablations.README_END}\ntail\n")
    table = report_ablations.write_ablation_table(folder, readme)
    block = readme.read_text().split(report_ablations.README_BEGIN)[1].split(report_ablations.README_END)[0]
    assert "| undo | -0.100 | +0.000 |" in block and "old" not in block and readme.read_text().endswith("tail\n")
    assert (folder / "ablations.md").read_text() == table and "undo something" not in block


# ---- the jobs on real data -------------------------------------------------------------------------------------


def test_feature_job_fits_one_classifier_per_fold_on_the_units_split(eegmat_shards, tmp_path):
    """Band power + LR and the random-init probe over real EEGMAT subjects: one result per fold, the same test windows
    for both methods, cached on disk."""
    folder, _ = eegmat_shards
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe

    data = load_task_data(get_recipe("emotion"), str(folder), classes=("rest", "arithmetic"))
    tf = folds.assign_folds("eegmat", data.metas, data.labels, 3, group_key="subject")
    budget = dataclasses.asdict(tasks.FAST)
    ctxs = [units.Context(str(folder), "emotion", ("rest", "arithmetic"), None, tuple(tf.groups(f)), tf.k, budget, {},
                          str(tmp_path)) for f in range(tf.k)]
    work = [(units.FeatureJob("eegmat", 0, m, "plain", tuple(range(tf.k))), ctxs) for m in (units.BAND, units.RANDOM_PROBE)]
    results = units.run_units(work, tmp_path / "cache")
    assert len(results) == 2 * tf.k and not any("error" in r for r in results)
    by = {(r["method"], r["fold"]): r for r in results}
    for f in range(tf.k):
        band, probe = by[(units.BAND, f)], by[(units.RANDOM_PROBE, f)]
        assert band["y"] == probe["y"] and band["groups"] == probe["groups"] == [tf.groups(f)[0]] * len(band["y"])
        assert np.allclose(np.asarray(probe["proba"]).sum(1), 1.0)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    again = units.run_units(work, tmp_path / "cache")  # read back, not recomputed
    assert [r["proba"] for r in again] == [r["proba"] for r in results]
    # a run with calibration off decides its probes at 0.5, as a linear-probe run with calibrate=False does
    assert any(by[(units.RANDOM_PROBE, f)]["threshold"] is not None for f in range(tf.k))
    off = [dataclasses.replace(c, finetune_overrides={"calibrate": False}) for c in ctxs]
    uncalibrated = units.run_units([(units.FeatureJob("eegmat", 0, units.RANDOM_PROBE, "plain", tuple(range(tf.k))), off)],
                                   tmp_path / "cache")
    assert all(r["threshold"] is None for r in uncalibrated)
    assert [r["proba"] for r in uncalibrated] == [by[(units.RANDOM_PROBE, r["fold"])]["proba"] for r in uncalibrated]


def test_the_probe_jobs_read_what_the_ablations_heads_read(eegmat_shards, tmp_path):
    """A feature job builds the head an EEGMamba run of the same ablation would: its pool and gain overrides."""
    folder, _ = eegmat_shards
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe

    data = load_task_data(get_recipe("emotion"), str(folder), classes=("rest", "arithmetic"))
    n_channels = len({c for w in data.windows for c in w.meta["channels"]})
    budget = dataclasses.asdict(tasks.FAST)
    job = units.FeatureJob("eegmat", 0, units.RANDOM_PROBE, "plain", (0,))

    def features(overrides):
        ctx = units.Context(str(folder), "emotion", ("rest", "arithmetic"), None, (), 2, budget, overrides, str(tmp_path))
        return units.window_features(job, ctx, data)

    default, tokens, mean = features({}), features({"gain": False}), features({"pool": "mean", "gain": False})
    assert default.shape[1] == tokens.shape[1] + n_channels and mean.shape[1] == tokens.shape[1] // n_channels
    np.testing.assert_allclose(default[:, :tokens.shape[1]], tokens, rtol=1e-5, atol=1e-6)


def test_standardised_protocol_removes_each_subjects_gain(eegmat_shards, tmp_path):
    """The standardised protocol on real EEGMAT subjects: band power of a subject recorded at ten times the gain
    standardises to the same features, and the protocol's jobs score the plain jobs' test windows."""
    folder, _ = eegmat_shards
    from benchmarks.baselines import band_power_features, stack_windows
    from finetune.align import standardize_groups
    from finetune.data import load_task_data
    from finetune.recipes import get_recipe
    from finetune.splits import subject_groups

    data = load_task_data(get_recipe("emotion"), str(folder), classes=("rest", "arithmetic"))
    subjects = subject_groups(data.metas)
    x = stack_windows(data.windows)
    louder = x.copy()
    first = np.asarray(subjects) == subjects[0]
    louder[first] *= 10.0
    plain, loud = band_power_features(x), band_power_features(louder)
    assert not np.allclose(plain[first], loud[first])
    assert np.allclose(standardize_groups(plain, subjects), standardize_groups(loud, subjects), atol=1e-9)

    tf = folds.assign_folds("eegmat", data.metas, data.labels, 3, group_key="subject")
    budget = dataclasses.asdict(tasks.FAST)
    ctxs = [units.Context(str(folder), "emotion", ("rest", "arithmetic"), None, tuple(tf.groups(f)), tf.k, budget, {},
                          str(tmp_path)) for f in range(tf.k)]
    out = {p: units.run_units([(units.FeatureJob("eegmat", 0, units.BAND, p, tuple(range(tf.k))), ctxs)], tmp_path / p)
           for p in ("plain", "standardised")}
    for a, b in zip(out["plain"], out["standardised"]):
        assert a["y"] == b["y"] and a["groups"] == b["groups"] and "error" not in b
    assert not np.allclose(np.asarray(out["plain"][0]["proba"]), np.asarray(out["standardised"][0]["proba"]))


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_motor_imagery(shared_data, tmp_path, bench):
    """The whole script on the smallest real task (30 cue windows of one subject, two runs), tiny budget."""
    assert bench.main(["--data", str(shared_data), "--out", str(tmp_path / "work"), "--results", str(tmp_path / "res"),
                       "--tasks", "motor_imagery", "--seeds", "1", "--pretrain-steps", "4", "--epochs", "1"]) == 0
    payload = json.loads((tmp_path / "res" / "results.json").read_text())
    rows = payload["table"]["motor_imagery"]
    assert units.PRETRAINED in rows and units.BAND + report.ALIGNED in rows and units.PROBE + report.STANDARDISED in rows
    assert units.PRETRAINED + report.STANDARDISED not in rows  # frozen-feature methods only
    assert payload["tasks"]["motor_imagery"]["windows"] == 30 and len(payload["predictions"]["motor_imagery"]["y"]) == 30
    from benchmarks.stages import finetune_selection, probe_selection

    assert payload["probe_selection"] == probe_selection() and payload["finetune_selection"] == finetune_selection()
    assert payload["finetune_selection"] == {"probe_margin": 1.0, "standard_error": units.LPFT_STANDARD_ERROR}

# ---- bootstrap over test groups ------------------------------------------------------------------------


def test_bootstrap_resamples_groups_not_windows():
    # group A: 30 windows all right; group B: 10 windows all wrong (binary, class 0 only)
    groups = ["A"] * 30 + ["B"] * 10
    y = np.zeros(40, dtype=int)
    pred = np.array([0] * 30 + [1] * 10)
    stat = lambda i, w: float(np.average(pred == y, weights=w))  # noqa: E731
    ci = bootstrap.group_bootstrap([groups], stat, n_boot=2000, seed=0, min_groups=2)
    # resamples: AA -> 1.0 (p 1/4), AB/BA -> 30/40 = 0.75 (p 1/2), BB -> 0.0 (p 1/4)
    assert ci["lo"] == pytest.approx(0.0) and ci["hi"] == pytest.approx(1.0) and ci["n_groups"] == 2
    # 40 independent windows would give a narrow interval around 0.75; one per window is what we do not do
    per_window = bootstrap.group_bootstrap([[str(i) for i in range(40)]], stat, n_boot=2000, seed=0)
    assert per_window["hi"] - per_window["lo"] < 0.35
    assert bootstrap.group_bootstrap([["A"] * 5], stat, min_groups=1) is None  # one group: no interval over groups
    # two groups have three distinct resamples: by default no interval is claimed from them
    assert bootstrap.group_bootstrap([groups], stat) is None


def test_weighted_metrics_score_a_resample_as_if_it_were_built():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(1)
    for k in (2, 4):
        y = rng.integers(0, k, 120)
        proba = rng.random((120, k))
        proba[np.arange(120), y] += 0.4
        proba = np.round(proba / proba.sum(1, keepdims=True), 2)  # rounded: ties, as the stored predictions have
        proba /= proba.sum(1, keepdims=True)
        score = proba[:, 1] if k == 2 else proba
        counts = rng.integers(0, 3, 120)  # how many times a resample drew each window
        built = np.repeat(np.arange(120), counts)
        expected = roc_auc_score(y[built], score[built]) if k == 2 else \
            roc_auc_score(y[built], proba[built], multi_class="ovr", average="macro")
        assert bootstrap.Ranking(y, score, k).auroc(counts) == pytest.approx(expected)
        assert bootstrap.Ranking(y, score, k).auroc() == pytest.approx(
            roc_auc_score(y, score) if k == 2 else roc_auc_score(y, proba, multi_class="ovr", average="macro"))
        pred = proba.argmax(1)
        assert bootstrap.balanced_accuracy(y, pred, k, counts) == pytest.approx(balanced_accuracy_score(y[built], pred[built]))
    assert np.isnan(bootstrap.Ranking(np.array([0, 1]), np.array([0.2, 0.8]), 2).auroc(np.array([1.0, 0.0])))  # no positive


def test_paired_intervals_rank_two_methods_only_beyond_which_subjects_were_tested():
    rng = np.random.default_rng(0)
    n_groups, per = 40, 6
    groups = [f"s{g:02d}" for g in range(n_groups) for _ in range(per)]
    y = np.tile([0, 1, 0, 1, 0, 1], n_groups)
    runs = []
    for seed in (0, 1):
        good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, len(y)), 0.01, 0.99)  # separates the classes
        noise = rng.random(len(y))  # chance
        close = np.clip(good + rng.normal(0, 0.02, len(y)), 0.01, 0.99)  # the same ranking, jittered
        for method, p in ((units.PROBE, good), (units.RANDOM_PROBE, noise), (units.BAND, close)):
            proba = np.c_[1 - p, p].tolist()
            half = len(y) // 2
            runs += [_unit(0, seed, method, y[:half].tolist(), proba[:half], groups[:half]),
                     _unit(1, seed, method, y[half:].tolist(), proba[half:], groups[half:])]
    pooled = report.pool_predictions(runs)
    table = report.table_of(pooled, {"t": 2})
    ci = table["t"][units.PROBE]["paired_ci"]
    assert ci[units.RANDOM_PROBE]["balanced_accuracy"]["lo"] > 0.2 and ci[units.RANDOM_PROBE]["auroc"]["lo"] > 0.2
    assert ci[units.BAND]["auroc"]["lo"] < 0 < ci[units.BAND]["auroc"]["hi"]  # a jitter does not rank them
    assert ci[units.BAND]["balanced_accuracy"]["n_groups"] == n_groups
    assert report.separated(table, "t", units.PROBE, units.RANDOM_PROBE, "auroc") == 1
    assert report.separated(table, "t", units.PROBE, units.BAND, "auroc") == 0
    tasks_ = {"t": {"recipe": "emotion"}}
    lines = report.aims_lines(table, tasks_)
    assert any("EEGMamba random init, linear probe on 1/1 tasks" in line and "difference above 0 on t, below 0 on none" in line
               for line in lines)
    text = "\n".join(report.paired_lines(table, {"t": "T task"}))
    lo, hi = ci[units.BAND]["balanced_accuracy"]["lo"], ci[units.BAND]["balanced_accuracy"]["hi"]
    assert f"[{lo:+.3f}, {hi:+.3f}]" in text


def test_bootstrap_pairs_seeds_on_the_same_groups():
    groups = ["a", "b", "c", "d"]
    y = np.array([0, 1, 0, 1])
    better, worse = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0])
    diff = lambda i, w: (bootstrap.balanced_accuracy(y, better, 2, w)  # noqa: E731
                         - bootstrap.balanced_accuracy(y, worse, 2, w))
    ci = bootstrap.group_bootstrap([groups, groups], diff, n_boot=500, min_groups=4)
    assert 0.0 <= ci["lo"] <= ci["hi"] <= 1.0  # never below zero: method and reference see the same draw


def test_fast_balanced_accuracy_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y[y == 3] = 2  # a class never true but predicted
    assert bootstrap.balanced_accuracy(y, pred, 4) == pytest.approx(balanced_accuracy_score(y, pred))




def test_published_split_is_one_fold_when_every_subject_is_there():
    metas = [{"corpus": "eegmat", "subject": f"Subject{s:02d}", "recording": f"Subject{s:02d}_{k}"}
             for s in range(36) for k in (1, 2)]
    tf = folds.published_folds("eegmat_published", metas, pool=("eegmat/Subject05", "eegmat/Subject33"))
    assert tf.k == 1 and tf.groups(0) == [f"eegmat/Subject{s}" for s in range(32, 36)]
    assert tf.val == tuple(f"eegmat/Subject{s}" for s in range(28, 32))
    assert tf.fold_of["eegmat/Subject05"] == -1 and tf.fold_of["eegmat/Subject33"] == 0  # a tested subject stays tested
    held = tf.held_out(0)
    assert held["subjects"] == {"Subject05", "Subject32", "Subject33", "Subject34", "Subject35"}
    assert "Subject32_2" in held["recordings"] and "Subject28_1" not in held["recordings"]
    assert folds.published_folds("x", metas[:52]) is None  # 26 subjects: no published split


def test_eegmat_rows_are_printed_beside_the_papers_never_mixed_into_them():
    payload = _payload()
    assert "COPIED FROM THE PAPERS" not in report.render(payload)  # no EEGMAT task: no published table
    payload["table"] = {"eegmat": payload["table"]["t"]}
    payload["tasks"] = {"eegmat": payload["tasks"]["t"]}
    text = report.render(payload)
    ours, papers = text.split("## EEGMAT beside published results")[1].split("COPIED FROM THE PAPERS")
    assert "subject-wise cross-validation" in ours and "| EEGMamba from scratch, finetuned | 0.500 ± 0.000 |" in ours
    assert "| CBraMod | 0.7256 | 0.6267 | 0.7905 |" in papers and "EEGMamba" not in papers


def test_ablation_table_without_ablation_runs_says_how_to_make_one(tmp_path):
    from benchmarks.report_ablations import write_ablation_table

    (tmp_path / "results.json").write_text(json.dumps(_payload(), default=str))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- ablation-results:begin -->\nold\n<!-- ablation-results:end -->\n")
    text = write_ablation_table(tmp_path, readme)
    assert "No ablation run is stored" in text and "| ablation |" not in text
    assert "old" not in readme.read_text() and "--ablation NAME" in readme.read_text()


def test_multiclass_probabilities_stored_rounded_still_score():
    p = np.array([[0.33334, 0.33333, 0.33333], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7]]).round(4)  # row 0 sums to 0.9999
    m = report.metrics_of([0, 1, 2], [0, 1, 2], p.tolist(), 3)
    assert m["auroc"] == pytest.approx(1.0) and m["balanced_accuracy"] == pytest.approx(1.0)


def test_adding_a_seed_to_a_run_reuses_every_cached_job():
    def ctx(**budget):
        return units.Context(shards="s", recipe="emotion", classes=("a", "b"), window_s=4.0, test_groups=("g",), n_folds=2,
                             budget={**dataclasses.asdict(tasks.FAST), **budget}, finetune_overrides={}, out="o")

    job = units.FeatureJob("t", 1, units.PROBE, "plain", (0, 1))
    assert job.key([ctx(seeds=2)]) == job.key([ctx(seeds=5)])  # the seed count is not what a job computes from
    assert job.key([ctx(finetune_epochs=9)]) != job.key([ctx()])  # everything else is
    assert units.job_budget(ctx(seeds=2).budget) == units.job_budget(ctx(seeds=5).budget)
    # how the backbones were pretrained reaches a job only through its backbone's weights
    scratch = units.Unit("t", 0, 1, units.SCRATCH, "plain")
    other_pretraining = ctx(pretrain_steps=4800, pretrain_seed_offset=1000, pretrain_lr=2e-3)
    assert scratch.key(units._unit_context(other_pretraining)) == scratch.key(units._unit_context(ctx()))
    assert job.key([other_pretraining]) == job.key([ctx()])
    probe = units.FeatureJob("t", 1, units.PROBE, "plain", (0, 1), checkpoint="b", backbone="digest-a")
    assert probe.key([ctx()]) != dataclasses.replace(probe, backbone="digest-b").key([ctx()])
    assert set(units.NOT_JOB_BUDGET) - {"seeds"} <= {f.name for f in dataclasses.fields(tasks.Budget)}


def test_each_unit_writes_its_own_run_folder_named_by_its_cache_key(tmp_path):
    """An ablation that shares the work dir writes its finetuned models beside the main run's, never over them."""
    main = units.Context(shards="s", recipe="emotion", classes=("a", "b"), window_s=4.0, test_groups=("g",), n_folds=2,
                         budget=dataclasses.asdict(tasks.FAST), finetune_overrides={}, out=str(tmp_path))
    ablation = dataclasses.replace(main, finetune_overrides={"lr": 1e-4})
    unit = units.Unit("t", 0, 1, units.PRETRAINED, "plain")
    folders = {units.finetune_config(unit, c).out for c in (main, ablation)}
    assert len(folders) == 2
    for c in (main, ablation):
        out = Path(units.finetune_config(unit, c).out)
        assert out.parent == tmp_path / "runs" and out.name == f"t-f0-s1-{unit.key(units._unit_context(c))}"
    assert units.finetune_config(unit, ablation).lr == 1e-4 and units.finetune_config(unit, main).lr is None


def test_a_default_changed_in_code_recomputes_the_jobs(monkeypatch):
    """A cached job computed before a ``FinetuneConfig`` default changed (what heads read, how LP-FT selects) is not
    read back as if it were the new default's."""
    ctx = units.Context(shards="s", recipe="emotion", classes=("a", "b"), window_s=4.0, test_groups=("g",), n_folds=2,
                        budget=dataclasses.asdict(tasks.FAST), finetune_overrides={}, out="o")
    job = units.FeatureJob("t", 1, units.PROBE, "plain", (0, 1))
    unit = units.Unit("t", 0, 1, units.PRETRAINED, "plain")
    before = job.key([ctx]), unit.key(units._unit_context(ctx))
    from finetune.config import FinetuneConfig

    defaults = units.finetune_defaults()
    assert defaults["gain"] is FinetuneConfig().gain and "probe_margin" in defaults
    monkeypatch.setattr(units, "finetune_defaults", lambda: {**defaults, "gain": not defaults["gain"]})
    after = job.key([ctx]), unit.key(units._unit_context(ctx))
    assert after[0] != before[0] and after[1] != before[1]
    # LP-FT's error rule is code: it keys the units it decides (finetuned from the pretrained backbone) and no others
    monkeypatch.setattr(units, "finetune_defaults", lambda: defaults)
    scratch = units.Unit("t", 0, 1, units.SCRATCH, "plain")
    keys = unit.key(units._unit_context(ctx)), scratch.key(units._unit_context(ctx)), job.key([ctx])
    monkeypatch.setattr(units, "LPFT_STANDARD_ERROR", "windows")
    assert unit.key(units._unit_context(ctx)) != keys[0]
    assert (scratch.key(units._unit_context(ctx)), job.key([ctx])) == keys[1:]


def test_an_ablation_run_with_another_readout_pairs_with_the_ablation_that_reads_the_same(tmp_path):
    from benchmarks.report_ablations import render_ablations

    main = report._json_safe(_payload())
    main["head_readout"] = {"gain": True}
    old = json.loads(json.dumps(main))  # stored before heads read the gain: no head_readout
    del old["head_readout"]
    old["ablation"] = {"description": "no band power", "objective": {"band_power_weight": 0.0}}
    for seed in ("0", "1"):
        old["table"]["t"][units.PROBE]["seeds"][seed]["balanced_accuracy"] -= 0.1
    text = render_ablations(main, {"no-band-power": old})
    assert ("| no-band-power | – | not comparable: heads read {'gain': False, 'read_layer': -1} "
            "(main {'gain': True, 'read_layer': -1})") in text
    tokens_only = json.loads(json.dumps(main))
    tokens_only["head_readout"] = {"gain": False}
    tokens_only["ablation"] = {"description": "no gain", "finetune": {"gain": False}}
    for seed in ("0", "1"):
        tokens_only["table"]["t"][units.PROBE]["seeds"][seed]["balanced_accuracy"] -= 0.03
    text = render_ablations(main, {"no-band-power": old, "no-head-gain": tokens_only})
    # each ablation minus the run that differs from it by its own change only
    assert "| no-band-power (minus no-head-gain) | EEGMamba pretrained, linear probe | -0.070 / +0.000 (0/2) |" in text
    assert "| no-head-gain | EEGMamba pretrained, linear probe | -0.030 / +0.000 (0/2) |" in text


def test_runs_stored_before_heads_read_the_middle_layer_pair_with_the_last_layer_ablation():
    """With the main run's heads on the middle layer, an ablation stored when they read the last one (its
    head_readout lacks the field) differs from main by two changes; it pairs with ``read-last-layer``, as does
    ``no-head-gain``, whose own change is the gain alone."""
    from benchmarks.report_ablations import reference, render_ablations

    main = report._json_safe(_payload())
    main["head_readout"] = {"gain": True, "read_layer": None}

    def variant(readout, ablation, delta):
        run = json.loads(json.dumps(main))
        run["head_readout"], run["ablation"] = readout, ablation
        for seed in ("0", "1"):
            run["table"]["t"][units.PROBE]["seeds"][seed]["balanced_accuracy"] += delta
        return run

    last = variant({"gain": True, "read_layer": -1}, {"description": "last", "finetune": {"read_layer": -1}}, -0.05)
    masks = variant({"gain": True}, {"description": "masks", "objective": {"mask_ratio": 0.3}}, -0.02)
    no_gain = variant({"gain": False}, {"description": "no gain", "finetune": {"gain": False}}, -0.09)
    stored = {"read-last-layer": last, "mask-fraction-30": masks, "no-head-gain": no_gain}
    assert reference(main, last, stored)[0] == "main"
    assert reference(main, masks, stored)[0] == "read-last-layer"
    assert reference(main, no_gain, stored)[0] == "read-last-layer"
    text = render_ablations(main, stored)
    assert "| read-last-layer | EEGMamba pretrained, linear probe | -0.050 / +0.000 (0/2) |" in text
    assert "| mask-fraction-30 (minus read-last-layer) | EEGMamba pretrained, linear probe | +0.030 / +0.000 (2/2) |" in text
    assert "| no-head-gain (minus read-last-layer) | EEGMamba pretrained, linear probe | -0.040 / +0.000 (0/2) |" in text


def test_an_ablation_pairs_with_the_earlier_main_run_it_was_measured_against():
    """When a rerun of the main run pretrains its backbones again, a stored finetuning-only ablation (measured on
    the old backbones) pairs only with a run that has those backbones: the earlier main run kept beside it, else it
    is not comparable; an ablation with its own backbones prefers the earlier main run that reads as it does."""
    from benchmarks.report_ablations import reference, render_ablations

    earlier = report._json_safe(_payload())
    earlier["head_readout"] = {"gain": True, "read_layer": -1}
    main = json.loads(json.dumps(earlier))
    main["head_readout"] = {"gain": True, "read_layer": None}
    for info in main["pretraining"].values():
        info["losses"] = [v + 0.5 for v in info["losses"]]  # pretrained again: other backbones
    lr = json.loads(json.dumps(earlier))
    lr["ablation"] = {"description": "lr", "finetune": {"lr": 1e-4}}
    for seed in ("0", "1"):
        lr["table"]["t"][units.PRETRAINED]["seeds"][seed]["balanced_accuracy"] -= 0.04
    masks = json.loads(json.dumps(earlier))
    masks["ablation"] = {"description": "masks", "objective": {"mask_ratio": 0.3}}
    for info in masks["pretraining"].values():
        info["losses"] = [v + 0.2 for v in info["losses"]]
    stored = {"finetune-lr-1e-4": lr, "mask-fraction-30": masks}
    assert reference(main, lr, stored) is None
    assert "| finetune-lr-1e-4 | – | not comparable: heads read" in render_ablations(main, stored)
    kept = {"earlier-main-2026-12-05": earlier}
    assert reference(main, lr, stored, kept)[0] == "earlier-main-2026-12-05"
    assert reference(main, masks, stored, kept)[0] == "earlier-main-2026-12-05"
    text = render_ablations(main, stored, kept)
    assert ("| finetune-lr-1e-4 (minus earlier-main-2026-12-05) | EEGMamba pretrained, finetuned (LP-FT) | "
            "-0.040 / +0.000 (0/2) |") in text
    # a finetuning-only ablation whose readout is the main run's but whose backbones are not
    same_readout = json.loads(json.dumps(lr))
    same_readout["head_readout"] = main["head_readout"]
    assert reference(main, same_readout, {}) is None
    assert "not comparable: its backbones are not the main run's" in render_ablations(main, {"x": same_readout})


def test_frozen_only_runs_the_feature_methods_and_no_finetuning(bench):
    metas, y = _metas(8)
    plan = tasks.TASKS[-1]  # EEGMAT: alignable, so every protocol is listed
    tf = folds.assign_folds(plan.name, metas, y, 4, group_key="subject")
    backbones = {f"s{s}-h{h}": {"model": f"m{s}{h}", "key": f"k{s}{h}", "weights": f"w{s}{h}"} for s in range(3) for h in (0, 1)}
    work = {}
    for flag in ([], ["--frozen-only"]):
        args = bench.parse_args(["--tasks", plan.name, *flag])
        work[bool(flag)] = bench.unit_work(args, [plan], {plan.corpus: Path("s")}, {plan.name: tf}, backbones, False)
    finetuned = {units.PRETRAINED, units.SCRATCH}
    assert {job.method for job, _ in work[False]} >= finetuned
    features = [(job, ctxs) for job, ctxs in work[False] if isinstance(job, units.FeatureJob)]
    assert work[True] == features and {job.method for job, _ in work[True]} == set(units.FEATURES)
    # jobs are keyed by the weights they read: a backbone trained again (same settings) is other work
    retrained = {**backbones, "s0-h0": {**backbones["s0-h0"], "weights": "other"}}
    args = bench.parse_args(["--tasks", plan.name])
    again = bench.unit_work(args, [plan], {plan.corpus: Path("s")}, {plan.name: tf}, retrained, False)
    before, after = {job for job, _ in work[False]}, {job for job, _ in again}
    changed = after - before
    assert changed and {job.checkpoint for job in changed} == {"m00"} and {job.backbone for job in changed} == {"other"}
    assert len(before - after) == len(changed)
    assert {job.protocol for job, _ in work[True]} == {"plain", "aligned", "standardised"}


def test_ablation_report_ranks_backbones_by_their_validation_probe():
    from benchmarks.report_ablations import render_ablations

    def run(score, bacc, ablation=None, rank=None):
        out = json.loads(json.dumps(report._json_safe(_payload())))
        exported = {"step": 2, "score": score}
        if rank is not None:
            exported["scores"] = {"v": {"balanced_accuracy": score, "effective_rank": rank}}
        # seed 0 only: seed 1 has no pretraining record, so it is no point
        out["pretraining"] = {f"s0-h{h}": {"probe": [{"step": 1, "score": score + 0.3}, exported],
                                           "selected_step": 2, "losses": [1.0], "steps": 2} for h in (0, 1)}
        out["table"]["t"][units.PROBE]["seeds"]["0"]["balanced_accuracy"] = bacc
        out["ablation"] = ablation
        return out

    main = run(0.50, 0.60)
    ablations = {f"a{i}": run(0.50 + 0.01 * i, 0.60 + 0.02 * i, {"description": "x", "objective": {"k": i}})
                 for i in range(1, 4)}
    text = render_ablations(main, ablations)
    assert "Too few backbones with a validation probe (4; 5 needed)" in text
    ablations["a4"] = run(0.54, 0.55, {"description": "x", "model": {"d_model": 96}})  # the one out of order
    # a finetuning change keeps the main run's backbones: never a point of its own, whatever its numbers
    ablations["ft"] = run(0.90, 0.10, {"description": "x", "finetune": {"lr": 1e-4}})
    text = render_ablations(main, ablations)
    assert "(5 runs, 5 points)" in text
    # ranks 1..5 against 2,3,4,5,1 (the exported step's score, not the best): rho = 1 - 6*20/120 = 0.0; no point
    # logged an effective rank
    assert "| T task | +0.00 | 1.000 | – | – |" in text
    main = run(0.50, 0.60, rank=9.0)
    ablations = {f"a{i}": run(0.50 + 0.01 * i, 0.60 + 0.02 * i, {"description": "x", "objective": {"k": i}},
                              rank=9.0 - i) for i in range(1, 5)}
    assert "| T task | +1.00 | 0.000 | -1.00 | 0.000 |" in render_ablations(main, ablations)
    # a main run probed at another layer scores its steps otherwise: the runs probed alike are ranked, without it
    main["probe_selection"] = {"tolerance": 0.0, "read_layer": None}
    text = render_ablations(main, ablations)
    assert "the probe reading layer -1 (4 runs, 4 points)" not in text and "(4; 5 needed)" in text
    ablations["a5"] = run(0.56, 0.70, {"description": "x", "objective": {"k": 5}}, rank=3.0)
    text = render_ablations(main, ablations)
    assert "the probe reading layer -1 (5 runs, 5 points)" in text and "| T task | +1.00 | 0.000 | -1.00 | 0.000 |" in text


def test_a_main_rerun_with_other_backbones_keeps_the_run_its_ablations_were_measured_against(tmp_path):
    from benchmarks.report_ablations import keep_replaced_main, write_ablation_table

    old = report._json_safe(_payload())
    old["head_readout"] = {"gain": True, "read_layer": None}
    lr = json.loads(json.dumps(old))
    lr["ablation"] = {"description": "lr", "finetune": {"lr": 1e-4}}
    for seed in ("0", "1"):
        lr["table"]["t"][units.PRETRAINED]["seeds"][seed]["balanced_accuracy"] -= 0.04
    (tmp_path / "ablation-finetune-lr-1e-4").mkdir()
    (tmp_path / "ablation-finetune-lr-1e-4" / "results.json").write_text(json.dumps(lr))
    (tmp_path / "results.json").write_text(json.dumps(old))
    (tmp_path / "results.md").write_text("old report")
    assert keep_replaced_main(tmp_path, old) is None  # same backbones: the ablation still pairs with it
    rerun = json.loads(json.dumps(old))
    for info in rerun["pretraining"].values():
        info["losses"] = [v + 0.5 for v in info["losses"]]
    kept = keep_replaced_main(tmp_path, rerun)
    assert kept == tmp_path / "earlier-main-2026-12-05-1200"
    assert json.loads((kept / "results.json").read_text()) == old and (kept / "results.md").read_text() == "old report"
    (tmp_path / "results.json").write_text(json.dumps(rerun))
    text = write_ablation_table(tmp_path, None)
    assert ("| finetune-lr-1e-4 (minus earlier-main-2026-12-05-1200) | EEGMamba pretrained, finetuned (LP-FT) | "
            "-0.040 / +0.000 (0/2) |") in text
    assert keep_replaced_main(tmp_path, rerun) is None  # the ablation now pairs with the kept run


def test_a_main_rerun_under_another_lpft_rule_keeps_the_run_its_finetuned_rows_pair_with(tmp_path):
    from benchmarks.report_ablations import keep_replaced_main, write_ablation_table

    old = report._json_safe(_payload())
    old["head_readout"] = {"gain": True, "read_layer": None}
    old["finetune_selection"] = {"probe_margin": 1.0, "standard_error": "rule A"}
    aug = json.loads(json.dumps(old))
    aug["ablation"] = {"description": "aug", "finetune": {"augment.channel_dropout": 0.1}}
    aug["table"]["t"][units.PRETRAINED]["seeds"]["0"]["balanced_accuracy"] -= 0.04
    (tmp_path / "ablation-aug").mkdir()
    (tmp_path / "ablation-aug" / "results.json").write_text(json.dumps(aug))
    (tmp_path / "results.json").write_text(json.dumps(old))
    rerun = json.loads(json.dumps(old))  # the same backbones and readout, LP-FT selected by another rule
    rerun["finetune_selection"] = {"probe_margin": 1.0, "standard_error": "rule B"}
    kept = keep_replaced_main(tmp_path, rerun)
    assert kept is not None and json.loads((kept / "results.json").read_text()) == old
    (tmp_path / "results.json").write_text(json.dumps(rerun))
    text = write_ablation_table(tmp_path, None)
    assert f"| aug (minus {kept.name}) | EEGMamba pretrained, finetuned (LP-FT) | -0.020 / +0.000 (0/2) |" in text


def test_the_tables_list_rows_by_protocol_then_method_whatever_order_the_jobs_finished():
    payload = report._json_safe(_payload())
    rows = payload["table"]["t"]
    payload["table"]["t"] = {row: rows[row] for row in reversed(list(rows))}  # as a run whose jobs finished otherwise
    payload["tasks"]["eegmat"] = {**payload["tasks"].pop("t"), "title": "EEGMAT"}  # the published-results table too
    payload["table"] = {"eegmat": payload["table"]["t"]}
    text = report.render(payload)
    order = [units.PRETRAINED, units.SCRATCH, units.PROBE, units.BAND]
    main = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| EEGMAT | ")]
    published = [row for line in text.split("Measured here")[1].splitlines() if (row := line.split(" | ")[0][2:]) in order]
    assert main == order and published == order


def test_the_null_ablation_states_how_far_pretraining_noise_moves_the_probe():
    from benchmarks.ablations import ABLATIONS, NULL_ABLATION
    from benchmarks.report_ablations import readme_ablations

    assert ABLATIONS[NULL_ABLATION].changes_pretraining and ABLATIONS[NULL_ABLATION].budget == {"pretrain_seed_offset": 1000}
    main = report._json_safe(_payload())
    null = json.loads(json.dumps(main))
    null["ablation"] = {"description": "other seeds", "budget": {"pretrain_seed_offset": 1000}}
    null["budget"]["pretrain_seed_offset"] = 1000
    null["pretraining"]["s0-h0"]["losses"] = [3.0, 1.1]  # its own backbones
    for seed, shift in (("0", -0.04), ("1", -0.02)):
        null["table"]["t"][units.PROBE]["seeds"][seed]["balanced_accuracy"] += shift
    text = readme_ablations(main, {NULL_ABLATION: null})
    assert (f"Pretraining noise: `{NULL_ABLATION}` changes nothing but the pretraining's random stream, yet moves the "
            "frozen probe by 0.030 balanced accuracy per task on average (up to -0.030 on T task") in text
    assert "Pretraining noise" not in readme_ablations(main, {"other": null})


def test_runs_of_other_settings_in_one_work_dir_keep_each_others_backbones(synth_shards, tmp_path, monkeypatch):
    """A run on a subset of the tasks (other held-out halves) or another budget trains its own backbones beside
    the main run's, never over them; the main run then finds its own again without training."""
    from types import SimpleNamespace

    import pretrain.run
    from benchmarks import stages

    trained = []

    def fake_run(config):
        out = Path(config.train.out_dir) / "model"
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(str(config.train.max_steps).encode())
        trained.append(config.train.out_dir)
        return SimpleNamespace(losses=[2.0, 1.0], export_dir=out, selected_step=None, steps=config.train.max_steps)

    monkeypatch.setattr(pretrain.run, "run", fake_run)
    folders, root = {"synth": synth_shards}, tmp_path / "pretrain"
    main = stages.pretrain_backbone("s0-h0", folders, root, tasks.FAST, 0)
    assert not main["reused"] and Path(main["model"]) == root / "s0-h0" / "model"
    other = stages.pretrain_backbone("s0-h0", folders, root, dataclasses.replace(tasks.FAST, pretrain_steps=8), 0)
    assert not other["reused"] and Path(other["model"]).parent.parent == root and Path(other["model"]).parent.name.startswith("s0-h0-")
    assert (root / "s0-h0" / "model" / "model.safetensors").read_bytes() == b"2400"  # the main run's, untouched
    again = stages.pretrain_backbone("s0-h0", folders, root, tasks.FAST, 0)
    assert again["reused"] and again["weights"] == main["weights"] and len(trained) == 2
    assert stages.pretrain_backbone("s0-h0", folders, root, dataclasses.replace(tasks.FAST, pretrain_steps=8), 0)["reused"]
    # an unfinished run (no stamp) is no one's finished work: it is started again in place
    (root / "s0-h0" / "benchmark_key.json").unlink()
    assert not stages.pretrain_backbone("s0-h0", folders, root, tasks.FAST, 0)["reused"] and len(trained) == 3


def test_pretraining_shards_for_other_folds_are_built_beside_the_others(tmp_path, monkeypatch):
    from benchmarks import stages

    builds = []

    def fake_build(data_root, out, *, sets, keep=None, folder_name="shards"):
        folder = out / folder_name / sets[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "built").write_text(str(len(builds)))
        builds.append(folder_name)
        return {sets[0]: folder}

    monkeypatch.setattr(stages, "build_shards", fake_build)
    keep = {"eegmat": lambda rec: True}
    first = stages.subset_shards(tmp_path, tmp_path, "shards-pretrain-h0", ["eegmat"], keep, {"eegmat": {"held": ["a"]}})
    assert first["eegmat"] == tmp_path / "shards-pretrain-h0" / "eegmat"
    other = stages.subset_shards(tmp_path, tmp_path, "shards-pretrain-h0", ["eegmat"], keep, {"eegmat": {"held": ["b"]}})
    assert other["eegmat"].parent.name.startswith("shards-pretrain-h0-") and other["eegmat"] != first["eegmat"]
    assert (first["eegmat"] / "built").read_text() == "0"  # the first build is left as it was
    assert stages.subset_shards(tmp_path, tmp_path, "shards-pretrain-h0", ["eegmat"], keep,
                                {"eegmat": {"held": ["a"]}})["eegmat"] == first["eegmat"]


def test_a_data_fraction_keeps_the_same_share_of_recordings_on_every_run():
    from types import SimpleNamespace

    from benchmarks.stages import both, excluding, in_fraction

    recs = [SimpleNamespace(recording=f"rec{i:04d}", subject=f"s{i % 40}") for i in range(2000)]
    half, quarter = in_fraction(0.5), in_fraction(0.25)
    kept = {r.recording for r in recs if half(r)}
    assert 0.45 < len(kept) / len(recs) < 0.55 and kept == {r.recording for r in recs if in_fraction(0.5)(r)}
    assert {r.recording for r in recs if quarter(r)} < kept  # a smaller share is drawn from within a larger one
    keep = both(excluding({"subjects": {"s0"}}), half)
    assert {r.recording for r in recs if keep(r)} == {r.recording for r in recs if half(r) and r.subject != "s0"}
    assert both(None, half)(recs[0]) == half(recs[0])
    # each set draws on its own: six recordings named alike are not all kept (or dropped) in both sets
    names = [SimpleNamespace(recording=f"excerpt{i}") for i in range(1, 7)]
    assert [in_fraction(0.5, salt="a")(r) for r in names] != [in_fraction(0.5, salt="b")(r) for r in names]
