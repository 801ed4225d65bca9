"""From a raw recording to model-ready arrays: EEG picks, filtering, resampling, units, windows.

Pipeline (defaults follow LaBraM / CBraMod; the sample they produce is :mod:`shards.sample`'s contract):

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

import mne
import numpy as np

from runtime.signal import SFREQ, UNIT_SCALE, UNIT_UV, check_sfreq
from shards.filters import fft_filter_resample, resample, resample_mask, zero_phase_filter
from shards.positions import ABC_MONTAGES, place_unnamed
from shards.sample import Window
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

    sfreq: float = SFREQ
    l_freq: float | None = 0.1
    h_freq: float | None = 75.0
    notch: float | None = 50.0
    window_s: float = 10.0
    stride_s: float | None = None
    max_abs_uv: float | None = 500.0
    flat_uv: float | None = 1.0
    filter_method: str = "fft"
    montage: str | None = None

    def __post_init__(self) -> None:
        def positive(name: str, value, allow_none: bool) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"PreprocessConfig.{name} must be a positive number, got {value!r}")

        positive("sfreq", self.sfreq, False)
        check_sfreq(self.sfreq, what="as PreprocessConfig.sfreq (--sfreq)")
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
        if self.montage is not None and self.montage not in ABC_MONTAGES:
            raise ValueError(f"PreprocessConfig.montage must be one of {', '.join(ABC_MONTAGES)} or None, got {self.montage!r}")
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
    placed_channels: dict[str, str] = field(default_factory=dict)

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


def select_channels(
    raw: mne.io.BaseRaw, channel_map: Mapping[str, str] | None, source: str
) -> tuple[list[int], list[str], dict[str, str]]:
    """``(indices, canonical names, dropped raw name -> reason)`` of the EEG channels to keep (step 1)."""
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


def no_eeg_error(source: str, raw: mne.io.BaseRaw, dropped: Mapping[str, str]) -> NoEEGError:
    """The error of a recording left without a usable EEG channel, listing every channel with its reason."""
    found = ", ".join(f"{name!r} ({reason})" for name, reason in dropped.items()) or "none"
    return NoEEGError(f"{source}: no usable EEG channel among {len(raw.ch_names)} channels: {found}")


def raw_source(raw: mne.io.BaseRaw) -> str:
    """What ``raw`` was read from, for messages: its first file, else ``"<raw>"``."""
    return str(raw.filenames[0]) if getattr(raw, "filenames", None) and raw.filenames[0] else "<raw>"


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
    source = source or raw_source(raw)
    orig = float(raw.info["sfreq"])
    # Channels without a known name but with a recorded position (or a named BioSemi cap) join by position.
    keep_idx, keep_names, dropped, placed = place_unnamed(raw, *select_channels(raw, channel_map, source),
                                                          montage=config.montage)
    if not keep_idx:
        raise no_eeg_error(source, raw, dropped)
    keep_idx, keep_names = _drop_nonfinite(raw, keep_idx, keep_names, dropped, placed)
    if not keep_idx:
        raise no_eeg_error(source, raw, dropped)
    notes: list[str] = []
    data, bad_time = _to_units(raw, keep_idx, notes)
    if config.flat_uv is not None:
        data, keep_names = _drop_flat(data, raw, keep_idx, keep_names, dropped, placed, config.flat_uv)
        if not keep_names:
            raise no_eeg_error(source, raw, dropped)
    data = filter_and_resample(data, orig, config, source, notes)

    out = np.ascontiguousarray(data, dtype=np.float32)
    if bad_time is not None:
        out[:, resample_mask(bad_time, orig, config.sfreq, out.shape[1])] = np.nan
    return Signal(
        data=out, channels=list(keep_names), sfreq=float(config.sfreq), dropped_channels=dropped, notes=notes,
        orig_sfreq=orig, source=source, placed_channels=placed,
    )


# A channel whose samples are NaN/inf for more than this fraction of the recording is dropped (as a flat one is):
# kept, it would void every window it touches, and one dead channel would discard the whole recording.
MAX_NONFINITE_FRACTION = 0.5


def nonfinite_reason(fraction: float) -> str:
    """The dropped-channel reason of a channel that is mostly NaN/inf."""
    return f"NaN/inf in {100 * fraction:.3g}% of the recording"


def _drop_nonfinite(raw: mne.io.BaseRaw, keep_idx: list[int], keep_names: list[str], dropped: dict[str, str],
                    placed: dict[str, str]) -> tuple[list[int], list[str]]:
    """Drop the channels that are NaN/inf for more than :data:`MAX_NONFINITE_FRACTION` of the recording."""
    src = raw._data if getattr(raw, "preload", False) and isinstance(getattr(raw, "_data", None), np.ndarray) else None
    idx, names = [], []
    for c, name in zip(keep_idx, keep_names):
        row = src[c] if src is not None else raw.get_data(picks=[c])[0]
        # a finite sum means every sample is finite: the count below runs only for channels with gaps
        fraction = 0.0 if np.isfinite(row.sum()) else 1.0 - np.count_nonzero(np.isfinite(row)) / max(row.size, 1)
        if fraction > MAX_NONFINITE_FRACTION:
            raw_name = raw.ch_names[c]
            dropped[raw_name] = nonfinite_reason(fraction)
            placed.pop(raw_name, None)
            continue
        idx.append(c)
        names.append(name)
    return idx, names


def _to_units(raw: mne.io.BaseRaw, keep_idx: list[int], notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The kept channels ``[C, T]`` float32 in 100-µV units with each channel's offset removed, and the ``[T]``
    mask of samples that held NaN/inf anywhere (None when none did; they are zeroed here for filtering).

    The offset is removed in float64 (Emotiv and DC-coupled amplifiers sit thousands of µV off zero, and a
    0.1-Hz high-pass would otherwise ring for tens of seconds from the first sample), then everything works in
    float32: float32 filtering differs from float64 by ~2e-4 relative RMS (measured on EEGMMIDB), below the
    float16 resolution of the shards.
    """
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
        return data, None
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
    return (volts * UNIT_SCALE).astype(np.float32), bad_time


def _drop_flat(data: np.ndarray, raw: mne.io.BaseRaw, keep_idx: list[int], keep_names: list[str],
               dropped: dict[str, str], placed: dict[str, str], flat_uv: float) -> tuple[np.ndarray, list[str]]:
    """Drop the channels whose peak-to-peak over the whole recording is below ``flat_uv`` µV, with the reason."""
    ptp = np.ptp(data, axis=1) * UNIT_UV  # µV
    flat = ptp < flat_uv
    if not flat.any():
        return data, keep_names
    for i in np.flatnonzero(flat):
        name = raw.ch_names[keep_idx[i]]
        dropped[name] = f"flat channel (peak-to-peak {ptp[i]:.3g} µV over the recording)"
        placed.pop(name, None)  # a channel is either kept (placed) or dropped, never both
    return data[~flat], [n for n, f in zip(keep_names, flat) if not f]


def filter_and_resample(data: np.ndarray, orig: float, config: PreprocessConfig, source: str,
                         notes: list[str]) -> np.ndarray:
    """Band-pass, notch and resample ``data`` ``[C, T]`` from ``orig`` to ``config.sfreq`` Hz; edges the rate cannot
    carry are lowered or skipped with a note."""
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
        return fft_filter_resample(data, orig, config.sfreq, l_freq, h_freq, notch)
    if orig > config.sfreq:
        data = resample(data, orig, config.sfreq, fir_h)
        return zero_phase_filter(data, config.sfreq, l_freq, iir_h, notch, config.filter_method)
    data = zero_phase_filter(data, orig, l_freq, iir_h, notch, config.filter_method)
    return resample(data, orig, config.sfreq, fir_h)


def cut_windows(
    signal: Signal, segments: Sequence[Segment] | None, config: PreprocessConfig = PreprocessConfig(),
    dropped: list[tuple[float, str]] | None = None,
) -> tuple[list[Window], Counter]:
    """Cut ``[C, n]`` windows (n = window_s x sfreq, hop stride_s) inside each segment.

    ``segments=None`` means the whole recording, unlabeled. Returns the kept windows and a Counter of drops
    by reason: "short" (a segment shorter than one window, counted once per segment), "nan" (any NaN/inf),
    "flat" (any channel with peak-to-peak below ``flat_uv``), "amplitude" (any |value| above ``max_abs_uv``).

    "flat" is judged per channel because a single dead electrode in a window would otherwise pass as a real
    channel whose position is silent, which teaches the model something false; channels dead for the whole
    recording are already removed by :func:`preprocess_raw`, so this only drops windows with a transient
    dropout. ``dropped`` (when given) receives ``(onset_s, reason)`` of every window dropped for NaN/inf,
    flatness or amplitude, so a caller that labels every span (``finetune.predict``) can list them.
    """
    if signal.sfreq != config.sfreq:
        raise ValueError(f"{signal.source}: signal is at {signal.sfreq} Hz but the config expects {config.sfreq} Hz")
    data = signal.data
    n_total = data.shape[1]
    n = config.window_samples
    stride = config.stride_samples
    flat_thr = None if config.flat_uv is None else config.flat_uv / UNIT_UV
    amp_thr = None if config.max_abs_uv is None else config.max_abs_uv / UNIT_UV
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
            reason = "nan" if is_nan else "flat" if is_flat else "amplitude" if is_loud else None
            if reason is not None:
                drops[reason] += 1
                if dropped is not None:
                    dropped.append((s / signal.sfreq, reason))
            else:
                meta = {"onset_s": s / signal.sfreq, "label": seg.label, "label_name": seg.label_name}
                windows.append(Window(data[:, s : s + n], meta, start=s, index=len(windows)))
    return windows, drops
