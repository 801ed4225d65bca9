"""EEGMamba: sizes, output contract, padding invariance, task ids, checkpoints and their errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import safetensors.torch
import torch

from foundation import CheckpointError, EEGMamba, EEGMambaConfig, EEGMambaOutput, load_backbone_weights
from runtime.config_dict import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

S = 200
SMALL = dict(d_model=32, n_layers=2, n_experts=4, moe_hidden=64, max_patches=8, n_channel_ids=64)


def _model(**overrides) -> EEGMamba:
    torch.manual_seed(0)
    return EEGMamba(EEGMambaConfig.from_size("tiny", **{**SMALL, **overrides})).eval()


def _batch(b=2, c=3, p=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, p * S, generator=g), torch.randint(0, 64, (b, c), generator=g)


@pytest.mark.parametrize(
    "size, low, high", [("tiny", 1e5, 1e6), ("base", 5.0e6, 6.5e6), ("large", 40e6, 60e6)]
)
def test_named_sizes_have_their_parameter_budgets(size, low, high):
    n = EEGMamba(EEGMambaConfig.from_size(size)).num_parameters()
    assert low <= n <= high, f"{size}: {n:,} parameters"


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_every_size_runs_forward_and_backward_on_cpu(size):
    torch.manual_seed(0)
    model = EEGMamba(EEGMambaConfig.from_size(size)).train()
    x, ids = _batch(b=2, c=2, p=1)
    out = model(x, ids, task_ids=torch.tensor([0, 1]))
    (out.pooled.pow(2).mean() + out.cls.pow(2).mean() + out.aux_loss).backward()
    d = model.config.d_model
    assert out.tokens.shape == (2, 2, d) and out.pooled.shape == (2, d) and out.cls.shape == (2, d)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.embed.encoder.proj.weight.grad.abs().sum() > 0
    assert model.blocks[0].in_proj.weight.grad.abs().sum() > 0
    assert model.moes[-1].gate.weight.grad.abs().sum() > 0


def test_output_contract():
    model = _model()
    x, ids = _batch(b=2, c=3, p=2)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    out = model(x, ids, mask)
    assert isinstance(out, EEGMambaOutput)
    assert out.tokens.shape == (2, 6, 32) and out.token_mask.shape == (2, 6)
    # "(c p)": channel 1 of sample 1 is padding -> its tokens 2 and 3 are padding
    assert out.token_mask.tolist() == [[True] * 6, [True, True, False, False, True, True]]
    assert (out.tokens[1, 2:4] == 0).all()
    torch.testing.assert_close(out.pooled[1], out.tokens[1, [0, 1, 4, 5]].mean(0))
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    assert out.expert_load.shape == (2, 4)
    torch.testing.assert_close(out.expert_load.sum(-1), torch.full((2,), 2.0))


def test_padding_invariance_whole_model():
    model = _model()
    x, ids = _batch(b=2, c=4, p=2)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    ref = model(x, ids, mask)
    x2, ids2 = x.clone(), ids.clone()
    x2[1, 1], x2[1, 3] = float("nan"), 1e6
    ids2[1, 1], ids2[1, 3] = 9999, -1
    out = model(x2, ids2, mask)
    for f in ("tokens", "pooled", "cls"):
        assert torch.equal(getattr(out, f), getattr(ref, f)), f
    # the same sample alone, without any padding, gives the same features
    alone = model(x[1:, [0, 2]], ids[1:, [0, 2]])
    torch.testing.assert_close(alone.tokens[0], ref.tokens[1][ref.token_mask[1]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.pooled[0], ref.pooled[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.cls[0], ref.cls[1], rtol=1e-4, atol=1e-5)


def test_task_ids_change_the_features_and_default_to_zero():
    model = _model()
    x, ids = _batch()
    a = model(x, ids)
    b = model(x, ids, task_ids=torch.zeros(2, dtype=torch.long))
    c = model(x, ids, task_ids=torch.tensor([3, 4]))
    assert torch.equal(a.pooled, b.pooled)
    assert (a.pooled - c.pooled).abs().amax() > 1e-4


def test_patch_mask_changes_only_through_the_mask_token():
    model = _model()
    x, ids = _batch()
    pm = torch.zeros(2, 3, 2, dtype=torch.bool)
    pm[0, 1, 0] = True
    a, b = model(x, ids), model(x, ids, patch_mask=pm)
    # sample 1 has no masked patch (equal up to the expert-group batching), sample 0 changes
    torch.testing.assert_close(a.pooled[1], b.pooled[1], rtol=1e-5, atol=1e-6)
    assert (a.pooled[0] - b.pooled[0]).abs().amax() > 1e-4
    x2 = x.clone()
    x2[0, 1, :S] = 123.0  # hidden patch content is irrelevant
    assert torch.equal(model(x2, ids, patch_mask=pm).tokens, b.tokens)


def test_st_adaptive_model():
    model = _model(adapter="st_adaptive")
    x, ids = _batch(b=2, c=4, p=2)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = model(x, ids, mask, task_ids=torch.tensor([1, 2]))
    assert out.tokens.shape == (2, 2 * S // 25, 32) and out.token_mask.all()
    x2 = x.clone()
    x2[1, 2:] = float("inf")
    assert torch.equal(model(x2, ids, mask, task_ids=torch.tensor([1, 2])).pooled, out.pooled)
    with pytest.raises(ValueError, match="patch_mask"):
        model(x, ids, mask, patch_mask=torch.zeros(2, 4, 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(2, 3, 450)), "multiple of patch_size"),
        (dict(x=torch.randn(2, 3, 9 * S)), "max_patches"),
        (dict(x=torch.randn(3, 2 * S)), r"\[b, c, t\]"),
        (dict(channel_ids=torch.full((2, 3), 64)), "channel_ids must lie"),
        (dict(channel_ids=torch.zeros(3, dtype=torch.long)), "channel_ids must be"),
        (dict(task_ids=torch.tensor([0, 8])), "task_ids"),
        (dict(task_ids=torch.zeros(2, 1, dtype=torch.long)), "task_ids"),
        (dict(channel_mask=torch.ones(2, 3, dtype=torch.long)), "channel_mask"),
    ],
)
def test_bad_inputs_raise_value_errors(kwargs, match):
    model = _model()
    x, ids = _batch()
    with pytest.raises(ValueError, match=match):
        model(**(dict(x=x, channel_ids=ids) | kwargs))


def test_config_validation_and_named_sizes():
    with pytest.raises(ValueError, match="size"):
        EEGMambaConfig.from_size("huge")
    with pytest.raises(ValueError, match="d_modle"):
        EEGMambaConfig.from_size("tiny", d_modle=3)
    with pytest.raises(ValueError, match="top_k"):
        EEGMambaConfig(n_experts=2, top_k=2)
    with pytest.raises(ValueError, match="adapter"):
        EEGMambaConfig(adapter="conv")
    cfg = EEGMambaConfig.from_size("base", n_tasks=5)
    assert cfg.d_model == 128 and cfg.n_tasks == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3  # type: ignore[misc]
    # TOML-style partial dicts (pretrain/finetune configs embed the model config)
    assert from_dict(EEGMambaConfig, {"adapter": "st_adaptive", "d_model": 48}).adapter == "st_adaptive"


def test_save_pretrained_round_trip(tmp_path):
    model = _model(n_tasks=5, adapter="channel_patch", moe_hidden=48)
    model.train()  # saving from training mode must not matter
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["moe_hidden"] == 48
    loaded = EEGMamba.from_pretrained(tmp_path / "ckpt")
    assert type(loaded.config) is EEGMambaConfig and loaded.config == model.config
    assert not loaded.training
    model.eval()
    x, ids = _batch()
    t = torch.tensor([4, 1])
    a, b = model(x, ids, task_ids=t), loaded(x, ids, task_ids=t)
    for f in ("tokens", "cls", "pooled", "aux_loss", "expert_load"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    # and it saves again identically
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_text() == (tmp_path / "ckpt" / "config.json").read_text()


def test_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EEGMamba.from_pretrained(tmp_path / "nowhere")
    model = _model()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)

    (ckpt / "model.safetensors").rename(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        EEGMamba.from_pretrained(ckpt)
    (tmp_path / "w.safetensors").rename(ckpt / "model.safetensors")

    config = (ckpt / "config.json").read_text()
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        EEGMamba.from_pretrained(ckpt)

    data = json.loads(config)
    (ckpt / "config.json").write_text(json.dumps(data | {"d_model": 48}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*does not match.*d_model|model\.safetensors.*does not match"):
        EEGMamba.from_pretrained(ckpt)
    (ckpt / "config.json").write_text(json.dumps(data | {"n_layerz": 2}))
    with pytest.raises(CheckpointError, match=r"config\.json.*n_layerz"):
        EEGMamba.from_pretrained(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json.*not valid JSON"):
        EEGMamba.from_pretrained(ckpt)
    (ckpt / "config.json").write_text(config)

    # a torch.save pickle under the safetensors name must be refused, never unpickled
    torch.save(model.state_dict(), ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        EEGMamba.from_pretrained(ckpt)


def test_load_backbone_weights_partial(tmp_path):
    src = _model(n_tasks=8)
    src.save_pretrained(tmp_path / "ckpt")
    dst = _model(n_tasks=5)
    with pytest.raises(CheckpointError, match="task_embed"):
        load_backbone_weights(dst, tmp_path / "ckpt")
    report = load_backbone_weights(dst, tmp_path / "ckpt", strict=False)
    assert report.mismatched == sorted(f"moes.{i}.{k}" for i in range(2) for k in ("task_embed.weight", "task_seen"))
    assert not report.missing and not report.unexpected
    assert torch.equal(dst.blocks[1].in_proj.weight, src.blocks[1].in_proj.weight)
    # a wrapper module: prefix the file's keys
    wrapper = torch.nn.Module()
    wrapper.backbone = _model(n_tasks=8)
    torch.nn.init.zeros_(wrapper.backbone.norm.weight)
    report = load_backbone_weights(wrapper, tmp_path / "ckpt" / "model.safetensors", prefix="backbone.")
    assert torch.equal(wrapper.backbone.norm.weight, src.norm.weight)
    assert safetensors.torch.load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys() == src.state_dict().keys()


def test_every_parameter_is_in_the_graph_for_ddp():
    # DDP without find_unused_parameters needs a gradient (even zero) for every parameter, also for
    # experts that got no token in this batch and for the [MASK] token when no patch is masked.
    model = _model(n_experts=8).train()
    x, ids = _batch(b=1, c=1, p=1)  # 3 positions, top-2 of 8: some experts get no token
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, ids)
    (out.pooled.float().sum() + out.aux_loss).backward()
    assert (out.expert_load == 0).any()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = _model(drop_path=0.3).train().set_gradient_checkpointing(ckpt)
        calls = []
        model.blocks[0].register_forward_hook(lambda *args: calls.append(1))
        x, ids = _batch()
        torch.manual_seed(5)  # same gate noise and drop-path draws in both runs
        out = model(x, ids, task_ids=torch.tensor([1, 2]))
        (out.pooled.pow(2).sum() + out.aux_loss).backward()
        assert len(calls) == (2 if ckpt else 1)  # recomputed in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_first_layers_is_the_same_network_stopped_early():
    """A head reading layer k gets exactly the tokens the full backbone had after its k-th layer (through the final
    norm), from a backbone that no longer holds the layers above: every parameter still gets a gradient."""
    import copy

    model = _model(n_layers=3)
    x, ids = _batch()
    task = torch.tensor([1, 2])
    for k in (1, 2):
        ref = copy.deepcopy(model)
        ref.blocks, ref.moes = ref.blocks[:k], ref.moes[:k]  # the full network stopped after layer k
        cut = model.first_layers(k)
        assert cut.config.n_layers == k and len(cut.blocks) == len(cut.moes) == k and not cut.training
        assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in model.parameters())
        torch.testing.assert_close(cut(x, ids, task_ids=task).tokens, ref(x, ids, task_ids=task).tokens)
        cut.train()
        out = cut(x, ids, task_ids=task)
        (out.pooled.sum() + out.aux_loss).backward()
        assert [n for n, p in cut.named_parameters() if p.grad is None] == []
    assert model.config.n_layers == 3 and len(model.blocks) == 3  # the source is untouched
    assert model.first_layers(3) is model
    for bad in (0, 4, 1.0, True):
        with pytest.raises(ValueError, match=r"n_layers must be an integer in 1\.\.3"):
            model.first_layers(bad)
