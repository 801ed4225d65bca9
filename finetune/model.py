"""A backbone with one classification head per task, and its checkpoint folder.

Folder layout (``save_pretrained``-style, no pickle anywhere)::

    model/config.json         {"format": "eegfm-finetuned/1", "backbone": EEGMambaConfig fields,
                               "heads": {task: {n_classes, pool, dropout, task_id, classes, norm, channels,
                               threshold, feature_norm, gain}}, "mode": ...}
    model/model.safetensors   backbone.* and heads.<task>.* tensors
    model/recipe.json         per task: the resolved recipe, the window length and the shards'
                              preprocessing parameters (what finetune.predict needs to label new files)
    model/metrics.json        validation / test metrics of the saved (best) epoch

``load_backbone`` builds the backbone a run starts from: a pretrained ``EEGMamba.save_pretrained``
folder (or a finetuned folder, whose backbone is reused), or a fresh one with the same architecture
when ``checkpoint`` is ``None``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from finetune.heads import ClassificationHead, set_mode
from foundation.checkpoint import (check_config_fits_weights, check_finite_weights, config_from_checkpoint,
                                   resolve_checkpoint, runtime_fields, stored_config)
from foundation.model import CheckpointError, EEGMamba, EEGMambaConfig, load_backbone_weights, read_config
from foundation.readout import read_depth as foundation_read_depth
from runtime.atomic import atomic_save, atomic_write_text, refuse_link
from shards.vocabulary import channel_ids

__all__ = ["TaskModel", "load_backbone", "read_depth", "reading_layer", "FORMAT", "FEATURE_NORMS", "CheckpointError"]

FORMAT = "eegfm-finetuned/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# What a head's feature standardisation uses: the training split's statistics (fixed buffers), or each subject's
# own frozen features (a linear probe only: finetuning moves the features, so per-subject statistics would go stale).
FEATURE_NORMS = ("training", "subject")


class TaskModel(nn.Module):
    """``EEGMamba`` + ``heads[task]``: ``(x, channel_ids, channel_mask, task) -> (logits, aux_loss)``.

    Args:
        backbone: the EEGMamba backbone.
        heads: task name -> ``dict(n_classes, task_id, classes)`` (plus optional ``pool``/``dropout``/``norm``/
            ``channels``/``gain``, see :class:`~finetune.heads.ClassificationHead`).
        pool, dropout: head defaults. mode: "finetune" or "linear_probe" (frozen backbone in eval mode).
        inherit_task_rows: start unused task rows from the used ones (False when the weights are loaded next).
    """

    def __init__(
        self,
        backbone: EEGMamba,
        heads: Mapping[str, Mapping[str, Any]],
        *,
        pool: str = "cls",
        dropout: float = 0.0,
        mode: str = "finetune",
        inherit_task_rows: bool = True,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("TaskModel needs at least one head")
        self.backbone = backbone
        self.head_specs: dict[str, dict[str, Any]] = {}
        self.heads = nn.ModuleDict()
        for name, spec in heads.items():
            spec = {"pool": pool, "dropout": dropout, "norm": "layer", "channels": [], "threshold": None,
                    "feature_norm": "training", "gain": False, **dict(spec)}
            if spec["feature_norm"] not in FEATURE_NORMS:
                raise ValueError(f"head {name!r}: feature_norm must be one of {FEATURE_NORMS}, got {spec['feature_norm']!r}")
            if spec["feature_norm"] == "subject" and (mode != "linear_probe" or spec["norm"] != "standard"):
                raise ValueError(f"head {name!r}: feature_norm='subject' needs mode='linear_probe' and norm='standard'")
            classes = list(spec.get("classes") or [])
            if classes and len(classes) != int(spec["n_classes"]):
                raise ValueError(f"head {name!r}: {len(classes)} class names for n_classes={spec['n_classes']}")
            task_id = int(spec["task_id"])
            if not 0 <= task_id < backbone.config.n_tasks:
                raise ValueError(f"head {name!r}: task_id {task_id} outside the backbone's n_tasks={backbone.config.n_tasks}")
            channels = [str(c) for c in spec["channels"] or []]
            if spec["pool"] == "channels" and backbone.config.adapter != "channel_patch":
                raise ValueError(f"head {name!r}: pool='channels' reads per-channel tokens (needs adapter='channel_patch')")
            self.head_specs[name] = {
                "n_classes": int(spec["n_classes"]), "task_id": task_id, "pool": spec["pool"],
                "dropout": float(spec["dropout"]), "classes": classes, "norm": spec["norm"], "channels": channels,
                "threshold": None if spec["threshold"] is None else float(spec["threshold"]),
                "feature_norm": spec["feature_norm"], "gain": bool(spec["gain"]),
            }
            self.heads[name] = ClassificationHead(
                backbone.config.d_model, int(spec["n_classes"]), spec["pool"], float(spec["dropout"]),
                channel_ids=channel_ids(channels) if channels else (), norm=spec["norm"], gain=bool(spec["gain"]))
        self.mode = mode
        set_mode(self.backbone, mode)
        # Rows the backbone never trained (e.g. a task-0-only pretraining) start from the trained ones, so
        # the pretrained routing survives the switch of task id (a no-op for task_embed="legacy").
        # (Not when loading a finetuned folder, whose weights carry its rows: inherit_task_rows=False.)
        if inherit_task_rows:
            backbone.inherit_task_rows(sorted({s["task_id"] for s in self.head_specs.values()}))

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        if self.mode == "linear_probe":
            # A frozen backbone must behave as at inference: no dropout/drop path, no MoE gate noise.
            self.backbone.eval()
        return self

    def forward(
        self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor | None, task: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [b, c, t]``, ``channel_ids [b, c]``, ``channel_mask [b, c]`` -> ``logits [b, n_classes(task)]``, aux loss."""
        out = self._encode(x, channel_ids, channel_mask, task)
        return self.heads[task](out, channel_ids, channel_mask, x), out.aux_loss

    def features(self, x: torch.Tensor, channel_ids: torch.Tensor, channel_mask: torch.Tensor | None,
                 task: str) -> torch.Tensor:
        """What ``task``'s head reads, before its normalisation: ``[b, in_features]``."""
        out = self._encode(x, channel_ids, channel_mask, task)
        return self.heads[task].features(out, channel_ids, channel_mask, x)

    def head_logits(self, features: torch.Tensor, task: str) -> torch.Tensor:
        """``task``'s head on features already read (``features [b, in_features]``): ``logits [b, n_classes]``.

        How a ``feature_norm="subject"`` head is applied: its input is the frozen features standardised by their
        own subject's (at prediction: recording's) statistics (``finetune.align.standardize_groups``), which no
        single window carries, so the caller reads the features of the whole group first (``features``)."""
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r}; this model has heads {self.tasks}")
        head = self.heads[task]
        return head.fc(head.dropout(head.normalize(features)))

    def set_threshold(self, task: str, threshold: float | None) -> None:
        """A binary head's decision threshold on the positive class's probability (None = argmax)."""
        self.head_specs[task]["threshold"] = None if threshold is None else float(threshold)

    def _encode(self, x, channel_ids, channel_mask, task):
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r}; this model has heads {self.tasks}")
        task_ids = torch.full((x.shape[0],), self.head_specs[task]["task_id"], dtype=torch.long, device=x.device)
        if self.mode == "linear_probe":
            with torch.no_grad():
                return self.backbone(x, channel_ids, channel_mask, task_ids)
        return self.backbone(x, channel_ids, channel_mask, task_ids)

    # ---- checkpoint folder ----------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "backbone": stored_config(self.backbone.config),
            "heads": self.head_specs,
            "mode": self.mode,
        }

    def save_pretrained(self, folder: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write config.json + model.safetensors (+ ``extra`` name -> JSON object, e.g. recipe/metrics)."""
        folder = Path(folder)
        refuse_link(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config_dict(), indent=2))
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_save(lambda tmp: safetensors.torch.save_file(state, tmp, metadata={"format": "pt", "eegfm": FORMAT}),
                    folder / WEIGHTS_NAME)
        for name, obj in (extra or {}).items():
            atomic_write_text(folder / f"{name}.json", json.dumps(obj, indent=2, allow_nan=False, default=str))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, map_location: str = "cpu") -> "TaskModel":
        """Load a folder written by :meth:`save_pretrained` (eval mode).

        Raises:
            FileNotFoundError: the folder or one of its files is missing.
            CheckpointError: not a finetuned-model folder, or weights that do not match its config.
        """
        folder = Path(folder)
        cfg = read_finetuned_config(folder)
        backbone_cfg = _backbone_config(cfg["backbone"], folder / CONFIG_NAME)

        def build() -> "TaskModel":
            try:
                return cls(EEGMamba(backbone_cfg), cfg["heads"], mode=cfg.get("mode", "finetune"), inherit_task_rows=False)
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                raise CheckpointError(f"{folder / CONFIG_NAME}: heads: {err}") from err

        check_config_fits_weights(build, folder / CONFIG_NAME, folder / WEIGHTS_NAME)
        model = build()
        load_backbone_weights(model, folder / WEIGHTS_NAME, strict=True)
        return model.to(map_location).eval()


def read_finetuned_config(folder: Path) -> dict[str, Any]:
    """``{folder}/config.json`` of a finetuned model; CheckpointError naming the file otherwise."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist (expected config.json + model.safetensors from finetune/run.py)")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"model folder {folder} has no {CONFIG_NAME}")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a finetuned model (format {cfg.get('format') if isinstance(cfg, dict) else None!r}, "
            f"expected {FORMAT!r}); a pretrained backbone folder goes to --checkpoint, not --model"
        )
    for key in ("backbone", "heads"):
        if key not in cfg:
            raise CheckpointError(f"{file} lacks the '{key}' entry")
    return cfg


def _backbone_config(data: Mapping[str, Any], where: Path) -> EEGMambaConfig:
    from runtime.config_dict import ConfigError

    try:
        return config_from_checkpoint(EEGMambaConfig, dict(data))
    except (ConfigError, ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: backbone config: {err}") from err


def load_backbone(
    checkpoint: str | Path | None,
    *,
    size: str = "tiny",
    model_overrides: Mapping[str, Any] | None = None,
    drop_path: float | None = None,
) -> tuple[EEGMamba, dict[str, Any]]:
    """The backbone a finetuning run starts from, and a description of where it came from.

    Args:
        checkpoint: folder, shipped name or Hub repo id (``foundation.checkpoint.resolve_checkpoint``) of
            ``EEGMamba.save_pretrained`` (or of a finetuned model, whose backbone is
            taken), or None for a freshly initialised backbone (``EEGMambaConfig.from_size(size, **model_overrides)``).
        model_overrides: architecture fields. With a checkpoint, each must equal the checkpoint's value:
            finetuning cannot change the architecture, and silently ignoring the request would be worse.
            Runtime fields (``EEGMambaConfig.RUNTIME_FIELDS``: ``scan_backend``) are applied, never compared.
        drop_path: stochastic depth for finetuning (a regulariser, not architecture: it may differ).

    Raises:
        FileNotFoundError, CheckpointError: a missing/unreadable checkpoint, one whose weights do not
            match its config.json, or whose architecture differs from ``model_overrides`` (named field).
    """
    overrides = dict(model_overrides or {})
    if drop_path is not None:
        overrides.pop("drop_path", None)
    if checkpoint is None:
        cfg = EEGMambaConfig.from_size(size, **overrides)
        if drop_path is not None:
            cfg = dataclasses.replace(cfg, drop_path=drop_path)
        return EEGMamba(cfg), {"checkpoint": None, "size": size, "overrides": overrides}

    try:
        folder = resolve_checkpoint(checkpoint)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; or --checkpoint none to train from scratch") from err
    raw = None
    if (folder / CONFIG_NAME).is_file():
        try:
            raw = json.loads((folder / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON ({err}); expected the config.json "
                                  "written by EEGMamba.save_pretrained or finetune/run.py") from err
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        cfg = _backbone_config(raw["backbone"], folder / CONFIG_NAME)
        prefix_model = "finetuned"
    else:
        cfg = read_config(folder)
        prefix_model = "pretrained"
    runtime = {k: overrides.pop(k) for k in list(overrides) if k in runtime_fields(EEGMambaConfig)}
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise CheckpointError(f"model.{key} is not an EEGMambaConfig field")
        if getattr(cfg, key) != value:
            raise CheckpointError(
                f"checkpoint {folder / CONFIG_NAME} has {key}={getattr(cfg, key)!r} but the finetune config asks for "
                f"model.{key}={value!r}; a checkpoint's architecture cannot change (drop the override, or use --checkpoint none)"
            )
    cfg = dataclasses.replace(cfg, **runtime)  # how this run executes (e.g. scan_backend), never compared
    if drop_path is not None:
        cfg = dataclasses.replace(cfg, drop_path=drop_path)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint folder {folder} has no {WEIGHTS_NAME}")
    prefix = "backbone." if prefix_model == "finetuned" else ""
    check_config_fits_weights(lambda: EEGMamba(cfg), folder / CONFIG_NAME, weights, prefix=prefix)
    backbone = EEGMamba(cfg)
    if prefix_model == "finetuned":
        state = safetensors.torch.load_file(str(weights))
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        check_finite_weights(state, weights)
        _load_state_checked(backbone, state, weights)
    else:
        load_backbone_weights(backbone, weights, strict=True)
    return backbone, {"checkpoint": str(folder.resolve()), "kind": prefix_model, "config": cfg.to_dict()}


def read_depth(read_layer: int | None, n_layers: int, *, finetuned: bool = False) -> int:
    """How many of a backbone's ``n_layers`` layers a head reads through (``FinetuneConfig.read_layer``): the rule
    of :func:`foundation.readout.read_depth` (None = the middle layer), except that None keeps every layer of a
    ``finetuned`` model, whose backbone was cut when it was finetuned.

    Raises:
        ValueError: a layer the backbone does not have, named with its count.
    """
    if read_layer is None and finetuned:
        return n_layers
    return foundation_read_depth(read_layer, n_layers)


def reading_layer(backbone: EEGMamba, read_layer: int | None, provenance: dict[str, Any]) -> EEGMamba:
    """The backbone a head reading ``read_layer`` needs (:func:`read_depth`; the layers above dropped), from one
    ``load_backbone`` returned with its ``provenance``, which records ``layers``: ``{"read", "of"}``."""
    n_layers = backbone.config.n_layers
    depth = read_depth(read_layer, n_layers, finetuned=provenance.get("kind") == "finetuned")
    provenance["layers"] = {"read": depth, "of": n_layers}
    return backbone.first_layers(depth)


def _load_state_checked(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    own = model.state_dict()
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and own[k].shape != state[k].shape]
    missing = sorted(set(own) - set(state))
    if bad or missing:
        raise CheckpointError(f"{file}: backbone weights do not match its config.json ({'; '.join(bad[:5])}; missing {missing[:3]})")
    model.load_state_dict(state, strict=True)
