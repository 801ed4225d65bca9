"""The sample contract: what one shard sample is.

One WebDataset sample is one window of one recording:

- key ``{corpus}__{recording}__{window:06d}`` (:func:`sample_key`), characters ``[A-Za-z0-9_-]`` only (a dot
  would break WebDataset's grouping of members by key);
- ``eeg.npy``: float16 ``[C, T]`` in units of 100 µV (read in µV, divide by 100; no clipping) at ``SFREQ``;
- ``json``: the fields :data:`META_FIELDS` (plus :data:`OPTIONAL_META_FIELDS` where present), written with
  sorted keys and no spaces.

Everything that writes or reads samples (``shards.writer``, ``shards.dataset``, ``pretrain``, ``finetune``)
takes the key format and the encoding from here. The rate, the units and the patch length are the signal
contract of the whole suite (``runtime.signal``, which the model in ``foundation`` reads too).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The rate, patch length and units belong to the signal contract (runtime.signal); they are part of this
# module's API because every sample is written in them.
# check_sfreq and its bounds are the signal contract's rule for every rate the suite reads.
from runtime.signal import MAX_SFREQ, MIN_SFREQ, PATCH_SAMPLES, SFREQ, UNIT_SCALE, UNIT_UV, check_sfreq

__all__ = [
    "SFREQ", "PATCH_SAMPLES", "UNIT_UV", "UNIT_SCALE", "MIN_SFREQ", "MAX_SFREQ", "EEG_MEMBER", "META_MEMBER",
    "META_FIELDS", "OPTIONAL_META_FIELDS", "Window", "sample_key", "key_prefix", "check_sfreq", "npy_bytes", "npy_header", "json_bytes",
    "encode_sample", "decode_sample",
]

EEG_MEMBER = "eeg.npy"
META_MEMBER = "json"
# The sample JSON, in the (sorted) order it is written.
META_FIELDS = ("channels", "corpus", "duration_s", "label", "label_name", "onset_s", "recording", "session",
               "sfreq", "source", "subject", "task")
# Written only when the corpus tabulates its subjects (``Recording.subject_info``: age, sex, task performance).
OPTIONAL_META_FIELDS = ("subject_info",)
KEY_SEPARATOR = "__"


@dataclass
class Window:
    """One window of a recording: ``eeg`` ``[C, T]`` in 100 µV units and ``meta``, its sample JSON.

    Decoded samples carry the full JSON (:data:`META_FIELDS`, plus ``__key__``). Windows cut from a
    preprocessed recording (``shards.preprocess.cut_windows``) carry ``onset_s``, ``label`` and
    ``label_name`` in ``meta``, and ``start`` / ``index``: ``eeg`` is exactly ``signal.data[:, start:start + T]``
    and ``index`` its position among the recording's kept windows.
    """

    eeg: np.ndarray
    meta: dict = field(default_factory=dict)
    start: int | None = None
    index: int | None = None

    @property
    def key(self) -> str:
        return self.meta.get("__key__") or f"{self.meta.get('corpus')}{KEY_SEPARATOR}{self.meta.get('recording')}"

    @property
    def onset_s(self) -> float | None:
        return self.meta.get("onset_s")

    @property
    def label(self) -> int | None:
        return self.meta.get("label")

    @property
    def label_name(self) -> str | None:
        return self.meta.get("label_name")

    @property
    def n_samples(self) -> int:
        return self.eeg.shape[1]


def key_prefix(corpus: str, recording: str) -> str:
    """The part of a sample key shared by all windows of one recording."""
    return f"{corpus}{KEY_SEPARATOR}{recording}{KEY_SEPARATOR}"


def sample_key(corpus: str, recording: str, index: int) -> str:
    """``{corpus}__{recording}__{index:06d}``."""
    return f"{key_prefix(corpus, recording)}{index:06d}"


_NPY_HEADERS: dict[tuple[int, ...], bytes] = {}


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a float16 C-order array of ``shape`` (cached per shape).

    The header depends only on dtype, order and shape, so it is taken once from ``np.save`` itself
    (byte-identical by construction).
    """
    header = _NPY_HEADERS.get(shape)
    if header is None:
        buf = io.BytesIO()
        zeros = np.zeros(shape, np.float16)
        np.save(buf, zeros, allow_pickle=False)
        header = buf.getvalue()[: -zeros.nbytes or None]
        _NPY_HEADERS[shape] = header
    return header


def npy_bytes(eeg: np.ndarray) -> bytes:
    """``np.save`` bytes of a float16 array (C order): the cached header plus ``tobytes()``, one copy instead
    of np.save's BytesIO round trip."""
    if eeg.dtype != np.float16:
        raise TypeError(f"eeg must be float16, got {eeg.dtype}")
    return npy_header(eeg.shape) + eeg.tobytes()


def json_bytes(meta: Mapping[str, Any]) -> bytes:
    """The ``json`` member: sorted keys, no spaces."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def encode_sample(key: str, eeg: np.ndarray, meta: dict) -> dict:
    """A sample as webdataset's field dict (``__key__``, ``eeg.npy``, ``json``): the same bytes the builder
    writes, for writing samples with ``webdataset.TarWriter`` elsewhere (e.g. tests)."""
    return {"__key__": key, EEG_MEMBER: npy_bytes(np.ascontiguousarray(eeg, dtype=np.float16)),
            META_MEMBER: json_bytes(meta)}


def decode_sample(sample: Mapping[str, Any]) -> Window:
    """A WebDataset sample dict (raw bytes or already decoded) -> :class:`Window`.

    ``eeg.npy`` float16 ``[C, T]`` becomes float32 ``[C, T]``; ``json`` is the metadata dict (plus
    ``__key__`` when present). KeyError naming the sample key when a member is missing.
    """
    key = sample.get("__key__", "?")
    try:
        eeg, meta = sample[EEG_MEMBER], sample[META_MEMBER]
    except KeyError as e:
        raise KeyError(f"sample {key} ({sample.get('__url__', '?')}) lacks member {e.args[0]!r}; has {sorted(sample)}") from None
    if isinstance(eeg, (bytes, bytearray, memoryview)):
        eeg = np.load(io.BytesIO(eeg), allow_pickle=False)
    if isinstance(meta, (bytes, bytearray, memoryview)):
        meta = json.loads(bytes(meta))
    elif isinstance(meta, str):
        meta = json.loads(meta)
    eeg = np.asarray(eeg, dtype=np.float32)
    if eeg.ndim != 2 or eeg.shape[0] != len(meta.get("channels", [])):
        raise ValueError(f"sample {key}: eeg.npy has shape {eeg.shape}, expected [C={len(meta.get('channels', []))}, T]")
    meta = dict(meta)
    if "__key__" in sample:
        meta["__key__"] = sample["__key__"]
    return Window(eeg, meta)
