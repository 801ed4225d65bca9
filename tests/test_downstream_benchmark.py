"""Fast pieces of benchmarks/downstream.py and its modules (baselines, report, tasks): band power, the band-power
classifier, aggregation, tables, rendering.

The benchmark itself (shards -> pretraining -> finetuning on real data) is not a unit test; it is run with
``python benchmarks/downstream.py [--quick]``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import baselines, report, tasks

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
    s = report.summarize([0.5, 0.7, float("nan")])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert report.summarize([0.9])["std"] == 0.0
    assert math.isnan(report.summarize([float("nan")])["mean"])


def test_aggregate_table_and_aims():
    runs = []
    for seed, (pre, scratch, band) in enumerate([(0.96, 0.90, 0.93), (0.98, 0.92, 0.95)]):
        for method, ba in (("pre", pre), ("scratch", scratch), ("band", band)):
            runs.append({"task": "seizure", "method": method, "seed": seed, "seconds": 10.0 + seed,
                         "metrics": {"balanced_accuracy": ba, "cohen_kappa": ba - 0.1, "weighted_f1": ba, "auroc": ba}})
        runs.append({"task": "sleep", "method": "pre", "seed": seed, "seconds": 5.0,
                     "metrics": {"balanced_accuracy": 0.4, "cohen_kappa": 0.2, "weighted_f1": 0.5}})
    table = report.aggregate(runs)
    assert table["seizure"]["pre"]["balanced_accuracy"]["mean"] == pytest.approx(0.97)
    assert table["seizure"]["pre"]["seeds"] == [0, 1]
    assert table["seizure"]["pre"]["seconds"]["mean"] == pytest.approx(10.5)
    assert math.isnan(table["sleep"]["pre"]["auroc"]["mean"])  # no AUROC for a multi-class task

    md = report.results_table(table, {"seizure": "Bonn seizure"})
    lines = md.splitlines()
    assert lines[0].startswith("| task | method | bal. acc. | kappa | weighted F1 | AUROC | s / run |")
    assert "| Bonn seizure | pre | 0.970 ± 0.014 | 0.870 ± 0.014 | 0.970 ± 0.014 | 0.970 ± 0.014 | 10 |" in lines
    assert any(line.startswith("| sleep | pre | 0.400 ± 0.000 |") and "| – |" in line for line in lines)

    aim = report.aims(table, ["pre"], "scratch", "band")
    assert aim[0].startswith("- pre: beats from-scratch on 1/2 tasks (seizure)")
    assert "seizure balanced accuracy >= 0.95 with pre: yes (0.970)" in "\n".join(aim)
    assert "with scratch: no (0.910)" in "\n".join(aim)


def test_stage_table_sums():
    md = report.stage_table({"a": 1.4, "b": 2.4})
    assert md.splitlines()[-1] == "| total | 4 |"


def test_parse_args_defaults_and_errors(bench):
    args = bench.parse_args([])
    assert args.seeds == 3 and args.task_names == ["seizure", "sleep", "motor_imagery", "emotion"]
    assert args.results == REPO / "benchmarks" / "results"
    quick = bench.parse_args(["--quick", "--out", "/tmp/x"])
    assert quick.results == Path("/tmp/x/results-quick")
    with pytest.raises(SystemExit):
        bench.parse_args(["--tasks", "seizure,nope"])


def test_every_task_reads_a_shard_set_that_is_built():
    for plan in tasks.TASKS:
        assert plan.corpus in tasks.SHARD_SETS
        assert plan.n_folds >= 2


def _runs():
    runs = []
    for seed, (pre, scratch, band) in enumerate([(0.90, 0.80, 0.95), (0.70, 0.75, 0.60)]):
        for method, ba in (("EEGMamba pretrained (X), finetuned", pre), ("EEGMamba from scratch", scratch),
                           ("band power + LR", band)):
            runs.append({"task": "seizure", "method": method, "seed": seed, "seconds": 1.0,
                         "metrics": {"balanced_accuracy": ba, "cohen_kappa": 0.0, "weighted_f1": ba, "auroc": None}})
    return runs


def test_paired_differences_pair_by_seed():
    d = report.paired_differences(_runs(), "EEGMamba pretrained (X), finetuned", "EEGMamba from scratch")["seizure"]
    assert d["n"] == 2 and d["wins"] == 1
    assert d["mean"] == pytest.approx((0.10 - 0.05) / 2)
    assert d["std"] == pytest.approx(np.std([0.10, -0.05], ddof=1))


def test_render_is_a_function_of_the_payload(bench, tmp_path):
    payload = {"command": ["python", "benchmarks/downstream.py", "--seeds", "2"], "quick": False,
               "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch": "x", "torch_threads": 1, "python": "3"},
               "total_s": 120.0, "finished": "2026-01-01 00:00 UTC", "stages_s": {"a": 60.0, "b": 60.0},
               "pretrain_losses": {"masked STFT": [2.0] * 10 + [1.0] * 10}, "runs": _runs()}
    text = report.render(payload)
    assert "Command: `python benchmarks/downstream.py --seeds 2`" in text
    assert "Machine: Test CPU, 2 CPU cores" in text and "total wall time 2.0 min" in text
    assert "| Bonn seizure (S vs Z/O/N/F) | EEGMamba pretrained (X), finetuned | 0.800 ± 0.141 |" in text
    assert "beats from-scratch on 1/1 tasks (seizure)" in text  # 0.800 > 0.775
    assert "minus EEGMamba from scratch: Bonn seizure +0.025 ± 0.106 (1/2 seeds)" in text
    assert "loss 2.0000 (first 10 %) -> 1.0000 (last 10 %)" in text
    assert "| total | 120 |" in text
    # --render rewrites results.md from results.json without training
    import json
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert bench.main(["--render", str(tmp_path / "results.json")]) == 0
    assert (tmp_path / "results.md").read_text() == text


def test_readme_results_block_is_replaced_by_the_report(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Suite\n\n## Results\n{report.README_BEGIN}\nold numbers\n{report.README_END}\n\n## After\nkept\n")
    md = "# Downstream benchmark\n\nCommand: `x`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Aims\n\n- met\n"
    report.update_readme(readme, md)
    text = readme.read_text()
    assert "old numbers" not in text and "| 1 | 2 |" in text and "### Aims" in text
    assert "# Downstream benchmark" not in text and text.endswith("## After\nkept\n")
    report.update_readme(readme, md)  # idempotent: markers survive
    assert readme.read_text() == text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="marker"):
        report.update_readme(readme, md)


STORED = REPO / "benchmarks" / "results"


@pytest.mark.parametrize("folder", ["", "ablation-pool-mean", "ablation-finetune-lr-1e-3", "ablation-pretrain-400-steps"])
def test_render_reproduces_the_stored_reports_byte_for_byte(bench, tmp_path, folder):
    """``--render`` of a stored results.json writes the stored results.md and results.json again, unchanged."""
    stored = STORED / folder
    if not (stored / "results.json").is_file():
        pytest.skip(f"no stored results in {stored}")
    (tmp_path / "results.json").write_bytes((stored / "results.json").read_bytes())
    assert bench.main(["--render", str(tmp_path / "results.json")]) == 0
    assert (tmp_path / "results.md").read_text() == (stored / "results.md").read_text()
    assert (tmp_path / "results.json").read_text() == (stored / "results.json").read_text()


def test_render_rewrites_the_readme_block_as_stored(bench, tmp_path):
    """The README's results block is exactly what ``--render --readme`` writes from the stored main run."""
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    (tmp_path / "results.json").write_bytes((STORED / "results.json").read_bytes())
    assert bench.main(["--render", str(tmp_path / "results.json"), "--readme", str(readme)]) == 0
    assert readme.read_text() == (REPO / "README.md").read_text()
