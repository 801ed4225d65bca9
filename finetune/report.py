"""Run report: ``report.json``, ``report.md`` (a Markdown table) and one confusion-matrix PNG per task.

``write_report(out_dir, results)`` takes, per task, the metrics of each evaluated split (from
:func:`finetune.metrics.classification_metrics`) plus the class names, and writes

- ``report.json``: everything, NaN as ``null``;
- ``report.md``: one row per (task, split) with balanced accuracy, kappa, weighted F1, accuracy and,
  for binary tasks, AUROC / AUC-PR, then the run settings;
- ``confusion_<task>_<split>.png``: row-normalised confusion matrix with counts (matplotlib, Agg);
- figures the run drew (``learning_curves.png``, :mod:`finetune.curves`) are linked from ``report.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["write_report", "plot_confusion", "json_safe", "COLUMNS"]

COLUMNS = ("balanced_accuracy", "cohen_kappa", "weighted_f1", "accuracy", "auroc", "auc_pr", "n")


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (colour) with raw counts (text); rows = true class."""
    cm = np.asarray(matrix, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.8 * k), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_report(out_dir: str | Path, results: Mapping[str, Mapping[str, Any]], *, run: Mapping[str, Any] | None = None,
                 figures: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """Write the report files into ``out_dir``.

    Args:
        results: task -> ``{"classes": [...], "splits": {split: metrics dict}, ...}`` (other keys such as
            ``split`` descriptions or ``best_epoch`` go to the JSON as they are).
        run: settings and provenance (checkpoint, recipe hyper-parameters, timing) for the JSON and
            the Markdown footer.
        figures: title -> image already written in ``out_dir`` (the learning curves), shown in ``report.md``.
    Returns:
        name -> written path (``report.json``, ``report.md``, ``confusion_<task>_<split>``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    lines = ["# Finetuning report", "", "| task | split | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for task, res in results.items():
        classes = list(res["classes"])
        for split, metrics in res["splits"].items():
            lines.append(f"| {task} | {split} | " + " | ".join(_fmt(metrics.get(c)) for c in COLUMNS) + " |")
            if "confusion_matrix" in metrics:
                name = f"confusion_{task}_{split}"
                written[name] = plot_confusion(metrics["confusion_matrix"], classes, out / f"{name}.png", title=f"{task} ({split})")
    lines.append("")
    for task, res in results.items():
        lines.append(f"- **{task}**: classes {', '.join(res['classes'])}; chance balanced accuracy {1 / len(res['classes']):.3f}")
        if "split" in res:
            sp = res["split"]
            lines.append(f"  split by {sp.get('group_key')} (fold {sp.get('fold')} of {sp.get('n_folds')}); windows {sp.get('n_windows')}")
        if "best_epoch" in res:
            lines.append(f"  best epoch {res['best_epoch']}" + (" (the probe: no finetuning epoch beat it on validation by the probe margin)"
                                                                 if res["best_epoch"] == -1 else ""))
        if res.get("threshold") is not None:
            lines.append(f"  decision threshold on p({classes[1]}) = {res['threshold']:.4f} (chosen on validation)")
        for split, metrics in res["splits"].items():
            if metrics.get("constant_predictor"):
                lines.append(f"  **{split}: constant predictor** ({metrics.get('predicted_classes')} predicted class(es), "
                             f"probability spread {_fmt(metrics.get('proba_spread'))}): its scores say nothing about the input")
    for title, image in (figures or {}).items():
        lines += ["", f"## {title[:1].upper()}{title[1:]}", "", f"![{title}]({Path(image).name})"]
    if run and run.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in run["warnings"]]
    if run:
        lines += ["", "## Run", ""] + [f"- {k}: `{json.dumps(json_safe(v), default=str)}`" for k, v in run.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written["report.md"] = out / "report.md"
    payload = {"results": results, "run": dict(run or {})}
    (out / "report.json").write_text(json.dumps(json_safe(payload), indent=2, allow_nan=False, default=str))
    written["report.json"] = out / "report.json"
    return written
