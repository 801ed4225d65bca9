"""The demo corpus the suite makes for itself when a run is given no shards.

``shards.synth.simulate`` writes EDF+ recordings (several subjects x the four task types, real-world
channel spellings, EOG/ECG to drop, mixed sampling rates) and ``shards.writer.build`` turns them into
WebDataset shards through the same readers and preprocessing as a real corpus, so the default run
exercises the whole path. Built once per folder (a complete ``manifest.json`` means done) and by the
main process only; the other ranks wait at the barrier in :func:`ensure_demo_shards`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.config import DataConfig, DemoConfig

CORPUS = "synth"


def demo_shard_spec(root: str | Path) -> str:
    """Glob of the demo's training shards under ``root`` (``{root}/shards/synth/train-*.tar``)."""
    return str(Path(root) / "shards" / CORPUS / "train-*.tar")


def _complete(root: Path) -> bool:
    manifest = root / "shards" / CORPUS / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return bool(json.loads(manifest.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def build_demo_shards(root: str | Path, config: DemoConfig = DemoConfig(), seed: int = 0, progress: bool = True) -> str:
    """Simulate recordings into ``{root}/raw`` and shard them into ``{root}/shards``; returns the shard glob.

    Idempotent: a folder whose manifest says complete is reused as is.
    """
    from shards.synth import simulate
    from shards.writer import build

    root = Path(root)
    if not _complete(root):
        simulate(root / "raw", n_subjects=config.n_subjects, duration_s=config.duration_s, seed=seed)
        build(CORPUS, root / "raw", root / "shards", max_samples_per_shard=config.shard_size, seed=seed,
              progress=progress)
    return demo_shard_spec(root)


def ensure_demo_shards(accelerator, root: str | Path, config: DemoConfig, seed: int, progress: bool = True) -> str:
    """:func:`build_demo_shards` on the main process, then a barrier so every rank sees finished shards."""
    if accelerator.is_main_process:
        build_demo_shards(root, config, seed=seed, progress=progress)
    accelerator.wait_for_everyone()
    return demo_shard_spec(root)


def corpora_or_demo(data: DataConfig, out_dir: str | Path, accelerator, seed: int = 0, progress: bool = True):
    """The run's corpora (``pretrain.data.Corpus`` list); with no shards configured, the demo corpus.

    The demo goes to ``data.demo_dir`` (default ``{out_dir}/demo_data``) and is built once.
    """
    from pretrain.data import corpus_specs, resolve_corpora

    specs = corpus_specs(data)
    if not specs:
        root = Path(data.demo_dir or Path(out_dir) / "demo_data")
        accelerator.print(f"no shards given (data.shards / [[data.corpora]]): using the simulated demo corpus in {root}")
        specs = [(CORPUS, ensure_demo_shards(accelerator, root, data.demo, seed=seed, progress=progress), 1.0)]
    return resolve_corpora(specs)
