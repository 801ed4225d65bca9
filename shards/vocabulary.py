"""Canonical EEG channel vocabulary: one append-only list of names with stable integer ids.

The id of a channel is its index in :data:`CHANNELS`; the model's spatial embedding is indexed by it, so a
checkpoint trained today must still see ``FP1`` at the same row after any upgrade. Hence the list is
**append-only**: never reorder, rename or delete an entry, only add new names at the end (and bump nothing
else). ``tests/test_vocabulary.py`` pins a handful of ids so an accidental reorder fails loudly.

Raw channel names come in every style (``EEG Fp1-REF``, ``FP1-LE``, ``Fp1.``, ``C3-A1``, ``T3``); use
:func:`canonical_name` / :func:`classify_channel` to map them. Non-EEG channels (EOG, EMG, ECG, triggers,
time stamps, contact quality, ...) and unknown names map to ``None`` with a reason, never to a near miss.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------------------------------------------------
# APPEND-ONLY. Ids are list positions and are baked into every trained checkpoint. Never reorder or remove.
# ---------------------------------------------------------------------------------------------------------
CHANNELS: tuple[str, ...] = (
    # 0: reserved for padding, so a padded slot in a batch (channel_ids == 0) never aliases a real electrode.
    "<PAD>",
    # 1: an EEG channel whose position is unknown (e.g. Bonn's single-channel segments). Adapters opt in
    # explicitly; canonical_name() never returns it for an arbitrary raw name.
    "EEG",
    # 10-20 / 10-10 / 10-05 positions, upper-cased, in the order of MNE's standard_1005 montage (hard-coded
    # here so that an MNE upgrade can never shift an id).
    "FP1", "FPZ", "FP2", "AF9", "AF7", "AF5", "AF3", "AF1", "AFZ", "AF2", "AF4", "AF6", "AF8", "AF10", "F9",
    "F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8", "F10", "FT9", "FT7", "FC5", "FC3", "FC1", "FCZ",
    "FC2", "FC4", "FC6", "FT8", "FT10", "T9", "T7", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "T8", "T10",
    "TP9", "TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6", "TP8", "TP10", "P9", "P7", "P5", "P3", "P1",
    "PZ", "P2", "P4", "P6", "P8", "P10", "PO9", "PO7", "PO5", "PO3", "PO1", "POZ", "PO2", "PO4", "PO6", "PO8",
    "PO10", "O1", "OZ", "O2", "I1", "IZ", "I2", "AFP9H", "AFP7H", "AFP5H", "AFP3H", "AFP1H", "AFP2H", "AFP4H",
    "AFP6H", "AFP8H", "AFP10H", "AFF9H", "AFF7H", "AFF5H", "AFF3H", "AFF1H", "AFF2H", "AFF4H", "AFF6H",
    "AFF8H", "AFF10H", "FFT9H", "FFT7H", "FFC5H", "FFC3H", "FFC1H", "FFC2H", "FFC4H", "FFC6H", "FFT8H",
    "FFT10H", "FTT9H", "FTT7H", "FCC5H", "FCC3H", "FCC1H", "FCC2H", "FCC4H", "FCC6H", "FTT8H", "FTT10H",
    "TTP9H", "TTP7H", "CCP5H", "CCP3H", "CCP1H", "CCP2H", "CCP4H", "CCP6H", "TTP8H", "TTP10H", "TPP9H",
    "TPP7H", "CPP5H", "CPP3H", "CPP1H", "CPP2H", "CPP4H", "CPP6H", "TPP8H", "TPP10H", "PPO9H", "PPO7H",
    "PPO5H", "PPO3H", "PPO1H", "PPO2H", "PPO4H", "PPO6H", "PPO8H", "PPO10H", "POO9H", "POO7H", "POO5H",
    "POO3H", "POO1H", "POO2H", "POO4H", "POO6H", "POO8H", "POO10H", "OI1H", "OI2H", "FP1H", "FP2H", "AF9H",
    "AF7H", "AF5H", "AF3H", "AF1H", "AF2H", "AF4H", "AF6H", "AF8H", "AF10H", "F9H", "F7H", "F5H", "F3H", "F1H",
    "F2H", "F4H", "F6H", "F8H", "F10H", "FT9H", "FT7H", "FC5H", "FC3H", "FC1H", "FC2H", "FC4H", "FC6H", "FT8H",
    "FT10H", "T9H", "T7H", "C5H", "C3H", "C1H", "C2H", "C4H", "C6H", "T8H", "T10H", "TP9H", "TP7H", "CP5H",
    "CP3H", "CP1H", "CP2H", "CP4H", "CP6H", "TP8H", "TP10H", "P9H", "P7H", "P5H", "P3H", "P1H", "P2H", "P4H",
    "P6H", "P8H", "P10H", "PO9H", "PO7H", "PO5H", "PO3H", "PO1H", "PO2H", "PO4H", "PO6H", "PO8H", "PO10H",
    "O1H", "O2H", "I1H", "I2H", "AFP9", "AFP7", "AFP5", "AFP3", "AFP1", "AFPZ", "AFP2", "AFP4", "AFP6", "AFP8",
    "AFP10", "AFF9", "AFF7", "AFF5", "AFF3", "AFF1", "AFFZ", "AFF2", "AFF4", "AFF6", "AFF8", "AFF10", "FFT9",
    "FFT7", "FFC5", "FFC3", "FFC1", "FFCZ", "FFC2", "FFC4", "FFC6", "FFT8", "FFT10", "FTT9", "FTT7", "FCC5",
    "FCC3", "FCC1", "FCCZ", "FCC2", "FCC4", "FCC6", "FTT8", "FTT10", "TTP9", "TTP7", "CCP5", "CCP3", "CCP1",
    "CCPZ", "CCP2", "CCP4", "CCP6", "TTP8", "TTP10", "TPP9", "TPP7", "CPP5", "CPP3", "CPP1", "CPPZ", "CPP2",
    "CPP4", "CPP6", "TPP8", "TPP10", "PPO9", "PPO7", "PPO5", "PPO3", "PPO1", "PPOZ", "PPO2", "PPO4", "PPO6",
    "PPO8", "PPO10", "POO9", "POO7", "POO5", "POO3", "POO1", "POOZ", "POO2", "POO4", "POO6", "POO8", "POO10",
    "OI1", "OIZ", "OI2",
    # Ear lobes and mastoids (common references), inferior occipital / cerebellar, anterior temporal and
    # sphenoidal positions used in clinical montages (TUH, LaBraM's list).
    "A1", "A2", "M1", "M2", "O9", "O10", "CB1", "CB2", "T1", "T2", "SP1", "SP2",
    # Bipolar pairs of the TUH TCP montages (01_tcp_ar / 02_tcp_le), written with modern names (T3 -> T7,
    # T4 -> T8, T5 -> P7, T6 -> P8). TUH's "T4-A2" is T8 referenced to the ear, so it maps to "T8" (see
    # canonical_name); its mirror "A1-T3" is a sign-flipped derivation and keeps its own entry.
    "FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP2-F8", "F8-T8", "T8-P8", "P8-O2", "A1-T7", "T7-C3", "C3-CZ",
    "CZ-C4", "C4-T8", "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4", "P4-O2",
    # Extra pairs of the CHB-MIT montage (the rest of it is the TCP chains above).
    "FZ-CZ", "CZ-PZ", "P7-T7", "T7-FT9", "FT9-FT10", "FT10-T8",
    # Append new names below this line only.
)

VOCAB_SIZE: int = len(CHANNELS)
PAD_ID: int = 0
UNKNOWN_POSITION: str = "EEG"

_ID: dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}
if len(_ID) != len(CHANNELS):  # pragma: no cover - guards edits to the literal above
    raise RuntimeError("shards.vocabulary.CHANNELS contains a duplicate name")

# Names canonical_name() may return: everything except the two special entries.
_MAPPABLE = frozenset(CHANNELS[2:])

# Old 10-20 temporal names (Jasper 1958) -> their 10-10 equivalents.
_OLD_NAMES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}

# Reference labels that appear as the second half of a referential derivation ("C3-A1", "FP1-REF").
_REFERENCE_SUFFIXES = frozenset(
    {"REF", "LE", "AR", "AVG", "AV", "CAR", "A1", "A2", "M1", "M2", "A1A2", "M1M2", "A12", "LINKED", "REFERENCE"}
)

# Ear / mastoid reference electrodes: a derivation between two of them is the reference itself.
_EAR_REFERENCES = frozenset({"A1", "A2", "M1", "M2"})

# Non-EEG channel families. Matching is on alphanumeric tokens of the upper-cased name: a token equal to
# one of `exact`, or starting with one of `prefixes`. Checked BEFORE any EEG mapping, because several of
# these names embed an electrode label (Emotiv's "CQ_AF3", "EQ_T7"; DREAMS' "EOG1-A1") that must not leak
# through as that electrode.
_NON_EEG: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("EOG", frozenset({"LOC", "ROC", "EYE"}), ("EOG", "HEOG", "VEOG")),
    ("EMG", frozenset({"CHIN", "LEG", "LLEG", "RLEG"}), ("EMG",)),
    ("ECG", frozenset(), ("ECG", "EKG")),
    ("respiration", frozenset({"VAB", "VTH", "THOR", "ABD", "NASAL", "ORAL"}),
     ("RESP", "AIRFLOW", "FLOW", "NAF", "SNORE", "PHONO", "THORAX", "ABDO", "CANNULA")),
    ("oximetry/pulse", frozenset({"PR", "HR", "BPM", "SAT", "PULSE"}), ("SPO2", "SAO2", "PLETH", "OXI")),
    ("trigger/marker", frozenset({"STI", "TRIG", "STATUS", "EVENT", "EVENTS", "MARKER", "MARK"}),
     ("TRIGGER", "STIM", "MARKER", "ANNOTATION", "DC")),
    ("time stamp/counter", frozenset({"TIME", "COUNTER", "INTERPOLATED", "SAMPLE", "STAMP"}),
     ("TIMESTAMP", "COUNTER")),
    ("motion", frozenset({"POS", "POSITION", "X", "Y", "Z"}), ("ACC", "GYRO", "MAG", "MOTION")),
    ("device status", frozenset(), ("BATTERY", "BATT")),
    ("photic/derived", frozenset({"IBI", "BURSTS", "SUPPR"}), ("PHOTIC", "TEMP", "LIGHT", "LUX")),
    ("scoring", frozenset({"STAGE", "STADE"}), ("HYPNOGRAM", "SCORING")),
)

_TOKEN_SPLIT = re.compile(r"[^A-Z0-9]+")
_EEG_PREFIX = re.compile(r"^(EEG|POL)[\s_:]+")
_DUP_SUFFIX = re.compile(r"^(.+?-.+?)-\d+$")  # CHB-MIT / MNE de-duplication: "T8-P8-0", "T8-P8-1"
_BIOSEMI_ABC = re.compile(r"^[A-H]([1-9]|[1-5][0-9]|6[0-4])$")


def channel_id(canonical: str) -> int:
    """Stable integer id of a canonical channel name (its index in :data:`CHANNELS`)."""
    try:
        return _ID[canonical]
    except KeyError:
        hint = canonical_name(canonical) if isinstance(canonical, str) else None
        extra = f" (did you mean canonical_name({canonical!r}) -> {hint!r}?)" if hint else ""
        raise KeyError(
            f"channel {canonical!r} is not a canonical name of shards.vocabulary.CHANNELS{extra}"
        ) from None


def channel_ids(names: Iterable[str]) -> list[int]:
    """Ids of several canonical names, in order (``[C]`` names -> ``[C]`` ints)."""
    return [channel_id(name) for name in names]


def _non_eeg_kind(upper: str) -> str | None:
    tokens = [t for t in _TOKEN_SPLIT.split(upper) if t]
    # Emotiv writes contact quality as CQ_AF3 / CQ.AF3 / EQ_T7: the family is the first token.
    if tokens and (tokens[0] in ("CQ", "EQ", "RAWCQ") or tokens[:2] == ["RAW", "CQ"]):
        return "contact quality"
    for kind, exact, prefixes in _NON_EEG:
        for tok in tokens:
            if tok in exact or tok.startswith(prefixes):
                return kind
    return None


def _electrode(token: str) -> str | None:
    """Canonical single electrode for an upper-cased token (old names modernised), or None."""
    token = _OLD_NAMES.get(token, token)
    return token if token in _MAPPABLE and "-" not in token else None


def classify_channel(raw: str) -> tuple[str | None, str]:
    """Map one raw channel name to ``(canonical name or None, reason)``.

    The reason is ``"eeg"`` for a mapped channel, ``"non-eeg: <family>"`` (EOG, EMG, ECG, respiration,
    oximetry/pulse, trigger/marker, time stamp/counter, contact quality, motion, device status,
    photic/derived, scoring) or ``"unknown name..."`` otherwise, so a builder can report every drop.
    """
    if not isinstance(raw, str):
        return None, f"unknown name: not a string ({type(raw).__name__})"
    upper = raw.strip().upper()
    if not upper:
        return None, "unknown name: empty"
    kind = _non_eeg_kind(upper)
    if kind is not None:
        return None, f"non-eeg: {kind}"
    name = _EEG_PREFIX.sub("", upper).strip()
    # EEGMMIDB pads names to 4 characters with dots ("Fc5.", "C3..", "T10.").
    name = name.rstrip(".").strip()
    name = re.sub(r"\s*-\s*", "-", name)
    if not name or name == "EEG":
        return None, "unknown name: no electrode position (adapters may map it to 'EEG' explicitly)"
    single = _electrode(name)
    if single is not None:
        return single, "eeg"
    parts = name.split("-")
    if len(parts) >= 2:
        # Referential derivation: "<electrode>-<reference>" is that electrode ("C3-A1", "FP1-REF", "T4-A2").
        head, tail = "-".join(parts[:-1]), parts[-1]
        tail_ref = tail.replace("_", "").replace(" ", "")
        if tail_ref in _REFERENCE_SUFFIXES or tail in _REFERENCE_SUFFIXES:
            if head in _EAR_REFERENCES and tail in _EAR_REFERENCES:
                # "A2-A1" (EEGMAT), "M1-M2": one reference electrode against the other records how the
                # reference drifts, not the scalp; naming it A2 would put a reference trace in a scalp slot.
                return None, f"reference derivation: {name} (reference against reference, not a scalp channel)"
            single = _electrode(head)
            if single is not None:
                return single, "eeg"
        dup = _DUP_SUFFIX.match(name)
        if dup is not None:
            name = dup.group(1)
            parts = name.split("-")
        if len(parts) == 2:
            a, b = (_OLD_NAMES.get(p, p) for p in parts)
            pair = f"{a}-{b}"
            if pair in _MAPPABLE:
                return pair, "eeg"
            if _electrode(a) and _electrode(b):
                return None, f"unknown name: bipolar pair {pair} is not in the vocabulary"
    return None, "unknown name"


def canonical_name(raw: str) -> str | None:
    """Canonical vocabulary name for a raw channel name, or None for non-EEG / unknown channels.

    Case-insensitive; strips ``EEG ``/``POL `` prefixes, reference suffixes (``-REF``, ``-LE``, ``-AR``,
    ``-AVG``, ``-A1``/``-A2``/``-M1``/``-M2``) and EEGMMIDB's padding dots; modernises T3/T4/T5/T6 (also
    inside bipolar pairs). ``"EEG Fp1-REF"``, ``"FP1-LE"``, ``"Fp1."`` -> ``"FP1"``; ``"EEG T3-REF"`` ->
    ``"T7"``; ``"F7-T3"`` -> ``"F7-T7"``; ``"CQ_AF3"`` -> None.
    """
    return classify_channel(raw)[0]


def classify_channels(names: Sequence[str]) -> list[tuple[str | None, str]]:
    """:func:`classify_channel` for all channels of one recording, using the set as context.

    BioSemi caps in the ABC layout label electrodes ``A1..A32, B1..B32, ...``: there ``A1``/``A2`` are cap
    positions, not ear lobes, so when a recording has several such labels (``A3``, ``B1``, ...) all of them
    are reported as unknown instead of mapping ``A1``/``A2`` to the ears.
    """
    upper = [n.strip().upper() for n in names]
    # C3, F4, A1 ... are both 10-20 names and ABC labels; only labels that no 10-20 system uses (A3, B1,
    # E12, ...) reveal the ABC layout, and then every letter-number label is a cap position.
    foreign = [n for n in upper if _BIOSEMI_ABC.match(n) and n not in _ID and n not in _OLD_NAMES]
    is_abc = len(foreign) >= 2
    out = []
    for raw, up in zip(names, upper):
        if is_abc and _BIOSEMI_ABC.match(up):
            out.append((None, "unknown name: BioSemi ABC-layout label (position depends on the cap)"))
        else:
            out.append(classify_channel(raw))
    return out
