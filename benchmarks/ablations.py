"""Named ablations of ``benchmarks/downstream.py``: ``--ablation NAME`` runs the whole benchmark with one
change and writes it to ``benchmarks/results/ablation-NAME/`` (work dir ``runs/downstream-ablation-NAME``).

Each ablation is a set of overrides by section (dotted names reach nested dataclasses, e.g.
``"stft.window"``):

- ``model``: the backbone's config fields (``foundation.model.EEGMambaConfig``, the pretraining ``[model]``);
- ``objective``: ``pretrain.config.ObjectiveConfig`` fields, both objectives;
- ``tokenizer``: the VQ tokenizer's ``[model]`` fields (``tokenizer.vqnsp.VQNSPConfig``);
- ``finetune``: ``finetune.config.FinetuneConfig`` fields of every EEGMamba run;
- ``budget``: ``benchmarks.tasks.Budget`` fields (steps, epochs, LRs);
- ``protocol``: ``{"transductive": True}`` pretrains on every window (the test pools included) and tests
  on group fold ``seed mod k``, the protocol of the tables before issue 15.

The ``legacy-*`` ablations restore the behaviour before each model fix of issue 15 item 3 (and the
options of item 4), one at a time, so each fix has a row measured by the script. A field the installed
code does not have is an error naming the ablation and the fields it has (a fix that has not landed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ablation:
    description: str
    model: Mapping[str, Any] = field(default_factory=dict)
    objective: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    budget: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)


AUGMENT = {"augment.channel_dropout": 0.1, "augment.gain_range": (0.5, 2.0), "augment.channel_gain_std": 0.1,
           "augment.time_shift_s": 0.5}

ABLATIONS: dict[str, Ablation] = {
    # protocol and budget
    "transductive": Ablation("pretraining sees every window, test pools included; test = group fold seed mod k",
                             protocol={"transductive": True}),
    "pool-mean": Ablation("finetuned heads read the token mean instead of the class token", finetune={"pool": "mean"}),
    "finetune-lr-1e-3": Ablation("finetuning peak LR 1e-3 instead of 3e-3", budget={"finetune_lr": 1e-3}),
    "pretrain-400-steps": Ablation("400 instead of 1200 pretraining steps", budget={"pretrain_steps": 400}),
    # issue 15 item 3: each model fix undone on its own (the values README "Transfer fixes" lists as old)
    "legacy-task-embed": Ablation("task rows N(0,1), never trained in pretraining (task id 0 only), decayed LR",
                                  model={"task_embed": "legacy"}, objective={"task_aware": False}),
    "legacy-gate-noise": Ablation("absolute MoE gate noise (std 0.5-0.8 against a logit spread of 0.2)",
                                  model={"gate_noise": "absolute"}),
    "legacy-moe-balance": Ablation("MoE balance loss scaled twice: effective 1e-4 instead of 0.1",
                                   model={"balance_coef": 0.01}, objective={"moe_aux_weight": 0.01}),
    "legacy-patch-norm": Ablation("patch encoders' GroupNorm per 1-s patch (amplitude discarded), backbone and tokenizer",
                                  model={"patch_norm": "patch"}, tokenizer={"patch_norm": "patch"}),
    "legacy-codebook-restarts": Ablation("dead codes detected on the slow codebook EMA: no restart in 200 steps",
                                         tokenizer={"dead_decay": None}),
    "legacy-code-norm": Ablation("BatchNorm before the codebook: batch statistics in training, running ones in encode()",
                                 tokenizer={"code_norm": "batchnorm"}),
    "legacy-stft-leak": Ablation("masked STFT scored on the Gaussian fringe, no projection of the round-trip residual",
                                 objective={"mask.loss_threshold": 0.0, "mask.cleanup_iters": 0}),
    # issue 15 item 4: options the fixes added, off by default
    "channel-embed-position": Ablation("channel embedding from 10-05 coordinates (unseen montages land near their "
                                       "neighbours) instead of one row per vocabulary id", model={"channel_embed": "position"}),
    "stft-score-hard-mask": Ablation("masked STFT scores every bin the cleanup zeroes (mask >= 0.5), not only mask >= 0.9: "
                                     "about twice the scored area, all of it hidden", objective={"mask.loss_threshold": 0.5}),
    "augment": Ablation("augmentation in pretraining and finetuning: channel dropout 0.1, gain x0.5-2, per-channel gain "
                        "std 0.1, time shift up to 0.5 s", objective=dict(AUGMENT), finetune=dict(AUGMENT)),
}


def ablation(name: str) -> Ablation:
    try:
        return ABLATIONS[name]
    except KeyError:
        raise SystemExit(f"--ablation: unknown ablation {name!r}; known: {', '.join(sorted(ABLATIONS))}") from None


def apply(config: Any, overrides: Mapping[str, Any], *, where: str) -> Any:
    """``config`` (a frozen dataclass) with ``overrides`` (dotted names for nested dataclasses) replaced.

    Raises SystemExit naming ``where`` and the fields ``config`` has when a name is unknown.
    """
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    names = {f.name for f in dataclasses.fields(config)}
    unknown = [k for k in [*flat, *nested] if k not in names]
    if unknown:
        raise SystemExit(f"{where}: {type(config).__name__} has no field(s) {unknown} (has {sorted(names)}); "
                         "the fix this ablation undoes may not have landed")
    for head, sub in nested.items():
        flat[head] = apply(getattr(config, head), sub, where=f"{where}.{head}")
    return dataclasses.replace(config, **flat)
