"""Train the VQ-NSP tokenizer: ``accelerate launch -m pretrain.train_tokenizer [--config FILE] [--key value ...]``.

It lives in ``pretrain`` because it streams the pretraining shards (``pretrain.data``) through the
pretraining loop (``pretrain.trainer``); the ``tokenizer`` package stays a library of models that imports no
training code.

Reads the same shards as pretraining (``[data]`` section, same streaming pipeline) and runs on the
same Accelerate trainer (``pretrain.trainer``: checkpoints, ``--resume``, NaN guard, TensorBoard with
codebook perplexity and usage), then exports ``{out_dir}/model`` with ``VQNSP.save_pretrained``: the
folder ``pretrain/run.py --objective.name masked_token --objective.tokenizer DIR`` loads. ``[model]`` is
``tokenizer.VQNSPConfig`` itself: ``size`` picks the preset, other keys override fields.

With no arguments it trains a tiny tokenizer on the simulated demo corpus (a few minutes on a CPU).

Examples::

    python -m pretrain.train_tokenizer
    accelerate launch -m pretrain.train_tokenizer --data.shards /data/shards/tueg --model.size base --train.out_dir runs/tok-base
    accelerate launch pretrain/run.py --objective.name masked_token --objective.tokenizer runs/tok-base/model ...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

from accelerate import Accelerator
from accelerate.utils import set_seed

from pretrain.config import DataConfig, OptimConfig, TrainConfig
from pretrain.data import crop_lengths
from pretrain.demo import corpora_or_demo
from pretrain.objectives import TokenizerObjective
from pretrain.trainer import TrainResult, accelerator_for, fit_and_export, run_entry
from runtime.signal import SFREQ
from tokenizer.vqnsp import VQNSP, VQNSPConfig

PROG = "python -m pretrain.train_tokenizer"


@dataclass(frozen=True)
class TokenizerRunConfig:
    """Everything ``python -m pretrain.train_tokenizer`` needs (data / optim / train sections as in ``pretrain/run.py``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: VQNSPConfig = field(default_factory=lambda: VQNSPConfig.from_size("tiny"), metadata={
        "help": '[model] size = "tiny"|"base" picks the preset of tokenizer.VQNSPConfig, other keys override it'})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=10))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/tokenizer-demo", max_steps=150, save_every=75))


def build_tokenizer(model: VQNSPConfig, crop_patches: int) -> VQNSP:
    """A fresh VQNSP from the ``[model]`` section, with room for ``crop_patches`` patches."""
    return VQNSP(replace(model, max_patches=max(model.max_patches, crop_patches)))


def train_tokenizer(config: TokenizerRunConfig, resume: str | None = None, accelerator: Accelerator | None = None,
                    corpora=None) -> TrainResult:
    """Train and export a tokenizer; returns the trainer's result (``export_dir`` = ``{out_dir}/model``).

    ``corpora`` (a ``pretrain.data.Corpus`` list) skips resolving ``config.data`` again when a caller
    (``pretrain/run.py --objective.tokenizer auto``) already has them.
    """
    acc = accelerator or accelerator_for(config.optim, config.train)
    set_seed(config.train.seed)
    if corpora is None:
        corpora = corpora_or_demo(config.data, config.train.out_dir, acc, seed=config.train.seed,
                                  progress=config.train.progress)
    patch_size = config.model.patch_size
    crop = max(crop_lengths(config.data, SFREQ, patch_size))
    tokenizer = build_tokenizer(config.model, crop // patch_size)
    objective = TokenizerObjective(tokenizer)
    announce = (
        f"training a VQ-NSP tokenizer ({tokenizer.num_parameters() / 1e6:.2f} M parameters, "
        f"codebook {tokenizer.codebook_size} x {tokenizer.config.code_dim}) on "
        f"{', '.join(f'{c.name} ({len(c.urls)} shards)' for c in corpora)}"
    )
    result = fit_and_export(objective, corpora, config, acc, run_name="tokenizer", announce=announce,
                            resume=resume, patch_size=patch_size)
    acc.wait_for_everyone()
    return result


def report(config: TokenizerRunConfig, result: TrainResult) -> str:
    last = result.logs[-1] if result.logs else {}
    lines = [f"done: {result.steps} steps, loss {last.get('loss', float('nan')):.4f}, perplexity "
             f"{last.get('perplexity', float('nan')):.1f}, codebook usage {last.get('usage', float('nan')):.3f}",
             f"  TensorBoard: tensorboard --logdir {result.out_dir / 'logs'}",
             f"  checkpoint:  {result.checkpoint}  (continue with --resume auto)"]
    if result.export_dir is not None:
        lines.append(f"  tokenizer:   {result.export_dir}  (pretrain with --objective.name masked_token "
                     f"--objective.tokenizer {result.export_dir})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 2 a bad config / data / checkpoint / resume (one line naming it), 3 the NaN/inf guard stopped."""
    return run_entry(PROG, __doc__.split("\n\n")[0], TokenizerRunConfig, train_tokenizer, report, argv)


if __name__ == "__main__":
    sys.exit(main())
