"""Resumable training state as safetensors + JSON that we write and read ourselves: no pickle anywhere.

``accelerator.save_state`` / ``load_state`` pickle the optimiser (``optimizer.bin``), the RNG states
(``random_states_*.pkl``) and registered objects (``custom_checkpoint_*.pkl``, read back with
``torch.load(weights_only=False)``), so a checkpoint folder from someone else could run code on
``--resume``. This module writes the same information without pickle, and reads it with
``safetensors`` and ``json`` only, so a planted payload is a parse error, never executed:

    model.safetensors        the unwrapped model's weights (``safetensors.torch.save_model``)
    optimizer.safetensors    every per-parameter state tensor, key ``{param index}.{name}``
    optimizer.json           the param groups (hyper-parameters and parameter indices)
    rng_{rank}.safetensors   torch CPU/CUDA generator states; Python's and NumPy's in its metadata
    buffers_{rank}.safetensors  this rank's training-only buffers, which ``model.safetensors`` (like an export)
                             leaves out: those a module names in ``TRAINING_BUFFERS`` (the tokenizer codebook's
                             dead-code statistics and vector pool), so a resumed run continues exactly; absent
                             when the model has none (and in checkpoints written before it existed)

(The caller adds ``train_state.json``: step, data position, scheduler, the run's config.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator

from runtime.atomic import atomic_save, atomic_write_text, refuse_link

__all__ = ["CheckpointStateError", "save_training_state", "load_training_state", "read_json", "training_buffers", "FILES"]

MODEL_FILE = "model.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_GROUPS = "optimizer.json"
FILES = (MODEL_FILE, OPTIM_TENSORS, OPTIM_GROUPS)


class CheckpointStateError(ValueError):
    """A checkpoint file that is missing, not what we wrote, or does not fit this run (names the file)."""


def _rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


def save_training_state(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        folder: str | Path) -> None:
    """Write weights and optimiser (main process) and this rank's RNG states into ``folder``."""
    folder = Path(folder)
    if accelerator.is_main_process:
        refuse_link(folder)
        folder.mkdir(parents=True, exist_ok=True)
        inner = accelerator.unwrap_model(model)
        atomic_save(lambda tmp: safetensors.torch.save_model(inner, tmp), folder / MODEL_FILE)
        state = optimizer.state_dict()
        tensors = {f"{idx}.{name}": torch.as_tensor(value).detach().cpu().contiguous()
                   for idx, entry in state["state"].items() for name, value in entry.items()}
        atomic_save(lambda tmp: safetensors.torch.save_file(tensors, tmp), folder / OPTIM_TENSORS)
        atomic_write_text(folder / OPTIM_GROUPS, json.dumps(state["param_groups"]))
    accelerator.wait_for_everyone()
    _save_rng(folder / _rng_file(accelerator.process_index))
    buffers = training_buffers(accelerator.unwrap_model(model))
    if buffers:
        values = {k: v.detach().cpu().contiguous() for k, v in buffers.items()}
        atomic_save(lambda tmp: safetensors.torch.save_file(values, tmp), folder / _buffers_file(accelerator.process_index))


def load_training_state(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        folder: str | Path) -> None:
    """Restore what :func:`save_training_state` wrote (every rank reads the shared files).

    Raises:
        CheckpointStateError: a file is missing or not a safetensors / JSON file of the expected shape.
    """
    folder = Path(folder)
    weights = _checked(folder / MODEL_FILE)
    try:
        missing, unexpected = safetensors.torch.load_model(accelerator.unwrap_model(model), str(weights), strict=False)
    except (safetensors.SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointStateError(f"{weights}: not model weights this run can load ({err})") from err
    if missing or unexpected:
        raise CheckpointStateError(f"{weights}: weights do not match the model (missing {sorted(missing)[:3]}, "
                                   f"unexpected {sorted(unexpected)[:3]})")
    optimizer.load_state_dict(_read_optimizer(folder, optimizer))
    _load_rng(_checked(folder / _rng_file(accelerator.process_index)))
    _load_buffers(folder / _buffers_file(accelerator.process_index), training_buffers(accelerator.unwrap_model(model)))


def training_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers each module lists in its ``TRAINING_BUFFERS``, by full name (training bookkeeping that is
    not part of the model a user loads, e.g. ``tokenizer.codebook.EMACodebook``'s usage statistics)."""
    found = {}
    for prefix, module in model.named_modules():
        for name in getattr(module, "TRAINING_BUFFERS", ()):
            found[f"{prefix}.{name}" if prefix else name] = getattr(module, name)
    return found


def _buffers_file(rank: int) -> str:
    return f"buffers_{rank}.safetensors"


@torch.no_grad()
def _load_buffers(path: Path, buffers: dict[str, torch.Tensor]) -> None:
    """Restore :func:`training_buffers` from ``path``; a checkpoint without the file keeps them as they are."""
    if not path.is_file():
        return
    tensors, _ = _read_tensors(path)
    wrong = sorted(set(tensors) ^ set(buffers)) + sorted(
        k for k in set(tensors) & set(buffers) if tensors[k].shape != buffers[k].shape or tensors[k].dtype != buffers[k].dtype)
    if wrong:
        raise CheckpointStateError(f"{path}: training buffers do not match the model ({wrong[:3]})")
    for name, value in tensors.items():
        buffers[name].copy_(value)


def _checked(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointStateError(f"checkpoint file {path} is missing")
    return path


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safetensors.safe_open(str(_checked(path)), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise CheckpointStateError(f"{path} is not a safetensors file ({err})") from err


def read_json(path: Path, text: str | None = None) -> Any:
    """``path`` (or ``text`` read from it) as JSON; CheckpointStateError naming the file otherwise."""
    try:
        return json.loads(_checked(path).read_bytes().decode() if text is None else text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointStateError(f"{path} is not valid JSON ({err})") from err


def _read_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    groups = read_json(folder / OPTIM_GROUPS)
    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointStateError(f"{folder / OPTIM_GROUPS}: {len(fresh)} parameter groups expected")
    for saved, own in zip(groups, fresh):
        for key, value in own.items():  # JSON has lists where the optimiser had tuples (betas)
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    tensors, _ = _read_tensors(folder / OPTIM_TENSORS)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        if not idx.isdigit() or not name:
            raise CheckpointStateError(f"{folder / OPTIM_TENSORS}: unexpected entry {key!r}")
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": groups}


def _save_rng(path: Path) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    metadata = {"python": json.dumps(random.getstate()), "numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)])}
    atomic_save(lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata), path)


def _load_rng(path: Path) -> None:
    tensors, metadata = _read_tensors(path)
    try:
        version, internal, gauss = read_json(path, metadata["python"])
        kind, pos, has_gauss, cached = read_json(path, metadata["numpy"])
        torch.set_rng_state(tensors["torch"])
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointStateError(f"{path}: not the RNG state this suite writes ({err})") from err
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
