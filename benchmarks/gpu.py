"""One command that proves the GPU path on one GPU (at most ~6 minutes), with a table and a JSON file.

A self-contained script, copied to a GPU machine and run in one call::

    python benchmarks/gpu.py --out benchmarks/results/gpu        # on a CUDA machine: gpu.json + gpu.md (the docs show it)
    python benchmarks/gpu.py --dry-run --out /tmp/gpu            # same code, tiny sizes, CPU (a test runs it)
    python benchmarks/gpu.py --out runs/gpu --readme NOTES.md    # also write the report between the markers of NOTES.md
    python benchmarks/gpu.py --from-md runs/gpu/gpu.md --readme NOTES.md   # a GPU run's report into NOTES.md

Parts (each one row group of the table and one key of ``gpu.json``):

a. Which selective-scan backends import, and their agreement with the float64 sequential reference
   (``selective_scan_ref``) on one shape with D, z, delta_bias and softplus: max abs error of y and of every
   gradient (loss = sum(y * random cotangent)).
b. Scan forward + backward time and peak memory at B=8, d_inner=512, N=16, L = 2k / 8k / 32k / 128k per
   backend (float32 inputs, as mamba-ssm's own benchmark), with ratios to the Triton kernel in the same run.
   The chunked torch scan launches thousands of small kernels per call on a GPU, so it only runs up to
   ``--torch-max-len``; longer rows say "skipped".
c. A base-size EEGMamba pretraining loop (masked-STFT objective, bf16 autocast, AdamW, clip 3) fed by the
   real loader (``pretrain.data`` stream over shards built at start with ``python -m shards synth`` +
   ``build``) for about two minutes: samples/s, tokens/s, hours of EEG per GPU-second, peak memory, the
   loader's own rate (same stream, no model), and MFU. FLOPs are counted analytically
   (:func:`train_flops_per_token`): the backbone's matrix products (2 FLOPs per multiply-add: in/out/x/dt
   projections, depthwise conv, top-k + universal MoE experts and gate) plus the scan (7 FLOPs per state
   element and direction: dt*A, exp, the two-term state update and C.h), forward x 3 for training
   (backward = 2 x forward); the adapter, STFT corruption and head are left out, so MFU is a lower bound.
   Peak: 989 TFLOP/s dense bf16 for H100/H200 (SXM), else MFU is not given.
d. BiMamba backbone vs a transformer of about the same parameter count (pre-norm encoder layers whose
   attention is PyTorch SDPA: flash attention in bf16 on CUDA): forward + backward time and peak memory at
   2k .. 64k tokens (batch 1, bf16 autocast), with ratios.

Every part stops adding rows when its share of ``--budget-s`` is spent, and says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.report import write_block
from foundation import ssm
from foundation.bimamba import BiMambaBlock
from foundation.model import EEGMambaConfig

README_BEGIN = "<!-- gpu-results:begin -->"
README_END = "<!-- gpu-results:end -->"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Clock:
    """Wall-clock time per call with device syncs, and peak allocated memory (CUDA only)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float | None]:
        for _ in range(warmup):
            fn()
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        sec = (time.perf_counter() - start) / repeats
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None
        return sec, peak


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
        if name == "ref" or status != "runs":
            continue
        y, leaves = _scan_step(t, name)
        (y.float() * gy).sum().backward()
        row = {"backend": name, "y": (y.double() - y_ref).abs().max().item()}
        for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
            row["d" + k] = (leaves[k].grad.double() - leaves_ref[k].grad).abs().max().item()
        row["grad_scale"] = max(v.grad.abs().max().item() for v in leaves_ref.values())
        rows.append(row)
    return {"shape": dict(b=b, d=d, n=n, l=l), "rows": rows}


def part_b(device, backends, clock, dry, deadline, torch_max_len) -> dict:
    """Scan fwd+bwd time and peak memory per backend and length."""
    b, d, n = (2, 16, 4) if dry else (8, 512, 16)
    lengths = (64, 256) if dry else (2048, 8192, 32768, 131072)
    # Timing Triton's CPU interpreter (dry run with TRITON_INTERPRET=1) would measure nothing and take long.
    names = [k for k in ("triton", "mamba_ssm", "torch") if backends.get(k) == "runs" and (k != "triton" or device.type == "cuda")]
    rows = []
    for l in lengths:
        row: dict[str, Any] = {"L": l}
        t = scan_inputs(b, d, n, l, device)
        gy = torch.randn(b, d, l, device=device)
        for name in names:
            if name == "torch" and l > torch_max_len:
                row[name] = "skipped: > --torch-max-len"
                continue
            if time.perf_counter() > deadline:
                row[name] = "skipped: time budget"
                continue

            def step(name=name):
                y, _ = _scan_step(t, name)
                y.backward(gy)

            repeats = 1 if name == "torch" or l >= 32768 else 3
            try:
                sec, peak = clock.measure(step, repeats)
                row[name] = {"ms": 1e3 * sec, "peak_GiB": peak}
            except torch.cuda.OutOfMemoryError:
                row[name] = "out of memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del t, gy
        rows.append(row)
        log(f"b: L={l} {row}")
    return {"shape": dict(b=b, d_inner=d, n=n), "rows": rows,
            "tuning": tuning_sweep(device, clock, b, d, n, deadline) if "triton" in names else []}


def tuning_sweep(device, clock, b, d, n, deadline, l=8192) -> list[dict]:
    """Triton fwd+bwd ms at L=8k for a few channels-per-program choices: data for the next tuning."""
    from foundation import ssm_triton

    t = scan_inputs(b, d, n, l, device)
    gy = torch.randn(b, d, l, device=device)
    rows = []
    # Each new block size costs a kernel compilation (~10-30 s for the backward kernel), hence only two.
    for block_d, unroll in ((None, None), (2, None), (16, None)):
        if time.perf_counter() > deadline:
            rows.append({"block_d": block_d, "unroll": unroll, "ms": "skipped: time budget"})
            continue
        ssm_triton.TUNING.update(block_d=block_d, unroll=unroll)
        try:
            sec, _ = clock.measure(lambda: _scan_step(t, "triton")[0].backward(gy), 3)
            rows.append({"block_d": block_d or "auto", "unroll": unroll or ssm_triton.UNROLL, "ms": 1e3 * sec})
        finally:
            ssm_triton.TUNING.update(block_d=None, unroll=None)
    log(f"b: tuning {rows}")
    return rows


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


def part_c(device, clock, dry, seconds, workdir: Path, batch_size: int) -> dict:
    """Base EEGMamba pretraining throughput on the real loader, and the loader alone."""
    from pretrain.config import DataConfig
    from pretrain.data import batch_tokens, corpus_specs, make_batch_stream, resolve_corpora, to_device
    from pretrain.objectives import MaskedSTFTObjective, build_backbone

    start = time.perf_counter()
    spec = build_shards(workdir, dry)
    build_s = time.perf_counter() - start
    crop_s, workers = 4.0, 0 if dry else 4
    data = DataConfig(shards=spec, batch_size=batch_size, crop_s=crop_s, num_workers=workers,
                      shuffle_buffer=64 if dry else 1000, epoch_steps=10**6)
    corpora = resolve_corpora(corpus_specs(data))

    def stream():
        return make_batch_stream(data, corpora, patch_size=200, sfreq=200.0, seed=0, grad_accum=1,
                                 world_size=1).batches(0)

    size = "tiny" if dry else "base"
    torch.manual_seed(0)
    backbone = build_backbone(size, {}, int(crop_s))
    obj = MaskedSTFTObjective(backbone).to(device).train()
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    it = stream()

    def step() -> dict:
        batch = to_device(next(it), device)
        with autocast:
            loss = obj(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(obj.parameters(), 3.0)
        opt.step()
        return batch

    for _ in range(2 if dry else 5):  # warm-up: kernel compilation, allocator, loader workers
        step()
    clock.sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    steps = samples = tokens = 0
    while steps < 3 if dry else time.perf_counter() - t0 < seconds:
        batch = step()
        steps += 1
        samples += batch["x"].shape[0]
        tokens += batch_tokens(batch, 200)
    clock.sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    # The loader alone: same stream settings, no model.
    it2 = stream()
    for _ in range(3):
        next(it2)
    n_load, t1 = (3 if dry else 60), time.perf_counter()
    for _ in range(n_load):
        next(it2)
    loader_sps = n_load * batch_size / (time.perf_counter() - t1)
    sps, tps = samples / elapsed, tokens / elapsed
    flops = train_flops_per_token(backbone.config) * tps
    peak_flops = next((v for k, v in PEAK_BF16.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    return {
        "size": size, "params_M": sum(p.numel() for p in backbone.parameters()) / 1e6, "batch": batch_size,
        "crop_s": crop_s, "loader_workers": workers, "shard_build_s": build_s, "steps": steps, "seconds": elapsed,
        "samples_per_s": sps, "tokens_per_s": tps, "eeg_hours_per_gpu_s": sps * crop_s / 3600,
        "peak_GiB": peak, "loader_samples_per_s": loader_sps, "loader_over_model": loader_sps / sps,
        "model_TFLOPs": flops / 1e12, "mfu": flops / peak_flops if peak_flops else None,
        "scan_backend": ssm.selective_scan_backend(torch.zeros(1, 1, 1, device=device)),
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
    }


def _transformer(d: int, depth: int, heads: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def part_d(device, clock, dry, deadline) -> dict:
    """BiMamba stack vs an SDPA transformer of about the same size: fwd+bwd time and peak memory."""
    d, heads = (32, 4) if dry else (256, 8)
    # A BiMamba block (expand 2) holds ~6 d^2 weights, a transformer layer ~12 d^2: twice the depth.
    mamba_depth, tf_depth = (2, 1) if dry else (8, 4)
    lengths = (128, 256) if dry else (2048, 4096, 8192, 16384, 32768, 65536)
    models = {
        "bimamba": nn.Sequential(*[BiMambaBlock(d) for _ in range(mamba_depth)]).to(device),
        "transformer_sdpa": _transformer(d, tf_depth, heads).to(device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for l in lengths:
        row: dict[str, Any] = {"tokens": l}
        x = torch.randn(1, l, d, device=device)
        for name, model in models.items():
            if time.perf_counter() > deadline:
                row[name] = "skipped: time budget"
                continue

            def step(model=model):
                with autocast:
                    out = model(x)
                out.float().square().mean().backward()

            try:
                sec, peak = clock.measure(step, 1 if dry else 2)
                row[name] = {"ms": 1e3 * sec, "peak_GiB": peak}
            except torch.cuda.OutOfMemoryError:
                row[name] = "out of memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        log(f"d: {row}")
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
    return {"d_model": d, "depth": {"bimamba": mamba_depth, "transformer_sdpa": tf_depth}, "params_M": params,
            "rows": rows}


def _cell(v: Any, key: str, fmt: str) -> str:
    return fmt.format(v[key]) if isinstance(v, dict) and v.get(key) is not None else (v if isinstance(v, str) else "-")


def _ratio(a: Any, b: Any, key: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict) and a.get(key) and b.get(key):
        return f"{a[key] / b[key]:.2f}x"
    return "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]


TITLES = {"a": "a. Scan backends", "b": "b. Scan forward + backward", "c": "c. Pretraining", "d": "d. BiMamba vs SDPA transformer"}


def render(res: dict) -> str:
    """The report as markdown (printed, written to gpu.md and, with --readme, into the README block)."""
    env = res["env"]
    out = [f"# GPU benchmark (`benchmarks/gpu.py`{' --dry-run' if env['dry_run'] else ''})", "",
           f"{env['device']}; torch {env['torch']}, triton {env['triton']}; {res['total_s']:.0f} s in all."]
    for key, fn in (("a", _render_a), ("b", _render_b), ("c", _render_c), ("d", _render_d)):
        part = res.get(key)
        if isinstance(part, dict) and "error" in part:
            out += ["", f"## {TITLES[key]}", "", f"Failed: `{part['error']}`"]
        elif part:
            out += fn(res)
    return "\n".join(out) + "\n"


def _render_a(res: dict) -> list[str]:
    out = ["", "## a. Scan backends and agreement with the float64 reference", ""]
    out += [f"- `{k}`: {v}" for k, v in res["a"]["backends"].items()]
    keys = ["y", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]
    out += ["", f"Max abs error at {res['a']['shape']} (gradient scale {max((r['grad_scale'] for r in res['a']['rows']), default=0):.3g}):", ""]
    out += _table(["backend"] + keys, [[r["backend"]] + [f"{r[k]:.1e}" for k in keys] for r in res["a"]["rows"]])
    return out


def _render_b(res: dict) -> list[str]:
    out: list[str] = []
    b = res["b"]
    names = [k for k in ("triton", "mamba_ssm", "torch") if any(k in r for r in b["rows"])]
    out += ["", f"## b. Scan forward + backward, {b['shape']}, float32, D/z/delta_bias/softplus", ""]
    others = [k for k in names if k != "triton"] if "triton" in names else []
    heads = ["L"] + [f"{k} ms" for k in names] + [f"{k} peak GiB" for k in names] + [f"{k} / triton time" for k in others]
    rows = [[str(r["L"])] + [_cell(r.get(k), "ms", "{:.2f}") for k in names] + [_cell(r.get(k), "peak_GiB", "{:.2f}") for k in names]
            + [_ratio(r.get(k), r.get("triton"), "ms") for k in others] for r in b["rows"]]
    out += _table(heads, rows)
    if b.get("tuning"):
        out += ["", f"Triton tuning at L=8192 (channels per program x unrolled steps, fwd+bwd ms): "
                + ", ".join(f"{r['block_d']} x {r['unroll']}: " + (f"{r['ms']:.2f}" if isinstance(r["ms"], float) else r["ms"])
                            for r in b["tuning"])]
    return out


def _render_c(res: dict) -> list[str]:
    out: list[str] = []
    c = res["c"]
    if c:
        out += ["", f"## c. Pretraining, EEGMamba-{c['size']} ({c['params_M']:.2f} M), masked STFT, {c['precision']}, batch "
                f"{c['batch']} x {c['crop_s']:g} s, scan backend `{c['scan_backend']}`", ""]
        mfu = f"{100 * c['mfu']:.2f} %" if c["mfu"] is not None else "-"
        peak = f"{c['peak_GiB']:.2f}" if c["peak_GiB"] is not None else "-"
        out += _table(["samples/s", "tokens/s", "h EEG / GPU-s", "peak GiB", "loader samples/s", "loader / model",
                       "model TFLOP/s", "MFU"],
                      [[f"{c['samples_per_s']:.0f}", f"{c['tokens_per_s']:.0f}", f"{c['eeg_hours_per_gpu_s']:.2f}", peak,
                        f"{c['loader_samples_per_s']:.0f}", f"{c['loader_over_model']:.1f}x", f"{c['model_TFLOPs']:.2f}", mfu]])
        out += ["", f"{c['steps']} steps in {c['seconds']:.0f} s after warm-up; loader: {c['loader_workers']} workers; "
                f"shards built in {c['shard_build_s']:.0f} s."]
    return out


def _render_d(res: dict) -> list[str]:
    out: list[str] = []
    d = res["d"]
    out += ["", f"## d. BiMamba x{d['depth']['bimamba']} ({d['params_M']['bimamba']:.2f} M) vs SDPA transformer "
            f"x{d['depth']['transformer_sdpa']} ({d['params_M']['transformer_sdpa']:.2f} M), d_model {d['d_model']}, "
            f"batch 1, {'bf16' if res['env']['device'] != 'CPU' else 'float32'}, forward + backward", ""]
    out += _table(["tokens", "bimamba ms", "transformer ms", "time tf / bm", "bimamba peak GiB", "transformer peak GiB",
                   "memory bm / tf"],
                  [[str(r["tokens"]), _cell(r.get("bimamba"), "ms", "{:.1f}"), _cell(r.get("transformer_sdpa"), "ms", "{:.1f}"),
                    _ratio(r.get("transformer_sdpa"), r.get("bimamba"), "ms"),
                    _cell(r.get("bimamba"), "peak_GiB", "{:.2f}"), _cell(r.get("transformer_sdpa"), "peak_GiB", "{:.2f}"),
                    _ratio(r.get("bimamba"), r.get("transformer_sdpa"), "peak_GiB")] for r in d["rows"]])
    return out


def update_readme(readme: Path, report: str) -> None:
    """Replace the README's block between the gpu-results markers with ``report`` (headings one level down)."""
    write_block(readme, report, README_BEGIN, README_END, demote="##")
    log(f"updated the GPU block of {readme}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for gpu.json and gpu.md (required unless --from-md)")
    p.add_argument("--readme", type=Path, default=None, help=f"also write the report between {README_BEGIN} / {README_END}")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the code, not the speed)")
    p.add_argument("--from-md", type=Path, default=None, metavar="GPU_MD",
                   help="write an earlier run's gpu.md into --readme and exit (figures measured elsewhere)")
    p.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget; parts skip rows past their share")
    p.add_argument("--train-s", type=float, default=100.0, help="timed pretraining seconds in part c")
    p.add_argument("--batch-size", type=int, default=256, help="pretraining batch in part c (base.toml: 64 per GPU)")
    p.add_argument("--torch-max-len", type=int, default=8192, help="longest L for the chunked torch scan in part b")
    args = p.parse_args(argv)
    if args.from_md is not None:
        if args.readme is None:
            p.error("--from-md needs --readme")
        update_readme(args.readme, args.from_md.read_text())
        return 0
    if args.out is None:
        p.error("--out is required")
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
    clock = Clock(device)
    budget = args.budget_s
    res: dict[str, Any] = {"env": {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU", "torch": torch.__version__,
        "triton": triton_version, "dry_run": args.dry_run, "scan_backend_env": os.environ.get(ssm.SCAN_BACKEND_ENV),
    }}
    backends = runnable_backends(device)
    log(f"backends: {backends}")
    args.out.mkdir(parents=True, exist_ok=True)

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
        log(f"{key}: {res[key]}")
        (args.out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))

    part("a", lambda: {"backends": backends, **part_a(device, backends, args.dry_run)})
    part("b", lambda: part_b(device, backends, clock, args.dry_run, t_start + 0.35 * budget, args.torch_max_len))
    with tempfile.TemporaryDirectory(prefix="eegfm-gpu-") as tmp:
        part("c", lambda: part_c(device, clock, args.dry_run, args.train_s, Path(tmp),
                                 4 if args.dry_run else args.batch_size))
    part("d", lambda: part_d(device, clock, args.dry_run, t_start + budget))
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
