"""The signal contract: the sampling rate, patch length and units every package of the suite assumes.

Shards are written at :data:`SFREQ` in units of :data:`UNIT_UV` microvolts (:data:`UNITS`); the backbone and
the tokenizer cut them into patches of :data:`PATCH_SAMPLES` samples (one second, LaBraM's channel-patch
tokens). ``shards`` (the data) and ``foundation`` (the model) must agree on these numbers but may not import
each other, so they live here, below both; every default rate, patch length and unit of the suite refers to
this module (``tests/test_signal_contract.py`` fails on a literal copy).
"""

from __future__ import annotations

import math

__all__ = ["SFREQ", "PATCH_SAMPLES", "UNIT_UV", "UNIT_SCALE", "UNITS", "MIN_SFREQ", "MAX_SFREQ", "check_sfreq"]

# The common output rate of the shards, in Hz; the backbone's 1-s patches assume it.
SFREQ = 200.0
# Samples per patch: one second at SFREQ (LaBraM's channel-patch tokens).
PATCH_SAMPLES = int(SFREQ)
# Sample values are in units of UNIT_UV microvolts; UNIT_SCALE turns volts into those units.
UNIT_UV = 100.0
UNIT_SCALE = 1e6 / UNIT_UV
# The name of that unit in contracts and model cards (LaBraM's convention: microvolts divided by 100).
UNITS = "100uV"

# Below MIN_SFREQ nothing of EEG's 1-30 Hz band survives; above MAX_SFREQ a header's record duration is almost
# surely wrong, and a window of a few seconds would need gigabytes. Every rate the suite reads from a file (a
# recording's header, a build option, contract.json, recipe.json, a shard's JSON) passes :func:`check_sfreq`.
MIN_SFREQ, MAX_SFREQ = 25.0, 100_000.0


def check_sfreq(sfreq: object, source: str | None = None, what: str = "in the header") -> float:
    """``sfreq`` as a float if it is a plausible EEG rate (MIN_SFREQ..MAX_SFREQ Hz), else ValueError.

    The message names ``source`` (a file) when given and says where the rate was found (``what``: "in the
    header", "sfreq in contract.json", ...).
    """
    try:
        value = float(sfreq)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(sfreq, bool) or not math.isfinite(value) or not MIN_SFREQ <= value <= MAX_SFREQ:
        where = f"{source}: " if source else ""
        shown = f"{value:g} Hz" if math.isfinite(value) else repr(sfreq)
        raise ValueError(f"{where}sampling rate {shown} {what} is implausible for EEG "
                         f"(expected {MIN_SFREQ:g}-{MAX_SFREQ:g} Hz)")
    return value
