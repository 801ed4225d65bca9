"""Long recordings in bounded memory: preprocessing and windowing block by block.

:func:`shards.preprocess.preprocess_raw` holds a recording whole: its samples in float64, a float32 copy and a
padded spectrum, about five times the float64 size at the peak (a 10-hour 19-channel EDF at 200 Hz is 1.1 GB
in float64; its build peaked at 3.5 GB). A recording whose kept channels exceed :data:`STREAM_BYTES` in float64,
or that was read without preloading (``shards.readers.read_raw`` leaves large files on disk), goes through
:func:`preprocess_stream` instead:

1. one pass over the file in chunks collects each kept channel's finite count, sum, minimum and maximum: its
   mean (removed, as the whole-recording path removes it) and the channels dropped as mostly NaN/inf or flat,
   with the same reasons;
2. blocks of :data:`BLOCK_S` seconds are read with :data:`MARGIN_S` of the real neighbouring samples on each
   side (a group of channels at a time, at most :data:`READ_BYTES` per read), filtered and resampled by the
   whole-recording path's own function and cropped to their own span. Block edges are whole periods of the
   resampling ratio, so every output sample lies on the whole recording's grid. Why 30-s margins: the 0.1-Hz
   high-pass (order 2, run as |H|^2) has decayed to 2e-6 of its peak 30 s away, far below the float16
   resolution of a shard (5e-4), and the low-pass and notch decay within a second;
3. :func:`iter_windows` cuts windows from a rolling buffer that keeps only the blocks the next windows need.

Peak memory is then a few blocks whatever the recording's length. :func:`preprocess_recording` picks the path;
the writer and ``finetune.predict`` read every recording through it and :func:`iter_windows`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import mne
import numpy as np

from runtime.signal import UNIT_SCALE, UNIT_UV
from shards.filters import rate_ratio, resample_mask
from shards.positions import place_unnamed
from shards.readers import PRELOAD_MAX_BYTES
from shards.preprocess import (MAX_NONFINITE_FRACTION, PreprocessConfig, Segment, Signal, filter_and_resample,
                               no_eeg_error, select_channels, cut_windows, nonfinite_reason, preprocess_raw, raw_source)
from shards.sample import Window

__all__ = ["STREAM_BYTES", "BLOCK_S", "MARGIN_S", "StreamedSignal", "needs_streaming", "preprocess_recording",
           "preprocess_stream", "iter_windows"]

# Channels x samples x 8 bytes above which a recording is processed in blocks (a 19-channel recording at
# 200 Hz streams from about 35 minutes on): the size above which read_raw leaves a recording on disk.
STREAM_BYTES = PRELOAD_MAX_BYTES
BLOCK_S = 300.0
MARGIN_S = 30.0
# float64 bytes of one read (channels x extended block): channels are read in groups below this.
READ_BYTES = 16 * 2**20


@dataclass
class StreamedSignal:
    """A preprocessed recording whose samples come block by block (:meth:`blocks`), never all at once.

    The fields mean what :class:`shards.preprocess.Signal`'s do; ``n_samples`` is the length at ``sfreq``.
    ``notes`` gains the count of NaN/inf samples once every block has been read.
    """

    channels: list[str]
    sfreq: float
    n_samples: int
    read_blocks: Callable[[], Iterator[tuple[int, np.ndarray]]]
    dropped_channels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    orig_sfreq: float | None = None
    source: str | None = None
    placed_channels: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sfreq

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first sample, data [C, n] float32 in 100 µV units)`` in order, covering ``[0, n_samples)``."""
        return self.read_blocks()


def needs_streaming(raw: mne.io.BaseRaw) -> bool:
    """Whether ``raw`` is processed in blocks: left on disk by the reader, or too large to hold whole."""
    return not getattr(raw, "preload", False) or len(raw.ch_names) * raw.n_times * 8 > STREAM_BYTES


def preprocess_recording(raw: mne.io.BaseRaw, config: PreprocessConfig = PreprocessConfig(), *,
                         source: str | None = None, channel_map=None) -> Signal | StreamedSignal:
    """:func:`shards.preprocess.preprocess_raw` for recordings that fit in memory, :func:`preprocess_stream` for
    the others (:func:`needs_streaming`)."""
    if needs_streaming(raw):
        return preprocess_stream(raw, config, source=source, channel_map=channel_map)
    return preprocess_raw(raw, config, source=source, channel_map=channel_map)


def _whole_periods(seconds: float, sfreq: float, period: int) -> int:
    """``seconds`` at ``sfreq`` rounded up to a whole number of ``period`` samples (at least one period)."""
    return max(1, math.ceil(seconds * sfreq / period)) * period


def preprocess_stream(raw: mne.io.BaseRaw, config: PreprocessConfig = PreprocessConfig(), *, source: str | None = None,
                      channel_map=None, block_s: float = BLOCK_S) -> StreamedSignal:
    """Preprocess ``raw`` in blocks (module doc): the same channels, reasons and (to float rounding) samples as
    :func:`shards.preprocess.preprocess_raw`, in bounded memory. Raises what ``preprocess_raw`` raises."""
    source = source or raw_source(raw)
    orig = float(raw.info["sfreq"])
    keep_idx, keep_names, dropped, placed = place_unnamed(raw, *select_channels(raw, channel_map, source),
                                                          montage=config.montage)
    if not keep_idx:
        raise no_eeg_error(source, raw, dropped)
    finite, total, low, high = _channel_stats(raw, keep_idx)
    n = raw.n_times
    keep = []
    for i, c in enumerate(keep_idx):
        name = raw.ch_names[c]
        bad = 1.0 - finite[i] / n
        ptp_uv = (high[i] - low[i]) * UNIT_SCALE * UNIT_UV if finite[i] else 0.0
        if bad > MAX_NONFINITE_FRACTION:
            dropped[name] = nonfinite_reason(bad)
        elif config.flat_uv is not None and ptp_uv < config.flat_uv:
            dropped[name] = f"flat channel (peak-to-peak {ptp_uv:.3g} µV over the recording)"
        else:
            keep.append(i)
            continue
        placed.pop(name, None)
    if not keep:
        raise no_eeg_error(source, raw, dropped)
    picks = [keep_idx[i] for i in keep]
    means = total[keep] / n
    up, down = rate_ratio(orig, float(config.sfreq))
    n_out = -(-n * up // down)
    notes: list[str] = []
    block = _whole_periods(block_s, orig, down)
    margin = _whole_periods(MARGIN_S, orig, down)

    def read_blocks() -> Iterator[tuple[int, np.ndarray]]:
        nan_samples = 0
        for a in range(0, n, block):
            b = min(a + block, n)
            out, bad_time = _block(raw, picks, means, a, b, margin, orig, config, source, notes if a == 0 else [])
            out_a = a * up // down
            if bad_time is not None:
                nan_samples += int(bad_time[a - max(a - margin, 0): b - max(a - margin, 0)].sum())
                lo = max(a - margin, 0)
                mask = resample_mask(bad_time, orig, float(config.sfreq), n_out, offset=lo)[out_a: out_a + out.shape[1]]
                out[:, mask] = np.nan
            yield out_a, out
        if nan_samples:
            notes.append(f"{nan_samples} samples with NaN/inf (windows touching them are dropped)")

    return StreamedSignal(channels=[keep_names[i] for i in keep], sfreq=float(config.sfreq), n_samples=n_out,
                          read_blocks=read_blocks, dropped_channels=dropped, notes=notes, orig_sfreq=orig, source=source,
                          placed_channels=placed)


def _channel_stats(raw: mne.io.BaseRaw, picks: list[int]) -> tuple[np.ndarray, ...]:
    """Per channel of ``picks``: the count of finite samples, their sum, minimum and maximum (volts)."""
    c = len(picks)
    finite, total = np.zeros(c, np.int64), np.zeros(c)
    low, high = np.full(c, np.inf), np.full(c, -np.inf)
    step = max(1, READ_BYTES // (8 * c))
    for a in range(0, raw.n_times, step):
        volts = raw.get_data(picks=picks, start=a, stop=min(a + step, raw.n_times))
        ok = np.isfinite(volts)
        if ok.all():  # the common case, without masked copies
            finite += volts.shape[1]
            total += volts.sum(axis=1)
            low, high = np.minimum(low, volts.min(axis=1)), np.maximum(high, volts.max(axis=1))
            continue
        finite += ok.sum(axis=1)
        total += np.where(ok, volts, 0.0).sum(axis=1)
        low = np.minimum(low, np.where(ok, volts, np.inf).min(axis=1))
        high = np.maximum(high, np.where(ok, volts, -np.inf).max(axis=1))
    return finite, total, low, high


def _block(raw, picks, means, a, b, margin, orig, config, source, notes) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples ``[a, b)`` of ``raw``'s ``picks`` preprocessed: ``[C, n_out]`` float32 at ``config.sfreq``, and the
    ``[b0 - a0]`` mask of the read span's NaN/inf samples (None when none), read with ``margin`` on each side."""
    n = raw.n_times
    a0, b0 = max(a - margin, 0), min(b + margin, n)
    up, down = rate_ratio(orig, float(config.sfreq))
    start = (a - a0) * up // down
    stop = (-(-n * up // down) if b == n else b * up // down) - a0 * up // down
    group = max(1, READ_BYTES // (8 * (b0 - a0)))
    out = np.empty((len(picks), stop - start), np.float32)
    bad_time = None
    for g in range(0, len(picks), group):
        volts = raw.get_data(picks=picks[g: g + group], start=a0, stop=b0)
        if not volts.flags.writeable:
            volts = np.array(volts)
        bad = ~np.isfinite(volts)
        if bad.any():
            volts[bad] = 0.0  # as preprocess_raw: zero the gaps for filtering, mark them NaN afterwards
            bad_time = bad.any(axis=0) if bad_time is None else bad_time | bad.any(axis=0)
        volts -= means[g: g + group, None]
        units = (volts * UNIT_SCALE).astype(np.float32)
        del volts
        filtered = filter_and_resample(units, orig, config, source, notes if g == 0 else [])
        out[g: g + group] = filtered[:, start:stop]
    return out, bad_time


def iter_windows(signal: Signal | StreamedSignal, segments: Sequence[Segment] | None,
                 config: PreprocessConfig = PreprocessConfig(),
                 dropped: list[tuple[float, str]] | None = None) -> tuple[Iterator[Window], Counter]:
    """The windows :func:`shards.preprocess.cut_windows` cuts, as an iterator, for either kind of signal; and the
    Counter of drops by reason (complete once the iterator is exhausted). ``dropped`` receives
    ``(onset_s, reason)`` of every window dropped for NaN/inf, flatness or amplitude."""
    if isinstance(signal, Signal):
        windows, drops = cut_windows(signal, segments, config, dropped=dropped)
        return iter(windows), drops
    if signal.sfreq != config.sfreq:
        raise ValueError(f"{signal.source}: signal is at {signal.sfreq} Hz but the config expects {config.sfreq} Hz")
    drops: Counter = Counter()
    plan = _window_plan(signal, segments, config, drops)
    return _stream_cut(signal, plan, config, drops, dropped), drops


def _window_plan(signal: StreamedSignal, segments, config: PreprocessConfig, drops: Counter) -> list[tuple[int, Segment]]:
    """(start sample, segment) of every candidate window, in :func:`cut_windows`' order; "short" drops counted."""
    n, stride, total = config.window_samples, config.stride_samples, signal.n_samples
    plan = []
    for seg in [Segment(0.0, total / signal.sfreq)] if segments is None else segments:
        if not (math.isfinite(seg.onset_s) and math.isfinite(seg.duration_s)) or seg.duration_s < 0:
            raise ValueError(f"{signal.source}: invalid segment {seg}")
        start = max(int(round(seg.onset_s * signal.sfreq)), 0)
        stop = min(int(round((seg.onset_s + seg.duration_s) * signal.sfreq)), total)
        if stop - start < n:
            drops["short"] += 1
            continue
        plan.extend((s, seg) for s in range(start, stop - n + 1, stride))
    return plan


def _stream_cut(signal: StreamedSignal, plan, config: PreprocessConfig, drops: Counter,
                dropped: list[tuple[float, str]] | None) -> Iterator[Window]:
    n = config.window_samples
    flat_thr = None if config.flat_uv is None else config.flat_uv / UNIT_UV
    amp_thr = None if config.max_abs_uv is None else config.max_abs_uv / UNIT_UV
    # the earliest sample any window from position i on still needs: the buffer keeps nothing before it
    need = [0] * len(plan)
    earliest = signal.n_samples
    for i in range(len(plan) - 1, -1, -1):
        earliest = min(earliest, plan[i][0])
        need[i] = earliest
    blocks = signal.blocks()
    buffer: list[tuple[int, np.ndarray]] = []
    end = 0
    kept = 0
    for i, (s, seg) in enumerate(plan):
        buffer = [(bs, arr) for bs, arr in buffer if bs + arr.shape[1] > need[i]]
        while end < s + n:
            bs, arr = next(blocks)
            end = bs + arr.shape[1]
            if end > need[i]:
                buffer.append((bs, arr))
        eeg = _span(buffer, s, s + n)
        lo, hi = eeg.min(axis=1), eeg.max(axis=1)
        reason = None
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            reason = "nan"
        elif flat_thr is not None and (hi - lo < flat_thr).any():
            reason = "flat"
        elif amp_thr is not None and (np.maximum(-lo, hi) > amp_thr).any():
            reason = "amplitude"
        if reason is not None:
            drops[reason] += 1
            if dropped is not None:
                dropped.append((s / signal.sfreq, reason))
            continue
        meta = {"onset_s": s / signal.sfreq, "label": seg.label, "label_name": seg.label_name}
        yield Window(eeg, meta, start=s, index=kept)
        kept += 1


def _span(buffer: list[tuple[int, np.ndarray]], a: int, b: int) -> np.ndarray:
    """Samples ``[a, b)`` from the buffered blocks (a view when one block holds them, else a copy)."""
    pieces = [arr[:, max(a - bs, 0): b - bs] for bs, arr in buffer if bs < b and bs + arr.shape[1] > a]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
