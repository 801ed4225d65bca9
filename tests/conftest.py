"""Shared test fixtures.

Real recordings live in ``../shared/data`` next to the repository (override with ``EEG_SHARED_DATA``).
A fresh clone does not have them, so every test that needs them takes the ``shared_data`` fixture and is
skipped cleanly when the folder is absent. The data are never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real EEG data folder {SHARED_DATA} is absent")
    return SHARED_DATA
