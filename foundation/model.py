"""EEGMamba: input adapter -> [BiMamba block -> task-aware MoE] x n_layers -> LayerNorm.

Checkpoints are Hugging Face style folders written by ``save_pretrained(dir)``: ``config.json`` (the
:class:`EEGMambaConfig` fields) + ``model.safetensors`` (+ a generated ``README.md`` model card), read
back by ``EEGMamba.from_pretrained(dir)`` through ``huggingface_hub.PyTorchModelHubMixin``. Loading is
strict and never unpickles anything; every failure names the file and what was expected.

Example::

    cfg = EEGMambaConfig.from_size("tiny")
    model = EEGMamba(cfg)
    out = model(x, channel_ids, channel_mask, task_ids)   # x [b c t] in 100 uV units at 200 Hz
    out.pooled                                            # [b d] features for a head
    model.save_pretrained("ckpt/"); EEGMamba.from_pretrained("ckpt/")
"""

# No ``from __future__ import annotations`` here: PyTorchModelHubMixin reads the ``config`` annotation
# of ``__init__`` with ``inspect.signature`` and needs the real class, not a string.

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from foundation.bimamba import BiMambaBlock
from foundation.checkpoint import CheckpointError, LoadReport, StrictHubMixin, load_backbone_weights
from foundation.embed import ChannelPatchEmbed, STAdaptiveEmbed
from foundation.index_checks import check_range
from foundation.moe import TaskMoE
from foundation.ssm import SCAN_BACKENDS
from runtime.signal import PATCH_SAMPLES

__all__ = [
    "EEGMambaConfig",
    "EEGMamba",
    "EEGMambaOutput",
    "CheckpointError",
    "LoadReport",
    "load_backbone_weights",
    "read_config",
    "SIZES",
]

@dataclass(frozen=True)
class EEGMambaConfig:
    """Architecture of an :class:`EEGMamba` backbone (the defaults are the "base" size).

    Fields:
        d_model: token / feature width d. n_layers: number of [BiMamba -> MoE] pairs.
        n_experts, top_k: routed experts per MoE layer and experts per token. n_tasks: rows of the task
            embedding (task 0 = pretraining/default, 1 seizure, 2 sleep, 3 emotion, 4 motor imagery).
        d_state, d_conv, expand: Mamba's SSM state size, causal conv width, inner expansion.
        patch_size: samples per patch (200 = 1 s at 200 Hz); inputs must have t a multiple of it.
        max_patches: longest window in patches (rows of the temporal embedding).
        n_channel_ids: rows of the spatial embedding (>= the channel vocabulary size).
        adapter: "channel_patch" (LaBraM tokens, one per channel x second) or "st_adaptive" (EEGMamba).
        drop_path: stochastic depth of the last layer; layer i uses ``drop_path * i / (n_layers - 1)``.
        moe_hidden: expert MLP width (None -> 2 * d_model). task_dim: task-embedding width (None -> d_model).
        moe_noise: noisy gating while training. balance_coef, z_coef: MoE auxiliary-loss weights, the
            effective ones: ``aux_loss`` is added to objectives with weight 1 (Shazeer et al.: 0.1 on the
            balance term; ST-MoE: 1e-3 on the router z-loss).
        gate_noise: "relative": gate-noise std = ``moe_noise_rel`` x each token's clean-logit spread
            (learnable factor); "absolute": the legacy ``softplus(W_n h) + 0.01``, which starts 3x larger
            than that spread. See foundation.moe.
        task_embed: "tracked" (task rows start small, the MoE records which rows training used, and
            ``inherit_task_rows`` starts unused rows from the used ones) or "legacy" (N(0, 1) rows).
        patch_norm: "sample": the patch encoder's GroupNorms take statistics over all real patches of a
            sample (LaBraM), so a patch's amplitude relative to the rest of its sample survives; "patch":
            legacy, each 1-s patch normalised on its own (amplitude discarded).
        channel_embed: "id": a learned spatial row per vocabulary id; "position": the embedding is computed
            from the electrode's standard 10-05 coordinates (``foundation.channel_positions``; a learned
            token for ids without a position), so a montage never seen in training lands near its
            neighbours. channel_patch adapter only.
        conv_channels: feature maps of the channel-patch temporal conv encoder.
        st_stride, st_wide_kernel: ST-Adaptive samples per token and wide-path kernel (None -> 8 * stride).
        scan_backend: selective-scan implementation (``foundation.ssm.SCAN_BACKENDS``): "auto" (mamba-ssm,
            then Triton on CUDA, the chunked torch scan elsewhere; ``$EEGFM_SCAN_BACKEND`` may force one) or a
            forced one. A runtime choice (``RUNTIME_FIELDS``), not architecture: checkpoints store "auto" and
            read back "auto", so a model trained with a forced Triton scan runs on a CPU; resume and finetuning
            take this run's value without comparing it with the checkpoint's.
    """

    d_model: int = 128
    n_layers: int = 8
    n_experts: int = 8
    top_k: int = 2
    n_tasks: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    patch_size: int = PATCH_SAMPLES
    max_patches: int = 64
    n_channel_ids: int = 512
    adapter: Literal["channel_patch", "st_adaptive"] = "channel_patch"
    drop_path: float = 0.1
    moe_hidden: int | None = None
    task_dim: int | None = None
    moe_noise: bool = True
    balance_coef: float = 1e-1
    z_coef: float = 1e-3
    conv_channels: int = 8
    st_stride: int = 25
    st_wide_kernel: int | None = None
    scan_backend: str = "auto"
    gate_noise: Literal["relative", "absolute"] = "relative"
    moe_noise_rel: float = 0.25
    task_embed: Literal["tracked", "legacy"] = "tracked"
    patch_norm: Literal["sample", "patch"] = "sample"
    channel_embed: Literal["id", "position"] = "id"

    # What a config.json written before a field existed meant: ``read_config`` fills missing keys from
    # here (not from the defaults above), so an old checkpoint rebuilds exactly the model it was trained as.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "gate_noise": "absolute", "task_embed": "legacy", "patch_norm": "patch", "channel_embed": "id",
    }
    # How the model runs here, not what it computes: saved as (and read back as) these neutral values.
    RUNTIME_FIELDS: ClassVar[dict[str, Any]] = {"scan_backend": "auto"}

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layers", "n_experts", "top_k", "n_tasks", "d_state", "d_conv", "expand",
                    "patch_size", "max_patches", "n_channel_ids", "conv_channels", "st_stride")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EEGMambaConfig.{name} must be a positive integer, got {value!r}")
        for name in ("moe_hidden", "task_dim", "st_wide_kernel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"EEGMambaConfig.{name} must be a positive integer or None, got {value!r}")
        for name, limit in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ValueError(f"EEGMambaConfig.{name}={value} is above {limit}, far beyond any model this suite "
                                 f"trains (the 'large' size has {SIZES['large'].get(name, '-')}); a config.json asking "
                                 "for it is damaged or hostile")
        if self.top_k >= self.n_experts:
            raise ValueError(f"EEGMambaConfig.top_k={self.top_k} must be smaller than n_experts={self.n_experts}")
        if self.adapter not in ("channel_patch", "st_adaptive"):
            raise ValueError(f"EEGMambaConfig.adapter must be 'channel_patch' or 'st_adaptive', got {self.adapter!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"EEGMambaConfig.drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.balance_coef < 0 or self.z_coef < 0:
            raise ValueError(f"EEGMambaConfig.balance_coef/z_coef must be >= 0, got {self.balance_coef}, {self.z_coef}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"EEGMambaConfig.scan_backend must be one of {SCAN_BACKENDS}, got {self.scan_backend!r}")
        if not self.moe_noise_rel > 0 or self.gate_noise not in ("relative", "absolute"):
            raise ValueError(
                f"EEGMambaConfig: gate_noise must be 'relative' or 'absolute' and moe_noise_rel > 0, got "
                f"{self.gate_noise!r}, {self.moe_noise_rel!r}"
            )
        if self.task_embed not in ("tracked", "legacy"):
            raise ValueError(f"EEGMambaConfig.task_embed must be 'tracked' or 'legacy', got {self.task_embed!r}")
        if self.patch_norm not in ("sample", "patch"):
            raise ValueError(f"EEGMambaConfig.patch_norm must be 'sample' or 'patch', got {self.patch_norm!r}")
        if self.channel_embed not in ("id", "position") or (self.channel_embed == "position" and self.adapter != "channel_patch"):
            raise ValueError(
                f"EEGMambaConfig.channel_embed must be 'id' or 'position' (position needs adapter='channel_patch'), "
                f"got {self.channel_embed!r} with adapter {self.adapter!r}"
            )
        if self.adapter == "st_adaptive" and self.patch_size % self.st_stride:
            raise ValueError(f"EEGMambaConfig.st_stride={self.st_stride} must divide patch_size={self.patch_size}")

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "EEGMambaConfig":
        """A named size ("tiny" < 1M parameters, "base" ~5.8M like LaBraM-Base, "large" ~50M) with overrides.

        Raises:
            ValueError: unknown size or unknown override key.
        """
        if size not in SIZES:
            raise ValueError(f"EEGMambaConfig.from_size: unknown size {size!r}; expected one of {sorted(SIZES)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"EEGMambaConfig.from_size: unknown field(s) {unknown}")
        return cls(**{**SIZES[size], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Upper bounds of the architecture fields, so that a damaged or hostile config.json cannot ask for terabytes
# before its weights are compared with it (foundation.checkpoint checks the shapes too, on the meta device).
UPPER_BOUNDS: dict[str, int] = {
    "d_model": 8192, "n_layers": 256, "n_experts": 256, "top_k": 256, "n_tasks": 1024, "d_state": 1024,
    "d_conv": 64, "expand": 16, "patch_size": 100_000, "max_patches": 100_000, "n_channel_ids": 100_000,
    "conv_channels": 1024, "st_stride": 100_000, "moe_hidden": 65_536, "task_dim": 65_536, "st_wide_kernel": 100_000,
}

# Parameter budgets (asserted in tests/test_model.py): per layer the BiMamba block holds ~6.5 d^2 and the
# MoE 9 experts x 2 x d x moe_hidden, so the experts dominate.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_layers=2, n_experts=4, top_k=2, moe_hidden=128, max_patches=64, drop_path=0.0),
    "base": dict(d_model=128, n_layers=8, n_experts=8, top_k=2, moe_hidden=256, max_patches=64, drop_path=0.1),
    "large": dict(d_model=256, n_layers=16, n_experts=8, top_k=2, moe_hidden=512, max_patches=64, drop_path=0.2),
}


class EEGMambaOutput(NamedTuple):
    """What :meth:`EEGMamba.forward` returns (a named tuple: summary tools such as torchinfo, DDP and
    ``torch.compile`` walk its tensors as they walk a tuple's).

    Fields:
        tokens: ``[b L d]`` final-normed token features without the class token; channel_patch:
            ``L = c * p`` ordered ``(c p)`` (channel-major); st_adaptive: ``L = t / st_stride``.
            Zero at padded positions.
        token_mask: ``[b L]`` bool, True = real token.
        cls: ``[b d]`` class-token feature. pooled: ``[b d]`` mean of the real tokens.
        aux_loss: scalar, MoE auxiliary loss summed over layers (add it to the training objective).
        expert_load: ``[n_layers n_experts]`` fraction of real tokens routed to each expert (detached).
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    cls: torch.Tensor
    pooled: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor


class EEGMamba(
    nn.Module,
    StrictHubMixin,
    library_name="eegfm",
    tags=["eeg", "mamba", "mixture-of-experts", "foundation-model"],
):
    """The EEGMamba backbone (BiMamba + task-aware MoE), constructed as ``EEGMamba(config)``.

    Class token: one learned token is placed at *both* ends of the sequence and its two outputs are
    averaged. In a bidirectional Mamba the forward scan reaches the last position having read the whole
    sequence and the backward scan reaches the first position having read it all; a single token at
    either end would see the sequence through one direction only (the other scan reaches it first, with an
    empty state). Vim's middle token instead sees half the sequence per direction and its position would
    depend on each sample's padding. Both ends give every class read-out a full pass in both directions.
    Padding is moved behind the end class token (see ``_assemble``), so a sample's features do not depend
    on how much padding its batch needed.
    """

    config_class = EEGMambaConfig
    checkpoint_kind = "EEGMamba backbone"

    def __init__(self, config: EEGMambaConfig) -> None:
        super().__init__()
        if not isinstance(config, EEGMambaConfig):
            raise TypeError(f"EEGMamba(config): expected an EEGMambaConfig, got {type(config).__name__}")
        self.config = config
        if config.adapter == "channel_patch":
            self.embed: nn.Module = ChannelPatchEmbed(
                config.d_model, config.patch_size, config.max_patches, config.n_channel_ids, config.conv_channels,
                patch_norm=config.patch_norm, channel_embed=config.channel_embed,
            )
        else:
            self.embed = STAdaptiveEmbed(
                config.d_model, config.n_tasks, config.n_channel_ids, config.patch_size, config.max_patches,
                config.st_stride, config.st_wide_kernel,
            )
        n = config.n_layers
        rates = [config.drop_path * i / max(n - 1, 1) for i in range(n)]
        self.blocks = nn.ModuleList(
            BiMambaBlock(
                config.d_model, config.d_state, config.d_conv, config.expand, drop_path=r,
                scan_backend=config.scan_backend,
            )
            for r in rates
        )
        self.moes = nn.ModuleList(
            TaskMoE(
                config.d_model, config.n_experts, config.top_k, config.n_tasks, hidden=config.moe_hidden,
                task_dim=config.task_dim, noise=config.moe_noise, balance_coef=config.balance_coef,
                z_coef=config.z_coef, drop_path=r, noise_rel=config.moe_noise_rel if config.gate_noise == "relative" else None,
                task_embed=config.task_embed,
            )
            for r in rates
        )
        self.norm = nn.LayerNorm(config.d_model)
        # Runtime switch, not architecture, so it is not in the config: recompute each layer's
        # activations in the backward pass (long sequences, e.g. 64 ch x 60 s = 3840 tokens, on small GPUs).
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> "EEGMamba":
        """Trade compute for memory: keep only layer inputs and recompute the rest in backward."""
        self.gradient_checkpointing = bool(enabled)
        return self

    def first_layers(self, n_layers: int) -> "EEGMamba":
        """A backbone of this one's first ``n_layers`` [BiMamba -> MoE] layers, its input adapter and its final
        norm, with their weights: a copy, this one unchanged (itself when ``n_layers`` is all its layers).

        What a head reading an intermediate layer needs: the layers above it never reach the output, so they
        are dropped rather than carried as parameters without gradients (which distributed training refuses).

        Raises:
            ValueError: ``n_layers`` outside ``1..config.n_layers``.
        """
        n = self.config.n_layers
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= n:
            raise ValueError(f"first_layers: n_layers must be an integer in 1..{n} (this backbone's layers), got {n_layers!r}")
        if n_layers == n:
            return self
        # Building the copy initialises weights it then overwrites; the caller's random stream must not move
        # (a probe inside pretraining would otherwise change every later mask).
        with torch.random.fork_rng(devices=[]):
            sub = EEGMamba(dataclasses.replace(self.config, n_layers=n_layers))
        dropped = tuple(f"{kind}.{i}." for kind in ("blocks", "moes") for i in range(n_layers, n))
        sub.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith(dropped)}, strict=True)
        ref = next(self.parameters())
        sub.gradient_checkpointing = self.gradient_checkpointing
        return sub.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def _layer(
        self, i: int, h: torch.Tensor, seq_mask: torch.Tensor, task_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.blocks[i](h, seq_mask)
        return self.moes[i](h, task_ids, seq_mask)

    def inherit_task_rows(self, task_ids) -> dict[int, list[int]]:
        """Before finetuning on ``task_ids``: start every task row that training never used from the mean
        of the used rows, in each MoE layer (``task_embed="tracked"``; a no-op for "legacy" models).

        A backbone pretrained on task 0 only then routes a new task exactly as it routed pretraining data.
        Returns ``{layer: rows set}``.
        """
        return {i: moe.inherit_task_rows(task_ids) for i, moe in enumerate(self.moes)}

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_task_ids(self, task_ids: torch.Tensor | None, b: int, device: torch.device) -> torch.Tensor:
        if task_ids is None:
            return torch.zeros(b, dtype=torch.long, device=device)
        if not torch.is_tensor(task_ids) or task_ids.shape != (b,) or task_ids.is_floating_point() or task_ids.dtype == torch.bool:
            raise ValueError(
                f"task_ids must be an integer tensor [b] = [{b}], got "
                f"{getattr(task_ids, 'dtype', type(task_ids))} {tuple(getattr(task_ids, 'shape', ()))}"
            )
        check_range(task_ids, self.config.n_tasks, "task_ids")
        return task_ids.long()

    def forward(
        self,
        x: torch.Tensor,
        channel_ids: torch.Tensor,
        channel_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
    ) -> EEGMambaOutput:
        """Encode a batch.

        Args:
            x: ``[b c t]`` float EEG (100 uV units, 200 Hz), t a multiple of ``patch_size`` and at most
                ``max_patches * patch_size``; padded channels may hold anything.
            channel_ids: ``[b c]`` long channel-vocabulary ids (ignored at padded channels).
            channel_mask: ``[b c]`` bool, True = real channel (None = all real).
            task_ids: ``[b]`` long in ``[0, n_tasks)`` (None = task 0).
            patch_mask: ``[b c p]`` bool, True = replace that patch by the [MASK] token (channel_patch only).
        Returns:
            :class:`EEGMambaOutput`.
        Raises:
            ValueError: wrong ranks/shapes/dtypes, t not a multiple of patch_size, too many patches,
                channel id out of range, task id out of range, patch_mask with the st_adaptive adapter.
        """
        if not torch.is_tensor(x) or x.dim() != 3:
            raise ValueError(f"x must be a float tensor [b, c, t], got shape {tuple(getattr(x, 'shape', ()))}")
        b = x.shape[0]
        task_ids = self._check_task_ids(task_ids, b, x.device)
        if self.config.adapter == "channel_patch":
            tokens, token_mask, cls = self.embed(x, channel_ids, channel_mask, patch_mask)
        else:
            if patch_mask is not None:
                raise ValueError("patch_mask is only supported by adapter='channel_patch' (this model uses 'st_adaptive')")
            tokens, token_mask, cls = self.embed(x, channel_ids, channel_mask, task_ids)

        key = None
        if self.config.adapter == "channel_patch":  # tokens "(c p)": each token's channel id orders the scan
            key = channel_ids.long().repeat_interleave(tokens.shape[1] // max(x.shape[1], 1), dim=1)
        seq, seq_mask, seq_pos = _assemble(cls, tokens, token_mask, key)
        h = seq
        aux_total = h.new_zeros((), dtype=torch.float32)
        loads = []
        for i in range(len(self.blocks)):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # preserve_rng_state (default) replays the MoE gate noise and drop-path draws exactly.
                h, aux, load = torch.utils.checkpoint.checkpoint(self._layer, i, h, seq_mask, task_ids, use_reentrant=False)
            else:
                h, aux, load = self._layer(i, h, seq_mask, task_ids)
            aux_total = aux_total + aux
            loads.append(load)
        h = self.norm(h)
        n_real = token_mask.sum(1)  # [b]
        d = h.shape[-1]
        tokens = h.gather(1, seq_pos.unsqueeze(-1).expand(-1, -1, d))
        tokens = torch.where(token_mask.unsqueeze(-1), tokens, torch.zeros((), dtype=h.dtype, device=h.device))
        cls_end = h.gather(1, (n_real + 1).view(b, 1, 1).expand(b, 1, d)).squeeze(1)
        cls_out = 0.5 * (h[:, 0] + cls_end)
        pooled = tokens.sum(1) / n_real.clamp_min(1).unsqueeze(-1).to(h.dtype)
        return EEGMambaOutput(
            tokens=tokens, token_mask=token_mask, cls=cls_out, pooled=pooled,
            aux_loss=aux_total, expert_load=torch.stack(loads).detach(),
        )


def _assemble(
    cls: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor, key: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the scanned sequence ``[cls, real tokens..., cls, padding...]``.

    Real tokens are packed to the front, so that every sample's real sequence is contiguous and identical to
    what it would be in a batch without padding: the causal convs and scans of BiMamba then see exactly the
    same neighbours whatever the batch's ``C_max`` is (padding only trails, where the padding-aware block
    ignores it). With ``key`` (the channel id of each "(c p)" token) they are packed in the order of their
    channel's vocabulary id, a channel's patches in time order: the scan, and so every output, is then the same
    whatever order a file stored its channels in (a scan is not permutation invariant; without this, reordering
    a recording's channels changed the class token by half its norm). ``seq_pos`` still maps each input token to
    its place, so ``tokens`` come back in the caller's order.

    Args:
        cls ``[b d]``, tokens ``[b L d]``, token_mask ``[b L]`` bool, key ``[b L]`` long or None (input order).
    Returns:
        ``seq [b (L + 2) d]``, ``seq_mask [b (L + 2)]`` (True up to and including the end class token),
        ``seq_pos [b L]`` long: where token i of the input sits in ``seq``.
    """
    b, L, d = tokens.shape
    n_real = token_mask.sum(1, keepdim=True)  # [b 1]
    if key is None:
        order = torch.sort((~token_mask).to(torch.uint8), dim=1, stable=True).indices  # [b L] real first
    else:  # real first, by key; padding keys above every real one
        big = key.max() + 1 if key.numel() else 1
        order = torch.sort(torch.where(token_mask, key, big), dim=1, stable=True).indices
    s = torch.arange(L + 2, device=tokens.device).unsqueeze(0)  # [1 (L + 2)]
    # Source index into [cls, tokens] (0 = cls): s-1 before the end class token, s-2 after it.
    k = torch.where(s <= n_real, s - 1, s - 2).clamp(0, max(L - 1, 0))
    src = 1 + order.gather(1, k.expand(b, -1)) if L else torch.zeros(b, L + 2, dtype=torch.long, device=tokens.device)
    src = torch.where((s == 0) | (s == n_real + 1), torch.zeros_like(src), src)
    pool = torch.cat([cls.unsqueeze(1), tokens], dim=1)
    seq = pool.gather(1, src.unsqueeze(-1).expand(-1, -1, d))
    seq_mask = (s <= n_real + 1).expand(b, -1)
    rank = order.argsort(dim=1)  # [b L] position of token i among the packed tokens
    seq_pos = torch.where(rank < n_real, rank + 1, rank + 2)
    return seq, seq_mask, seq_pos


def read_config(path: str | Path) -> EEGMambaConfig:
    """Read ``{path}/config.json`` (or that file) strictly into an :class:`EEGMambaConfig`."""
    return EEGMamba.read_config(path)
