"""Every Triton scan kernel variant compiles for sm_90 (H100/H200) on this CPU-only machine, without spills.

Triton's wheel ships ptxas and cuobjdump, so ``benchmarks/scan_compile.py`` compiles to a cubin and reads its
resource usage. It runs in its own process: this suite imports triton in interpreter mode
(``tests/test_ssm_triton.py``), and a process decides that once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90_without_spills():
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'eegfm[gpu]' or '.[dev]')")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton wheel ships no ptxas (not a Linux x86 wheel)")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scan_compile.py"), "--arch", "90"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    kernels = {k["kernel"]: k for k in summary["kernels"]}
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(kernels) == 8 and all(k["local"] == 0 and 0 < k["reg"] <= 255 for k in kernels.values()), kernels
