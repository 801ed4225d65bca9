"""Settings of a pretraining (or tokenizer-training) run: frozen dataclasses read from TOML.

``PretrainConfig`` is what ``pretrain/run.py`` parses (``--config FILE`` + ``--a.b value``
overrides, unknown keys are errors); ``tokenizer/run.py`` reuses the same data / optimiser /
trainer sections with its own model section. The defaults ARE the embedded demo: no shards given
-> simulate a small corpus, build its shards, pretrain a tiny backbone on a CPU in a few minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from tokenizer.spectral import MaskConfig, STFTConfig


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    """A dataclass field whose ``help`` shows up in ``--help``."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class CorpusConfig:
    """One corpus of shards in the training mix."""

    urls: str = _help("shard folder, glob, brace pattern ({000000..000099}) or pipe: URL", "")
    weight: float = _help("relative sampling weight in the mix", 1.0)
    name: str = _help("label used in logs (default: the folder name)", "")


@dataclass(frozen=True)
class DemoConfig:
    """The corpus the suite simulates for itself when no shards are given (``shards.synth``)."""

    n_subjects: int = _help("simulated subjects (one recording per subject and task)", 6)
    duration_s: float = _help("seconds per simulated recording", 60.0)
    shard_size: int = _help("windows per shard (small -> enough shards for every worker)", 16)


@dataclass(frozen=True)
class DataConfig:
    """The WebDataset stream (see ``pretrain/data.py``)."""

    shards: str = _help(
        "shard spec for a single corpus (folder/glob/brace/pipe:); empty + no [[data.corpora]] -> simulate the demo corpus",
        "",
    )
    corpora: tuple[CorpusConfig, ...] = _help("several corpora mixed by weight ([[data.corpora]] tables)", ())
    crop_s: float = _help("training length in seconds; windows are randomly cropped to it (whole patches)", 4.0)
    batch_size: int = _help("windows per batch per process", 8)
    shuffle_buffer: int = _help("samples held in the shuffle buffer of each worker", 256)
    num_workers: int = _help("DataLoader worker processes per training process", 0)
    epoch_steps: int = _help(
        "optimiser steps per data epoch; each epoch's stream is seeded with (seed, epoch, rank, worker) so resume is exact", 40
    )
    demo: DemoConfig = _help("simulated corpus used when no shards are given", factory=DemoConfig)
    demo_dir: str = _help("where the demo corpus and its shards go (default: {out_dir}/demo_data)", "")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone: ``EEGMambaConfig.from_size(size, **fields that are set)``."""

    size: Literal["tiny", "base", "large"] = _help("preset of foundation.EEGMambaConfig", "tiny")
    d_model: int | None = _help("override the preset's width", None)
    n_layers: int | None = _help("override the preset's depth", None)
    n_experts: int | None = _help("override the preset's MoE experts", None)
    top_k: int | None = _help("override the preset's experts per token", None)
    adapter: Literal["channel_patch", "st_adaptive"] | None = _help("input adapter", None)
    drop_path: float | None = _help("stochastic depth rate", None)


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the backbone learns to predict (``pretrain/objectives.py``)."""

    name: Literal["masked_token", "masked_stft"] = _help(
        "masked_token: LaBraM VQ codes with symmetric masking; masked_stft: SpecMoE Gaussian-masked STFT", "masked_stft"
    )
    tokenizer: str = _help(
        "masked_token: directory of a trained VQNSP (tokenizer/run.py output); 'auto' trains a small one first", ""
    )
    mask_ratio: float = _help("masked_token: fraction of (channel, patch) tokens masked", 0.5)
    symmetric: bool = _help("masked_token: also train on the complement mask (LaBraM)", True)
    moe_aux_weight: float = _help("weight of the MoE load-balancing auxiliary loss", 0.01)
    tokenizer_steps: int = _help("tokenizer='auto': training steps of the small tokenizer", 150)
    stft: STFTConfig = _help("masked_stft: STFT window/hop/target ([objective.stft])", factory=STFTConfig)
    mask: MaskConfig = _help("masked_stft: Gaussian soft-mask families and widths ([objective.mask])", factory=MaskConfig)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + linear warm-up + cosine decay (LaBraM's recipe by default)."""

    lr: float = _help("peak learning rate (per optimiser step)", 5e-4)
    min_lr: float = _help("learning rate at the end of the cosine", 1e-5)
    betas: tuple[float, float] = _help("AdamW betas", (0.9, 0.98))
    weight_decay: float = _help("AdamW weight decay (not on norms, biases, embeddings)", 0.05)
    warmup_steps: int = _help("linear warm-up steps", 10)
    grad_clip: float = _help("max global grad norm (0 = off)", 3.0)
    grad_accum: int = _help("micro-batches per optimiser step", 1)


@dataclass(frozen=True)
class TrainConfig:
    """Loop, checkpoints and logs (``pretrain/trainer.py``)."""

    out_dir: str = _help("run directory: checkpoints/, logs/, model/", "runs/pretrain-demo")
    max_steps: int = _help("optimiser steps", 120)
    save_every: int = _help("accelerator.save_state every N steps (and at the end)", 60)
    keep_checkpoints: int = _help("newest checkpoints kept (0 = all)", 2)
    log_every: int = _help("TensorBoard scalars every N steps", 10)
    seed: int = _help("seed of model init, masks and the data stream", 0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _help("auto: bf16 on CUDA, fp32 on CPU", "auto")
    progress: bool = _help("tqdm progress bar on the main process", True)
    log_sample_keys: bool = _help("write the shard URL + key of every sample each rank read to logs/samples-rank{R}.jsonl", False)
    stop_after: int | None = _help("stop (with a checkpoint) after this many steps, as if preempted; resume with --resume", None)
    inject_nan_at: int | None = _help("test hook: make the loss NaN at this step to exercise the NaN guard", None)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``pretrain/run.py`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
