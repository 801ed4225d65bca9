"""The EEGMamba backbone: input adapters, BiMamba blocks, task-aware MoE, checkpoints.

Public API (imported lazily, so ``import foundation.configfile`` does not pull in torch)::

    from foundation import EEGMamba, EEGMambaConfig, EEGMambaOutput
    model = EEGMamba(EEGMambaConfig.from_size("tiny"))
    out = model(x, channel_ids, channel_mask, task_ids)      # x [b c t] at 200 Hz, 100 uV units
    model.save_pretrained("ckpt/"); EEGMamba.from_pretrained("ckpt/")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EEGMamba": "foundation.model",
    "EEGMambaConfig": "foundation.model",
    "EEGMambaOutput": "foundation.model",
    "CheckpointError": "foundation.checkpoint",
    "LoadReport": "foundation.checkpoint",
    "load_backbone_weights": "foundation.checkpoint",
    "read_config": "foundation.model",
    "SIZES": "foundation.model",
    "TaskMoE": "foundation.moe",
    "ChannelPatchEmbed": "foundation.embed",
    "STAdaptiveEmbed": "foundation.embed",
    "BiMambaBlock": "foundation.bimamba",
    "DropPath": "foundation.bimamba",
    "selective_scan": "foundation.ssm",
    "selective_scan_ref": "foundation.ssm",
    "ConfigError": "foundation.configfile",
    "parse_cli": "foundation.configfile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'foundation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
