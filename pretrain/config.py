"""Settings of a pretraining (or tokenizer-training) run: frozen dataclasses read from TOML.

``PretrainConfig`` is what ``pretrain/run.py`` parses (``--config FILE`` + ``--a.b value``
overrides, unknown keys are errors; ``runtime.configfile``); ``pretrain.train_tokenizer`` reuses the same
data / optimiser / trainer sections. ``[model]`` is the model's own config class
(``foundation.EEGMambaConfig``), not a mirror of it: ``size`` picks a preset, other keys override fields.
The defaults ARE the embedded demo: no shards given
-> simulate a small corpus, build its shards, pretrain a tiny backbone on a CPU in a few minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from foundation.augment import AugmentConfig
from foundation.model import EEGMambaConfig
from foundation.readout import check_read_layer, read_depth
from runtime.configfile import option
from tokenizer.spectral import MaskConfig, STFTConfig


@dataclass(frozen=True)
class CorpusConfig:
    """One corpus of shards in the training mix."""

    urls: str = option("shard folder, glob, brace pattern ({000000..000099}) or pipe: URL", "")
    weight: float = option("relative sampling weight in the mix", 1.0)
    name: str = option("label used in logs (default: the folder name)", "")


@dataclass(frozen=True)
class DemoConfig:
    """The corpus the suite simulates for itself when no shards are given (``shards.synth``)."""

    n_subjects: int = option("simulated subjects (one recording per subject and task)", 6)
    duration_s: float = option("seconds per simulated recording", 60.0)
    shard_size: int = option("windows per shard (small -> enough shards for every worker)", 16)


@dataclass(frozen=True)
class DataConfig:
    """The WebDataset stream (see ``pretrain/data.py``)."""

    shards: str = option(
        "shard spec for a single corpus (folder/glob/brace/pipe:); empty + no [[data.corpora]] -> simulate the demo corpus",
        "",
    )
    corpora: tuple[CorpusConfig, ...] = option("several corpora mixed by weight ([[data.corpora]] tables)", ())
    crop_s: float = option("training length in seconds; windows are randomly cropped to it (whole patches)", 4.0)
    longer_crops_s: tuple[float, ...] | None = option(
        "longer training lengths in seconds: each window is cropped to the longest of crop_s and these that it holds, "
        "one length per batch (e.g. [5.0] trains 5-s windows whole and 4-s ones at crop_s); none = every window at crop_s",
        None)
    batch_size: int = option("windows per batch per process", 8)
    shuffle_buffer: int = option("samples held in the shuffle buffer of each worker", 256)
    num_workers: int = option("DataLoader worker processes per training process", 0)
    epoch_steps: int = option(
        "optimiser steps per data epoch; each epoch's stream is seeded with (seed, epoch, rank, worker) so resume is exact", 40
    )
    demo: DemoConfig = option("simulated corpus used when no shards are given", factory=DemoConfig)
    demo_dir: str = option("where the demo corpus and its shards go (default: {out_dir}/demo_data)", "")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the backbone learns to predict (``pretrain/objectives.py``)."""

    name: Literal["masked_token", "masked_stft"] = option(
        "masked_token: LaBraM VQ codes with symmetric masking; masked_stft: SpecMoE Gaussian-masked STFT", "masked_stft"
    )
    tokenizer: str = option(
        "masked_token: directory of a trained VQNSP (pretrain.train_tokenizer output); 'auto' trains a small one first", ""
    )
    mask_ratio: float = option("masked_token: fraction of (channel, patch) tokens masked", 0.5)
    symmetric: bool = option("masked_token: also train on the complement mask (LaBraM)", True)
    moe_aux_weight: float = option(
        "multiplier of the backbone's MoE auxiliary loss (already weighted by model balance_coef/z_coef; "
        "the pre-fix setup was 0.01 with balance_coef 0.01)", 1.0)
    task_aware: bool = option("route each sample with its shards' task id (foundation.tasks); false = all task 0", True)
    augment: AugmentConfig = option(
        "training-time augmentation before the targets ([objective.augment]; off by default)", factory=AugmentConfig)
    tokenizer_steps: int = option("tokenizer='auto': training steps of the small tokenizer", 150)
    stft: STFTConfig = option("masked_stft: STFT window/hop/target ([objective.stft])", factory=STFTConfig)
    mask: MaskConfig = option("masked_stft: Gaussian soft-mask families and widths ([objective.mask])", factory=MaskConfig)
    band_power_weight: float = option(
        "masked_stft: weight of the per-token log band-power target (delta..gamma of the token's own patch); 0 = off", 3.0)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + linear warm-up + cosine decay (LaBraM's recipe by default)."""

    lr: float = option("peak learning rate (per optimiser step)", 5e-4)
    min_lr: float = option("learning rate at the end of the cosine", 1e-5)
    betas: tuple[float, float] = option("AdamW betas", (0.9, 0.98))
    weight_decay: float = option("AdamW weight decay (not on norms, biases, embeddings)", 0.05)
    warmup_steps: int = option("linear warm-up steps", 10)
    grad_clip: float = option("max global grad norm (0 = off)", 3.0)
    grad_accum: int = option("micro-batches per optimiser step", 1)


@dataclass(frozen=True)
class TrainConfig:
    """Loop, checkpoints and logs (``pretrain/trainer.py``)."""

    out_dir: str = option("run directory: checkpoints/, logs/, model/", "runs/pretrain-demo")
    max_steps: int = option("optimiser steps", 120)
    save_every: int = option("accelerator.save_state every N steps (and at the end)", 60)
    keep_checkpoints: int = option("newest checkpoints kept (0 = all)", 2)
    log_every: int = option("TensorBoard scalars every N steps", 10)
    seed: int = option("seed of model init, masks and the data stream", 0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option("auto: bf16 on CUDA, fp32 on CPU", "auto")
    progress: bool = option("tqdm progress bar on the main process", True)
    log_sample_keys: bool = option("write the shard URL + key of every sample each rank read to logs/samples-rank{R}.jsonl", False)
    stop_after: int | None = option("stop (with a checkpoint) after this many steps, as if preempted; resume with --resume", None)
    resume_override: str = option(
        "comma-separated settings (e.g. optim.lr,optim.warmup_steps) that --resume applies although they differ from "
        "the checkpoint's; any other difference refuses the resume", "")
    inject_nan_at: int | None = option("test hook: make the loss NaN at this step to exercise the NaN guard", None)
    compile: bool = option(
        "torch.compile the training step (one graph, CUDA graphs on a GPU); the first steps pay the compilation; "
        "false = eager", False)
    channel_bucket: int = option(
        "compile: pad each batch's channel count to a multiple of this, so a run compiles one graph per bucket", 8)
    overwrite: bool = option("a fresh run may start over in an out_dir that holds an earlier run (its checkpoints, "
                             "model/ and run_config.json are removed first); without it such a run is refused", False)


@dataclass(frozen=True)
class ProbeConfig:
    """The validation probe (``pretrain/probe.py``): frozen-feature logistic regression on held-out labelled shards."""

    shards: tuple[str, ...] = option(
        "labelled shard folders/globs to probe (kept out of the pretraining data; empty = no probe)", ())
    task: str = option("only the windows of this shard task (e.g. emotion); empty = every labelled window", "")
    every: int = option("probe every N steps (and at the end)", 200)
    folds: int = option("cross-validation folds by subject (recording where no subject is named)", 5)
    C: float = option("inverse L2 strength of the probe's logistic regression", 0.01)
    max_windows: int = option("at most this many evenly spaced windows per probe set", 2000)
    select: bool = option("export the weights of the step the probe selects instead of the last step", True)
    tolerance: float = option("select the latest step whose probe score is within this many standard errors of the "
                              "best (one-standard-error rule); 0 = the best-scoring step", 1.0)
    read_layer: int | None = option(
        "the backbone layer the probe reads, as finetuning heads do (FinetuneConfig.read_layer): k = the k-th, "
        "-1 = the last; None = the middle one, ceil(n_layers / 2), which heads read by default", None)

    def __post_init__(self):
        check_read_layer(self.read_layer, "probe.read_layer")
        if not (self.tolerance >= 0):
            raise ValueError(f"probe.tolerance: expected a number of standard errors >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``pretrain/run.py`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: EEGMambaConfig = option('the backbone: [model] size = "tiny"|"base"|"large" picks the preset, other keys override it',
                                  factory=lambda: EEGMambaConfig.from_size("tiny"))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    probe: ProbeConfig = option("validation probe of the frozen features ([probe])", factory=ProbeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        try:
            read_depth(self.probe.read_layer, self.model.n_layers)
        except ValueError as e:
            raise ValueError(f"probe.{e}") from None
