"""The Accelerate training loop shared by backbone pretraining and tokenizer training.

One :class:`Trainer` drives any :class:`pretrain.objectives.Objective` (an ``nn.Module`` whose
``forward(batch)`` returns ``dict(loss=scalar tensor, <name>=scalar logs, expert_load=[layers, experts])``
and whose ``export(dir)`` writes what downstream code loads). What it does, and why:

* AdamW with LaBraM's betas and weight decay on matrices only (norms, biases, embeddings, class /
  mask tokens and Mamba's ``A_log``/``D`` are not decayed), linear warm-up then cosine decay.
* The LR scheduler is *not* passed through ``accelerator.prepare``: prepared schedulers step
  ``num_processes`` times per call, which would shorten our step-based warm-up on several GPUs.
  It is registered for checkpointing instead, together with a small :class:`TrainState`
  (optimiser step + micro-batches consumed = data position).
* The WebDataset loader is never prepared either (see ``pretrain/data.py``); batches are moved to
  ``accelerator.device`` by hand.
* ``accelerator.save_state`` every ``save_every`` steps and at the end, wrapped in
  ``wait_for_everyone`` (saving and loading race otherwise); ``resume`` restores model, optimiser,
  scheduler, RNG states and the data position, so the continued run matches an uninterrupted one.
* A NaN/inf guard: every step all ranks agree (one all-reduce of a flag) whether any loss or the
  grad norm is non-finite; if so the run stops before the optimiser step with
  :class:`NonFiniteLossError` naming the step and the offending loss, and writes no checkpoint or model.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from foundation.configfile import to_dict
from pretrain.config import OptimConfig, TrainConfig
from pretrain.contract import write_run_contract
from pretrain.data import (
    BatchStream,
    Corpus,
    batch_tokens,
    make_batch_stream,
    preprocessing_record,
    sample_log_lines,
    to_device,
)
from shards.sample import PATCH_SAMPLES, SFREQ

CHECKPOINT_PREFIX = "step_"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; nothing was written for that step."""


class TrainState:
    """Position of the run, saved with every checkpoint (``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0
        self.micro_batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "micro_batches": self.micro_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.micro_batches = int(state["micro_batches"])


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""

    def __init__(self, warmup: int, total: int, floor: float) -> None:
        self.warmup, self.total, self.floor = max(0, warmup), max(1, total), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


_NO_DECAY_NAMES = ("norm", "embed", "token", "a_log", "codebook", "pos_", "bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, none on vectors / norms / embeddings / special tokens."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim <= 1 or lowered.endswith(".d") or any(k in lowered for k in _NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_accelerator(optim: OptimConfig, train: TrainConfig) -> Accelerator:
    """An Accelerator logging to ``{out_dir}/logs`` with the run's precision and accumulation."""
    precision = train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    out = Path(train.out_dir)
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=optim.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # MoE experts that get no token in a step have no gradient; DDP must not wait for them.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest ``{out_dir}/checkpoints/step_*`` folder, or None."""
    root = Path(out_dir) / "checkpoints"
    found = sorted(root.glob(f"{CHECKPOINT_PREFIX}*")) if root.is_dir() else []
    complete = [p for p in found if (p / "train_state.json").is_file()]  # an interrupted save has none
    return complete[-1] if complete else None


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """``None``/"" -> fresh run; "auto"/"true" -> newest checkpoint of ``out_dir`` (None if none); else that folder."""
    if not resume or resume.lower() in ("false", "no"):
        return None
    if resume.lower() in ("auto", "true", "latest"):
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / "train_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no train_state.json in {path})")
    return path


@dataclass
class TrainResult:
    """What a :meth:`Trainer.fit` call did."""

    out_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    logs: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    export_dir: Path | None = None
    stopped_early: bool = False
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0


class Trainer:
    """Fits an objective on a :class:`~pretrain.data.BatchStream` with Accelerate.

    Args:
        objective: the ``nn.Module`` to train (owns backbone, heads, frozen targets).
        stream: batches positioned by micro-batch count (never passed through ``prepare``).
        optim, train: the config sections.
        accelerator: reuse one (e.g. a tokenizer trained first in the same process); else made here.
        patch_size: samples per token, for tokens/s.
        run_name: TensorBoard run name.
        hparams: flat scalars recorded with the TensorBoard run.
    """

    def __init__(
        self,
        objective: nn.Module,
        stream: BatchStream,
        optim: OptimConfig,
        train: TrainConfig,
        *,
        accelerator: Accelerator | None = None,
        patch_size: int = PATCH_SAMPLES,
        run_name: str = "pretrain",
        hparams: dict[str, Any] | None = None,
    ) -> None:
        self.objective = objective
        self.stream = stream
        self.optim_cfg = optim
        self.cfg = train
        self.accelerator = accelerator or make_accelerator(optim, train)
        self.accelerator.gradient_accumulation_steps = optim.grad_accum
        self.patch_size = patch_size
        self.run_name = run_name
        self.hparams = hparams or {}
        self.out_dir = Path(train.out_dir)
        self.state = TrainState()

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self, step: int) -> Path:
        acc = self.accelerator
        path = self.out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
        acc.wait_for_everyone()
        acc.save_state(str(path))
        acc.wait_for_everyone()
        if acc.is_main_process:
            # written last: a folder without it is an interrupted save, which resume ignores
            (path / "train_state.json").write_text(json.dumps(self.state.state_dict()))
            if self.cfg.keep_checkpoints > 0:
                done = [p for p in sorted(path.parent.glob(f"{CHECKPOINT_PREFIX}*")) if (p / "train_state.json").is_file()]
                for old in done[: -self.cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def _load(self, path: Path) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        acc.load_state(str(path))
        acc.wait_for_everyone()

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> TrainResult:
        """Train to ``train.max_steps`` (or ``train.stop_after``), checkpointing and exporting.

        Raises:
            NonFiniteLossError: a loss or the gradient norm became NaN/inf (no checkpoint/model written).
        """
        acc, cfg, ocfg = self.accelerator, self.cfg, self.optim_cfg
        set_seed(cfg.seed, device_specific=True)  # masks and MoE noise differ between ranks
        optimizer = torch.optim.AdamW(param_groups(self.objective, ocfg.weight_decay), lr=ocfg.lr, betas=ocfg.betas)
        schedule = WarmupCosine(ocfg.warmup_steps, cfg.max_steps, ocfg.min_lr / ocfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        model, optimizer = acc.prepare(self.objective, optimizer)
        acc.register_for_checkpointing(scheduler, self.state)

        resume_path = resolve_resume(str(resume), self.out_dir) if resume else None
        if resume_path is not None:
            self._load(resume_path)
            acc.print(f"resumed from {resume_path} at step {self.state.step}")
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        acc.init_trackers(self.run_name, config=_flat_scalars(self.hparams))

        sample_log = None
        if cfg.log_sample_keys:
            (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
            sample_log = open(self.out_dir / "logs" / f"samples-rank{acc.process_index}.jsonl", "a")

        end_step = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)
        result = TrainResult(out_dir=self.out_dir, steps=self.state.step)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.state.step,
            disable=not (acc.is_main_process and cfg.progress),
            desc=self.run_name,
            dynamic_ncols=True,
        )
        batches: Iterator[dict] = self.stream.batches(self.state.micro_batches)
        model.train()
        window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
        total_start, total_samples, total_tokens = window_start, 0, 0
        last_saved = None
        try:
            while self.state.step < end_step:
                step_logs: dict[str, float] = {}
                expert_load = None
                for _ in range(ocfg.grad_accum):
                    batch = next(batches)
                    self.state.micro_batches += 1
                    if sample_log is not None:
                        sample_log.write("\n".join(sample_log_lines(batch, self.state.step)) + "\n")
                    n_samples = batch["x"].shape[0]
                    n_tokens = batch_tokens(batch, self.patch_size)
                    batch = to_device(batch, acc.device)
                    with acc.accumulate(model):
                        with acc.autocast():
                            out = model(batch)
                        loss = out["loss"]
                        if cfg.inject_nan_at is not None and self.state.step + 1 == cfg.inject_nan_at:
                            loss = loss * float("nan")
                        self._guard({"loss": loss, **{k: v for k, v in out.items() if k != "loss"}})
                        acc.backward(loss)  # accelerate divides by grad_accum itself
                        grad_norm = None
                        if acc.sync_gradients:
                            if ocfg.grad_clip > 0:
                                grad_norm = acc.clip_grad_norm_(model.parameters(), ocfg.grad_clip)
                            else:
                                grad_norm = _grad_norm(model)
                            self._guard({"grad_norm": torch.as_tensor(grad_norm, device=acc.device)})
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for key, value in out.items():
                        if key == "expert_load" and isinstance(value, torch.Tensor):
                            expert_load = value.detach().float().cpu()
                        elif isinstance(value, torch.Tensor) and value.numel() == 1:
                            step_logs[key] = step_logs.get(key, 0.0) + float(value.detach()) / ocfg.grad_accum
                        elif isinstance(value, (int, float)):
                            step_logs[key] = step_logs.get(key, 0.0) + float(value) / ocfg.grad_accum
                    window_samples += n_samples * acc.num_processes
                    window_tokens += n_tokens * acc.num_processes
                scheduler.step()
                self.state.step += 1
                step = self.state.step
                step_logs["lr"] = scheduler.get_last_lr()[0]
                if grad_norm is not None:
                    step_logs["grad_norm"] = float(grad_norm)
                result.losses.append(step_logs["loss"])
                result.logs.append(dict(step_logs))
                bar.update(1)
                bar.set_postfix(loss=f"{step_logs['loss']:.4f}", lr=f"{step_logs['lr']:.2e}")

                if step % cfg.log_every == 0 or step == end_step:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    scalars = {f"train/{k}": v for k, v in step_logs.items()}
                    scalars["train/samples_per_s"] = window_samples / elapsed
                    scalars["train/tokens_per_s"] = window_tokens / elapsed
                    if expert_load is not None:
                        scalars.update(_expert_scalars(expert_load))
                    acc.log(scalars, step=step)
                    total_samples += window_samples
                    total_tokens += window_tokens
                    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
                if step % cfg.save_every == 0 or step == end_step:
                    last_saved = self._save(step)

            elapsed = max(time.perf_counter() - total_start, 1e-9)
            result.samples_per_s = total_samples / elapsed
            result.tokens_per_s = total_tokens / elapsed
            result.steps = self.state.step
            result.checkpoint = last_saved or latest_checkpoint(self.out_dir)
            if self.state.step < cfg.max_steps:
                result.stopped_early = True
                acc.print(f"stopped at step {self.state.step} of {cfg.max_steps} (train.stop_after); continue with --resume auto")
                return result
            export_dir = self.out_dir / "model"
            acc.wait_for_everyone()
            if acc.is_main_process:
                acc.unwrap_model(model).export(export_dir)
            acc.wait_for_everyone()
            result.export_dir = export_dir
            return result
        finally:
            bar.close()
            if sample_log is not None:
                sample_log.close()
            self._release()

    def _release(self) -> None:
        """Close this run's trackers and forget its model/optimiser so the accelerator can run another fit.

        Not ``accelerator.end_training()``: that also destroys the process group, which a second fit in
        the same processes (tokenizer first, then backbone) still needs. The entry point calls it last.
        """
        acc = self.accelerator
        for tracker in acc.trackers:
            tracker.finish()
        acc.trackers = []
        acc.free_memory()
        acc._custom_objects = []  # registered scheduler/state belong to this fit only (no public reset)

    def _guard(self, values: dict[str, Any]) -> None:
        """Stop every rank together if any scalar in ``values`` is NaN/inf on any rank."""
        bad = [k for k, v in values.items() if isinstance(v, torch.Tensor) and v.numel() == 1 and not torch.isfinite(v.detach()).item()]
        flag = torch.tensor([1.0 if bad else 0.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0:
            where = f"on rank {self.accelerator.process_index}: " + ", ".join(
                f"{k}={float(values[k].detach())}" for k in bad
            ) if bad else "on another rank"
            last = latest_checkpoint(self.out_dir)
            raise NonFiniteLossError(
                f"non-finite value at step {self.state.step + 1} {where}. Stopped before the optimiser step; "
                f"no checkpoint or model was written for it. Last good checkpoint: {last or 'none'} "
                "(lower optim.lr, raise optim.warmup_steps or check the shards for extreme values, then --resume)"
            )


def _grad_norm(model: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _expert_scalars(load: torch.Tensor) -> dict[str, float]:
    """TensorBoard scalars from ``expert_load [n_layers, n_experts]`` (fractions of routed tokens)."""
    load = load.reshape(-1, load.shape[-1]).float()
    frac = load / load.sum(dim=-1, keepdim=True).clamp_min(1e-9)
    mean = frac.mean(dim=0)
    scalars = {f"experts/load_e{i}": float(v) for i, v in enumerate(mean)}
    scalars["experts/max_over_mean"] = float((frac.max(dim=-1).values / frac.mean(dim=-1).clamp_min(1e-9)).mean())
    return scalars


def _flat_scalars(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested config dicts for TensorBoard hparams (scalars and strings only)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_scalars(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


def fit_and_export(objective: nn.Module, corpora: list[Corpus], config: Any, accelerator: Accelerator, *,
                   run_name: str, announce: str, resume: str | None = None, patch_size: int = PATCH_SAMPLES) -> TrainResult:
    """The shared tail of ``pretrain/run.py`` and ``tokenizer/run.py``: stream ``corpora``, train, export.

    ``config`` is the whole run config (with ``data``, ``optim`` and ``train`` sections); it is written to
    ``{out_dir}/run_config.json`` and logged as hyper-parameters. The shards' preprocessing parameters go
    to ``preprocess.json`` beside the exported model, so finetuning and prediction can reproduce them.
    ``announce`` is printed once, on the main process, before training.
    """
    stream = make_batch_stream(config.data, corpora, patch_size=patch_size, sfreq=SFREQ, seed=config.train.seed,
                               grad_accum=config.optim.grad_accum, world_size=accelerator.num_processes)
    hparams = to_dict(config)
    out = Path(config.train.out_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(hparams, indent=2))
        accelerator.print(announce)
    trainer = Trainer(objective, stream, config.optim, config.train, accelerator=accelerator, patch_size=patch_size,
                      run_name=run_name, hparams=hparams)
    result = trainer.fit(resume=resume)
    if result.export_dir is not None and accelerator.is_main_process:
        record = {"sfreq": SFREQ, "crop_s": config.data.crop_s, "corpora": preprocessing_record(corpora)}
        (result.export_dir / "preprocess.json").write_text(json.dumps(record, indent=2))
        write_run_contract(result.export_dir, corpora, objective, config, result.steps, patch_size)
    return result
