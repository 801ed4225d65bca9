"""foundation.augment: the deployment variations drawn in training (gain, channel subsets, shifts)."""

from __future__ import annotations

import pytest
import torch

from foundation.augment import AugmentConfig, augment

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b=64, c=6, t=800):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, t, generator=g)
    mask = torch.ones(b, c, dtype=torch.bool)
    mask[::2, 4:] = False  # every other sample has 4 real channels
    return x, mask


def test_default_is_the_identity():
    x, mask = _batch()
    out, out_mask = augment(x, mask, AugmentConfig())
    assert out is x and out_mask is mask


def test_gain_is_one_log_uniform_factor_per_sample():
    x, mask = _batch()
    out, _ = augment(x, mask, AugmentConfig(gain_range=(0.5, 2.0)), torch.Generator().manual_seed(1))
    ratio = out / x
    per_sample = ratio[:, 0, 0]
    torch.testing.assert_close(ratio, per_sample[:, None, None].expand_as(ratio))
    assert float(per_sample.min()) >= 0.5 and float(per_sample.max()) <= 2.0
    assert float(per_sample.log().std()) > 0.2  # spread over the range, not a constant


def test_channel_dropout_removes_real_channels_only_and_keeps_one():
    x, mask = _batch()
    _, out_mask = augment(x, mask, AugmentConfig(channel_dropout=0.9), torch.Generator().manual_seed(2))
    assert not (out_mask & ~mask).any()  # never revives a padded channel
    assert out_mask.any(1).all()
    kept = out_mask.sum() / mask.sum()
    assert 0.05 < float(kept) < 0.35


def test_time_shift_is_a_circular_shift_within_the_limit():
    x, mask = _batch(b=16)
    out, _ = augment(x, mask, AugmentConfig(time_shift_s=0.5), torch.Generator().manual_seed(3))
    shifts = []
    for i in range(16):
        found = [s for s in range(-100, 101) if torch.equal(out[i], torch.roll(x[i], s, dims=-1))]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 4


def test_objectives_augment_in_training_only():
    from foundation.model import EEGMamba, EEGMambaConfig
    from pretrain.objectives import MaskedSTFTObjective

    torch.manual_seed(0)
    obj = MaskedSTFTObjective(EEGMamba(EEGMambaConfig.from_size("tiny")), augment=AugmentConfig(channel_dropout=0.5))
    x, mask = _batch(b=4, t=400)
    batch = {"x": x, "channel_ids": torch.arange(1, 7).repeat(4, 1), "channel_mask": mask}
    _, train_mask = obj.train()._inputs(batch)[1:]
    assert train_mask.sum() < mask.sum()
    assert torch.equal(obj.eval()._inputs(batch)[2], mask)


def test_configs_reach_the_augmentation():
    from finetune.config import FinetuneConfig
    from pretrain.config import ObjectiveConfig

    assert FinetuneConfig().augment == AugmentConfig() and ObjectiveConfig().augment == AugmentConfig()
    with pytest.raises(ValueError, match="gain_range"):
        AugmentConfig(gain_range=(2.0, 1.0))
