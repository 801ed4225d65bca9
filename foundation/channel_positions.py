"""Electrode positions of the channel vocabulary and the position-based channel embedding.

``channel_positions.json`` (next to this file, written by ``python -m shards.position_table`` from MNE's
standard_1005 montage) holds ``[id, name, x, y, z, derivation]`` rows keyed by vocabulary id; this module
reads it as plain data, so ``foundation`` needs neither MNE nor ``shards`` at run time.

:class:`PositionChannelEmbed` maps a channel id to ``MLP(features(x, y, z, derivation))``: coordinates in
units of 10 cm (about the head radius) with sine/cosine features of periods 80, 40 and 20 cm, so nearby
electrodes get nearby embeddings and a montage never seen in training lands next to its neighbours.
Ids without a position (the position-less "EEG", O9/O10, CB1/CB2, T1/T2, SP1/SP2, ids past the table)
share one learned "unknown position" token. ``[b c] long -> [b c d]``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

__all__ = ["PositionChannelEmbed", "position_table", "TABLE_FILE"]

TABLE_FILE = Path(__file__).with_name("channel_positions.json")
_SCALE_M = 0.1
_FREQS = (0.25, 0.5, 1.0)


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple, ...]:
    if not TABLE_FILE.is_file():
        raise FileNotFoundError(f"{TABLE_FILE} is missing: regenerate it with python -m shards.position_table")
    try:
        data = json.loads(TABLE_FILE.read_text())
        return tuple(tuple(r) for r in data["channels"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{TABLE_FILE} is not a channel-position table ({err}); regenerate it with python -m shards.position_table") from err


def position_table(n_ids: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions [n_ids 4]: x, y, z in metres and the derivation flag, known [n_ids] bool)``."""
    positions = torch.zeros(n_ids, 4)
    known = torch.zeros(n_ids, dtype=torch.bool)
    for cid, _name, x, y, z, derivation in _rows():
        if cid < n_ids:
            positions[cid] = torch.tensor([x, y, z, float(derivation)])
            known[cid] = True
    return positions, known


def _features(positions: torch.Tensor) -> torch.Tensor:
    """``[n 4] -> [n 3 + 1 + 2 * 3 * len(_FREQS)]``: scaled xyz, derivation flag, sines and cosines."""
    xyz = positions[:, :3] / _SCALE_M
    angles = torch.cat([xyz * (math.pi * f) for f in _FREQS], dim=-1)
    return torch.cat([xyz, positions[:, 3:], angles.sin(), angles.cos()], dim=-1)


class PositionChannelEmbed(nn.Module):
    """Channel id -> embedding from its electrode position (learned unknown token where there is none)."""

    def __init__(self, n_channel_ids: int, d_model: int) -> None:
        super().__init__()
        positions, known = position_table(n_channel_ids)
        # Data, not weights: rebuilt from the table at construction, so checkpoints do not carry it.
        self.register_buffer("features", _features(positions), persistent=False)
        self.register_buffer("known", known, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(self.features.shape[1], d_model), nn.GELU(), nn.Linear(d_model, d_model))
        nn.init.normal_(self.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.mlp[2].bias)
        self.unknown = nn.Parameter(torch.zeros(d_model))
        nn.init.trunc_normal_(self.unknown, std=0.02)

    def table(self) -> torch.Tensor:
        """``[n_channel_ids d]``: the embedding of every id."""
        emb = self.mlp(self.features)
        return torch.where(self.known[:, None], emb, self.unknown.to(emb.dtype))

    def forward(self, channel_ids: torch.Tensor) -> torch.Tensor:
        return self.table()[channel_ids]
