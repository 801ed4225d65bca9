"""L2-normalised vector-quantisation codebook with EMA updates (LaBraM's ``NormEMAVectorQuantizer``, extended).

What it does, per training forward on encoder outputs ``z [..., D]``:

1. ``z`` is l2-normalised; its code is the codebook row with the highest cosine similarity.
2. The codebook is **not** learned by gradient: every code keeps an exponential moving average (decay 0.99)
   of how many vectors it was assigned per step (``cluster_size``) and of their sum (``embed_sum``); the code
   is ``normalize(embed_sum)``, i.e. the running spherical mean of its cluster. A code assigned nothing in a
   step keeps its direction (its sum only shrinks).
3. **k-means initialisation** (spherical k-means with k-means++ seeding, on normalised vectors) from the first training batch(es),
   so codes start on the data instead of random directions that the encoder would never reach: the
   codebook waits (quantising with its random start, no EMA update) until ``kmeans_init_samples`` vectors
   have been seen, then clusters them all.
4. **Dead-code restart**: a code whose recent usage falls below ``dead_code_threshold`` x the uniform share
   (the usage every code would have if all were used equally) is moved onto a random recent encoder output
   (a ring buffer of ``pool_size`` vectors) and credited a uniform share. "Recent usage" is an EMA of the
   per-step counts with its own, faster decay ``dead_decay`` (default 0.9): a code then counts as dead
   ``log(threshold) / log(dead_decay)`` steps (~37 at 0.02 / 0.9) after it was last used, and codes the
   k-means left empty are restarted at the first step. With ``dead_decay=None`` (legacy) the slow codebook
   EMA (``decay`` 0.99) decides, which takes ~390 steps: no restart ever fires in a 200-step run. This is
   what keeps a large codebook from collapsing onto a handful of codes.
5. Output: straight-through quantised vectors (forward value = the code, gradient = identity to ``z``) and
   the commitment loss ``weight * mean ||sg(q) - normalize(z)||^2 / D`` (LaBraM: weight 1, MSE over elements).

Distributed (``torch.distributed`` initialised): the per-step counts and sums are all-reduced before the EMA
update, the k-means result and restarted codes are computed on rank 0 and broadcast, so every rank keeps an
identical codebook without relying on DDP's buffer broadcast. The usage statistics are global then too.

Usage reporting: ``used_fraction`` is the *global* usage, the fraction of the codebook assigned at least
once in the last ``usage_window`` training steps (per-batch usage cannot exceed real vectors / K);
``batch_used_fraction`` is the per-batch figure.

Padding: ``mask [...]`` (True = real vector) keeps padded positions out of every statistic; their code is -1
and their quantised vector 0, so a downstream cross-entropy that forgets to mask them fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["EMACodebook", "QuantizerOutput", "spherical_kmeans"]

# Rows of the similarity matrix per chunk: bounds memory at ~2^25 floats whatever the codebook size.
_SIM_BUDGET = 1 << 25


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _nearest(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar code for each row: ``x [n, D]``, ``codes [K, D]`` (both unit) -> ``[n]``."""
    chunk = max(1, _SIM_BUDGET // max(1, codes.shape[0]))
    return torch.cat([(part @ codes.t()).argmax(dim=1) for part in x.split(chunk)]) if x.shape[0] else x.new_zeros(0, dtype=torch.long)


def _kmeans_pp_seeds(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding on unit vectors ``x [n, D]`` (n >= k): ``[k, D]`` distinct, spread-out samples.

    One pass of k small matrix-vector products; it avoids the merged-cluster local minima that seeding with
    uniformly random samples falls into, at a cost of ~1 s for 8192 codes on a GPU.
    """
    n = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.empty(k, dtype=torch.long, device=x.device)
    first = torch.randint(n, (1,), generator=generator, device=gen_device).to(x.device)
    idx[0] = first[0]
    # Squared chord distance between unit vectors: 2 - 2 cos.
    d2 = (2.0 - 2.0 * (x @ x[first[0]])).clamp_min(0)
    for i in range(1, k):
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        pick = torch.multinomial(weights.to(gen_device), 1, generator=generator).to(x.device)
        idx[i] = pick[0]
        d2 = torch.minimum(d2, (2.0 - 2.0 * (x @ x[pick[0]])).clamp_min(0))
    return x[idx].clone()


def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of unit vectors ``x [n, D]`` -> ``(centroids [k, D] unit, counts [k])``.

    Seeds with k-means++ when ``n >= k``; with fewer vectors than codes the centroids are the vectors
    repeated with a little jitter (the duplicates win no points and are later recycled by the dead-code
    restart). An empty cluster keeps its previous centroid. ``generator`` (on the CPU or ``x``'s device)
    makes it reproducible.
    """
    n, dim = x.shape
    if n == 0:
        raise ValueError("spherical_kmeans: no vectors to cluster")
    device = x.device
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if n >= k:
        centroids = _kmeans_pp_seeds(x, k, generator)
    else:
        idx = torch.randint(n, (k,), generator=generator, device=gen_device).to(device)
        noise = torch.randn(k, dim, generator=generator, device=gen_device).to(device, x.dtype)
        centroids = F.normalize(x[idx] + 1e-3 * noise, dim=-1)
    counts = torch.zeros(k, device=device, dtype=x.dtype)
    for _ in range(max(1, iters)):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), centroids)
    return centroids, counts


@dataclass
class QuantizerOutput:
    """What ``EMACodebook.forward`` returns (shapes for input ``z [..., D]``)."""

    quantized: torch.Tensor  # [..., D] straight-through code vectors (unit norm; 0 at padding)
    codes: torch.Tensor  # [...] long code ids (-1 at padding)
    loss: torch.Tensor  # scalar commitment loss
    perplexity: torch.Tensor  # scalar exp(entropy) of this step's code histogram (1 .. num_codes)
    used_fraction: torch.Tensor  # scalar fraction of codes used at least once in the last usage_window steps
    batch_used_fraction: torch.Tensor  # scalar fraction of codes used at least once in this batch
    dead_fraction: torch.Tensor  # scalar fraction of codes under the EMA dead threshold (before restarts)
    n_restarted: int  # codes restarted in this step


class EMACodebook(nn.Module):
    """Cosine-similarity codebook ``[num_codes, dim]`` with EMA updates, k-means init and dead-code restart.

    Args:
        num_codes: codebook size K (LaBraM: 8192).
        dim: code width D (LaBraM: 64 after the encoder's projection).
        decay: EMA decay of the counts and sums (LaBraM: 0.99).
        eps: a code whose EMA sum has a norm below this keeps its previous direction.
        kmeans_init: initialise by spherical k-means on the first ``kmeans_init_samples`` training vectors;
            False starts from random unit vectors (and lets dead-code restart pull them onto the data).
        kmeans_iters: Lloyd iterations of the initial k-means.
        kmeans_init_samples: vectors to collect before the k-means (default ``num_codes``); a first batch
            with at least this many starts it at once.
        dead_code_threshold: relative EMA usage under which a code counts as dead (0 disables restarts).
        commitment_weight: weight of the commitment loss (LaBraM's beta = 1).
        pool_size: recent (normalised, real) encoder outputs kept for restarts and the k-means
            (default ``max(2 * num_codes, kmeans_init_samples)``); not in the model's weights file.
        dead_decay: decay of the usage EMA that decides which codes are dead (None = legacy: the
            codebook's own ``decay``).
        usage_window: training steps over which ``used_fraction`` counts a code as used.

    ``TRAINING_BUFFERS`` (the vector pool, the fast usage EMA, each code's last use, the step count) are
    training bookkeeping: non-persistent, so ``model.safetensors`` of an export loads strictly whatever
    version wrote it, and kept by the training checkpoints instead (``runtime.resume_state``), so a
    resumed tokenizer run detects and restarts dead codes exactly as an uninterrupted one.
    """

    TRAINING_BUFFERS = ("pool", "pool_count", "pool_ptr", "recent_usage", "recent_total", "last_used", "steps")

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        kmeans_init_samples: int | None = None,
        dead_code_threshold: float = 0.02,
        commitment_weight: float = 1.0,
        pool_size: int | None = None,
        dead_decay: float | None = 0.9,
        usage_window: int = 50,
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"EMACodebook: need num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMACodebook: decay must be in (0, 1), got {decay}")
        if not 0.0 <= dead_code_threshold < 1.0:
            raise ValueError(f"EMACodebook: dead_code_threshold must be in [0, 1), got {dead_code_threshold}")
        if dead_decay is not None and not 0.0 < dead_decay < 1.0:
            raise ValueError(f"EMACodebook: dead_decay must be in (0, 1) or None, got {dead_decay}")
        if usage_window < 1:
            raise ValueError(f"EMACodebook: usage_window must be >= 1, got {usage_window}")
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_decay, self.usage_window = dead_decay, int(usage_window)
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.kmeans_init_samples = num_codes if kmeans_init_samples is None else int(kmeans_init_samples)
        if self.kmeans_init_samples < 1:
            raise ValueError(f"EMACodebook: kmeans_init_samples must be >= 1, got {kmeans_init_samples}")
        self.dead_code_threshold, self.commitment_weight = dead_code_threshold, commitment_weight
        self.pool_size = int(pool_size) if pool_size is not None else max(2 * num_codes, self.kmeans_init_samples)
        if self.pool_size < 1:
            raise ValueError(f"EMACodebook: pool_size must be >= 1, got {pool_size}")
        if kmeans_init and self.pool_size < self.kmeans_init_samples:
            raise ValueError(
                f"EMACodebook: pool_size={self.pool_size} cannot hold kmeans_init_samples={self.kmeans_init_samples}"
            )

        self.register_buffer("embed", F.normalize(torch.randn(num_codes, dim), dim=-1))
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", torch.zeros(num_codes, dim))
        # EMA of real vectors per step: the yardstick for "dead". Kept apart from cluster_size.sum(), which
        # restarts inflate (each restarted code is credited a share it has not earned yet).
        self.register_buffer("vectors_per_step", torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("pool", torch.zeros(self.pool_size, dim), persistent=False)
        self.register_buffer("pool_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("pool_ptr", torch.zeros((), dtype=torch.long), persistent=False)
        # Training-time bookkeeping (TRAINING_BUFFERS): not in model.safetensors, so exports and the shipped
        # tokenizer load strictly either way; the trainer's resume state keeps them (runtime.resume_state).
        # recent_usage / recent_total: the fast usage EMA of dead-code detection (-1 = not started yet).
        self.register_buffer("recent_usage", torch.zeros(num_codes), persistent=False)
        self.register_buffer("recent_total", torch.full((), -1.0), persistent=False)
        # last_used[k]: training step at which code k was last assigned (-inf-like -1e9 = never).
        self.register_buffer("last_used", torch.full((num_codes,), -1e9), persistent=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, decay={self.decay}, "
                f"dead_code_threshold={self.dead_code_threshold}, dead_decay={self.dead_decay}")

    # ----------------------------------------------------------------------------------------- helpers

    def _push_pool(self, x: torch.Tensor) -> None:
        """Write unit vectors ``x [n, D]`` into the ring buffer (a random subset when n > pool_size)."""
        n = x.shape[0]
        if n == 0:
            return
        if n > self.pool_size:
            x = x[torch.randperm(n, device=x.device)[: self.pool_size]]
            n = self.pool_size
        ptr = int(self.pool_ptr)
        idx = (torch.arange(n, device=x.device) + ptr) % self.pool_size
        self.pool[idx] = x.to(self.pool.dtype)
        self.pool_ptr.fill_((ptr + n) % self.pool_size)
        self.pool_count.fill_(min(self.pool_size, int(self.pool_count) + n))

    def _pool_vectors(self) -> torch.Tensor:
        return self.pool[: int(self.pool_count)]

    def _kmeans_initialise(self, n_batch: float) -> None:
        """Spherical k-means over the pool; ``cluster_size`` starts at the cluster counts scaled to a batch."""
        data = self._pool_vectors()
        if not _distributed() or dist.get_rank() == 0:
            centroids, counts = spherical_kmeans(data, self.num_codes, self.kmeans_iters)
            counts = counts * (n_batch / max(1, data.shape[0]))
        else:
            centroids = torch.empty_like(self.embed)
            counts = torch.empty_like(self.cluster_size)
        if _distributed():
            dist.broadcast(centroids, 0)
            dist.broadcast(counts, 0)
        self.embed.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.vectors_per_step.fill_(n_batch)
        self.initialized.fill_(True)

    def dead_codes(self) -> torch.Tensor:
        """Bool ``[num_codes]``: codes whose recent usage is under the threshold (none before any usage is known)."""
        if self.dead_decay is None:
            usage, total = self.cluster_size, self.vectors_per_step
        else:
            usage, total = self.recent_usage, self.recent_total
        if self.dead_code_threshold <= 0 or total <= 0:
            return torch.zeros_like(self.cluster_size, dtype=torch.bool)
        return usage < self.dead_code_threshold * total / self.num_codes

    @torch.no_grad()
    def _track_usage(self, counts: torch.Tensor) -> None:
        """Fast usage EMA (dead-code detection) and the step each code was last used (global usage)."""
        self.steps += 1
        self.last_used[counts > 0] = self.steps.to(self.last_used.dtype)
        if self.dead_decay is None:
            return
        if self.recent_total < 0:  # first step after k-means (or a resume without them): start from the slow EMA
            self.recent_usage.copy_(self.cluster_size)
            self.recent_total.copy_(self.vectors_per_step)
        self.recent_usage.mul_(self.dead_decay).add_(counts, alpha=1 - self.dead_decay)
        self.recent_total.mul_(self.dead_decay).add_(counts.sum(), alpha=1 - self.dead_decay)

    def global_usage(self) -> torch.Tensor:
        """Fraction of the codebook assigned at least once in the last ``usage_window`` training steps."""
        return (self.last_used > (self.steps - self.usage_window).to(self.last_used.dtype)).float().mean()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Move dead codes onto random recent encoder outputs; returns how many were restarted."""
        dead = self.dead_codes()
        n_dead = int(dead.sum())
        n_pool = int(self.pool_count)
        if n_dead == 0 or n_pool == 0:
            return 0
        if not _distributed() or dist.get_rank() == 0:
            pool = self._pool_vectors()
            if n_pool >= n_dead:
                picked = pool[torch.randperm(n_pool, device=pool.device)[:n_dead]]
            else:  # more dead codes than recent vectors: reuse them with jitter so the copies can separate
                picked = pool[torch.randint(n_pool, (n_dead,), device=pool.device)]
                picked = F.normalize(picked + 1e-3 * torch.randn_like(picked), dim=-1)
        else:
            picked = torch.empty(n_dead, self.dim, device=self.embed.device, dtype=self.embed.dtype)
        if _distributed():
            dist.broadcast(picked, 0)
        share = self.vectors_per_step / self.num_codes
        self.embed[dead] = picked.to(self.embed.dtype)
        self.cluster_size[dead] = share
        if self.dead_decay is not None:
            self.recent_usage[dead] = self.recent_total.clamp_min(0) / self.num_codes
        self.embed_sum[dead] = picked.to(self.embed.dtype) * share
        return n_dead

    @torch.no_grad()
    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.vectors_per_step.mul_(self.decay).add_(counts.sum(), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        norms = self.embed_sum.norm(dim=-1, keepdim=True)
        self.embed.copy_(torch.where(norms > self.eps, self.embed_sum / norms.clamp_min(self.eps), self.embed))

    # ----------------------------------------------------------------------------------------- forward

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids ``[...]`` of ``z [..., D]`` (no statistics, no update, no padding handling)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"EMACodebook: inputs must be [..., {self.dim}], got {tuple(z.shape)}")
        flat = F.normalize(z.detach().float().reshape(-1, self.dim), dim=-1)
        return _nearest(flat, self.embed.float()).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantise ``z [..., D]``; ``mask [...]`` bool (True = real vector) keeps padding out of everything.

        In training mode this also updates the codebook (k-means init, EMA, dead-code restart).
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"EMACodebook: inputs must be [..., {self.dim}], got {tuple(z.shape)}")
        lead = z.shape[:-1]
        if mask is not None and (mask.shape != lead or mask.dtype != torch.bool):
            raise ValueError(f"EMACodebook: mask must be bool {tuple(lead)}, got {mask.dtype} {tuple(mask.shape)}")
        # Cosine similarities and EMA statistics in fp32 even under bf16 autocast: argmax ties and tiny
        # EMA increments are exactly what low precision gets wrong.
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = F.normalize(z.float(), dim=-1)
            flat = zf.reshape(-1, self.dim)
            valid = torch.ones(flat.shape[0], dtype=torch.bool, device=z.device) if mask is None else mask.reshape(-1)
            real = flat[valid].detach()

            n_restarted = 0
            if self.training:
                self._push_pool(real)
                if not bool(self.initialized):
                    ready = torch.tensor(float(int(self.pool_count) >= self.kmeans_init_samples), device=z.device)
                    if _distributed():
                        dist.all_reduce(ready, op=dist.ReduceOp.MIN)
                    if ready.item() > 0:
                        n_batch = torch.tensor(float(real.shape[0]), device=z.device)
                        if _distributed():
                            dist.all_reduce(n_batch)
                        self._kmeans_initialise(float(n_batch))

            codes_flat = _nearest(flat.detach(), self.embed)
            codes_real = codes_flat[valid]
            counts = torch.bincount(codes_real, minlength=self.num_codes).float()
            dead_fraction = self.dead_codes().float().mean()
            if self.training and bool(self.initialized):
                sums = torch.zeros_like(self.embed).index_add_(0, codes_real, real)
                if _distributed():
                    dist.all_reduce(counts)
                    dist.all_reduce(sums)
                # The output uses the codes as they were before this step's update (as LaBraM does).
                q_flat = self.embed[codes_flat]  # a copy (advanced indexing)
                self._ema_update(counts, sums)
                self._track_usage(counts)
                n_restarted = self.restart_dead_codes()
            else:
                q_flat = self.embed[codes_flat]

            q_flat = torch.where(valid[:, None], q_flat, torch.zeros((), device=q_flat.device))
            quantized = q_flat.reshape(zf.shape)
            n_real = valid.sum().clamp_min(1)
            err = ((quantized.detach() - zf) ** 2).sum(-1).reshape(-1)
            loss = self.commitment_weight * torch.where(valid, err, torch.zeros((), device=err.device)).sum() / (n_real * self.dim)
            st = zf + (quantized - zf).detach()
            st = torch.where(valid.reshape(lead)[..., None], st, torch.zeros((), device=st.device))

            probs = counts / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
            batch_used_fraction = (counts > 0).float().mean()
            used_fraction = self.global_usage() if int(self.steps) > 0 else batch_used_fraction
            codes = torch.where(valid, codes_flat, torch.full_like(codes_flat, -1)).reshape(lead)
        return QuantizerOutput(
            quantized=st.to(z.dtype) if z.dtype in (torch.float16, torch.bfloat16) else st,
            codes=codes,
            loss=loss,
            perplexity=perplexity,
            used_fraction=used_fraction,
            batch_used_fraction=batch_used_fraction,
            dead_fraction=dead_fraction,
            n_restarted=n_restarted,
        )
