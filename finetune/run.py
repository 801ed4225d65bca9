"""Finetune a pretrained (or fresh) EEGMamba on one or several downstream recipes.

Usage::

    accelerate launch finetune/run.py --recipe sleep --checkpoint runs/pretrain/model --data data/shards/dreams
    accelerate launch finetune/run.py --recipe sleep --checkpoint none --data data/shards/dreams   # from scratch
    accelerate launch finetune/run.py --recipe seizure,sleep --checkpoint CKPT --data data/shards/synth  # multi-task
    python finetune/run.py --config my_run.toml --epochs 20 --mode linear_probe

Every key of :class:`finetune.config.FinetuneConfig` can be set in a TOML ``--config`` file and/or as
``--key value`` (CLI wins); unknown keys are errors. ``--help`` lists them with their defaults.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from finetune.config import FinetuneConfig
from finetune.train import finetune
from runtime.cli_errors import run_cli
from runtime.configfile import parse_cli
from runtime.engine import NonFiniteLossError

PROG = "finetune/run.py"
DESCRIPTION = (
    "Finetune EEGMamba on seizure | sleep | emotion | motor_imagery (comma-separated for multi-task). "
    "Required: --recipe, --checkpoint DIR|none, --data SHARDS (or [[tasks]] in --config)."
)


LIST_KEYS = ("classes", "channels", "extra_tasks")


def comma_lists(argv: Sequence[str]) -> list[str]:
    """Let list-valued keys be written ``--classes left_hand,right_hand`` as well as TOML ``'["a", "b"]'``."""
    out = list(argv)
    for i, arg in enumerate(out):
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key.replace("-", "_") not in LIST_KEYS:
            continue
        if not eq and i + 1 < len(out):
            j, value = i + 1, out[i + 1]
        elif eq:
            j = i
        else:
            continue
        if not value.lstrip().startswith("["):
            items = ", ".join(json.dumps(v.strip()) for v in value.split(",") if v.strip())
            out[j] = f"[{items}]" if j != i else f"--{key}=[{items}]"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 done, 2 a bad config / data / checkpoint (one line naming it), 3 the NaN/inf guard stopped the run."""
    argv = comma_lists(sys.argv[1:] if argv is None else argv)
    return run_cli(PROG, lambda: _main(argv), debug="--debug" in argv, exit_codes={NonFiniteLossError: 3})


def _main(argv: list[str]) -> int:
    config, _ = parse_cli(FinetuneConfig, argv, prog=PROG, description=DESCRIPTION,
                          extra_flags={"debug": "show the traceback of an error (or set EEGFM_DEBUG=1)"})
    result = finetune(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        summary = {
            task: {side: {k: v for k, v in m.items() if k in ("balanced_accuracy", "cohen_kappa", "weighted_f1", "auroc", "n")}
                   for side, m in res["splits"].items()}
            for task, res in result["results"].items()
        }
        print(json.dumps({"out": result["out"], "best_epoch": result["best_epoch"], "metrics": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
