"""Self-supervised objectives behind one interface, trained by ``pretrain.trainer.Trainer``.

An :class:`Objective` is an ``nn.Module`` that owns everything it trains (backbone, heads) and any
frozen target model; ``forward(batch)`` takes a batch of ``pretrain.data`` (``x [b c t]``,
``channel_ids [b c]``, ``channel_mask [b c]``) and returns ``dict(loss=scalar, <name>=scalar logs,
expert_load=[n_layers, n_experts])``; ``export(dir)`` writes what downstream code loads.

* :class:`MaskedTokenObjective` (LaBraM): a frozen VQ-NSP tokenizer turns every (channel, 1-s patch)
  into a code ``[b c p]``; half of the real patches are replaced by the backbone's [MASK] token and a
  linear head predicts their codes (cross-entropy over the codebook). Symmetric masking: the same
  batch is also run with the complement mask, so every patch is a target once per step; both halves
  go through the backbone as one ``2b`` batch. Loss = CE(mask) + CE(complement) (LaBraM sums them).
* :class:`MaskedSTFTObjective` (SpecMoE): ``tokenizer.spectral.corrupt`` removes Gaussian-smoothed
  time / frequency / time-frequency regions from each channel's STFT and returns the corrupted signal
  to the time domain; the backbone sees that signal and a linear head predicts, from each token, the
  clean log-magnitude STFT frames of its patch ``[b c p (k f)]``; the loss counts masked energy only.
* :class:`TokenizerObjective`: trains a VQ-NSP tokenizer itself (``python -m pretrain.train_tokenizer``).

Padded channels (``channel_mask`` False) are never masked and never count in a loss. The MoE
auxiliary loss of the backbone (already weighted by its ``balance_coef`` / ``z_coef``) is added with
``moe_aux_weight`` (default 1, so the backbone config holds the one effective coefficient).

Task-aware pretraining (``task_aware=True``, default): each sample's shard ``task`` name (the batch's
``task`` list) selects its router row through ``foundation.tasks.TASK_IDS`` (unknown / unlabeled -> 0),
so the rows finetuning uses are trained too; labels are never read. ``task_aware=False``: every sample
is task 0 (the legacy behaviour). Randomness (masks, MoE noise) comes
from the global torch RNG, which accelerate checkpoints, so a resumed run draws the same masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from foundation.augment import AugmentConfig, augment
from foundation.model import EEGMamba, EEGMambaConfig
from foundation.tasks import task_ids as task_ids_of
from runtime.signal import PATCH_SAMPLES
from tokenizer.spectral import (
    BAND_POWER_HZ, MaskConfig, STFTConfig, band_log_power, corrupt, demean_target, masked_spectral_loss, to_patches,
)


class Objective(nn.Module):
    """Interface: ``forward(batch) -> dict(loss=..., ...)`` and ``export(dir)``."""

    name = "objective"

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def export(self, out_dir: str | Path) -> Path:  # pragma: no cover - interface
        raise NotImplementedError


def random_patch_mask(channel_mask: torch.Tensor, n_patches: int, ratio: float) -> torch.Tensor:
    """Mask exactly ``round(ratio * real patches)`` random (channel, patch) positions per sample.

    Args:
        channel_mask: ``[b c]`` bool, True = real channel.
        n_patches: p, patches per channel.
        ratio: fraction of real positions to mask, in (0, 1).
    Returns:
        ``[b c p]`` bool, True = masked; always False on padded channels.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    b, c = channel_mask.shape
    noise = torch.rand(b, c, n_patches, device=channel_mask.device)
    noise = noise.masked_fill(~channel_mask[:, :, None], 2.0)  # padding sorts last, never masked
    ranks = noise.flatten(1).argsort(dim=1).argsort(dim=1)
    n_mask = (channel_mask.sum(1) * n_patches * ratio).round().long()
    return (ranks < n_mask[:, None]).view(b, c, n_patches)


def build_backbone(size: str, overrides: dict[str, Any], crop_patches: int) -> EEGMamba:
    """``EEGMamba(EEGMambaConfig.from_size(size, **overrides))`` with room for ``crop_patches`` patches."""
    config = EEGMambaConfig.from_size(size, **overrides)
    if config.max_patches < crop_patches:
        config = EEGMambaConfig.from_size(size, **{**overrides, "max_patches": crop_patches})
    return EEGMamba(config)


def pad_channels(x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor, multiple: int):
    """``x [b c t]``, ``channel_ids``, ``channel_mask [b c]`` with ``c`` padded up to a multiple of ``multiple``
    (padded channels: zeros, id 0, mask False), so batches of a run take few distinct shapes and a compiled,
    CUDA-graphed step is reused. The model, the targets and the losses ignore padded channels."""
    extra = -x.shape[1] % multiple if multiple > 1 else 0
    if not extra:
        return x, channel_ids, channel_mask
    return F.pad(x, (0, 0, 0, extra)), F.pad(channel_ids, (0, extra)), F.pad(channel_mask, (0, extra), value=False)


class _BackboneObjective(Objective):
    """Shared by the backbone objectives: ``forward(batch)`` turns the batch into tensors (task ids, channel
    bucketing) and calls :meth:`compute`: tensors in and out, fixed shapes, no host synchronisation, so
    :meth:`compile_step` can hand it to ``torch.compile`` as one graph without breaks."""

    def __init__(self, backbone: EEGMamba, moe_aux_weight: float, task_aware: bool = True,
                 augment: AugmentConfig = AugmentConfig()) -> None:
        super().__init__()
        self.backbone = backbone
        self.moe_aux_weight = moe_aux_weight
        self.task_aware = task_aware
        self.augment = augment
        self.patch_size = backbone.config.patch_size
        self.channel_bucket = 1
        self._compiled = None

    def compile_step(self, *, mode: str | None = None, channel_bucket: int = 8) -> "_BackboneObjective":
        """Run :meth:`compute` in training through ``torch.compile(fullgraph=True, dynamic=False)`` (``mode``
        "reduce-overhead" adds CUDA graphs) and pad the channel count to a multiple of ``channel_bucket``, so
        a run compiles one graph per bucket. Eager (the default, and evaluation) stays the fallback."""
        self.channel_bucket = max(1, int(channel_bucket))
        self._compiled = torch.compile(self.compute, fullgraph=True, dynamic=False, mode=mode)
        return self

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, ids, cmask = pad_channels(batch["x"], batch["channel_ids"], batch["channel_mask"], self.channel_bucket)
        task_ids = self._task_ids(batch, x.shape[0], x.device)
        if self._compiled is None or not self.training:
            return self.compute(x, ids, cmask, task_ids)
        if x.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's graph outputs may be reused
        return self._compiled(x, ids, cmask, task_ids)

    def compute(self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor,
                task_ids: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def export(self, out_dir: str | Path) -> Path:
        """The backbone as ``EEGMamba.save_pretrained(out_dir)`` (what ``finetune/`` loads)."""
        out_dir = Path(out_dir)
        self.backbone.save_pretrained(out_dir)
        return out_dir

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, channel_ids, channel_mask)`` of a batch, augmented in training (what :meth:`compute` starts from)."""
        x, cmask = self._augmented(batch["x"], batch["channel_mask"])
        return x, batch["channel_ids"], cmask

    def _augmented(self, x: torch.Tensor, cmask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, channel_mask)``, augmented in training (before any target is computed)."""
        if self.training:
            x, cmask = augment(x, cmask, self.augment)
        return x, cmask

    def _task_ids(self, batch: dict[str, Any], n: int, device: torch.device) -> torch.Tensor:
        """``[n]`` router ids: the shards' task names when task-aware, else all 0 (pretraining)."""
        return task_ids_of(batch.get("task") if self.task_aware else None, n, device)


class MaskedTokenObjective(_BackboneObjective):
    """LaBraM masked code prediction with symmetric masking against a frozen VQ-NSP tokenizer.

    Args:
        backbone: the EEGMamba to train (adapter "channel_patch": the [MASK] token replaces patches).
        tokenizer: a trained ``tokenizer.vqnsp.VQNSP`` (frozen here) with the backbone's patch size.
        mask_ratio: fraction of real patches masked (LaBraM: 0.5).
        symmetric: also train on the complement mask.
        moe_aux_weight: multiplier of the backbone's (already weighted) MoE auxiliary loss.
        task_aware: route each sample with its shard task's id (see the module docstring).
        augment: training-time augmentation (``foundation.augment``), applied before the targets.
    """

    name = "masked_token"

    def __init__(self, backbone: EEGMamba, tokenizer: nn.Module, mask_ratio: float = 0.5, symmetric: bool = True,
                 moe_aux_weight: float = 1.0, task_aware: bool = True, augment: AugmentConfig = AugmentConfig()) -> None:
        super().__init__(backbone, moe_aux_weight, task_aware, augment)
        if backbone.config.adapter != "channel_patch":
            raise ValueError("objective masked_token needs model.adapter = 'channel_patch' (it masks channel patches)")
        tok_patch = getattr(getattr(tokenizer, "config", None), "patch_size", self.patch_size)
        if tok_patch != self.patch_size:
            raise ValueError(f"tokenizer patch_size {tok_patch} != backbone patch_size {self.patch_size}")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.codebook_size = int(tokenizer.codebook_size)
        self.head = nn.Linear(backbone.config.d_model, self.codebook_size)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.mask_ratio = mask_ratio
        self.symmetric = symmetric

    @classmethod
    def from_tokenizer_dir(cls, backbone: EEGMamba, tokenizer_dir: str | Path, **kwargs: Any) -> "MaskedTokenObjective":
        """Load the frozen tokenizer from a ``VQNSP.save_pretrained`` folder (``pretrain.train_tokenizer`` output)."""
        from tokenizer.vqnsp import VQNSP

        path = Path(tokenizer_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"objective.tokenizer = {str(path)!r} is not a trained tokenizer folder (no config.json). "
                "Train one first: accelerate launch -m pretrain.train_tokenizer --data.shards YOUR_SHARDS, then pass "
                "--objective.tokenizer RUN_DIR/model (or use --objective.tokenizer auto)"
            )
        return cls(backbone, VQNSP.from_pretrained(str(path)), **kwargs)

    def train(self, mode: bool = True) -> "MaskedTokenObjective":
        super().train(mode)
        self.tokenizer.eval()  # frozen targets: no EMA codebook updates, no dropout
        return self

    def compute(self, x: torch.Tensor, ids: torch.Tensor, cmask: torch.Tensor, task_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [b c t]`` -> CE over ``codebook_size`` on masked (and complement) patches."""
        x, cmask = self._augmented(x, cmask)
        b, c, t = x.shape
        p = t // self.patch_size
        codes = frozen_codes(self.tokenizer, x.float(), ids, cmask)  # [b c p], -1 at padded channels
        mask = random_patch_mask(cmask, p, self.mask_ratio)
        masks = [mask]
        if self.symmetric:
            masks.append(~mask & cmask[:, :, None])
        n = len(masks)
        out = self.backbone(
            x.repeat(n, 1, 1), ids.repeat(n, 1), cmask.repeat(n, 1), task_ids=task_ids.repeat(n),
            patch_mask=torch.cat(masks),
        )
        logits = rearrange(self.head(out.tokens), "(n b) (c p) k -> n b c p k", n=n, c=c)
        logs: dict[str, torch.Tensor] = {}
        total = x.new_zeros((), dtype=torch.float32)
        target = codes.clamp(min=0)
        for i, (m, tag) in enumerate(zip(masks, ("mask", "sym"))):
            # Mean over the masked patches as a weighted sum over all of them: fixed shapes, no indexing.
            w = m.float()
            count = w.sum().clamp_min(1.0)
            ce = F.cross_entropy(logits[i].float().flatten(0, 2), target.flatten(), reduction="none").view_as(w)
            loss = (ce * w).sum() / count
            total = total + loss
            logs[f"loss_{tag}"] = loss.detach()
            logs[f"acc_{tag}"] = ((logits[i].argmax(-1) == target).float() * w).sum().detach() / count
        aux = out.aux_loss.float()
        logs["moe_aux"] = aux.detach()
        return {"loss": total + self.moe_aux_weight * aux, **logs, "expert_load": out.expert_load}


@torch.no_grad()
def frozen_codes(tokenizer: nn.Module, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
    """``tokenizer.encode(x, channel_ids, channel_mask)`` ``[b c p]`` (-1 at padded channels) for a tokenizer
    kept in eval mode (the objective's frozen one), written with fixed shapes: in eval mode the code norm
    uses running statistics, one affine map per feature, so it applies to every token and the padded ones
    are dropped afterwards, where ``encode`` normalises the real tokens picked by a boolean index.
    ``tests/test_pretrain_objectives.py`` checks the two agree."""
    tokens, token_mask, _ = tokenizer.embed(x, channel_ids, channel_mask)
    z = tokenizer.to_code(tokenizer.encoder(tokens, token_mask))
    if tokenizer.code_norm is not None:
        z = tokenizer.code_norm(z.flatten(0, 1)).view_as(z)
    codes = tokenizer.codebook.quantize(z)
    codes = torch.where(token_mask, codes, torch.full_like(codes, -1))
    return rearrange(codes, "b (c p) -> b c p", c=x.shape[1])


class MaskedSTFTObjective(_BackboneObjective):
    """SpecMoE Gaussian-masked STFT reconstruction, with an optional band-power target.

    Args:
        backbone: the EEGMamba to train.
        stft: STFT settings (the hop must divide the patch size; ``max_hz`` and ``demean`` shape the target).
        mask: soft-mask settings (fraction hidden, families, widths).
        moe_aux_weight: multiplier of the backbone's (already weighted) MoE auxiliary loss.
        task_aware: route each sample with its shard task's id (see the module docstring).
        augment: training-time augmentation (``foundation.augment``), applied before the targets.
        band_power_weight: weight of a second target: each token predicts its patch's clean log band power
            (delta..gamma, ``tokenizer.spectral.BAND_POWER_HZ``) through its own linear head, on every real
            token. Masked reconstruction alone scores a token by the bins it can infer, and nothing asks the
            token to *hold* its own patch's spectrum; band power is the feature a linear readout of EEG most
            needs (the band-power baseline is strong on every task), so this target puts it in the tokens
            where a frozen probe and a finetuned head read them. 0 = off. Measured with the validation probe
            on held-out EEGMAT subjects (frozen per-channel features, subject folds): AUROC 0.60 without it,
            0.67-0.73 with it (weights 1 and 3, two seeds), where band power + LR scores 0.66.
    """

    name = "masked_stft"

    def __init__(self, backbone: EEGMamba, stft: STFTConfig = STFTConfig(), mask: MaskConfig = MaskConfig(),
                 moe_aux_weight: float = 1.0, task_aware: bool = True, augment: AugmentConfig = AugmentConfig(),
                 band_power_weight: float = 3.0) -> None:
        super().__init__(backbone, moe_aux_weight, task_aware, augment)
        if backbone.config.adapter != "channel_patch":
            raise ValueError("objective masked_stft predicts per (channel, patch) token: needs model.adapter = 'channel_patch'")
        if self.patch_size % stft.hop:
            raise ValueError(f"objective.stft.hop={stft.hop} must divide the patch size {self.patch_size}")
        if band_power_weight < 0:
            raise ValueError(f"objective.band_power_weight must be >= 0, got {band_power_weight}")
        self.stft, self.mask = stft, mask
        self.frames_per_patch = self.patch_size // stft.hop
        self.head = nn.Linear(backbone.config.d_model, self.frames_per_patch * stft.target_bins)
        self.band_power_weight = band_power_weight
        self.band_head = nn.Linear(backbone.config.d_model, len(BAND_POWER_HZ)) if band_power_weight > 0 else None

    def compute(self, x: torch.Tensor, ids: torch.Tensor, cmask: torch.Tensor, task_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Corrupt ``x [b c t]`` in the STFT domain, predict ``[b c p (k f)]`` clean frames, MSE on masked energy."""
        x, cmask = self._augmented(x, cmask)
        b, c, t = x.shape
        x_masked, target, soft = corrupt(x.float(), self.stft, self.mask, channel_mask=cmask)
        out = self.backbone(x_masked, ids, cmask, task_ids=task_ids)
        frames, bands = self._heads(out.tokens)
        pred = rearrange(frames.float(), "b (c p) kf -> b c p kf", c=c)
        bins = self.stft.target_bins
        scored = demean_target(target[..., :bins, :], cmask) if self.stft.demean else target[..., :bins, :]
        target_p = to_patches(scored, self.patch_size, self.stft)  # [b c p (k f)]
        mask_p = to_patches(soft[..., :bins, :], self.patch_size, self.stft)
        loss = masked_spectral_loss(pred, target_p, mask_p, cmask, threshold=self.mask.loss_threshold)
        aux = out.aux_loss.float()
        real = cmask[:, :, None, None].expand_as(mask_p).float()
        logs = {
            "loss_stft": loss.detach(),
            "masked_fraction": ((mask_p * real).sum() / real.sum().clamp_min(1.0)).detach(),
            "moe_aux": aux.detach(),
        }
        total = loss + self.moe_aux_weight * aux
        if self.band_head is not None:
            power = band_log_power(target, self.patch_size, self.stft)  # [b c p bands], of the clean signal
            if self.stft.demean:
                power = demean_target(power, cmask)
            guess = rearrange(bands.float(), "b (c p) m -> b c p m", c=c)
            weight = cmask[:, :, None, None].to(guess.dtype).expand_as(guess)
            band = (weight * (guess - power) ** 2).sum() / weight.sum().clamp_min(1.0)
            total = total + self.band_power_weight * band
            logs["loss_band"] = band.detach()
        return {"loss": total, **logs, "expert_load": out.expert_load}

    def _heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``head(tokens) [b L (k f)]`` and ``band_head(tokens) [b L bands]`` (None without the band target) as one
        matrix product over the stacked weights: a step pays per operator, so one product and its two gradients
        instead of two of each."""
        if self.band_head is None:
            return self.head(tokens), None
        weight = torch.cat([self.head.weight, self.band_head.weight])
        bias = torch.cat([self.head.bias, self.band_head.bias])
        both = F.linear(tokens, weight, bias)
        return both[..., : self.head.out_features], both[..., self.head.out_features:]


class TokenizerObjective(Objective):
    """Trains a VQ-NSP tokenizer: loss = quantisation + amplitude + phase (from ``VQNSP.forward``)."""

    name = "tokenizer"
    _LOGS = ("loss_quant", "loss_amp", "loss_phase", "perplexity", "usage", "batch_usage", "dead_fraction", "n_restarted")

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.patch_size = getattr(getattr(tokenizer, "config", None), "patch_size", PATCH_SAMPLES)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(batch["x"].float(), batch["channel_ids"], batch["channel_mask"])
        logs = {k: torch.as_tensor(out[k]).detach().float() for k in self._LOGS if k in out}
        return {"loss": out["loss"], **logs}

    def export(self, out_dir: str | Path) -> Path:
        """The tokenizer as ``VQNSP.save_pretrained(out_dir)`` (what ``MaskedTokenObjective`` loads)."""
        out_dir = Path(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
