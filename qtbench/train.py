"""SFT with a pruning method in the loop: stats pass -> select -> masked update.

The trainer never knows which method runs.  Per optimizer step it takes a
window of ``grad_accum`` micro-batches and, for each micro-batch:

1. asks the method for a :class:`~qtbench.pruning.Selection` - after a no-grad
   stats pass when the method needs statistics (``full`` needs none);
2. gathers the kept samples into a smaller batch (dropped samples cost no
   forward/backward), trims padding, sets labels to -100 where ``token_keep``
   is false, and back-propagates the kept tokens' cross-entropy.

Loss normalisation: the sum of kept-token cross-entropies (times each sample's
weight) divided by the number of kept tokens in the whole accumulation window,
so ``grad_accum=2, micro_batch=2`` equals ``grad_accum=1, micro_batch=4`` when
nothing is pruned.  (The authors' code averages per micro-batch; with
``grad_accum=1`` the two agree.)

Every micro-batch appends a row to ``trace.jsonl`` (kept samples and tokens,
the method's thresholds and quadrant counts); ``train_summary.json`` holds the
totals and the *effective* budget.  A resumable checkpoint (weights,
optimizer, scheduler, RNG, data position, epoch plan, method state, trace
length) is written atomically every ``checkpoint_every`` steps into the state
folder (``<out>.state`` or ``--state-dir``), and a restarted job continues
from it, ending with the same weights and trace as an uninterrupted run
(docs/reliability.md).  A checkpoint resumes only the run that wrote it (a
fingerprint of config, base model and data); one that cannot be read safely
(``weights_only=True``) costs a restart, never a wrong resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

import qtbench
from qtbench import distributed as dist_tools
from qtbench import sharding
from qtbench import adapters, tracking
from qtbench.data import IGNORE_INDEX, collate, tokenize_records
from qtbench.io import atomic_directory, committed_directory, read_json, write_json_atomic
from qtbench.models import check_model_path, count_parameters, load_model, load_tokenizer, resolve_device
from qtbench.pruning import BatchStats, Budget, DatasetInfo, EpochPlan, build_method
from qtbench.sft_data import load_records
from qtbench.stats import compute_batch_stats

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
TRACE_FILE = "trace.jsonl"
CHECKPOINT_FORMAT = 2
#: Everything the trainer writes into the state folder.
_STATE_ENTRIES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", TRACE_FILE)


# --------------------------------------------------------------------------- data order


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


# --------------------------------------------------------------------------- state


@dataclass
class Counters:
    """Running totals that make the effective budget and FLOPs."""

    optimizer_steps: int = 0
    micro_batches: int = 0
    samples_seen: int = 0
    samples_trained: int = 0
    response_tokens_seen: int = 0
    loss_tokens: int = 0
    input_tokens_seen: int = 0
    input_tokens_trained: int = 0
    input_tokens_scored: int = 0
    #: padded grid sizes (rows x width) the forward passes ran on: padding costs compute too
    input_positions_trained: int = 0
    input_positions_scored: int = 0
    empty_micro_batches: int = 0
    loss_sum: float = 0.0
    last_loss: float = float("nan")
    trace_rows: int = 0
    wall_time_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Position:
    epoch: int = 0
    window: int = 0
    plan: EpochPlan | None = None
    planned_epoch: int | None = None  # the epoch that ``plan`` belongs to
    counters: Counters = field(default_factory=Counters)


def _rng_state() -> dict[str, Any]:
    """Every RNG the loop may draw from, as tensors, lists and numbers only, so
    that the trainer state loads with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))


#: Train settings a checkpoint's fingerprint ignores (besides the ``wandb``
#: section): a run may resume with another checkpoint interval or thread count.
_FINGERPRINT_IGNORED_TRAIN_KEYS = ("checkpoint_every", "log_every", "threads")


def run_fingerprint(cfg: Mapping[str, Any], base_model: str, records: list[dict], *extra: Any) -> str:
    """A hash of what determines the trained weights: the run config (less
    W&B and logging settings), the base model, the records and any extras
    (static scores, reference model).  A checkpoint resumes only a run with
    the same fingerprint; a changed config starts afresh."""
    import hashlib

    view = {k: v for k, v in cfg.items() if k != "wandb"}
    view["train"] = {k: v for k, v in dict(cfg.get("train", {})).items() if k not in _FINGERPRINT_IGNORED_TRAIN_KEYS}
    digest = hashlib.sha256()
    for part in (view, str(base_model), records, *extra):
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def save_checkpoint(state_dir: Path, model: Any, optimizer: Any, scheduler: Any, method: Any,
                    position: Position, fingerprint: str | None = None,
                    gathered: tuple[dict, dict] | None = None) -> None:
    """Write the resumable state atomically (a folder renamed into place).

    ``checkpoint/model.safetensors`` holds the exact ``state_dict`` (tied
    weights once), ``trainer_state.pt`` the optimizer, scheduler, RNG states,
    data position, epoch plan, counters and method state (tensors, lists and
    numbers only: it loads with ``weights_only=True``) and ``checkpoint.json``
    a readable summary with the run's fingerprint.  ``gathered`` is a sharded
    (FSDP) model's full (weights, optimizer state), gathered on rank 0."""
    from safetensors.torch import save_model

    target = state_dir / "checkpoint"
    plan = position.plan
    counters = position.counters
    with atomic_directory(target) as tmp:
        if gathered is None and adapters.is_lora_model(model):  # the adapters only: the rest is the base model
            from safetensors.torch import save_file

            save_file(adapters.trainable_state(model), str(tmp / WEIGHTS_FILE))
        elif gathered is None:
            save_model(model, str(tmp / WEIGHTS_FILE), force_contiguous=True)
        else:
            from safetensors.torch import save_file

            save_file(gathered[0], str(tmp / WEIGHTS_FILE))
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "optimizer": optimizer.state_dict() if gathered is None else gathered[1],
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "epoch": position.epoch,
                "window": position.window,
                "plan": None if plan is None else {"indices": list(plan.indices), "weights": dict(plan.weights),
                                                   "trace": dict(plan.trace)},
                "planned_epoch": position.planned_epoch,
                "counters": counters.as_dict(),
                "method": method.state_dict(),
            },
            tmp / STATE_FILE,
        )
        (tmp / META_FILE).write_text(json.dumps({  # the folder is committed (and synced) as a whole
            "format": CHECKPOINT_FORMAT, "qtbench_version": qtbench.__version__, "fingerprint": fingerprint,
            "optimizer_steps": counters.optimizer_steps, "epoch": position.epoch, "window": position.window,
            "trace_rows": counters.trace_rows,
        }, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_checkpoint(state_dir: Path, fingerprint: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The last committed checkpoint under ``state_dir`` and its trainer state,
    or ``None`` (with a warning saying why) when there is none, when it was
    written for another run config, or when it cannot be read safely."""
    target = committed_directory(state_dir / "checkpoint")
    if target is None:
        return None
    missing = [name for name in (STATE_FILE, WEIGHTS_FILE, META_FILE) if not (target / name).is_file()]
    if missing:
        log.warning("ignoring incomplete checkpoint %s (missing %s); starting afresh", target, ", ".join(missing))
        return None
    try:
        meta = read_json(target / META_FILE)
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to a different run config or data; starting afresh", target)
            return None
        state = torch.load(target / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint costs a restart, never a wrong resume
        log.warning("cannot read checkpoint %s (%s: %s); starting afresh", target, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        log.warning("checkpoint %s has an unknown format; starting afresh", target)
        return None
    return target, state


def _clear_state(state_dir: Path) -> None:
    """Remove what the trainer keeps in ``state_dir`` - and nothing else, so a
    mistaken ``--state-dir`` never deletes a user's files."""
    for name in _STATE_ENTRIES:
        entry = state_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # not empty: something else lives there


# --------------------------------------------------------------------------- the step


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


def _trim(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a right-padded batch, cut to their longest attended length."""
    sub = {k: v[rows] for k, v in batch.items()}
    width = int(sub["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in sub.items()}


def masked_token_losses(model: Any, batch: dict[str, torch.Tensor], token_keep: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: summed cross-entropy over kept loss positions, their count,
    and the (detached) mean cross-entropy over *all* response positions - what
    loss-history methods such as InfoBatch record, whatever a token pruner kept.

    The labels are shifted (and padded with -100) instead of the logits, so the
    ``[B, T, V]`` logits are never copied; they are upcast to float32 only when
    the model runs in lower precision."""
    width = batch["labels"].shape[1]
    labels = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)  # position t predicts token t+1
    keep = F.pad(token_keep[:, : width - 1].to(labels.device), (0, 1), value=False) & (labels != IGNORE_INDEX)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX,
                         reduction="none").view(labels.shape)
    response = labels != IGNORE_INDEX
    full_mean = (ce.detach() * response).sum(dim=1) / response.sum(dim=1).clamp_min(1)
    return (ce * keep).sum(dim=1), keep.sum(dim=1), full_mean


# --------------------------------------------------------------------------- the loop


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
) -> dict[str, Any]:
    """Fine-tune ``base_model`` on ``data`` with the run's method; write the
    checkpoint folder ``out_dir`` (model, tokenizer, train_summary.json,
    trace.jsonl) and return the summary."""
    started = time.time()
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir.with_name(out_dir.name + ".state")
    run, tcfg, entry = cfg["run"], cfg["train"], cfg["model"]
    seed = int(run["seed"])
    device = resolve_device("auto")
    rank, world = dist_tools.init_from_env(device)
    device = dist_tools.local_device(device)
    if device.type == "cpu":
        torch.set_num_threads(int(tcfg.get("threads", 1)))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    # fail early, before any data is read or tokenized: method, budget, model folders
    budget = Budget(float(run["r_s"]), float(run["r_t"]))
    method = build_method(run["method"], budget, cfg.get("method_options", {}), seed)
    check_model_path(base_model)
    if reference_model is not None:
        check_model_path(reference_model)
    tokenizer = load_tokenizer(base_model, entry)
    dcfg = cfg["data"]
    records, report = load_records(data, dcfg.get("format", "auto"), dcfg.get("split", "train"),
                                   dcfg.get("revision"), dcfg.get("on_bad_record", "skip"), dcfg.get("max_records"))
    examples = tokenize_records(records, tokenizer, int(tcfg["max_length"]), bool(entry.get("chat_template", False)))
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%d of %d records were longer than max_length=%d and were truncated", truncated, len(examples), tcfg["max_length"])
    lengths = [len(e.input_ids) for e in examples]
    scores = None if static_scores is None else [float(s) for s in read_json(static_scores)["scores"]]
    if scores is not None and len(scores) != len(records):
        raise ValueError(f"{static_scores}: {len(scores)} scores for {len(records)} records")
    info = DatasetInfo(records, [e.response_length for e in examples], scores)

    model = load_model(base_model, entry, device)
    if tcfg.get("gradient_checkpointing"):
        # recompute each layer's activations in the backward instead of keeping them (memory for
        # 8 x 2048-token micro-batches on 7B+ models); non-reentrant: works with LoRA and FSDP
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model, tcfg.get("lora") or {})
    fsdp = bool(tcfg.get("fsdp")) and world > 1
    if fsdp:
        sharding.shard_model(model)
    model.train()
    required = method.required_stats
    ref = load_model(reference_model, entry, device).eval() if "ref_nll" in required else None
    if "ref_nll" in required and reference_model is None:
        raise ValueError(f"method {run['method']!r} needs a reference model (models.{entry['name']}.reference)")
    frozen_base = load_model(base_model, entry, device).eval() if "base_nll" in required else None

    epochs, micro, accum = int(tcfg["epochs"]), int(tcfg["micro_batch_size"]), int(tcfg["grad_accum"])
    if micro < world:
        raise ValueError(f"train.micro_batch_size={micro} is smaller than the {world} processes: every process "
                         "needs at least one row of each micro-batch")
    first_plan = method.plan_epoch(0, epochs, info)
    per_epoch = len(first_plan.indices) if first_plan is not None else len(examples)
    total_steps = math.ceil(math.ceil(per_epoch / micro) / accum) * epochs
    if tcfg.get("max_steps"):
        total_steps = min(total_steps, int(tcfg["max_steps"]))
    optimizer = make_optimizer(model, float(tcfg["lr"]), float(tcfg["weight_decay"]))
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, round(float(tcfg["warmup_ratio"]) * total_steps), max(total_steps, 1))

    position = Position(plan=first_plan, planned_epoch=0)
    trace_path = state_dir / TRACE_FILE
    fingerprint = run_fingerprint(cfg, base_model, records, scores, reference_model)
    resumed = load_checkpoint(state_dir, fingerprint)
    if dist_tools.global_sum(int(resumed is not None)) < world:
        resumed = None  # every rank resumes, or none does
    if resumed is not None:
        ckpt_dir, state = resumed
        trace_ok = rank != 0 or _truncate_lines(trace_path, int(state["counters"]["trace_rows"]))
        if not dist_tools.broadcast_object(trace_ok):
            log.warning("%s has fewer rows than checkpoint %s expects; starting afresh", trace_path, ckpt_dir)
            resumed = None
    if resumed is not None:
        from safetensors.torch import load_model as load_weights

        if fsdp:
            from safetensors.torch import load_file

            sharding.load_full_state_dict(model, load_file(str(ckpt_dir / WEIGHTS_FILE)))
            sharding.load_full_optimizer_state(model, optimizer, state["optimizer"])
        elif adapters.is_lora_model(model):
            from safetensors.torch import load_file

            adapters.load_trainable_state(model, load_file(str(ckpt_dir / WEIGHTS_FILE)))
            optimizer.load_state_dict(state["optimizer"])
        else:
            load_weights(model, str(ckpt_dir / WEIGHTS_FILE), strict=True, device=str(device))
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        _set_rng_state(state["rng"])
        plan = state["plan"]
        position = Position(int(state["epoch"]), int(state["window"]),
                            None if plan is None else EpochPlan([int(i) for i in plan["indices"]],
                                                                {int(k): float(v) for k, v in plan["weights"].items()},
                                                                dict(plan["trace"])),
                            state["planned_epoch"], Counters(**state["counters"]))
        log.info("resumed %s from %s at epoch %d, step %d", run["run_id"], ckpt_dir, position.epoch,
                 position.counters.optimizer_steps)
    elif rank == 0:  # every rank has read what it needs: the decision above was collective
        _clear_state(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
    dist_tools.barrier()  # the state folder is ready before anyone writes to it

    tracker = tracking.start_run(
        cfg.get("wandb", {}), name=run["run_id"], group=cfg.get("experiment", "qtbench"), job_type="train",
        config=dict(cfg), tags=[run["method"], run["budget"], run["model"], f"total={run['total']}"], directory=wandb_dir,
    ) if rank == 0 else tracking.Tracker(mode="disabled")  # one W&B run per training, from rank 0
    counters = position.counters
    counters_start_time = counters.wall_time_s
    bar = _progress(total_steps, counters.optimizer_steps, run["run_id"], progress and rank == 0)
    done = counters.optimizer_steps >= total_steps
    # rank 0 writes the trace, the checkpoints and the model; every rank holds the same counters
    with (trace_path.open("a", encoding="utf-8") if rank == 0 else contextlib.nullcontext()) as trace:
        for epoch in range(position.epoch, epochs):
            if done:
                break
            if position.planned_epoch != epoch:
                plan = method.plan_epoch(epoch, epochs, info)
                position.plan, position.planned_epoch = dist_tools.broadcast_object(plan), epoch
            plan = position.plan
            indices = plan.indices if plan is not None else list(range(len(examples)))
            weights = plan.weights if plan is not None else {}
            batches = epoch_order(indices, seed, epoch, micro, lengths if tcfg.get("bucket_by_length") else None)
            windows = [batches[i:i + accum] for i in range(0, len(batches), accum)]
            start_window = position.window if epoch == position.epoch else 0
            position.epoch = epoch
            # the first trace row of an epoch records an epoch-level plan, so that
            # records the plan left out count as dropped (noise recall)
            plan_row = ({"id": sorted(int(i) for i in plan.indices), "n_records": len(examples)}
                        if plan is not None and start_window == 0 else None)
            for w in range(start_window, len(windows)):
                loss = train_window(model, method, windows[w], examples, weights, tokenizer, device, tcfg,
                                    epoch, counters, trace, ref, frozen_base, epoch_plan=plan_row)
                plan_row = None
                if not fsdp:  # FSDP reduce-scatters the gradients itself
                    dist_tools.all_reduce_gradients(model.parameters())
                if tcfg.get("max_grad_norm"):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["max_grad_norm"]))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                counters.optimizer_steps += 1
                counters.last_loss = loss
                counters.wall_time_s = counters_start_time + (time.time() - started)
                position.window = w + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                if counters.optimizer_steps % int(tcfg["log_every"]) == 0:
                    tracker.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                                 "train/samples_trained": counters.samples_trained,
                                 "train/loss_tokens": counters.loss_tokens, "epoch": epoch},
                                step=counters.optimizer_steps)
                every = int(tcfg.get("checkpoint_every") or 0)
                if every and counters.optimizer_steps % every == 0 and counters.optimizer_steps < total_steps:
                    gathered = (sharding.full_state_dict(model), sharding.full_optimizer_state(model, optimizer)
                                ) if fsdp else None  # collective: every rank gathers, rank 0 writes
                    if rank == 0:
                        trace.flush()
                        os.fsync(trace.fileno())  # the trace holds every row the checkpoint counts
                        save_checkpoint(state_dir, model, optimizer, scheduler, method, position, fingerprint,
                                        gathered)
                    dist_tools.barrier()
                if counters.optimizer_steps >= total_steps:
                    done = True
                    break
            position.epoch, position.window = epoch + 1, 0
    if bar is not None:
        bar.close()

    counters.wall_time_s = counters_start_time + (time.time() - started)
    summary = _summary(cfg, counters, examples, epochs, model, report, truncated, total_steps)
    summary["processes"], summary["fsdp"] = world, fsdp
    final_weights = sharding.full_state_dict(model) if fsdp else None  # collective
    if rank != 0:
        dist_tools.barrier()  # rank 0 writes the outputs
        return summary
    with atomic_directory(out_dir) as tmp:
        if final_weights is None and adapters.saves_adapter(tcfg):  # LoRA: the adapter, not a merged copy
            adapters.save_adapter(model, tokenizer, tmp, base_model, entry)
        else:
            final = merged_model(model) if final_weights is None else _unsharded_copy(final_weights, base_model, entry, tcfg)
            final.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shutil.copyfile(trace_path, tmp / "trace.jsonl")
        write_json_atomic(tmp / "train_summary.json", summary)
        write_json_atomic(tmp / "data_report.json", report.as_dict())
    tracker.summary({f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    tracker.finish()
    _clear_state(state_dir)
    dist_tools.barrier()
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


def train_window(model, method, window, examples, plan_weights, tokenizer, device, tcfg, epoch,
                  counters: Counters, trace, ref, frozen_base, epoch_plan: dict | None = None) -> float:
    """Select inside each micro-batch of the window, then back-propagate the kept tokens.

    Under a process group (``qtbench.distributed``) every rank collates the
    whole micro-batch (token ids only: cheap), runs the stats pass and the
    forward/backward on its own rows only, and holds the *global* selection,
    so counters and trace rows are those of one process; the loss is divided
    by the window's kept tokens over all ranks.  The caller sums the
    gradients over ranks (:func:`qtbench.distributed.all_reduce_gradients`),
    or FSDP averages them (the loss is then scaled by the world size, and a
    rank without kept rows runs a dummy forward/backward: ``qtbench.sharding``)."""
    pad = tokenizer.pad_token_id
    rank, world = dist_tools.rank_and_world()
    fsdp = sharding.is_sharded(model)
    selected = []
    for batch_indices in window:
        full_batch = collate([examples[i] for i in batch_indices], pad)  # padded to the whole micro-batch's width
        rows = dist_tools.shard_rows(len(batch_indices), world)[rank]
        batch = {k: v[rows].to(device) for k, v in full_batch.items()}
        ids = torch.tensor(batch_indices)
        response = full_batch["labels"][:, 1:] != IGNORE_INDEX
        selection = _select(method, model, batch, full_batch, rows, ids, response, device, tcfg, epoch, counters,
                            ref, frozen_base)
        if plan_weights:
            selection.sample_weight = selection.sample_weight * torch.tensor([plan_weights.get(i, 1.0) for i in batch_indices])
        selected.append((batch, full_batch, rows, ids, response, selection))
    # the loss denominator: kept tokens of the whole window (every rank holds the global selections)
    window_tokens = sum(int((s.token_keep & s.sample_keep[:, None]).sum()) for *_, s in selected)
    total = 0.0
    for batch, full_batch, rows, ids, response, selection in selected:
        keep_rows = selection.sample_keep.nonzero().squeeze(1)
        kept_tokens = int((selection.token_keep[keep_rows] & response[keep_rows]).sum())
        row = {"step": counters.optimizer_steps, "micro_batch": counters.micro_batches, "epoch": epoch,
               "batch_size": len(ids), "response_tokens": int(response.sum()),
               "samples_kept": int(keep_rows.numel()), "response_tokens_kept": 0, "loss": None}
        counters.micro_batches += 1
        counters.samples_seen += len(ids)
        counters.response_tokens_seen += int(response.sum())
        counters.input_tokens_seen += int(full_batch["attention_mask"].sum())
        if keep_rows.numel() == 0 or window_tokens == 0:
            counters.empty_micro_batches += 1
        else:
            mine = dist_tools.scatter_selection(selection, rows, response.shape[1])
            local_keep = mine.sample_keep.nonzero().squeeze(1)
            ce_sum, local_ids, local_means = 0.0, ids[rows][local_keep], torch.zeros(0)
            if local_keep.numel():
                sub = _trim(batch, local_keep.to(device))
                sums, _, local_means = masked_token_losses(model, sub, mine.token_keep[local_keep].to(device))
                weight = mine.sample_weight[local_keep].to(device=device, dtype=sums.dtype)
                loss = (sums * weight).sum() / window_tokens
                (loss * world if fsdp else loss).backward()
                total += float(loss.detach())
                ce_sum = float(sums.detach().sum())
            elif fsdp:
                sharding.dummy_forward(model, backward=True)
            observed_ids, observed = dist_tools.gather_observations(local_ids, local_means.cpu())
            method.observe(observed_ids, observed, epoch)
            ce_sum = dist_tools.global_sum(ce_sum)
            counters.samples_trained += int(keep_rows.numel())
            counters.loss_tokens += kept_tokens
            counters.input_tokens_trained += int(full_batch["attention_mask"][keep_rows].sum())
            counters.input_positions_trained += padded_size(full_batch["attention_mask"][keep_rows])
            row.update(response_tokens_kept=kept_tokens, loss=ce_sum / max(kept_tokens, 1))
        row.update({k: v for k, v in selection.trace.items()})
        row["samples"] = _sample_rows(ids, selection)
        if epoch_plan is not None:
            row["epoch_plan"], epoch_plan = epoch_plan, None
        if trace is not None:
            trace.write(json.dumps(row, sort_keys=True) + "\n")
        counters.trace_rows += 1
    total = dist_tools.global_sum(total)
    counters.loss_sum += total
    return total


def _select(method, model, batch, full_batch, rows, ids, response, device, tcfg, epoch, counters, ref, frozen_base):
    """The whole micro-batch's selection (on every rank, the same).

    Statistics come from this rank's rows (``batch``) and are gathered before
    one decision; masks-only draws read the whole micro-batch's masks."""
    if method.needs_stats_pass:
        stats = compute_batch_stats(model, batch, method.required_stats, ids[rows], counters.optimizer_steps, epoch,
                                    ref, frozen_base, int(tcfg.get("stats_chunk", 128)))
        counters.input_tokens_scored += int(full_batch["attention_mask"].sum())
        counters.input_positions_scored += padded_size(full_batch["attention_mask"])
        return dist_tools.selection_to_cpu(dist_tools.select_global(method, stats))
    if method.needs_select:  # random draws read only the masks, which every rank has for the whole micro-batch
        attended = full_batch["attention_mask"][:, 1:].bool()
        stats = BatchStats.masks_only(response, attended, ids, counters.optimizer_steps, epoch)
        return dist_tools.decide_once(method, stats)
    return method.select_without_stats(response)


def padded_size(attention_mask: torch.Tensor) -> int:
    """Positions a forward over these rows computes: rows x their longest
    attended length (``_trim`` cuts the rest)."""
    if attention_mask.shape[0] == 0:
        return 0
    return int(attention_mask.shape[0] * attention_mask.sum(dim=1).max())


def _sample_rows(ids: torch.Tensor, selection) -> dict[str, list]:
    """Per-sample decisions of one micro-batch, column-wise: data-set index,
    kept, loss weight and whatever per-sample values the method reported
    (Q-Tuning: ppl, entropy, quadrant).  Samples an epoch-level pruner left out
    of the epoch never reach a micro-batch and so have no row."""
    columns = {"id": ids.tolist(), "kept": selection.sample_keep.tolist(),
               "weight": [round(w, 6) for w in selection.sample_weight.tolist()]}
    for name, values in selection.per_sample.items():
        columns[name] = [round(v, 6) if isinstance(v, float) else v for v in values]
    return columns


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


def _truncate_lines(path: Path, keep: int) -> bool:
    """Cut ``path`` after its first ``keep`` lines (rows written after the
    checkpoint, and a half-written last row, go).  One ``truncate`` call: a
    kill during it cannot lose the rows kept.  False when the file holds fewer
    than ``keep`` complete lines."""
    if not path.exists():
        return keep == 0
    offset = 0
    with path.open("rb") as handle:
        for _ in range(keep):
            line = handle.readline()
            if not line.endswith(b"\n"):
                return False
            offset += len(line)
    os.truncate(path, offset)
    return True


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, mininterval=2.0,
                disable=os.environ.get("QTBENCH_NO_PROGRESS") == "1")
