"""Pretraining throughput: model step vs data loader, and the step against an earlier revision of the suite.

    python benchmarks/pretrain_throughput.py                      # tiny + base on the demo shards, CPU
    python benchmarks/pretrain_throughput.py --shards /data/shards/tueg --sizes base --batch-size 64
    python benchmarks/pretrain_throughput.py --baseline 6bb5af2 --sizes tiny   # this code vs revision 6bb5af2

For each model size it times full training steps (forward + backward + AdamW) of the chosen
objective on pre-loaded batches (``model samples/s``, ``tokens/s`` = real channel-patches per second),
and separately the WebDataset loader alone (``pretrain.data`` stream: read, decode, shuffle, crop,
collate) with the same batch shape. ``loader/model`` is the ratio of the two sample rates: above 1 the
loader keeps up; the aim is >= 5 on CPU. On CUDA the step runs under bf16 autocast (mamba-ssm kernels
when installed) and peak memory is reported.

``--baseline REV``: the same training step (objective, clipping, AdamW as that revision's trainer builds it)
timed in a temporary ``git worktree`` of revision ``REV`` and in this tree, on the same batches, one thread
each (``--threads N``: N each), alternating between the two so machine load hits both alike; prints windows/s of each (wall clock, and
per CPU-second of the process, which a shared machine disturbs less), their ratio, and the operators and
host syncs per step (``benchmarks/step_overhead.py``) of each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pretrain.config import DataConfig, DemoConfig
from pretrain.data import batch_tokens, corpus_specs, make_batch_stream, resolve_corpora, to_device
from pretrain.demo import build_demo_shards
from pretrain.objectives import MaskedSTFTObjective, MaskedTokenObjective, build_backbone
from runtime.engine import param_groups


def loader_rate(spec: str, batch_size: int, crop_s: float, n_batches: int, num_workers: int) -> float:
    """Samples/s of the streaming loader alone (after the shuffle buffer has filled once)."""
    data = DataConfig(shards=spec, batch_size=batch_size, crop_s=crop_s, num_workers=num_workers,
                      shuffle_buffer=64, epoch_steps=n_batches + 4)
    stream = make_batch_stream(data, resolve_corpora(corpus_specs(data)), patch_size=200, sfreq=200.0, seed=0,
                               grad_accum=1, world_size=1)
    it = stream.batches(0)
    for _ in range(3):  # fill the shuffle buffer, start workers
        next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - start)


def model_rate(size: str, objective: str, batches: list[dict], steps: int, device: torch.device) -> dict:
    """Samples/s and tokens/s of full training steps; peak memory on CUDA."""
    torch.manual_seed(0)
    crop_patches = batches[0]["x"].shape[-1] // 200
    backbone = build_backbone(size, {}, crop_patches)
    if objective == "masked_token":
        from tokenizer.vqnsp import VQNSP, VQNSPConfig

        obj = MaskedTokenObjective(backbone, VQNSP(VQNSPConfig.from_size("tiny", kmeans_init=False)))
    else:
        obj = MaskedSTFTObjective(backbone)
    obj.to(device).train()
    opt = torch.optim.AdamW(param_groups(obj, 0.05), lr=1e-4, betas=(0.9, 0.98))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step(batch):
        with autocast:
            loss = obj(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(obj.parameters(), 3.0)
        opt.step()

    on_device = [to_device(b, device) for b in batches]
    step(on_device[0])  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    samples = tokens = 0
    for i in range(steps):
        batch = on_device[i % len(on_device)]
        step(batch)
        samples += batch["x"].shape[0]
        tokens += batch_tokens(batches[i % len(batches)], 200)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "params_M": sum(p.numel() for p in backbone.parameters()) / 1e6,
        "samples_per_s": samples / elapsed,
        "tokens_per_s": tokens / elapsed,
        "step_s": elapsed / steps,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


ROOT = Path(__file__).resolve().parents[1]

# Runs inside a tree (its own packages first on sys.path): times its training step on the saved batches.
_STEP_SCRIPT = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
sys.path.insert(1, os.environ["EEGFM_BENCH_TOOLS"])
from pretrain.objectives import MaskedSTFTObjective, build_backbone
try:
    from runtime.engine import param_groups
except ImportError:  # revisions before the runtime package
    from pretrain.engine import param_groups
from step_overhead import profile_step
batches = torch.load(os.environ["EEGFM_BENCH_BATCHES"])
fused = "fused=" in open("pretrain/trainer.py").read()  # the optimiser this revision's trainer builds
torch.manual_seed(0)
obj = MaskedSTFTObjective(build_backbone(os.environ["EEGFM_BENCH_SIZE"], {}, batches[0]["x"].shape[-1] // 200)).train()
opt = torch.optim.AdamW(param_groups(obj, 0.05), lr=5e-4, betas=(0.9, 0.98), **({"fused": True} if fused else {}))
def step(i=[0]):
    batch = batches[i[0] % len(batches)]
    i[0] += 1
    opt.zero_grad(set_to_none=True)
    obj(batch)["loss"].backward()
    torch.nn.utils.clip_grad_norm_(obj.parameters(), 3.0)
    opt.step()
for _ in range(3):
    step()
walls, cpus = [], []
for _ in range(int(os.environ["EEGFM_BENCH_STEPS"])):
    w, c = time.perf_counter(), time.process_time()
    step()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
counts = profile_step(step, torch.device("cpu"))
print(json.dumps({"wall": walls, "cpu": cpus, "fused_adamw": fused, **counts}))
"""


def compare_with_baseline(rev: str, batches: list[dict], size: str, steps: int, rounds: int, threads: int = 1) -> dict:
    """The training step of revision ``rev`` (a temporary git worktree) and of this tree, alternately
    ``rounds`` times each; windows/s from the median step (wall clock and CPU time), ops and syncs per step."""
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="eegfm-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True, text=True)
        try:
            batch_file = Path(tmp) / "batches.pt"
            torch.save([{k: b[k] for k in ("x", "channel_ids", "channel_mask", "task") if k in b} for b in batches],
                        batch_file)
            for _ in range(rounds):
                for name, where in (("baseline", tree), ("current", ROOT)):
                    env = {**os.environ, "PYTHONPATH": str(where), "EEGFM_BENCH_TOOLS": str(ROOT / "benchmarks"),
                           "EEGFM_BENCH_BATCHES": str(batch_file), "EEGFM_BENCH_SIZE": size,
                           "EEGFM_BENCH_STEPS": str(steps), "OMP_NUM_THREADS": str(threads)}
                    done = subprocess.run([sys.executable, "-c", _STEP_SCRIPT], cwd=where, env=env, check=True,
                                          capture_output=True, text=True)
                    runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    b = batches[0]["x"].shape[0]
    out = {"rev": rev, "size": size, "batch": b, "steps": steps, "rounds": rounds, "threads": threads}
    for name, rs in runs.items():
        wall = statistics.median(t for r in rs for t in r["wall"])
        cpu = statistics.median(t for r in rs for t in r["cpu"])
        out[name] = {"windows_per_s": b / wall, "windows_per_cpu_s": b / cpu, "ops": rs[-1]["ops"],
                     "syncs": rs[-1]["syncs"], "fused_adamw": rs[-1]["fused_adamw"]}
    out["ratio_wall"] = out["current"]["windows_per_s"] / out["baseline"]["windows_per_s"]
    out["ratio_cpu"] = out["current"]["windows_per_cpu_s"] / out["baseline"]["windows_per_cpu_s"]
    return out


def render_comparison(c: dict) -> str:
    threads = "one thread" if c.get("threads", 1) == 1 else f"{c['threads']} threads"
    lines = [f"{c['size']} model, batch {c['batch']}, {threads}, median of {c['steps']} steps x {c['rounds']} "
             f"alternating runs per tree", f"{'tree':<22}{'windows/s':>11}{'windows/CPU-s':>15}{'ops/step':>10}"
             f"{'syncs/step':>12}"]
    for name in ("baseline", "current"):
        r = c[name]
        label = f"{c['rev']} (baseline)" if name == "baseline" else "this tree"
        lines.append(f"{label:<22}{r['windows_per_s']:>11.1f}{r['windows_per_cpu_s']:>15.1f}{r['ops']:>10.0f}"
                     f"{r['syncs']:>12.0f}")
    lines.append(f"ratio this / baseline: {c['ratio_wall']:.2f}x (wall), {c['ratio_cpu']:.2f}x (CPU time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="", help="shard spec (default: build the demo corpus in a temp dir)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "base", "large"])
    parser.add_argument("--objective", default="masked_stft", choices=["masked_stft", "masked_token"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-s", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per size")
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("--baseline", default="", metavar="REV",
                        help="also time the step of git revision REV (temporary worktree) against this tree")
    parser.add_argument("--rounds", type=int, default=3, help="--baseline: alternating runs per tree")
    parser.add_argument("--threads", type=int, default=1,
                        help="--baseline: torch threads per tree (1: least disturbed by other load; the core count: "
                             "what a CPU pretraining run uses)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = None
    spec = args.shards
    if not spec:
        tmp = tempfile.TemporaryDirectory(prefix="eegfm-bench-")
        spec = build_demo_shards(tmp.name, DemoConfig(), progress=False)
    data = DataConfig(shards=spec, batch_size=args.batch_size, crop_s=args.crop_s, shuffle_buffer=64, epoch_steps=8)
    stream = make_batch_stream(data, resolve_corpora(corpus_specs(data)), patch_size=200, sfreq=200.0, seed=0,
                               grad_accum=1, world_size=1)
    batches = list(itertools.islice(stream.batches(0), 4))
    loader = loader_rate(spec, args.batch_size, args.crop_s, args.loader_batches, args.num_workers)

    comparison = None
    if args.baseline:
        comparison = compare_with_baseline(args.baseline, batches, args.sizes[0], max(args.steps, 5), args.rounds,
                                           args.threads)
    rows = []
    for size in args.sizes:
        r = model_rate(size, args.objective, batches, args.steps, device)
        rows.append({"size": size, **r, "loader_samples_per_s": loader, "loader_over_model": loader / r["samples_per_s"]})

    b, c, t = batches[0]["x"].shape
    print(f"device {device} ({torch.get_num_threads()} threads), objective {args.objective}, batch {b} x {c} ch x "
          f"{t / 200:g} s ({c * t // 200} tokens/sample), loader workers {args.num_workers}")
    header = f"{'size':<6}{'params':>9}{'model samples/s':>17}{'tokens/s':>11}{'s/step':>9}{'loader samples/s':>18}{'loader/model':>14}"
    if device.type == "cuda":
        header += f"{'peak GiB':>10}"
    print(header)
    for r in rows:
        line = (f"{r['size']:<6}{r['params_M']:>8.2f}M{r['samples_per_s']:>17.1f}{r['tokens_per_s']:>11.0f}"
                f"{r['step_s']:>9.3f}{r['loader_samples_per_s']:>18.1f}{r['loader_over_model']:>13.1f}x")
        if device.type == "cuda":
            line += f"{r['peak_mem_GiB']:>10.2f}"
        print(line)
    if comparison is not None:
        print()
        print(render_comparison(comparison))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "rows": rows, "baseline": comparison}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
