"""Zero-phase filters and resampling of ``[C, T]`` EEG arrays (the DSP under :mod:`shards.preprocess`).

- :func:`fft_filter_resample` (the default "fft" method): the Butterworth high-pass (order 2) x low-pass
  (order 4) x notch (Q = f0 / 2) cascade applied as |H(f)|^2 together with resampling in one rfft / irfft
  pair of the mirror-padded recording;
- :func:`zero_phase_filter` ("iir": the same cascade forwards and backwards; "fir": MNE's windowed sinc) and
  :func:`resample` (polyphase, optionally folding the low-pass edge into its FIR);
- :func:`resample_mask`: which output samples a set of input samples touches.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import mne
import numpy as np
import scipy.fft
import scipy.signal

# Resampling ratios are approximated by fractions with denominators <= 1000 when that is within 2 ppm of the
# exact ratio (Bonn's 173.61 -> 200 Hz becomes 1061/921, 1.1 ppm): the anti-alias kernel shrinks from 400k to
# 21k taps (6 ms -> <1 ms per Bonn segment), and 2 ppm (7 ms per hour of recording, under 1.5 samples at
# 200 Hz) is ten times below the clock tolerance of EEG amplifiers (~20 ppm crystals).
MAX_RATE_ERROR = 2e-6


@lru_cache(maxsize=64)
def polyphase_kernel(up: int, down: int, cutoff: float) -> np.ndarray:
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
def rate_ratio(orig: float, target: float) -> tuple[int, int]:
    """(up, down) with up / down = target / orig within 2 ppm, smallest denominator that allows."""
    exact = target / orig
    ratio = Fraction(exact).limit_denominator(1000)
    if abs(float(ratio) - exact) > MAX_RATE_ERROR * exact:
        ratio = Fraction(exact).limit_denominator(100_000)
    return ratio.numerator, ratio.denominator


def resample(data: np.ndarray, orig: float, target: float, h_freq: float | None = None) -> np.ndarray:
    """``[C, T]`` at ``orig`` Hz -> ``[C, ceil(T * up / down)]`` at ``target`` Hz (polyphase, up/down ~ target/orig).

    ``h_freq``: also low-pass at this edge (Hz, -6 dB) in the same linear-phase FIR; None = at the lower of
    the two Nyquist rates (plain anti-aliasing).
    """
    up, down = rate_ratio(orig, target)
    if up == down:
        return data
    # Polyphase (the method MNE uses for method="polyphase") costs O(T x taps / up) and needs no
    # power-of-two padding; MNE's default FFT method was 2-4x slower on the shared recordings. We call scipy
    # directly only to reuse the cached kernel.
    edge = min(orig, target) / 2 if h_freq is None else min(h_freq, orig / 2, target / 2)
    cutoff = round(edge / (orig * up / 2), 12)  # rounded: a stable cache key
    kernel = polyphase_kernel(up, down, cutoff).astype(data.dtype)
    return scipy.signal.resample_poly(data, up, down, axis=-1, window=kernel)


@lru_cache(maxsize=64)
def iir_sos(sfreq: float, l_freq: float | None, h_freq: float | None, notch: float | None) -> np.ndarray | None:
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
def iir_cascade(sfreq: float, l_freq, h_freq, notch, dtype: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(sos [S, 6], zi [S, 1, 2])`` in ``dtype``: the cascade and its step-response initial state, cached.

    scipy.signal.sosfiltfilt solves for ``zi`` (a linear system per section) on every call; for Bonn's
    4097-sample segments that was half the cost of filtering.
    """
    sos = iir_sos(sfreq, l_freq, h_freq, notch)
    if sos is None:
        return None
    zi = scipy.signal.sosfilt_zi(sos)[:, np.newaxis, :]
    return np.ascontiguousarray(sos, dtype=dtype), np.ascontiguousarray(zi, dtype=dtype)


def zero_phase(sos: np.ndarray, zi: np.ndarray, data: np.ndarray, padlen: int) -> np.ndarray:
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


def is_smooth(k: int) -> bool:
    """Whether k has no prime factor above 5 (pocketfft's fast lengths)."""
    for p in (2, 3, 5):
        while k % p == 0:
            k //= p
    return k == 1


@lru_cache(maxsize=256)
def fft_response(orig: float, n_fft: int, n_bins: int, l_freq, h_freq, notch, gain: float) -> np.ndarray:
    """``[n_bins]`` float32: |H(f)|^2 of the Butterworth + notch cascade at f = k x orig / n_fft, times gain.

    |H|^2 is exactly the magnitude response of the same cascade run forwards and backwards (sosfiltfilt),
    with zero phase.
    """
    sos = iir_sos(orig, l_freq, h_freq, notch)
    if sos is None:
        response = np.full(n_bins, gain, np.float32)
    else:
        freqs = np.arange(n_bins) * (orig / n_fft)
        _, h = scipy.signal.sosfreqz(sos, worN=freqs, fs=orig)
        response = (np.abs(h) ** 2 * gain).astype(np.float32)
    response.setflags(write=False)
    return response


@lru_cache(maxsize=256)
def fft_plan(n: int, orig: float, target: float, n_out: int) -> tuple[int, int, int]:
    """(L, M, pad): FFT lengths in and out (M / L ~ target / orig) and the mirror pad in input samples.

    The pad is >= 3 s on each side and pad x M / L is a whole number, so the crop lands exactly on output
    sample 0. With the 2-ppm ratio from :func:`rate_ratio`, L and M are multiples of its denominator and
    numerator, which for Bonn (921 = 3 x 307, 1061 prime) forces slow Bluestein transforms; so we look for a
    5-smooth pair (L, M) whose ratio is off by at most ``MAX_DRIFT_SAMPLES`` output samples over the
    whole recording (Bonn, 4097 samples: 5625 -> 6480, 6.4 ppm, 0.035 samples at the end: 50 us forward
    transform instead of 130 us), and
    fall back to the exact 2-ppm grid when there is none.
    """
    up, down = rate_ratio(orig, target)
    pad0 = max(int(3 * orig), 1)
    need = n + 2 * pad0
    if not (is_smooth(up) and is_smooth(down)):
        exact = target / orig
        for n_fft in SMOOTH_LENGTHS[np.searchsorted(SMOOTH_LENGTHS, need) : np.searchsorted(SMOOTH_LENGTHS, 2 * need)].tolist():
            m_fft = int(round(n_fft * exact))
            if m_fft < 2 or not is_smooth(m_fft) or abs(m_fft / n_fft - exact) * n_out > MAX_DRIFT_SAMPLES:
                continue
            step = n_fft // math.gcd(n_fft, m_fft)  # pad x M / L is whole when pad is a multiple of this
            pad = step * -(-pad0 // step)
            if n_fft >= n + pad + pad0:
                return n_fft, m_fft, pad
    pad = down * -(-pad0 // down)
    k = -(-(n + 2 * pad) // down)
    while not is_smooth(k):  # L = down x k and M = up x k: a 5-smooth k keeps them as fast as they can be
        k += 1
    return down * k, up * k, pad


# Largest timing error the FFT path's own rate approximation may add at the last output sample (0.05
# samples = 0.25 ms at 200 Hz, growing linearly from 0 at the first sample; a 50-Hz component moves by at
# most 0.08 rad of phase). For comparison, the 2-ppm rule of rate_ratio allows 1.4 samples per hour.
MAX_DRIFT_SAMPLES = 0.05

# Every 5-smooth number up to 2^31 (a few thousand): candidate FFT lengths.
SMOOTH_LENGTHS = np.array(sorted(
    2**a * 3**b * 5**c for a in range(32) for b in range(20) for c in range(14) if 2**a * 3**b * 5**c < 2**31
), dtype=np.int64)


def fft_filter_resample(data: np.ndarray, orig: float, target: float, l_freq, h_freq, notch) -> np.ndarray:
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
    up, down = rate_ratio(orig, target)
    n_ch, n = data.shape
    n_out = -(-n * up // down)
    # The pad is a whole number of `down` input samples so that the crop is sample-exact at the output rate.
    n_fft, m_fft, pad = fft_plan(n, float(orig), float(target), n_out)
    up, down = m_fft, n_fft  # the grid actually used (pad x up / down is a whole number of output samples)
    right = n_fft - n - pad
    if 0 < pad < n and 0 < right < n:  # np.pad(mode="reflect") without its generic-case overhead
        ext = np.concatenate((data[:, pad:0:-1], data, data[:, -2 : -right - 2 : -1]), axis=1)
    else:  # a recording shorter than its pad: repeated reflections
        ext = np.pad(data, ((0, 0), (pad, right)), mode="reflect" if n > 1 else "edge")
    spectrum = scipy.fft.rfft(ext, axis=-1)  # [C, L/2 + 1] complex64
    n_bins = min(n_fft, m_fft) // 2 + 1
    response = fft_response(float(orig), n_fft, n_bins, l_freq, h_freq, notch, m_fft / n_fft)
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


def zero_phase_filter(data: np.ndarray, sfreq: float, l_freq, h_freq, notch, method: str) -> np.ndarray:
    """Zero-phase band-pass + notch of ``[C, T]`` (float32 or float64, dtype kept) at ``sfreq``."""
    if method == "iir":
        # IIR (Butterworth, forwards and backwards): linear cost per sample and fine for a 0.1-Hz high-pass,
        # where a FIR needs ~33 s of taps (longer than many short recordings, e.g. Bonn's 23.6-s segments).
        cascade = iir_cascade(float(sfreq), l_freq, h_freq, notch, data.dtype.str)
        if cascade is None:
            return data
        # Mirror padding (like MNE's "reflect_limited"), 3 s or what the signal allows. scipy's default odd
        # padding puts a step of twice the end value into the pad, and the 0.1-Hz high-pass rings from it:
        # on a 10-Hz test tone the last 2.5 s were off by 50% of the amplitude, against 5% with "even".
        padlen = max(min(data.shape[-1] - 1, int(3 * sfreq)), 0)
        return zero_phase(*cascade, data, padlen)
    dtype = data.dtype
    data = data.astype(np.float64)  # MNE's FIR path accepts float64 only
    if l_freq is not None or h_freq is not None:
        data = mne.filter.filter_data(data, sfreq, l_freq, h_freq, method="fir", n_jobs=1, copy=False, verbose="error")
    if notch is not None:
        data = mne.filter.notch_filter(data, sfreq, [notch], method="fir", n_jobs=1, copy=False, verbose="error")
    return data.astype(dtype, copy=False)



def resample_mask(mask: np.ndarray, orig: float, target: float, n_out: int, offset: int = 0) -> np.ndarray:
    """Boolean ``[T]`` at ``orig`` -> ``[T']`` at ``target``: every output sample overlapping a marked input.

    ``offset``: the recording's sample index of ``mask[0]`` (a block of a longer recording); the output covers the
    whole recording's ``n_out`` samples either way."""
    idx = np.flatnonzero(mask) + offset
    lo = np.floor(idx * target / orig).astype(np.int64)
    hi = np.minimum(np.ceil((idx + 1) * target / orig).astype(np.int64), n_out)
    edges = np.zeros(n_out + 1, np.int64)
    np.add.at(edges, np.clip(lo, 0, n_out), 1)
    np.add.at(edges, hi, -1)
    return np.cumsum(edges[:-1]) > 0

