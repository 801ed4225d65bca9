"""One command that measures the GPU path on one GPU (at most ~6 minutes), with a table and a JSON file.

A self-contained script, copied to a GPU machine and run in one call::

    python benchmarks/gpu.py --out benchmarks/results/gpu        # on a CUDA machine: gpu.json + gpu.md (the docs show it)
    python benchmarks/gpu.py --dry-run --out /tmp/gpu            # same code, tiny sizes, CPU (a test runs it)
    python benchmarks/gpu.py --dry-run --compiled-ops --parts e --out /tmp/gpu   # the CPU step overhead alone
    python benchmarks/gpu.py --out runs/gpu --readme NOTES.md    # also write the report between the markers of NOTES.md
    python benchmarks/gpu.py --from-md runs/gpu/gpu.md --readme NOTES.md   # a GPU run's report into NOTES.md

Parts (each one row group of the table and one key of ``gpu.json``; each stops adding rows when its share
of ``--budget-s`` is spent, and says so):

a. Which selective-scan backends run, the reverse-scan implementation the Triton kernels use on this
   Triton (``ssm_triton.reverse_scan_mode``), and each backend's agreement with the float64 sequential
   reference on one shape with D, z, delta_bias and softplus (max abs error of y and every gradient).
b. Scan forward + backward per shape: B=8, d=512, N=16, L=8k; the pretraining shape (256, 256, 16, 80); and
   batch 1, L=64k (the state-passing variant). Milliseconds from CUDA events (median of ``--reps`` >= 20,
   inputs prepared outside the timed region), the analytical bytes (every input read and every output written
   once per pass: ``4 (11 b d l + 6 b n l)`` in float32), achieved GB/s, % of the card's HBM peak and x the
   HBM roofline (time / (bytes / peak)); then a few launch configurations at the 8k shape (``ssm_triton.TUNING``).
c. BiMamba x8 vs a pre-norm SDPA transformer x4 of about the same size (d_model 256; flash attention in bf16),
   head dim 32 and 64, forward + backward time and peak memory from 2k to 64k tokens (batch 1), BiMamba with
   and without block recompute, with ratios.
d. Base EEGMamba pretraining (masked STFT, bf16 autocast, fused AdamW, clip 3) on the real loader over shards
   built at start, eager and then compiled (``compile_step``: one graph, CUDA graphs): samples/s, hours of
   EEG per GPU-second, MFU, operators and host syncs per step, device kernels per step and GPU-busy %
   (``benchmarks/step_overhead.py``), compile time, and the loader's own rate. FLOPs are the backbone's useful
   matrix products and scan (top-k + universal experts; ``train_flops_per_token``), x 3 for training, so MFU
   is a lower bound; peak 989 TFLOP/s dense bf16 for H100/H200 (SXM).
e. (``--dry-run``, CPU) The overhead of the pretraining step without a GPU: operators and host syncs per step of
   the base model (batch 8, 19 channels x 4 s, scan = one operator), eager (and compiled with
   ``--compiled-ops``, which compiles the base model on the CPU: minutes), and graph breaks of the masked-STFT
   and masked-token objectives under ``torch._dynamo.explain``. Counted with ``EEGFM_SYNC_FREE=1``, the code
   path a GPU runs (no CPU-only shortcuts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.report import write_block
from benchmarks.step_overhead import graph_breaks, profile_step
from foundation import ssm
from foundation.bimamba import BiMambaBlock
from foundation.model import EEGMambaConfig

README_BEGIN = "<!-- gpu-results:begin -->"
README_END = "<!-- gpu-results:end -->"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)
PEAK_HBM = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.04e12}  # bytes/s (SXM)
ROOT = Path(__file__).resolve().parents[1]
SCAN_SHAPES = (("8k", 8, 512, 16, 8192), ("pretraining", 256, 256, 16, 80), ("batch 1, 64k", 1, 512, 16, 65536))
DRY_SCAN_SHAPES = (("8k", 2, 16, 4, 64), ("pretraining", 8, 8, 4, 12), ("batch 1, 64k", 1, 8, 4, 96))
# Alternatives to the default (256 steps, 2 channels, 4 warps); all compile for sm_90 without spills
# (benchmarks/scan_compile.py), from 88 to 255 registers per thread.
TUNING_CHOICES = ({"time_block": 256, "block_d": 1, "warps": 2}, {"time_block": 512, "block_d": 1, "warps": 4},
                  {"time_block": 128, "block_d": 4, "warps": 4})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else "CPU"


def _peak(table: dict[str, float], device: torch.device) -> float | None:
    return next((v for k, v in table.items() if k in card(device)), None)


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()``: CUDA events around each call on a GPU, the wall clock on a CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def peak_gib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def runnable_backends(device: torch.device) -> dict[str, str]:
    """Backend -> "runs" or why not, for tensors on ``device``."""
    probe = torch.zeros(1, 1, 1, device=device)
    out = {}
    for name in ("mamba_ssm", "triton", "torch", "ref"):
        try:
            ssm.selective_scan_backend(probe, name)
            out[name] = "runs"
        except RuntimeError as err:
            out[name] = f"no: {err}".split(" (")[0]
    return out


def scan_inputs(b, d, n, l, device, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return dict(
        u=r(b, d, l), delta=r(b, d, l) * 0.5 - 1.0, A=-torch.rand(d, n, generator=g).add(0.5).to(device),
        B=r(b, n, l), C=r(b, n, l), D=torch.randn(d, generator=g).to(device), z=r(b, d, l),
        delta_bias=(0.1 * torch.randn(d, generator=g)).to(device),
    )


def scan_bytes(b: int, d: int, n: int, l: int) -> int:
    """Float32 bytes a fused scan must move, forward + backward: forward reads u, delta, z, B, C and writes y;
    backward reads u, delta, z, dy, B, C and writes du, d delta, dz, dB, dC."""
    return 4 * (11 * b * d * l + 6 * b * n * l)


def _scan_step(t: dict, backend: str, grads: bool = True):
    leaves = {k: v.detach().clone().requires_grad_(grads) for k, v in t.items()}
    y = ssm.selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                           z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True, backend=backend)
    return y, leaves


def part_a(device, backends, dry) -> dict:
    """Agreement of every runnable backend with the float64 reference."""
    b, d, n, l = (2, 8, 4, 33) if dry else (2, 64, 16, 2049)
    t = scan_inputs(b, d, n, l, device)
    gy = torch.randn(b, d, l, generator=torch.Generator().manual_seed(1)).to(device)
    y_ref, leaves_ref = _scan_step({k: v.double() for k, v in t.items()}, "ref")
    (y_ref * gy.double()).sum().backward()
    rows = []
    for name, status in backends.items():
        if name == "ref" or status != "runs" or (name == "triton" and device.type != "cuda"):
            continue
        y, leaves = _scan_step(t, name)
        (y.float() * gy).sum().backward()
        row = {"backend": name, "y": (y.double() - y_ref).abs().max().item()}
        for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
            row["d" + k] = (leaves[k].grad.double() - leaves_ref[k].grad).abs().max().item()
        row["grad_scale"] = max(v.grad.abs().max().item() for v in leaves_ref.values())
        rows.append(row)
    mode = None
    if backends.get("triton") == "runs" and device.type == "cuda":
        from foundation import ssm_triton

        mode = ssm_triton.reverse_scan_mode()
    return {"shape": dict(b=b, d=d, n=n, l=l), "rows": rows, "reverse_scan": mode}


def _scan_row(t: dict, gy: torch.Tensor, backend: str, device, reps: int, shape: tuple) -> dict:
    """Forward + backward (and forward alone) ms of one backend on prepared inputs, and the bandwidth figures."""
    b, d, n, l = shape
    fwd = median_ms(lambda: _scan_step(t, backend, grads=False), device, reps)
    both = median_ms(lambda: _scan_step(t, backend)[0].backward(gy), device, reps)
    row: dict[str, Any] = {"ms": both, "fwd_ms": fwd, "GBps": scan_bytes(b, d, n, l) / (both * 1e-3) / 1e9,
                           "peak_GiB": peak_gib(lambda: _scan_step(t, backend)[0].backward(gy), device)}
    hbm = _peak(PEAK_HBM, device)
    if hbm:
        roofline = scan_bytes(b, d, n, l) / hbm * 1e3
        row.update(pct_peak=100 * row["GBps"] * 1e9 / hbm, x_roofline=both / roofline, roofline_ms=roofline)
    return row


def part_b(device, backends, dry, deadline, reps) -> dict:
    """Scan forward + backward per shape and backend, then launch configurations of the Triton kernels at 8k."""
    names = ([k for k in ("triton", "mamba_ssm") if backends.get(k) == "runs"] if device.type == "cuda"
             else ["torch"])  # the chunked torch scan launches thousands of kernels per call on a GPU
    rows = []
    for label, *shape in (DRY_SCAN_SHAPES if dry else SCAN_SHAPES):
        b, d, n, l = shape
        row: dict[str, Any] = {"shape": label, "b": b, "d": d, "n": n, "l": l, "bytes": scan_bytes(b, d, n, l)}
        t = scan_inputs(b, d, n, l, device)
        gy = torch.randn(b, d, l, device=device)
        for name in names:
            if time.perf_counter() > deadline:
                row[name] = "skipped: time budget"
                continue
            try:
                row[name] = _scan_row(t, gy, name, device, reps, (b, d, n, l))
            except torch.cuda.OutOfMemoryError:
                row[name] = "out of memory"
        del t, gy
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        log(f"b: {row}")
    tuning = tuning_sweep(device, deadline, reps) if "triton" in names else []
    return {"rows": rows, "tuning": tuning}


def tuning_sweep(device, deadline, reps) -> list[dict]:
    """Triton forward + backward ms at (8, 512, 16, 8k) for a few launch configurations (``ssm_triton.TUNING``;
    each one compiles its kernels, ~10-30 s): data for choosing the defaults."""
    from foundation import ssm_triton

    label, b, d, n, l = SCAN_SHAPES[0]
    t = scan_inputs(b, d, n, l, device)
    gy = torch.randn(b, d, l, device=device)
    rows = []
    for choice in TUNING_CHOICES:
        if time.perf_counter() > deadline:
            rows.append({**choice, "ms": "skipped: time budget"})
            continue
        ssm_triton.TUNING.update(choice)
        try:
            ms = median_ms(lambda: _scan_step(t, "triton")[0].backward(gy), device, reps)
            rows.append({**choice, "ms": ms, "x_roofline": ms / (scan_bytes(b, d, n, l) / _peak(PEAK_HBM, device) * 1e3)
                         if _peak(PEAK_HBM, device) else None})
        except Exception as err:  # noqa: BLE001 -- a configuration that does not compile is a result too
            rows.append({**choice, "ms": f"failed: {type(err).__name__}"})
        finally:
            ssm_triton.TUNING.update(time_block=None, block_d=None, warps=None)
    log(f"b: tuning {rows}")
    return rows


def _transformer(d: int, depth: int, heads: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def part_c(device, dry, deadline, reps) -> dict:
    """BiMamba x8 (with and without block recompute) vs SDPA transformers x4 (head dim 32 and 64): fwd+bwd."""
    d = 32 if dry else 256
    mamba_depth, tf_depth = (2, 1) if dry else (8, 4)
    lengths = (128, 256) if dry else (2048, 4096, 8192, 16384, 32768, 65536)
    bimamba = nn.Sequential(*[BiMambaBlock(d) for _ in range(mamba_depth)]).to(device)
    models = {"bimamba": (bimamba, False), "bimamba_recompute": (bimamba, "block"),
              "sdpa_hd32": (_transformer(d, tf_depth, d // 32).to(device), None),
              "sdpa_hd64": (_transformer(d, tf_depth, max(1, d // 64)).to(device), None)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for l in lengths:
        row: dict[str, Any] = {"tokens": l}
        x = torch.randn(1, l, d, device=device)
        for name, (model, recompute) in models.items():
            if time.perf_counter() > deadline:
                row[name] = "skipped: time budget"
                continue
            if recompute is not None:
                for block in model:
                    block.recompute = recompute

            def step(model=model):
                with autocast:
                    out = model(x)
                out.float().square().mean().backward()

            try:
                row[name] = {"ms": median_ms(step, device, 1 if dry else reps), "peak_GiB": peak_gib(step, device)}
            except torch.cuda.OutOfMemoryError:
                row[name] = "out of memory"
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        log(f"c: {row}")
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, (m, _) in models.items()}
    return {"d_model": d, "depth": {"bimamba": mamba_depth, "transformer": tf_depth}, "params_M": params, "rows": rows}


def train_flops_per_token(cfg: EEGMambaConfig) -> float:
    """Training FLOPs per token of the backbone's blocks (see the module docstring): 3 x forward."""
    d, di, n = cfg.d_model, cfg.expand * cfg.d_model, cfg.d_state
    r = math.ceil(d / 16)
    hidden = cfg.moe_hidden or 2 * d
    mamba = 2 * d * 2 * di + 2 * di * d  # in_proj, out_proj
    mamba += 2 * (2 * di * cfg.d_conv + 2 * di * (r + 2 * n) + 2 * r * di + 7 * di * n)  # per direction
    moe = (cfg.top_k + 1) * 2 * (2 * d * hidden) + 2 * (d + (cfg.task_dim or d)) * cfg.n_experts
    return 3.0 * cfg.n_layers * (mamba + moe)


def build_shards(folder: Path, dry: bool) -> str:
    """Simulated corpus -> WebDataset shards with the suite's own CLI; returns the shard spec."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subjects, dur, per_shard = (2, 40, 16) if dry else (8, 120, 50)
    cmds = [
        [sys.executable, "-m", "shards", "synth", str(folder / "raw"), "--subjects", str(subjects),
         "--duration-s", str(dur)],
        [sys.executable, "-m", "shards", "build", "synth", "--root", str(folder / "raw"), "--out",
         str(folder / "shards"), "--max-samples-per-shard", str(per_shard), "--workers", "1" if dry else "8",
         "--split", "1,0,0", "--quiet"],
    ]
    for cmd in cmds:
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return str(folder / "shards" / "synth")


def _pretrain_row(device, stream, size: str, crop_s: float, seconds: float, compiled: bool, dry: bool) -> dict:
    """One pretraining loop (eager or compiled): rates, overhead per step, compile time, peak memory."""
    from pretrain.data import batch_tokens, to_device
    from runtime.engine import param_groups
    from pretrain.objectives import MaskedSTFTObjective, build_backbone

    torch.manual_seed(0)
    obj = MaskedSTFTObjective(build_backbone(size, {}, int(crop_s))).to(device).train()
    if compiled:
        obj.compile_step(mode="reduce-overhead" if device.type == "cuda" else None, channel_bucket=8)
    opt = torch.optim.AdamW(param_groups(obj, 0.05), lr=1e-4, betas=(0.9, 0.98), fused=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    it = stream()

    def step() -> dict:
        batch = to_device(next(it), device)
        with autocast:
            loss = obj(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(obj.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch

    t0 = time.perf_counter()
    for _ in range(2 if dry else 5):  # warm-up: compilation, allocator, loader workers
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s, t0 = time.perf_counter() - t0, time.perf_counter()
    steps = samples = tokens = 0
    while steps < 3 if dry else time.perf_counter() - t0 < seconds:
        batch = step()
        steps, samples, tokens = steps + 1, samples + batch["x"].shape[0], tokens + batch_tokens(batch, 200)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    row = {"steps": steps, "seconds": elapsed, "warmup_s": warm_s, "samples_per_s": samples / elapsed,
           "tokens_per_s": tokens / elapsed, "eeg_hours_per_gpu_s": samples / elapsed * crop_s / 3600,
           "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
           **profile_step(step, device, steps=2)}
    flops = train_flops_per_token(obj.backbone.config) * row["tokens_per_s"]
    peak = _peak(PEAK_BF16, device)
    row.update(model_TFLOPs=flops / 1e12, mfu=flops / peak if peak else None,
               params_M=sum(p.numel() for p in obj.backbone.parameters()) / 1e6)
    return row


def part_d(device, dry, workdir: Path, args, deadline) -> dict:
    """Base EEGMamba pretraining on the real loader, eager then compiled; the loader alone."""
    from pretrain.config import DataConfig
    from pretrain.data import corpus_specs, make_batch_stream, resolve_corpora

    start = time.perf_counter()
    spec = build_shards(workdir, dry)
    build_s = time.perf_counter() - start
    crop_s, workers = 4.0, 0 if dry else 4
    batch_size = 4 if dry else args.batch_size
    data = DataConfig(shards=spec, batch_size=batch_size, crop_s=crop_s, num_workers=workers,
                      shuffle_buffer=64 if dry else 1000, epoch_steps=10**6)
    corpora = resolve_corpora(corpus_specs(data))

    def stream():
        return make_batch_stream(data, corpora, patch_size=200, sfreq=200.0, seed=0, grad_accum=1,
                                 world_size=1).batches(0)

    size = "tiny" if dry else "base"
    out: dict[str, Any] = {"size": size, "batch": batch_size, "crop_s": crop_s, "loader_workers": workers,
                           "shard_build_s": build_s, "precision": "bf16 autocast" if device.type == "cuda" else "float32"}
    out["eager"] = _pretrain_row(device, stream, size, crop_s, args.train_s, False, dry)
    log(f"d: eager {out['eager']}")
    it = stream()
    for _ in range(3):
        next(it)
    n_load, t1 = (3 if dry else 60), time.perf_counter()
    for _ in range(n_load):
        next(it)
    out["loader_samples_per_s"] = n_load * batch_size / (time.perf_counter() - t1)
    if dry and not args.compiled_ops:
        out["compiled"] = "skipped: --dry-run (compiling on a CPU takes minutes; --compiled-ops runs it)"
    elif time.perf_counter() > deadline:
        out["compiled"] = "skipped: time budget"
    else:
        out["compiled"] = _pretrain_row(device, stream, size, crop_s, args.train_s, True, dry)
        log(f"d: compiled {out['compiled']}")
    out["params_M"] = out["eager"]["params_M"]
    out["scan_backend"] = ssm.selective_scan_backend(torch.zeros(1, 1, 1, device=device))
    return out


def part_e(compiled_ops: bool) -> dict:
    """(CPU) Operators and host syncs per step of base pretraining, and graph breaks of both objectives, on the
    code path a GPU runs (EEGFM_SYNC_FREE=1)."""
    from pretrain.objectives import MaskedSTFTObjective, MaskedTokenObjective, build_backbone
    from tokenizer.vqnsp import VQNSP, VQNSPConfig

    os.environ["EEGFM_SYNC_FREE"] = "1"
    try:
        b, c, t = 8, 19, 800
        batch = {"x": torch.randn(b, c, t, generator=torch.Generator().manual_seed(0)),
                 "channel_ids": torch.arange(c).repeat(b, 1), "channel_mask": torch.ones(b, c, dtype=torch.bool)}
        out: dict[str, Any] = {"shape": "base, batch 8, 19 channels x 4 s"}
        for label, compiled in (("eager", False), ("compiled", True)):
            if compiled and not compiled_ops:
                out[label] = "skipped (--compiled-ops)"
                continue
            torch.manual_seed(0)
            obj = MaskedSTFTObjective(build_backbone("base", {}, 4)).train()
            if compiled:
                import torch._inductor.config as inductor_config

                inductor_config.cpp.enable_kernel_profile = True  # count the compiled kernels as operators
                obj.compile_step(channel_bucket=1)

            def step(obj=obj):
                obj(batch)["loss"].backward()
                obj.zero_grad(set_to_none=True)

            t0 = time.perf_counter()
            step()
            out[label] = {**profile_step(step, torch.device("cpu")), "first_step_s": time.perf_counter() - t0}
            log(f"e: {label} {out[label]}")
        tiny = lambda: build_backbone("tiny", {}, 4)  # noqa: E731
        objectives = {"masked_stft": MaskedSTFTObjective(tiny()),
                      "masked_token": MaskedTokenObjective(tiny(), VQNSP(VQNSPConfig.from_size("tiny", kmeans_init=False)))}
        out["graph_breaks"] = {name: graph_breaks(obj.train(), batch) for name, obj in objectives.items()}
        log(f"e: graph breaks {out['graph_breaks']}")
        return out
    finally:
        del os.environ["EEGFM_SYNC_FREE"]


def _fmt(v: Any, key: str, fmt: str) -> str:
    if isinstance(v, dict) and v.get(key) is not None:
        return fmt.format(v[key])
    return v if isinstance(v, str) else "-"


def _ratio(a: Any, b: Any, key: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict) and a.get(key) and b.get(key):
        return f"{a[key] / b[key]:.2f}x"
    return "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]


TITLES = {"a": "a. Scan backends", "b": "b. Scan forward + backward", "c": "c. BiMamba vs SDPA transformer",
          "d": "d. Pretraining", "e": "e. Step overhead on the CPU"}


def render(res: dict) -> str:
    """The report as markdown (printed, written to gpu.md and, with --readme, into the README block)."""
    env = res["env"]
    out = [f"# GPU benchmark (`benchmarks/gpu.py`{' --dry-run' if env['dry_run'] else ''})", "",
           f"{env['device']}; torch {env['torch']}, triton {env['triton']}; {res.get('total_s', 0):.0f} s in all."]
    for key, fn in (("a", _render_a), ("b", _render_b), ("c", _render_c), ("d", _render_d), ("e", _render_e)):
        part = res.get(key)
        if isinstance(part, dict) and "error" in part:
            out += ["", f"## {TITLES[key]}", "", f"Failed: `{part['error']}`"]
        elif part:
            out += fn(part, res)
    return "\n".join(out) + "\n"


def _render_a(a: dict, res: dict) -> list[str]:
    out = ["", "## a. Scan backends and agreement with the float64 reference", ""]
    out += [f"- `{k}`: {v}" for k, v in a["backends"].items()]
    if a.get("reverse_scan"):
        out.append(f"- Triton reverse scan in registers: `{a['reverse_scan']}`")
    keys = ["y", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]
    scale = max((r["grad_scale"] for r in a["rows"]), default=0)
    out += ["", f"Max abs error at {a['shape']} (gradient scale {scale:.3g}):", ""]
    out += _table(["backend"] + keys, [[r["backend"]] + [f"{r[k]:.1e}" for k in keys] for r in a["rows"]])
    return out


def _render_b(b: dict, res: dict) -> list[str]:
    names = [k for k in ("triton", "mamba_ssm", "torch") if any(k in r for r in b["rows"])]
    out = ["", "## b. Scan forward + backward (float32, D / z / delta_bias / softplus)", ""]
    heads = ["shape (b, d, n, L)", "MB moved"]
    for k in names:
        heads += [f"{k} fwd+bwd ms", f"{k} fwd ms", f"{k} GB/s", f"{k} % HBM peak", f"{k} x roofline"]
    rows = []
    for r in b["rows"]:
        cells = [f"{r['shape']} ({r['b']}, {r['d']}, {r['n']}, {r['l']})", f"{r['bytes'] / 1e6:.0f}"]
        for k in names:
            v = r.get(k)
            cells += [_fmt(v, "ms", "{:.3f}"), _fmt(v, "fwd_ms", "{:.3f}"), _fmt(v, "GBps", "{:.0f}"),
                      _fmt(v, "pct_peak", "{:.0f} %"), _fmt(v, "x_roofline", "{:.1f}x")]
        rows.append(cells)
    out += _table(heads, rows)
    if b.get("tuning"):
        out += ["", "Triton launch configurations at the 8k shape (time block x channels per program x warps: fwd+bwd ms): "
                + ", ".join(f"{t['time_block']} x {t['block_d']} x {t['warps']}: "
                            + (f"{t['ms']:.3f}" if isinstance(t["ms"], float) else t["ms"]) for t in b["tuning"])]
    return out


def _render_c(c: dict, res: dict) -> list[str]:
    p = c["params_M"]
    out = ["", f"## c. BiMamba x{c['depth']['bimamba']} ({p['bimamba']:.2f} M) vs SDPA transformer "
           f"x{c['depth']['transformer']} ({p['sdpa_hd32']:.2f} M), d_model {c['d_model']}, batch 1, "
           f"{'bf16' if res['env']['device'] != 'CPU' else 'float32'}, forward + backward", ""]
    models = ("bimamba", "bimamba_recompute", "sdpa_hd32", "sdpa_hd64")
    heads = ["tokens"] + [f"{m} ms" for m in models] + [f"{m} GiB" for m in models] + [
        "time hd32 / bm", "time hd64 / bm", "memory bm-rc / hd32", "memory bm-rc / hd64"]
    rows = [[str(r["tokens"])] + [_fmt(r.get(m), "ms", "{:.1f}") for m in models]
            + [_fmt(r.get(m), "peak_GiB", "{:.2f}") for m in models]
            + [_ratio(r.get("sdpa_hd32"), r.get("bimamba"), "ms"), _ratio(r.get("sdpa_hd64"), r.get("bimamba"), "ms"),
               _ratio(r.get("bimamba_recompute"), r.get("sdpa_hd32"), "peak_GiB"),
               _ratio(r.get("bimamba_recompute"), r.get("sdpa_hd64"), "peak_GiB")] for r in c["rows"]]
    return out + _table(heads, rows)


def _render_d(d: dict, res: dict) -> list[str]:
    out = ["", f"## d. Pretraining, EEGMamba-{d['size']} ({d['params_M']:.2f} M), masked STFT, {d['precision']}, batch "
           f"{d['batch']} x {d['crop_s']:g} s, scan backend `{d['scan_backend']}`", ""]
    heads = ["mode", "samples/s", "h EEG / GPU-s", "MFU", "ops / step", "host syncs / step", "GPU kernels / step",
             "GPU busy", "peak GiB", "warm-up s"]
    rows = []
    for mode in ("eager", "compiled"):
        r = d.get(mode)
        if not isinstance(r, dict):
            rows.append([mode, str(r)] + ["-"] * (len(heads) - 2))
            continue
        rows.append([mode, f"{r['samples_per_s']:.0f}", f"{r['eeg_hours_per_gpu_s']:.2f}",
                     f"{100 * r['mfu']:.2f} %" if r.get("mfu") is not None else "-", f"{r['ops']:.0f}",
                     f"{r['syncs']:.0f}", _fmt(r, "kernels", "{:.0f}"), _fmt(r, "gpu_busy", "{:.0%}"),
                     _fmt(r, "peak_GiB", "{:.2f}"), f"{r['warmup_s']:.0f}"])
    out += _table(heads, rows)
    out += ["", f"Loader alone: {d['loader_samples_per_s']:.0f} samples/s with {d['loader_workers']} workers; shards "
            f"built in {d['shard_build_s']:.0f} s. Warm-up = the first steps (compilation included)."]
    return out


def _render_e(e: dict, res: dict) -> list[str]:
    out = ["", f"## e. Step overhead on the CPU ({e['shape']}; scan and mask tail = one operator each; "
           "the code path a GPU runs)", ""]
    rows = [[mode, _fmt(e.get(mode), "ops", "{:.0f}"), _fmt(e.get(mode), "syncs", "{:.0f}")] for mode in ("eager", "compiled")]
    out += _table(["mode", "operators / step", "host syncs / step"], rows)
    out += ["", "Graph breaks under `torch._dynamo.explain` (tiny model): "
            + ", ".join(f"{k}: {v['breaks']} ({v['graphs']} graph{'s' if v['graphs'] != 1 else ''})"
                        for k, v in e["graph_breaks"].items())]
    for mode in ("eager", "compiled"):
        if isinstance(e.get(mode), dict) and e[mode].get("top_ops"):
            out += ["", f"Most frequent operators per step, {mode}: "
                    + ", ".join(f"`{name}` {n:.0f}" for name, n in e[mode]["top_ops"])]
    return out


def update_readme(readme: Path, report: str) -> None:
    """Replace the README's block between the gpu-results markers with ``report`` (headings one level down)."""
    write_block(readme, report, README_BEGIN, README_END, demote="##")
    log(f"updated the GPU block of {readme}")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for gpu.json and gpu.md (required unless --from-md)")
    p.add_argument("--readme", type=Path, default=None, help=f"also write the report between {README_BEGIN} / {README_END}")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the code, not the speed)")
    p.add_argument("--from-md", type=Path, default=None, metavar="GPU_MD",
                   help="write an earlier run's gpu.md into --readme and exit (figures measured elsewhere)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; parts skip rows past their share")
    p.add_argument("--train-s", type=float, default=25.0, help="timed seconds of each pretraining loop in part d")
    p.add_argument("--batch-size", type=int, default=256, help="pretraining batch in part d (base.toml: 64 per GPU)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per scan measurement (median)")
    p.add_argument("--compiled-ops", action="store_true",
                   help="--dry-run: also compile the pretraining step on the CPU (parts d and e; takes minutes)")
    p.add_argument("--parts", default="abcde", type=_parts,
                   help="which parts to run, e.g. 'e' for the CPU step overhead alone (default: all; e needs --dry-run)")
    return p.parse_args(argv)


def _parts(text: str) -> str:
    if not text or set(text) - set(TITLES):
        raise argparse.ArgumentTypeError(f"--parts takes letters of {''.join(TITLES)}, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.from_md is not None:
        if args.readme is None:
            raise SystemExit("benchmarks/gpu.py: --from-md needs --readme")
        update_readme(args.readme, args.from_md.read_text())
        return 0
    if args.out is None:
        raise SystemExit("benchmarks/gpu.py: --out is required")
    t_start = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device; use --dry-run to check the code on CPU")
    else:
        device = torch.device("cuda")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    res: dict[str, Any] = {"env": {"device": card(device), "torch": torch.__version__, "triton": triton_version,
                                   "dry_run": args.dry_run, "scan_backend_env": os.environ.get(ssm.SCAN_BACKEND_ENV)}}
    backends = runnable_backends(device)
    log(f"backends: {backends}")
    args.out.mkdir(parents=True, exist_ok=True)
    budget, reps = args.budget_s, (3 if args.dry_run else max(20, args.reps))

    def part(key: str, fn: Callable[[], dict]) -> None:
        # One part failing (a kernel that does not compile, an out-of-memory) must not lose the others:
        # its error goes into the table and gpu.json is rewritten after every part.
        try:
            res[key] = fn()
        except Exception as err:  # noqa: BLE001 -- reported, never swallowed
            log(f"{key}: FAILED {type(err).__name__}: {err}")
            res[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        (args.out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))

    wanted = set(args.parts)
    if "a" in wanted:
        part("a", lambda: {"backends": backends, **part_a(device, backends, args.dry_run)})
    if "b" in wanted:
        part("b", lambda: part_b(device, backends, args.dry_run, t_start + 0.35 * budget, reps))
    if "c" in wanted:
        part("c", lambda: part_c(device, args.dry_run, t_start + 0.55 * budget, max(3, reps // 4)))
    if "d" in wanted:
        with tempfile.TemporaryDirectory(prefix="eegfm-gpu-") as tmp:
            part("d", lambda: part_d(device, args.dry_run, Path(tmp), args, t_start + 0.7 * budget))
    if args.dry_run and "e" in wanted:
        part("e", lambda: part_e(args.compiled_ops))
    res["total_s"] = time.perf_counter() - t_start
    report = render(res)
    print(report)
    (args.out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))
    (args.out / "gpu.md").write_text(report)
    if args.readme is not None:
        update_readme(args.readme, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
