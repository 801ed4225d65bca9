"""Backbone benchmarks on CPU: (a) our selective scan vs a plain per-step loop, (b) BiMamba vs Transformer.

    python benchmarks/backbone.py            # full run (several minutes on 2 cores)
    python benchmarks/backbone.py --quick    # smoke run (about a minute)

Every figure is measured in this run; ratios compare against baselines measured in the same run.

How things are measured (each measurement runs in its own fresh subprocess, so one case's allocator state
cannot leak into another's):

* **time**: wall-clock seconds of one forward + backward, the minimum over ``--repeats`` runs after one
  warm-up run; CPU seconds of the process are shown beside it because a shared machine makes wall time noisy.
* **saved**: bytes of the tensors autograd keeps for the backward pass (``torch.autograd.graph.
  saved_tensors_hooks``; each storage counted once): the activation memory a training step holds.
* **peak**: the peak resident-set growth over the forward + backward (``/proc/self/status`` VmHWM after
  resetting it through ``/proc/self/clear_refs``, minus the RSS before the step). It includes transient
  buffers. The child runs with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed blocks go back to the OS and do
  not hide in glibc's heap; the inputs and parameters are allocated before the baseline is read.

Part (a) runs the bare recurrence ``y = C . h`` (no D / z) at ``B=8, d_inner=256, d_state=16``.
Part (b) compares a stack of :class:`foundation.bimamba.BiMambaBlock` with ``nn.TransformerEncoder`` of the
same width and depth (pre-norm, dropout 0, feed-forward 4x width), batch 1, loss = mean square of the output.
BiMamba runs as is and with ``recompute="full"`` (only block inputs kept for the backward pass); the
transformer likewise with each layer under ``torch.utils.checkpoint``, for a like-for-like lean comparison.
The transformer runs twice: with PyTorch's default attention (on CPU ``scaled_dot_product_attention`` picks
a fused flash kernel whose memory is linear in length) and with the math backend forced, which materialises
the ``L x L`` attention matrix as explicit-attention implementations (LaBraM, EEG Conformer) do. Sizes whose
estimated memory exceeds ``--max-gib`` are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- child side
def _loop_scan(u, delta, A, B, C):
    """The baseline: one Python step per time step over ``unbind``-ed slices (plain autograd)."""
    import torch

    b, d, _ = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for u_t, d_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * B_t[:, None]
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    return torch.stack(ys, dim=-1)


def _build(case: dict):
    """A zero-argument closure running one forward + backward for ``case``."""
    import torch
    import torch.utils.checkpoint
    from torch import nn

    torch.manual_seed(0)
    kind = case["kind"]
    if kind in ("scan_loop", "scan_ours"):
        from foundation.ssm import selective_scan

        b, d, n, l = case["batch"], case["d_inner"], case["d_state"], case["length"]
        u = torch.randn(b, d, l, requires_grad=True)
        delta = torch.nn.functional.softplus(torch.randn(b, d, l) - 2).requires_grad_(True)
        A = (-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)).requires_grad_(True)
        B = torch.randn(b, n, l, requires_grad=True)
        C = torch.randn(b, n, l, requires_grad=True)
        fn = _loop_scan if kind == "scan_loop" else selective_scan

        def step():
            fn(u, delta, A, B, C).sum().backward()

        def forward():
            return fn(u, delta, A, B, C).sum()

        return step, forward
    d, depth, l = case["d_model"], case["depth"], case["length"]
    x = torch.randn(1, l, d)
    if kind == "bimamba":
        from foundation.bimamba import BiMambaBlock

        model = nn.ModuleList(BiMambaBlock(d, recompute=case.get("recompute", False)) for _ in range(depth))

        def run():
            h = x
            for blk in model:
                h = blk(h)
            return h

    else:
        layer = nn.TransformerEncoderLayer(
            d, case["heads"], dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        model = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

        def run():
            if case.get("recompute"):
                # Same layer-input-only checkpointing as BiMambaBlock(recompute=True), for a like-for-like row.
                h = x
                for lyr in model.layers:
                    h = torch.utils.checkpoint.checkpoint(lyr, h, use_reentrant=False)
                return h
            if kind == "transformer_math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    return model(x)
            return model(x)

    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        run().square().mean().backward()

    def forward():
        return run().square().mean()

    return step, forward


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def _child(case: dict) -> dict:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    step, forward = _build(case)
    out: dict = {}
    if case["mode"] == "time":
        step()  # warm-up
        walls, cpus = [], []
        for _ in range(case["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out["wall_s"], out["cpu_s"] = min(walls), min(cpus)
    else:
        storages: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
        loss.backward()
        out["saved_bytes"] = sum(storages.values())
        del loss
        # Peak RSS growth of one clean forward + backward.
        try:
            Path("/proc/self/clear_refs").write_text("5")
            base = _rss_kib("VmRSS")
            step()
            out["peak_bytes"] = (_rss_kib("VmHWM") - base) * 1024
        except OSError:
            out["peak_bytes"] = None
    return out


# ---------------------------------------------------------------------------------------------- parent side
def _measure(case: dict, timeout: float) -> dict:
    env = dict(os.environ)
    if case["mode"] == "mem":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # fixed threshold: big blocks are mmapped and really freed
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(case)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": tail[0][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _both(case: dict, repeats: int, timeout: float) -> dict:
    res = _measure({**case, "mode": "time", "repeats": repeats}, timeout)
    res.update({k: v for k, v in _measure({**case, "mode": "mem"}, timeout).items() if k != "error" or "error" not in res})
    return res


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _ratio(a, b, fmt="{:.2f}x") -> str:
    return "-" if a is None or b is None or b == 0 else fmt.format(a / b)


def _get(res: dict, key: str):
    return None if "error" in res else res.get(key)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def part_a(lengths, batch, d_inner, d_state, repeats, timeout, threads) -> None:
    print(f"\n## (a) selective scan, B={batch}, d_inner={d_inner}, d_state={d_state}: ours vs plain per-step loop")
    rows = []
    for l in lengths:
        base = dict(batch=batch, d_inner=d_inner, d_state=d_state, length=l, threads=threads)
        loop = _both({**base, "kind": "scan_loop"}, repeats, timeout)
        ours = _both({**base, "kind": "scan_ours"}, repeats, timeout)
        for name, r in (("loop", loop), ("ours", ours)):
            if "error" in r:
                print(f"  L={l} {name}: {r['error']}")
        rows.append([
            str(l),
            f"{_get(loop, 'wall_s') or float('nan'):.3f}", f"{_get(ours, 'wall_s') or float('nan'):.3f}",
            _ratio(_get(loop, "wall_s"), _get(ours, "wall_s")),
            _ratio(_get(loop, "cpu_s"), _get(ours, "cpu_s")),
            f"{1e3 * (_get(ours, 'wall_s') or float('nan')) / l:.3f}",
            _mib(_get(loop, "saved_bytes")), _mib(_get(ours, "saved_bytes")),
            _ratio(_get(loop, "saved_bytes"), _get(ours, "saved_bytes")),
            _mib(_get(loop, "peak_bytes")), _mib(_get(ours, "peak_bytes")),
            _ratio(_get(loop, "peak_bytes"), _get(ours, "peak_bytes")),
        ])
    print(_table(
        ["L", "loop s", "ours s", "speed-up (wall)", "speed-up (cpu)", "ours ms/step",
         "loop saved MiB", "ours saved MiB", "saved ratio", "loop peak MiB", "ours peak MiB", "peak ratio"],
        rows,
    ))
    bdln = batch * d_inner * d_state * 4 / 2**20
    print(f"(one fp32 [B, d_inner, L, d_state] state tensor = {bdln:.3f} MiB per time step x L; "
          f"[B, d_inner, L] = {bdln / d_state:.4f} MiB x L)")


def _transformer_math_gib(l: int, depth: int, heads: int) -> float:
    # One saved softmax [heads, L, L] per layer plus ~3 live during one layer's forward/backward.
    return (depth + 3) * heads * l * l * 4 / 2**30


def part_b(lengths, d_model, depth, heads, repeats, timeout, max_gib, threads) -> None:
    print(f"\n## (b) BiMamba x{depth} vs nn.TransformerEncoder x{depth}, width {d_model}, batch 1, forward+backward")
    import torch
    from torch import nn

    from foundation.bimamba import BiMambaBlock

    n_bim = sum(p.numel() for p in nn.ModuleList(BiMambaBlock(d_model) for _ in range(depth)).parameters())
    layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True)
    n_tr = sum(p.numel() for p in nn.TransformerEncoder(layer, depth, enable_nested_tensor=False).parameters())
    print(f"parameters: BiMamba {n_bim:,}, Transformer {n_tr:,} (heads={heads}); torch {torch.__version__}")
    rows, skipped = [], []
    for l in lengths:
        base = dict(d_model=d_model, depth=depth, heads=heads, length=l, threads=threads)
        res = {
            "B": _both({**base, "kind": "bimamba"}, repeats, timeout),
            "B-rc": _both({**base, "kind": "bimamba", "recompute": "full"}, repeats, timeout),
            "Tr": _both({**base, "kind": "transformer"}, repeats, timeout),
            "Tr-ckpt": _both({**base, "kind": "transformer", "recompute": True}, repeats, timeout),
        }
        if _transformer_math_gib(l, depth, heads) > max_gib:
            res["Tr-math"] = {"error": "skipped"}
            skipped.append(f"L={l} (math attention needs ~{_transformer_math_gib(l, depth, heads):.0f} GiB)")
        else:
            res["Tr-math"] = _both({**base, "kind": "transformer_math"}, repeats, timeout)
        for name, r in res.items():
            if "error" in r and r["error"] != "skipped":
                print(f"  L={l} {name}: {r['error']}")
        wall = {k: _get(r, "wall_s") for k, r in res.items()}
        pk = {k: _get(r, "peak_bytes") for k, r in res.items()}
        rows.append(
            [str(l)]
            + [f"{wall[k] or float('nan'):.2f}" for k in res]
            + [_mib(pk[k]) for k in res]
            + [_ratio(pk["B"], pk["Tr"]), _ratio(pk["B-rc"], pk["Tr"]), _ratio(pk["B-rc"], pk["Tr-ckpt"]),
               _ratio(pk["B"], pk["Tr-math"]), _ratio(wall["B-rc"], wall["B"]), _ratio(wall["B"], wall["Tr"]),
               f"{(pk['B'] or float('nan')) / l / 1024:.1f}", f"{(pk['B-rc'] or float('nan')) / l / 1024:.1f}"]
        )
    names = ["B", "B-rc", "Tr", "Tr-ckpt", "Tr-math"]
    print(_table(
        ["L"] + [f"{k} s" for k in names] + [f"{k} MiB" for k in names]
        + ["mem B/Tr", "mem B-rc/Tr", "mem B-rc/Tr-ckpt", "mem B/Tr-math", "time B-rc/B", "time B/Tr",
           "B KiB/tok", "B-rc KiB/tok"],
        rows,
    ))
    if skipped:
        print(f"skipped (would not fit in --max-gib {max_gib:g}): " + ", ".join(skipped))
    print("s = forward+backward wall seconds; MiB = peak RSS growth. B = BiMamba (all activations kept); "
          "B-rc = BiMambaBlock(recompute='full'); Tr = PyTorch's default attention (fused flash kernel on CPU, "
          "memory linear in L); Tr-ckpt = Tr with each layer checkpointed (keeps only layer inputs, like B-rc); "
          "Tr-math = explicit L x L attention. Memory ratios < 1 favour BiMamba.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--part", choices=["a", "b", "all"], default="all")
    p.add_argument("--scan-lengths", type=int, nargs="+", default=None)
    p.add_argument("--model-lengths", type=int, nargs="+", default=None)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (minimum is reported)")
    p.add_argument("--max-gib", type=float, default=20.0, help="skip transformer sizes estimated above this")
    p.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1: on a shared machine a multi-threaded run is starved by its own spinning threads; 0 = torch default)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement subprocess")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    if args.quick:
        scan_lengths = args.scan_lengths or [256, 512]
        model_lengths = args.model_lengths or [256, 1024]
        d_model, depth, repeats = min(args.d_model, 64), min(args.depth, 2), args.repeats or 1
    else:
        scan_lengths = args.scan_lengths or [512, 2048, 8192]
        model_lengths = args.model_lengths or [256, 1024, 4096, 8192, 16384]
        d_model, depth, repeats = args.d_model, args.depth, args.repeats or 3
    import torch

    print(f"# backbone benchmark ({'quick' if args.quick else 'full'}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, threads={args.threads or torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
    if args.part in ("a", "all"):
        part_a(scan_lengths, 8, 256, 16, repeats, args.timeout, args.threads)
    if args.part in ("b", "all"):
        part_b(model_lengths, d_model, depth, args.heads, repeats, args.timeout, args.max_gib, args.threads)
    print(f"\nload avg at the end {os.getloadavg()[0]:.1f} (a busy shared machine inflates and scatters wall times)")


if __name__ == "__main__":
    main()
