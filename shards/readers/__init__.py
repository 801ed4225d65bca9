"""Read raw EEG recordings of any supported format into an :class:`mne.io.BaseRaw` (preloaded up to a size).

``read_raw`` is the one entry; every failure is a :class:`ReadError` naming the file and the reason. The modules:

- ``dispatch``: ``read_raw``: the format table of :mod:`shards.formats` -> the reader, then the checks every
  recording gets (rate, samples, montage file, channel types).
- ``errors``: ``ReadError``, ``check_path`` and the rates an intact header may state.
- ``edf``: the EDF/BDF header checked before MNE reads it, and the units MNE misreads.
- ``vendor``: fixes of MNE readers for one vendor's files (BCI2000 calibration, Neuroscan CNT sample width).
- ``xdf``: Lab Streaming Layer recordings through ``pyxdf``.
- ``channels``: positions from a montage file next to the recording, channel types from the vocabulary.
- ``text``: headerless text, one number per line (Bonn's segments, with the rate its adapter knows).
- ``dreams`` / ``yasa``: the text formats of the DREAMS spindle excerpts and of YASA's snippets, which
  ``read_raw`` recognises in any folder (so they sit here, below the corpus adapters that use them).
"""

from shards.readers.dispatch import PRELOAD_MAX_BYTES, SUPPORTED_EXTENSIONS, read_raw
from shards.readers.dreams import DREAMS_EXCERPT_S, read_dreams_excerpt
from shards.readers.errors import HEADER_MAX_SFREQ, HEADER_MIN_SFREQ, ReadError, check_path
from shards.readers.text import read_text_signal
from shards.readers.yasa import read_yasa_snippet

__all__ = [
    "ReadError", "check_path", "read_raw", "read_text_signal", "read_dreams_excerpt", "read_yasa_snippet",
    "SUPPORTED_EXTENSIONS", "PRELOAD_MAX_BYTES", "DREAMS_EXCERPT_S", "HEADER_MIN_SFREQ", "HEADER_MAX_SFREQ",
]
