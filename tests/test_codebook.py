"""EMA codebook: assignment, EMA updates, k-means init, dead-code restart, padding, stats (tokenizer/codebook.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenizer.codebook import EMACodebook, spherical_kmeans


def _clusters(n_clusters: int, per_cluster: int, dim: int, spread: float = 0.05, seed: int = 0):
    """Unit vectors in tight clusters around random centres: ``(x [n, dim], centres [k, dim], labels [n])``."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=-1)
    labels = torch.arange(n_clusters).repeat_interleave(per_cluster)
    x = F.normalize(centres[labels] + spread * torch.randn(len(labels), dim, generator=g), dim=-1)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], centres, labels[perm]


def test_codes_are_nearest_by_cosine_and_unit_norm():
    torch.manual_seed(0)
    cb = EMACodebook(16, 8, kmeans_init=False).eval()
    z = torch.randn(4, 5, 8) * 7.0  # scale must not matter: cosine similarity
    out = cb(z)
    assert out.codes.shape == (4, 5) and out.quantized.shape == (4, 5, 8)
    expected = (F.normalize(z, dim=-1) @ cb.embed.t()).argmax(-1)
    assert torch.equal(out.codes, expected)
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(4, 5), atol=1e-5)
    assert torch.allclose(out.quantized, cb.embed[out.codes])
    assert torch.equal(cb.quantize(z), expected)


def test_straight_through_gradient_and_commitment_loss():
    torch.manual_seed(1)
    cb = EMACodebook(8, 4, kmeans_init=False).eval()
    z = torch.randn(10, 4, requires_grad=True)
    out = cb(z)
    zn = F.normalize(z.detach(), dim=-1)
    assert torch.allclose(out.loss, F.mse_loss(zn, cb.embed[out.codes]))
    # Straight-through: d(sum q)/dz equals d(sum normalize(z))/dz.
    (out.quantized.sum()).backward()
    z2 = z.detach().clone().requires_grad_(True)
    F.normalize(z2, dim=-1).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)
    # The commitment loss pulls z toward its code and never moves the (EMA-only) codebook.
    assert not any(p.requires_grad for p in cb.parameters())


def test_ema_update_moves_codes_toward_assigned_inputs():
    torch.manual_seed(2)
    cb = EMACodebook(4, 8, decay=0.9, kmeans_init=False, dead_code_threshold=0.0).train()
    target = F.normalize(cb.embed[0] + 0.8 * F.normalize(torch.randn(8), dim=-1), dim=-1)
    # Vectors near `target` but closer to code 0 than to any other code.
    x = F.normalize(target + 0.01 * torch.randn(32, 8), dim=-1)
    x = x[cb.quantize(x) == 0]
    assert len(x) > 10
    # Give code 0 a history: as if it had averaged 10 vectors per step along its current direction.
    cb.cluster_size[0] = 10.0
    cb.embed_sum[0] = 10.0 * cb.embed[0]
    e0 = cb.embed[0].clone()
    cb(x)
    # One EMA step: sum <- 0.9 sum + 0.1 * (sum of assigned inputs); code = its direction.
    assert torch.allclose(cb.embed[0], F.normalize(0.9 * 10.0 * e0 + 0.1 * x.sum(0), dim=0), atol=1e-6)
    assert torch.allclose(cb.cluster_size[0], torch.tensor(0.9 * 10.0 + 0.1 * len(x)))
    cos = [float(e0 @ target), float(cb.embed[0] @ target)]
    others_before = cb.embed[1:].clone()
    for _ in range(20):
        cb(x)
        cos.append(float(cb.embed[0] @ target))
    assert all(b > a for a, b in zip(cos, cos[1:])), cos  # moves toward its inputs, step by step
    assert cos[1] < 0.99 < cos[-1]  # gradually (EMA), not in one jump
    assert torch.allclose(cb.embed[1:], others_before)  # unassigned codes keep their direction


def test_kmeans_init_uses_the_data():
    x, centres, _ = _clusters(n_clusters=8, per_cluster=40, dim=16)
    torch.manual_seed(3)
    cb = EMACodebook(8, 16, kmeans_init=True, kmeans_init_samples=200, dead_code_threshold=0.0).train()
    random_start = cb.embed.clone()
    assert not bool(cb.initialized)
    out = cb(x)
    assert bool(cb.initialized)
    # Every true centre has a code within a few degrees, and every code sits on a centre.
    sim = cb.embed @ centres.t()
    assert sim.max(dim=0).values.min() > 0.99
    assert sim.max(dim=1).values.min() > 0.99
    assert (random_start @ centres.t()).max(dim=0).values.min() < 0.9  # which the random start did not
    assert out.used_fraction.item() == 1.0
    assert math.isclose(out.perplexity.item(), 8.0, rel_tol=1e-3)
    # Cluster sizes start from the k-means counts scaled to one batch (320 vectors; 40 per cluster).
    assert math.isclose(cb.cluster_size.sum().item(), 320.0, rel_tol=1e-4)
    assert cb.cluster_size.min() > 20.0


def test_kmeans_waits_for_enough_samples():
    x, _, _ = _clusters(4, 10, 8)
    cb = EMACodebook(4, 8, kmeans_init_samples=100).train()
    start = cb.embed.clone()
    for i in range(2):
        cb(x)  # 40 per step: not yet 100
        assert not bool(cb.initialized) and torch.equal(cb.embed, start) and cb.cluster_size.sum() == 0
    cb(x)
    assert bool(cb.initialized) and not torch.equal(cb.embed, start)


def test_dead_codes_get_restarted_from_recent_inputs():
    torch.manual_seed(4)
    x, _, _ = _clusters(n_clusters=2, per_cluster=64, dim=8)
    cb = EMACodebook(16, 8, decay=0.5, kmeans_init=False, dead_code_threshold=0.1).train()
    out = cb(x)
    used = int(round(out.used_fraction.item() * 16))
    assert used < 16
    # Every code that got nothing is dead after the first EMA step (0 < 0.1 x uniform share), while a code
    # with one vector has 0.5 > 0.1 x 128 / 16; the dead ones are moved onto this batch's vectors.
    assert out.n_restarted == 16 - used
    restarted = cb.embed[cb.cluster_size > 0]
    sim_to_inputs = (cb.embed @ x.t()).max(dim=1).values
    assert (sim_to_inputs > 0.9999).sum() >= out.n_restarted  # they are copies of recent encoder outputs
    assert len(restarted) == 16
    # Restarted codes got a uniform share, so nothing is dead right after.
    assert cb.dead_codes().sum() == 0
    # With the restarted codes on the data, the next batch spreads over more than two codes.
    out2 = cb(x)
    assert out2.used_fraction.item() > 2 / 16


def test_no_restart_when_disabled_or_in_eval():
    x, _, _ = _clusters(2, 32, 8)
    cb = EMACodebook(16, 8, kmeans_init=False, dead_code_threshold=0.0).train()
    assert cb(x).n_restarted == 0
    cb2 = EMACodebook(16, 8, kmeans_init=False, dead_code_threshold=0.5).eval()
    state = {k: v.clone() for k, v in cb2.state_dict().items()}
    out = cb2(x)
    assert out.n_restarted == 0
    assert all(torch.equal(v, cb2.state_dict()[k]) for k, v in state.items())  # eval never updates


def test_padding_is_ignored():
    torch.manual_seed(5)
    cb = EMACodebook(8, 4, kmeans_init=False, dead_code_threshold=0.0).train()
    z = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    z_garbage = z.clone()
    z_garbage[~mask] = 1e3 * torch.randn(3, 4)
    ref = EMACodebook(8, 4, kmeans_init=False, dead_code_threshold=0.0).train()
    ref.load_state_dict(cb.state_dict())
    a = cb(z, mask)
    b = ref(z_garbage, mask)
    assert torch.equal(a.codes, b.codes) and (a.codes[~mask] == -1).all()
    assert torch.allclose(a.loss, b.loss) and torch.allclose(cb.embed, ref.embed)
    assert (a.quantized[~mask] == 0).all()
    assert math.isclose(cb.cluster_size.sum().item(), 9 * 0.01, rel_tol=1e-4)  # 9 real vectors, (1 - decay)


def test_spherical_kmeans_separates_clusters():
    x, centres, labels = _clusters(5, 30, 6)
    c, counts = spherical_kmeans(x, 5, iters=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(c.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert sorted(counts.tolist()) == [30.0] * 5
    # k-means with fewer points than codes still returns k unit vectors
    c2, _ = spherical_kmeans(x[:3], 7)
    assert c2.shape == (7, 6) and torch.allclose(c2.norm(dim=-1), torch.ones(7), atol=1e-5)


def test_state_dict_round_trip_excludes_pool():
    cb = EMACodebook(8, 4)
    keys = set(cb.state_dict())
    assert keys == {"embed", "cluster_size", "embed_sum", "vectors_per_step", "initialized"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        EMACodebook(8, 4, decay=1.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        EMACodebook(8, 4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="mask"):
        EMACodebook(8, 4)(torch.randn(3, 4), torch.ones(2, dtype=torch.bool))


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different data and RNG streams per rank
    cb = EMACodebook(16, 8, decay=0.8, kmeans_init_samples=32, dead_code_threshold=0.2).train()
    for _ in range(6):
        cb(F.normalize(torch.randn(24, 8) + 2.0 * rank, dim=-1))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in cb.state_dict().items()}, f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


def test_distributed_ranks_keep_identical_codebooks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "rank0.safetensors")
    b = load_file(tmp_path / "rank1.safetensors")
    assert bool(a["initialized"]) and all(torch.equal(a[k], b[k]) for k in a)
    # Statistics are global: both ranks' vectors (24 each) were counted.
    assert math.isclose(a["vectors_per_step"].item(), 48.0, rel_tol=1e-4)


def _drifted_run(dead_decay, steps: int = 60) -> tuple[int, float]:
    """k-means on one distribution, then the data move to another (as an encoder's outputs do early in
    training): codes fitted to the first are dead. Returns (codes restarted, global usage at the end)."""
    torch.manual_seed(0)
    first, _, _ = _clusters(64, 8, 16, seed=1)
    book = EMACodebook(64, 16, decay=0.99, dead_code_threshold=0.02, dead_decay=dead_decay, usage_window=20).train()
    book(first)  # k-means on the first distribution
    restarted = 0
    for step in range(steps):
        later, _, _ = _clusters(8, 64, 16, seed=100 + step % 4)  # 8 tight clusters elsewhere
        restarted += book(later).n_restarted
    return restarted, float(book(later).used_fraction)


def test_dead_codes_restart_within_a_short_run_and_global_usage_rises():
    legacy_restarts, legacy_usage = _drifted_run(dead_decay=None)
    assert legacy_restarts == 0  # the slow EMA needs ~390 steps to call a k-means code dead
    restarts, usage = _drifted_run(dead_decay=0.9)
    assert restarts >= 20 and usage > legacy_usage + 0.2, (restarts, usage, legacy_usage)


def test_used_fraction_is_global_over_the_window_and_batch_usage_per_batch():
    book = EMACodebook(32, 8, kmeans_init=False, dead_code_threshold=0.0, usage_window=4).train()
    for k in range(4):  # batch k holds vectors nearest to codes 8k..8k+7 only
        out = book(book.embed[8 * k : 8 * k + 8].clone())
        assert out.batch_used_fraction.item() == pytest.approx(0.25)
        assert out.used_fraction.item() == pytest.approx(0.25 * (k + 1))
    assert book(book.embed[:8].clone()).used_fraction.item() == pytest.approx(1.0)
    assert book(book.embed[:8].clone()).used_fraction.item() == pytest.approx(0.75)  # codes 8-15 fell out
