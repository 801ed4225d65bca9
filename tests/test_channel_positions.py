"""Position-based channel embedding: the 10-05 table, neighbours, unknown positions, unseen montages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from foundation.channel_positions import PositionChannelEmbed, position_table
from foundation.model import EEGMamba, EEGMambaConfig
from shards.vocabulary import CHANNELS, channel_id

pytestmark = pytest.mark.usefixtures("one_thread")

TEN_TWENTY = ["FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "T7", "C3", "CZ", "C4", "T8", "P7", "P3", "PZ", "P4", "P8", "O1", "O2"]


def test_the_table_in_the_repo_is_what_mne_gives_today():
    from shards.position_table import main

    assert main(["--check"]) == 0


def test_table_positions_and_unknowns():
    positions, known = position_table(512)
    assert not known[0] and not known[channel_id("EEG")] and not known[channel_id("SP1")] and not known[400:].any()
    assert int(known.sum()) == 366
    cz, c3 = positions[channel_id("CZ")], positions[channel_id("C3")]
    assert abs(float(cz[0])) < 0.005 and float(c3[0]) < -0.04  # Cz on the midline, C3 on the left
    f7, t7, pair = (positions[channel_id(n)] for n in ("F7", "T7", "F7-T7"))
    torch.testing.assert_close(pair[:3], (f7[:3] + t7[:3]) / 2, atol=1e-6, rtol=0)
    assert float(pair[3]) == 1.0 and float(f7[3]) == 0.0


def test_nearby_electrodes_get_nearby_embeddings_and_unknowns_share_a_token():
    torch.manual_seed(0)
    embed = PositionChannelEmbed(512, 32)
    with torch.no_grad():
        table = embed.table()
    positions, known = position_table(512)
    ids = known.nonzero().flatten()
    ids = ids[positions[ids, 3] == 0]  # electrodes, not derivations
    d_pos = torch.cdist(positions[ids, :3], positions[ids, :3]).flatten()
    d_emb = torch.cdist(table[ids], table[ids]).flatten()
    rank = lambda v: v.argsort().argsort().float()  # noqa: E731
    assert float(torch.corrcoef(torch.stack([rank(d_pos), rank(d_emb)]))[0, 1]) > 0.5  # 0.64 measured; id table ~0
    torch.testing.assert_close(table[channel_id("EEG")], table[channel_id("O9")])
    torch.testing.assert_close(table[channel_id("EEG")], embed.unknown.detach())


def test_an_unseen_montage_inherits_what_its_neighbours_learned():
    """Fit a position-dependent target (left-right coordinate) on the 19 10-20 channels only; the position
    embedding predicts it on 10-10 channels it never trained on, an id table cannot."""
    positions, known = position_table(512)
    train = torch.tensor([channel_id(n) for n in TEN_TWENTY])
    test = torch.tensor([channel_id(n) for n in ("FC3", "FC4", "CP3", "CP4", "C1", "C2", "F1", "F2", "P1", "P2", "AF3", "PO4")])
    target = positions[:, 0] / 0.07  # left (-1) .. right (+1)

    def fit(module):
        torch.manual_seed(0)
        head = torch.nn.Linear(32, 1)
        opt = torch.optim.Adam([*module.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(300):
            loss = (head(module(train)).squeeze(-1) - target[train]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((head(module(test)).squeeze(-1) - target[test]).pow(2).mean()), float(loss)

    torch.manual_seed(0)
    pos_err, pos_fit = fit(PositionChannelEmbed(512, 32))
    torch.manual_seed(0)
    id_err, id_fit = fit(torch.nn.Embedding(512, 32))
    assert pos_fit < 0.01 and id_fit < 0.01
    assert pos_err < 0.05 and id_err > 10 * pos_err, (pos_err, id_err)


def test_backbone_with_position_embedding_runs_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = EEGMamba(EEGMambaConfig.from_size("tiny", channel_embed="position")).eval()
    x = torch.randn(2, 3, 400)
    ids = torch.tensor([[channel_id("C3"), channel_id("C4"), channel_id("EEG")]] * 2)
    out = model(x, ids)
    model.save_pretrained(tmp_path / "m")
    again = EEGMamba.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again(x, ids).pooled, out.pooled)
    assert not any("features" in k for k in model.state_dict())  # the table is data, not weights
    with pytest.raises(ValueError, match="channel_embed"):
        EEGMambaConfig.from_size("tiny", channel_embed="position", adapter="st_adaptive")


def test_foundation_imports_neither_mne_nor_shards():
    code = "import sys, foundation.model, foundation.channel_positions as p; p.position_table(8); " \
           "bad = [m for m in ('mne', 'shards') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert len(CHANNELS) >= 376
