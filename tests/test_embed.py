"""Input adapters: shapes, (c p) patch indexing and locality, masking, padding, errors."""

from __future__ import annotations

import pytest
import torch

from foundation.embed import ChannelPatchEmbed, STAdaptiveEmbed

pytestmark = pytest.mark.usefixtures("one_thread")

D, S = 32, 200


@pytest.fixture()
def cpe() -> ChannelPatchEmbed:
    """The legacy per-patch normalisation: every token depends on its own patch only."""
    torch.manual_seed(0)
    return ChannelPatchEmbed(D, patch_size=S, max_patches=6, n_channel_ids=50, patch_norm="patch").eval()


@pytest.fixture()
def cpe_sample() -> ChannelPatchEmbed:
    torch.manual_seed(0)
    return ChannelPatchEmbed(D, patch_size=S, max_patches=6, n_channel_ids=50).eval()


def _eeg_like(b=2, c=3, p=4):
    """Smooth, EEG-like patches (a 10-Hz rhythm + 1/f-ish noise) so amplitude is the only difference."""
    g = torch.Generator().manual_seed(3)
    t = torch.arange(p * S) / 200.0
    noise = torch.cumsum(torch.randn(b, c, p * S, generator=g), -1) * 0.05
    noise = noise - noise.mean(-1, keepdim=True)
    return torch.sin(2 * torch.pi * 10 * t) + noise, torch.randint(1, 50, (b, c), generator=g)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).detach()


def test_sample_norm_keeps_the_relative_amplitude_of_a_patch(cpe, cpe_sample):
    """Scaling one patch x3 must change its token (per-sample statistics); the legacy norm discards it."""
    x, ids = _eeg_like()
    x3 = x.clone()
    x3[0, 1, 2 * S : 3 * S] *= 3.0
    k = 1 * 4 + 2
    # Compare encoder outputs (the position embeddings are the same in both).
    for model, lo, hi in ((cpe, 0.99, 1.0), (cpe_sample, -1.0, 0.9)):
        a = model(x, ids)[0][0, k] - model.spatial.weight[ids[0, 1]]
        b = model(x3, ids)[0][0, k] - model.spatial.weight[ids[0, 1]]
        assert lo <= float(_cos(a, b)) <= hi, (model.encoder.patch_norm, float(_cos(a, b)))


def test_sample_norm_is_invariant_to_a_whole_sample_gain_and_ignores_hidden_patches(cpe_sample):
    x, ids = _eeg_like()
    ref, _, _ = cpe_sample(x, ids)
    scaled, _, _ = cpe_sample(x * 7.0, ids)  # units / amplifier gain
    assert float(_cos(ref, scaled).min()) > 0.98  # exact but for the first conv's bias
    pm = torch.zeros(2, 3, 4, dtype=torch.bool)
    pm[0, 2, 1] = True
    a, _, _ = cpe_sample(x, ids, patch_mask=pm)
    x2 = x.clone()
    x2[0, 2, S : 2 * S] *= 50.0  # a hidden patch's amplitude must not reach any token
    b, _, _ = cpe_sample(x2, ids, patch_mask=pm)
    torch.testing.assert_close(a, b)


def test_sample_norm_statistics_ignore_padded_channels(cpe_sample):
    x, ids = _eeg_like(b=1, c=2)
    alone, _, _ = cpe_sample(x, ids)
    padded = torch.cat([x, 100 * torch.randn(1, 2, 4 * S)], dim=1)
    out, _, _ = cpe_sample(padded, torch.cat([ids, ids], 1), torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(out[:, :8], alone, rtol=1e-5, atol=1e-5)


@pytest.fixture()
def st() -> STAdaptiveEmbed:
    torch.manual_seed(0)
    return STAdaptiveEmbed(D, n_tasks=3, n_channel_ids=50, patch_size=S, max_patches=6, stride=25).eval()


def _batch(b=2, c=3, p=4):
    torch.manual_seed(1)
    return torch.randn(b, c, p * S), torch.randint(0, 50, (b, c))


def test_channel_patch_shapes_and_cp_order(cpe):
    x, ids = _batch()
    tokens, token_mask, cls = cpe(x, ids)
    assert tokens.shape == (2, 12, D) and token_mask.shape == (2, 12) and cls.shape == (2, D)
    assert token_mask.all()
    # token (c, p) sits at c * P + p and equals encoder(patch) + spatial(id_c) + temporal(p)
    for c, p in [(0, 0), (1, 2), (2, 3)]:
        patch = x[1, c, p * S : (p + 1) * S].reshape(1, 1, S)
        expect = cpe.encoder(patch)[0] + cpe.spatial.weight[ids[1, c]] + cpe.temporal.weight[p]
        torch.testing.assert_close(tokens[1, c * 4 + p], expect, rtol=1e-5, atol=1e-6)


def test_a_patch_token_depends_only_on_its_own_samples(cpe):
    x, ids = _batch()
    base, _, _ = cpe(x, ids)
    x2 = x.clone()
    x2[0, 1, 2 * S : 3 * S] += torch.randn(S)  # channel 1, patch 2
    out, _, _ = cpe(x2, ids)
    changed = (out - base).abs().amax(-1) > 0
    expect = torch.zeros_like(changed)
    expect[0, 1 * 4 + 2] = True
    assert torch.equal(changed, expect)


def test_spatial_and_temporal_embeddings_follow_ids_and_patch_index(cpe):
    x = torch.randn(1, 1, S).repeat(1, 2, 2)  # same 1-s patch in 2 channels x 2 patches
    tokens, _, _ = cpe(x, torch.tensor([[7, 7]]))
    torch.testing.assert_close(tokens[0, 0], tokens[0, 2])  # same id, same patch index
    torch.testing.assert_close(tokens[0, 1] - tokens[0, 0], cpe.temporal.weight[1] - cpe.temporal.weight[0])
    tokens2, _, _ = cpe(x, torch.tensor([[7, 9]]))
    torch.testing.assert_close(tokens2[0, 2] - tokens2[0, 0], cpe.spatial.weight[9] - cpe.spatial.weight[7])


def test_patch_mask_replaces_the_patch_before_position_embeddings(cpe):
    x, ids = _batch()
    pm = torch.zeros(2, 3, 4, dtype=torch.bool)
    pm[0, 2, 1] = True
    tokens, _, _ = cpe(x, ids, patch_mask=pm)
    expect = cpe.mask_token + cpe.spatial.weight[ids[0, 2]] + cpe.temporal.weight[1]
    torch.testing.assert_close(tokens[0, 2 * 4 + 1], expect)
    ref, _, _ = cpe(x, ids)
    keep = ~pm.reshape(2, 12)
    assert torch.equal(tokens[keep], ref[keep])


def test_padded_channels_never_reach_real_tokens(cpe):
    x, ids = _batch(c=4)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    ref, token_mask, _ = cpe(x, ids, mask)
    x2, ids2 = x.clone(), ids.clone()
    x2[1, 1] = float("nan")
    x2[1, 3] = 1e30
    ids2[1, 1], ids2[1, 3] = 10_000, -5  # ids at padding are ignored, even out of range
    out, token_mask2, _ = cpe(x2, ids2, mask)
    assert torch.equal(out, ref) and torch.equal(token_mask, token_mask2)
    expect_mask = mask.repeat_interleave(4, dim=1)
    assert torch.equal(token_mask, expect_mask)
    assert (out[~expect_mask] == 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(2, 3, 350)), "multiple of patch_size"),
        (dict(x=torch.randn(2, 3, 7 * S)), "max_patches"),
        (dict(x=torch.randn(3, 7 * S)), r"\[b, c, t\]"),
        (dict(channel_ids=torch.full((2, 3), 50)), "channel_ids must lie"),
        (dict(channel_ids=torch.zeros(2, 4, dtype=torch.long)), "channel_ids must be"),
        (dict(channel_ids=torch.zeros(2, 3)), "integer"),
        (dict(channel_mask=torch.ones(2, 3)), "channel_mask"),
        (dict(channel_mask=torch.tensor([[True] * 3, [False] * 3])), "no real channel"),
        (dict(patch_mask=torch.zeros(2, 3, 3, dtype=torch.bool)), "patch_mask"),
    ],
)
def test_channel_patch_bad_inputs(cpe, kwargs, match):
    x, ids = _batch()
    args = dict(x=x, channel_ids=ids, channel_mask=None, patch_mask=None) | kwargs
    with pytest.raises(ValueError, match=match):
        cpe(**args)


def test_st_adaptive_shapes_and_padding_invariance(st):
    x, ids = _batch(c=4, p=2)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    tokens, token_mask, cls = st(x, ids, mask)
    assert tokens.shape == (2, 2 * S // 25, D) and token_mask.all() and cls.shape == (2, D)
    x2 = x.clone()
    x2[1, 2:] = float("nan")
    out, _, _ = st(x2, ids, mask)
    assert torch.equal(out, tokens)
    # the same sample without the padded channels at all
    alone, _, _ = st(x[1:, :2], ids[1:, :2])
    torch.testing.assert_close(alone[0], tokens[1], rtol=1e-5, atol=1e-6)


def test_st_adaptive_is_a_function_of_the_channel_set_not_its_order(st):
    x, ids = _batch(b=1, c=5, p=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, _, _ = st(x, ids)
    b, _, _ = st(x[:, perm], ids[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_st_adaptive_spatial_weights_are_per_task(st):
    x, ids = _batch(b=2, c=3, p=1)
    a, _, _ = st(x, ids, task_ids=torch.tensor([0, 0]))
    b, _, _ = st(x, ids, task_ids=torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().amax() > 1e-4
    assert torch.equal(st(x, ids)[0], a)  # None means task 0
    with pytest.raises(ValueError, match="task_ids"):
        st(x, ids, task_ids=torch.tensor([0, 3]))


def test_st_adaptive_token_sees_only_its_receptive_field_before_normalisation(st):
    # Replace GroupNorm's global statistics by identity to check the conv geometry: token n of the small
    # path covers samples [25 n, 25 n + 25), the wide path [25 n - 87, 25 n + 113) (kernel 200, centred).
    st.small[1] = torch.nn.Identity()
    st.wide[1] = torch.nn.Identity()
    x, ids = _batch(b=1, c=2, p=2)
    base, _, _ = st(x, ids)
    x2 = x.clone()
    x2[0, :, 200] += 1.0
    out, _, _ = st(x2, ids)
    changed = ((out - base).abs().amax(-1) > 0)[0].nonzero().flatten().tolist()
    expect = [n for n in range(16) if 25 * n - 87 <= 200 < 25 * n + 113]
    assert changed == expect


def test_st_adaptive_rejects_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        STAdaptiveEmbed(D, patch_size=200, stride=30)


def test_sample_norm_fused_path_equals_the_masked_one_with_gradients(cpe_sample, monkeypatch):
    """With every patch counted, the sample norm runs as one GroupNorm over [b, ch, (m s)]; the masked form (what
    padded channels, hidden patches, a GPU or a compiled step use) gives the same tokens and parameter gradients."""
    import foundation.embed as embed

    x, ids = _eeg_like()
    results = []
    for masked in (False, True):
        if masked:
            monkeypatch.setattr(embed, "sync_free", lambda device: True)
        cpe_sample.zero_grad(set_to_none=True)
        tokens, _, _ = cpe_sample(x, ids)
        (tokens * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum().backward()
        results.append((tokens.detach(), {n: p.grad.clone() for n, p in cpe_sample.named_parameters() if p.grad is not None}))
    (fused, fused_grads), (masked, masked_grads) = results
    torch.testing.assert_close(fused, masked, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == masked_grads.keys() and any("encoder.net.1" in n for n in fused_grads)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
