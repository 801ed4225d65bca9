"""STFT maps of EEG and Gaussian-smoothed spectral masks: the SpecMoE-style pretraining target.

The STFT, mask sampling, corruption and the masked loss of one objective: the scored bins depend on the mask and
on the round trip through the inverse STFT, so the four live together.

The pipeline a pretraining objective runs on a batch ``x [b, c, t]`` (200 Hz, 100 µV units)::

    out = corrupt(x, generator=g, channel_mask=channel_mask)
    # out.x_masked [b, c, t]: the signal with the hidden time-frequency energy removed (what the backbone sees)
    # out.target   [b, c, f, n]: log-magnitude STFT of the clean signal (what it must reconstruct)
    # out.mask     [b, c, f, n]: soft mask in [0, 1], 1 = hidden (where the loss counts)
    loss = masked_spectral_loss(pred, out.target, out.mask, channel_mask)

Defaults and why
----------------
* STFT (``STFTConfig``): a 1-s periodic Hann window (``n_fft = 200`` samples at 200 Hz), so the bins are
  1 Hz apart and bin ``k`` is ``k`` Hz (0..100 Hz, ``f = 101`` bins); hop 50 samples (0.25 s, 75 % overlap,
  which satisfies the Hann COLA/NOLA condition so ``istft(stft(x)) == x``); ``center=True`` with reflect
  padding, so frame ``i`` is centred on sample ``i * hop`` and a window of ``t`` samples has
  ``n = t // hop + 1`` frames. One second resolves the delta..beta rhythms to 1 Hz while a 0.25-s hop
  still tracks bursts such as sleep spindles (0.5-2 s).
* Target: ``log(|S| + log_eps)`` of the clean STFT. EEG power falls roughly as 1/f, so a linear-magnitude
  MSE would be dominated by delta and ignore beta/gamma; the log evens the bands out. ``log_eps = 1e-2``
  (in the STFT of 100-µV units: about the magnitude of 0.1 µV white noise) keeps near-silent bins
  (padded channels) from producing huge negative targets. Only bins up to ``max_hz = 75`` are predicted
  (``STFTConfig.target_bins``): the suite's shards are low-passed at 75 Hz, and above it every bin sits at
  the floor, a quarter of the map that taught the model only a constant. ``demean`` (off) removes each
  sample's mean log-magnitude from the target; it leaves the spectral shape but throws away the amplitude
  that tells an ictal window from background (a frozen probe of Bonn fell from 0.94 to 0.85 balanced
  accuracy with it; in the downstream benchmark's ablation at 2400 steps the probes lost 0.096 on Bonn, 0.058 on
  sleep and 0.036 averaged over the tasks).
* Masks (``MaskConfig``): three families, chosen per (sample, channel) map by ``family_weights``:
  ``"time"`` (bands of frames, constant along frequency), ``"freq"`` (bands of bins, constant along time)
  and ``"timefreq"`` (rectangular patches). Each family is a union of hard bands, added until the masked
  count reaches ``round(fraction * size)`` (bands are trimmed so it never overshoots), then smoothed with
  a Gaussian (``sigma_time`` frames, ``sigma_freq`` bins) using half-sample-symmetric padding, which keeps
  the total mass, so the soft mask's mean equals the hard mask's: ``|mean - fraction| <= 1 / (2 * size)``
  (size = frames for "time", bins for "freq", bins x frames for "timefreq"). Soft edges mean a hidden
  alpha burst cannot be read off a sharp boundary in the unmasked neighbours, and the reconstruction loss
  weighs the mask's core more than its fringe. The sampler draws a fixed number of candidate bands per
  map at once and builds the union the round-by-round process would (no data-dependent loop and no host
  synchronisation, so it runs inside a compiled training step; ``tests/test_spectral.py`` checks the two
  agree in coverage, band counts and widths).
* ``band_bias``: the probability that a frequency band (or a patch's frequency extent) is placed exactly
  on one of the physiological bands (delta 0.5-4, theta 4-8, alpha 8-13, beta 13-30 Hz) instead of
  uniformly; 0 by default (uniform), raise it to make the model reconstruct whole rhythms.

Hidden means hidden (``MaskConfig.loss_threshold``, ``MaskConfig.cleanup_iters``)
----------------------------------------------------------------------------------
Two leaks of the plain "multiply by (1 - mask), iSTFT" corruption: (1) a Gaussian-edged mask is below 1
over a wide fringe, where the input still holds ``(1 - m) X``; 40-49% of a mask-weighted loss sat there,
so much of the task was undoing a gain. (2) The masked map is not the STFT of any signal; the iSTFT's
least-squares overlap-add leaves 0.1-0.3% of the energy in "fully" masked bins, and the log target makes
that -25 dB residual informative. The defaults therefore score only bins with ``mask >= loss_threshold``
(0.9) and, after the round trip, take the STFT of the corrupted signal again, zero the bins of the hard
mask (``mask >= 0.5``, the region the smoothing started from) and invert (``cleanup_iters = 1``
projection): the energy left in the scored bins falls from ~2e-3 to ~1e-5 of their clean energy (simulated
EEG). The soft edge then survives on the outside of the hard mask only, where the input keeps
``(1 - m) X``, and that fringe is not scored. Bins with ``0.5 <= mask < 0.9`` (the rim of the hidden region,
about half of it) are zeroed too but not scored: window overlap from their visible neighbours puts back 2.3 %
of their clean energy (0.9 % with five projections), a -16 dB residual the log target would make readable;
``benchmarks/ablations.py`` ``stft-score-hidden`` scores them anyway. ``loss_threshold = 0`` and
``cleanup_iters = 0`` restore the legacy corruption and loss.

Frames and backbone patches: with the defaults a 1-s patch of the backbone covers ``k = patch_size // hop = 4``
frame centres; ``to_patches`` rearranges ``[b, c, f, n] -> [b, c, p, (k f)]`` (dropping the last frame,
whose centre is the end of the window) so that one token can predict its own frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from foundation.index_checks import sync_free
from tokenizer import mask_union

FAMILIES: tuple[str, ...] = ("time", "freq", "timefreq")
PHYSIOLOGICAL_BANDS_HZ: tuple[tuple[float, float], ...] = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0))
_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
}
_TARGETS = ("log_magnitude", "magnitude")


@dataclass(frozen=True)
class STFTConfig:
    """Short-time Fourier transform settings (see the module docstring for why these defaults)."""

    n_fft: int = 200
    hop: int = 50
    win_length: int | None = None  # None -> n_fft
    window: str = "hann"  # "hann" | "hamming" | "blackman" | "rect" (periodic variants)
    center: bool = True
    sfreq: float = 200.0
    target: str = "log_magnitude"  # "log_magnitude" | "magnitude"
    log_eps: float = 1e-2
    max_hz: float | None = 75.0  # highest target bin (None = Nyquist); see ``target_bins``
    demean: bool = False  # subtract each sample's mean log-magnitude from the target (see ``demean_target``)

    def __post_init__(self) -> None:
        if self.n_fft < 2:
            raise ValueError(f"STFTConfig.n_fft must be >= 2, got {self.n_fft}")
        if not 1 <= self.hop <= self.window_length:
            raise ValueError(f"STFTConfig.hop must be in [1, win_length={self.window_length}], got {self.hop}")
        if self.win_length is not None and not 1 <= self.win_length <= self.n_fft:
            raise ValueError(f"STFTConfig.win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}")
        if self.window not in (*_WINDOWS, "rect"):
            raise ValueError(f"STFTConfig.window must be one of {sorted((*_WINDOWS, 'rect'))}, got {self.window!r}")
        if self.target not in _TARGETS:
            raise ValueError(f"STFTConfig.target must be one of {_TARGETS}, got {self.target!r}")
        if self.sfreq <= 0 or self.log_eps <= 0:
            raise ValueError(f"STFTConfig.sfreq and log_eps must be > 0, got {self.sfreq}, {self.log_eps}")
        if self.max_hz is not None and not 0 < self.max_hz:
            raise ValueError(f"STFTConfig.max_hz must be > 0 or None, got {self.max_hz}")
        if self.demean and self.target != "log_magnitude":
            raise ValueError("STFTConfig.demean needs target='log_magnitude' (a gain is an offset only in the log)")

    @property
    def target_bins(self) -> int:
        """Bins ``0..target_bins-1`` (at most ``max_hz``) are predicted and scored. The suite's shards are
        low-passed at 75 Hz by default: above it every bin sits at the ``log_eps`` floor, so scoring it
        only teaches the model a constant."""
        if self.max_hz is None:
            return self.n_freqs
        return min(self.n_freqs, int(math.floor(self.max_hz / self.bin_hz + 1e-9)) + 1)

    @property
    def window_length(self) -> int:
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def n_freqs(self) -> int:
        """Number of one-sided frequency bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def bin_hz(self) -> float:
        """Spacing of the frequency bins in Hz (1.0 with the defaults)."""
        return self.sfreq / self.n_fft

    def n_frames(self, length: int) -> int:
        """Number of frames the STFT of ``length`` samples has."""
        if self.center:
            return length // self.hop + 1
        if length < self.n_fft:
            raise ValueError(f"signal of {length} samples is shorter than STFTConfig.n_fft={self.n_fft}")
        return (length - self.n_fft) // self.hop + 1

    def frequencies(self) -> torch.Tensor:
        """Bin centre frequencies in Hz, ``[f]``."""
        return torch.arange(self.n_freqs, dtype=torch.float32) * self.bin_hz

    def make_window(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.window == "rect":
            return torch.ones(self.window_length, device=device, dtype=dtype)
        return _WINDOWS[self.window](self.window_length, periodic=True, device=device, dtype=dtype)


def stft(x: torch.Tensor, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Complex STFT per channel: ``x [..., t]`` (e.g. ``[b, c, t]``) -> ``[..., f, n]`` complex.

    Raises a ValueError when ``t`` is too short for the reflect padding of ``center=True``
    (needs ``t > n_fft // 2``).
    """
    if x.dim() < 1:
        raise ValueError("stft expects a tensor [..., t]")
    t = x.shape[-1]
    if config.center and t <= config.n_fft // 2:
        raise ValueError(f"stft: signal of {t} samples is too short for n_fft={config.n_fft} with center=True")
    lead = x.shape[:-1]
    real_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    flat = x.reshape(-1, t).to(real_dtype)
    spec = torch.stft(
        flat,
        n_fft=config.n_fft,
        hop_length=config.hop,
        win_length=config.window_length,
        window=config.make_window(x.device, real_dtype),
        center=config.center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: torch.Tensor, length: int, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Inverse of ``stft``: complex ``[..., f, n]`` -> real ``[..., length]`` (least-squares overlap-add).

    Eagerly, the overlap-add is ``ceil(n_fft / hop)`` shifted adds divided by a cached window envelope
    (:func:`_overlap_add_istft`); traced by ``torch.compile``, ``torch.istft`` (equal to float rounding).
    """
    if not spec.is_complex():
        raise ValueError(f"istft expects a complex spectrogram [..., f, n], got dtype {spec.dtype}")
    if spec.shape[-2] != config.n_freqs:
        raise ValueError(f"istft: spectrogram has {spec.shape[-2]} bins, STFTConfig gives {config.n_freqs}")
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:])
    real_dtype = torch.float64 if spec.dtype == torch.complex128 else torch.float32
    if not torch.compiler.is_compiling():
        return _overlap_add_istft(flat, length, config, real_dtype).reshape(*lead, length)
    out = torch.istft(
        flat,
        n_fft=config.n_fft,
        hop_length=config.hop,
        win_length=config.window_length,
        window=config.make_window(spec.device, real_dtype),
        center=config.center,
        normalized=False,
        onesided=True,
        length=length,
    )
    return out.reshape(*lead, length)


@functools.lru_cache(maxsize=64)
def _padded_window(config: STFTConfig, device, dtype: torch.dtype) -> torch.Tensor:
    """The analysis window centred in ``n_fft`` samples (zeros around a shorter ``win_length``), as
    ``torch.stft`` applies it."""
    window = config.make_window(device, dtype)
    left = (config.n_fft - config.window_length) // 2
    return F.pad(window, (left, config.n_fft - config.window_length - left))


@functools.lru_cache(maxsize=64)
def _inverse_envelope(config: STFTConfig, n_frames: int, length: int, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    """The overlap-added squared window over the samples ``istft`` returns, ``[length]``: what the
    least-squares inverse divides by. Computed once per shape on the host in float64, where the NOLA check
    (no sample left uncovered) costs no device synchronisation."""
    window = _padded_window(config, "cpu", torch.float64)
    envelope = _overlap_add(torch.ones(1, n_frames, config.n_fft, dtype=torch.float64), window.square(), config.hop)[0]
    envelope = _trim(envelope, length, config, fill=1.0)
    if envelope.abs().min().item() < 1e-11:
        raise ValueError(f"istft: the {config.window} window with hop {config.hop} leaves samples uncovered "
                         "(the NOLA condition fails): choose a smaller STFTConfig.hop")
    return envelope.to(device=device, dtype=dtype)


def _overlap_add(frames: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
    """``frames [b, n, n_fft]`` times ``window [n_fft]``, overlap-added at ``hop`` -> ``[b, (n - 1) * hop + n_fft]``:
    each frame cut into ``q = ceil(n_fft / hop)`` hop-long pieces, piece ``k`` of frame ``j`` added to output
    block ``j + k`` (one pass per piece, the window applied on the way)."""
    b, n, n_fft = frames.shape
    q = -(-n_fft // hop)
    if q * hop != n_fft:
        frames, window = F.pad(frames, (0, q * hop - n_fft)), F.pad(window, (0, q * hop - n_fft))
    pieces, window = frames.view(b, n, q, hop), window.view(q, hop)
    out = frames.new_empty(b, n + q - 1, hop)
    torch.mul(pieces[:, :, 0], window[0], out=out[:, :n])
    out[:, n:].zero_()
    for k in range(1, q):
        out[:, k : k + n].addcmul_(pieces[:, :, k], window[k])
    return out.view(b, -1)[:, : (n - 1) * hop + n_fft]


def _trim(signal: torch.Tensor, length: int, config: STFTConfig, fill: float = 0.0) -> torch.Tensor:
    """The ``length`` samples of an overlap-added ``signal [..., s]`` that ``torch.istft`` returns: past the
    centring pad, padded with ``fill`` where the frames end early."""
    start = config.n_fft // 2 if config.center else 0
    signal = signal[..., start : start + length]
    return F.pad(signal, (0, length - signal.shape[-1]), value=fill) if signal.shape[-1] < length else signal


def _overlap_add_istft(spec: torch.Tensor, length: int, config: STFTConfig, dtype: torch.dtype) -> torch.Tensor:
    """``torch.istft`` of ``spec [b, f, n]`` for ``center`` / ``onesided`` / unnormalised transforms, written out
    because its CPU form rebuilds the window envelope on every call and overlap-adds through a generic
    unfold backward: 2.0-2.3 -> 1.0 ms per inverse of a batch of 8 x 19 four-second maps, two of which run in
    every masked-STFT training step."""
    frames = torch.fft.irfft(spec.transpose(-1, -2), n=config.n_fft)
    signal = _trim(_overlap_add(frames, _padded_window(config, spec.device, dtype), config.hop), length, config)
    return signal / _inverse_envelope(config, spec.shape[-1], length, spec.device, dtype)


def spectral_target(spec: torch.Tensor, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Reconstruction target from a complex STFT ``[..., f, n]``: ``log(|S| + log_eps)`` or ``|S|``."""
    magnitude = torch.hypot(spec.real, spec.imag) if spec.is_complex() else spec.abs()  # hypot: cheaper than abs
    if config.target == "magnitude":
        return magnitude
    return torch.log(magnitude + config.log_eps)


def demean_target(target: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``target [b, c, ...]`` minus each sample's mean over its real channels (``channel_mask [b, c]``) and
    every other axis. In the log domain a recording's gain (electrode impedance, amplifier, skull) is an
    additive offset that differs between subjects; without it the target is the spectral *shape* and the
    relative level of channels and moments, which is what transfers across subjects."""
    weight = torch.ones(target.shape[:2], dtype=target.dtype, device=target.device)
    if channel_mask is not None:
        weight = channel_mask.to(target.dtype)
    w = weight.view(*weight.shape, *([1] * (target.dim() - 2))).expand_as(target)
    mean = (target * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)
    return target - mean.view(-1, *([1] * (target.dim() - 1)))


# Bands of the log band-power target (``band_log_power``): delta..gamma, as the band-power baseline reads them.
BAND_POWER_HZ: tuple[tuple[float, float], ...] = ((0.5, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 45.0))


def band_log_power(log_magnitude: torch.Tensor, patch_size: int, config: STFTConfig = STFTConfig(),
                   bands_hz: tuple[tuple[float, float], ...] = BAND_POWER_HZ) -> torch.Tensor:
    """Log power per band and backbone patch from a log-magnitude STFT: ``[b, c, f, n] -> [b, c, p, bands]``.

    Power is ``(exp(target) - log_eps)^2`` summed over the band's bins and averaged over the patch's
    ``k = patch_size // hop`` frames (the frames ``to_patches`` assigns it), then ``log(. + log_eps^2)``.
    """
    # The band membership is a property of the config, worked out in Python: no value is read back from the
    # device, so the target stays one traced graph under torch.compile.
    rows = [[float(lo <= i * config.bin_hz < hi) for lo, hi in bands_hz] for i in range(config.n_freqs)]
    if any(sum(row[k] for row in rows) == 0 for k in range(len(bands_hz))):
        raise ValueError(f"band_log_power: a band of {bands_hz} holds no bin at {config.bin_hz:g} Hz spacing")
    top = max(i for i, row in enumerate(rows) if any(row)) + 1  # bins above the highest band are never read
    select = torch.tensor(rows[:top], dtype=log_magnitude.dtype, device=log_magnitude.device)  # [f' bands]
    power = (log_magnitude[..., :top, :].exp() - config.log_eps).clamp_min(0.0).square()  # [b c f' n]
    bands = torch.matmul(select.t(), power)  # [b c bands n]
    per_patch = to_patches(bands, patch_size, config)  # [b c p (k bands)]
    k = patch_size // config.hop
    per_patch = rearrange(per_patch, "b c p (k m) -> b c p k m", k=k).mean(3)
    return torch.log(per_patch + config.log_eps ** 2)


def to_patches(spec_like: torch.Tensor, patch_size: int, config: STFTConfig = STFTConfig()) -> torch.Tensor:
    """Group STFT frames by backbone patch: ``[b, c, f, n] -> [b, c, p, (k f)]`` with ``k = patch_size // hop``.

    Frame ``j * k + i`` (``center=True``) is centred inside patch ``j``; frames past ``p * k`` (the one
    centred on the window's last sample) are dropped. Works for targets, masks and predictions alike.
    """
    if not config.center:
        raise ValueError("to_patches needs STFTConfig.center=True (frame i centred on sample i * hop)")
    if patch_size % config.hop:
        raise ValueError(f"to_patches: patch_size={patch_size} is not a multiple of STFTConfig.hop={config.hop}")
    k = patch_size // config.hop
    p = (spec_like.shape[-1] - 1) // k
    if p < 1:
        raise ValueError(f"to_patches: {spec_like.shape[-1]} frames hold no whole patch of {k} frames")
    return rearrange(spec_like[..., : p * k], "b c f (p k) -> b c p (k f)", k=k)


# --------------------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskConfig:
    """Soft time/frequency/time-frequency masks over STFT maps (see the module docstring).

    Widths are in frames (``time_width``, ``patch_time_width``) and bins (``freq_width``,
    ``patch_freq_width``); with the default STFT one frame is 0.25 s and one bin 1 Hz.
    """

    fraction: float = 0.5
    family_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # time, freq, timefreq
    time_width: tuple[int, int] = (4, 16)  # 1-4 s
    freq_width: tuple[int, int] = (3, 12)  # 3-12 Hz
    patch_time_width: tuple[int, int] = (4, 16)
    patch_freq_width: tuple[int, int] = (4, 16)
    sigma_time: float = 1.5  # frames
    sigma_freq: float = 1.5  # bins
    band_bias: float = 0.0  # probability a frequency extent is one of `bands_hz`
    bands_hz: tuple[tuple[float, float], ...] = field(default=PHYSIOLOGICAL_BANDS_HZ)
    sfreq: float = 200.0  # with n_freqs, gives the bin spacing used to place `bands_hz`
    share_across_channels: bool = False  # one mask per sample, hiding the same region in every channel
    max_rounds: int = 512  # cap on the candidate bands drawn per map (see _rounds)
    loss_threshold: float = 0.9  # score only bins with mask >= this (0 = legacy: every bin, weighted by the mask)
    cleanup_iters: int = 1  # STFT -> zero bins with mask >= 0.5 -> iSTFT projections after the round trip (0 = legacy)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"MaskConfig.fraction must be in (0, 1), got {self.fraction}")
        if len(self.family_weights) != len(FAMILIES) or min(self.family_weights) < 0 or sum(self.family_weights) <= 0:
            raise ValueError(
                f"MaskConfig.family_weights must be {len(FAMILIES)} non-negative weights for {FAMILIES} "
                f"with a positive sum, got {self.family_weights}"
            )
        for name in ("time_width", "freq_width", "patch_time_width", "patch_freq_width"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"MaskConfig.{name} must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
        if self.sigma_time < 0 or self.sigma_freq < 0:
            raise ValueError(f"MaskConfig.sigma_time/sigma_freq must be >= 0, got {self.sigma_time}, {self.sigma_freq}")
        if not 0.0 <= self.band_bias <= 1.0:
            raise ValueError(f"MaskConfig.band_bias must be in [0, 1], got {self.band_bias}")
        if self.band_bias > 0 and not self.bands_hz:
            raise ValueError("MaskConfig.bands_hz is empty but band_bias > 0")
        for lo, hi in self.bands_hz:
            if not 0 <= lo < hi:
                raise ValueError(f"MaskConfig.bands_hz entries must be (lo, hi) Hz with 0 <= lo < hi, got {(lo, hi)}")
        if self.max_rounds < 1:
            raise ValueError(f"MaskConfig.max_rounds must be >= 1, got {self.max_rounds}")
        if not 0.0 <= self.loss_threshold < 1.0:
            raise ValueError(f"MaskConfig.loss_threshold must be in [0, 1), got {self.loss_threshold}")
        if self.cleanup_iters < 0:
            raise ValueError(f"MaskConfig.cleanup_iters must be >= 0, got {self.cleanup_iters}")


def _randint(low: torch.Tensor | int, high: torch.Tensor | int, shape, generator, device) -> torch.Tensor:
    """Uniform integers in ``[low, high]`` (inclusive, elementwise tensors allowed)."""
    u = torch.rand(shape, generator=generator, device=device)
    low_t = torch.as_tensor(low, device=device)
    high_t = torch.as_tensor(high, device=device)
    return (low_t + torch.floor(u * (high_t - low_t + 1).float()).long()).clamp(max=high_t)


def _band_bins(config: MaskConfig, n_freqs: int, device) -> torch.Tensor:
    """``[n_bands, 2]`` (start, stop) bins of ``config.bands_hz`` (stop exclusive, clipped to the map)."""
    bin_hz = config.sfreq / (2 * (n_freqs - 1))
    rows = []
    for lo, hi in config.bands_hz:
        start = min(int(round(lo / bin_hz)), n_freqs - 1)
        stop = min(max(int(round(hi / bin_hz)), start + 1), n_freqs)
        rows.append((start, stop))
    return torch.tensor(rows, dtype=torch.long, device=device)


def sample_extent(
    m: int, length: int, width: tuple[int, int], generator, device, bands: torch.Tensor | None, bias: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Widths and starts ``[m]`` of random bands along an axis of ``length``; optionally snapped to ``bands``."""
    lo, hi = min(width[0], length), min(width[1], length)
    w = _randint(lo, hi, (m,), generator, device)
    start = _randint(0, length - w, (m,), generator, device)
    if bands is not None and bias > 0:
        snap = torch.rand(m, generator=generator, device=device) < bias
        choice = _randint(0, len(bands) - 1, (m,), generator, device)
        start = torch.where(snap, bands[choice, 0], start)
        w = torch.where(snap, bands[choice, 1] - bands[choice, 0], w)
    return w, start


# Rounds run one at a time once bands start being trimmed (the union is then within one band of its goal
# and each trimmed band adds about half of what is left): enough that under 1% of maps need _fill, with a
# deficit of one or two entries (tests/test_spectral.py measures both).
_FINAL_ROUNDS_1D, _FINAL_ROUNDS_2D = 16, 24


def _rounds(goal: int, mean_extent: float, final: int, config: MaskConfig) -> int:
    """Candidate bands drawn per map: three times the rounds the goal needs on average (overlaps make later
    bands add less), a margin and the ``final`` one-at-a-time rounds, capped by ``config.max_rounds``. A
    function of the shapes only: every batch of a run draws as many random numbers and runs the same ops."""
    return int(min(config.max_rounds, 3 * math.ceil(goal / max(mean_extent, 1.0)) + 8 + final))


def _untrimmed_union(first: torch.Tensor, rounds: int, fits) -> tuple[torch.Tensor, torch.Tensor]:
    """The leading rounds in which no band is trimmed, for all maps at once.

    ``first [m, s]`` long: the round in which each entry is first covered by a candidate band (``rounds`` =
    never); ``fits(deficit [m, rounds]) -> [m, rounds]`` bool: whether each round's band fits the deficit
    it meets. Returns ``(union [m, s] bool, resume [m] long)``: the union before the first band that must be
    trimmed, and that band's round (``rounds`` when none must be).
    """
    m = first.shape[0]
    counts = torch.zeros(m, rounds + 1, dtype=torch.long, device=first.device)
    counts.scatter_add_(1, first, torch.ones_like(first))
    before = counts[:, :rounds].cumsum(1) - counts[:, :rounds]  # [m, rounds] entries covered before each round
    resume = fits(before).long().cumprod(1).sum(1)  # the first round whose band does not fit
    return first < resume[:, None], resume


# Rounds per int64 bit set (the sign bit stays clear).
_ROUND_BITS = 62


def _round_groups(rounds: int) -> list[slice]:
    return [slice(r0, min(rounds, r0 + _ROUND_BITS)) for r0 in range(0, rounds, _ROUND_BITS)]


def _round_bits(cover: torch.Tensor) -> torch.Tensor:
    """``cover [..., g]`` bool (g <= 62 rounds) -> ``[...]`` int64 with bit r set where round r covers."""
    shifts = torch.arange(cover.shape[-1], device=cover.device)
    return (cover.long() << shifts).sum(-1)


def _lowest_round(bits: torch.Tensor, offset: int, never: int) -> torch.Tensor:
    """The lowest set bit of ``bits`` (int64) + ``offset``, or ``never`` where no bit is set. A rectangle
    covers a cell iff its bin's and its frame's bit sets share the round, so the first covering round of
    every cell is one AND of two small bit sets and one lowest-bit search, never an [m, f, n, rounds] array."""
    low = bits & -bits  # the lowest set bit alone: an exact power of two
    return torch.where(bits != 0, torch.log2(low.double()).round().long() + offset, never)


def _fill(hard: torch.Tensor, goal: int) -> torch.Tensor:
    """Complete rows of ``hard [m, s]`` still short of ``goal`` with their first free entries (a map whose
    candidate bands all ran out; the tests bound how rare that is)."""
    short = goal - hard.sum(1, keepdim=True)
    free = ~hard
    return hard | (free & (free.cumsum(1) <= short))


def hard_bands_1d(
    m: int, length: int, goal: int, width: tuple[int, int], config: MaskConfig, generator, device,
    bands: torch.Tensor | None = None,
) -> torch.Tensor:
    """Union of bands ``[m, length]`` bool with exactly ``goal`` True entries per row.

    The sequential sampler: each round adds a random band to every row short of its goal, trimmed at its
    end to the remaining deficit (so a snapped band stays anchored at its physiological lower edge). Here
    the rounds before the first trimmed band run together (:func:`_untrimmed_union`) and the last
    ``_FINAL_ROUNDS_1D`` one at a time (:func:`_mask_tail`): the same masks in distribution, with fixed shapes
    and no host sync.
    """
    rounds = _rounds(goal, (min(width[0], length) + min(width[1], length)) / 2, _FINAL_ROUNDS_1D, config)
    w, start = sample_extent(m * rounds, length, width, generator, device, bands, config.band_bias)
    w, start = w.view(m, rounds), start.view(m, rounds)
    if _native_rounds(w):
        zero = torch.zeros_like(w)
        return mask_union.union(zero, zero + 1, start, w, 1, length, goal, _FINAL_ROUNDS_1D).view(m, length)
    idx = torch.arange(length, device=device)
    first = torch.full((m, length), rounds, dtype=torch.long, device=device)
    for sl in _round_groups(rounds):
        cover = (idx[:, None] >= start[:, None, sl]) & (idx[:, None] < (start + w)[:, None, sl])  # [m, length, g]
        first = torch.minimum(first, _lowest_round(_round_bits(cover), sl.start, rounds))
    hard, resume = _untrimmed_union(first, rounds, lambda before: w <= goal - before)
    # A band is the rectangle [0, 1) x [start, start + w) of a one-row map; its trimming rule is then the
    # rectangles' (the deficit's area, first in time), which leaves the start where it is.
    r, ok = _tail_rounds(resume, rounds, _FINAL_ROUNDS_1D)
    zero, one = torch.zeros_like(r), torch.ones_like(r)
    tail = torch.ops.eegfm.mask_tail(hard.view(m, 1, length), zero, one, start.gather(1, r), w.gather(1, r) * ok, goal)
    return tail.view(m, length)


def hard_patches(
    m: int, n_freqs: int, n_frames: int, goal: int, config: MaskConfig, generator, device, bands: torch.Tensor | None
) -> torch.Tensor:
    """Union of rectangles ``[m, f, n]`` bool with exactly ``goal`` True entries per map.

    As :func:`hard_bands_1d` with rectangles, trimmed to the deficit's area first in time, then in
    frequency. Which rounds cover a bin (a frame) is a bit set; a cell's covering rounds are the AND of its
    bin's and frame's sets, so the work is a few passes over the ``[m, f, n]`` maps whatever the round count.
    """
    (flo, fhi), (tlo, thi) = config.patch_freq_width, config.patch_time_width
    area = (min(flo, n_freqs) + min(fhi, n_freqs)) * (min(tlo, n_frames) + min(thi, n_frames)) / 4
    rounds = _rounds(goal, area, _FINAL_ROUNDS_2D, config)
    fw, fs = sample_extent(m * rounds, n_freqs, config.patch_freq_width, generator, device, bands, config.band_bias)
    tw, ts = sample_extent(m * rounds, n_frames, config.patch_time_width, generator, device, None, 0.0)
    fw, fs, tw, ts = (v.view(m, rounds) for v in (fw, fs, tw, ts))
    if _native_rounds(fw):
        return mask_union.union(fs, fw, ts, tw, n_freqs, n_frames, goal, _FINAL_ROUNDS_2D)
    fi, ti = torch.arange(n_freqs, device=device), torch.arange(n_frames, device=device)
    first = torch.full((m, n_freqs * n_frames), rounds, dtype=torch.long, device=device)
    for sl in _round_groups(rounds):
        bits_f = _round_bits((fi[:, None] >= fs[:, None, sl]) & (fi[:, None] < (fs + fw)[:, None, sl]))  # [m, f]
        bits_t = _round_bits((ti[:, None] >= ts[:, None, sl]) & (ti[:, None] < (ts + tw)[:, None, sl]))  # [m, n]
        cell = (bits_f[:, :, None] & bits_t[:, None, :]).flatten(1)  # rounds covering each (bin, frame)
        first = torch.minimum(first, _lowest_round(cell, sl.start, rounds))

    def fits(before: torch.Tensor) -> torch.Tensor:
        deficit = goal - before
        return (fw <= deficit) & (tw <= torch.div(deficit, fw, rounding_mode="floor").clamp(min=1))

    hard, resume = _untrimmed_union(first, rounds, fits)
    r, ok = _tail_rounds(resume, rounds, _FINAL_ROUNDS_2D)
    tail = torch.ops.eegfm.mask_tail(hard.view(m, n_freqs, n_frames), fs.gather(1, r), fw.gather(1, r) * ok,
                                     ts.gather(1, r), tw.gather(1, r), goal)
    return tail


def _native_rounds(draws: torch.Tensor) -> bool:
    """Whether the rounds run in the C kernel (:mod:`tokenizer.mask_union`): an eager CPU run where it builds."""
    return draws.device.type == "cpu" and not sync_free(draws.device) and mask_union.available()


def _tail_rounds(resume: torch.Tensor, rounds: int, final: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[m, final]`` the candidate rounds from each map's first trimmed one, and whether they exist (a round
    past the last candidate gets width 0: it adds nothing)."""
    r = resume[:, None] + torch.arange(final, device=resume.device)
    return r.clamp(max=rounds - 1), (r < rounds).long()


@torch.library.custom_op("eegfm::mask_tail", mutates_args=())
def _mask_tail(hard: torch.Tensor, fs: torch.Tensor, fw: torch.Tensor, ts: torch.Tensor, tw: torch.Tensor,
               goal: int) -> torch.Tensor:
    """The rounds run one at a time, then :func:`_fill`: ``hard [m, f, n]`` bool and each map's next candidate
    rectangles ``[m, k]`` (start and width along each axis) -> the maps with exactly ``goal`` entries.

    Each round adds to every map still short its rectangle trimmed to the deficit's area, first in time, then
    in frequency (``tests/test_spectral.py`` checks this against the round-by-round sampler). A custom
    operator: a compiler would fuse the chain of rounds into one kernel that recomputes every earlier round
    (measured 60 ms instead of 9 ms on a CPU); opaque, it runs as written, and a CUDA graph still captures it.
    Where reading back is free (eager, CPU) each round works on the maps still short only.
    """
    m, n_freqs, n_frames = hard.shape
    fi, ti = torch.arange(n_freqs, device=hard.device), torch.arange(n_frames, device=hard.device)
    hard = hard.reshape(m, -1).clone()
    rows = torch.arange(m, device=hard.device)  # the maps each round works on
    cpu = not sync_free(hard.device)
    for j in range(fs.shape[1]):
        if cpu:  # reading back is free: drop the maps already at their goal
            rows = rows[hard.index_select(0, rows).sum(1) < goal]
            if not len(rows):
                break
        sub = hard.index_select(0, rows) if cpu else hard
        fsj, fwj, tsj, twj = (v[:, j].index_select(0, rows) if cpu else v[:, j] for v in (fs, fw, ts, tw))
        deficit = (goal - sub.sum(1)).clamp(min=0)
        fwj = torch.minimum(fwj, deficit)
        twj = torch.minimum(twj, torch.div(deficit, fwj.clamp(min=1), rounding_mode="floor").clamp(min=1))
        tsj = torch.minimum(tsj, n_frames - twj)
        band_f = (fi >= fsj[:, None]) & (fi < (fsj + fwj)[:, None]) & (deficit > 0)[:, None]
        band_t = (ti >= tsj[:, None]) & (ti < (tsj + twj)[:, None])
        sub = sub | (band_f[:, :, None] & band_t[:, None, :]).flatten(1)
        hard = hard.index_copy(0, rows, sub) if cpu else sub
    return _fill(hard, goal).view(m, n_freqs, n_frames)


@_mask_tail.register_fake
def _mask_tail_shape(hard, fs, fw, ts, tw, goal):
    return torch.empty_like(hard)


def _gaussian_smooth(x: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """Gaussian blur of float ``x`` along ``dim`` with half-sample-symmetric padding (preserves the sum).

    One matrix product with the blur's ``[length, length]`` matrix (the padding folded into it): a single
    operation whatever the batch, and faster on CPUs than a one-channel convolution.
    """
    length = x.shape[dim]
    if sigma <= 0 or length < 2:
        return x
    return torch.matmul(x.movedim(dim, -1), _smoothing_matrix(length, sigma, x.device, x.dtype)).movedim(-1, dim)


@functools.lru_cache(maxsize=32)
def _smoothing_matrix(length: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[length, length]`` M with ``(x @ M)[i] = sum_k kernel[k] x[reflect(i + k - radius)]``: a normalised
    Gaussian kernel of radius ``min(ceil(3 sigma), length)`` over the signal mirrored about its edges
    (half-sample symmetric: mass pushed past an edge folds back in, so every row of M sums to 1)."""
    radius = min(int(math.ceil(3.0 * sigma)), length)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    src = torch.arange(length)[:, None] + torch.arange(-radius, radius + 1)[None, :]  # [out, k] source index
    src = torch.where(src < 0, -src - 1, torch.where(src >= length, 2 * length - 1 - src, src))
    matrix = torch.zeros(length, length, dtype=torch.float64)
    matrix.scatter_add_(1, src, kernel.expand(length, -1).contiguous())  # [out, source]
    return matrix.t().contiguous().to(device=device, dtype=dtype)  # x @ M: [..., source] -> [..., out]


def _hard_masks(family: torch.Tensor, n_freqs: int, n_frames: int, config: MaskConfig, generator, device,
                bands: torch.Tensor | None) -> torch.Tensor:
    """Hard masks ``[m, f, n]`` bool of the family each map drew (``family [m]``).

    Where reading back is not free (``foundation.index_checks.sync_free``: a GPU, compiling) every map draws
    a candidate of each family and keeps its own: fixed shapes, no host sync. Eagerly on a CPU each family is
    drawn for its maps only (a third of the work; the same masks in distribution, not the same random draws).
    """
    m = family.shape[0]
    goals = [int(round(config.fraction * size)) for size in (n_frames, n_freqs, n_freqs * n_frames)]

    def draw(k: int, count: int) -> torch.Tensor:
        if k == 0:
            return hard_bands_1d(count, n_frames, goals[0], config.time_width, config, generator, device)[:, None, :]
        if k == 1:
            return hard_bands_1d(count, n_freqs, goals[1], config.freq_width, config, generator, device, bands)[:, :, None]
        return hard_patches(count, n_freqs, n_frames, goals[2], config, generator, device, bands)

    if sync_free(device):
        fam = family.view(m, 1, 1)
        return torch.where(fam == 0, draw(0, m), torch.where(fam == 1, draw(1, m), draw(2, m)))
    hard = torch.zeros(m, n_freqs, n_frames, dtype=torch.bool, device=device)
    for k in range(len(FAMILIES)):
        rows = (family == k).nonzero().flatten()
        if len(rows):
            hard[rows] = draw(k, len(rows)).expand(-1, n_freqs, n_frames)
    return hard


def sample_masks(
    batch_shape: tuple[int, int],
    n_freqs: int,
    n_frames: int,
    config: MaskConfig = MaskConfig(),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    return_families: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Soft masks ``[b, c, f, n]`` in [0, 1] (1 = hidden), one family per (b, c) map (or per b when shared).

    ``return_families=True`` also returns the family index per map ``[b, c]`` (into ``FAMILIES``).
    Each map's mean equals ``config.fraction`` to within ``1 / (2 * size)`` (see the module docstring).
    Every map draws a candidate of each family and keeps the one its family names: a fixed amount of work
    and no host synchronisation, so the sampler runs inside a compiled (CUDA-graphed) training step.
    """
    if len(batch_shape) != 2:
        raise ValueError(f"sample_masks: batch_shape must be (b, c), got {batch_shape}")
    if n_freqs < 1 or n_frames < 1:
        raise ValueError(f"sample_masks: n_freqs and n_frames must be >= 1, got {n_freqs}, {n_frames}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    b, c = batch_shape
    c_draw = 1 if config.share_across_channels else c
    m = b * c_draw
    weights = torch.tensor(config.family_weights, dtype=torch.float32, device=device)
    family = torch.multinomial(weights, m, replacement=True, generator=generator)
    bands = _band_bins(config, n_freqs, device) if config.bands_hz else None
    hard = _hard_masks(family, n_freqs, n_frames, config, generator, device, bands).float()
    fam = family.view(m, 1, 1)
    # Each family is smoothed along the axes it varies on only, so a "time" mask stays exactly constant
    # along frequency (and a "freq" mask along time).
    masks = torch.where(fam == 0, hard, _gaussian_smooth(hard, config.sigma_freq, dim=1))
    masks = torch.where(fam == 1, masks, _gaussian_smooth(masks, config.sigma_time, dim=2))
    masks = masks.clamp_(0.0, 1.0).reshape(b, c_draw, n_freqs, n_frames).expand(b, c, n_freqs, n_frames)
    family = family.reshape(b, c_draw).expand(b, c)
    if config.share_across_channels:
        masks, family = masks.contiguous(), family.contiguous()
    return (masks, family) if return_families else masks


def apply_mask(spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Remove the hidden energy: ``spec [..., f, n] * (1 - mask)`` (complex or real)."""
    if spec.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"apply_mask: spectrogram {tuple(spec.shape)} and mask {tuple(mask.shape)} differ in [f, n]")
    return _scale_spectrogram(spec, (1.0 - mask).to(spec.real.dtype if spec.is_complex() else spec.dtype))


def _scale_spectrogram(spec: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``spec [..., f, n] * factor [..., f, n]`` for a real factor. Eagerly, a complex ``spec`` has its real and
    imaginary parts scaled as two real products: torch would first copy the factor to complex and then run
    a complex product (1.0 -> 0.5 ms for a batch of 8 x 19 four-second maps)."""
    if not spec.is_complex() or torch.compiler.is_compiling() or factor.shape != spec.shape:
        return spec * factor
    parts = torch.view_as_real(spec)
    out = torch.empty_like(parts)
    torch.mul(parts[..., 0], factor, out=out[..., 0])
    torch.mul(parts[..., 1], factor, out=out[..., 1])
    return torch.view_as_complex(out)


def masked_spectral_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, channel_mask: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Mask-weighted MSE: ``sum(w * (pred - target)^2) / sum(w)`` over real channels only, with
    ``w = mask * (mask >= threshold)`` (``threshold`` 0: every bin weighted by its mask; the objective
    passes ``MaskConfig.loss_threshold`` so the visible fringe of a soft mask is not scored).

    ``pred``, ``target``, ``mask``: same shape ``[b, c, ...]`` (e.g. ``[b, c, f, n]`` or the ``to_patches``
    layout); ``channel_mask [b, c]`` bool, True = real channel. Unmasked bins (mask 0) contribute nothing,
    so predicting them is free. Returns a scalar (0 when nothing is masked).
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"masked_spectral_loss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    pred = pred.float()  # a bf16 prediction is scored in float32 (the sums run over millions of bins)
    weight = mask.to(pred.dtype)
    if threshold > 0:
        weight = weight * (mask >= threshold).to(pred.dtype)
    if channel_mask is not None:
        if channel_mask.shape != pred.shape[:2]:
            raise ValueError(
                f"masked_spectral_loss: channel_mask {tuple(channel_mask.shape)} must be [b, c] = {tuple(pred.shape[:2])}"
            )
        weight = weight * channel_mask.to(pred.dtype).view(*channel_mask.shape, *([1] * (pred.dim() - 2)))
    denominator = weight.sum().clamp_min(1e-8)
    return (weight * (pred - target.to(pred.dtype)) ** 2).sum() / denominator


class Corrupted(NamedTuple):
    """Output of ``corrupt``; unpacks as ``x_masked, target, mask = corrupt(x)``."""

    x_masked: torch.Tensor  # [b, c, t]
    target: torch.Tensor  # [b, c, f, n] spectral_target of the clean signal
    mask: torch.Tensor  # [b, c, f, n] in [0, 1], 1 = hidden (0 on padded channels)


def corrupt(
    x: torch.Tensor,
    stft_config: STFTConfig = STFTConfig(),
    mask_config: MaskConfig = MaskConfig(),
    generator: torch.Generator | None = None,
    channel_mask: torch.Tensor | None = None,
) -> Corrupted:
    """SpecMoE-style input corruption of ``x [b, c, t]``: STFT -> soft mask -> iSTFT, then
    ``mask_config.cleanup_iters`` projections that zero the hard mask's bins (``mask >= 0.5``) of the
    corrupted signal's STFT (see the module docstring).

    Returns ``Corrupted(x_masked [b, c, t], target [b, c, f, n], mask [b, c, f, n])``. The mask is
    zeroed on padded channels (``channel_mask [b, c]`` False) so its statistics describe real channels.
    Runs under ``no_grad`` and outside autocast: the corruption is data, not part of the model, and the
    masks, STFTs and targets stay float32 when the model trains in bf16.
    """
    if x.dim() != 3:
        raise ValueError(f"corrupt expects x [b, c, t], got shape {tuple(x.shape)}")
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x32 = x.float()
        spec = stft(x32, stft_config)
        b, c, f, n = spec.shape
        mask = sample_masks((b, c), f, n, mask_config, generator=generator, device=x.device)
        if channel_mask is not None:
            if channel_mask.shape != (b, c):
                raise ValueError(f"corrupt: channel_mask {tuple(channel_mask.shape)} must be [b, c] = {(b, c)}")
            mask = mask * channel_mask[:, :, None, None].to(mask.dtype)
        x_masked = istft(apply_mask(spec, mask), x.shape[-1], stft_config)
        if mask_config.cleanup_iters:
            # Zero the hard mask's bins (mask >= 0.5), not just the scored ones (>= loss_threshold): the
            # visible content of the inner fringe would otherwise leak into the scored bins through the
            # window's overlap (residual 1e-3 instead of 1e-5 of the clean energy).
            keep = (mask < 0.5).to(x32.dtype)  # a real factor: 3x cheaper than a complex where
            for _ in range(mask_config.cleanup_iters):
                x_masked = istft(_scale_spectrogram(stft(x_masked, stft_config), keep), x.shape[-1], stft_config)
        x_masked = x_masked.to(x.dtype)
        return Corrupted(x_masked, spectral_target(spec, stft_config), mask)
