"""Training-time augmentation of EEG batches, for pretraining objectives and finetuning alike.

Users apply a model to recordings with other gains, units, channel counts and alignments than the
training set. :func:`augment` draws, per sample, the variations a deployment meets:

- ``gain``: one amplitude factor per sample, log-uniform in ``gain_range`` (amplifier gain, units);
- ``channel_gain_std``: a log-normal factor per channel (electrode impedance, reference);
- ``channel_dropout``: each real channel is removed (its ``channel_mask`` set False) with this
  probability, never the last one (other montages, channel subsets, bad channels);
- ``time_shift_s``: a circular shift by up to this many seconds, either way (event alignment).

All off by default (``AugmentConfig()`` is the identity). The pretraining objectives apply it before they
compute their targets (so a shifted input keeps an aligned target), and finetuning before the forward
pass, in training only. Input and output: ``x [b c t]`` float, ``channel_mask [b c]`` bool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from runtime.signal import SFREQ

__all__ = ["AugmentConfig", "augment"]


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` varies (each 0 / (1, 1) = off)."""

    channel_dropout: float = 0.0
    gain_range: tuple[float, float] = (1.0, 1.0)
    channel_gain_std: float = 0.0
    time_shift_s: float = 0.0
    sfreq: float = SFREQ

    def __post_init__(self) -> None:
        if not 0.0 <= self.channel_dropout < 1.0:
            raise ValueError(f"AugmentConfig.channel_dropout must be in [0, 1), got {self.channel_dropout}")
        lo, hi = self.gain_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"AugmentConfig.gain_range must be (lo, hi) with 0 < lo <= hi, got {self.gain_range}")
        if self.channel_gain_std < 0 or self.time_shift_s < 0 or self.sfreq <= 0:
            raise ValueError(
                "AugmentConfig.channel_gain_std and time_shift_s must be >= 0 and sfreq > 0, got "
                f"{self.channel_gain_std}, {self.time_shift_s}, {self.sfreq}"
            )

    @property
    def active(self) -> bool:
        return bool(self.channel_dropout or self.gain_range != (1.0, 1.0) or self.channel_gain_std or self.time_shift_s)


def augment(
    x: torch.Tensor, channel_mask: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A randomly varied copy of the batch: ``(x [b c t], channel_mask [b c])`` (inputs untouched)."""
    if not config.active:
        return x, channel_mask
    b, c, t = x.shape
    dev = generator.device if generator is not None else torch.device("cpu")

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev).to(x.device)

    out = x
    lo, hi = config.gain_range
    if (lo, hi) != (1.0, 1.0):
        gain = torch.exp(math.log(lo) + rand(b, 1, 1) * (math.log(hi) - math.log(lo)))
        out = out * gain.to(x.dtype)
    if config.channel_gain_std:
        noise = torch.randn(b, c, 1, generator=generator, device=dev).to(x.device)
        out = out * torch.exp(config.channel_gain_std * noise).to(x.dtype)
    if config.time_shift_s:
        max_shift = int(round(config.time_shift_s * config.sfreq))
        shifts = (rand(b) * (2 * max_shift + 1)).long() - max_shift  # [b] in [-max, max]
        idx = (torch.arange(t, device=x.device)[None, :] - shifts[:, None]) % t  # [b t]
        out = out.gather(2, idx[:, None, :].expand(b, c, t))
    mask = channel_mask
    if config.channel_dropout:
        drop = (rand(b, c) < config.channel_dropout) & channel_mask
        keep = channel_mask & ~drop
        # A sample that would lose every channel keeps its first real one.
        empty = ~keep.any(1)
        first = torch.zeros_like(channel_mask).scatter_(1, channel_mask.long().argmax(1, keepdim=True), True)
        mask = torch.where(empty[:, None], first & channel_mask, keep)
    return out, mask
