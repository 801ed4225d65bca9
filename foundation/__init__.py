"""The EEGMamba backbone: input adapters, BiMamba blocks, task-aware MoE, checkpoints.

Public API::

    from foundation import EEGMamba, EEGMambaConfig, EEGMambaOutput
    model = EEGMamba(EEGMambaConfig.from_size("tiny"))
    out = model(x, channel_ids, channel_mask, task_ids)      # x [b c t] at 200 Hz, 100 uV units
    model.save_pretrained("ckpt/"); EEGMamba.from_pretrained("ckpt/")
"""

from foundation.bimamba import BiMambaBlock, DropPath
from foundation.checkpoint import CheckpointError, LoadReport, load_backbone_weights
from foundation.embed import ChannelPatchEmbed, STAdaptiveEmbed
from foundation.model import SIZES, EEGMamba, EEGMambaConfig, EEGMambaOutput, read_config
from foundation.moe import TaskMoE
from foundation.ssm import selective_scan, selective_scan_backend, selective_scan_ref
from runtime.config_dict import ConfigError

__all__ = [
    "BiMambaBlock", "ChannelPatchEmbed", "CheckpointError", "ConfigError", "DropPath", "EEGMamba", "EEGMambaConfig",
    "EEGMambaOutput", "LoadReport", "SIZES", "STAdaptiveEmbed", "TaskMoE", "load_backbone_weights", "read_config",
    "selective_scan", "selective_scan_backend", "selective_scan_ref",
]
