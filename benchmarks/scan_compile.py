"""Compile the Triton scan kernels for a GPU target on any machine (no GPU needed) and report their resources.

    python benchmarks/scan_compile.py                    # sm_90 (H100/H200), the default launch configuration
    python benchmarks/scan_compile.py --arch 80 --time-block 128 --block-d 4 --warps 4

Triton compiles to a cubin with the ``ptxas`` its wheel ships, so this checks on a CPU-only machine that every
kernel variant the scan launches compiles for the GPU, and reads registers, local memory (spills) and shared
memory per thread block from the cubin with the bundled ``cuobjdump``. Prints one line per kernel and a JSON
summary; exits 1 when a kernel spills to local memory.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret

_DATA_POINTERS = {"u_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "gy_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}


def _signature(fn, constexprs: dict, dtype: str) -> dict:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "mask_ptr":
            sig[name] = "*u8"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (dtype if name in _DATA_POINTERS else "fp32")
        else:
            sig[name] = "i32"
    return sig


def variants(time_block: int, block_d: int) -> list[tuple[str, str, dict, str]]:
    """(label, kernel, constexprs, input dtype) for every kernel variant a BiMamba block or a plain scan launches."""
    base = dict(BLOCK_D=block_d, BLOCK_N=16, T=time_block)
    scan = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_MASK=False, SOFTPLUS=True)
    block = dict(HAS_D=True, HAS_Z=False, HAS_BIAS=True, HAS_MASK=True, SOFTPLUS=True)
    out = [("forward, scan", "_fwd_kernel", {**base, **scan, "HAS_H0": False}, "fp32"),
           ("forward, BiMamba block, bf16", "_fwd_kernel", {**base, **block, "HAS_H0": False}, "bf16"),
           ("forward, state passing", "_fwd_kernel", {**base, **scan, "HAS_H0": True}, "fp32"),
           ("forward, local pass", "_fwd_local_kernel", {**base, "HAS_BIAS": True, "HAS_MASK": True, "SOFTPLUS": True},
            "fp32")]
    for flip in (False, True):
        out.append((f"backward, scan, {'flip' if flip else 'native'} reverse", "_bwd_kernel",
                    {**base, **scan, "FLIP": flip}, "fp32"))
    out.append(("backward, BiMamba block, bf16", "_bwd_kernel", {**base, **block, "FLIP": False}, "bf16"))
    out.append(("backward, local pass", "_bwd_local_kernel",
                {**base, "HAS_Z": True, "HAS_BIAS": True, "HAS_MASK": True, "SOFTPLUS": True, "FLIP": False}, "fp32"))
    return out


def compile_all(arch: int, time_block: int, block_d: int, warps: int) -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from foundation import ssm_triton

    kernels = ssm_triton.kernels()
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rows = []
    for label, name, constexprs, dtype in variants(time_block, block_d):
        fn = kernels[name]
        src = ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype), constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        fields = dict(re.findall(r"(REG|LOCAL|SHARED|STACK):(\d+)", usage))
        rows.append({"kernel": label, **{k.lower(): int(v) for k, v in fields.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    p.add_argument("--time-block", type=int, default=None, help="steps per chunk (default: the kernels' default)")
    p.add_argument("--block-d", type=int, default=None, help="channels per program (default: the kernels' default)")
    p.add_argument("--warps", type=int, default=None, help="warps per program (default: the launch heuristic)")
    args = p.parse_args(argv)
    from foundation import ssm_triton

    time_block = args.time_block or ssm_triton.TIME_BLOCK
    block_d = args.block_d or ssm_triton.BLOCK_D
    warps = args.warps or max(1, min(8, block_d * time_block // 128))
    rows = compile_all(args.arch, time_block, block_d, warps)
    print(f"sm_{args.arch}, time block {time_block}, {block_d} channel(s) per program, {warps} warps")
    for r in rows:
        print(f"  {r['kernel']:<36} registers {r.get('reg', '?'):>4}  local (spills) {r.get('local', '?'):>5} B  "
              f"shared {r.get('shared', '?'):>6} B")
    print(json.dumps({"arch": args.arch, "time_block": time_block, "block_d": block_d, "warps": warps, "kernels": rows}))
    return 1 if any(r.get("local", 0) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
