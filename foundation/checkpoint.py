"""Checkpoint folders: ``config.json`` + ``model.safetensors``, strict, never a pickle.

Every model of the suite (the :class:`~foundation.model.EEGMamba` backbone, the VQ-NSP tokenizer) is a
plain ``nn.Module`` built from one frozen config dataclass. :class:`StrictHubMixin` gives them
``save_pretrained(dir)`` / ``from_pretrained(dir)`` through ``huggingface_hub.PyTorchModelHubMixin``, with
the mixin's loader replaced: it defaults to ``strict=False`` (silently keeping random weights for missing
keys), prints to stdout, and may fall back to unpickling a ``pytorch_model.bin``. Every failure here
names the file and what was expected.

:func:`resolve_checkpoint` turns what a user types into a local folder: a folder path, the name of a
checkpoint shipped in the package (``foundation/released/<name>/``, e.g. ``eegmamba-tiny-open``), or a
Hugging Face Hub repo id ``org/name`` pinned with ``org/name@revision`` (or ``revision=``), fetched through
huggingface_hub's cache (``snapshot_download``; ``HF_HUB_OFFLINE=1`` reads the cache only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import safetensors
import safetensors.torch
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from runtime.atomic import refuse_links
from runtime.config_dict import ConfigError, from_dict

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "LoadReport",
    "check_config_fits_weights",
    "check_finite_weights",
    "weights_shapes",
    "StrictHubMixin",
    "load_backbone_weights",
    "config_from_checkpoint",
    "read_config_file",
    "released_checkpoints",
    "runtime_fields",
    "stored_config",
    "resolve_checkpoint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

C = TypeVar("C")

RELEASED_DIR = Path(__file__).resolve().parent / "released"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = ("1", "true", "yes", "on")


def released_checkpoints() -> list[str]:
    """Names of the checkpoints shipped with the package (folders of ``foundation/released``)."""
    if not RELEASED_DIR.is_dir():
        return []
    return sorted(p.name for p in RELEASED_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def _hub_cache_dir() -> str | None:
    """The Hub cache as the environment says *now* (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _local_path_reason(text: str) -> str:
    """Why ``text`` is a local path rather than a Hub repo id ("" when it may be either).

    ``runs/model`` matches the ``org/name`` form, but when ``runs/`` is a folder here it is a mistyped
    path: looking it up on the Hub would fetch from the network and then fail with a confusing error.
    """
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in (".", ".."):
        return f"{text!r} starts like a path"
    first = Path(text).parts[0] if Path(text).parts else ""
    if "/" in text and first and Path(first).expanduser().is_dir():
        return f"its first segment {first + '/'} is a local folder"
    return ""


def resolve_checkpoint(name_or_path: str | Path, *, revision: str | None = None) -> Path:
    """The local folder of a checkpoint given as a path, a shipped name, or a Hub repo id.

    Tried in this order: an existing local folder; a checkpoint shipped with the package
    (:func:`released_checkpoints`); a Hub repo id ``org/name`` or ``org/name@revision`` (``revision`` wins
    over ``@``), downloaded into / read from huggingface_hub's cache. With ``HF_HUB_OFFLINE=1`` only the
    cache is read (a branch or tag resolves through the cache's ``refs/``; a commit hash directly).
    Text that can only be a local path (starting with ``./``, ``../``, ``/`` or ``~``, or whose first
    segment is a folder here, like ``runs/model`` when ``runs/`` exists) is never looked up on the Hub.

    Raises:
        FileNotFoundError: nothing matched; the message lists what was tried and the shipped names.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    shipped = released_checkpoints()
    if text in shipped:
        return RELEASED_DIR / text
    local = _local_path_reason(text)
    if local and not path.exists():
        raise FileNotFoundError(
            f"checkpoint {text!r} does not exist: no such local folder {path.resolve()} ({local}, so it was not looked "
            f"up on the Hub); "
            f"expected {CONFIG_NAME} + {WEIGHTS_NAME} written by save_pretrained"
        )
    repo_id, _, at_rev = text.partition("@")
    if _REPO_ID.match(repo_id) and not path.exists():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        rev = revision or at_rev or None
        offline = _hub_offline()
        try:
            return Path(snapshot_download(repo_id, revision=rev, cache_dir=_hub_cache_dir(), local_files_only=offline))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            raise FileNotFoundError(
                f"checkpoint {text!r}: not a local folder, not a shipped checkpoint ({', '.join(shipped) or 'none'}), "
                f"and the Hub repo {repo_id!r} at revision {rev or 'main'} could not be fetched"
                f"{' (HF_HUB_OFFLINE is set: only the local cache was searched)' if offline else ''}: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
    raise FileNotFoundError(
        f"checkpoint {text!r} does not exist: it is not a local folder (expected {CONFIG_NAME} + {WEIGHTS_NAME} "
        f"written by save_pretrained), not a shipped checkpoint name ({', '.join(shipped) or 'none'}) and not a "
        f"Hub repo id of the form org/name[@revision]"
    )


class CheckpointError(ValueError):
    """A checkpoint folder whose config or weights cannot be used (the message names the file)."""


def read_config_file(config_class: type[C], path: str | Path, *, kind: str = "checkpoint") -> C:
    """Read ``{path}/config.json`` (or that file) strictly into ``config_class``.

    Unknown keys are errors; keys missing from an older checkpoint take ``LEGACY_DEFAULTS`` where the
    config class defines them (see :func:`with_legacy_defaults`), else the dataclass defaults; runtime
    fields come back neutral (:func:`config_from_checkpoint`).

    Raises:
        FileNotFoundError: no such file. CheckpointError: not JSON, unknown key, bad value.
    """
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{kind} config {file} does not exist")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{file} must hold a JSON object of {config_class.__name__} fields, got {type(data).__name__}"
        )
    try:
        return config_from_checkpoint(config_class, data)
    except (ConfigError, ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: {err} (is this a {kind} checkpoint?)") from err


def config_from_checkpoint(config_class: type[C], data: dict[str, Any]) -> C:
    """A config stored in a checkpoint: missing keys from ``LEGACY_DEFAULTS``, runtime fields neutral.

    Runtime fields (``config_class.RUNTIME_FIELDS``, e.g. EEGMamba's ``scan_backend``) choose how the model
    runs on this machine, not what it computes: a value stored by an older version (a Triton-forced export)
    is replaced by the neutral one, so the checkpoint runs anywhere.

    Raises:
        ConfigError, ValueError, TypeError: unknown key or bad value (callers name the file).
    """
    config = from_dict(config_class, with_legacy_defaults(config_class, data))
    return dataclasses.replace(config, **runtime_fields(config_class))


def runtime_fields(config_class: type) -> dict[str, Any]:
    """``{field: neutral value}`` of the fields that are runtime choices, not architecture (may be empty)."""
    return dict(getattr(config_class, "RUNTIME_FIELDS", {}))


def stored_config(config: Any) -> dict[str, Any]:
    """``config`` as a checkpoint's ``config.json`` holds it: its fields, runtime ones at their neutral value."""
    return {**dataclasses.asdict(config), **runtime_fields(type(config))}


def with_legacy_defaults(config_class: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a saved config) with keys it lacks filled from ``config_class.LEGACY_DEFAULTS``.

    A field added after a checkpoint was written means, for that checkpoint, what the code did before
    the field existed (which may differ from the new default).
    """
    return {**getattr(config_class, "LEGACY_DEFAULTS", {}), **data}


def weights_shapes(file: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file, from its header alone (no tensor is read).

    Raises:
        FileNotFoundError: no such file. CheckpointError: not a safetensors file.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist")
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors file ({err}); checkpoints must be written by "
                              "save_pretrained / safetensors, never torch.save pickles") from err


def check_config_fits_weights(build: Callable[[], nn.Module], config_file: str | Path, weights: str | Path, *,
                              prefix: str = "") -> None:
    """Refuse a config whose model would not match the weights file, before the model is built for real.

    ``build()`` runs on the meta device (no memory is allocated for parameters), and the model's parameter and
    buffer shapes are compared with the weights file's header (``prefix``: only the file's tensors under it, with
    it removed, e.g. ``"backbone."``). A config.json edited to ``n_layers = 100000`` or ``d_model = 1e6`` is then a
    one-line error instead of minutes of allocation and an out-of-memory kill.

    Raises:
        CheckpointError: naming both files and the first mismatching tensors.
    """
    shapes = {k[len(prefix):]: v for k, v in weights_shapes(weights).items() if k.startswith(prefix)}
    with torch.device("meta"):
        model = build()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    mismatched = sorted(k for k in set(own) & set(shapes) if own[k] != shapes[k])
    if missing or unexpected or mismatched:
        lines = [f"{k}: weights {shapes[k]} vs config {own[k]}" for k in mismatched[:3]]
        raise CheckpointError(
            f"{weights} does not match the model {config_file} describes ("
            + "; ".join(lines + ([f"missing e.g. {missing[:3]}"] if missing else [])
                        + ([f"unexpected e.g. {unexpected[:3]}"] if unexpected else []))
            + "); checked before building it. Was config.json edited? Restore the one saved with these weights")


def check_finite_weights(state: Mapping[str, torch.Tensor], file: str | Path) -> None:
    """CheckpointError naming the first tensor of ``state`` (read from ``file``) holding NaN/inf."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{file}: tensor {name} holds {n_bad} NaN/inf value(s) of {tensor.numel()}; the "
                                  "weights are damaged (a diverged run's?) and would give NaN outputs: use another "
                                  "checkpoint")


@dataclass
class LoadReport:
    """Keys that :func:`load_backbone_weights` did not load (all empty after a strict load)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def load_backbone_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, prefix: str = ""
) -> LoadReport:
    """Load safetensors weights into ``model``; with ``strict=False`` keep what fits and report the rest.

    ``path`` is a checkpoint folder or a ``.safetensors`` file. With ``strict=False`` tensors whose shape
    differs from the model's (e.g. a task embedding saved with another ``n_tasks``) are skipped and keep
    their fresh initialisation, as do missing keys; use it to put a pretrained backbone under a model with a
    different head or task count. ``prefix`` is prepended to the file's keys (e.g. ``"backbone."`` when
    ``model`` wraps the backbone as an attribute).

    Raises:
        FileNotFoundError: missing file. CheckpointError: not a safetensors file, or (strict) any
            missing / unexpected / shape-mismatched key, listed with shapes.
    """
    path = Path(path)
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"weights file {file} does not exist")
    try:
        state = safetensors.torch.load_file(str(file), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({err}); checkpoints must be written by "
            f"save_pretrained / safetensors, never torch.save pickles"
        ) from err
    check_finite_weights(state, file)
    state = {prefix + k: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or mismatched):
        lines = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:5]]
        raise CheckpointError(
            f"{file} does not match the model built from its config "
            f"({len(mismatched)} shape mismatches, {len(missing)} missing, {len(unexpected)} unexpected keys). "
            + ("Shape mismatches: " + "; ".join(lines) + ". " if lines else "")
            + (f"Missing e.g. {missing[:3]}. " if missing else "")
            + (f"Unexpected e.g. {unexpected[:3]}. " if unexpected else "")
            + "Was config.json edited, or the weights saved from another architecture?"
        )
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected, mismatched=mismatched)


class StrictHubMixin(PyTorchModelHubMixin):
    """``save_pretrained`` / ``from_pretrained`` for a module built as ``Model(config)``.

    Subclasses set ``config_class`` (the frozen config dataclass) and ``checkpoint_kind`` (a word for
    error messages, e.g. ``"tokenizer"``). Loading returns the model in eval mode.
    """

    config_class: ClassVar[type]
    checkpoint_kind: ClassVar[str] = "checkpoint"

    def save_pretrained(self, save_directory: str | Path, *, config: Any = None, **kwargs: Any):
        """Write ``config.json`` (runtime fields at their neutral value, :func:`stored_config`) + weights."""
        config = config if config is not None else getattr(self, "config", None) or self._hub_mixin_config
        if dataclasses.is_dataclass(config):
            config = stored_config(config)
        # huggingface_hub opens these by name: a planted link would send the write elsewhere
        refuse_links(Path(save_directory), (CONFIG_NAME, WEIGHTS_NAME, "README.md"))
        return super().save_pretrained(save_directory, config=config, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """A short card of what the folder holds: the class, its config, how to load it (huggingface_hub's
        template would be placeholders only). A pretraining run's export replaces it with the full card."""
        cls = type(self)
        doc = " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split())
        config = getattr(self, "config", None)
        fields = stored_config(config) if dataclasses.is_dataclass(config) else {}
        rows = "\n".join(f"| {k} | `{json.dumps(v)}` |" for k, v in fields.items())
        tags = "\n".join(f"- {t}" for t in self._hub_mixin_info.model_card_data.tags or [])
        return ModelCard("\n".join([
            "---", "library_name: eegfm", *(["tags:", tags] if tags else []), "---", "",
            f"# {cls.__name__}", "", doc, "",
            "| config field | value |", "|---|---|", rows, "",
            "```python", f"from {cls.__module__.split('.')[0]} import {cls.__name__}",
            f'model = {cls.__name__}.from_pretrained("path/to/this/folder")', "```", "",
        ]))

    @classmethod
    def read_config(cls, path: str | Path) -> Any:
        """The ``config_class`` stored in ``{path}/config.json`` (strict)."""
        return read_config_file(cls.config_class, path, kind=cls.checkpoint_kind)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, *, map_location: str = "cpu", strict: bool = True,
        **kwargs: Any,
    ):
        """Load a checkpoint written by ``save_pretrained`` (in eval mode).

        ``pretrained_model_name_or_path`` is a local folder, the name of a checkpoint shipped with the
        package, or a Hub repo id ``org/name[@revision]`` (``revision=`` pins it too), see
        :func:`resolve_checkpoint`.

        Raises:
            FileNotFoundError: no such folder / shipped name / Hub repo, or its config.json or
                model.safetensors is missing.
            CheckpointError: config.json does not hold this model's config, the weights file is not
                safetensors, or the weights do not match the config (with ``strict``).
        """
        try:
            path = resolve_checkpoint(pretrained_model_name_or_path, revision=kwargs.pop("revision", None))
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{cls.checkpoint_kind} folder {pretrained_model_name_or_path} not found (expected {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} written by {cls.__name__}.save_pretrained): {err}"
            ) from err
        config = cls.read_config(path)
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{cls.checkpoint_kind} folder {path} has no {WEIGHTS_NAME}")
        if strict:
            check_config_fits_weights(lambda: cls(config), path / CONFIG_NAME, path / WEIGHTS_NAME)
        return super().from_pretrained(path, config=config, map_location=map_location, strict=strict, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: Any, map_location: str = "cpu", strict: bool = True,
                         **_: Any):
        model = cls(config)
        load_backbone_weights(model, Path(model_id) / WEIGHTS_NAME, strict=strict)
        model.to(map_location)
        model.eval()
        return model
