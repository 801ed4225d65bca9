"""What the backbone learns to predict: VQ-NSP code ids (LaBraM) or Gaussian-masked STFT maps (SpecMoE).

Public API (imported lazily, so ``import tokenizer`` stays cheap)::

    from tokenizer import VQNSP, VQNSPConfig, EMACodebook
    from tokenizer import STFTConfig, MaskConfig, stft, istft, sample_masks, corrupt, masked_spectral_loss
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQNSP": "tokenizer.vqnsp",
    "VQNSPConfig": "tokenizer.vqnsp",
    "spectrum_targets": "tokenizer.vqnsp",
    "read_vqnsp_config": "tokenizer.vqnsp",
    "EMACodebook": "tokenizer.codebook",
    "QuantizerOutput": "tokenizer.codebook",
    "spherical_kmeans": "tokenizer.codebook",
    "STFTConfig": "tokenizer.spectral",
    "MaskConfig": "tokenizer.spectral",
    "FAMILIES": "tokenizer.spectral",
    "stft": "tokenizer.spectral",
    "istft": "tokenizer.spectral",
    "spectral_target": "tokenizer.spectral",
    "to_patches": "tokenizer.spectral",
    "sample_masks": "tokenizer.spectral",
    "apply_mask": "tokenizer.spectral",
    "masked_spectral_loss": "tokenizer.spectral",
    "corrupt": "tokenizer.spectral",
    "Corrupted": "tokenizer.spectral",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
