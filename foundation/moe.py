"""Task-aware mixture of experts with a universal expert (EEGMamba's MoE layer).

Each real token is routed by a noisy top-k gate (Shazeer et al., 2017) that sees the token *and* an
embedding of the task the sample belongs to, so one backbone can learn which experts tasks share and
where they differ. A universal expert runs on every token and is weighted by ``1 - max(gate)``: when
the router is unsure (flat gate) the shared expert carries the token, when it is confident the
specialist does.

Layout (pre-norm + residual, like ``BiMambaBlock``)::

    h        = LayerNorm(x)                                   [b l d]
    logits   = W_g [h ; task_emb(task_id)]                     [n e]   (real tokens only, n = sum(mask))
    noisy    = logits + randn * sigma                            (training only)
    sigma    = noise_rel * softplus(W_n [h ; task_emb]) / ln 2 * std_e(logits)   (noise_rel set: relative)
             = softplus(W_n [h ; task_emb]) + 0.01                              (noise_rel None: legacy)
    top-k of noisy -> g = softmax over the k kept logits      [n k]
    moe(h)   = sum_j g_j * expert_{i_j}(h) + (1 - max_j g_j) * universal(h)
    y        = x + drop_path(moe(h))                          padded positions: y = x

Auxiliary loss (returned, the caller adds it to its objective)::

    aux = balance_coef * (cv2(importance) + cv2(load)) + z_coef * mean(logsumexp(logits)^2)

Why relative noise: with the absolute form the noise std starts at softplus(0) = 0.69 while a fresh
router's clean logits spread by ~0.2, so training routing is decided by the noise, the balance loss is
satisfied by the noise, and noise-free evaluation routing is left unbalanced. Relative noise is a fixed
fraction (learnable per token through ``W_n``) of the token's own clean-logit spread: it explores
near-ties without ever dominating, and the balance loss has to balance the clean logits.

Task embeddings (``task_embed="tracked"``, the default): rows start at std 0.02 (a N(0, 1) row would
outweigh the LayerNormed token in the gate and scramble routing when a task id changes); the persistent
buffer ``task_seen [n_tasks]`` records which rows training has used, and :meth:`TaskMoE.inherit_task_rows`
starts an unused row from the mean of the used ones when finetuning begins. ``"legacy"``: N(0, 1) rows,
no record, no inheritance (what checkpoints from before this option were built with).

``importance[e]`` sums the gate weights given to expert e, ``load[e]`` is Shazeer's smooth
(differentiable) estimate of how many tokens pick e; both over real tokens only. ``cv2`` is the squared
coefficient of variation var/mean^2: squared as in Shazeer et al. because std = sqrt(var) has an infinite
gradient at perfect balance. The router z-loss (ST-MoE, Zoph et al., 2022) keeps the logits small so the
softmax stays in a well-conditioned range under bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskMoE", "Expert", "TASK_EMBED_MODES"]

TASK_EMBED_MODES = ("tracked", "legacy")


class Expert(nn.Module):
    """Two-layer MLP ``d -> hidden -> d`` with GELU: ``[n d] -> [n d]``."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(h))))


def _cv_squared(v: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation var/mean^2 of a vector ``[e]`` (0 when there is one entry)."""
    if v.numel() <= 1:
        return v.new_zeros(())
    return v.float().var(unbiased=False) / (v.float().mean() ** 2 + eps)


class TaskMoE(nn.Module):
    """Noisy top-k task-aware MoE with a universal expert, pre-norm and residual.

    Args:
        d_model: token width d.
        n_experts: number of routed experts E (must exceed ``top_k``).
        top_k: experts per token (EEGMamba: 2).
        n_tasks: size of the task-embedding table; ``task_ids`` must lie in ``[0, n_tasks)``.
        hidden: expert MLP width (default ``2 * d_model``; with E=8 experts plus the universal one the
            layer then holds ``9 * 4 d^2`` expert weights, which is what sets the model sizes).
        task_dim: width of the task embedding concatenated to the token for the gate (default d_model).
        noise: add learned Gaussian noise to the gate logits while training (Shazeer's noisy top-k).
        balance_coef, z_coef: weights of the balance term and the router z-loss in ``aux_loss``; these are
            the effective weights (objectives add ``aux_loss`` with weight 1).
        noise_rel: relative gate-noise scale (see the module docstring); None = legacy absolute noise.
        task_embed: "tracked" (small init, ``task_seen`` record, inheritance) or "legacy" (N(0, 1) rows).
        drop_path: stochastic-depth probability for the MoE branch (per sample, training only).
        dropout: dropout inside the experts.
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int = 8,
        top_k: int = 2,
        n_tasks: int = 8,
        hidden: int | None = None,
        task_dim: int | None = None,
        noise: bool = True,
        balance_coef: float = 1e-1,
        z_coef: float = 1e-3,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        noise_rel: float | None = 0.25,
        task_embed: str = "tracked",
    ) -> None:
        super().__init__()
        if not 1 <= top_k < n_experts:
            raise ValueError(f"TaskMoE: top_k must be in [1, n_experts), got top_k={top_k}, n_experts={n_experts}")
        if n_tasks < 1:
            raise ValueError(f"TaskMoE: n_tasks must be >= 1, got {n_tasks}")
        hidden = hidden if hidden is not None else 2 * d_model
        task_dim = task_dim if task_dim is not None else d_model
        self.d_model, self.n_experts, self.top_k, self.n_tasks = d_model, n_experts, top_k, n_tasks
        if task_embed not in TASK_EMBED_MODES:
            raise ValueError(f"TaskMoE: task_embed must be one of {TASK_EMBED_MODES}, got {task_embed!r}")
        if noise_rel is not None and noise_rel <= 0:
            raise ValueError(f"TaskMoE: noise_rel must be > 0 or None, got {noise_rel}")
        self.noise, self.noise_rel, self.task_embed_mode = noise, noise_rel, task_embed
        self.balance_coef, self.z_coef = balance_coef, z_coef
        self.drop_path = drop_path

        self.norm = nn.LayerNorm(d_model)
        self.task_embed = nn.Embedding(n_tasks, task_dim)
        self.gate = nn.Linear(d_model + task_dim, n_experts, bias=False)
        self.noise_gate = nn.Linear(d_model + task_dim, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, hidden, dropout) for _ in range(n_experts))
        self.universal = Expert(d_model, hidden, dropout)
        # Small random router (not Shazeer's zeros) so that different tasks route differently from the
        # first step and eval-mode routing is not a tie; zero noise weights give softplus(0) = 0.69 noise.
        nn.init.normal_(self.gate.weight, std=0.02)
        nn.init.zeros_(self.noise_gate.weight)
        if task_embed == "tracked":
            nn.init.normal_(self.task_embed.weight, std=0.02)
            self.register_buffer("task_seen", torch.zeros(n_tasks, dtype=torch.bool))

    @torch.no_grad()
    def inherit_task_rows(self, task_ids) -> list[int]:
        """Start task rows training never used from the mean of the used rows; returns the rows set.

        A no-op with ``task_embed="legacy"`` or before any row was used (a fresh model).
        """
        if self.task_embed_mode != "tracked" or not bool(self.task_seen.any()):
            return []
        seen = self.task_seen
        source = self.task_embed.weight[seen].mean(0)
        changed = [int(t) for t in task_ids if not bool(seen[int(t)])]
        for t in changed:
            self.task_embed.weight[t] = source
        return changed

    def _check(self, x: torch.Tensor, task_ids: torch.Tensor | None, mask: torch.Tensor | None):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"TaskMoE: x must be [b, l, {self.d_model}], got shape {tuple(x.shape)}")
        b, l, _ = x.shape
        if mask is None:
            mask = torch.ones(b, l, dtype=torch.bool, device=x.device)
        elif mask.shape != (b, l) or mask.dtype != torch.bool:
            raise ValueError(f"TaskMoE: mask must be bool [b, l] = [{b}, {l}], got {mask.dtype} {tuple(mask.shape)}")
        if task_ids is None:
            task_ids = torch.zeros(b, dtype=torch.long, device=x.device)
        else:
            if task_ids.shape != (b,) or task_ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
                raise ValueError(f"TaskMoE: task_ids must be an integer tensor [b] = [{b}], got {task_ids.dtype} {tuple(task_ids.shape)}")
            if b and (int(task_ids.min()) < 0 or int(task_ids.max()) >= self.n_tasks):
                raise ValueError(
                    f"TaskMoE: task_ids must lie in [0, {self.n_tasks}), got min {int(task_ids.min())} max {int(task_ids.max())}"
                )
            task_ids = task_ids.long()
        return mask, task_ids

    def route(self, h: torch.Tensor, task: torch.Tensor):
        """Gate real tokens.

        Args:
            h: normalised real tokens ``[n d]``; task: their task ids ``[n]``.
        Returns:
            ``(top_idx [n k] long, top_gate [n k], clean_logits [n e], load [e])`` where ``load`` is
            Shazeer's differentiable estimate of the number of tokens routed to each expert when noise
            is on, else the plain (non-differentiable) count.
        """
        g_in = torch.cat([h, self.task_embed(task).to(h.dtype)], dim=-1)
        clean = self.gate(g_in)
        use_noise = self.noise and self.training
        if use_noise and self.noise_rel is not None:
            spread = clean.detach().float().std(dim=-1, keepdim=True).to(clean.dtype) + 1e-6
            noise_std = self.noise_rel / math.log(2.0) * F.softplus(self.noise_gate(g_in)) * spread
            noisy = clean + torch.randn_like(clean) * noise_std
        elif use_noise:
            noise_std = F.softplus(self.noise_gate(g_in)) + 1e-2
            noisy = clean + torch.randn_like(clean) * noise_std
        else:
            noisy = clean
        k = self.top_k
        top_vals, top_idx = noisy.topk(min(k + 1, self.n_experts), dim=-1)
        top_gate = torch.softmax(top_vals[:, :k].float(), dim=-1).to(h.dtype)
        top_idx = top_idx[:, :k]
        if use_noise:
            # P(expert e still in the top-k under a fresh noise draw), Shazeer et al. eq. 9-10: compare the
            # clean logit to the k-th (if e is out) or (k+1)-th (if e is in) noisy value of the others.
            thr_in, thr_out = top_vals[:, k : k + 1], top_vals[:, k - 1 : k]
            is_in = noisy > thr_in
            p_in = torch.special.ndtr((clean - thr_in) / noise_std)
            p_out = torch.special.ndtr((clean - thr_out) / noise_std)
            load = torch.where(is_in, p_in, p_out).sum(0)
        else:
            load = torch.zeros(self.n_experts, device=h.device, dtype=clean.dtype)
            load.index_add_(0, top_idx.reshape(-1), torch.ones_like(top_idx.reshape(-1), dtype=clean.dtype))
        return top_idx, top_gate, clean, load

    def forward(
        self, x: torch.Tensor, task_ids: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route, mix and add the residual.

        Args:
            x: tokens ``[b l d]``.
            task_ids: ``[b]`` long in ``[0, n_tasks)``; None means task 0 (pretraining/default).
            mask: ``[b l]`` bool, True = real token; None means all real. Padded tokens are not routed,
                not counted in the losses or the load, and come out unchanged.
        Returns:
            ``(y [b l d], aux_loss [] float32, expert_load [e])`` where ``expert_load[e]`` is the fraction
            of real tokens routed to expert e (detached; sums to ``top_k``).
        """
        mask, task_ids = self._check(x, task_ids, mask)
        b, l, d = x.shape
        # Work on the flat list of real tokens only: padding never reaches the router or the experts.
        flat_pos = mask.reshape(-1).nonzero().squeeze(1)  # [n]
        n = flat_pos.numel()
        if n == 0:
            zero = x.new_zeros((), dtype=torch.float32)
            return x, zero, torch.zeros(self.n_experts, device=x.device)
        x_flat = x.reshape(b * l, d)
        h = self.norm(x_flat.index_select(0, flat_pos))  # [n d]
        task = task_ids.repeat_interleave(l).index_select(0, flat_pos)  # [n]
        if self.training and self.task_embed_mode == "tracked":
            self.task_seen[task_ids.unique()] = True
        top_idx, top_gate, clean, load = self.route(h, task)

        # Grouped dispatch: one pass per expert over the (token, slot) pairs it received.
        out = self.universal(h) * (1.0 - top_gate.max(dim=-1).values).unsqueeze(-1)
        flat_idx = top_idx.reshape(-1)  # [n k]: slot j of token i at i*k + j
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=self.n_experts).tolist()
        token_of = order // self.top_k
        gate_of = top_gate.reshape(-1).index_select(0, order)
        start = 0
        for e, count in enumerate(counts):
            # An expert with no tokens still runs on an empty group: every parameter stays in the graph
            # (zero gradient), which DistributedDataParallel needs without find_unused_parameters.
            tok = token_of[start : start + count]
            y_e = self.experts[e](h.index_select(0, tok)) * gate_of[start : start + count].unsqueeze(-1)
            out = out.index_add(0, tok, y_e.to(out.dtype))
            start += count

        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            sample_keep = x.new_empty(b).bernoulli_(keep) / keep  # [b]
            out = out * sample_keep.repeat_interleave(l).index_select(0, flat_pos).unsqueeze(-1)

        y = x_flat.index_add(0, flat_pos, out.to(x.dtype)).reshape(b, l, d)

        importance = torch.zeros(self.n_experts, device=x.device, dtype=torch.float32)
        importance = importance.index_add(0, flat_idx, top_gate.reshape(-1).float())
        balance = _cv_squared(importance) + _cv_squared(load.float())
        z_loss = torch.logsumexp(clean.float(), dim=-1).pow(2).mean()
        aux = self.balance_coef * balance + self.z_coef * z_loss
        expert_load = torch.bincount(flat_idx, minlength=self.n_experts).float() / n
        return y, aux, expert_load

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, n_tasks={self.n_tasks}, noise={self.noise}"
