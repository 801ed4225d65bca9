"""Head positions of the channel vocabulary, written once into ``foundation/channel_positions.json``.

The backbone's position-based channel embedding (``EEGMambaConfig.channel_embed = "position"``) needs
3-D electrode coordinates for every vocabulary id, but ``foundation/`` imports neither MNE nor ``shards``.
So this build step reads MNE's ``standard_1005`` montage (head coordinates, metres) and writes a small
table keyed by vocabulary id, which ``foundation.channel_positions`` loads as data::

    python -m shards.position_table                 # rewrite foundation/channel_positions.json
    python -m shards.position_table --check         # exit 1 if the file is stale (tests run this)

A bipolar derivation ("F7-T7") sits at the midpoint of its two electrodes and is flagged as a derivation;
names the montage lacks (the position-less "EEG", O9/O10, CB1/CB2, T1/T2, SP1/SP2) are left out and get
the model's learned unknown-position token. Re-run after appending names to the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from shards.vocabulary import CHANNELS

OUT = Path(__file__).resolve().parents[1] / "foundation" / "channel_positions.json"
MONTAGE = "standard_1005"


def montage_positions() -> dict[str, np.ndarray]:
    """Upper-cased electrode name -> head coordinates in metres, from MNE's standard_1005 montage."""
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the name is deprecated in favour of colin27_1005
        montage = mne.channels.make_standard_montage(MONTAGE)
    return {name.upper(): np.asarray(xyz, dtype=float) for name, xyz in montage.get_positions()["ch_pos"].items()}


def table() -> dict:
    """The JSON document: ``{"montage", "units", "channels": [[id, name, x, y, z, derivation], ...]}``."""
    pos = montage_positions()
    rows = []
    for cid, name in enumerate(CHANNELS):
        parts = name.split("-")
        if not all(p in pos for p in parts):
            continue
        xyz = np.mean([pos[p] for p in parts], axis=0)
        rows.append([cid, name, *[round(float(v), 6) for v in xyz], int(len(parts) > 1)])
    return {"montage": MONTAGE, "units": "m", "vocab_size": len(CHANNELS), "channels": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards.position_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = json.dumps(table(), indent=None, separators=(",", ":")) + "\n"
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m shards.position_table", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(table()['channels'])} of {len(CHANNELS)} vocabulary ids have a position)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
