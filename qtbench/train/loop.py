"""SFT with a pruning method in the loop: set-up, epochs, resume, final save.

The trainer never knows which method runs.  :func:`train` sets the run up
(:func:`set_up`: method, data, model, optimizer, schedule), resumes it from
its last checkpoint or starts afresh (:func:`resume_or_start`,
:mod:`qtbench.train.checkpoint`), runs the epochs window by window
(:func:`run_epochs`; each window is one optimizer step,
:func:`qtbench.train.step.train_window`) and writes the checkpoint folder
(:func:`save_outputs`): model, tokenizer, ``trace.jsonl`` (one row per
micro-batch), ``train_summary.json`` (totals and the *effective* budget) and
``data_report.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import qtbench
from qtbench import fsdp as fsdp_tools
from qtbench import adapters, tracking
from qtbench.data.batches import TokenizedExample, tokenize_records
from qtbench.data.sources import LoadReport, load_configured_records
from qtbench.io import atomic_directory, read_json, write_json_atomic
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan, Method
from qtbench.methods.registry import build_method
from qtbench.models import check_model_path, count_parameters, load_model, load_reference, load_tokenizer, resolve_device
from qtbench.train import parallel, schedule
from qtbench.train.checkpoint import (
    TRACE_FILE, WEIGHTS_FILE, Position, clear_state, load_checkpoint, position_from_state, run_fingerprint,
    save_checkpoint, set_rng_state, truncate_lines,
)
from qtbench.train.step import Counters, StepContext, train_window

log = logging.getLogger(__name__)


def epoch_order(indices: list[int], seed: int, epoch: int, micro_batch: int,
                lengths: list[int] | None = None) -> list[list[int]]:
    """Micro-batches of one epoch: a seeded shuffle, or with ``lengths`` a
    bucketing shuffle (sort chunks of 50 micro-batches by length, shuffle the
    batch order) that cuts padding while keeping batches random."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    if lengths is not None:
        chunk = micro_batch * 50
        perm = [i for start in range(0, len(perm), chunk)
                for i in sorted(perm[start:start + chunk], key=lambda j: lengths[j])]
    batches = [perm[i:i + micro_batch] for i in range(0, len(perm), micro_batch)]
    if lengths is not None:
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in order]
    return batches


# --------------------------------------------------------------------------- set-up


@dataclass
class Run:
    """Everything :func:`set_up` prepares for one training run."""

    cfg: Mapping[str, Any]
    base_model: str
    out_dir: Path
    state_dir: Path
    device: torch.device
    rank: int
    world: int
    fsdp: bool
    method: Method
    tokenizer: Any
    records: list[dict]
    report: LoadReport
    examples: list[TokenizedExample]
    info: DatasetInfo
    scores: list[float] | None
    model: Any
    ref: Any
    frozen_base: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_steps: int
    fingerprint: str
    first_plan: EpochPlan | None = None
    max_steps: int | None = None

    @property
    def tcfg(self) -> Mapping[str, Any]:
        return self.cfg["train"]

    @property
    def run(self) -> Mapping[str, Any]:
        return self.cfg["run"]


def train(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    base_model: str,
    data: str,
    *,
    static_scores: str | Path | None = None,
    reference_model: str | None = None,
    state_dir: str | Path | None = None,
    wandb_dir: str | Path | None = None,
    progress: bool = True,
    meta: str | Path | None = None,
    token_scores: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on ``data`` with the run's method; write the
    checkpoint folder ``out_dir`` (model, tokenizer, train_summary.json,
    trace.jsonl) and return the summary.  ``meta``: the world's
    ``sft_meta.jsonl``, read only for a control that uses ground truth."""
    started = time.time()
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir.with_name(out_dir.name + ".state")
    setup = set_up(cfg, out_dir, state_dir, base_model, data, static_scores, reference_model, meta, token_scores)
    position = resume_or_start(setup)
    tracker = tracking.start_run(
        cfg.get("wandb", {}), name=setup.run["run_id"], group=cfg.get("experiment", "qtbench"), job_type="train",
        config=dict(cfg), tags=[setup.run["method"], setup.run["budget"], setup.run["model"], f"total={setup.run['total']}"],
        directory=wandb_dir,
    ) if setup.rank == 0 else tracking.Tracker(mode="disabled")  # one W&B run per training, from rank 0
    run_epochs(setup, position, tracker, started, progress)
    return save_outputs(setup, position, tracker, started)


def set_up(cfg: Mapping[str, Any], out_dir: Path, state_dir: Path, base_model: str, data: str,
           static_scores: str | Path | None, reference_model: str | None, meta: str | Path | None = None,
           token_scores: str | Path | None = None) -> Run:
    """Seeds, method, data, model (LoRA, FSDP), optimizer and schedule.

    Fails early, before any data is read or tokenized, on a bad method,
    budget or model folder."""
    run, tcfg, entry = cfg["run"], cfg["train"], cfg["model"]
    seed = int(run["seed"])
    device = resolve_device("auto")
    rank, world = parallel.init_from_env(device)
    device = parallel.local_device(device)
    if device.type == "cpu":
        torch.set_num_threads(int(tcfg.get("threads", 1)))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    method = build_method(run["method"], Budget(float(run["r_s"]), float(run["r_t"])), cfg.get("method_options", {}), seed,
                          variants=cfg.get("variants"))
    check_ground_truth(run["method"], method, meta)
    if method.needs_token_scores:  # TokenCleaning's global threshold: the token_scores rule's output
        if token_scores is None:
            raise ValueError(f"method {run['method']!r} needs the data set's token scores (threshold: global; "
                             "rule token_scores, qtbench train --token-scores)")
        from qtbench.methods.static import read_token_scores

        method.set_token_scores(read_token_scores(token_scores))
    check_model_path(base_model)
    if reference_model is not None:
        check_model_path(reference_model)
    tokenizer = load_tokenizer(base_model, entry)
    records, report, examples = _load_data(cfg, data, tokenizer)
    scores = None if static_scores is None else [float(s) for s in read_json(static_scores)["scores"]]
    if scores is not None and len(scores) != len(records):
        raise ValueError(f"{static_scores}: {len(scores)} scores for {len(records)} records")
    info = DatasetInfo(records, [e.response_length for e in examples], scores,
                       record_labels(meta, report, cfg["data"].get("max_records")) if method.uses_ground_truth else None)
    model = _load_trainable_model(base_model, entry, tcfg, device)
    fsdp = bool(tcfg.get("fsdp")) and world > 1
    if fsdp:
        fsdp_tools.shard_model(model)
    model.train()
    required = method.required_stats
    if "ref_nll" in required and reference_model is None:
        raise ValueError(f"method {run['method']!r} needs a reference model (models.{entry['name']}.reference)")
    # the reference's own revision / dtype, and a tokenizer check against the base model's
    ref = load_reference(entry, reference_model, tokenizer, device).eval() if "ref_nll" in required else None
    frozen_base = load_model(base_model, entry, device).eval() if "base_nll" in required else None
    total_steps, first_plan = _plan_steps(tcfg, method, info, len(examples), world)
    optimizer = make_optimizer(model, float(tcfg["lr"]), float(tcfg["weight_decay"]))
    scheduler = schedule.make_scheduler(optimizer, total_steps, float(tcfg["warmup_ratio"]))
    return Run(cfg, base_model, out_dir, state_dir, device, rank, world, fsdp, method, tokenizer, records, report,
               examples, info, scores, model, ref, frozen_base, optimizer, scheduler, total_steps,
               run_fingerprint(cfg, base_model, records, scores, reference_model), first_plan,
               int(tcfg["max_steps"]) if tcfg.get("max_steps") else None)


def check_ground_truth(name: str, method: Method, meta: str | Path | None) -> None:
    """A control (``uses_ground_truth``) needs the world's meta file, before
    anything is loaded."""
    if not method.uses_ground_truth:
        return
    if meta is None:
        raise ValueError(f"method {name!r} is a control that reads the synthetic world's ground-truth labels: "
                         "give the world's sft_meta.jsonl (qtbench train --meta); it runs only on data.source: world")
    if not Path(meta).is_file():
        raise FileNotFoundError(f"method {name!r}: the ground-truth file {meta} does not exist "
                                "(expected the world's sft_meta.jsonl)")


def record_labels(meta: str | Path, report: LoadReport, max_records: int | None = None) -> list[str]:
    """Each loaded record's ground-truth label, matched to its position in the
    data file (the loader's skipped records and ``max_records`` cut accounted for)."""
    from qtbench.io import read_jsonl
    from qtbench.world.labels import labels_for_records

    bad = {index for index, _ in report.bad}
    kept_raw = [i for i in range(report.total) if i not in bad]
    rows = read_jsonl(meta)
    cut = max_records is not None and report.total == max_records  # the first records of a longer file
    if len(rows) < report.total or (len(rows) > report.total and not cut):
        raise ValueError(f"{meta}: {len(rows)} metadata rows for {report.total} records of {report.source}: "
                         "the meta file does not belong to this data")
    return labels_for_records(rows, kept_raw, str(meta))


def _load_data(cfg: Mapping[str, Any], data: str, tokenizer: Any
               ) -> tuple[list[dict], LoadReport, list[TokenizedExample]]:
    """The SFT records, the report of what was dropped, and their tokenization."""
    dcfg, tcfg = cfg["data"], cfg["train"]
    records, report = load_configured_records(data, dcfg)
    examples = tokenize_records(records, tokenizer, int(tcfg["max_length"]), bool(cfg["model"].get("chat_template", False)))
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%d of %d records were longer than max_length=%d and were truncated", truncated, len(examples), tcfg["max_length"])
    return records, report, examples


def _load_trainable_model(base_model: str, entry: Mapping[str, Any], tcfg: Mapping[str, Any], device: torch.device) -> Any:
    """The base model with gradient checkpointing and LoRA as configured."""
    model = load_model(base_model, entry, device)
    if tcfg.get("gradient_checkpointing"):
        # recompute each layer's activations in the backward instead of keeping them (memory for
        # 8 x 2048-token micro-batches on 7B+ models); non-reentrant: works with LoRA and FSDP
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return add_lora(model, tcfg.get("lora") or {})


def _plan_steps(tcfg: Mapping[str, Any], method: Method, info: DatasetInfo, n_examples: int, world: int):
    """The first estimate of the optimizer steps the schedule spans, and epoch 0's plan."""
    micro = int(tcfg["micro_batch_size"])
    if micro < world:
        raise ValueError(f"train.micro_batch_size={micro} is smaller than the {world} processes: every process "
                         "needs at least one row of each micro-batch")
    first_plan = method.plan_epoch(0, int(tcfg["epochs"]), info)
    first_size = len(first_plan.indices) if first_plan is not None else n_examples
    first_steps = schedule.steps_per_epoch(first_size, micro, int(tcfg["grad_accum"]))
    return _schedule_total(tcfg, method, n_examples, 0, first_steps, first_size), first_plan


def _schedule_total(tcfg: Mapping[str, Any], method: Method, n_examples: int, epoch: int, epoch_steps: int,
                    epoch_size: int, steps_before: int = 0) -> int:
    """Steps before this epoch + this epoch's + a forecast for each later epoch
    (the method's ``expected_epoch_size``, else this epoch's size), capped by
    ``max_steps`` (see :mod:`qtbench.train.schedule`)."""
    epochs, micro, accum = int(tcfg["epochs"]), int(tcfg["micro_batch_size"]), int(tcfg["grad_accum"])
    later = 0
    for future in range(epoch + 1, epochs):
        size = method.expected_epoch_size(future, epochs, n_examples)
        later += schedule.steps_per_epoch(epoch_size if size is None else size, micro, accum)
    total = steps_before + epoch_steps + later
    return min(total, int(tcfg["max_steps"])) if tcfg.get("max_steps") else total


# --------------------------------------------------------------------------- resume


def resume_or_start(setup: Run) -> Position:
    """The position of the run's last checkpoint, with model, optimizer,
    scheduler, method and RNG states restored - or a fresh start (the state
    folder cleared).  Every rank resumes, or none does."""
    rank, world, state_dir = setup.rank, setup.world, setup.state_dir
    trace_path = state_dir / TRACE_FILE
    resumed = load_checkpoint(state_dir, setup.fingerprint)
    if parallel.global_sum(int(resumed is not None)) < world:
        resumed = None
    if resumed is not None:
        ckpt_dir, state = resumed
        trace_ok = rank != 0 or truncate_lines(trace_path, int(state["counters"]["trace_rows"]))
        if not parallel.broadcast_object(trace_ok):
            log.warning("%s has fewer rows than checkpoint %s expects; starting afresh", trace_path, ckpt_dir)
            resumed = None
    if resumed is None:
        if rank == 0:  # every rank has read what it needs: the decision above was collective
            clear_state(state_dir)
            state_dir.mkdir(parents=True, exist_ok=True)
        parallel.barrier()  # the state folder is ready before anyone writes to it
        return Position(plan=setup.first_plan, planned_epoch=0)
    ckpt_dir, state = resumed
    _restore(setup, ckpt_dir, state)
    position = position_from_state(state)
    log.info("resumed %s from %s at epoch %d, step %d", setup.run["run_id"], ckpt_dir, position.epoch,
             position.counters.optimizer_steps)
    parallel.barrier()
    return position


def _restore(setup: Run, ckpt_dir: Path, state: Mapping[str, Any]) -> None:
    """Load a checkpoint's weights, optimizer, scheduler, method and RNG states."""
    from safetensors.torch import load_file, load_model as load_weights

    if setup.fsdp:
        fsdp_tools.load_full_state_dict(setup.model, load_file(str(ckpt_dir / WEIGHTS_FILE)))
        fsdp_tools.load_full_optimizer_state(setup.model, setup.optimizer, state["optimizer"])
    elif adapters.is_lora_model(setup.model):  # a LoRA checkpoint holds the trainable tensors only
        adapters.load_trainable_state(setup.model, load_file(str(ckpt_dir / WEIGHTS_FILE)))
        setup.optimizer.load_state_dict(state["optimizer"])
    else:
        load_weights(setup.model, str(ckpt_dir / WEIGHTS_FILE), strict=True, device=str(setup.device))
        setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    setup.method.load_state_dict(state["method"])
    set_rng_state(state["rng"])


# --------------------------------------------------------------------------- epochs


def run_epochs(setup: Run, position: Position, tracker: Any, started: float, progress: bool) -> None:
    """Every remaining window of every remaining epoch: one optimizer step each."""
    tcfg, counters = setup.tcfg, position.counters
    epochs, micro, accum = int(tcfg["epochs"]), int(tcfg["micro_batch_size"]), int(tcfg["grad_accum"])
    lengths = [len(e.input_ids) for e in setup.examples]
    start_time = counters.wall_time_s
    bar = _progress(setup.total_steps, counters.optimizer_steps, setup.run["run_id"], progress and setup.rank == 0)
    # rank 0 writes the trace, the checkpoints and the model; every rank holds the same counters
    trace_path = setup.state_dir / TRACE_FILE
    with (trace_path.open("a", encoding="utf-8") if setup.rank == 0 else contextlib.nullcontext()) as trace:
        ctx = StepContext(setup.model, setup.method, setup.examples, setup.tokenizer.pad_token_id, setup.device,
                          counters, int(tcfg.get("stats_chunk", 128)), setup.ref, setup.frozen_base, trace,
                          tuple(getattr(setup.tokenizer, "all_special_ids", None) or ()))
        for epoch in range(position.epoch, epochs):
            if _finished(setup, counters):
                break
            plan = _epoch_plan(setup, position, epoch)
            indices = plan.indices if plan is not None else list(range(len(setup.examples)))
            batches = epoch_order(indices, int(setup.run["seed"]), epoch, micro,
                                  lengths if tcfg.get("bucket_by_length") else None)
            windows = [batches[i:i + accum] for i in range(0, len(batches), accum)]
            start_window = position.window if epoch == position.epoch else 0
            setup.total_steps = _schedule_total(tcfg, setup.method, len(setup.examples), epoch, len(windows),
                                                len(indices), counters.optimizer_steps - start_window)
            schedule.resize(setup.scheduler, setup.total_steps)
            position.epoch = epoch
            # the first trace row of an epoch records an epoch-level plan, so that
            # records the plan left out count as dropped (noise recall)
            plan_row = ({"id": sorted(int(i) for i in plan.indices), "n_records": len(setup.examples)}
                        if plan is not None and start_window == 0 else None)
            for w in range(start_window, len(windows)):
                loss = train_window(ctx, windows[w], epoch, plan.weights if plan is not None else {}, plan_row)
                plan_row = None
                _optimizer_step(setup, counters, loss)
                counters.wall_time_s = start_time + (time.time() - started)
                position.window = w + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                _log_and_checkpoint(setup, position, tracker, trace, epoch)
                if _finished(setup, counters):
                    break
            position.epoch, position.window = epoch + 1, 0
    if bar is not None:
        bar.close()
    counters.wall_time_s = start_time + (time.time() - started)


def _finished(setup: Run, counters: Counters) -> bool:
    """``train.max_steps`` reached (otherwise a run ends with its last epoch)."""
    return setup.max_steps is not None and counters.optimizer_steps >= setup.max_steps


def _epoch_plan(setup: Run, position: Position, epoch: int):
    """The epoch's plan (which records, with which weights), decided once on
    rank 0's method and broadcast; kept in the position for a resume."""
    if position.planned_epoch != epoch:
        plan = setup.method.plan_epoch(epoch, int(setup.tcfg["epochs"]), setup.info)
        position.plan, position.planned_epoch = parallel.broadcast_object(plan), epoch
    return position.plan


def _optimizer_step(setup: Run, counters: Counters, loss: float) -> None:
    """Sum the gradients over ranks (FSDP reduce-scatters them itself), clip, step."""
    if not setup.fsdp:
        parallel.all_reduce_gradients(setup.model.parameters())
    if setup.tcfg.get("max_grad_norm"):
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), float(setup.tcfg["max_grad_norm"]))
    setup.optimizer.step()
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    counters.optimizer_steps += 1
    counters.last_loss = loss


def _log_and_checkpoint(setup: Run, position: Position, tracker: Any, trace: Any, epoch: int) -> None:
    """Log every ``log_every`` steps; checkpoint every ``checkpoint_every`` steps
    (never after the last: the final save follows)."""
    counters, tcfg = position.counters, setup.tcfg
    if counters.optimizer_steps % int(tcfg["log_every"]) == 0:
        tracker.log({"train/loss": counters.last_loss, "train/lr": setup.scheduler.get_last_lr()[0],
                     "train/samples_trained": counters.samples_trained,
                     "train/loss_tokens": counters.loss_tokens, "epoch": epoch},
                    step=counters.optimizer_steps)
    every = int(tcfg.get("checkpoint_every") or 0)
    if every and counters.optimizer_steps % every == 0 and counters.optimizer_steps < setup.total_steps:
        gathered = (fsdp_tools.full_state_dict(setup.model), fsdp_tools.full_optimizer_state(setup.model, setup.optimizer)
                    ) if setup.fsdp else None  # collective: every rank gathers, rank 0 writes
        if setup.rank == 0:
            trace.flush()
            os.fsync(trace.fileno())  # the trace holds every row the checkpoint counts
            save_checkpoint(setup.state_dir, setup.model, setup.optimizer, setup.scheduler, setup.method, position,
                            setup.fingerprint, gathered)
        parallel.barrier()


# --------------------------------------------------------------------------- outputs


def save_outputs(setup: Run, position: Position, tracker: Any, started: float) -> dict[str, Any]:
    """Write the checkpoint folder atomically (rank 0), clear the state folder,
    and return the summary."""
    counters = position.counters
    epochs = int(setup.tcfg["epochs"])
    summary = _summary(setup.cfg, counters, setup.examples, epochs, setup.model, setup.report,
                       sum(e.truncated for e in setup.examples), setup.total_steps)
    summary["processes"], summary["fsdp"] = setup.world, setup.fsdp
    # the schedule ends at its end value on the run's last step (qtbench.train.schedule)
    summary["lr_schedule_steps"] = setup.scheduler.lr_lambdas[0].total_steps
    summary["final_lr"] = setup.scheduler.get_last_lr()[0]
    final_weights = fsdp_tools.full_state_dict(setup.model) if setup.fsdp else None  # collective
    if setup.rank != 0:
        parallel.barrier()  # rank 0 writes the outputs
        return summary
    with atomic_directory(setup.out_dir) as tmp:
        if final_weights is None and adapters.saves_adapter(setup.tcfg):  # LoRA: the adapter, not a merged copy
            adapters.save_adapter(setup.model, setup.tokenizer, tmp, setup.base_model, setup.cfg["model"])
        else:
            final = (merged_model(setup.model) if final_weights is None
                     else _unsharded_copy(final_weights, setup.base_model, setup.cfg["model"], setup.tcfg))
            final.save_pretrained(tmp, safe_serialization=True)
            setup.tokenizer.save_pretrained(tmp)
        shutil.copyfile(setup.state_dir / TRACE_FILE, tmp / "trace.jsonl")
        write_json_atomic(tmp / "train_summary.json", summary)
        write_json_atomic(tmp / "data_report.json", setup.report.as_dict())
    tracker.summary({f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    tracker.finish()
    clear_state(setup.state_dir)
    parallel.barrier()
    return summary


def _unsharded_copy(weights: dict[str, torch.Tensor], base_model: str, entry: Mapping[str, Any],
                    tcfg: Mapping[str, Any]) -> Any:
    """A plain model on the CPU holding a sharded run's gathered weights (LoRA
    merged), for ``save_pretrained``."""
    dtype = next((t.dtype for t in weights.values() if t.is_floating_point()), torch.float32)
    entry = dict(entry, dtype=str(dtype).removeprefix("torch."))  # load in the trained dtype (bf16 on GPUs), not fp32
    model = add_lora(load_model(base_model, entry, torch.device("cpu")), tcfg.get("lora") or {})
    model.load_state_dict(weights, strict=True)
    return merged_model(model)


def make_optimizer(model: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch supports it (CPU and CUDA): the per-tensor default
    costs as much as a tiny model's whole backward pass and would hide what
    pruning saves.  The update is the same AdamW, within float rounding."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def add_lora(model: Any, lora: Mapping[str, Any]) -> Any:
    """``model`` with LoRA adapters (``train.lora.rank > 0``; peft), only the
    adapters trainable; ``model`` itself for rank 0 (full fine-tuning).  The
    stats pass and the loss run through the adapted model, as the paper's."""
    rank = int(lora.get("rank", 0) or 0)
    if rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    target = lora.get("target", "all-linear")
    config = LoraConfig(r=rank, lora_alpha=float(lora.get("alpha") or 2 * rank), lora_dropout=float(lora.get("dropout", 0.0)),
                        target_modules=target if isinstance(target, str) else list(target), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged_model(model: Any) -> Any:
    """What the checkpoint folder holds: the base model with the LoRA weights
    merged in (a plain model lm-eval loads), or ``model`` itself."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def _summary(cfg, counters: Counters, examples, epochs, model, report, truncated, total_steps) -> dict[str, Any]:
    """Totals, the effective budget, and FLOPs relative to full data.

    FLOPs use the usual 2N per token for a forward and 4N for a backward:
    stats pass 2N x scored tokens, training 6N x trained tokens; full data is
    6N x every token of every epoch."""
    run = cfg["run"]
    n_params = count_parameters(model)
    all_tokens = sum(len(e.input_ids) for e in examples)
    response_tokens = sum(e.response_length for e in examples)
    flops = 2 * n_params * counters.input_tokens_scored + 6 * n_params * counters.input_tokens_trained
    full_flops = 6 * n_params * all_tokens * epochs
    return {
        "qtbench_version": qtbench.__version__,
        "run_id": run["run_id"], "model": run["model"], "method": run["method"], "budget": run["budget"],
        "r_s": float(run["r_s"]), "r_t": float(run["r_t"]), "total_budget": float(run["total"]), "seed": run["seed"],
        "epochs": epochs, "planned_steps": total_steps,
        **{k: v for k, v in counters.as_dict().items() if k not in ("loss_sum", "trace_rows")},
        "n_records": len(examples), "bad_records": len(report.bad), "truncated_records": truncated,
        "n_params": n_params,
        "effective_sample_fraction": counters.samples_trained / max(1, len(examples) * epochs),
        "effective_token_fraction": counters.loss_tokens / max(1, response_tokens * epochs),
        "flops": flops, "flops_full_data": full_flops, "flops_relative": flops / max(1, full_flops),
        "mean_loss": counters.loss_sum / max(1, counters.optimizer_steps),
        # share of the forward/backward grid that was padding (train.bucket_by_length cuts it)
        "padding_fraction_trained": 1 - counters.input_tokens_trained / max(1, counters.input_positions_trained),
        "padding_fraction_scored": 1 - counters.input_tokens_scored / max(1, counters.input_positions_scored),
    }


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, mininterval=2.0,
                disable=os.environ.get("QTBENCH_NO_PROGRESS") == "1")
