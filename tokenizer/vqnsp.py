"""VQ-NSP: LaBraM's vector-quantised neural-spectrum tokenizer, on the backbone's BiMamba blocks.

::

    x [b c t] --ChannelPatchEmbed--> [b (c p) d] --BiMamba x n_layers--> LayerNorm --Linear-Tanh-Linear-->
      z [b (c p) code_dim] --EMACodebook--> q (straight-through), codes [b c p]
      q --Linear + channel/patch embeddings--> BiMamba x decoder_layers --> LayerNorm -->
        amplitude head [b c p f], phase head [b c p f]          f = patch_size // 2 + 1 (101 bins, 0..100 Hz)

Targets: each 1-s patch's 200-point rFFT (bin k = k Hz at 200 Hz), amplitude ``|X|`` and phase ``angle(X)``
(in [-pi, pi]), each **z-scored per sample**: mean and standard deviation over all real channels, patches
and frequency bins of that sample (LaBraM's ``std_norm`` over dims (channel, patch, freq)), padded channels
excluded from the statistics and from the loss. Loss = commitment (quantisation) + ``amp_weight`` x MSE(amp)
+ ``phase_weight`` x MSE(phase), each MSE averaged over real (channel, patch, bin) entries. Phase is
regressed as LaBraM does (no wrap-around handling), so its loss stays high on noise-like patches; it is
the amplitude that carries most of what a code can tell.

Why BiMambaBlocks directly and not ``foundation.EEGMamba``: the tokenizer is a plain encoder/decoder (LaBraM's
is a plain transformer); the backbone's task-aware MoE, task ids, class tokens and auxiliary loss have no
role here and would only add routing noise to the code assignment. Reusing ``ChannelPatchEmbed`` and
``BiMambaBlock`` keeps the same patching (1-s patches, channel-id and patch-index embeddings) and the same
padding-aware, linear-time sequence mixing as the backbone the codes will be predicted by.

Padding: real tokens are packed to the front of the sequence before the BiMamba stacks (stable order,
channel-major "(c p)"), as the backbone does, so a sample's codes do not depend on how many padded channels
its batch has or where they sit.
"""

# No ``from __future__ import annotations``: PyTorchModelHubMixin reads the ``config`` annotation of
# ``__init__`` and needs the real class.

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from foundation.bimamba import BiMambaBlock
from foundation.checkpoint import StrictHubMixin
from foundation.embed import ChannelPatchEmbed, check_inputs
from runtime.signal import PATCH_SAMPLES
from tokenizer.codebook import EMACodebook

__all__ = ["VQNSPConfig", "VQNSP", "spectrum_targets", "read_vqnsp_config", "TOKENIZER_SIZES"]



@dataclass(frozen=True)
class VQNSPConfig:
    """Architecture and loss of a :class:`VQNSP` tokenizer (defaults = "base", the paper's codebook).

    Fields:
        codebook_size, code_dim: codebook rows K and width D (LaBraM: 8192 x 64).
        d_model: token width of encoder and decoder. n_layers: encoder BiMamba blocks.
        decoder_layers: decoder BiMamba blocks (LaBraM: 3 transformer layers).
        patch_size: samples per patch (200 = 1 s at 200 Hz; also the FFT length of the targets).
        max_patches: longest window in patches. n_channel_ids: rows of the channel-id embeddings.
        conv_channels: feature maps of the patch encoder's temporal conv.
        d_state, d_conv, expand: Mamba state size, causal conv width, inner expansion.
        drop_path: stochastic depth of the last encoder block (linearly less for earlier blocks).
        decay, kmeans_init, kmeans_iters, kmeans_init_samples, dead_code_threshold, commitment_weight:
            see :class:`tokenizer.codebook.EMACodebook`.
        amp_weight, phase_weight: weights of the amplitude and phase MSEs.
        zscore_eps: added to the per-sample standard deviation of the targets.
        code_norm: centre and scale each latent feature before the l2 normalisation. Measured on the tiny
            config: without it the decoder's gradient pushes every token's latent in a common direction (mean
            pairwise cosine 0.6 -> 0.98 within 20 steps) and the codebook collapses to 1-5 codes; centring
            removes exactly that common mode. "running" (default): the values use running statistics (updated
            from each training batch first) in training and in ``encode`` alike, so the codes the tokenizer
            trains on are the codes ``encode`` gives; the gradient is BatchNorm's (batch statistics), which is
            what removes the common mode. "batchnorm" (legacy): batch statistics in training, running ones in
            ``encode`` (69% of codes agreed after 800 steps). "none" is LaBraM's plain path.
        patch_norm: the patch encoder's GroupNorm statistics, "sample" or legacy "patch" (see
            ``foundation.embed.TemporalConv``).
        dead_decay, usage_window: see :class:`tokenizer.codebook.EMACodebook` (None = legacy dead-code rule).
    """

    codebook_size: int = 8192
    code_dim: int = 64
    d_model: int = 128
    n_layers: int = 6
    decoder_layers: int = 3
    patch_size: int = PATCH_SAMPLES
    max_patches: int = 64
    n_channel_ids: int = 512
    conv_channels: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    drop_path: float = 0.0
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    kmeans_init_samples: int | None = None
    dead_code_threshold: float = 0.02
    commitment_weight: float = 1.0
    amp_weight: float = 1.0
    phase_weight: float = 1.0
    zscore_eps: float = 1e-6
    code_norm: str = "running"  # "running" | "batchnorm" | "none"
    patch_norm: str = "sample"  # "sample" | "patch"
    dead_decay: float | None = 0.9
    usage_window: int = 50

    # Missing from a config.json written before these fields existed: what the code did then.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"patch_norm": "patch", "dead_decay": None}

    def __post_init__(self) -> None:
        positive = ("codebook_size", "code_dim", "d_model", "n_layers", "decoder_layers", "patch_size",
                    "max_patches", "n_channel_ids", "conv_channels", "d_state", "d_conv", "expand", "kmeans_iters")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VQNSPConfig.{name} must be a positive integer, got {value!r}")
        if self.codebook_size < 2:
            raise ValueError(f"VQNSPConfig.codebook_size must be >= 2, got {self.codebook_size}")
        if self.kmeans_init_samples is not None and self.kmeans_init_samples < 1:
            raise ValueError(f"VQNSPConfig.kmeans_init_samples must be >= 1 or None, got {self.kmeans_init_samples}")
        if self.code_norm not in ("running", "batchnorm", "none"):
            raise ValueError(f"VQNSPConfig.code_norm must be 'running', 'batchnorm' or 'none', got {self.code_norm!r}")
        if self.patch_norm not in ("sample", "patch"):
            raise ValueError(f"VQNSPConfig.patch_norm must be 'sample' or 'patch', got {self.patch_norm!r}")
        if self.dead_decay is not None and not 0.0 < self.dead_decay < 1.0:
            raise ValueError(f"VQNSPConfig.dead_decay must be in (0, 1) or None, got {self.dead_decay!r}")
        if self.usage_window < 1:
            raise ValueError(f"VQNSPConfig.usage_window must be >= 1, got {self.usage_window!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"VQNSPConfig.drop_path must be in [0, 1), got {self.drop_path!r}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"VQNSPConfig.decay must be in (0, 1), got {self.decay!r}")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ValueError(f"VQNSPConfig.dead_code_threshold must be in [0, 1), got {self.dead_code_threshold!r}")
        for name in ("commitment_weight", "amp_weight", "phase_weight", "zscore_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"VQNSPConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def n_freqs(self) -> int:
        """rFFT bins per patch (101 for 200-sample patches: 0..100 Hz at 200 Hz)."""
        return self.patch_size // 2 + 1

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "VQNSPConfig":
        """A named size with overrides: "tiny" (CPU tests, 512 x 32 codebook, ~60k parameters) or "base".

        Raises:
            ValueError: unknown size or unknown override key.
        """
        if size not in TOKENIZER_SIZES:
            raise ValueError(f"VQNSPConfig.from_size: unknown size {size!r}; expected one of {sorted(TOKENIZER_SIZES)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"VQNSPConfig.from_size: unknown field(s) {unknown}")
        return cls(**{**TOKENIZER_SIZES[size], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TOKENIZER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(codebook_size=512, code_dim=32, d_model=32, n_layers=2, decoder_layers=1, d_state=8),
    "base": dict(codebook_size=8192, code_dim=64, d_model=128, n_layers=6, decoder_layers=3, d_state=16),
}


class RunningStatNorm(nn.BatchNorm1d):
    """BatchNorm whose *values* always use the running statistics, in training as in eval.

    Training: the running mean/variance are first updated from the batch (cumulative average over the
    first ``1 / momentum`` batches, then an EMA), then ``y = (z - running_mean) / sqrt(running_var + eps)``;
    the gradient is taken through batch statistics (straight-through: ``y_batch + sg(y_running - y_batch)``),
    which is what projects the common-mode direction out of the encoder's updates. So the code a token gets
    in a training step is the code ``encode`` gives it. Same parameters and buffers as ``nn.BatchNorm1d``.
    Input ``z [n D]``.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(z)
        zf = z.float()
        mean = zf.mean(0)
        var = zf.var(0, unbiased=False)
        with torch.no_grad():
            self.num_batches_tracked += 1
            rate = max(self.momentum or 0.0, 1.0 / float(self.num_batches_tracked))
            n = zf.shape[0]
            self.running_mean.lerp_(mean.detach(), rate)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), rate)
        y_batch = (zf - mean) * torch.rsqrt(var + self.eps)
        y_run = (zf - self.running_mean) * torch.rsqrt(self.running_var + self.eps)
        return (y_batch + (y_run - y_batch).detach()).to(z.dtype)


def _masked_zscore(v: torch.Tensor, channel_mask: torch.Tensor, eps: float) -> torch.Tensor:
    """Z-score ``v [b c p f]`` per sample over its real (c, p, f) entries; padded channels become 0."""
    w = channel_mask[:, :, None, None].to(v.dtype).expand_as(v)
    n = w.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    mean = (v * w).sum(dim=(1, 2, 3), keepdim=True) / n
    var = (((v - mean) * w) ** 2).sum(dim=(1, 2, 3), keepdim=True) / n
    return torch.where(w > 0, (v - mean) / (var.sqrt() + eps), torch.zeros((), dtype=v.dtype, device=v.device))


def spectrum_targets(
    x: torch.Tensor, channel_mask: torch.Tensor, patch_size: int = PATCH_SAMPLES, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch rFFT amplitude and phase, each z-scored per sample: ``x [b c (p s)] -> amp, phase [b c p f]``.

    ``f = s // 2 + 1``; with 200-sample patches at 200 Hz bin ``k`` is ``k`` Hz. Statistics run over the
    real channels only (``channel_mask [b c]`` True); padded entries are 0.
    """
    patches = rearrange(x.float(), "b c (p s) -> b c p s", s=patch_size)
    spec = torch.fft.rfft(patches, dim=-1)
    return _masked_zscore(spec.abs(), channel_mask, eps), _masked_zscore(spec.angle(), channel_mask, eps)


def _pack(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move real tokens to the front, keeping their order: ``[b L d], [b L] -> packed, packed_mask, order``."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    packed = tokens.gather(1, order.unsqueeze(-1).expand_as(tokens))
    return packed, mask.gather(1, order), order


def _unpack(packed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(packed).scatter_(1, order.unsqueeze(-1).expand_as(packed), packed)


class _Stack(nn.Module):
    """BiMamba blocks + final LayerNorm over a padded token sequence ``[b L d]`` (packing inside)."""

    def __init__(self, config: VQNSPConfig, n_blocks: int, drop_path: float) -> None:
        super().__init__()
        rates = [drop_path * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.blocks = nn.ModuleList(
            BiMambaBlock(config.d_model, config.d_state, config.d_conv, config.expand, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, packed_mask, order = _pack(h, mask)
        for block in self.blocks:
            h = block(h, packed_mask)
        h = _unpack(self.norm(h), order)
        return torch.where(mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))


def _head(d_in: int, d_out: int) -> nn.Sequential:
    # LaBraM's encode/decode "task layers": Linear -> Tanh -> Linear.
    return nn.Sequential(nn.Linear(d_in, d_in), nn.Tanh(), nn.Linear(d_in, d_out))


class VQNSP(
    nn.Module,
    StrictHubMixin,
    library_name="eegfm",
    tags=["eeg", "tokenizer", "vector-quantization", "mamba"],
):
    """Vector-quantised neural-spectrum tokenizer, constructed as ``VQNSP(config)``.

    ``forward`` trains it (returns the losses and codebook statistics), ``encode`` gives the code ids the
    backbone learns to predict. Inputs everywhere: ``x [b c t]`` float (100 µV units, 200 Hz, t a multiple
    of ``patch_size``), ``channel_ids [b c]`` long vocabulary ids, ``channel_mask [b c]`` bool (True = real).
    """

    config_class = VQNSPConfig
    checkpoint_kind = "VQNSP tokenizer"

    def __init__(self, config: VQNSPConfig) -> None:
        super().__init__()
        if not isinstance(config, VQNSPConfig):
            raise TypeError(f"VQNSP(config): expected a VQNSPConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.embed = ChannelPatchEmbed(
            d, config.patch_size, config.max_patches, config.n_channel_ids, config.conv_channels, patch_norm=config.patch_norm
        )
        self.encoder = _Stack(config, config.n_layers, config.drop_path)
        self.to_code = _head(d, config.code_dim)
        self.codebook = EMACodebook(
            config.codebook_size,
            config.code_dim,
            decay=config.decay,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            kmeans_init_samples=config.kmeans_init_samples,
            dead_code_threshold=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
            dead_decay=config.dead_decay,
            usage_window=config.usage_window,
        )
        norms = {"running": RunningStatNorm, "batchnorm": nn.BatchNorm1d}
        self.code_norm = norms[config.code_norm](config.code_dim, affine=False) if config.code_norm in norms else None
        self.from_code = nn.Linear(config.code_dim, d)
        self.dec_spatial = nn.Embedding(config.n_channel_ids, d)
        self.dec_temporal = nn.Embedding(config.max_patches, d)
        nn.init.trunc_normal_(self.dec_spatial.weight, std=0.02)
        nn.init.trunc_normal_(self.dec_temporal.weight, std=0.02)
        self.decoder = _Stack(config, config.decoder_layers, 0.0)
        self.amp_head = _head(d, config.n_freqs)
        self.phase_head = _head(d, config.n_freqs)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check(self, x, channel_ids, channel_mask) -> tuple[torch.Tensor, torch.Tensor]:
        return check_inputs(
            x, channel_ids, channel_mask,
            patch_size=self.config.patch_size, max_patches=self.config.max_patches,
            n_channel_ids=self.config.n_channel_ids,
        )

    def _encode_latent(
        self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [b (c p) code_dim]`` (before quantisation) and ``token_mask [b (c p)]``."""
        tokens, token_mask, _ = self.embed(x, channel_ids, channel_mask)
        z = self.to_code(self.encoder(tokens, token_mask))
        if self.code_norm is not None:
            # Statistics over real tokens only: padding must not shift the centring.
            z = z.index_put((token_mask,), self.code_norm(z[token_mask]))
        return z, token_mask

    def forward(
        self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """One tokenizer training step's forward (updates the codebook in training mode).

        Returns a dict:
            ``loss`` (scalar, to backpropagate) = ``loss_quant + amp_weight * loss_amp + phase_weight * loss_phase``;
            ``loss_quant``, ``loss_amp``, ``loss_phase`` (scalars);
            ``codes [b c p]`` long (-1 at padded channels);
            ``perplexity`` (exp entropy of this batch's code histogram), ``usage`` (global: fraction of the
            codebook used in the last ``usage_window`` training steps), ``batch_usage`` (this batch), ``dead_fraction`` (fraction under the EMA dead threshold),
            ``n_restarted`` (codes restarted this step) -- detached scalar tensors for logging;
            ``pred_amp``, ``pred_phase``, ``target_amp``, ``target_phase`` ``[b c p f]`` (z-scored units).
        """
        channel_ids, channel_mask = self._check(x, channel_ids, channel_mask)
        b, c, t = x.shape
        p = t // self.config.patch_size
        z, token_mask = self._encode_latent(x, channel_ids, channel_mask)
        vq = self.codebook(z, token_mask)

        h = self.from_code(vq.quantized)
        pos = self.dec_spatial(channel_ids)[:, :, None, :] + self.dec_temporal.weight[:p][None, None, :, :]
        h = h + rearrange(pos, "b c p d -> b (c p) d")
        h = self.decoder(h, token_mask)
        pred_amp = rearrange(self.amp_head(h), "b (c p) f -> b c p f", c=c)
        pred_phase = rearrange(self.phase_head(h), "b (c p) f -> b c p f", c=c)

        x_real = torch.where(channel_mask[:, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        target_amp, target_phase = spectrum_targets(x_real, channel_mask, self.config.patch_size, self.config.zscore_eps)
        weight = channel_mask[:, :, None, None].to(pred_amp.dtype).expand_as(pred_amp)
        denom = weight.sum().clamp_min(1)
        loss_amp = ((pred_amp.float() - target_amp) ** 2 * weight).sum() / denom
        loss_phase = ((pred_phase.float() - target_phase) ** 2 * weight).sum() / denom
        loss = vq.loss + self.config.amp_weight * loss_amp + self.config.phase_weight * loss_phase
        return {
            "loss": loss,
            "loss_quant": vq.loss,
            "loss_amp": loss_amp,
            "loss_phase": loss_phase,
            "codes": rearrange(vq.codes, "b (c p) -> b c p", c=c),
            "perplexity": vq.perplexity.detach(),
            "usage": vq.used_fraction.detach(),
            "batch_usage": vq.batch_used_fraction.detach(),
            "dead_fraction": vq.dead_fraction.detach(),
            "n_restarted": torch.tensor(float(vq.n_restarted)),
            "pred_amp": pred_amp,
            "pred_phase": pred_phase,
            "target_amp": target_amp,
            "target_phase": target_phase,
        }

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Code ids ``[b c p]`` long (-1 at padded channels); deterministic, never updates the codebook.

        Runs the encoder in eval mode (no drop-path) whatever the module's mode, and restores the mode.
        """
        channel_ids, channel_mask = self._check(x, channel_ids, channel_mask)
        was_training = self.training
        self.eval()
        try:
            z, token_mask = self._encode_latent(x, channel_ids, channel_mask)
        finally:
            self.train(was_training)
        codes = self.codebook.quantize(z)
        codes = torch.where(token_mask, codes, torch.full_like(codes, -1))
        return rearrange(codes, "b (c p) -> b c p", c=x.shape[1])


def read_vqnsp_config(path: str | Path) -> VQNSPConfig:
    """Read ``{path}/config.json`` (or that file) strictly into a :class:`VQNSPConfig`."""
    return VQNSP.read_config(path)
