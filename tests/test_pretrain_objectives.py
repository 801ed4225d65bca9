"""pretrain.objectives: masks, losses, padding handling, and that every objective actually learns."""

from __future__ import annotations

import itertools

import pytest
import torch

from pretrain.config import DataConfig, DemoConfig
from pretrain.data import corpus_specs, make_batch_stream, resolve_corpora
from pretrain.demo import build_demo_shards
from pretrain.objectives import (
    MaskedSTFTObjective,
    MaskedTokenObjective,
    TokenizerObjective,
    build_backbone,
    random_patch_mask,
)
from tokenizer.vqnsp import VQNSP, VQNSPConfig


@pytest.fixture(scope="session")
def demo_spec(tmp_path_factory) -> str:
    root = tmp_path_factory.getbasetemp() / "pretrain_demo"
    return build_demo_shards(root, DemoConfig(n_subjects=6, duration_s=40.0, shard_size=8), progress=False)


def _batches(spec: str, n: int, batch: int = 4, crop_s: float = 2.0) -> list[dict]:
    data = DataConfig(shards=spec, batch_size=batch, crop_s=crop_s, shuffle_buffer=32)
    stream = make_batch_stream(data, resolve_corpora(corpus_specs(data)), patch_size=200, sfreq=200.0, seed=0,
                               grad_accum=1, world_size=1)
    return list(itertools.islice(stream.batches(0), n))


def _pad(batch: dict, extra: int = 3) -> dict:
    """The batch with ``extra`` padded channels holding garbage (what collate gives mixed channel sets)."""
    b, c, t = batch["x"].shape
    return {
        **batch,
        "x": torch.cat([batch["x"], 50 * torch.randn(b, extra, t)], 1),
        "channel_ids": torch.cat([batch["channel_ids"], torch.zeros(b, extra, dtype=torch.long)], 1),
        "channel_mask": torch.cat([batch["channel_mask"], torch.zeros(b, extra, dtype=torch.bool)], 1),
    }


def _fit(objective, batches, steps: int, lr: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=lr)
    objective.train()
    losses = []
    for step in range(steps):
        out = objective(batches[step % len(batches)])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


def _tiny_tokenizer() -> VQNSP:
    torch.manual_seed(0)
    return VQNSP(VQNSPConfig.from_size("tiny", codebook_size=64, kmeans_init=False))


def test_patch_mask_has_the_exact_ratio_and_never_touches_padding():
    cmask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    mask = random_patch_mask(cmask, n_patches=4, ratio=0.5)
    assert mask.shape == (2, 8, 4) and mask.dtype == torch.bool
    assert mask.sum(dim=(1, 2)).tolist() == [10, 16]  # half of 5*4 and of 8*4 real patches
    assert not mask[0, 5:].any()
    complement = ~mask & cmask[:, :, None]
    assert (mask ^ complement)[cmask].all()  # every real patch is a target exactly once per symmetric pair
    assert not torch.equal(random_patch_mask(cmask, 4, 0.5), random_patch_mask(cmask, 4, 0.5))
    with pytest.raises(ValueError, match="mask ratio"):
        random_patch_mask(cmask, 4, 1.0)


def test_masked_token_objective_outputs_and_symmetry(demo_spec):
    torch.manual_seed(0)
    batch = _pad(_batches(demo_spec, 1)[0])
    obj = MaskedTokenObjective(build_backbone("tiny", {}, 2), _tiny_tokenizer(), mask_ratio=0.5)
    out = obj(batch)
    for key in ("loss", "loss_mask", "loss_sym", "acc_mask", "acc_sym", "moe_aux"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    # untrained head: cross-entropy close to log(codebook_size) on each half
    assert abs(float(out["loss_mask"]) - torch.log(torch.tensor(64.0)).item()) < 1.0
    assert out["expert_load"].shape == (2, 4)
    assert not any(p.requires_grad for p in obj.tokenizer.parameters())
    single = MaskedTokenObjective(build_backbone("tiny", {}, 2), _tiny_tokenizer(), symmetric=False)(batch)
    assert "loss_sym" not in single


def test_masked_token_targets_ignore_padded_channels(demo_spec):
    batch = _batches(demo_spec, 1)[0]
    tok = _tiny_tokenizer().eval()
    codes = tok.encode(batch["x"], batch["channel_ids"], batch["channel_mask"])
    padded = _pad(batch)
    codes_padded = tok.encode(padded["x"], padded["channel_ids"], padded["channel_mask"])
    assert torch.equal(codes_padded[:, :19], codes)
    assert (codes_padded[:, 19:] == -1).all()


def test_masked_token_objective_learns(demo_spec):
    batches = _batches(demo_spec, 1, batch=2)
    obj = MaskedTokenObjective(build_backbone("tiny", {}, 2), _tiny_tokenizer())
    losses = _fit(obj, batches, 10)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_masked_stft_objective_outputs_and_learning(demo_spec):
    torch.manual_seed(0)
    batches = [_pad(b) for b in _batches(demo_spec, 1)]
    obj = MaskedSTFTObjective(build_backbone("tiny", {}, 2))
    out = obj(batches[0])
    assert obj.head.out_features == 4 * 76  # 4 STFT frames x the 76 bins of 0-75 Hz per 1-s patch
    assert obj.band_head.out_features == 5 and float(out["loss_band"]) > 0  # delta..gamma of each token's patch
    tokens = torch.randn(2, 7, obj.head.in_features)
    frames, bands = obj._heads(tokens)  # both heads as one product: the same as each head on its own
    torch.testing.assert_close(frames, obj.head(tokens), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bands, obj.band_head(tokens), rtol=1e-5, atol=1e-6)
    assert abs(float(out["masked_fraction"]) - 0.5) < 0.05
    losses = _fit(obj, batches, 10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses


def test_masked_objectives_need_the_channel_patch_adapter():
    backbone = build_backbone("tiny", {"adapter": "st_adaptive"}, 2)
    with pytest.raises(ValueError, match="channel_patch"):
        MaskedSTFTObjective(backbone)
    with pytest.raises(ValueError, match="channel_patch"):
        MaskedTokenObjective(backbone, _tiny_tokenizer())


def test_tokenizer_objective_learns_and_logs_codebook_use(demo_spec):
    batches = _batches(demo_spec, 1)
    obj = TokenizerObjective(_tiny_tokenizer())
    out = obj(batches[0])
    assert {"loss_quant", "loss_amp", "loss_phase", "perplexity", "usage"} <= set(out)
    assert 1.0 <= float(out["perplexity"]) <= 64 and 0 < float(out["usage"]) <= 1
    losses = _fit(obj, batches, 8)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_missing_tokenizer_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain.train_tokenizer"):
        MaskedTokenObjective.from_tokenizer_dir(build_backbone("tiny", {}, 2), tmp_path / "none")


# -- real recordings (../shared/data) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_spec(shared_data, tmp_path_factory) -> str:
    """Shards of the PhysioNet EEG Motor Movement/Imagery recordings (64 channels, 160 Hz -> 200 Hz)."""
    from shards.writer import build

    out = tmp_path_factory.mktemp("real_shards")
    build("eegmmidb", shared_data / "motor_imagery" / "eegmmidb", out, max_samples_per_shard=40, progress=False)
    return str(out / "eegmmidb")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["masked_stft", "masked_token", "tokenizer"])
def test_each_objective_learns_on_real_recordings(real_spec, name):
    batches = _batches(real_spec, 3, batch=4, crop_s=2.0)
    assert batches[0]["x"].shape[1] == 64
    if name == "masked_stft":
        obj = MaskedSTFTObjective(build_backbone("tiny", {}, 2))
    elif name == "masked_token":
        tok = _tiny_tokenizer()
        _fit(TokenizerObjective(tok), batches, 10)  # codes of a briefly trained tokenizer, not random ones
        obj = MaskedTokenObjective(build_backbone("tiny", {}, 2), tok)
    else:
        obj = TokenizerObjective(_tiny_tokenizer())
    losses = _fit(obj, batches, 24)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.85 * first, (name, losses)


def test_backbone_is_sized_in_its_own_patches():
    from accelerate import Accelerator

    from foundation.model import EEGMambaConfig
    from pretrain.config import PretrainConfig
    from pretrain.run import build_objective

    # 40.5 s at 200 Hz = 81 patches of 100 samples (and no whole number of the default 200-sample patches)
    config = PretrainConfig(data=DataConfig(crop_s=40.5), model=EEGMambaConfig.from_size("tiny", patch_size=100))
    objective = build_objective(config, Accelerator(cpu=True), [])
    assert objective.backbone.config.patch_size == 100 and objective.backbone.config.max_patches == 81
    torch.manual_seed(0)
    batch = {"x": torch.randn(1, 2, 8100), "channel_ids": torch.tensor([[1, 2]]),
             "channel_mask": torch.ones(1, 2, dtype=torch.bool)}
    assert torch.isfinite(objective(batch)["loss"])
    # the longest crop sizes it when windows may train at a longer length than crop_s
    config = PretrainConfig(data=DataConfig(crop_s=4.0, longer_crops_s=(70.0,)), model=EEGMambaConfig.from_size("tiny"))
    assert build_objective(config, Accelerator(cpu=True), []).backbone.config.max_patches == 70


def test_frozen_codes_equal_the_tokenizers_encode_with_padding(demo_spec):
    """The fixed-shape code lookup of MaskedTokenObjective gives exactly the frozen tokenizer's encode()."""
    from pretrain.objectives import frozen_codes

    torch.manual_seed(0)
    tokenizer = VQNSP(VQNSPConfig.from_size("tiny", kmeans_init=False)).eval()
    batch = _pad(_batches(demo_spec, 1)[0])
    expected = tokenizer.encode(batch["x"], batch["channel_ids"], batch["channel_mask"])
    got = frozen_codes(tokenizer, batch["x"], batch["channel_ids"], batch["channel_mask"])
    assert torch.equal(got, expected) and (got[~batch["channel_mask"]] == -1).all()


def test_channel_buckets_pad_without_changing_the_features(demo_spec):
    """pad_channels (what a compiled step does to share graphs): zeros, id 0, mask False; the backbone's
    features of the real tokens stay the same."""
    from pretrain.objectives import pad_channels

    batch = _batches(demo_spec, 1)[0]
    c = batch["x"].shape[1]
    x, ids, mask = pad_channels(batch["x"], batch["channel_ids"], batch["channel_mask"], 8)
    assert x.shape[1] == ids.shape[1] == mask.shape[1] == -(-c // 8) * 8
    assert (x[:, c:] == 0).all() and (ids[:, c:] == 0).all() and not mask[:, c:].any()
    assert pad_channels(x, ids, mask, 8)[0] is x  # already a multiple: unchanged
    torch.manual_seed(0)
    model = build_backbone("tiny", {}, 2).eval()
    with torch.no_grad():
        plain = model(batch["x"], batch["channel_ids"], batch["channel_mask"])
        padded = model(x, ids, mask)
    torch.testing.assert_close(padded.pooled, plain.pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded.cls, plain.cls, rtol=1e-5, atol=1e-6)


def test_the_step_a_gpu_runs_reads_nothing_back(demo_spec, monkeypatch):
    """With EEGFM_SYNC_FREE=1 (the code path of a GPU or a compiled step), a training step of either backbone
    objective calls no operator that reads a device value on the host."""
    from benchmarks.step_overhead import profile_step

    monkeypatch.setenv("EEGFM_SYNC_FREE", "1")
    batch = _pad(_batches(demo_spec, 1)[0])
    torch.manual_seed(0)
    objectives = [MaskedSTFTObjective(build_backbone("tiny", {}, 2)),
                  MaskedTokenObjective(build_backbone("tiny", {}, 2), VQNSP(VQNSPConfig.from_size("tiny", kmeans_init=False)))]
    for objective in objectives:
        objective.train()

        def step(objective=objective):
            objective(batch)["loss"].backward()

        assert profile_step(step, torch.device("cpu"))["syncs"] == 0, type(objective).__name__
