"""Pretrain the EEGMamba backbone: ``accelerate launch pretrain/run.py [--config FILE] [--key value ...]``.

With no arguments it runs the embedded demo end to end on a CPU in a few minutes: simulate a small
corpus (``shards.synth``), shard it (``shards.writer``), pretrain a tiny backbone with the masked-STFT
objective, checkpoint, and export ``{out_dir}/model`` (``EEGMamba.save_pretrained`` + ``preprocess.json``).

Examples::

    python pretrain/run.py                                    # the demo, one process
    accelerate launch pretrain/run.py --config pretrain/configs/base.toml --data.shards /data/shards/tueg
    accelerate launch pretrain/run.py --config pretrain/configs/base.toml --resume auto
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --main_process_port 29533 pretrain/run.py

``--help`` lists every key with its default. ``--resume auto`` continues from the newest checkpoint
of ``train.out_dir`` (``--resume DIR`` from a given one).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (accelerate launch pretrain/run.py): the script's folder is sys.path[0], where our
    # module names (config, data, trainer) could shadow others; import from the repository root instead.
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_here)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from dataclasses import replace

from accelerate import Accelerator
from accelerate.utils import set_seed

from foundation.model import EEGMamba
from pretrain.config import PretrainConfig
from pretrain.data import Corpus, crop_lengths
from pretrain.demo import corpora_or_demo
from pretrain.objectives import MaskedSTFTObjective, MaskedTokenObjective, Objective
from pretrain.trainer import TrainResult, accelerator_for, fit_and_export, run_entry
from runtime.configfile import ConfigError, to_dict
from runtime.signal import SFREQ

PROG = "pretrain/run.py"
MISSING_TOKENIZER = ("objective.name = 'masked_token' needs a trained VQ tokenizer: train one on the same shards with "
            "`accelerate launch -m pretrain.train_tokenizer --data.shards SHARDS --train.out_dir runs/tokenizer` and pass "
            "--objective.tokenizer runs/tokenizer/model, or pass --objective.tokenizer auto to train a small one "
            "first, or use --objective.name masked_stft (needs no tokenizer)")


def resolve_data(config: PretrainConfig, accelerator: Accelerator) -> list[Corpus]:
    """The corpora of the run; with no shards configured, build (once) and use the demo corpus."""
    return corpora_or_demo(config.data, config.train.out_dir, accelerator, seed=config.train.seed,
                           progress=config.train.progress)


def tokenizer_dir(config: PretrainConfig, accelerator: Accelerator, corpora: list[Corpus]) -> Path:
    """Where the frozen tokenizer of ``masked_token`` comes from (training a small one for 'auto')."""
    spec = config.objective.tokenizer
    if not spec:
        raise ConfigError(MISSING_TOKENIZER)
    if spec != "auto":
        return Path(spec)
    from pretrain.train_tokenizer import TokenizerRunConfig, train_tokenizer

    out = Path(config.train.out_dir) / "tokenizer"
    if (out / "model" / "config.json").is_file():
        accelerator.print(f"objective.tokenizer = auto: reusing the tokenizer trained in {out / 'model'}")
        return out / "model"
    steps = config.objective.tokenizer_steps
    accelerator.print(f"objective.tokenizer = auto: training a tokenizer for {steps} steps into {out}")
    tok_config = TokenizerRunConfig(
        data=config.data,
        optim=replace(config.optim, warmup_steps=min(config.optim.warmup_steps, max(1, steps // 10))),
        train=replace(config.train, out_dir=str(out), max_steps=steps, save_every=steps,
                      stop_after=None, inject_nan_at=None),
    )
    train_tokenizer(tok_config, resume="auto", accelerator=accelerator, corpora=corpora)
    return out / "model"


def build_objective(config: PretrainConfig, accelerator: Accelerator, corpora: list[Corpus]) -> Objective:
    """The configured objective around a fresh backbone sized for the crop length (in its own patches)."""
    patch_size = config.model.patch_size
    crop_patches = max(crop_lengths(config.data, SFREQ, patch_size)) // patch_size
    backbone = EEGMamba(replace(config.model, max_patches=max(config.model.max_patches, crop_patches)))
    obj = config.objective
    if obj.name == "masked_token":
        path = tokenizer_dir(config, accelerator, corpora)
        return MaskedTokenObjective.from_tokenizer_dir(
            backbone, path, mask_ratio=obj.mask_ratio, symmetric=obj.symmetric, moe_aux_weight=obj.moe_aux_weight,
            task_aware=obj.task_aware, augment=obj.augment,
        )
    return MaskedSTFTObjective(backbone, stft=obj.stft, mask=obj.mask, moe_aux_weight=obj.moe_aux_weight,
                               task_aware=obj.task_aware, augment=obj.augment, band_power_weight=obj.band_power_weight)


def run(config: PretrainConfig, resume: str | None = None, accelerator: Accelerator | None = None) -> TrainResult:
    """Pretrain as configured; returns the :class:`~pretrain.trainer.TrainResult` (export in ``{out_dir}/model``)."""
    if config.objective.name == "masked_token" and not config.objective.tokenizer:
        raise ConfigError(MISSING_TOKENIZER)  # before any data is built or read
    acc = accelerator or accelerator_for(config.optim, config.train)
    set_seed(config.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    corpora = resolve_data(config, acc)
    objective = build_objective(config, acc, corpora)
    set_seed(config.train.seed)
    patch_size = objective.backbone.config.patch_size
    n_params = sum(p.numel() for p in objective.backbone.parameters())
    announce = (
        f"pretraining an EEGMamba (d_model {config.model.d_model}, {config.model.n_layers} layers, "
        f"{n_params / 1e6:.2f} M parameters) with objective "
        f"{objective.name} on {', '.join(f'{c.name} ({len(c.urls)} shards, weight {c.weight:g})' for c in corpora)}; "
        f"{acc.num_processes} process(es) on {acc.device}, precision {acc.mixed_precision}"
    )
    result = fit_and_export(objective, corpora, config, acc, run_name="pretrain", announce=announce,
                            resume=resume, patch_size=patch_size)
    if result.export_dir is not None and acc.is_main_process:
        (result.export_dir / "pretraining.json").write_text(json.dumps(
            {"objective": objective.name, "steps": result.steps, "config": to_dict(config)}, indent=2))
    acc.wait_for_everyone()
    return result


def summary(result: TrainResult, corpora_hint: str = "") -> str:
    """Where everything went, for the end of a run."""
    out = result.out_dir
    lines = [f"done: {result.steps} steps, final loss {result.losses[-1]:.4f}" if result.losses else "done"]
    if corpora_hint:
        lines.append(f"  shards:      {corpora_hint}")
    lines += [
        f"  TensorBoard: tensorboard --logdir {out / 'logs'}",
        f"  checkpoint:  {result.checkpoint}  (continue with --resume auto)",
    ]
    if result.export_dir is not None:
        lines.append(f"  model:       {result.export_dir}  (EEGMamba.from_pretrained; preprocess.json beside it)")
    return "\n".join(lines)


def report(config: PretrainConfig, result: TrainResult) -> str:
    hint = config.data.shards or ", ".join(c.urls for c in config.data.corpora) or str(
        Path(config.data.demo_dir or Path(config.train.out_dir) / "demo_data") / "shards")
    return summary(result, hint)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 2 a bad config / data / checkpoint / resume (one line naming it), 3 the NaN/inf guard stopped."""
    return run_entry(PROG, __doc__.split("\n\n")[0], PretrainConfig, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
