"""Corpus adapters: where each corpus keeps its recordings and labels.

``CORPORA`` maps a corpus name to its adapter; ``get_corpus(name)`` looks one up. Each module below
registers its adapter with the ``@register`` decorator on import; adding a corpus is one import line.
"""

from shards.corpora.base import CORPORA, FAMILIES, Adapter, LabelError, Loaded, Recording, get_corpus, register

from shards.corpora import bonn, dreams, eegmat, eegmmidb, mental_stress, recordings  # noqa: E402,F401  (local sets)
from shards.corpora import tueg, tuab, tuev, sleep_edf, chbmit, bciciv2a, seed  # noqa: E402,F401  (public)
from shards.corpora import synth  # noqa: E402,F401  (simulated demo corpus, shards.synth)
from shards.corpora import bids  # noqa: E402,F401  (any BIDS EEG dataset, via mne-bids)
from shards.corpora import moabb  # noqa: E402,F401  (any downloaded MOABB dataset: moabb:DATASET)

__all__ = ["CORPORA", "FAMILIES", "Adapter", "LabelError", "Loaded", "Recording", "get_corpus", "register"]
