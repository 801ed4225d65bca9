"""benchmarks/gpu.py --dry-run: the GPU benchmark's code path (every part) at tiny sizes on CPU, and the CPU
overhead aims it tracks: no graph break in either objective, no host sync in the step a GPU runs."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu


def test_dry_run_writes_report_json_and_readme_block(tmp_path, one_thread):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{gpu.README_BEGIN}\nnot yet measured\n{gpu.README_END}\n\ntail\n")
    assert gpu.main(["--dry-run", "--out", str(tmp_path / "out"), "--readme", str(readme)]) == 0
    res = json.loads((tmp_path / "out" / "gpu.json").read_text())
    # a: the chunked torch scan agrees with the float64 reference on output and every gradient.
    assert res["a"]["backends"]["torch"] == "runs" and res["a"]["backends"]["ref"] == "runs"
    (torch_row,) = [r for r in res["a"]["rows"] if r["backend"] == "torch"]
    for key in ("y", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"):
        assert torch_row[key] < 1e-4 * max(1.0, torch_row["grad_scale"]), key
    # b: the three scan shapes, with the bytes a fused scan must move and the achieved bandwidth.
    assert [r["shape"] for r in res["b"]["rows"]] == ["8k", "pretraining", "batch 1, 64k"]
    for r in res["b"]["rows"]:
        assert r["bytes"] == gpu.scan_bytes(r["b"], r["d"], r["n"], r["l"]) == 4 * (11 * r["b"] * r["d"] * r["l"]
                                                                                   + 6 * r["b"] * r["n"] * r["l"])
        # both timed, not ordered: on a shared CPU a forward-and-backward can be timed faster than a forward
        assert r["torch"]["ms"] > 0 and r["torch"]["fwd_ms"] > 0 and r["torch"]["GBps"] > 0
    # c: BiMamba with and without recompute and both transformers at every length.
    models = ("bimamba", "bimamba_recompute", "sdpa_hd32", "sdpa_hd64")
    assert all(r[k]["ms"] > 0 for r in res["c"]["rows"] for k in models)
    # d: a real loop over shards built by the CLI, fed by the pretrain.data stream; overhead counted per step.
    eager = res["d"]["eager"]
    assert eager["steps"] == 3 and eager["samples_per_s"] > 0 and res["d"]["loader_samples_per_s"] > 0
    assert eager["tokens_per_s"] == pytest.approx(eager["samples_per_s"] * 19 * 4)  # 19 channels x 4 patches
    assert eager["ops"] > 0 and "skipped" in res["d"]["compiled"]
    # e: the CPU overhead aims: the GPU's code path has no host sync and neither objective a graph break.
    assert res["e"]["eager"]["syncs"] == 0 and res["e"]["eager"]["ops"] > 0
    assert {k: v["breaks"] for k, v in res["e"]["graph_breaks"].items()} == {"masked_stft": 0, "masked_token": 0}
    text = readme.read_text()
    assert "not yet measured" not in text and "| backend | y |" in text and text.endswith("tail\n")
    assert text.count(gpu.README_BEGIN) == 1
    # A report measured elsewhere (the GPU machine's gpu.md) goes into another README unchanged.
    other = tmp_path / "OTHER.md"
    other.write_text(f"{gpu.README_BEGIN}\nold\n{gpu.README_END}\n")
    assert gpu.main(["--from-md", str(tmp_path / "out" / "gpu.md"), "--readme", str(other)]) == 0
    assert other.read_text().split(gpu.README_BEGIN)[1] == text.split(gpu.README_BEGIN)[1].replace("\n\ntail\n", "\n")


def test_flops_and_bytes_are_the_documented_formulas():
    cfg = gpu.EEGMambaConfig.from_size("base")
    assert gpu.train_flops_per_token(cfg) > 0
    # The 8k shape moves ~1.5 GB: ~0.45 ms at an H100's 3.35 TB/s.
    assert gpu.scan_bytes(8, 512, 16, 8192) == pytest.approx(1.50e9, rel=0.01)
