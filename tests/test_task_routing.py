"""Issue 15 item 3, MoE side: task embeddings that transfer, one balance coefficient, relative gate noise,
and old checkpoints that rebuild their legacy behaviour."""

from __future__ import annotations

import json

import pytest
import torch

import foundation.moe as moe_module
from finetune.heads import param_groups
from finetune.model import TaskModel
from foundation.model import EEGMamba, EEGMambaConfig
from foundation.moe import TaskMoE
from foundation.tasks import TASK_IDS, task_ids
from pretrain.objectives import MaskedSTFTObjective

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = dict(task_embed="legacy", gate_noise="absolute", balance_coef=0.01, patch_norm="patch")


def _model(**kw) -> EEGMamba:
    torch.manual_seed(0)
    return EEGMamba(EEGMambaConfig.from_size("tiny", **kw))


def _batch(b=4, c=6, p=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, p * 200, generator=g), torch.randint(1, 100, (b, c), generator=g)


def _top2(model: EEGMamba, x, ids, task: int) -> list[torch.Tensor]:
    """Sorted top-2 experts of every real token, per layer, in eval mode."""
    seen = []
    original = moe_module.TaskMoE.route

    def route(self, h, t, weight=None):
        out = original(self, h, t, weight)
        real = slice(None) if weight is None else weight > 0
        seen.append(out[0][real].sort(-1).values)
        return out

    moe_module.TaskMoE.route = route
    try:
        with torch.no_grad():
            model.eval()(x, ids, None, torch.full((x.shape[0],), task))
    finally:
        moe_module.TaskMoE.route = original
    return seen


def _changed(model, x, ids, a: int, b: int) -> float:
    """Fraction of tokens (all layers) whose top-2 experts differ between task ids a and b."""
    ra, rb = _top2(model, x, ids, a), _top2(model, x, ids, b)
    return float(torch.cat([(u != v).any(-1) for u, v in zip(ra, rb)]).float().mean())


def test_switching_the_task_id_keeps_the_routing_at_init_and_after_task0_pretraining():
    x, ids = _batch()
    assert _changed(_model(**LEGACY), x, ids, 0, 2) > 0.5  # N(0, 1) rows scramble the router
    model = _model()
    assert _changed(model, x, ids, 0, 2) < 0.05
    # "pretrain" on task 0 only: row 0 moves, rows 1-4 do not (15 steps: enough for row 0 to change some routing)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(15):
        out = model(x, ids)
        loss = out.pooled.pow(2).mean() + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [m.task_seen.nonzero().flatten().tolist() for m in model.moes] == [[0], [0]]
    assert _changed(model, x, ids, 0, 2) > 0.05  # the trained row 0 now differs from the untouched row 2
    TaskModel(model, {"sleep": {"n_classes": 5, "task_id": TASK_IDS["sleep"]}})  # finetuning starts
    assert _changed(model, x, ids, 0, 2) < 0.01
    for m in model.moes:
        torch.testing.assert_close(m.task_embed.weight[2], m.task_embed.weight[0])


def test_a_legacy_backbone_keeps_its_task_rows_when_finetuning_starts():
    model = _model(**LEGACY)
    before = [m.task_embed.weight.detach().clone() for m in model.moes]
    TaskModel(model, {"sleep": {"n_classes": 5, "task_id": 2}})
    assert all(torch.equal(a, m.task_embed.weight) for a, m in zip(before, model.moes))
    assert not hasattr(model.moes[0], "task_seen")


def test_task_aware_pretraining_routes_by_the_shards_task_names():
    assert task_ids(["sleep", None, "seizure", "abnormal", "motor_execution"], 5).tolist() == [2, 0, 1, 0, 4]
    x, ids = _batch(b=3)
    batch = {"x": x, "channel_ids": ids, "channel_mask": torch.ones(3, 6, dtype=torch.bool),
             "task": ["sleep", None, "emotion"]}
    for aware, rows in ((True, [0, 2, 3]), (False, [0])):
        obj = MaskedSTFTObjective(_model(), task_aware=aware).train()
        obj(batch)
        assert obj.backbone.moes[0].task_seen.nonzero().flatten().tolist() == rows


def test_recipes_use_the_foundation_task_table():
    from finetune.recipes import get_recipe

    for name in ("seizure", "sleep", "emotion", "motor_imagery"):
        recipe = get_recipe(name)
        assert recipe.task_id == TASK_IDS[recipe.task]


def test_task_embeddings_get_the_full_learning_rate_unless_legacy():
    for kw, scale in (({}, 1.0), (LEGACY, 0.65 ** 2)):  # legacy: layer 1 of 2 under decay 0.65
        model = TaskModel(_model(**kw), {"sleep": {"n_classes": 5, "task_id": 2}})
        groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.65, n_layers=2)
        of = {n: g["lr_scale"] for g in groups for n in g["names"]}
        assert of["backbone.moes.0.task_embed.weight"] == pytest.approx(scale)
        assert of["backbone.moes.0.gate.weight"] == pytest.approx(0.65 ** 2)


def _train_moe(steps=60, seed=0, **kw) -> torch.Tensor:
    torch.manual_seed(seed)
    moe = TaskMoE(16, 4, 2, n_tasks=3, **kw)
    w = torch.randn(16, 16)
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 32, 16, generator=g) + 2.0
        y, aux, _ = moe(x)
        loss = ((y - torch.tanh(x @ w)) ** 2).mean() + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return moe.eval()(torch.randn(16, 64, 16, generator=g) + 2.0)[2]


@pytest.mark.parametrize("seed", [0, 2])
def test_noise_free_routing_stays_balanced_after_training(seed):
    """4 experts, top-2: a balanced load is 0.5 per expert. The pre-fix setup (effective balance weight
    1e-4, absolute noise) starves some expert (~0 tokens) and overloads others."""
    legacy = _train_moe(seed=seed, balance_coef=1e-4, noise_rel=None)
    assert float(legacy.max() - legacy.min()) > 0.6
    load = _train_moe(seed=seed)
    assert 0.35 < float(load.min()) and float(load.max()) < 0.65


def test_the_effective_balance_weight_is_the_backbone_config_value():
    cfg = EEGMambaConfig()
    assert cfg.balance_coef == 0.1 and cfg.z_coef == 1e-3
    obj = MaskedSTFTObjective(_model())
    assert obj.moe_aux_weight == 1.0
    x, ids = _batch(b=2)
    out = obj.train()({"x": x, "channel_ids": ids, "channel_mask": torch.ones(2, 6, dtype=torch.bool)})
    band = obj.band_power_weight * out["loss_band"]  # the band-power target, weighted by the objective
    torch.testing.assert_close(out["loss"].detach(), out["loss_stft"] + out["moe_aux"] + band)


def test_gate_noise_does_not_decide_the_routing():
    """Training-mode routing should mostly follow the clean logits (noise explores near-ties only)."""

    def flipped(noise_rel):
        torch.manual_seed(0)
        moe = TaskMoE(16, 4, 2, noise_rel=noise_rel).train()
        h = torch.randn(2000, 16)
        top, _, clean, _ = moe.route(h, torch.zeros(2000, dtype=torch.long))
        clean_top = clean.topk(2, dim=-1).indices.sort(-1).values
        return float((top.sort(-1).values != clean_top).any(-1).float().mean())

    assert flipped(None) > 0.6  # legacy absolute noise: softplus(0) = 0.69 against a ~0.2 logit spread
    assert flipped(0.25) < 0.35


def test_an_old_config_json_rebuilds_the_legacy_model(tmp_path):
    old = _model(**LEGACY)
    old.save_pretrained(tmp_path / "old")
    file = tmp_path / "old" / "config.json"
    data = json.loads(file.read_text())
    for key in ("task_embed", "gate_noise", "moe_noise_rel", "patch_norm"):
        data.pop(key)  # written before these fields existed
    file.write_text(json.dumps(data))
    loaded = EEGMamba.from_pretrained(tmp_path / "old")
    assert (loaded.config.task_embed, loaded.config.gate_noise, loaded.config.patch_norm) == ("legacy", "absolute", "patch")
    x, ids = _batch(b=2)
    torch.testing.assert_close(loaded(x, ids).pooled, old.eval()(x, ids).pooled)
    # a new checkpoint keeps the new behaviour, and its task record
    new = _model()
    new.moes[0].task_seen[3] = True
    new.save_pretrained(tmp_path / "new")
    again = EEGMamba.from_pretrained(tmp_path / "new")
    assert again.config.task_embed == "tracked" and bool(again.moes[0].task_seen[3])
