"""benchmarks/gpu.py --dry-run: the GPU benchmark's code path (all four parts) at tiny sizes on CPU."""

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
    # b: one timed row per length; d: both models at every length.
    assert [r["L"] for r in res["b"]["rows"]] == [64, 256]
    assert all(r["torch"]["ms"] > 0 for r in res["b"]["rows"])
    assert all(r[k]["ms"] > 0 for r in res["d"]["rows"] for k in ("bimamba", "transformer_sdpa"))
    # c: a real loop over shards built by the CLI, fed by the pretrain.data stream.
    c = res["c"]
    assert c["steps"] == 3 and c["samples_per_s"] > 0 and c["loader_samples_per_s"] > 0
    assert c["tokens_per_s"] == pytest.approx(c["samples_per_s"] * 19 * 4) # 19 real channels x 4 one-second patches
    assert gpu.train_flops_per_token(gpu.EEGMambaConfig.from_size("base")) > 0
    text = readme.read_text()
    assert "not yet measured" not in text and "| backend | y |" in text and text.endswith("tail\n")
    assert text.count(gpu.README_BEGIN) == 1
    # A report measured elsewhere (the GPU machine's gpu.md) goes into another README unchanged.
    other = tmp_path / "OTHER.md"
    other.write_text(f"{gpu.README_BEGIN}\nold\n{gpu.README_END}\n")
    assert gpu.main(["--from-md", str(tmp_path / "out" / "gpu.md"), "--readme", str(other)]) == 0
    assert other.read_text().split(gpu.README_BEGIN)[1] == text.split(gpu.README_BEGIN)[1].replace("\n\ntail\n", "\n")
