"""Model cards (``README.md`` beside the weights), generated from a run's own files.

``export_card`` describes what every pretraining run exports (``{out_dir}/model``): what the model is, the
input contract it reads (``contract.json``) and how it was trained (objective, steps, data, optimiser). The
release card (``pretrain.release.model_card``) adds data licences and downstream results to the same parts.
Nothing in a card is typed by hand, so a card cannot drift from the weights it sits beside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation.contract import InputContract
from foundation.model import EEGMambaConfig

__all__ = ["CARD_NAME", "backbone_summary", "contract_table", "export_card", "filters", "fmt", "yaml_list"]

CARD_NAME = "README.md"


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


def yaml_list(items: Sequence[str]) -> str:
    return "\n".join(f"- {json.dumps(str(i))}" for i in items) or "[]"


def filters(pre: Mapping[str, Any] | None) -> str:
    """"0.1-75 Hz, notch 50 Hz" from a preprocessing record (``l_freq``, ``h_freq``, ``notch``)."""
    if not pre:
        return "unknown"
    band = f"{fmt(pre.get('l_freq'))}-{fmt(pre.get('h_freq'))} Hz"
    return band + (f", notch {pre['notch']:g} Hz" if pre.get("notch") else "")


def backbone_summary(config: EEGMambaConfig, n_params: int) -> str:
    """One sentence: the architecture and its size."""
    return (f"An EEGMamba backbone (bidirectional Mamba blocks + task-aware mixture of experts, {n_params / 1e6:.2f} M "
            f"parameters, adapter `{config.adapter}`, d_model {config.d_model}, {config.n_layers} layers, "
            f"{config.n_experts} experts top-{config.top_k})")


def contract_table(contract: InputContract, *, notch_per_corpus: bool = False) -> list[str]:
    """The input contract as Markdown table lines (``notch_per_corpus``: the notch is listed per corpus below)."""
    if notch_per_corpus:
        band = filters({"l_freq": contract.l_freq, "h_freq": contract.h_freq}) + " (notch: per corpus, below)"
    else:
        band = filters({"l_freq": contract.l_freq, "h_freq": contract.h_freq, "notch": contract.notch})
    return [
        "| field | value |",
        "|---|---|",
        f"| sampling rate | {contract.sfreq:g} Hz |",
        f"| units | {contract.units} (µV / 100) |",
        f"| filters | {band} |",
        f"| patch | {contract.patch_samples} samples ({contract.patch_s:g} s) |",
        f"| pretraining crop | {fmt(contract.window_s)} s |",
        f"| channel vocabulary | {contract.vocabulary_size} names (append-only `shards.vocabulary`) |",
        f"| channels seen in pretraining | {len(contract.channels)}: {', '.join(contract.channels) or 'unknown'} |",
    ]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def export_card(model_dir: str | Path, contract: InputContract, *, what: str, objective: str,
                config: Mapping[str, Any], final_loss: float | None = None, load: str = "",
                selected_step: int | None = None) -> str:
    """The card of a run's export: front matter, what it is, input contract, training, use and limits.

    Args:
        model_dir: the export folder (its ``config.json`` is read for nothing; the card is written there).
        contract: the run's input contract. what: the opening sentence (architecture and size).
        objective: the objective's name. config: the whole run config as a dict (``data``, ``optim``,
            ``train`` sections). final_loss: the last logged loss. load: Python lines that load the model.
        selected_step: the step whose weights were exported (validation probe), None = the last.
    """
    optim, data, train = (config.get(k, {}) for k in ("optim", "data", "train"))
    corpora = "\n".join(
        f"| {c.get('name')} | {fmt(c.get('hours'))} | {c.get('shards', '')} | {fmt(c.get('weight'))} | "
        f"{filters(c.get('preprocess'))} |" for c in contract.corpora) or "| – | – | – | – | – |"
    lines = [
        "---",
        "library_name: eegfm",
        "pipeline_tag: feature-extraction",
        "tags:",
        yaml_list(["eeg", "mamba", "self-supervised", objective]),
        "---",
        "",
        f"# {Path(model_dir).resolve().parent.name}/{Path(model_dir).name}",
        "",
        f"{what}, trained self-supervised with the `{objective}` objective for {contract.steps} steps on "
        f"{contract.data_hours:g} h of EEG. Exported by the eegfm suite's pretraining run; this card is generated "
        "from the run's files.",
        "",
        "## Input contract (`contract.json`)",
        "",
        *contract_table(contract),
        "",
        "`finetune/run.py` and `python -m finetune.predict` check inputs against it: other sampling rates, units "
        "and channel spellings are converted with a notice; a montage with none of these channels is refused.",
        "",
        "## Training",
        "",
        "| corpus | hours | shards | weight | filters |",
        "|---|---|---|---|---|",
        corpora,
        "",
        f"- objective `{objective}`, {contract.steps} optimiser steps, seed {train.get('seed', '?')}"
        + (f", final loss {final_loss:.4f}" if final_loss is not None else ""),
        f"- AdamW lr {optim.get('lr')} -> {optim.get('min_lr')}, warm-up {optim.get('warmup_steps')} steps, weight decay "
        f"{optim.get('weight_decay')}, batch {data.get('batch_size')} x {fmt(data.get('crop_s'))} s crops per process"
        + (f" (a window holding {' / '.join(fmt(c) for c in data['longer_crops_s'])} s is cropped to the longest it "
           "holds)" if data.get("longer_crops_s") else "") + ", "
        f"mixed precision {train.get('mixed_precision', '?')}",
        *([f"- exported weights: step {selected_step} of {contract.steps}, selected by the validation probe (the "
           "latest step within `probe.tolerance` standard errors of its best score; `probe.json` holds every probe)"]
          if selected_step is not None else []),
        "- the whole configuration: `pretraining.json` / `../run_config.json` beside this folder",
        "",
        "## Use and limits",
        "",
        "```python",
        load.strip(),
        "```",
        "",
        "- A starting point for finetuning (`accelerate launch finetune/run.py --recipe RECIPE --checkpoint "
        f"{model_dir} --data SHARDS`) and for research on EEG representations; not for diagnosis or any "
        "clinical decision.",
        "- Not a release: the terms of the training data are not checked here. `python -m pretrain.release` writes a "
        "card with each data set's licence and the downstream results, and refuses data whose terms forbid it.",
        "",
    ]
    return "\n".join(lines)
