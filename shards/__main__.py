"""``python -m shards``: build, inspect and simulate EEG shard sets.

    python -m shards list
    python -m shards build CORPUS --root RAW --out OUT [--workers N] [--part I/N] [preprocessing options]
    python -m shards inspect OUT
    python -m shards synth OUT [--subjects N] [--duration_s S] [--build]

Options are spelled with underscores, as in the manifest (``--window_s``); ``--window-s`` is read too, with a notice.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from runtime.cli_errors import DEBUG_ENV, run_cli
from runtime.cli_spelling import argparse_options, canonical_spelling


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must look like I/N (e.g. 3/16), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--part I/N needs 0 <= I < N, got {text!r}")
    return i, n


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or any(v < 0 for v in vals) or abs(sum(vals) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"--split needs three train,val,test fractions summing to 1, got {text!r}")
    return vals  # type: ignore[return-value]


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off", "no"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


_PREPROCESS_OPTIONS = ("sfreq", "l_freq", "h_freq", "window_s", "stride_s", "notch", "max_abs_uv", "montage")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help=f"show tracebacks of errors (or set {DEBUG_ENV}=1)")
    # The same flag after the command; SUPPRESS keeps a subcommand's default from hiding `--debug build ...`.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show tracebacks of errors (or set {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,build,inspect,synth}")

    sub.add_parser("list", parents=[debug], help="list the known corpus adapters", description="List the known corpus adapters.")

    b = sub.add_parser("build", parents=[debug], help="shard one corpus into WebDataset tars",
                       description="Read a raw corpus, preprocess it and write WebDataset tars "
                                   "{out}/{corpus}/{split}-{shard:06d}.tar plus manifest.json. Re-running the same "
                                   "command resumes an interrupted build.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("corpus", help="corpus adapter name (see `python -m shards list`)")
    io = b.add_argument_group("input and output")
    io.add_argument("--root", required=True, type=Path, help="folder holding the raw corpus")
    io.add_argument("--out", required=True, type=Path, help="output folder; shards go to OUT/CORPUS/")
    run = b.add_argument_group("build")
    run.add_argument("--workers", type=int, default=1, help="parallel worker processes (over recordings)")
    run.add_argument("--part", type=_part, default=(0, 1), metavar="I/N",
                     help="build only part I of N (0-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    run.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST",
                     help="subject-wise split fractions (an official split of the corpus wins)")
    run.add_argument("--seed", type=int, default=0, help="seed of the subject -> split hash")
    run.add_argument("--max_samples_per_shard", type=int, default=2000, help="close a shard after this many samples")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    g = b.add_argument_group("preprocessing (default: the corpus adapter's settings on top of PreprocessConfig)",
                             argument_default=argparse.SUPPRESS)
    g.add_argument("--sfreq", type=float, help="common sampling rate in Hz")
    g.add_argument("--l_freq", type=_optional_float, help="band-pass low edge in Hz ('none' = off)")
    g.add_argument("--h_freq", type=_optional_float, help="band-pass high edge in Hz ('none' = off)")
    g.add_argument("--window_s", type=float, help="window length in seconds")
    g.add_argument("--stride_s", type=float, help="window stride in seconds")
    g.add_argument("--notch", type=_optional_float, help="mains notch frequency in Hz ('none' = off)")
    g.add_argument("--max_abs_uv", type=_optional_float, help="drop windows with any |value| above this many µV ('none' = off)")
    g.add_argument("--montage", choices=("biosemi16", "biosemi32", "biosemi64", "biosemi128", "biosemi160", "biosemi256"),
                   help="BioSemi cap layout of recordings labelled A1..H32 (their channels are placed on its sites)")

    i = sub.add_parser("inspect", parents=[debug], help="summarise and validate a shard folder",
                       description="Print per corpus: samples, hours, channel sets, labels, drops and skipped "
                                   "recordings; read every shard back and check it against the manifest. Exit "
                                   "status 1 on any mismatch.")
    i.add_argument("out", type=Path, help="build output folder (OUT or OUT/CORPUS)")
    i.add_argument("--quick", action="store_true", help="skip reading the shards back (manifest summary only)")

    s = sub.add_parser("synth", parents=[debug], help="write the simulated demo corpus (EDF+)",
                       description="Write simulated EEG recordings (sleep, motor imagery, seizure, emotion; labels as "
                                   "EDF+ annotations) to OUT, readable by the 'synth' corpus adapter.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("out", type=Path, help="output folder for the EDF files")
    sim = s.add_argument_group("simulation")
    sim.add_argument("--subjects", type=int, default=8, help="number of simulated subjects")
    sim.add_argument("--duration_s", type=float, default=120.0, help="length of each recording in seconds")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    s.add_argument_group("output").add_argument("--build", type=Path, metavar="SHARDS_OUT",
                                                help="also shard the simulated corpus into SHARDS_OUT")
    return p


def cmd_list() -> int:
    from shards.corpora import CORPORA, FAMILIES

    for name in sorted(CORPORA):
        a = CORPORA[name]
        labels = getattr(a, "task_label_names", None) or a.label_names
        print(f"{name:16s} task={a.task!s:14s} mains={a.mains_hz!s:5s} labels={labels}")
    for _, usage in FAMILIES.values():
        print(usage)
    return 0


def cmd_build(args) -> int:
    from shards.writer import build

    # Only options given on the command line override (so 'none' can switch a stage off explicitly).
    overrides = {k: getattr(args, k) for k in _PREPROCESS_OPTIONS if hasattr(args, k)}
    m = build(args.corpus, args.root, args.out, overrides=overrides, workers=args.workers, part=args.part,
              split=args.split, seed=args.seed, max_samples_per_shard=args.max_samples_per_shard, progress=not args.quiet)
    _summary(m)
    return 0


def _summary(m: dict) -> None:
    t = m["totals"]
    print(f"== {m['corpus']}: {t['samples']} samples, {t['hours']:.3f} h, {t['recordings']} recordings, "
          f"{t['skipped']} skipped, {t['shards']} shards{'' if m['complete'] else ' (INCOMPLETE)'}")
    for sp, v in m["by_split"].items():
        print(f"   {sp:5s}: {v['samples']} samples, {v['hours']:.3f} h, {v['recordings']} recordings, {v['subjects']} subjects")
    print(f"   labels (windows): {m['label_counts']}")
    print(f"   labels (recordings): {m['recordings_by_label']}")
    print(f"   window drops: {m['drops'] or '{}'}")
    for how, chans in (m.get("placed_channels") or {}).items():
        print(f"   {how}: {', '.join(f'{k} x{v}' for k, v in chans.items())}")
    if m.get("dropped_channels"):
        for reason, chans in m["dropped_channels"].items():
            print(f"   dropped channels ({reason}): {', '.join(f'{k} x{v}' for k, v in chans.items())}")
    print(f"   channel sets: {len(m['channel_sets'])}")
    for cs in m["channel_sets"][:5]:
        print(f"     {cs['recordings']:5d} rec  {len(cs['channels']):3d} ch  {' '.join(cs['channels'][:20])}{' ...' if len(cs['channels']) > 20 else ''}")
    for s in m["skipped"]:
        print(f"   skipped {s['source']}: {s['reason']}")


def _corpus_folders(out: Path) -> list[Path]:
    if any(out.glob("manifest*.json")):
        return [out]
    found = sorted({p.parent for p in out.glob("*/manifest*.json")})
    if not found:
        raise FileNotFoundError(f"no manifest.json under {out} (expected OUT/CORPUS/manifest.json)")
    return found


def validate(folder: Path, manifest: dict, progress: bool = True) -> list[str]:
    """Read every shard of ``folder`` back and compare with ``manifest`` (sha256 of the file when the manifest
    records it, tar structure, sample count, keys, finite values); returns the problems found."""
    from shards.sample import decode_sample
    from shards.shardfile import DamagedShardError, read_shard

    problems = []
    listed = {s["name"]: s for s in manifest["shards"]}
    on_disk = {p.name for p in folder.glob("*.tar")}
    # Readers take only what the manifest lists, so a copy or an old/ subfolder is never read; name each one.
    for path in sorted(folder.rglob("*.tar")):
        if path.parent != folder or path.name not in listed:
            problems.append(f"{path}: tar on disk but not in the manifest (readers leave it out; delete or move it)")
    total = 0
    for name in tqdm(sorted(listed), desc=f"validate {folder.name}", unit="shard", disable=not progress):
        path = folder / name
        if name not in on_disk:
            problems.append(f"{path}: listed in the manifest but missing")
            continue
        n = 0
        try:
            for sample in read_shard(str(path), listed[name].get("sha256")):
                w = decode_sample(sample)
                if not sample["__key__"].startswith(f"{manifest['corpus']}__"):
                    problems.append(f"{path}: sample key {sample['__key__']} lacks the corpus prefix")
                if not np.isfinite(w.eeg).all():
                    problems.append(f"{path}: sample {sample['__key__']} holds NaN/inf")
                n += 1
        except DamagedShardError as e:
            problems.append(str(e) + _damaged_recordings(path, manifest, listed[name]))
            continue
        except Exception as e:  # noqa: BLE001 - report every unreadable shard, not just the first
            problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            continue
        total += n
        if n != listed[name]["samples"]:
            problems.append(f"{path}: {n} samples, manifest says {listed[name]['samples']}")
    if total != manifest["totals"]["samples"] and not problems:
        problems.append(f"{folder}: {total} samples read, manifest totals say {manifest['totals']['samples']}")
    return problems


def _damaged_recordings(path: Path, manifest: dict, shard: dict) -> str:
    """``"; damaged samples of recording(s) ..."`` for the recordings of a shard whose bytes differ from
    their manifest sha256 (builds that recorded them), else ""."""
    from shards.shardfile import recording_digests

    expected = {r["recording"]: r.get("sha256") for r in manifest.get("recordings", [])}
    actual = recording_digests(str(path), manifest["corpus"])
    hit = [r for r in shard["recordings"] if expected.get(r) and actual and actual.get(r) != expected[r]]
    return f"; damaged samples of recording(s) {', '.join(hit)}" if hit else ""


def cmd_inspect(args) -> int:
    from shards.manifest import read_manifest

    bad = 0
    for folder in _corpus_folders(args.out):
        m = read_manifest(folder)
        _summary(m)
        if not m["complete"]:
            print(f"   WARNING: {folder} holds an incomplete build (resume it with the same build command)")
        if args.quick:
            continue
        problems = validate(folder, m)
        for p in problems:
            print(f"   MISMATCH {p}")
        print(f"   validation: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        bad += len(problems)
    return 1 if bad else 0


def cmd_synth(args) -> int:
    from shards.synth import simulate

    paths = simulate(args.out, n_subjects=args.subjects, duration_s=args.duration_s, seed=args.seed)
    print(f"wrote {len(paths)} recordings to {args.out}")
    if args.build:
        from shards.writer import build

        _summary(build("synth", args.out, args.build))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    args = parser.parse_args(canonical_spelling(sys.argv[1:] if argv is None else argv, argparse_options(parser),
                                                prog=parser.prog))
    from shards.readers import ReadError

    commands = {"list": lambda: cmd_list(), "build": lambda: cmd_build(args), "inspect": lambda: cmd_inspect(args),
                "synth": lambda: cmd_synth(args)}
    # Our messages name the file and the fix; one line, the traceback only on request.
    return run_cli("", commands[args.command], debug=args.debug, errors=(ReadError,))


if __name__ == "__main__":
    sys.exit(main())
