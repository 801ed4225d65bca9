"""Simulated multi-channel EEG recordings (EDF+) with labels for all four downstream tasks.

The suite's embedded default: a fresh machine without any corpus can still build shards, pretrain and
finetune end to end. The signals are not meant to fool a clinician, but each one carries the physiology a
model is expected to pick up, so that labels are learnable from the same features real EEG uses:

- background: spatially correlated 1/f ("pink") noise, ~10-20 µV RMS, plus mains line noise and a
  subject-specific posterior alpha rhythm (eyes closed);
- ``sleep``: 30-s epochs W / N1 / N2 / N3 / REM; W = posterior alpha + beta, N1 = theta, N2 = spindles
  (11-16 Hz bursts, 0.5-2 s) + K-complexes, N3 = high-amplitude delta (0.5-2 Hz slow waves), REM = low-voltage
  theta with saw-tooth waves;
- ``motor_imagery``: 4-s cues "left_hand" / "right_hand"; the mu (8-13 Hz) and beta (18-25 Hz) rhythms over
  the sensorimotor cortex contralateral to the imagined hand desynchronise (C4 for left, C3 for right);
- ``seizure``: "background" vs "seizure"; seizures are generalised rhythmic ~3 Hz spike-and-wave
  discharges of 120-300 µV that evolve (frequency slows, amplitude grows) over the episode;
- ``emotion``: "calm" vs "stress"; stress lowers frontal alpha more on the right (F4) than on the left (F3)
  (frontal alpha asymmetry) and raises frontal beta.

Channel names come in real-world spellings that vary by subject (``EEG Fp1-REF``, ``T3``, ``FZ``), and every
recording carries an EOG and an ECG channel that the preprocessing must drop. Sampling rates vary by subject
(256 / 250 / 200 Hz). Files are ``sub-XX_task-TASK.edf`` with the labels as EDF+ annotations; the ``synth``
corpus adapter (``shards/corpora/synth.py``) reads them back.
"""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np

TASKS: tuple[str, ...] = ("sleep", "motor_imagery", "seizure", "emotion")
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "sleep": ("W", "N1", "N2", "N3", "REM"),
    "motor_imagery": ("left_hand", "right_hand"),
    "seizure": ("background", "seizure"),
    "emotion": ("calm", "stress"),
}
SFREQS: tuple[float, ...] = (256.0, 250.0, 200.0)
MAINS_HZ = 50.0

# 10-20 positions used by the simulator (modern names); per-subject spellings are derived from these.
_POSITIONS: tuple[str, ...] = (
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8",
    "P7", "P3", "Pz", "P4", "P8", "O1", "O2",
)
_OLD_NAMES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
_POSTERIOR = ("P3", "Pz", "P4", "O1", "O2", "P7", "P8")
_FRONTAL = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8")
_CENTRAL = ("C3", "Cz", "C4")


def channel_names(style: int) -> list[str]:
    """Spellings of the 19 EEG positions + EOG + ECG for one naming ``style`` (0, 1 or 2).

    0: TUH-like ``EEG Fp1-REF`` with old temporal names (T3); 1: plain ``Fp1`` with modern names;
    2: upper-case with old names (``FP1``, ``T5``).
    """
    names = []
    for pos in _POSITIONS:
        if style == 0:
            names.append(f"EEG {_OLD_NAMES.get(pos, pos)}-REF")
        elif style == 1:
            names.append(pos)
        else:
            names.append(_OLD_NAMES.get(pos, pos).upper())
    names += ["EOG LOC", "ECG"] if style != 1 else ["EOG", "EKG"]
    return names


def _pink(rng: np.random.Generator, n_ch: int, n: int, sfreq: float) -> np.ndarray:
    """Unit-RMS 1/f noise, shape ``[n_ch, n]`` (amplitude spectrum ~ 1/sqrt(f) above 0.5 Hz)."""
    spec = np.fft.rfft(rng.standard_normal((n_ch, n)), axis=-1)
    f = np.fft.rfftfreq(n, 1.0 / sfreq)
    spec *= 1.0 / np.sqrt(np.maximum(f, 0.5))
    x = np.fft.irfft(spec, n=n, axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def _osc(rng: np.random.Generator, t: np.ndarray, freq: float, jitter: float = 0.3) -> np.ndarray:
    """A rhythm around ``freq`` Hz with slowly wandering frequency and amplitude (waxing and waning)."""
    n = t.size
    sfreq = 1.0 / (t[1] - t[0])
    drift = np.cumsum(rng.standard_normal(n)) / np.sqrt(n)  # slow random walk, O(1) over the recording
    inst = freq + jitter * drift
    phase = 2 * np.pi * np.cumsum(inst) / sfreq + rng.uniform(0, 2 * np.pi)
    env = 1.0 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    return env * np.sin(phase)


def _burst(t: np.ndarray, center: float, dur: float, freq: float) -> np.ndarray:
    """A Gaussian-windowed oscillation (sleep spindle shape)."""
    env = np.exp(-0.5 * ((t - center) / (dur / 4)) ** 2)
    return env * np.sin(2 * np.pi * freq * (t - center))


def _spike_wave(t: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Spike-and-wave complex train with instantaneous frequency ``freq`` (same shape as ``t``)."""
    sfreq = 1.0 / (t[1] - t[0])
    phase = np.mod(np.cumsum(freq) / sfreq, 1.0)  # cycle position in [0, 1)
    spike = -np.exp(-0.5 * ((phase - 0.15) / 0.025) ** 2)  # sharp negative spike
    wave = 0.6 * np.exp(-0.5 * ((phase - 0.55) / 0.15) ** 2)  # slower positive wave
    return spike + wave


def _segments(task: str, duration_s: float, rng: np.random.Generator) -> list[tuple[float, float, str]]:
    """Labelled (onset_s, duration_s, label_name) blocks of one recording; aligned to 4 s where possible."""
    segs: list[tuple[float, float, str]] = []
    if task == "sleep":
        stages = LABEL_NAMES["sleep"]
        n_epochs = int(duration_s // 30)
        order = list(stages) * (n_epochs // len(stages) + 1)
        # Keep all stages present in short recordings but vary the order between subjects.
        first = rng.permutation(len(stages)).tolist()
        seq = [stages[i] for i in first] + order[len(stages):]
        for k in range(n_epochs):
            segs.append((30.0 * k, 30.0, seq[k]))
    elif task == "motor_imagery":
        # 8-s cycles: 4 s rest (unlabelled), then a 4-s imagery cue; classes balanced in random order.
        n_trials = int(duration_s // 8)
        cls = np.array([k % 2 for k in range(n_trials)])
        rng.shuffle(cls)
        for k in range(n_trials):
            segs.append((8.0 * k + 4.0, 4.0, LABEL_NAMES["motor_imagery"][cls[k]]))
    elif task in ("seizure", "emotion"):
        # Alternating 16-s blocks; seizure recordings start in background.
        names = LABEL_NAMES[task]
        n_blocks = int(duration_s // 16)
        start = 0 if task == "seizure" else int(rng.integers(2))
        for k in range(n_blocks):
            segs.append((16.0 * k, 16.0, names[(k + start) % 2]))
    else:
        raise ValueError(f"unknown synth task {task!r}; expected one of {TASKS}")
    return segs


def simulate_recording(
    task: str, subject: int, duration_s: float = 120.0, seed: int = 0
) -> tuple[mne.io.RawArray, list[tuple[float, float, str]]]:
    """One simulated recording as an MNE Raw (volts) plus its labelled segments.

    Returns ``raw`` with 19 EEG + EOG + ECG channels (``[21, duration_s * sfreq]``) whose annotations are the
    labelled segments ``(onset_s, duration_s, label_name)``.
    """
    rng = np.random.default_rng([seed, subject, TASKS.index(task)])
    style = subject % 3
    sfreq = SFREQS[subject % len(SFREQS)]
    n = int(round(duration_s * sfreq))
    t = np.arange(n) / sfreq
    names = channel_names(style)
    idx = {pos: i for i, pos in enumerate(_POSITIONS)}
    n_eeg = len(_POSITIONS)

    # Subject traits: alpha peak frequency and amplitude differ between people.
    srng = np.random.default_rng([seed, subject])
    alpha_f = srng.uniform(9.0, 11.5)
    alpha_amp = srng.uniform(12.0, 25.0)
    mu_f = srng.uniform(10.0, 12.5)

    # Volume conduction: a few shared sources mixed into all electrodes plus local noise.
    mix = srng.normal(0, 1, (n_eeg, 6)) / np.sqrt(6)
    eeg = 12.0 * (0.6 * mix @ _pink(rng, 6, n, sfreq) + 0.8 * _pink(rng, n_eeg, n, sfreq))
    eeg += 5.0 * np.sin(2 * np.pi * MAINS_HZ * t + rng.uniform(0, 2 * np.pi))  # line noise, same phase everywhere

    segs = _segments(task, duration_s, rng)
    mask = {name: np.zeros(n, bool) for names_ in LABEL_NAMES.values() for name in names_}
    for onset, dur, name in segs:
        mask[name][int(onset * sfreq):int((onset + dur) * sfreq)] = True

    add = _adder(eeg, idx, rng)
    alpha = _osc(rng, t, alpha_f)
    if task != "sleep":
        add(_POSTERIOR, alpha_amp * alpha)  # relaxed, eyes closed
    if task == "sleep":
        _add_sleep(rng, t, segs, mask, alpha_amp * alpha, add)
    elif task == "motor_imagery":
        _add_motor_imagery(rng, t, sfreq, mask, mu_f, eeg, idx)
    elif task == "seizure":
        _add_seizure(rng, t, sfreq, segs, mask, add)
    elif task == "emotion":
        _add_emotion(rng, t, mask, alpha_f, eeg, idx, add)
    eog, ecg = _eog_ecg(rng, srng, t, sfreq, duration_s, eeg, idx)

    data = np.vstack([eeg, eog[None], ecg[None]]) * 1e-6  # MNE stores volts
    info = mne.create_info(names, sfreq, ch_types=["eeg"] * n_eeg + ["eog", "ecg"])
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(mne.Annotations([s[0] for s in segs], [s[1] for s in segs], [s[2] for s in segs]))
    return raw, segs


def _adder(eeg: np.ndarray, idx: dict[str, int], rng: np.random.Generator):
    """``add(channels, signal)``: add ``signal`` to each channel of ``eeg`` with a random gain in [0.8, 1.2)."""
    def add(chans, sig):
        for c in chans:
            eeg[idx[c]] += sig * (0.8 + 0.4 * rng.random())

    return add


def _add_sleep(rng, t, segs, mask, alpha, add) -> None:
    """Stage rhythms: alpha and beta awake, theta in N1/REM, delta in N2/N3, spindles and K-complexes in N2,
    saw-tooth waves in REM."""
    n = t.size
    w, n1, n2, n3, rem = (mask[s] for s in LABEL_NAMES["sleep"])
    add(_POSTERIOR, alpha * w)
    add(_POSITIONS, 4.0 * _osc(rng, t, 20.0, 1.0) * w)
    add(_POSITIONS, 15.0 * _osc(rng, t, 6.0, 0.5) * (n1 | rem))
    add(_POSITIONS, 40.0 * _osc(rng, t, 1.2, 0.3) * n2 * 0.5)
    add(_POSITIONS, 90.0 * _osc(rng, t, 1.0, 0.4) * n3)
    add(_POSITIONS, 30.0 * _osc(rng, t, 0.7, 0.2) * n3)
    # Spindles (central maximum) and K-complexes in N2; saw-tooth waves in REM.
    spindle = np.zeros(n)
    kcomplex = np.zeros(n)
    for onset, dur, name in segs:
        if name == "N2":
            for c in np.arange(onset + 1.0, onset + dur - 1.0, rng.uniform(3.0, 5.0)):
                spindle += _burst(t, c + rng.uniform(-0.5, 0.5), rng.uniform(0.7, 1.8), rng.uniform(11.5, 15.5))
            for c in rng.uniform(onset + 1, onset + dur - 1, size=2):
                kcomplex += -np.exp(-0.5 * ((t - c) / 0.15) ** 2) + 0.6 * np.exp(-0.5 * ((t - c - 0.45) / 0.2) ** 2)
        if name == "REM":
            for c in np.arange(onset + 2.0, onset + dur - 2.0, rng.uniform(5.0, 8.0)):
                kcomplex += 0.3 * _burst(t, c, 1.5, 2.5)
    add(_CENTRAL + ("Fz", "Pz", "F3", "F4"), 30.0 * spindle)
    add(_FRONTAL + _CENTRAL, 80.0 * kcomplex)


def _add_motor_imagery(rng, t, sfreq, mask, mu_f, eeg, idx) -> None:
    """Event-related desynchronisation: a smooth (0.5 s) drop of mu/beta power contralateral to the hand."""
    mu = _osc(rng, t, mu_f, 0.3)
    beta = _osc(rng, t, 21.0, 1.0)
    kernel = np.hanning(int(0.5 * sfreq))
    kernel /= kernel.sum()
    erd_l = np.convolve(mask["left_hand"].astype(float), kernel, mode="same")
    erd_r = np.convolve(mask["right_hand"].astype(float), kernel, mode="same")
    gain = {"C3": 1 - 0.7 * erd_r + 0.15 * erd_l, "C4": 1 - 0.7 * erd_l + 0.15 * erd_r, "Cz": 1 - 0.2 * (erd_l + erd_r)}
    for c, g in gain.items():
        eeg[idx[c]] += g * (14.0 * mu + 6.0 * beta)
    for c, near in (("C3", ("F3", "P3", "T7")), ("C4", ("F4", "P4", "T8"))):
        for m in near:  # neighbouring electrodes see a weaker copy of the same sensorimotor source
            eeg[idx[m]] += 0.3 * gain[c] * (14.0 * mu + 6.0 * beta)


def _add_seizure(rng, t, sfreq, segs, mask, add) -> None:
    """Generalised spike-and-wave discharges that slow down and grow as each seizure evolves."""
    n = t.size
    sz = mask["seizure"]
    freq = np.full(n, 3.0)
    amp = np.zeros(n)
    for onset, dur, name in segs:
        if name != "seizure":
            continue
        sl = slice(int(onset * sfreq), int((onset + dur) * sfreq))
        prog = np.linspace(0, 1, sl.stop - sl.start)
        freq[sl] = 3.6 - 1.2 * prog  # discharges slow down as the seizure evolves
        amp[sl] = 120 + 180 * np.sqrt(prog) * rng.uniform(0.7, 1.0)
    sw = _spike_wave(t, freq) * amp * sz
    add(_POSITIONS, sw)


def _add_emotion(rng, t, mask, alpha_f, eeg, idx, add) -> None:
    """Frontal alpha asymmetry (right frontal alpha drops under stress) and more frontal beta."""
    stress = mask["stress"].astype(float)
    calm = mask["calm"].astype(float)
    falpha = _osc(rng, t, alpha_f, 0.3)
    eeg[idx["F3"]] += falpha * (10.0 * calm + 8.0 * stress)
    eeg[idx["F4"]] += falpha * (10.0 * calm + 3.0 * stress)  # right frontal alpha drops under stress
    eeg[idx["Fp2"]] += falpha * (6.0 * calm + 2.0 * stress)
    eeg[idx["Fp1"]] += falpha * (6.0 * calm + 5.0 * stress)
    add(_FRONTAL, 7.0 * _osc(rng, t, 22.0, 1.5) * stress)


def _eog_ecg(rng, srng, t, sfreq, duration_s, eeg, idx) -> tuple[np.ndarray, np.ndarray]:
    """EOG ``[T]`` with blinks (which leak into Fp1/Fp2 of ``eeg``) and ECG ``[T]`` with QRS-like spikes at ~70 bpm."""
    n = t.size
    eog = 20.0 * _pink(rng, 1, n, sfreq)[0]
    for c in rng.uniform(0, duration_s, size=int(duration_s / 4)):
        blink = 150.0 * np.exp(-0.5 * ((t - c) / 0.1) ** 2)
        eog += blink
        eeg[idx["Fp1"]] += 0.5 * blink
        eeg[idx["Fp2"]] += 0.5 * blink
    hr = srng.uniform(1.0, 1.4)
    ecg = 800.0 * np.exp(-0.5 * ((np.mod(t * hr, 1.0) - 0.5) / 0.012) ** 2) + 30.0 * _pink(rng, 1, n, sfreq)[0]
    return eog, ecg


def recording_name(subject: int, task: str) -> str:
    """File stem of one simulated recording, e.g. ``sub-03_task-motor_imagery``."""
    return f"sub-{subject:02d}_task-{task}"


def simulate(
    out_dir: str | Path,
    n_subjects: int = 8,
    duration_s: float = 120.0,
    seed: int = 0,
    tasks: tuple[str, ...] = TASKS,
    overwrite: bool = True,
) -> list[Path]:
    """Write ``n_subjects x len(tasks)`` EDF+ recordings to ``out_dir``; returns their paths (sorted).

    Deterministic for a given ``seed`` (the EDF header's start date is fixed so files are byte-identical).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if duration_s < 32:
        raise ValueError(f"duration_s={duration_s} is too short: need >= 32 s for labelled blocks")
    paths = []
    from datetime import datetime, timezone

    for subject in range(1, n_subjects + 1):
        for task in tasks:
            raw, _ = simulate_recording(task, subject, duration_s, seed)
            raw.set_meas_date(datetime(2020, 1, 1, tzinfo=timezone.utc))
            path = out / f"{recording_name(subject, task)}.edf"
            if path.exists() and not overwrite:
                paths.append(path)
                continue
            mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
            paths.append(path)
    return sorted(paths)
