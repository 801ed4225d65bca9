"""The signal contract: the sampling rate, patch length and units every package of the suite assumes.

Shards are written at :data:`SFREQ` in units of :data:`UNIT_UV` microvolts (:data:`UNITS`); the backbone and
the tokenizer cut them into patches of :data:`PATCH_SAMPLES` samples (one second, LaBraM's channel-patch
tokens). ``shards`` (the data) and ``foundation`` (the model) must agree on these numbers but may not import
each other, so they live here, below both; every default rate, patch length and unit of the suite refers to
this module (``tests/test_signal_contract.py`` fails on a literal copy).
"""

from __future__ import annotations

__all__ = ["SFREQ", "PATCH_SAMPLES", "UNIT_UV", "UNIT_SCALE", "UNITS"]

# The common output rate of the shards, in Hz; the backbone's 1-s patches assume it.
SFREQ = 200.0
# Samples per patch: one second at SFREQ (LaBraM's channel-patch tokens).
PATCH_SAMPLES = int(SFREQ)
# Sample values are in units of UNIT_UV microvolts; UNIT_SCALE turns volts into those units.
UNIT_UV = 100.0
UNIT_SCALE = 1e6 / UNIT_UV
# The name of that unit in contracts and model cards (LaBraM's convention: microvolts divided by 100).
UNITS = "100uV"
