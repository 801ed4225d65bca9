"""Train the VQ-NSP tokenizer: ``accelerate launch tokenizer/run.py [--config FILE] [--key value ...]``.

A launcher only: it replaces this process with ``python -m pretrain.train_tokenizer`` and the same
arguments and environment (so ``accelerate launch``'s rank variables carry over). Training runs on the
shared engine in ``pretrain``; re-executing instead of importing keeps ``tokenizer/`` a library with no
import of ``pretrain`` (which imports ``tokenizer``). ``--help`` lists every key.
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.execv(sys.executable, [sys.executable, "-m", "pretrain.train_tokenizer", *sys.argv[1:]])
