"""The streaming training loop of backbone pretraining and tokenizer training, on ``runtime.engine``.

One :class:`Trainer` drives any :class:`pretrain.objectives.Objective` (an ``nn.Module`` whose
``forward(batch)`` returns ``dict(loss=scalar tensor, <name>=scalar logs, expert_load=[layers, experts])``
and whose ``export(dir)`` writes what downstream code loads). What is particular to it, and why:

* The WebDataset loader is never passed through ``accelerator.prepare`` (see ``pretrain/data.py``);
  batches are moved to ``accelerator.device`` by hand, and the data position is the number of
  micro-batches consumed, saved with every checkpoint, so a resumed run reads on where it stopped.
* Checkpoints every ``save_every`` steps and at the end; ``resume`` restores model, optimiser, RNG
  states, scheduler and data position, so the continued run matches an uninterrupted one.
* No host synchronisation inside a step: the scalar logs stay on the device and are read back, and the
  NaN/inf guard (``engine.check_finite``, all ranks agree) checks every step's loss and grad norm, once
  every ``log_every`` steps and before every checkpoint; the run then stops with
  :class:`NonFiniteLossError` naming the first bad step and writes no checkpoint or model after it.
* ``train.compile``: the objective's step runs through ``torch.compile`` (one graph per channel bucket,
  CUDA graphs on a GPU; ``Objective.compile_step``); AdamW is the fused kernel (one operator per step).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn
from tqdm.auto import tqdm

from foundation.checkpoint import WEIGHTS_NAME
from foundation.contract import read_contract
from foundation.model import EEGMamba
from foundation.ssm import selective_scan_backend
from pretrain.card import CARD_NAME, backbone_summary, export_card
from pretrain.config import OptimConfig, ProbeConfig, TrainConfig
from pretrain.contract import write_run_contract
from pretrain.data import BatchStream, Corpus, batch_tokens, make_batch_stream, preprocessing_record, sample_log_lines, to_device
from pretrain.probe import (BEST_DIR, check_probe_leak, keep_selected, load_probe_sets, probe_backbone, probe_layer,
                            read_best)
from pretrain.resume_settings import apply_overrides, check_resume_settings
from runtime import run_folder
from runtime.atomic import LinkedPathError, atomic_write_text
from runtime.cli_errors import run_cli
from runtime.configfile import parse_cli, to_dict
from runtime.folder_lock import FolderLockedError
from runtime.engine import (
    NonFiniteLossError,
    SeenFlags,
    Throughput,
    check_finite,
    check_model,
    clip_gradients,
    export,
    latest_checkpoint,
    lineage_of,
    load_checkpoint,
    read_train_state,
    log_scan_backend,
    make_accelerator,
    make_scheduler,
    param_groups,
    resolve_resume,
    restore_scheduler,
    save_checkpoint,
    scheduler_state,
)
from runtime.signal import PATCH_SAMPLES, SFREQ

__all__ = [
    "Trainer", "TrainResult", "NonFiniteLossError", "fit_and_export", "accelerator_for", "latest_checkpoint", "run_entry",
]

# The options of a training run that are not config keys.
RUN_FLAGS = {
    "resume": "auto: continue from the newest complete checkpoint of train.out_dir; DIR: from that checkpoint folder",
    "debug": "show the traceback of an error (or set EEGFM_DEBUG=1)",
}
ADVICE = ("lower optim.lr or raise optim.warmup_steps (or check the shards for extreme values), then continue from the "
          "last good checkpoint with --resume auto --train.resume_override optim.lr,optim.warmup_steps")


def accelerator_for(optim: OptimConfig, train: TrainConfig) -> Accelerator:
    """The run's Accelerator: its precision and accumulation, TensorBoard in ``{out_dir}/logs``."""
    return make_accelerator(train.mixed_precision, optim.grad_accum, Path(train.out_dir) / "logs")


@dataclass
class TrainResult:
    """What a :meth:`Trainer.fit` call did."""

    out_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    logs: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    export_dir: Path | None = None
    selected_step: int | None = None  # the step whose weights were exported (validation probe), None = the last
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
        preprocessing: written to ``preprocess.json`` beside the exported model.
    """

    def __init__(self, objective: nn.Module, stream: BatchStream, optim: OptimConfig, train: TrainConfig, *,
                 accelerator: Accelerator | None = None, patch_size: int = PATCH_SAMPLES, run_name: str = "pretrain",
                 hparams: dict[str, Any] | None = None, preprocessing: dict[str, Any] | None = None,
                 probe: ProbeConfig | None = None, probe_sets: list | None = None) -> None:
        self.objective, self.stream = objective, stream
        self.probe, self.probe_sets = probe, probe_sets or []
        self.optim_cfg, self.cfg = optim, train
        self.accelerator = accelerator or accelerator_for(optim, train)
        self.accelerator.gradient_accumulation_steps = optim.grad_accum
        self.patch_size, self.run_name = patch_size, run_name
        self.hparams = hparams or {}
        self.preprocessing = preprocessing
        self.out_dir = Path(train.out_dir)
        self.step = 0
        self.micro_batches = 0  # the data position
        self.last_batch: dict | None = None
        self.probe_log: list[dict[str, Any]] = []
        self.lineage = ""  # a branch resume (runtime.engine.lineage_of) names its checkpoints step_N-bK
        self._lock = None  # the run folder's lock, held from _setup to the end of fit

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None) -> TrainResult:
        """Train to ``train.max_steps`` (or ``train.stop_after``), checkpointing and exporting.

        Raises:
            NonFiniteLossError: a loss or the gradient norm became NaN/inf (no checkpoint/model written).
        """
        acc, cfg = self.accelerator, self.cfg
        set_seed(cfg.seed, device_specific=True)  # masks and MoE noise differ between ranks
        model, optimizer, scheduler = self._setup(resume)
        end_step = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)
        result = TrainResult(out_dir=self.out_dir, steps=self.step)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.run_name, dynamic_ncols=True,
                   disable=not (acc.is_main_process and cfg.progress))
        sample_log = self._open_sample_log()
        speed = Throughput()
        batches = self.stream.batches(self.micro_batches)
        model.train()
        try:
            pending: list[tuple[int, dict, float]] = []  # (step, device scalar logs, lr) not yet read back
            while self.step < end_step:
                logs, expert_load = self._train_step(model, optimizer, batches, speed, sample_log)
                scheduler.step()
                self.step += 1
                pending.append((self.step, logs, scheduler.get_last_lr()[0]))
                bar.update(1)
                log_now, save_now = self.step % cfg.log_every == 0, self.step % cfg.save_every == 0
                probe_now = bool(self.probe_sets) and (self.step % self.probe.every == 0 or self.step == end_step)
                if log_now or save_now or probe_now or self.step == end_step:
                    self._read_back(pending, result, bar)
                if log_now or self.step == end_step:
                    self._log(result.logs[-1], expert_load, speed)
                if probe_now:
                    self._probe()
                if save_now or self.step == end_step:
                    result.checkpoint = self._save(model, optimizer, scheduler)
            return self._finish(model, result, speed)
        finally:
            bar.close()
            if sample_log is not None:
                sample_log.close()
            self._release()

    def _setup(self, resume: str | Path | None):
        """Optimiser and schedule, ``prepare``, restore a checkpoint, start the trackers."""
        acc, ocfg = self.accelerator, self.optim_cfg
        cuda = acc.device.type == "cuda"
        if self.cfg.compile:
            compile_step = getattr(self.objective, "compile_step", None)
            if compile_step is None:
                raise ValueError(f"train.compile: the {type(self.objective).__name__} objective has no compiled step; "
                                 "set train.compile = false")
            compile_step(mode="reduce-overhead" if cuda else None, channel_bucket=self.cfg.channel_bucket)
        self.objective.to(acc.device)  # before the optimiser: the fused kernel wants its parameters on their device
        optimizer = torch.optim.AdamW(param_groups(self.objective, ocfg.weight_decay), lr=ocfg.lr, betas=ocfg.betas,
                                      fused=acc.device.type in ("cuda", "cpu"))
        scheduler = make_scheduler(optimizer, ocfg.warmup_steps, self.cfg.max_steps, ocfg.min_lr / ocfg.lr)
        fresh_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        model, optimizer = acc.prepare(self.objective, optimizer)
        path = resolve_resume(resume, self.out_dir) if resume else None
        self._lock = claim_run_folder(acc, self.out_dir, fresh=path is None, overwrite=self.cfg.overwrite,
                                      what=f"{self.run_name} run")
        if path is not None:
            self._resume(path, model, optimizer, scheduler, fresh_groups)
        elif acc.is_main_process and (self.out_dir / BEST_DIR).is_dir():
            shutil.rmtree(self.out_dir / BEST_DIR)  # an earlier run's selected step is not this run's
        self.inner = acc.unwrap_model(model)
        self.seen = SeenFlags(self.inner)  # after the resume: starts from the checkpoint's flags
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.hparams:  # after the resume check: it records the settings this run really uses
                atomic_write_text(self.out_dir / "run_config.json", json.dumps(self.hparams, indent=2))
        acc.init_trackers(self.run_name, config=_flat_scalars(self.hparams))
        log_scan_backend(acc, selective_scan_backend, self.objective)
        return model, optimizer, scheduler

    def _resume(self, path: Path, model, optimizer, scheduler, fresh_groups) -> None:
        """Restore ``path``; refuse changed settings unless listed in ``train.resume_override`` (then apply them)."""
        acc = self.accelerator
        applied = check_resume_settings(read_train_state(path).get("config"), self.hparams, self.cfg.resume_override, path)
        state = load_checkpoint(acc, model, optimizer, path)
        self.step, self.micro_batches = state["step"], state["micro_batches"]
        restore_scheduler(scheduler, state.get("scheduler"), path / "train_state.json")
        self.lineage, later = lineage_of(path, self.out_dir)
        if later:
            acc.print(f"resume: {path} is not the newest checkpoint of its run (it went on to step {later[-1]}): this "
                      f"run branches from it and saves its checkpoints as step_NNNNNNNN-{self.lineage}; the other "
                      "run's checkpoints are kept, and --resume auto continues this branch")
        if applied:
            apply_overrides(optimizer, scheduler, fresh_groups, applied)
            acc.print("resume: applying changed settings (train.resume_override): " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in applied.items())
                + f"; learning rate now {scheduler.get_last_lr()[0]:.3g}")
        acc.print(f"resumed from {path} at step {self.step}")

    def _train_step(self, model, optimizer, batches: Iterator[dict], speed: Throughput, sample_log):
        """One optimiser step over ``grad_accum`` micro-batches; returns (mean scalar logs, expert load) as
        device tensors (nothing is read back here: see :meth:`_read_back`)."""
        acc, ocfg, cfg = self.accelerator, self.optim_cfg, self.cfg
        logs: dict[str, torch.Tensor] = {}
        expert_load = None
        for _ in range(ocfg.grad_accum):
            batch = next(batches)
            self.micro_batches += 1
            if sample_log is not None:
                sample_log.write("\n".join(sample_log_lines(batch, self.step)) + "\n")
            speed.add(batch["x"].shape[0] * acc.num_processes, batch_tokens(batch, self.patch_size) * acc.num_processes)
            self.last_batch = to_device(batch, acc.device)  # what the checks before a save or export run
            with acc.accumulate(model):
                with acc.autocast():
                    out = model(self.last_batch)
                self.seen.collect(self.inner)
                if cfg.inject_nan_at is not None and self.step + 1 == cfg.inject_nan_at:
                    out["loss"] = out["loss"] * float("nan")
                acc.backward(out["loss"])  # accelerate divides by grad_accum itself
                if acc.sync_gradients:
                    logs["grad_norm"] = clip_gradients(acc, model, ocfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in out.items():
                if key == "expert_load" and isinstance(value, torch.Tensor):
                    expert_load = value.detach().float().clone()  # a copy: a CUDA graph reuses its outputs
                elif isinstance(value, torch.Tensor) and value.numel() == 1:
                    logs[key] = logs.get(key, 0.0) + value.detach().float().reshape(()) / ocfg.grad_accum
                elif isinstance(value, (int, float)):
                    logs[key] = logs.get(key, 0.0) + torch.tensor(float(value) / ocfg.grad_accum, device=acc.device)
        return logs, expert_load

    def _read_back(self, pending: list, result: TrainResult, bar) -> None:
        """Read the pending steps' scalar logs back in one transfer, stop on the first non-finite one (every rank
        agrees through ``check_finite``), then record them in ``result`` and on the progress bar."""
        names = sorted(pending[0][1], key=lambda k: (k != "loss", k))  # the loss first: it names a bad step best
        values = torch.stack([torch.stack([logs[k] for k in names]) for _, logs, _ in pending]).cpu()
        bad = (~torch.isfinite(values)).any(1).nonzero().flatten().tolist()
        at = bad[0] if bad else len(pending) - 1
        advice = (f"Stopped at step {self.step}; no checkpoint or model was written after step {pending[0][0] - 1}. "
                  f"Last good checkpoint: {latest_checkpoint(self.out_dir) or 'none'} ({ADVICE})")
        what = f"at step {pending[at][0]}" if bad else f"at one of steps {pending[0][0]}-{pending[-1][0]}"
        check_finite(self.accelerator, dict(zip(names, values[at])), what=what, advice=advice)
        for (_, _, lr), row in zip(pending, values.tolist()):
            logs = {**dict(zip(names, row)), "lr": lr}
            result.losses.append(logs["loss"])
            result.logs.append(logs)
        bar.set_postfix(loss=f"{result.logs[-1]['loss']:.4f}", lr=f"{result.logs[-1]['lr']:.2e}")
        pending.clear()

    def _log(self, logs: dict[str, float], expert_load: torch.Tensor | None, speed: Throughput) -> None:
        scalars = {f"train/{k}": v for k, v in logs.items()}
        scalars.update({f"train/{k}": v for k, v in speed.window().items()})
        if expert_load is not None:
            scalars.update(_expert_scalars(expert_load))
        self.accelerator.log(scalars, step=self.step)

    def _probe(self) -> None:
        """Score the frozen backbone on the probe sets (main process), log it, keep the best step's weights."""
        acc = self.accelerator
        if acc.is_main_process:
            backbone = self.inner.backbone
            # the run's random stream (masks, MoE noise) goes on as if no probe had run: probing never changes training
            cuda = [acc.device] if acc.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                result = probe_backbone(backbone, self.probe_sets, folds=self.probe.folds, C=self.probe.C,
                                        seed=self.cfg.seed, device=acc.device, read_layer=self.probe.read_layer)
            scalars = {f"probe/{name}/{k}": v for name, s in result.scores.items() for k, v in s.items()}
            scalars["probe/score"] = result.score
            scalars["probe/score_se"] = result.se
            acc.log(scalars, step=self.step)
            keep_selected(self.out_dir, backbone, self.step, result, self.probe.tolerance)
            self.probe_log.append({"step": self.step, "score": result.score, "se": result.se, "scores": result.scores})
        acc.wait_for_everyone()

    def _check_weights(self, model, writing: str) -> None:
        """Stop before ``writing`` unless the weights and a forward pass on the last batch are finite.

        Every save and export comes through here (on every rank), so the ``*_seen`` flags are merged first.
        """
        self.seen.sync(self.accelerator, self.inner)
        advice = (f"Nothing was written: {writing}. Last good checkpoint: {latest_checkpoint(self.out_dir) or 'none'} "
                  f"({ADVICE})")
        check_model(self.accelerator, model, self.last_batch, what=f"after step {self.step}", advice=advice)

    def _save(self, model, optimizer, scheduler) -> Path:
        self._check_weights(model, f"no checkpoint for step {self.step}")
        state = {"step": self.step, "micro_batches": self.micro_batches, "scheduler": scheduler_state(scheduler),
                 "config": self.hparams or None}
        return save_checkpoint(self.accelerator, model, optimizer, self.out_dir, self.step, state,
                               keep=self.cfg.keep_checkpoints, lineage=self.lineage)

    def _finish(self, model, result: TrainResult, speed: Throughput) -> TrainResult:
        """Fill in the result; export ``{out_dir}/model`` unless the run stopped before ``max_steps``."""
        acc = self.accelerator
        rates = speed.total()
        result.samples_per_s, result.tokens_per_s = rates["samples_per_s"], rates["tokens_per_s"]
        result.steps = self.step
        result.checkpoint = result.checkpoint or latest_checkpoint(self.out_dir)
        if self.step < self.cfg.max_steps:
            result.stopped_early = True
            acc.print(f"stopped at step {self.step} of {self.cfg.max_steps} (train.stop_after); continue with --resume auto")
            return result
        self._check_weights(model, f"no model in {self.out_dir / 'model'}")
        result.export_dir = self.out_dir / "model"
        acc.wait_for_everyone()
        if acc.is_main_process:
            export(acc.unwrap_model(model), result.export_dir, self.preprocessing)
            best = read_best(self.out_dir) if self.probe_sets else None
            if best is not None and self.probe.select:
                # the selected step's weights, with the same config (the probe never changes the architecture)
                shutil.copyfile(self.out_dir / BEST_DIR / WEIGHTS_NAME, result.export_dir / WEIGHTS_NAME)
                result.selected_step = int(best["step"])
            if best is not None:
                (result.export_dir / "probe.json").write_text(json.dumps(
                    {"selected_step": result.selected_step, "best": best, "history": self.probe_log,
                     "layer": probe_layer(self.probe.read_layer, self.inner.backbone)}, indent=2))
        acc.wait_for_everyone()
        return result

    def _open_sample_log(self):
        if not self.cfg.log_sample_keys:
            return None
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        return open(self.out_dir / "logs" / f"samples-rank{self.accelerator.process_index}.jsonl", "a")

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
        if self._lock is not None:
            run_folder.release(self.out_dir)  # the run folder is free for the next run
            self._lock = None


def claim_run_folder(accelerator: Accelerator, out_dir: Path, *, fresh: bool, overwrite: bool, what: str):
    """``runtime.run_folder.claim`` on the main process; its refusal is raised on every rank (one rank raising
    alone would leave the others waiting in the next collective)."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = run_folder.claim(out_dir, fresh=fresh, overwrite=overwrite, what=what)
        except (run_folder.RunFolderError, FolderLockedError, LinkedPathError) as err:
            error = err
    if accelerator.num_processes > 1:
        message = [None if error is None else str(error)]
        broadcast_object_list(message)
        if message[0] is not None and error is None:
            error = run_folder.RunFolderError(message[0])
    if error is not None:
        raise error
    return lock


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
                   run_name: str, announce: str, resume: str | None = None,
                   patch_size: int = PATCH_SAMPLES) -> TrainResult:
    """The shared tail of ``pretrain/run.py`` and ``pretrain/tokenizer.py``: stream ``corpora``, train, export.

    ``config`` is the whole run config (with ``data``, ``optim`` and ``train`` sections); it is written to
    ``{out_dir}/run_config.json`` and logged as hyper-parameters. The shards' preprocessing parameters go
    to ``preprocess.json`` beside the exported model, so finetuning and prediction can reproduce them.
    ``announce`` is printed once, on the main process, before training.
    """
    stream = make_batch_stream(config.data, corpora, patch_size=patch_size, sfreq=SFREQ, seed=config.train.seed,
                               grad_accum=config.optim.grad_accum, world_size=accelerator.num_processes)
    hparams = to_dict(config)
    accelerator.print(announce)
    record = {"sfreq": SFREQ, "crop_s": config.data.crop_s, "longer_crops_s": config.data.longer_crops_s,
              "corpora": preprocessing_record(corpora)}
    probe = getattr(config, "probe", None)
    sets = []
    if probe is not None and probe.shards and hasattr(objective, "backbone"):
        check_probe_leak(probe.shards, [u for c in corpora for u in c.urls])
        sets = load_probe_sets(probe.shards, max_windows=probe.max_windows, task=probe.task)
        accelerator.print("validation probe every {} steps on {}".format(probe.every, ", ".join(
            f"{s.name} ({len(s.windows)} windows, {len(set(s.groups.tolist()))} groups)" for s in sets)))
    trainer = Trainer(objective, stream, config.optim, config.train, accelerator=accelerator, patch_size=patch_size,
                      run_name=run_name, hparams=hparams, preprocessing=record, probe=probe, probe_sets=sets)
    result = trainer.fit(resume=resume)
    if result.export_dir is not None and accelerator.is_main_process:
        contract_path = write_run_contract(result.export_dir, corpora, objective, config, result.steps, patch_size)
        write_export_card(result, objective, read_contract(contract_path.parent), hparams)
    return result


def write_export_card(result: TrainResult, objective: nn.Module, contract: Any, hparams: dict[str, Any]) -> Path:
    """``{export_dir}/README.md``: what the exported model is, its input contract and how it was trained."""
    model = getattr(objective, "backbone", None) or getattr(objective, "tokenizer", None) or objective
    n_params = sum(p.numel() for p in model.parameters())
    name = str(getattr(objective, "name", type(objective).__name__))
    cls = type(model).__name__
    what = (backbone_summary(model.config, n_params) if isinstance(model, EEGMamba)
            else f"A {cls} ({n_params / 1e6:.2f} M parameters; {(type(model).__doc__ or '').strip().splitlines()[0]})")
    load = f"from {type(model).__module__.split('.')[0]} import {cls}\nmodel = {cls}.from_pretrained(\"{result.export_dir}\")"
    path = result.export_dir / CARD_NAME
    path.write_text(export_card(result.export_dir, contract, what=what, objective=name, config=hparams,
                                final_loss=result.losses[-1] if result.losses else None, load=load,
                                selected_step=result.selected_step))
    return path


def run_entry(prog: str, description: str, config_class: type, train: Callable[..., TrainResult],
              report: Callable[[Any, TrainResult], str], argv: list[str] | None = None) -> int:
    """The command line of ``pretrain/run.py`` and ``python -m pretrain.train_tokenizer``: parse, train, print ``report`` (main process).

    ``train(config, resume=..., accelerator=...)``. Exit 0 done; 2 a bad config, data, checkpoint or resume (one line
    naming it; ``--debug`` / ``EEGFM_DEBUG=1`` for the traceback); 3 the NaN/inf guard stopped the run.
    """
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        config, extras = parse_cli(config_class, argv, prog=prog, description=description, extra_flags=RUN_FLAGS)
        acc = accelerator_for(config.optim, config.train)
        try:
            result = train(config, resume=extras.get("resume"), accelerator=acc)
        finally:
            acc.end_training()
        if acc.is_main_process:
            print(report(config, result))
        return 0

    return run_cli(prog, body, debug="--debug" in argv, exit_codes={NonFiniteLossError: 3})
