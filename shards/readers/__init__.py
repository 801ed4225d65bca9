"""Read raw EEG recordings of any supported format into a preloaded :class:`mne.io.BaseRaw`."""

from shards.readers.dispatch import (
    BONN_SFREQ,
    DREAMS_EXCERPT_S,
    HEADER_MAX_SFREQ,
    HEADER_MIN_SFREQ,
    SUPPORTED_EXTENSIONS,
    ReadError,
    check_path,
    read_dreams_excerpt,
    read_raw,
    read_text_signal,
    read_yasa_snippet,
)

__all__ = [
    "ReadError", "check_path", "read_raw", "read_text_signal", "read_dreams_excerpt", "read_yasa_snippet",
    "SUPPORTED_EXTENSIONS", "BONN_SFREQ", "DREAMS_EXCERPT_S", "HEADER_MIN_SFREQ", "HEADER_MAX_SFREQ",
]
