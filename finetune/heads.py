"""Task heads on the backbone, finetuning modes, and layer-wise learning-rate decay.

- :class:`ClassificationHead`: standardisation -> dropout -> Linear on the class token (``pool="cls"``),
  the masked mean of the tokens (``pool="mean"``, LaBraM's choice for its finetuning) or one token mean per
  channel (``pool="channels"``, keeping the montage); with ``gain``, also each channel's log RMS amplitude,
  which the patch encoder normalises away (``foundation.readout.channel_log_rms``).
- Modes: ``"finetune"`` trains everything; ``"linear_probe"`` freezes the backbone and keeps it in eval
  mode (no dropout / drop path / MoE gate noise), so only the head learns: the standard measure of what
  the pretrained features already hold.
- :func:`param_groups`: LaBraM / BEiT layer-wise LR decay. With ``L`` backbone layers, parameters get
  ``lr * decay ** (L + 1 - layer_id)`` where the embedding (patch encoder, spatial/temporal embeddings,
  class token) is layer 0, backbone layer ``i`` is ``i + 1``, and everything above the last layer
  (final norm, the heads) is ``L + 1`` (scale 1). Lower layers hold generic features that pretraining
  got right, so they move least. Biases, norms, embedding tables, the class/mask tokens and the SSM's
  ``A_log`` / ``D`` (marked ``_no_weight_decay`` by foundation) get no weight decay.
  Exception: the MoE task embeddings (``moes.<i>.task_embed``) are not generic pretrained features but
  the one place a new task enters the router, so they get the full LR (scale 1) unless the backbone is a
  ``task_embed="legacy"`` one (or ``task_layer_decay=True``), where they decay with their layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from foundation.readout import align_channels, channel_log_rms, channel_means
from runtime.engine import param_groups as engine_param_groups

__all__ = ["ClassificationHead", "layer_id", "param_groups", "set_mode", "POOLS", "NORMS", "MODES"]

POOLS = ("cls", "mean", "channels")
NORMS = ("standard", "layer")
MODES = ("finetune", "linear_probe")

_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks|moes)\.(\d+)\.")
_TASK_EMBED = re.compile(r"(?:^|\.)moes\.\d+\.task_embed\.")
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed\w*|cls_token|mask_token|pos_embed\w*|spatial\w*|temporal\w*)(?:\.|$)")


class ClassificationHead(nn.Module):
    """Backbone output -> ``logits [b, n_classes]``.

    Args:
        d_model: token width d.
        n_classes: number of classes (>= 2).
        pool: what the head reads (``foundation.readout``): ``"cls"`` the class token ``[b, d]``; ``"mean"``
            the mean of the real tokens ``[b, d]``; ``"channels"`` one token mean per channel of
            ``channel_ids`` (vocabulary ids, in that order), flattened ``[b, C * d]`` (a window's other
            channels are left out, its missing ones read as zeros).
        dropout: before the linear layer.
        channel_ids: the channels of ``pool="channels"``.
        norm: ``"standard"``: per-feature standardisation with fixed statistics of the training features
            (buffers ``feature_mean`` / ``feature_std``, set by finetuning before its first step), so the head
            is a logistic regression on standardised features and can start as the one fitted on the
            frozen backbone (``set_linear``, LP-FT); ``"layer"``: a LayerNorm (how heads were saved before).
        gain: also read the input's log RMS amplitude, appended after the token features: one per channel of
            ``channel_ids`` with ``pool="channels"`` (``[b, C * d + C]``), else the mean over the window's real
            channels (``[b, d + 1]``). Needs ``norm="standard"`` (a LayerNorm would mix it into the tokens' scale).
    """

    def __init__(self, d_model: int, n_classes: int, pool: Literal["cls", "mean", "channels"] = "cls",
                 dropout: float = 0.0, *, channel_ids: Sequence[int] = (), norm: Literal["standard", "layer"] = "layer",
                 gain: bool = False) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if n_classes < 2:
            raise ValueError(f"a classification head needs n_classes >= 2, got {n_classes}")
        if pool == "channels" and not channel_ids:
            raise ValueError("pool='channels' needs the channel ids the head reads")
        if gain and norm != "standard":
            raise ValueError("gain=True needs norm='standard'")
        self.pool, self.n_classes, self.norm_kind, self.gain = pool, n_classes, norm, bool(gain)
        if pool == "channels":
            self.register_buffer("channel_ids", torch.as_tensor(list(channel_ids), dtype=torch.long))
        n_read = len(channel_ids) if pool == "channels" else 1
        self.in_features = (d_model + int(self.gain)) * n_read
        if norm == "layer":
            self.norm = nn.LayerNorm(d_model)
        else:
            self.register_buffer("feature_mean", torch.zeros(self.in_features))
            self.register_buffer("feature_std", torch.ones(self.in_features))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.in_features, n_classes)
        # LaBraM initialises the head small (trunc-normal 0.02, scaled by 1e-3) so the first steps of
        # finetuning do not push large, random gradients into the pretrained layers.
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        with torch.no_grad():
            self.fc.weight.mul_(1e-3)
        nn.init.zeros_(self.fc.bias)

    def features(self, output, channel_ids: torch.Tensor | None = None,
                 channel_mask: torch.Tensor | None = None, x: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads from an ``EEGMambaOutput`` (and, with ``gain``, the input ``x [b, c, t]``):
        ``[b, in_features]``, before normalisation."""
        if self.gain and x is None:
            raise ValueError("a head with gain=True reads the input's amplitude: pass x")
        if self.pool == "channels":
            if channel_ids is None:
                raise ValueError("pool='channels' needs the batch's channel_ids")
            per_channel = channel_means(output.tokens, output.token_mask, channel_ids.shape[1])
            feats = align_channels(per_channel, channel_ids, channel_mask, self.channel_ids).flatten(1)
            if not self.gain:
                return feats
            gains = align_channels(channel_log_rms(x, channel_mask).unsqueeze(-1).to(feats.dtype), channel_ids,
                                   channel_mask, self.channel_ids).flatten(1)
            return torch.cat([feats, gains], dim=1)
        feats = output.cls if self.pool == "cls" else output.pooled
        if not self.gain:
            return feats
        real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if channel_mask is None else channel_mask
        g = channel_log_rms(x, real).sum(1) / real.sum(1).clamp_min(1)
        return torch.cat([feats, g.unsqueeze(1).to(feats.dtype)], dim=1)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        if self.norm_kind == "layer":
            return self.norm(features)
        return (features - self.feature_mean) / self.feature_std

    def forward(self, output, channel_ids: torch.Tensor | None = None,
                channel_mask: torch.Tensor | None = None, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.dropout(self.normalize(self.features(output, channel_ids, channel_mask, x))))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise features with these training-set statistics (``norm="standard"``)."""
        if self.norm_kind != "standard":
            raise ValueError("set_statistics needs norm='standard'")
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=self.feature_mean.dtype))
        self.feature_std.copy_(torch.as_tensor(std, dtype=self.feature_std.dtype).clamp_min(1e-6))

    @torch.no_grad()
    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Load a linear classifier of the standardised features (``weight [k, in_features]``, ``bias [k]``)."""
        self.fc.weight.copy_(torch.as_tensor(weight, dtype=self.fc.weight.dtype))
        self.fc.bias.copy_(torch.as_tensor(bias, dtype=self.fc.bias.dtype))


def layer_id(name: str, n_layers: int, prefix: str = "backbone.") -> int:
    """Depth of parameter ``name`` for layer-wise LR decay (0 = embedding ... ``n_layers + 1`` = top)."""
    if not name.startswith(prefix):
        return n_layers + 1  # heads
    inner = name[len(prefix):]
    m = _LAYER.search(inner)
    if m:
        return int(m.group(1)) + 1
    if _EMBEDDING.search(inner):
        return 0
    return n_layers + 1  # final norm and other parameters above the layers


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    n_layers: int,
    prefix: str = "backbone.",
    task_layer_decay: bool | None = None,
) -> list[dict]:
    """AdamW parameter groups with layer-wise LR decay over trainable parameters.

    The engine's groups (``runtime.engine.param_groups``: no decay on vectors, embedding tables and
    ``_no_weight_decay`` tags), one per (LR scale, decay); each carries ``lr`` (already scaled),
    ``weight_decay``, ``lr_scale`` and ``names``; the scheduler multiplies ``lr`` by its factor.

    ``task_layer_decay``: whether the MoE task embeddings decay with their layer; None = only for a
    backbone (``model.backbone`` or ``model``) whose config has ``task_embed="legacy"``.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if task_layer_decay is None:
        backbone = getattr(model, "backbone", model)
        task_layer_decay = getattr(getattr(backbone, "config", None), "task_embed", "legacy") == "legacy"

    def scale(name: str) -> float:
        if not task_layer_decay and _TASK_EMBED.search(name):
            return 1.0
        return layer_decay ** (n_layers + 1 - layer_id(name, n_layers, prefix))

    return engine_param_groups(model, weight_decay, lr=lr, lr_scale=scale)


def set_mode(backbone: nn.Module, mode: str) -> None:
    """``"linear_probe"``: freeze ``backbone`` (requires_grad False); ``"finetune"``: train it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for p in backbone.parameters():
        p.requires_grad_(mode == "finetune")


def trainable(parameters: Iterable[nn.Parameter]) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in parameters if p.requires_grad)
