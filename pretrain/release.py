"""Turn a pretraining run into a publishable checkpoint folder.

Usage::

    python -m pretrain.release RUN_DIR OUT_DIR --datasets datasets.json [--downstream results.json]
                               [--name NAME] [--license apache-2.0]

``RUN_DIR`` is a pretraining run (``{train.out_dir}``, holding ``model/``) or its ``model/`` folder. ``OUT_DIR``
receives ``model.safetensors``, ``config.json``, ``contract.json``, a model card ``README.md`` in the
Hugging Face format, and ``SHA256SUMS`` (``sha256sum -c SHA256SUMS`` verifies the folder). Everything in
the card is generated from the run (its contract and ``pretraining.json``), the data-set file and the
downstream results; nothing is typed by hand.

``OUT_DIR`` must be new, empty, or an earlier release (listed in its ``SHA256SUMS``), whose files are replaced;
the run folder itself, a folder holding it (``.``) or any other non-empty folder is refused and nothing is deleted.

``--datasets`` is a JSON object naming, for every corpus of the run (the names in ``contract.json``), the
data set and its terms::

    {"eegmmidb": {"title": "PhysioNet EEG Motor Movement/Imagery", "license": "ODC-By-1.0",
                  "url": "https://physionet.org/content/eegmmidb/1.0.0/", "citation": "Schalk et al. 2004",
                  "why": "open licence that allows derived works with attribution"}}

A corpus without an entry, or whose licence forbids derivatives or commercial use (``NC`` / ``ND`` terms),
is an error: the weights are a derived work of their training data. ``--downstream`` takes a
``benchmarks/downstream.py`` ``results.json``; its table is rendered into the card. ``release(...,
excluded={name: reason})`` lists the data sets deliberately left out, and why.

Publishing (needs a Hugging Face token; not done by this command)::

    from huggingface_hub import HfApi
    HfApi().create_repo("org/eegmamba-tiny-open", exist_ok=True)
    HfApi().upload_folder(repo_id="org/eegmamba-tiny-open", folder_path="OUT_DIR", commit_message="release")

after which ``EEGMamba.from_pretrained("org/eegmamba-tiny-open@<commit>")`` loads it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from foundation.contract import CONTRACT_NAME, ContractError, InputContract, read_contract
from foundation.model import EEGMamba
from pretrain.card import CARD_NAME, backbone_summary, contract_table, filters, fmt, yaml_list

__all__ = ["ReleaseError", "release", "model_card", "write_checksums", "verify_checksums", "file_sha256", "main"]

SUMS_NAME = "SHA256SUMS"
_RESTRICTED = re.compile(r"(^|[^A-Za-z])(NC|ND)([^A-Za-z]|$)|non-?commercial|no-?deriv", re.IGNORECASE)
METRICS = (("balanced_accuracy", "bal. acc."), ("cohen_kappa", "kappa"), ("weighted_f1", "weighted F1"), ("auroc", "AUROC"))


class ReleaseError(ValueError):
    """A run that cannot be released as asked (the message names the file, corpus or field)."""


def read_json_file(path: str | Path, what: str, kind: type = dict) -> Any:
    """The JSON object in ``path`` (``what`` it is, for the message); ReleaseError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path} does not exist ({what})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReleaseError(f"{path} is not valid JSON ({err}); fix or restore {what}") from None
    if not isinstance(data, kind):
        raise ReleaseError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__} ({what}), "
                           f"got {type(data).__name__}")
    return data


def _model_dir(run_dir: Path) -> Path:
    for folder in (run_dir / "model", run_dir):
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            return folder
    raise ReleaseError(f"{run_dir}: neither it nor {run_dir / 'model'} holds {CONFIG_NAME} + {WEIGHTS_NAME} of a pretraining export")


def _check_datasets(contract: InputContract, datasets: Mapping[str, Mapping[str, Any]], where: str) -> None:
    for corpus in contract.corpora:
        name = corpus["name"]
        info = datasets.get(name)
        if info is None:
            raise ReleaseError(f"{where}: corpus {name!r} of the run has no entry (title, license, url, citation); "
                               f"the card must name the terms of every training set")
        if not isinstance(info, Mapping):
            raise ReleaseError(f"{where}: the data-set entry of corpus {name!r} must be an object "
                               f"{{title, license, url, citation, why}}, got {info!r}")
        missing = [k for k in ("title", "license") if not info.get(k)]
        if missing:
            raise ReleaseError(f"{where}: corpus {name!r} lacks {missing}")
        if _RESTRICTED.search(str(info["license"])):
            raise ReleaseError(
                f"{where}: corpus {name!r} is licensed {info['license']!r} (non-commercial or no-derivatives terms): "
                f"weights trained on it cannot be released openly; pretrain without it"
            )


# Rows of the downstream benchmark kept beside a released checkpoint's own row, as yardsticks.
REFERENCE_ROWS = ("EEGMamba from scratch", "band power + LR")


def downstream_table(results: Mapping[str, Any], name: str | None = None) -> str:
    """Markdown table of a ``benchmarks/downstream.py`` ``results.json`` (mean ± std over seeds).

    With ``name``, and rows whose method names it (the benchmark's "released checkpoint (NAME)" row), the
    table is that checkpoint's rows plus ``REFERENCE_ROWS``: the card describes this checkpoint, not the
    other models the benchmark trained. Otherwise every row.
    """
    tasks = results.get("tasks", {})
    table = results.get("table", {})
    own = name is not None and any(f"({name})" in m for methods in table.values() for m in methods)
    lines = ["| task | method | " + " | ".join(t for _, t in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for task, methods in table.items():
        title = tasks.get(task, {}).get("title", task)
        for method, metrics in methods.items():
            if own and f"({name})" not in method and method not in REFERENCE_ROWS:
                continue
            cells = []
            for key, _ in METRICS:
                m = metrics.get(key)
                cells.append("–" if not m or m.get("mean") is None else f"{m['mean']:.3f} ± {m.get('std') or 0:.3f}")
            lines.append(f"| {title} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(name: str, model_dir: Path, contract: InputContract, datasets: Mapping[str, Mapping[str, Any]],
               *, license: str, downstream: Mapping[str, Any] | None = None, pretraining: Mapping[str, Any] | None = None,
               reproduce: str = "", excluded: Mapping[str, str] | None = None) -> str:
    """The Hugging Face model card (YAML front matter + Markdown), generated from the run's files."""
    config = EEGMamba.read_config(model_dir)
    n_params = EEGMamba(config).num_parameters()
    sets = [datasets[c["name"]] for c in contract.corpora]
    sections = [
        *_card_front_matter(license, contract, [d.get("hub_id") or d["title"] for d in sets]),
        f"# {name}",
        "",
        f"{backbone_summary(config, n_params)} pretrained self-supervised with the `{contract.objective}` "
        f"objective for {contract.steps} steps on {contract.data_hours:g} h of EEG. Made with the eegfm suite; this "
        "card is generated by `python -m pretrain.release`.",
        "",
        "## Input contract (`contract.json`)",
        "",
        *contract_table(contract, notch_per_corpus=True),
        "",
        "`finetune/run.py` and `python -m finetune.predict` check inputs against it: other sampling rates, units "
        "(V/mV) and channel spellings are converted with a notice; a montage with none of these channels is refused.",
        "",
        *_card_training_data(contract, sets, excluded),
        *_card_pretraining(contract, pretraining, reproduce),
        "## Downstream results",
        "",
        (f"From `benchmarks/downstream.py` (`{' '.join(downstream.get('command', []))}`, finished "
         f"{downstream.get('finished', '?')}); test-split metrics, mean ± std over seeds.\n\n{downstream_table(downstream, name)}"
         if downstream else "Not evaluated for this release (pass `--downstream results.json`)."),
        "",
        *_card_use(name, contract),
    ]
    return "\n".join(sections)


def _card_front_matter(license: str, contract: InputContract, dataset_ids: list[str]) -> list[str]:
    return [
        "---",
        f"license: {license}",
        "library_name: eegfm",
        "pipeline_tag: feature-extraction",
        "tags:",
        yaml_list(["eeg", "mamba", "mixture-of-experts", "foundation-model", "self-supervised", contract.objective]),
        "datasets:",
        yaml_list(dataset_ids),
        "---",
        "",
    ]


def _card_training_data(contract: InputContract, sets: list[Mapping[str, Any]],
                        excluded: Mapping[str, str] | None) -> list[str]:
    data_rows = "\n".join(
        f"| {c['name']} | [{d['title']}]({d.get('url', '')}) | {d['license']} | "
        f"{fmt(c.get('hours'))} | {c.get('shards', '')} | {filters(c.get('preprocess'))} | {d.get('why', '')} |"
        for c, d in zip(contract.corpora, sets)
    )
    left_out = "\n".join(f"- {name}: {why}" for name, why in (excluded or {}).items())
    citations = "\n".join(f"- {d['title']}: {d['citation']}" for d in sets if d.get("citation"))
    return [
        "## Training data and licences",
        "",
        "| corpus | data set | licence | hours | shards | filters | why included |",
        "|---|---|---|---|---|---|---|",
        data_rows,
        "",
        *(["Left out:", "", left_out, ""] if left_out else []),
        *(["Cite:", "", citations, ""] if citations else []),
    ]


def _card_pretraining(contract: InputContract, pretraining: Mapping[str, Any] | None, reproduce: str) -> list[str]:
    optim = (pretraining or {}).get("config", {}).get("optim", {})
    return [
        "## Pretraining",
        "",
        f"- objective: `{contract.objective}`; steps: {contract.steps}; data: {contract.data_hours:g} h in "
        f"{len(contract.corpora)} corpora",
        *([f"- optimiser: AdamW lr {optim.get('lr')} -> {optim.get('min_lr')}, warm-up {optim.get('warmup_steps')} "
           f"steps, weight decay {optim.get('weight_decay')}, batch {(pretraining or {}).get('config', {}).get('data', {}).get('batch_size')}"]
          if optim else []),
        *([f"- reproduce: `{reproduce}`"] if reproduce else []),
        "",
    ]


def _card_use(name: str, contract: InputContract) -> list[str]:
    return [
        "## Intended use and limits",
        "",
        "- Intended: a starting point for finetuning EEG classifiers (seizure, sleep, emotion / workload, motor "
        "imagery) with `finetune/run.py --checkpoint <this>` or the braindecode wrapper, and for research on EEG "
        "foundation models.",
        f"- Not for diagnosis or any clinical decision. Pretrained on {contract.data_hours:g} h from "
        f"{len(contract.corpora)} small corpora: its features are weak next to models pretrained on thousands of "
        "hours, and it has not been validated on populations, devices or montages beyond those listed above.",
        "- Channels outside the list above have untrained spatial embeddings; inputs must follow the contract.",
        "",
        "## Use",
        "",
        "```python",
        "from foundation import EEGMamba",
        f'model = EEGMamba.from_pretrained("{name}")   # a shipped name, a local folder, or org/name@revision',
        "```",
        "",
        "```bash",
        f"accelerate launch finetune/run.py --recipe sleep --checkpoint {name} --data data/shards/dreams",
        "```",
        "",
        f"Files: `{WEIGHTS_NAME}`, `{CONFIG_NAME}`, `{CONTRACT_NAME}`, this card; `sha256sum -c {SUMS_NAME}` checks them.",
        "",
    ]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path) -> Path:
    """``SHA256SUMS`` over every other file of ``folder`` (``sha256sum -c`` format, sorted)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != SUMS_NAME)
    path = folder / SUMS_NAME
    path.write_text("".join(f"{file_sha256(p)}  {p.name}\n" for p in files))
    return path


def verify_checksums(folder: Path) -> list[str]:
    """Names of the files whose SHA-256 differs from ``SHA256SUMS`` (or that are missing)."""
    bad = []
    for line in (folder / SUMS_NAME).read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not (folder / name).is_file() or file_sha256(folder / name) != digest:
            bad.append(name)
    return bad


def _check_out_dir(out: Path, run_dir: Path, model_dir: Path) -> None:
    """Refuse an ``OUT_DIR`` whose replacement would delete anything but an earlier release.

    Raises:
        ReleaseError: ``out`` is the run or its model folder, holds either of them (``.``, a parent), or is
            a non-empty folder that is not a release (no ``SHA256SUMS``, or files / folders it does not list).
    """
    target = out.resolve()
    for source in (run_dir.resolve(), model_dir.resolve()):
        if target == source or target in source.parents:
            raise ReleaseError(f"OUT_DIR {out} is or contains the run being released ({source}): replacing it "
                               "would delete the run; choose a new folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise ReleaseError(f"OUT_DIR {out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    sums = out / SUMS_NAME
    listed = {line.partition("  ")[2] for line in sums.read_text().splitlines()} if sums.is_file() else set()
    strangers = [n for n in entries if n != SUMS_NAME and (n not in listed or not (out / n).is_file())]
    if not sums.is_file() or strangers:
        raise ReleaseError(
            f"OUT_DIR {out} is a non-empty folder that is not an earlier release ("
            + (f"no {SUMS_NAME}" if not sums.is_file() else f"{SUMS_NAME} does not list {strangers[:5]}")
            + "); nothing was deleted: choose a new or empty folder, or delete it yourself")


def release(run_dir: str | Path, out_dir: str | Path, datasets: Mapping[str, Mapping[str, Any]], *,
            name: str | None = None, license: str = "apache-2.0", downstream: Mapping[str, Any] | None = None,
            reproduce: str = "", excluded: Mapping[str, str] | None = None) -> Path:
    """Write the publishable folder ``out_dir`` for the pretraining run ``run_dir``; returns ``out_dir``.

    Raises:
        ReleaseError: no export in ``run_dir``, no contract, a corpus with no / a restrictive licence, or an
            ``out_dir`` that is not safe to replace (see :func:`_check_out_dir`; nothing is deleted then).
    """
    model_dir = _model_dir(Path(run_dir))
    contract = read_contract(model_dir, warn=False)
    if contract is None:
        raise ReleaseError(f"{model_dir} has no {CONTRACT_NAME}: re-export it with this suite (pretraining writes it)")
    _check_datasets(contract, datasets, str(model_dir))
    EEGMamba.from_pretrained(model_dir)  # refuse weights that do not load
    out = Path(out_dir)
    _check_out_dir(out, Path(run_dir), model_dir)
    name = name or out.name
    pre_file = model_dir / "pretraining.json"
    pretraining = read_json_file(pre_file, "the pretraining run's record") if pre_file.is_file() else None
    if out.exists():
        for old in out.iterdir():  # _check_out_dir: only the files of an earlier release
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for file in (WEIGHTS_NAME, CONFIG_NAME, CONTRACT_NAME):
        shutil.copyfile(model_dir / file, out / file)
    card = model_card(name, model_dir, contract, datasets, license=license, downstream=downstream,
                      pretraining=pretraining, reproduce=reproduce, excluded=excluded)
    (out / CARD_NAME).write_text(card)
    write_checksums(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="pretraining run folder (or its model/ folder)")
    parser.add_argument("out_dir", help="publishable folder to write (new, empty, or an earlier release, which is replaced)")
    parser.add_argument("--datasets", required=True, help="JSON file: corpus -> {title, license, url, citation, why}")
    parser.add_argument("--downstream", help="benchmarks/downstream.py results.json for this checkpoint")
    parser.add_argument("--name", help="checkpoint name in the card (default: OUT_DIR's name)")
    parser.add_argument("--license", default="apache-2.0", help="licence of the released weights (Hub identifier)")
    args = parser.parse_args(argv)
    try:
        datasets = read_json_file(args.datasets, "--datasets: corpus -> {title, license, url, citation, why}")
        downstream = read_json_file(args.downstream, "--downstream: benchmarks/downstream.py results.json") \
            if args.downstream else None
        out = release(args.run_dir, args.out_dir, datasets, name=args.name, license=args.license, downstream=downstream)
    except (ReleaseError, FileNotFoundError, CheckpointError, ContractError, OSError) as err:
        print(f"python -m pretrain.release: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"released {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    print(f"publish: huggingface_hub.HfApi().upload_folder(repo_id='org/{out.name}', folder_path='{out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
