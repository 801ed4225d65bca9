"""Shard-build cost vs a bare read of the same recordings, on the shared real data.

For each local corpus in ``--data`` (default ``../shared/data`` next to the repository) it measures CPU
seconds (``time.process_time`` of this process + waited-for children, so ``--workers`` are counted too) for

  (a) read:  ``adapter.load(rec)`` for every recording (MNE's reader for EDF/BDF/FIF/.set/.vhdr, the text
             parser for Bonn / DREAMS, preloaded so the samples are really decoded), and
  (b) build: ``shards.writer.build`` of the same corpus (read + preprocess + window + float16 + tar write +
             manifest) into a temporary folder,

and prints hours of EEG per CPU-second for both and the ratio (b)/(a). The design aim is (b)/(a) <= 1.5.
``--profile`` prints the top functions of (b) by cumulative time (cProfile, single process).

    python benchmarks/shard_build.py [--data DIR] [--corpora bonn,dreams,...] [--workers 1] [--repeat 1]
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
            raw = adapter.load(rec).raw
        except Exception:  # noqa: BLE001 - the build skips the same files; skip them here too
            continue
        raw.get_data()  # make sure the samples are decoded, not just the header
        hours += raw.n_times / raw.info["sfreq"] / 3600
    return cpu_seconds() - t0, hours, len(recs)


def full_build(name: str, root: Path, workers: int, profile: bool) -> tuple[float, dict, str]:
    out = Path(tempfile.mkdtemp(prefix=f"shard_bench_{name}_"))
    try:
        prof = cProfile.Profile() if profile else None
        t0 = cpu_seconds()
        if prof:
            prof.enable()
        m = build(name, root, out, workers=workers, progress=False)
        if prof:
            prof.disable()
        cpu = cpu_seconds() - t0
        report = ""
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            report = s.getvalue()
        return cpu, m, report
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    tot = {"read": 0.0, "build": 0.0, "hours": 0.0, "out_h": 0.0}
    for name in args.corpora.split(","):
        root = args.data / CORPORA[name]
        bare_read(name, root)  # warm the page cache and imports so (a) and (b) read from the same state
        read_cpu, hours, n = min((bare_read(name, root) for _ in range(args.repeat)), key=lambda r: r[0])
        runs = [full_build(name, root, 1 if args.profile else args.workers, args.profile) for _ in range(args.repeat)]
        build_cpu, m, report = min(runs, key=lambda r: r[0])
        if report:
            print(f"--- profile: build {name} ---\n{report}")
        rows.append((name, n, m["totals"]["skipped"], hours, m["totals"]["hours"], read_cpu, build_cpu))
        tot["read"] += read_cpu
        tot["build"] += build_cpu
        tot["hours"] += hours
        tot["out_h"] += m["totals"]["hours"]

    head = f"{'corpus':14s} {'recs':>5s} {'skip':>4s} {'hours in':>9s} {'h sharded':>9s} {'read cpu-s':>10s} " \
           f"{'build cpu-s':>11s} {'read h/cpu-s':>12s} {'build h/cpu-s':>13s} {'build/read':>10s}"
    print(head)
    print("-" * len(head))
    for name, n, sk, h, oh, rc, bc in rows + [("TOTAL", sum(r[1] for r in rows), sum(r[2] for r in rows),
                                               tot["hours"], tot["out_h"], tot["read"], tot["build"])]:
        print(f"{name:14s} {n:5d} {sk:4d} {h:9.3f} {oh:9.3f} {rc:10.2f} {bc:11.2f} {h / rc:12.3f} {h / bc:13.3f} {bc / rc:10.2f}")
    print(f"\nbuild/read CPU ratio {tot['build'] / tot['read']:.2f} (aim <= 1.5); "
          f"workers={args.workers}; hours in = signal hours read, h sharded = hours inside kept windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
