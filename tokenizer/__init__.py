"""What the backbone learns to predict: VQ-NSP code ids (LaBraM) or Gaussian-masked STFT maps (SpecMoE).

A library: models, codebook and spectral masks only. Training it is ``pretrain.train_tokenizer`` (launched by
``accelerate launch -m pretrain.train_tokenizer``), so this package imports nothing from ``pretrain``.

Public API::

    from tokenizer import VQNSP, VQNSPConfig, EMACodebook
    from tokenizer import STFTConfig, MaskConfig, stft, istft, sample_masks, corrupt, masked_spectral_loss
"""

from tokenizer.codebook import EMACodebook, QuantizerOutput, spherical_kmeans
from tokenizer.spectral import (
    FAMILIES,
    Corrupted,
    MaskConfig,
    STFTConfig,
    apply_mask,
    corrupt,
    istft,
    masked_spectral_loss,
    sample_masks,
    spectral_target,
    stft,
    to_patches,
)
from tokenizer.vqnsp import VQNSP, VQNSPConfig, read_vqnsp_config, spectrum_targets

__all__ = [
    "FAMILIES", "VQNSP", "Corrupted", "EMACodebook", "MaskConfig", "QuantizerOutput", "STFTConfig", "VQNSPConfig",
    "apply_mask", "corrupt", "istft", "masked_spectral_loss", "read_vqnsp_config", "sample_masks", "spectral_target",
    "spectrum_targets", "spherical_kmeans", "stft", "to_patches",
]
