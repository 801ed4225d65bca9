"""Task-aware mixture of experts with a universal expert (EEGMamba's MoE layer).

Each real token is routed by a noisy top-k gate (Shazeer et al., 2017) that sees the token *and* an
embedding of the task the sample belongs to, so one backbone can learn which experts tasks share and
where they differ. A universal expert runs on every token and is weighted by ``1 - max(gate)``: when
the router is unsure (flat gate) the shared expert carries the token, when it is confident the
specialist does.

Layout (pre-norm + residual, like ``BiMambaBlock``)::

    h        = LayerNorm(x)                                   [b l d]
    logits   = W_g [h ; task_emb(task_id)]                     [n e]   (n = b l; padding has h = 0 and weight 0)
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

Every token is routed (fixed shapes, so a compiled step needs no host synchronisation); padded tokens have
weight 0 in every sum below and leave the layer unchanged. ``importance[e]`` sums the gate weights given to
expert e, ``load[e]`` is Shazeer's smooth (differentiable) estimate of how many tokens pick e; both over
real tokens only. ``cv2`` is the squared
coefficient of variation var/mean^2: squared as in Shazeer et al. because std = sqrt(var) has an infinite
gradient at perfect balance. The router z-loss (ST-MoE, Zoph et al., 2022) keeps the logits small so the
softmax stays in a well-conditioned range under bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundation.index_checks import check_range

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
    """Squared coefficient of variation var/mean^2 of a vector ``[e]`` (0 when there is one entry).

    Written out rather than ``Tensor.var``, whose CPU kernel reads a scalar back (a host sync on the path
    the static-shape dispatch keeps free of them)."""
    if v.numel() <= 1:
        return v.new_zeros(())
    v = v.float()
    mean = v.mean()
    return (v - mean).square().mean() / (mean**2 + eps)


def _chosen(top_idx: torch.Tensor, n_experts: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n, e]``: 1 where a token chose the expert (its top-k are distinct). ``F.one_hot`` would check the
    indices' range on the host."""
    return torch.zeros(top_idx.shape[0], n_experts, dtype=dtype, device=top_idx.device).scatter_(1, top_idx, 1.0)


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
        dispatch: how tokens reach their experts (same outputs up to float rounding; an attribute, so it can
            be switched after construction): "dense" (default) runs every expert on every token in one
            matrix product for the first layers and one batched over the experts for the second, and the gate
            (0 for an unchosen expert) picks the outputs: fixed shapes and no host synchronisation, so a
            compiled step can be CUDA-graphed, for ``(n_experts + 1) / (top_k + 1)`` times the expert FLOPs. "grouped" gathers
            each expert's tokens and runs it on them only (fewest FLOPs; data-dependent shapes, host syncs).
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
        dispatch: str = "dense",
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
        self.dispatch = dispatch

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
            check_range(task_ids, self.n_tasks, "TaskMoE: task_ids")
            task_ids = task_ids.long()
        return mask, task_ids

    def route(self, h: torch.Tensor, task: torch.Tensor, weight: torch.Tensor | None = None):
        """Gate tokens.

        Args:
            h: normalised tokens ``[n d]``; task: their task ids ``[n]``; weight: ``[n]`` float, 1 for the
                tokens that count in the load (real ones), 0 for the others (None: all count).
        Returns:
            ``(top_idx [n k] long, top_gate [n k], clean_logits [n e], load [e])`` where ``load`` is
            Shazeer's differentiable estimate of the number of tokens routed to each expert when noise
            is on, else the plain (non-differentiable) count.
        """
        g_in = torch.cat([h, self.task_embed(task).to(h.dtype)], dim=-1)
        use_noise = self.noise and self.training
        if use_noise:  # both gates in one product
            clean, raw_noise = F.linear(g_in, torch.cat([self.gate.weight, self.noise_gate.weight])).chunk(2, dim=-1)
        else:
            clean = self.gate(g_in)
        if use_noise and self.noise_rel is not None:
            spread = clean.detach().float().std(dim=-1, keepdim=True).to(clean.dtype) + 1e-6
            noise_std = self.noise_rel / math.log(2.0) * F.softplus(raw_noise) * spread
            noisy = clean + torch.randn_like(clean) * noise_std
        elif use_noise:
            noise_std = F.softplus(raw_noise) + 1e-2
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
            per_token = torch.where(is_in, p_in, p_out)
        else:
            per_token = _chosen(top_idx, self.n_experts, clean.dtype)
        load = (per_token if weight is None else per_token * weight[:, None].to(per_token.dtype)).sum(0)
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
        real = mask.reshape(b * l)
        weight = real.to(torch.float32)
        # Padding never counts: its h is 0 (finite whatever x holds there), its weight is 0 in every loss and
        # load, and its output is x unchanged.
        h = torch.where(real[:, None], self.norm(x.reshape(b * l, d)), torch.zeros((), dtype=x.dtype, device=x.device))
        task = task_ids.repeat_interleave(l)
        if self.training and self.task_embed_mode == "tracked":
            self.task_seen.index_fill_(0, task_ids, True)
        top_idx, top_gate, clean, load = self.route(h, task, weight)
        if self.dispatch == "dense":
            out = self._dense(h, top_idx, top_gate)
        elif self.dispatch == "grouped":
            out = self._grouped(h, real, top_idx, top_gate)
        else:
            raise ValueError(f"TaskMoE.dispatch must be 'dense' or 'grouped', got {self.dispatch!r}")
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            sample_keep = (torch.rand(b, device=x.device) < keep).to(x.dtype) / keep  # [b]; fuses, unlike bernoulli_
            out = out * sample_keep.repeat_interleave(l).unsqueeze(-1).to(out.dtype)
        y = torch.where(mask.unsqueeze(-1), x + out.view(b, l, d).to(x.dtype), x)
        n = weight.sum()
        gates = torch.zeros_like(clean, dtype=torch.float32).scatter(1, top_idx, top_gate.float())  # [b l, e]
        importance = (gates * weight[:, None]).sum(0)
        balance = _cv_squared(importance) + _cv_squared(load.float())
        z_loss = (torch.logsumexp(clean.float(), dim=-1).pow(2) * weight).sum() / n.clamp_min(1.0)
        aux = self.balance_coef * balance + self.z_coef * z_loss
        expert_load = (_chosen(top_idx, self.n_experts, torch.float32) * weight[:, None]).sum(0) / n.clamp_min(1.0)
        return y, aux, expert_load

    def _dense(self, h: torch.Tensor, top_idx: torch.Tensor, top_gate: torch.Tensor) -> torch.Tensor:
        """``sum_j g_j expert_{i_j}(h) + (1 - max g) universal(h)`` for every token of ``h [n d]``: one matrix
        product for all experts' first layers, one batched over the experts for the second layers, the gate (0 for
        an unchosen expert) applied to each expert's output.

        Feature-major (``[experts, features, tokens]``) so every expert's weight gradient comes out as a whole
        contiguous block, which autograd hands to the parameter as is (a column block of one big gradient
        would be copied into place, parameter by parameter, every step).
        """
        experts = [*self.experts, self.universal]
        gates = torch.zeros(h.shape[0], self.n_experts, dtype=top_gate.dtype, device=h.device).scatter(1, top_idx, top_gate)
        gates = torch.cat([gates, 1.0 - top_gate.max(dim=-1, keepdim=True).values], dim=1)  # [n, e + 1]
        w1 = torch.stack([e.fc1.weight for e in experts])  # [e + 1, hidden, d]
        b1 = torch.stack([e.fc1.bias for e in experts])
        w2 = torch.stack([e.fc2.weight for e in experts])  # [e + 1, d, hidden]
        b2 = torch.stack([e.fc2.bias for e in experts])  # [e + 1, d]
        pre = torch.matmul(w1, h.t()) + b1.unsqueeze(-1)  # [e + 1, hidden, n]: one product of (e + 1) hidden rows
        act = F.dropout(F.gelu(pre), self.experts[0].dropout.p, self.training)
        # The gate multiplies each expert's output rows (d of them), not its hidden ones (twice as many here).
        per_expert = torch.matmul(w2, act) + b2.unsqueeze(-1).to(act.dtype)  # [e + 1, d, n]
        out = (per_expert * gates.t().unsqueeze(1).to(act.dtype)).sum(0)  # [d, n]
        return out.t()

    def _grouped(self, h: torch.Tensor, real: torch.Tensor, top_idx: torch.Tensor, top_gate: torch.Tensor) -> torch.Tensor:
        """The same mixture with each expert run only on the real tokens it received, one call per expert
        over its group: data-dependent shapes (``nonzero``, per-expert counts read on the host)."""
        pos = real.nonzero().squeeze(1)  # [m] real tokens
        hr, idx, gate = h.index_select(0, pos), top_idx.index_select(0, pos), top_gate.index_select(0, pos)
        out = self.universal(hr) * (1.0 - gate.max(dim=-1).values).unsqueeze(-1)
        flat_idx = idx.reshape(-1)  # slot j of token i at i*k + j
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=self.n_experts).tolist()
        token_of = order // self.top_k
        gate_of = gate.reshape(-1).index_select(0, order)
        start = 0
        for e, count in enumerate(counts):
            # An expert with no tokens still runs on an empty group: every parameter stays in the graph
            # (zero gradient), which DistributedDataParallel needs without find_unused_parameters.
            tok = token_of[start : start + count]
            y_e = self.experts[e](hr.index_select(0, tok)) * gate_of[start : start + count].unsqueeze(-1)
            out = out.index_add(0, tok, y_e.to(out.dtype))
            start += count
        return torch.zeros_like(h).index_add(0, pos, out.to(h.dtype))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, n_tasks={self.n_tasks}, noise={self.noise}"
