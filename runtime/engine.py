"""The training engine shared by pretraining, tokenizer training and finetuning.

Each loop (``pretrain.trainer.Trainer.fit``, ``finetune.train.finetune``) is a short loop in the shape of
Accelerate's ``nlp_example``; everything they have in common lives here, once:

* :func:`make_accelerator`: precision ("auto" = bf16 on a CUDA GPU that supports it, else fp32),
  gradient accumulation, TensorBoard logging, DDP that tolerates unused MoE experts / task heads.
* :func:`param_groups`: AdamW groups from the parameters' own tags: no weight decay on vectors
  (biases, norms, ``D``), ``nn.Embedding`` tables and parameters tagged ``_no_weight_decay`` (the
  SSM's ``A_log``, class / mask tokens); an optional per-name LR scale (layer-wise decay).
* :func:`warmup_cosine`: THE learning-rate multiplier, a pure function of the step (nanoGPT style).
* :func:`clip_gradients` / :func:`clip_and_check` / :func:`check_finite`: gradient clipping and the NaN/inf guard, all-reduced
  so every rank stops together (one rank raising alone would hang the others in the next all-reduce).
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`resolve_resume`: weights, optimiser and RNG
  states as safetensors + JSON (``runtime.resume_state``: no pickle, so resuming a folder from elsewhere
  cannot run code) plus ``train_state.json`` (step, data position, scheduler, the run's config), written
  last and atomically so a folder without it is an interrupted save (``--resume auto`` skips it, and one
  whose state file does not parse, with a warning).
* :class:`SeenFlags`: the ``*_seen`` buffers (MoE task rows used) OR-ed over steps and ranks before a save,
  which DDP's buffer broadcast would otherwise reduce to rank 0's.
* :class:`Throughput`: samples/s and tokens/s over a logging window and over the run.
* :func:`export`: the one function that writes the trained model a user loads.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration
from torch import nn

from runtime.atomic import atomic_write_bytes, atomic_write_text, refuse_links
from runtime.resume_state import CheckpointStateError, load_training_state, read_json, save_training_state

__all__ = [
    "CHECKPOINT_PREFIX", "CheckpointSaveError", "CheckpointStateError", "NonFiniteLossError", "checkpoint_index", "lineage_of", "Throughput", "check_finite", "clip_and_check", "clip_gradients", "export",
    "check_model", "latest_checkpoint", "load_checkpoint", "read_train_state", "log_scan_backend", "make_accelerator", "make_scheduler",
    "param_groups", "resolve_precision", "resolve_resume", "restore_scheduler", "save_checkpoint", "scheduler_state", "warmup_cosine",
    "SeenFlags", "merge_flags",
]

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "train_state.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; nothing was written for that step."""


# -- accelerator -------------------------------------------------------------------------------------


def resolve_precision(choice: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CUDA GPU with bf16 support, else ``"no"`` (fp32); other values pass."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(mixed_precision: str = "auto", grad_accum: int = 1, log_dir: str | Path | None = None) -> Accelerator:
    """An Accelerator with the run's precision and accumulation; TensorBoard under ``log_dir`` if given."""
    logging: dict[str, Any] = {}
    if log_dir is not None:
        log_dir = Path(log_dir)
        logging = {"log_with": "tensorboard",
                   "project_config": ProjectConfiguration(project_dir=str(log_dir.parent), logging_dir=str(log_dir))}
    return Accelerator(
        mixed_precision=resolve_precision(mixed_precision),
        gradient_accumulation_steps=grad_accum,
        # MoE experts (and task heads) that get no token in a step have no gradient; DDP must not wait for them.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **logging,
    )


def log_scan_backend(accelerator: Accelerator, select: Callable[[torch.Tensor, str | None], str],
                     model: nn.Module | None = None) -> str:
    """Say once, on the main process and on stderr (stdout may carry a result), which selective scan runs.

    ``select(probe, forced)`` is the model's chooser (``foundation.ssm.selective_scan_backend``); the runtime
    takes it as an argument because it imports no model code. The choice honours the first
    ``config.scan_backend`` found among ``model``'s modules and ``$EEGFM_SCAN_BACKEND``; a forced backend that
    cannot run here raises ``RuntimeError`` now, not mid-run.
    """
    configs = (getattr(m, "config", None) for m in (model.modules() if model is not None else ()))
    forced = next((c.scan_backend for c in configs if hasattr(c, "scan_backend")), None)
    backend = select(torch.empty(1, 1, 1, device=accelerator.device), forced)
    if accelerator.is_main_process:
        print(f"selective scan: {backend} on {accelerator.device}", file=sys.stderr, flush=True)
    return backend


# -- optimiser ---------------------------------------------------------------------------------------


def _skips_decay(param: nn.Parameter, embedding_ids: set[int]) -> bool:
    return param.ndim <= 1 or id(param) in embedding_ids or bool(getattr(param, "_no_weight_decay", False))


def param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters, one per (LR scale, decay or not).

    Each group has ``params``, ``names``, ``weight_decay``, ``lr_scale`` and, when ``lr`` is given,
    ``lr = lr * lr_scale``. Without ``lr_scale`` there are two groups: decay first, then no decay.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = lr_scale(name) if lr_scale is not None else 1.0
        skip = _skips_decay(param, embedding_ids)
        group = groups.setdefault((scale, skip), {"params": [], "names": [], "lr_scale": scale,
                                                  "weight_decay": 0.0 if skip else weight_decay})
        if lr is not None:
            group["lr"] = lr * scale
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("no trainable parameters")
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1]))]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` (the first step already learns), then a cosine from 1
    down to ``min_ratio`` at ``total_steps``, flat after it.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`warmup_cosine`, stepped once per optimiser step.

    Never pass it through ``accelerator.prepare``: a prepared scheduler steps ``num_processes`` times per
    call, which would shorten a step-based warm-up on several GPUs.
    """
    def factor(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- NaN/inf guard -----------------------------------------------------------------------------------


def check_finite(accelerator: Accelerator, values: Mapping[str, Any], *, what: str, advice: str) -> None:
    """Raise :class:`NonFiniteLossError` on every rank if any scalar tensor in ``values`` is NaN/inf on any rank.

    ``what`` says where (e.g. "at step 12"); ``advice`` ends the message with what to do.
    """
    bad = [k for k, v in values.items()
           if isinstance(v, torch.Tensor) and v.numel() == 1 and not torch.isfinite(v.detach()).item()]
    flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if flag.item() > 0:
        found = (f"on rank {accelerator.process_index}: " + ", ".join(f"{k}={float(values[k].detach())}" for k in bad)
                 if bad else "on another rank")
        raise NonFiniteLossError(f"non-finite value {what} {found}. {advice}")


def check_model(accelerator: Accelerator, model: nn.Module, batch: Mapping[str, Any] | None = None, *,
                what: str, advice: str) -> None:
    """Raise :class:`NonFiniteLossError` (all ranks) unless every weight is finite and, given a ``batch``, the
    model's forward pass on it (eval mode, no gradient, RNG untouched) gives finite scalars.

    Finite weights are not enough: after one step at a huge learning rate they are merely ~1e6, and the
    forward pass (``exp(A_log)``, softmax) overflows. Run before every checkpoint and export.
    """
    inner = accelerator.unwrap_model(model)
    bad = [name for name, p in inner.named_parameters() if not torch.isfinite(p.detach()).all()]
    values: dict[str, Any] = {"weights": torch.tensor(float("nan") if bad else 0.0)}
    if batch is not None and not bad:
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        was_training = inner.training
        with torch.no_grad(), torch.random.fork_rng(devices=devices), accelerator.autocast():
            inner.eval()
            try:
                out = inner(batch)
            finally:
                inner.train(was_training)
        values.update({f"forward {k}": v for k, v in out.items() if isinstance(v, torch.Tensor) and v.numel() == 1})
    names = f" (non-finite parameters: {', '.join(bad[:5])})" if bad else ""
    check_finite(accelerator, values, what=what, advice=names + " " + advice if names else advice)


def clip_gradients(accelerator: Accelerator, model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (0 = no clipping) and return the norm as a device tensor,
    without reading it back (no host sync; check it later with :func:`check_finite`)."""
    if max_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    else:
        norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=accelerator.device)
    return torch.as_tensor(norm, device=accelerator.device)


def clip_and_check(accelerator: Accelerator, model: nn.Module, max_norm: float, *, what: str, advice: str) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (0 = no clipping), check it is finite, return it."""
    norm = clip_gradients(accelerator, model, max_norm)
    check_finite(accelerator, {"grad_norm": norm}, what=what, advice=advice)
    return norm


# -- checkpoints -------------------------------------------------------------------------------------


def checkpoint_index(root: Path, *, warn: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, train_state)`` of the complete ``root/step_*`` checkpoints, in the order they were written.

    An interrupted save has no state file (it is written last, atomically); one whose state file does not
    parse (damaged on disk) is left out too, with a warning naming it when ``warn``. Write order is the state's
    ``serial`` (checkpoints made before it existed count as 0, ordered by step).
    """
    index = []
    for path in sorted(root.glob(f"{CHECKPOINT_PREFIX}*")) if root.is_dir() else []:
        if not (path / STATE_FILE).is_file():
            continue
        try:
            state = read_train_state(path)
        except CheckpointStateError as err:
            if warn:
                warnings.warn(f"skipping checkpoint {path}: {err}", RuntimeWarning, stacklevel=3)
            continue
        index.append((path, state))
    return sorted(index, key=lambda e: (e[1].get("serial", 0), e[1]["step"], e[0].name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of ``{out_dir}/checkpoints`` written last (:func:`checkpoint_index`), or None.

    After a branch resume (``lineage``) that is the branch's newest checkpoint, never a later step of the run it
    branched from.
    """
    index = checkpoint_index(Path(out_dir) / "checkpoints", warn=True)
    return index[-1][0] if index else None


def resolve_resume(resume: str | Path | None, out_dir: str | Path) -> Path | None:
    """``None``/"" -> fresh run; "auto"/"true" -> newest checkpoint of ``out_dir`` (None if none); else that folder."""
    if not resume or str(resume).lower() in ("false", "no"):
        return None
    if str(resume).lower() in ("auto", "true", "latest"):
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {STATE_FILE} in {path})")
    return path


def lineage_of(path: str | Path, out_dir: str | Path) -> tuple[str, list[int]]:
    """The lineage a run resumed from ``path`` continues, and the later steps of ``path``'s own lineage.

    Resuming the newest checkpoint of a lineage continues it. Resuming an earlier one (e.g. to retry from
    step 1000 with another learning rate) branches: the run gets a new lineage, its checkpoints are named
    ``step_NNNNNNNN-bK``, the lineage it left keeps every checkpoint (the branch point included), and
    ``--resume auto`` continues the branch, never the abandoned run's later steps.
    """
    state = read_train_state(path)
    own = str(state.get("lineage", ""))
    index = checkpoint_index(Path(out_dir) / "checkpoints")
    later = sorted(st["step"] for _, st in index if str(st.get("lineage", "")) == own and st["step"] > state["step"])
    if not later:
        return own, []
    taken = {str(st.get("lineage", "")) for _, st in index}
    return next(f"b{k}" for k in range(1, len(taken) + 2) if f"b{k}" not in taken), later


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, a quota, a read-only folder); names the folder and the fix."""


def save_checkpoint(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, out_dir: str | Path,
                    step: int, state: Mapping[str, Any], keep: int = 0, lineage: str = "") -> Path:
    """Weights, optimiser, RNG into ``{out_dir}/checkpoints/step_{step:08d}[-{lineage}]``, then ``train_state.json``.

    ``state`` must be JSON (step, data position, scheduler, config); the lineage and the write order (``serial``)
    are added. ``keep`` > 0 deletes all but the newest ``keep`` checkpoints of this lineage.

    Raises:
        CheckpointSaveError: a file could not be written; the partial folder is removed (the newest complete
            checkpoint stays what ``--resume auto`` takes).
    """
    root = Path(out_dir) / "checkpoints"
    path = root / f"{CHECKPOINT_PREFIX}{step:08d}{'-' + lineage if lineage else ''}"
    accelerator.wait_for_everyone()
    if accelerator.scaler is not None:
        state = {**state, "grad_scaler": accelerator.scaler.state_dict()}
    try:
        save_training_state(accelerator, model, optimizer, path)
        accelerator.wait_for_everyone()  # saving and loading race otherwise
        if accelerator.is_main_process:
            serial = max((st.get("serial", 0) for _, st in checkpoint_index(root)), default=0) + 1
            # last, and atomically (temporary file + rename): its presence marks the folder complete
            atomic_write_bytes(path / STATE_FILE, json.dumps({**state, "lineage": lineage, "serial": serial}).encode())
    except (OSError, safetensors.SafetensorError) as err:
        shutil.rmtree(path, ignore_errors=True)
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointSaveError(
            f"cannot write checkpoint {path} ({reason}); it was removed. Free space (or fix the folder's permissions) "
            f"and continue from the last complete checkpoint with --resume auto "
            f"({latest_checkpoint(out_dir) or 'none yet'})") from err
    if accelerator.is_main_process and keep > 0:
        same = sorted((p for p, st in checkpoint_index(root) if str(st.get("lineage", "")) == lineage),
                      key=lambda p: read_train_state(p)["step"])
        for old in same[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def read_train_state(path: str | Path) -> dict[str, Any]:
    """``{path}/train_state.json``; CheckpointStateError naming the file when it is not what we write."""
    file = Path(path) / STATE_FILE
    state = read_json(file)
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) and not isinstance(state.get(k), bool)
                                              and state[k] >= 0 for k in ("step", "micro_batches")):
        raise CheckpointStateError(f"{file}: expected a JSON object with integer 'step' and 'micro_batches'")
    kinds = {"scheduler": dict, "config": (dict, type(None)), "lineage": str, "serial": int, "grad_scaler": dict}
    wrong = [f"'{k}' ({type(state[k]).__name__})" for k, kind in kinds.items() if k in state and not isinstance(state[k], kind)]
    if wrong:
        raise CheckpointStateError(f"{file}: {', '.join(wrong)} is not what this suite writes there; restore the file "
                                   "from the run that wrote it, or resume from another checkpoint")
    return state


def load_checkpoint(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                    path: str | Path) -> dict[str, Any]:
    """Restore weights, optimiser and RNG states from ``path``; returns its ``train_state.json``.

    Raises:
        CheckpointStateError: a file of the folder is missing or not what we write (nothing is unpickled).
    """
    state = read_train_state(path)
    accelerator.wait_for_everyone()
    load_training_state(accelerator, model, optimizer, path)
    if accelerator.scaler is not None and isinstance(state.get("grad_scaler"), dict):
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    accelerator.wait_for_everyone()
    return state


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The JSON part of a scheduler's state (its LR function is code, rebuilt from the config)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, state: Mapping[str, Any],
                      where: str | Path = "train_state.json") -> None:
    """Load what :func:`scheduler_state` saved (the LR function stays the one built from the config).

    Raises:
        CheckpointStateError: naming ``where`` when the saved state is not a scheduler's.
    """
    if not isinstance(state, Mapping) or not isinstance(state.get("last_epoch"), int) or not isinstance(
            state.get("base_lrs"), list) or len(state["base_lrs"]) != len(scheduler.optimizer.param_groups):
        raise CheckpointStateError(f"{where}: 'scheduler' is not the LR schedule this run saves (last_epoch, base_lrs "
                                   f"for {len(scheduler.optimizer.param_groups)} parameter groups); restore the file")
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(scheduler.optimizer.param_groups)})


# -- flags that record what training used ----------------------------------------------------------


def _seen_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The boolean buffers named ``*_seen`` (``TaskMoE.task_seen``: the task rows training used)."""
    return [(n, b) for n, b in model.named_buffers() if b.dtype == torch.bool and n.rsplit(".", 1)[-1].endswith("_seen")]


def merge_flags(flags: Mapping[str, torch.Tensor], reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """OR of every rank's boolean ``flags`` (same names and shapes on all ranks), in one ``reduce_sum`` call.

    ``reduce_sum`` sums a float tensor over the ranks (``accelerator.reduce(t, "sum")``; the identity on one
    process): a flag is true where it is true on any rank.
    """
    if not flags:
        return {}
    names = list(flags)
    flat = torch.cat([flags[n].reshape(-1).float() for n in names])
    total = reduce_sum(flat) > 0
    merged, start = {}, 0
    for n in names:
        size = flags[n].numel()
        merged[n] = total[start:start + size].reshape(flags[n].shape)
        start += size
    return merged


class SeenFlags:
    """Keeps the ``*_seen`` flags true for everything any rank trained on, until they are saved.

    DDP's ``broadcast_buffers`` copies rank 0's buffers over every other rank's at each forward, so a task
    seen only on rank 1 is lost at rank 1's next step, the export records rank 0's tasks only, and
    finetuning's ``inherit_task_rows`` then overwrites a trained row. :meth:`collect` ORs this rank's flags
    after each forward (no communication); :meth:`sync` (every rank, before a save or export) merges all
    ranks' (:func:`merge_flags`) and writes the result into the buffers of every rank.
    """

    def __init__(self, model: nn.Module) -> None:
        self.flags = {n: b.detach().clone() for n, b in _seen_buffers(model)}

    def collect(self, model: nn.Module) -> None:
        for n, b in _seen_buffers(model):
            self.flags[n] |= b.detach()

    @torch.no_grad()
    def sync(self, accelerator: Accelerator, model: nn.Module) -> None:
        self.collect(model)
        if accelerator.num_processes > 1:
            merged = merge_flags(self.flags, lambda t: accelerator.reduce(t, reduction="sum"))
        else:
            merged = dict(self.flags)
        for n, b in _seen_buffers(model):
            b.copy_(merged[n])
            self.flags[n] = merged[n].clone()


# -- throughput and export ---------------------------------------------------------------------------


class Throughput:
    """Samples/s and tokens/s over the current logging window (:meth:`window`) and the whole run (:meth:`total`)."""

    def __init__(self) -> None:
        self.start = self.window_start = time.perf_counter()
        self.samples = self.tokens = self.window_samples = self.window_tokens = 0

    def add(self, samples: int, tokens: int) -> None:
        self.window_samples += samples
        self.window_tokens += tokens

    def window(self) -> dict[str, float]:
        """Rates since the last call, then start a new window."""
        now = time.perf_counter()
        elapsed = max(now - self.window_start, 1e-9)
        rates = {"samples_per_s": self.window_samples / elapsed, "tokens_per_s": self.window_tokens / elapsed}
        self.samples += self.window_samples
        self.tokens += self.window_tokens
        self.window_start, self.window_samples, self.window_tokens = now, 0, 0
        return rates

    def total(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"samples_per_s": self.samples / elapsed, "tokens_per_s": self.tokens / elapsed}


def export(model: nn.Module, folder: str | Path, preprocessing: Mapping[str, Any] | None = None,
           extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write the model a user loads into ``folder``: its own ``export``/``save_pretrained`` + JSON sidecars.

    ``preprocessing`` goes to ``preprocess.json`` (what finetuning and prediction must reproduce);
    ``extra`` maps a name to a JSON object written as ``{name}.json``.
    """
    folder = Path(folder)
    refuse_links(folder)  # what save_pretrained writes (config.json, weights, card) must not be links
    if hasattr(model, "export"):
        model.export(folder)
    else:
        model.save_pretrained(folder)
    sidecars = dict(extra or {})
    if preprocessing is not None:
        sidecars["preprocess"] = preprocessing
    for name, obj in sidecars.items():
        atomic_write_text(folder / f"{name}.json", json.dumps(obj, indent=2, default=str))
    return folder

