"""Train and release ``eegmamba-tiny-open``, the checkpoint shipped in ``foundation/released/``.

One command, reproducible bit for bit (fixed seeds, one thread, deterministic shard order and stream)::

    python -m pretrain.release_tiny            # ~5 min on one core; prints what it wrote and the weights' SHA-256

It shards the recordings of ``../shared/data`` (``EEG_SHARED_DATA``) whose terms allow redistributing
weights derived from them, plus the suite's simulator, pretrains a tiny EEGMamba with the masked-STFT
objective, and writes the release folder with ``pretrain.release`` (weights, config, contract, generated
model card, SHA256SUMS). Re-run it whenever the architecture changes: the shipped weights must load into
the current ``EEGMamba``.

Data sets and why (``../shared/data/README.md``): included are EEGMMIDB S001 and EEGMAT (PhysioNet, ODC-By
1.0: derived works allowed with attribution), the EEGLAB sample recordings (BSD-2) and YASA's resting-state
FIF (BSD-3), and the simulator (ours). Left out: DREAMS (non-commercial, no-derivatives licence), Bonn and
the Emotiv mental-stress set ("public for research", no licence that covers redistributing derived
weights), the MNE testing files (terms not stated in the data README), the Sleep-EDF hypnogram (no signal)
and YASA's two text snippets (45 s of headerless text, not worth a reader path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "eegmamba-tiny-open"
DEFAULT_OUT = REPO / "foundation" / "released" / NAME
COMMAND = "python -m pretrain.release_tiny"
SEED = 0
STEPS = 400

PHYSIONET_WHY = "ODC-By 1.0: derived works may be shared with attribution"
# The shared sets left out, and why (written into the model card).
EXCLUDED = {
    "DREAMS Spindles (sleep/dreams_spindles)": "CC BY-NC-ND-style licence: non-commercial, no derivatives",
    "Bonn seizure database (seizure/bonn)": "'public for research; cite the paper': no licence covering redistribution of derived weights",
    "Mental stress, Emotiv (emotion/mental_stress_emotiv)": "'public research data set': no licence covering redistribution of derived weights",
    "MNE testing data (unlabeled/mne_testing, formats/)": "terms not stated in the data README",
    "Sleep-EDF hypnogram (sleep/sleep_edf_hypnogram_only)": "annotations only, no signal",
    "YASA text snippets (sleep/yasa_*.txt)": "45 s of headerless text; not worth a reader path",
}
# corpus -> (adapter, folder under the shared data, data-set card entry)
SETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "eegmmidb": ("eegmmidb", "motor_imagery/eegmmidb", {
        "title": "PhysioNet EEG Motor Movement/Imagery Database (subject 1)", "license": "ODC-By-1.0",
        "url": "https://physionet.org/content/eegmmidb/1.0.0/", "hub_id": "physionet/eegmmidb",
        "citation": "Schalk et al., BCI2000, IEEE TBME 51(6), 2004; Goldberger et al., PhysioNet, Circulation 2000",
        "why": PHYSIONET_WHY}),
    "eegmat": ("eegmat", "workload/eegmat", {
        "title": "PhysioNet EEG During Mental Arithmetic Tasks (EEGMAT 1.0.0, subjects 02-27)", "license": "ODC-By-1.0",
        "url": "https://physionet.org/content/eegmat/1.0.0/", "hub_id": "physionet/eegmat",
        "citation": "Zyma et al., Data 4(1):14, 2019; Goldberger et al., PhysioNet, Circulation 2000",
        "why": PHYSIONET_WHY}),
    "eeglab": ("recordings", "unlabeled/eeglab", {
        "title": "EEGLAB sample data (eeglab_data.set, test.edf, testbva; test.bdf is skipped: BioSemi A1-A16 labels have no position)", "license": "BSD-2-Clause",
        "url": "https://github.com/sccn/eeglab", "hub_id": "eeglab/sample-data",
        "citation": "Delorme & Makeig, J. Neurosci. Methods 134, 2004",
        "why": "BSD-2: redistribution with the copyright notice"}),
    "yasa": ("recordings", "unlabeled/yasa", {
        "title": "YASA resting-state example (2 channels, 6 min)", "license": "BSD-3-Clause",
        "url": "https://github.com/raphaelvallat/yasa", "hub_id": "yasa/resting-state",
        "citation": "Vallat & Walker, eLife 10:e70092, 2021",
        "why": "BSD-3: redistribution with the copyright notice"}),
    "synth": ("synth", "", {
        "title": "eegfm simulator (shards.synth: 1/f background, alpha, spindles, slow waves, mu/beta, spike-wave)",
        "license": "Apache-2.0", "url": "https://github.com/eegfm/eegfm", "hub_id": "eegfm/synth",
        "why": "simulated by the suite itself"}),
}


def shared_data() -> Path:
    return Path(os.environ.get("EEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def checked_adapter(name: str) -> str:
    """``name`` when this checkout has that corpus adapter; an error otherwise, never a quiet substitute.

    Reading a set through another adapter (e.g. EEGMAT's EDFs as plain ``recordings``) shards other
    windows and labels, so the weights would not be the ones the release says it reproduces.
    """
    from shards.corpora import get_corpus

    try:
        get_corpus(name)
    except KeyError as err:
        raise RuntimeError(
            f"{COMMAND}: this checkout has no {name!r} corpus adapter (shards.corpora), which the release is built "
            f"with; update the checkout (the release is reproducible only with the same adapters)") from err
    return name


def build_shards(work: Path, data: Path) -> dict[str, Path]:
    """Shard every set into ``{work}/shards/{name}/{adapter}``; deterministic, one worker, reused when complete."""
    from shards.dataset import read_manifest
    from shards.synth import simulate
    from shards.writer import build

    folders = {}
    for name, (adapter, rel, _) in SETS.items():
        out = work / "shards" / name
        if name == "synth":
            root = work / "synth_raw"
            if not root.is_dir():
                simulate(root, n_subjects=4, duration_s=64.0, seed=SEED)
        else:
            root = data / rel
            if not root.is_dir():
                raise FileNotFoundError(f"{root} does not exist: the release needs ../shared/data (set EEG_SHARED_DATA)")
            adapter = checked_adapter(adapter)
        manifest = build(adapter, root, out, workers=1, seed=SEED, max_samples_per_shard=400, progress=False)
        folder = out / manifest["corpus"]
        if read_manifest(folder)["totals"]["samples"] == 0:
            raise RuntimeError(f"{name}: no window was sharded from {root}")
        folders[name] = folder
    return folders


def release_config(folders: dict[str, Path], out_dir: Path, steps: int):
    """The pretraining run of the release (a ``pretrain.config.PretrainConfig``) over the shard ``folders``."""
    from foundation.model import EEGMambaConfig
    from pretrain.config import CorpusConfig, DataConfig, ObjectiveConfig, OptimConfig, PretrainConfig, TrainConfig
    from shards.dataset import read_manifest

    # Every window equally likely: each corpus weighted by its window count.
    corpora = tuple(CorpusConfig(urls=str(f), weight=float(read_manifest(f)["totals"]["samples"]), name=n)
                    for n, f in folders.items())
    return PretrainConfig(
        data=DataConfig(corpora=corpora, crop_s=4.0, batch_size=8, shuffle_buffer=256, num_workers=0, epoch_steps=100),
        model=EEGMambaConfig.from_size("tiny"),
        objective=ObjectiveConfig(name="masked_stft"),
        optim=OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=max(1, steps // 20)),
        train=TrainConfig(out_dir=str(out_dir), max_steps=steps, save_every=steps, keep_checkpoints=1, log_every=50,
                          seed=SEED, progress=False, mixed_precision="no"),
    )


def pretrain(folders: dict[str, Path], out_dir: Path, steps: int):
    from pretrain.run import run

    return run(release_config(folders, out_dir, steps))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"release folder (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--work", default="runs/release-tiny", help="shards and the pretraining run go here")
    parser.add_argument("--steps", type=int, default=STEPS, help="pretraining steps")
    parser.add_argument("--downstream", help="benchmarks/downstream.py results.json of this checkpoint, for the card")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # bit-for-bit: one thread, so no reduction order depends on scheduling
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    work = Path(args.work)
    folders = build_shards(work, shared_data())
    run_dir = work / f"pretrain-{args.steps}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # always a fresh run: resuming would not be the reproducible path
    result = pretrain(folders, run_dir, args.steps)

    from pretrain.release import release

    datasets = {name: entry for name, (_, _, entry) in SETS.items()}
    downstream = json.loads(Path(args.downstream).read_text()) if args.downstream else None
    command = COMMAND + (f" --steps {args.steps}" if args.steps != STEPS else "")
    out = release(run_dir, args.out, datasets, name=NAME, license="apache-2.0", downstream=downstream, reproduce=command,
                  excluded=EXCLUDED)
    k = max(1, len(result.losses) // 10)
    first, last = sum(result.losses[:k]) / k, sum(result.losses[-k:]) / k
    print(f"{NAME}: {result.steps} steps, loss {first:.4f} (first 10 %) -> {last:.4f} (last 10 %), "
          f"{time.time() - t0:.0f} s wall on {torch.get_num_threads()} thread(s)")
    for p in sorted(out.iterdir()):
        print(f"  wrote {p}  ({p.stat().st_size / 1e3:.1f} kB)  sha256 {sha256(p)[:16]}")
    print(f"model.safetensors sha256 {sha256(out / 'model.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
