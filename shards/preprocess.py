"""From a raw recording to model-ready arrays: EEG picks, filtering, resampling, units, windows.

Pipeline (defaults follow LaBraM / CBraMod, DESIGN.md "shards/: the sample contract"):

1. classify every channel with :mod:`shards.vocabulary`; keep EEG channels with a canonical name, report
   every other one (non-EEG, unknown name, duplicate, flat for the whole recording) in ``dropped_channels``;
2. band-pass ``l_freq``-``h_freq`` (``h_freq`` clamped below the Nyquist rate of the *original* rate, since a
   128-Hz Emotiv file has nothing above 64 Hz) and notch at the mains frequency when it is below Nyquist;
3. resample to ``sfreq``. Default ("fft"): steps 2 and 3 are one rfft / irfft pair of the mirror-padded
   recording multiplied by |H(f)|^2 of the Butterworth high-pass (order 2) x low-pass (order 4) x notch
   (Q = f0 / 2) cascade: exactly the zero-phase magnitude response sosfiltfilt would give (defaults at 200 Hz:
   within 0.1 dB from 0.5 to 40 Hz, -6 dB at l_freq and h_freq, -67 dB at 90 Hz; notch: zero at f0, -6 dB at
   f0 +- 1 Hz, -0.2 dB at f0 +- 10 Hz), at under a third of the CPU
   of sosfiltfilt + resample_poly. "iir" (time domain) and "fir" (MNE) remain selectable;
4. volts -> µV / 100 ("100 µV units"), float32, no clipping;
5. cut fixed-length windows inside labelled segments, dropping flat / NaN / over-amplitude windows, each
   drop counted by reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import mne
import numpy as np
import scipy.fft
import scipy.signal

from shards.vocabulary import CHANNELS, classify_channels

__all__ = [
    "PreprocessConfig",
    "Signal",
    "Segment",
    "Window",
    "NoEEGError",
    "preprocess_raw",
    "cut_windows",
    "UNIT_SCALE",
]

# Volts -> "100 µV units" (LaBraM: read in µV, divide by 100).
UNIT_SCALE = 1e6 / 100.0

# The highest low-pass edge we allow relative to the original rate: an IIR low-pass needs room for its
# transition band below Nyquist, so 0.45 x sfreq (90% of Nyquist).
_NYQUIST_FRACTION = 0.9

# Channel types that a file (FIF, BrainVision, or our reader) states as definitely not EEG.
_NON_EEG_TYPES = {"eog", "emg", "ecg", "resp", "stim", "bio", "syst", "chpi", "exci", "ias", "gsr", "temperature",
                  "ref_meg", "mag", "grad", "hbo", "hbr", "fnirs_cw_amplitude", "dbs", "whitened"}


class NoEEGError(ValueError):
    """A recording with no usable EEG channel; the message names the source and the channels found."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters (frozen; validated on construction).

    sfreq: common output rate in Hz. l_freq / h_freq: band-pass edges in Hz (None = no high/low-pass).
    notch: mains frequency in Hz (50 or 60 per corpus; None = no notch). window_s / stride_s: window length
    and hop in seconds (stride None = window_s, no overlap). max_abs_uv: drop a window when any
    |value| exceeds it in µV (CBraMod uses 100; None = keep all). flat_uv: drop a window when any channel's
    peak-to-peak is below it in µV (None = keep all). filter_method: "fft" (default: the zero-phase
    Butterworth response |H(f)|^2 of the "iir" design, applied to the whole recording in the frequency domain
    together with the resampling), "iir" (the same Butterworth cascade run forwards and backwards with
    scipy's sosfilt, low-pass edge in the resampling FIR) or "fir" (MNE's default windowed-sinc design).
    """

    sfreq: float = 200.0
    l_freq: float | None = 0.1
    h_freq: float | None = 75.0
    notch: float | None = 50.0
    window_s: float = 10.0
    stride_s: float | None = None
    max_abs_uv: float | None = 500.0
    flat_uv: float | None = 1.0
    filter_method: str = "fft"

    def __post_init__(self) -> None:
        def positive(name: str, value, allow_none: bool) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"PreprocessConfig.{name} must be a positive number, got {value!r}")

        positive("sfreq", self.sfreq, False)
        positive("l_freq", self.l_freq, True)
        positive("h_freq", self.h_freq, True)
        positive("notch", self.notch, True)
        positive("window_s", self.window_s, False)
        positive("stride_s", self.stride_s, True)
        positive("max_abs_uv", self.max_abs_uv, True)
        positive("flat_uv", self.flat_uv, True)
        nyquist = self.sfreq / 2
        if self.h_freq is not None and self.h_freq >= nyquist:
            raise ValueError(f"PreprocessConfig.h_freq={self.h_freq} must be below the Nyquist rate {nyquist} of sfreq")
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ValueError(f"PreprocessConfig.l_freq={self.l_freq} must be below h_freq={self.h_freq}")
        if self.filter_method not in ("fft", "iir", "fir"):
            raise ValueError(
                f"PreprocessConfig.filter_method must be 'fft', 'iir' or 'fir', got {self.filter_method!r}")
        if self.window_samples < 1:
            raise ValueError(f"PreprocessConfig.window_s={self.window_s} is shorter than one sample at {self.sfreq} Hz")
        if self.stride_samples < 1:
            raise ValueError(f"PreprocessConfig.stride_s={self.stride_s} is shorter than one sample at {self.sfreq} Hz")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sfreq))

    @property
    def stride_samples(self) -> int:
        return int(round((self.window_s if self.stride_s is None else self.stride_s) * self.sfreq))


@dataclass
class Signal:
    """A preprocessed recording.

    data: ``[C, T]`` float32 in 100 µV units at ``sfreq``; channels: the ``C`` canonical names in row order;
    dropped_channels: raw name -> reason for every channel left out; notes: what was adapted (clamped
    low-pass, skipped notch, ...); orig_sfreq: the file's rate; source: what it was read from (for messages).
    """

    data: np.ndarray
    channels: list[str]
    sfreq: float
    dropped_channels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    orig_sfreq: float | None = None
    source: str | None = None

    @property
    def duration_s(self) -> float:
        return self.data.shape[1] / self.sfreq


@dataclass(frozen=True)
class Segment:
    """A labelled stretch of a recording, in seconds from its first sample (label None = unlabeled)."""

    onset_s: float
    duration_s: float
    label: int | None = None
    label_name: str | None = None


@dataclass
class Window:
    """One window: ``data [C, n]`` float32 is exactly ``signal.data[:, start:start + n]``.

    index: position among the kept windows of the recording (0, 1, ...); start: first sample at the
    output rate; onset_s: start / sfreq.
    """

    index: int
    start: int
    onset_s: float
    data: np.ndarray
    label: int | None = None
    label_name: str | None = None

    @property
    def n_samples(self) -> int:
        return self.data.shape[1]


def _select_channels(
    raw: mne.io.BaseRaw, channel_map: Mapping[str, str] | None, source: str
) -> tuple[list[int], list[str], dict[str, str]]:
    names = raw.ch_names
    types = raw.get_channel_types()
    if channel_map:
        for raw_name, canonical in channel_map.items():
            if canonical not in CHANNELS[1:]:
                raise ValueError(
                    f"{source}: channel_map[{raw_name!r}] = {canonical!r} is not in shards.vocabulary.CHANNELS"
                )
    keep_idx: list[int] = []
    keep_names: list[str] = []
    first_raw: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for i, (name, ch_type, (canonical, reason)) in enumerate(zip(names, types, classify_channels(names))):
        if channel_map and name in channel_map:
            canonical, reason = channel_map[name], "eeg (explicit mapping)"
        elif canonical is not None and ch_type in _NON_EEG_TYPES:
            # The file knows better than the name (e.g. a FIF "Fp1" recorded as an EOG proxy).
            canonical, reason = None, f"non-eeg: channel type {ch_type}"
        if canonical is None:
            dropped[name] = reason
            continue
        if canonical in first_raw:
            dropped[name] = f"duplicate of {canonical} (kept {first_raw[canonical]!r})"
            continue
        first_raw[canonical] = name
        keep_idx.append(i)
        keep_names.append(canonical)
    return keep_idx, keep_names, dropped


def _no_eeg(source: str, raw: mne.io.BaseRaw, dropped: Mapping[str, str]) -> NoEEGError:
    found = ", ".join(f"{name!r} ({reason})" for name, reason in dropped.items()) or "none"
    return NoEEGError(f"{source}: no usable EEG channel among {len(raw.ch_names)} channels: {found}")


# Resampling ratios are approximated by fractions with denominators <= 1000 when that is within 2 ppm of the
# exact ratio (Bonn's 173.61 -> 200 Hz becomes 1061/921, 1.1 ppm): the anti-alias kernel shrinks from 400k to
# 21k taps (6 ms -> <1 ms per Bonn segment), and 2 ppm (7 ms per hour of recording, under 1.5 samples at
# 200 Hz) is ten times below the clock tolerance of EEG amplifiers (~20 ppm crystals).
_MAX_RATE_ERROR = 2e-6


@lru_cache(maxsize=64)
def _polyphase_kernel(up: int, down: int, cutoff: float) -> np.ndarray:
    """Anti-alias / anti-image FIR for resample_poly: scipy's default length and window, our cutoff.

    Same as resample_poly's own design (2 x 10 x max(up, down) + 1 taps, Kaiser beta 5: ~54 dB stop band,
    pass-band ripple ~0.02 dB) except that the -6 dB cutoff is ``cutoff`` (a fraction of the up-sampled
    Nyquist rate) instead of always the lower Nyquist rate, so the band-pass's upper edge is folded into the
    resampling convolution we pay for anyway. The transition band is ~0.16 x min(orig, target) Hz wide
    around the cutoff (e.g. 75 +- 16 Hz at 200 Hz). Designed once per
    rate pair: for Bonn's 1061/921 the 21k-tap design costs more than resampling its 4097 samples.
    """
    max_rate = max(up, down)
    half_len = 10 * max_rate
    kernel = scipy.signal.firwin(2 * half_len + 1, cutoff, window=("kaiser", 5.0))
    kernel.setflags(write=False)
    return kernel


@lru_cache(maxsize=256)
def _rate_ratio(orig: float, target: float) -> tuple[int, int]:
    """(up, down) with up / down = target / orig within 2 ppm, smallest denominator that allows."""
    exact = target / orig
    ratio = Fraction(exact).limit_denominator(1000)
    if abs(float(ratio) - exact) > _MAX_RATE_ERROR * exact:
        ratio = Fraction(exact).limit_denominator(100_000)
    return ratio.numerator, ratio.denominator


def _resample(data: np.ndarray, orig: float, target: float, h_freq: float | None = None) -> np.ndarray:
    """``[C, T]`` at ``orig`` Hz -> ``[C, ceil(T * up / down)]`` at ``target`` Hz (polyphase, up/down ~ target/orig).

    ``h_freq``: also low-pass at this edge (Hz, -6 dB) in the same linear-phase FIR; None = at the lower of
    the two Nyquist rates (plain anti-aliasing).
    """
    up, down = _rate_ratio(orig, target)
    if up == down:
        return data
    # Polyphase (the method MNE uses for method="polyphase") costs O(T x taps / up) and needs no
    # power-of-two padding; MNE's default FFT method was 2-4x slower on the shared recordings. We call scipy
    # directly only to reuse the cached kernel.
    edge = min(orig, target) / 2 if h_freq is None else min(h_freq, orig / 2, target / 2)
    cutoff = round(edge / (orig * up / 2), 12)  # rounded: a stable cache key
    kernel = _polyphase_kernel(up, down, cutoff).astype(data.dtype)
    return scipy.signal.resample_poly(data, up, down, axis=-1, window=kernel)


@lru_cache(maxsize=64)
def _iir_sos(sfreq: float, l_freq: float | None, h_freq: float | None, notch: float | None) -> np.ndarray | None:
    """One second-order-section cascade: Butterworth high-pass (order 2) + low-pass (order 4) + mains notch.

    Designed with MNE (construct_iir_filter) and cached per rate; applying all sections in a single
    zero-phase pass (sosfiltfilt) halves the padding/copy overhead of running MNE's filter_data and
    notch_filter one after the other (measured 81 ms -> 58 ms for 64 ch x 125 s at 200 Hz).
    """
    sections = []
    if l_freq is not None:
        hp = mne.filter.construct_iir_filter(
            dict(order=2, ftype="butter", output="sos"), l_freq, None, sfreq, "highpass", return_copy=False,
            verbose="error",
        )
        sections.append(hp["sos"])
    if h_freq is not None:
        lp = mne.filter.construct_iir_filter(
            dict(order=4, ftype="butter", output="sos"), h_freq, None, sfreq, "lowpass", return_copy=False,
            verbose="error",
        )
        sections.append(lp["sos"])
    if notch is not None:
        # Quality 25 = a -3 dB stop band of 2 Hz at 50 Hz: wide enough for mains drift, narrow for EEG.
        b, a = scipy.signal.iirnotch(notch, Q=notch / 2.0, fs=sfreq)
        sections.append(scipy.signal.tf2sos(b, a))
    if not sections:
        return None
    return np.concatenate(sections, axis=0)  # scipy's Cython sosfilt needs it writeable (never modified)


@lru_cache(maxsize=64)
def _iir_cascade(sfreq: float, l_freq, h_freq, notch, dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(sos [S, 6], zi [S, 1, 2])`` in ``dtype``: the cascade and its step-response initial state, cached.

    scipy.signal.sosfiltfilt solves for ``zi`` (a linear system per section) on every call; for Bonn's
    4097-sample segments that was half the cost of filtering.
    """
    sos = _iir_sos(sfreq, l_freq, h_freq, notch)
    if sos is None:
        return None
    zi = scipy.signal.sosfilt_zi(sos)[:, np.newaxis, :]
    return np.ascontiguousarray(sos, dtype=dtype), np.ascontiguousarray(zi, dtype=dtype)


def _zero_phase(sos: np.ndarray, zi: np.ndarray, data: np.ndarray, padlen: int) -> np.ndarray:
    """scipy.signal.sosfiltfilt(sos, data, axis=-1, padtype="even", padlen=padlen) with a precomputed ``zi``.

    Same algorithm step for step (mirror-extend, forward pass from the steady state of the first sample,
    backward pass from the steady state of the last output, crop), so the result equals scipy's to rounding;
    the response is |H(f)|^2 with zero phase.
    """
    if padlen > 0:
        ext = np.concatenate((data[:, padlen:0:-1], data, data[:, -2 : -padlen - 2 : -1]), axis=1)
    else:
        ext = data
    y, _ = scipy.signal.sosfilt(sos, ext, axis=-1, zi=zi * ext[:, :1])
    y = y[:, ::-1]
    y, _ = scipy.signal.sosfilt(sos, y, axis=-1, zi=zi * y[:, :1])
    y = y[:, ::-1]
    return y[:, padlen : y.shape[1] - padlen] if padlen > 0 else y


def _smooth(k: int) -> bool:
    """Whether k has no prime factor above 5 (pocketfft's fast lengths)."""
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k == 1


@lru_cache(maxsize=256)
def _fft_response(orig: float, n_fft: int, n_bins: int, l_freq, h_freq, notch, gain: float) -> np.ndarray:
    """``[n_bins]`` float32: |H(f)|^2 of the Butterworth + notch cascade at f = k x orig / n_fft, times gain.

    |H|^2 is exactly the magnitude response of the same cascade run forwards and backwards (sosfiltfilt),
    with zero phase.
    """
    sos = _iir_sos(orig, l_freq, h_freq, notch)
    if sos is None:
        response = np.full(n_bins, gain, np.float32)
    else:
        freqs = np.arange(n_bins) * (orig / n_fft)
        _, h = scipy.signal.sosfreqz(sos, worN=freqs, fs=orig)
        response = (np.abs(h) ** 2 * gain).astype(np.float32)
    response.setflags(write=False)
    return response


@lru_cache(maxsize=256)
def _fft_plan(n: int, orig: float, target: float, n_out: int) -> tuple[int, int, int]:
    """(L, M, pad): FFT lengths in and out (M / L ~ target / orig) and the mirror pad in input samples.

    The pad is >= 3 s on each side and pad x M / L is a whole number, so the crop lands exactly on output
    sample 0. With the 2-ppm ratio from :func:`_rate_ratio`, L and M are multiples of its denominator and
    numerator, which for Bonn (921 = 3 x 307, 1061 prime) forces slow Bluestein transforms; so we look for a
    5-smooth pair (L, M) whose ratio is off by at most ``_MAX_DRIFT_SAMPLES`` output samples over the
    whole recording (Bonn, 4097 samples: 5625 -> 6480, 6.4 ppm, 0.035 samples at the end: 50 us forward
    transform instead of 130 us), and
    fall back to the exact 2-ppm grid when there is none.
    """
    up, down = _rate_ratio(orig, target)
    pad0 = max(int(3 * orig), 1)
    need = n + 2 * pad0
    if not (_smooth(up) and _smooth(down)):
        exact = target / orig
        for n_fft in _SMOOTH[np.searchsorted(_SMOOTH, need) : np.searchsorted(_SMOOTH, 2 * need)].tolist():
            m_fft = int(round(n_fft * exact))
            if m_fft < 2 or not _smooth(m_fft) or abs(m_fft / n_fft - exact) * n_out > _MAX_DRIFT_SAMPLES:
                continue
            step = n_fft // math.gcd(n_fft, m_fft)  # pad x M / L is whole when pad is a multiple of this
            pad = step * -(-pad0 // step)
            if n_fft >= n + pad + pad0:
                return n_fft, m_fft, pad
    pad = down * -(-pad0 // down)
    k = -(-(n + 2 * pad) // down)
    while not _smooth(k):  # L = down x k and M = up x k: a 5-smooth k keeps them as fast as they can be
        k += 1
    return down * k, up * k, pad


# Largest timing error the FFT path's own rate approximation may add at the last output sample (0.05
# samples = 0.25 ms at 200 Hz, growing linearly from 0 at the first sample; a 50-Hz component moves by at
# most 0.08 rad of phase). For comparison, the 2-ppm rule of _rate_ratio allows 1.4 samples per hour.
_MAX_DRIFT_SAMPLES = 0.05

# Every 5-smooth number up to 2^31 (a few thousand): candidate FFT lengths.
_SMOOTH = np.array(sorted(
    2**a * 3**b * 5**c for a in range(32) for b in range(20) for c in range(14) if 2**a * 3**b * 5**c < 2**31
), dtype=np.int64)


def _fft_filter_resample(data: np.ndarray, orig: float, target: float, l_freq, h_freq, notch) -> np.ndarray:
    """Zero-phase band-pass + notch and resampling of ``[C, T]`` float32 in one rfft / irfft pair.

    ``[C, T]`` at ``orig`` -> ``[C, ceil(T x up / down)]`` at ``target`` (the same length and sample times
    as the polyphase path). The recording is mirror-padded by >= 3 s on each side (as sosfiltfilt is in the
    "iir" path), transformed once, multiplied by the cascade's |H(f)|^2, cut (downsampling: a brick wall at
    the new Nyquist rate, where the 75-Hz Butterworth is already -21 dB) or zero-extended (upsampling: no
    images at all), and transformed back; the pad is cropped. Why: sosfilt runs one dependent recursion per
    sample (~7 ns/sample/pass measured, two passes), and resample_poly another convolution; two FFTs of the
    padded recording cost less than a third of that for 64 channels (EEGMMIDB: 14 ms vs 34-40 ms per run).
    Edges: the pads are a mirror image, as in the "iir" path; the circular transform joins the two pads'
    outer ends, >= 3 s away from real samples.
    """
    up, down = _rate_ratio(orig, target)
    n_ch, n = data.shape
    n_out = -(-n * up // down)
    # The pad is a whole number of `down` input samples so that the crop is sample-exact at the output rate.
    n_fft, m_fft, pad = _fft_plan(n, float(orig), float(target), n_out)
    up, down = m_fft, n_fft  # the grid actually used (pad x up / down is a whole number of output samples)
    right = n_fft - n - pad
    if 0 < pad < n and 0 < right < n:  # np.pad(mode="reflect") without its generic-case overhead
        ext = np.concatenate((data[:, pad:0:-1], data, data[:, -2 : -right - 2 : -1]), axis=1)
    else:  # a recording shorter than its pad: repeated reflections
        ext = np.pad(data, ((0, 0), (pad, right)), mode="reflect" if n > 1 else "edge")
    spectrum = scipy.fft.rfft(ext, axis=-1)  # [C, L/2 + 1] complex64
    n_bins = min(n_fft, m_fft) // 2 + 1
    response = _fft_response(float(orig), n_fft, n_bins, l_freq, h_freq, notch, m_fft / n_fft)
    if min(n_fft, m_fft) % 2 == 0:
        # The shared Nyquist bin of an even length has no partner frequency in the other length: drop it
        # rather than fold it (the low-pass is >= 5 dB down there already).
        response = np.concatenate((response[:-1], np.zeros(1, np.float32)))
    out = np.zeros((n_ch, m_fft // 2 + 1), dtype=spectrum.dtype)
    np.multiply(spectrum[:, :n_bins], response, out=out[:, :n_bins])
    del spectrum, ext
    y = scipy.fft.irfft(out, m_fft, axis=-1)
    start = pad * up // down
    return y[:, start : start + n_out]


def _filter(data: np.ndarray, sfreq: float, l_freq, h_freq, notch, method: str) -> np.ndarray:
    """Zero-phase band-pass + notch of ``[C, T]`` (float32 or float64, dtype kept) at ``sfreq``."""
    if method == "iir":
        # IIR (Butterworth, forwards and backwards): linear cost per sample and fine for a 0.1-Hz high-pass,
        # where a FIR needs ~33 s of taps (longer than many short recordings, e.g. Bonn's 23.6-s segments).
        cascade = _iir_cascade(float(sfreq), l_freq, h_freq, notch, data.dtype.str)
        if cascade is None:
            return data
        # Mirror padding (like MNE's "reflect_limited"), 3 s or what the signal allows. scipy's default odd
        # padding puts a step of twice the end value into the pad, and the 0.1-Hz high-pass rings from it:
        # on a 10-Hz test tone the last 2.5 s were off by 50% of the amplitude, against 5% with "even".
        padlen = max(min(data.shape[-1] - 1, int(3 * sfreq)), 0)
        return _zero_phase(*cascade, data, padlen)
    dtype = data.dtype
    data = data.astype(np.float64)  # MNE's FIR path accepts float64 only
    if l_freq is not None or h_freq is not None:
        data = mne.filter.filter_data(data, sfreq, l_freq, h_freq, method="fir", n_jobs=1, copy=False, verbose="error")
    if notch is not None:
        data = mne.filter.notch_filter(data, sfreq, [notch], method="fir", n_jobs=1, copy=False, verbose="error")
    return data.astype(dtype, copy=False)


def preprocess_raw(
    raw: mne.io.BaseRaw,
    config: PreprocessConfig = PreprocessConfig(),
    *,
    source: str | None = None,
    channel_map: Mapping[str, str] | None = None,
) -> Signal:
    """Preprocess one recording into a :class:`Signal` ``[C, T]`` (100 µV units, ``config.sfreq``).

    ``channel_map`` maps raw names to canonical names explicitly and wins over the alias rules: adapters
    use it for names the vocabulary cannot know, e.g. ``{"EEG": "EEG"}`` for Bonn's position-less channel.
    Raises :class:`NoEEGError` (a ValueError) when no channel is usable; ``source`` names the recording in
    that message (default: the raw's file name).
    """
    if source is None:
        source = str(raw.filenames[0]) if getattr(raw, "filenames", None) and raw.filenames[0] else "<raw>"
    orig = float(raw.info["sfreq"])
    keep_idx, keep_names, dropped = _select_channels(raw, channel_map, source)
    if not keep_idx:
        raise _no_eeg(source, raw, dropped)
    notes: list[str] = []
    # Remove each channel's offset in float64 (Emotiv and DC-coupled amplifiers sit thousands of µV off zero,
    # and a 0.1-Hz high-pass would otherwise ring for tens of seconds from the first sample), then work in
    # float32 in 100-µV units: float32 filtering differs from float64 by ~2e-4 relative RMS (measured on
    # EEGMMIDB), below the float16 resolution of the shards.
    bad_time = None
    src = raw._data if getattr(raw, "preload", False) and isinstance(getattr(raw, "_data", None), np.ndarray) else None
    means = None if src is None else np.array([src[c].mean() for c in keep_idx])
    if means is not None and np.isfinite(means).all():
        # Preloaded and finite (a NaN/inf anywhere makes its channel's mean non-finite): subtract and cast
        # row by row straight into the float32 array, one pass over the float64 samples instead of four
        # (pick copy, isfinite, mean removal, scale + cast), with no float64 temporaries.
        data = np.empty((len(keep_idx), src.shape[1]), dtype=np.float32)
        for i, c in enumerate(keep_idx):
            np.subtract(src[c], means[i], out=data[i], casting="same_kind")
        data *= np.float32(UNIT_SCALE)
    else:
        volts = raw.get_data(picks=keep_idx)  # [C, T] float64 volts (a copy: picks index the buffer)
        if not volts.flags.writeable:
            volts = np.array(volts)
        bad = ~np.isfinite(volts)
        bad_time = bad.any(axis=0) if bad.any() else None
        if bad_time is not None:
            # Filters spread one NaN over the whole channel; zero the gaps for filtering and mark them NaN
            # again afterwards so only the windows that touch them are dropped.
            volts[bad] = 0.0
            notes.append(f"{int(bad_time.sum())} samples with NaN/inf (windows touching them are dropped)")
        volts -= volts.mean(axis=1, keepdims=True)
        data = (volts * UNIT_SCALE).astype(np.float32)
        del volts

    if config.flat_uv is not None:
        ptp = np.ptp(data, axis=1) * 100.0  # µV
        flat = ptp < config.flat_uv
        if flat.any():
            for i in np.flatnonzero(flat):
                dropped[raw.ch_names[keep_idx[i]]] = f"flat channel (peak-to-peak {ptp[i]:.3g} µV over the recording)"
            keep_names = [n for n, f in zip(keep_names, flat) if not f]
            data = data[~flat]
            if not keep_names:
                raise _no_eeg(source, raw, dropped)

    h_freq = config.h_freq
    if h_freq is not None and h_freq > _NYQUIST_FRACTION * orig / 2:
        h_freq = round(_NYQUIST_FRACTION * orig / 2, 3)
        notes.append(f"h_freq lowered to {h_freq:g} Hz: below Nyquist of {orig / 2:g} Hz")
    l_freq = config.l_freq
    if l_freq is not None and h_freq is not None and l_freq >= h_freq:
        raise ValueError(f"{source}: l_freq={l_freq} Hz is not below the usable h_freq={h_freq} Hz at {orig:g} Hz")

    # Filter at the lower of the two rates: downsampling first (its anti-alias filter covers everything above
    # the new Nyquist) or upsampling last (it adds nothing above the old one) means fewer samples to filter.
    filter_rate = min(orig, config.sfreq)
    notch = config.notch
    if notch is not None and notch + 1.0 >= filter_rate / 2:
        notes.append(f"notch at {notch:g} Hz skipped: above Nyquist of {filter_rate / 2:g} Hz")
        notch = None
    # With the IIR method and a rate change, the low-pass edge goes into the resampling FIR (linear phase,
    # delay compensated, so still zero-phase): the convolution is paid for anyway, the FIR is flatter in the
    # pass band (+-0.02 dB up to h_freq - 0.08 x rate, where the zero-phase Butterworth is already -0.5 dB at
    # 2/3 h_freq) and steeper (-54 dB at h_freq + 0.08 x rate), and the IIR cascade keeps only the
    # high-pass and notch sections.
    fold_lp = orig != config.sfreq and config.filter_method == "iir"
    iir_h = None if fold_lp else h_freq
    fir_h = h_freq if fold_lp else None
    if config.filter_method == "fft":
        # The Butterworth design of the "iir" path, designed at the original rate, applied in one go.
        data = _fft_filter_resample(data, orig, config.sfreq, l_freq, h_freq, notch)
    elif orig > config.sfreq:
        data = _resample(data, orig, config.sfreq, fir_h)
        data = _filter(data, config.sfreq, l_freq, iir_h, notch, config.filter_method)
    else:
        data = _filter(data, orig, l_freq, iir_h, notch, config.filter_method)
        data = _resample(data, orig, config.sfreq, fir_h)

    out = np.ascontiguousarray(data, dtype=np.float32)
    if bad_time is not None:
        out[:, _map_mask(bad_time, orig, config.sfreq, out.shape[1])] = np.nan
    return Signal(
        data=out, channels=list(keep_names), sfreq=float(config.sfreq), dropped_channels=dropped, notes=notes,
        orig_sfreq=orig, source=source,
    )


def _map_mask(mask: np.ndarray, orig: float, target: float, n_out: int) -> np.ndarray:
    """Boolean ``[T]`` at ``orig`` -> ``[T']`` at ``target``: every output sample overlapping a marked input."""
    idx = np.flatnonzero(mask)
    lo = np.floor(idx * target / orig).astype(np.int64)
    hi = np.minimum(np.ceil((idx + 1) * target / orig).astype(np.int64), n_out)
    edges = np.zeros(n_out + 1, np.int64)
    np.add.at(edges, np.clip(lo, 0, n_out), 1)
    np.add.at(edges, hi, -1)
    return np.cumsum(edges[:-1]) > 0


def cut_windows(
    signal: Signal, segments: Sequence[Segment] | None, config: PreprocessConfig = PreprocessConfig()
) -> tuple[list[Window], Counter]:
    """Cut ``[C, n]`` windows (n = window_s x sfreq, hop stride_s) inside each segment.

    ``segments=None`` means the whole recording, unlabeled. Returns the kept windows and a Counter of drops
    by reason: "short" (a segment shorter than one window, counted once per segment), "nan" (any NaN/inf),
    "flat" (any channel with peak-to-peak below ``flat_uv``), "amplitude" (any |value| above ``max_abs_uv``).

    "flat" is judged per channel because a single dead electrode in a window would otherwise pass as a real
    channel whose position is silent, which teaches the model something false; channels dead for the whole
    recording are already removed by :func:`preprocess_raw`, so this only drops windows with a transient
    dropout.
    """
    if signal.sfreq != config.sfreq:
        raise ValueError(f"{signal.source}: signal is at {signal.sfreq} Hz but the config expects {config.sfreq} Hz")
    data = signal.data
    n_total = data.shape[1]
    n = config.window_samples
    stride = config.stride_samples
    flat_thr = None if config.flat_uv is None else config.flat_uv / 100.0
    amp_thr = None if config.max_abs_uv is None else config.max_abs_uv / 100.0
    if segments is None:
        segments = [Segment(0.0, n_total / signal.sfreq)]
    windows: list[Window] = []
    drops: Counter = Counter()
    for seg in segments:
        if not (math.isfinite(seg.onset_s) and math.isfinite(seg.duration_s)) or seg.duration_s < 0:
            raise ValueError(f"{signal.source}: invalid segment {seg}")
        start = max(int(round(seg.onset_s * signal.sfreq)), 0)
        stop = min(int(round((seg.onset_s + seg.duration_s) * signal.sfreq)), n_total)
        if stop - start < n:
            drops["short"] += 1
            continue
        starts = np.arange(start, stop - n + 1, stride)
        # Per-channel min/max of every window in one vectorised pass over a strided view (no copies):
        # NaN propagates through min/max, inf shows up in them, and they give peak-to-peak and |max|.
        if starts.size == 1:  # one window (e.g. 5-s sleep epochs): skip building a strided view
            view = data[:, start : start + n][:, np.newaxis, :]
        else:
            view = np.lib.stride_tricks.sliding_window_view(data[:, start:stop], n, axis=1)[:, starts - start]
        lo, hi = view.min(axis=-1), view.max(axis=-1)  # [C, W]
        nan = ~(np.isfinite(lo) & np.isfinite(hi)).all(axis=0)
        with np.errstate(invalid="ignore"):
            flat = (hi - lo < flat_thr).any(axis=0) if flat_thr is not None else np.zeros_like(nan)
            loud = (np.maximum(-lo, hi) > amp_thr).any(axis=0) if amp_thr is not None else np.zeros_like(nan)
        for s, is_nan, is_flat, is_loud in zip(starts.tolist(), nan, flat, loud):
            if is_nan:
                drops["nan"] += 1
            elif is_flat:
                drops["flat"] += 1
            elif is_loud:
                drops["amplitude"] += 1
            else:
                windows.append(Window(len(windows), s, s / signal.sfreq, data[:, s : s + n], seg.label, seg.label_name))
    return windows, drops
