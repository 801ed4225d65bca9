"""Shard-build cost vs a bare read of the same recordings, on the shared real data.

For each local corpus in ``--data`` (default ``../shared/data`` next to the repository) it measures CPU
seconds (``time.process_time`` of this process + waited-for children, so ``--workers`` are counted too) for

  (a) bare read: ``adapter.load(rec)`` for every recording, i.e. what a user pays just to have the samples in
      memory: MNE's reader with ``preload=True`` for EDF/BDF/FIF/.set/.vhdr (plus our header checks, unit
      fix and annotation parsing, which the build pays too), and the text parser + ``mne.io.RawArray`` for
      Bonn / DREAMS, which MNE cannot read. Nothing else: no extra ``get_data()`` copy (the samples are
      already decoded by ``preload=True``), no resampling, no filtering.
  (b) build: ``shards.writer.build`` of the same corpus (the same read + preprocess + window + float16 +
      tar write + manifest) into a temporary folder,

and prints hours of EEG per CPU-second for both and the ratio (b)/(a). The design aim is (b)/(a) <= 1.5.
Fairness: both run in this one process with the same thread settings (run with ``OMP_NUM_THREADS=1`` for
single-core figures), one untimed read per corpus first warms the page cache and imports, and each figure
is the minimum over ``--repeat`` runs. With ``--workers 1`` the build is also split into its parts, timed
inside the same run: ``load`` (= (a) again, inside the build), ``prep`` (``preprocess_raw``: channel picks,
filters, resampling, units), ``win`` (``cut_windows``) and ``write`` (the rest: float16 + sample encoding,
tar, manifest). ``(load + write) / read`` is then the ratio the build would have with free preprocessing.
``--profile`` prints the top functions of (b) by cumulative time (cProfile, single process).

    OMP_NUM_THREADS=1 python benchmarks/shard_build.py [--data DIR] [--corpora bonn,dreams,...] \\
        [--workers 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import shards.writer  # noqa: E402
from shards.corpora import get_corpus  # noqa: E402
from shards.writer import build  # noqa: E402

# corpus adapter -> folder below the data root
CORPORA = {
    "bonn": "seizure/bonn",
    "dreams": "sleep/dreams_spindles",
    "eegmmidb": "motor_imagery/eegmmidb",
    "mental_stress": "emotion/mental_stress_emotiv",
    "recordings": "unlabeled",
}


def cpu_seconds() -> float:
    """CPU time of this process plus all terminated, waited-for children (worker processes)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def bare_read(name: str, root: Path) -> tuple[float, float, int]:
    """(cpu seconds, hours of signal, recordings) for loading every recording of a corpus."""
    adapter = get_corpus(name)
    recs = adapter.find(root)
    t0 = cpu_seconds()
    hours = 0.0
    for rec in recs:
        try:
            raw = adapter.load(rec).raw  # preload=True: the samples are decoded into memory here
        except Exception:  # noqa: BLE001 - the build skips the same files; skip them here too
            continue
        hours += raw.n_times / raw.info["sfreq"] / 3600
    return cpu_seconds() - t0, hours, len(recs)


class _PartTimer:
    """Adds the CPU time of ``adapter.load``, ``preprocess_raw`` and ``cut_windows`` inside one build run.

    Single-process only (the wrappers live in this process); the wrapping costs two clock reads per call.
    """

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.parts = {"load": 0.0, "prep": 0.0, "win": 0.0}

    def _timed(self, fn, part):
        def run(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[part] += time.process_time() - t0
        return run

    def __enter__(self):
        self._saved = (shards.writer.preprocess_raw, shards.writer.cut_windows)
        shards.writer.preprocess_raw = self._timed(self._saved[0], "prep")
        shards.writer.cut_windows = self._timed(self._saved[1], "win")
        self.adapter.load = self._timed(self.adapter.load, "load")  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        shards.writer.preprocess_raw, shards.writer.cut_windows = self._saved
        del self.adapter.load


def full_build(name: str, root: Path, workers: int, profile: bool) -> tuple[float, dict, str, dict | None]:
    """(cpu seconds, manifest, profile report, {load, prep, win} cpu seconds or None with workers > 1)."""
    out = Path(tempfile.mkdtemp(prefix=f"shard_bench_{name}_"))
    adapter = get_corpus(name)
    timer = _PartTimer(adapter) if workers == 1 and not profile else None
    try:
        prof = cProfile.Profile() if profile else None
        t0 = cpu_seconds()
        if prof:
            prof.enable()
        if timer:
            with timer:
                m = build(adapter, root, out, workers=workers, progress=False)
        else:
            m = build(adapter, root, out, workers=workers, progress=False)
        if prof:
            prof.disable()
        cpu = cpu_seconds() - t0
        report = ""
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            report = s.getvalue()
        return cpu, m, report, (timer.parts if timer else None)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    p.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated corpus adapters to run")
    p.add_argument("--workers", type=int, default=1, help="build workers (CPU of children is counted)")
    p.add_argument("--repeat", type=int, default=1, help="take the minimum CPU time over this many runs")
    p.add_argument("--profile", action="store_true", help="cProfile the build (forces --workers 1)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} is absent; nothing to measure", file=sys.stderr)
        return 1
    rows = []
    keys = ("read", "build", "hours", "out_h", "load", "prep", "win", "write")
    tot = dict.fromkeys(keys, 0.0)
    have_parts = True
    for name in args.corpora.split(","):
        root = args.data / CORPORA[name]
        bare_read(name, root)  # warm the page cache and imports so (a) and (b) read from the same state
        read_cpu, hours, n = min((bare_read(name, root) for _ in range(args.repeat)), key=lambda r: r[0])
        runs = [full_build(name, root, 1 if args.profile else args.workers, args.profile) for _ in range(args.repeat)]
        build_cpu, m, report, parts = min(runs, key=lambda r: r[0])
        if report:
            print(f"--- profile: build {name} ---\n{report}")
        if parts is None:
            have_parts = False
            parts = {"load": float("nan"), "prep": float("nan"), "win": float("nan")}
        parts = {**parts, "write": build_cpu - sum(parts.values())}
        row = {"name": name, "n": n, "skip": m["totals"]["skipped"], "hours": hours, "out_h": m["totals"]["hours"],
               "read": read_cpu, "build": build_cpu, **parts}
        rows.append(row)
        for k in keys:
            tot[k] += row[k]
    total = {"name": "TOTAL", "n": sum(r["n"] for r in rows), "skip": sum(r["skip"] for r in rows), **tot}

    head = (f"{'corpus':14s} {'recs':>5s} {'skip':>4s} {'hours in':>9s} {'h sharded':>9s} {'read cpu-s':>10s} "
            f"{'build cpu-s':>11s} {'read h/cpu-s':>12s} {'build h/cpu-s':>13s} {'build/read':>10s} | "
            f"{'load':>6s} {'prep':>6s} {'win':>6s} {'write':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows + [total]:
        print(f"{r['name']:14s} {r['n']:5d} {r['skip']:4d} {r['hours']:9.3f} {r['out_h']:9.3f} {r['read']:10.2f} "
              f"{r['build']:11.2f} {r['hours'] / r['read']:12.3f} {r['hours'] / r['build']:13.3f} "
              f"{r['build'] / r['read']:10.2f} | {r['load']:6.2f} {r['prep']:6.2f} {r['win']:6.2f} {r['write']:6.2f}")
    print(f"\nbuild/read CPU ratio {tot['build'] / tot['read']:.2f} (aim <= 1.5); "
          f"workers={args.workers}; hours in = signal hours read, h sharded = hours inside kept windows")
    if have_parts:
        print(f"build parts (cpu-s): load {tot['load']:.2f}, preprocess {tot['prep']:.2f}, windows {tot['win']:.2f}, "
              f"write {tot['write']:.2f}; with free preprocessing and windowing the ratio would be "
              f"{(tot['load'] + tot['write']) / tot['read']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
