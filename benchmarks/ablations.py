"""Named ablations of ``benchmarks/downstream.py``: ``--ablation NAME`` runs the whole benchmark with one change
and writes it to ``benchmarks/results/ablation-NAME/`` (work dir ``runs/downstream-ablation-NAME``); ``--ablation-table``
compares each with the main run, paired by seed.

Each ablation is a set of overrides by section (dotted names reach nested dataclasses, e.g. ``"stft.max_hz"``):

- ``model``: the backbone's config fields (``foundation.model.EEGMambaConfig``, the pretraining ``[model]``);
- ``objective``: ``pretrain.config.ObjectiveConfig`` fields;
- ``finetune``: ``finetune.config.FinetuneConfig`` fields of every EEGMamba run;
- ``budget``: ``benchmarks.tasks.Budget`` fields (steps, epochs).

Most undo one default of the suite, so each default has a row measured by the script. A field the installed code
does not have is an error naming the ablation and the fields it has.
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
    finetune: Mapping[str, Any] = field(default_factory=dict)
    budget: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changes_pretraining(self) -> bool:
        """Whether the backbones differ from the main run's (the model, the objective or the pretraining budget)."""
        return bool(self.model or self.objective
                    or any(k.startswith("pretrain_") or k == "probe_every" for k in self.budget))


AUGMENT = {"augment.channel_dropout": 0.1, "augment.gain_range": (0.5, 2.0), "augment.channel_gain_std": 0.1,
           "augment.time_shift_s": 0.5}

ABLATIONS: dict[str, Ablation] = {
    # the pretraining objective's defaults, one at a time
    "no-band-power": Ablation("masked STFT reconstruction alone: no per-token band-power target",
                              objective={"band_power_weight": 0.0}),
    "band-power-weight-10": Ablation("the per-token band-power target weighted 10 instead of 3",
                                     objective={"band_power_weight": 10.0}),
    "stft-full-band": Ablation("STFT target up to Nyquist (100 Hz) instead of the shards' 75-Hz band",
                               objective={"stft.max_hz": None}),
    "stft-demean": Ablation("each sample's mean log-magnitude removed from the targets (gain-free targets)",
                            objective={"stft.demean": True}),
    "stft-score-hidden": Ablation("masked STFT scored on every bin the cleanup zeroes (mask >= 0.5), the rim included, "
                                  "not only where mask >= 0.9", objective={"mask.loss_threshold": 0.5}),
    "width-96": Ablation("a wider backbone: d_model 96 instead of the tiny size's 64 (491k parameters instead of 301k)",
                         model={"d_model": 96}),
    "depth-4": Ablation("a deeper backbone: 4 BiMamba + MoE layers instead of the tiny size's 2", model={"n_layers": 4}),
    "pretrain-600-steps": Ablation("600 pretraining steps instead of the mode's", budget={"pretrain_steps": 600}),
    "pretrain-1200-steps": Ablation("1200 pretraining steps instead of the mode's", budget={"pretrain_steps": 1200}),
    "pretrain-4800-steps": Ablation("4800 pretraining steps instead of the mode's", budget={"pretrain_steps": 4800}),
    "pretrain-mix-sqrt": Ablation("each corpus weighted in the pretraining mix by the square root of its windows "
                                  "instead of by its windows (small corpora sampled more often)",
                                  budget={"pretrain_mix_power": 0.5}),
    "pretrain-other-seeds": Ablation("nothing but the pretraining's random stream: each backbone pretrained with seed "
                                     "s + 1000 instead of s (the same data, folds and finetuning seeds); its differences "
                                     "are how far pretraining noise alone moves a row", budget={"pretrain_seed_offset": 1000}),
    "pretrain-task-lengths": Ablation("each pretraining window cropped to the longest of 4 s and 5 s it holds (5 s, the "
                                      "seizure, sleep and EEGMAT windows' length, for all but the 4-s motor-imagery "
                                      "cues) instead of every window to 4 s", budget={"pretrain_longer_crops_s": (5.0,)}),
    "pretrain-half-data": Ablation("pretraining on half of each set's recordings (a stable hash of the recording id; the "
                                   "held-out groups removed as before) instead of all of them: how far the amount of "
                                   "pretraining data moves the features", budget={"pretrain_data_fraction": 0.5}),
    "pretrain-lr-2e-3": Ablation("pretraining's peak learning rate 2e-3 instead of the mode's 1e-3",
                                 budget={"pretrain_lr": 2e-3}),
    "objective-masked-token": Ablation("the suite's other objective: LaBraM masked prediction of VQ-NSP codes (a small "
                                       "tokenizer trained first on the same shards, 'auto') instead of masked STFT with "
                                       "the band-power target", objective={"name": "masked_token", "tokenizer": "auto"}),
    "objective-masked-token-tokenizer-600": Ablation(
        "LaBraM masked prediction of VQ-NSP codes as in objective-masked-token, its tokenizer trained 600 steps "
        "instead of 150", objective={"name": "masked_token", "tokenizer": "auto", "tokenizer_steps": 600}),
    "mask-fraction-75": Ablation("75 % of each STFT map hidden instead of 50 %", objective={"mask.fraction": 0.75}),
    "mask-fraction-30": Ablation("30 % of each STFT map hidden instead of 50 %", objective={"mask.fraction": 0.3}),
    "mask-band-bias": Ablation("half of the masks' frequency extents placed exactly on a physiological band "
                               "(delta, theta, alpha or beta) instead of uniformly", objective={"mask.band_bias": 0.5}),
    "mask-time-only": Ablation("every STFT mask hides whole time spans (all frequencies) instead of one of the time, "
                               "frequency and time-frequency families", objective={"mask.family_weights": (1.0, 0.0, 0.0)}),
    "mask-shared-channels": Ablation("one STFT mask per sample, hiding the same region in every channel, instead of "
                                     "one per channel", objective={"mask.share_across_channels": True}),
    # finetuning's defaults
    "head-init-random": Ablation("pretrained backbones finetune from a small random head, not the fitted probe (no LP-FT)",
                                 finetune={"head_init": "random"}),
    "finetune-best-epoch": Ablation("LP-FT keeps its best validation epoch even when it beats the probe by less than "
                                    "one standard error (probe_margin 0)", finetune={"probe_margin": 0.0}),
    "no-head-gain": Ablation("heads read the tokens alone, not each channel's log RMS amplitude beside them",
                             finetune={"gain": False}),
    "finetune-10-epochs": Ablation("the fast mode's finetuning run for 10 epochs (1 warm-up, no early stop) instead of 3",
                                   budget={"finetune_epochs": 10, "warmup_epochs": 1, "patience": 10}),
    "finetune-lr-1e-4": Ablation("finetuning's peak learning rate 1e-4 instead of the recipe's 5e-4 (every EEGMamba run)",
                                 finetune={"lr": 1e-4}),
    "read-last-layer": Ablation("heads read the backbone's last layer (every layer kept) instead of its middle one",
                                finetune={"read_layer": -1}),
    "pool-mean": Ablation("heads read the mean of all tokens instead of one mean per channel", finetune={"pool": "mean"}),
    "finetune-augment": Ablation("augmentation in finetuning only (every EEGMamba run; the main run's backbones): channel "
                                 "dropout 0.1, gain x0.5-2, per-channel gain std 0.1, time shift up to 0.5 s",
                                 finetune=dict(AUGMENT)),
    "no-calibration": Ablation("binary tasks decide at probability 0.5 instead of the validation-chosen threshold",
                               finetune={"calibrate": False}),
    # the backbone's options
    "legacy-patch-norm": Ablation("patch encoders' GroupNorm per 1-s patch (amplitude discarded)", model={"patch_norm": "patch"}),
    "legacy-task-embed": Ablation("task rows N(0,1), never trained in pretraining (task id 0 only), decayed LR",
                                  model={"task_embed": "legacy"}, objective={"task_aware": False}),
    "channel-embed-position": Ablation("channel embedding from 10-05 coordinates instead of one row per vocabulary id",
                                       model={"channel_embed": "position"}),
    "augment": Ablation("augmentation in pretraining and finetuning: channel dropout 0.1, gain x0.5-2, per-channel gain "
                        "std 0.1, time shift up to 0.5 s", objective=dict(AUGMENT), finetune=dict(AUGMENT)),
}


# The ablation that changes nothing but the pretraining's random stream: the report reads its differences as the
# noise of a pretraining change.
NULL_ABLATION = "pretrain-other-seeds"


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
