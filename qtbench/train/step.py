"""One optimizer step's window: stats pass -> the method's decision -> masked loss.

For each micro-batch of a window of ``grad_accum`` micro-batches the step

1. asks the method for a :class:`~qtbench.methods.base.Selection`
   (:func:`decide`) - after a no-grad stats pass when the method needs
   statistics (``full`` needs none).  This is the one place in qtbench that
   asks a method for a decision;
2. gathers the kept samples into a smaller batch (dropped samples cost no
   forward/backward), trims padding, and back-propagates the kept tokens'
   cross-entropy (:func:`masked_token_losses`).

Loss normalisation: the sum of kept-token cross-entropies (times each sample's
weight) divided by the number of kept tokens in the whole accumulation window,
so ``grad_accum=2, micro_batch=2`` equals ``grad_accum=1, micro_batch=4`` when
nothing is pruned.  (The authors' code averages per micro-batch; with
``grad_accum=1`` the two agree.)

Under a process group every rank collates the whole micro-batch (token ids
only: cheap), runs the stats pass and the forward/backward on its own rows
only, and holds the *global* selection, so counters and trace rows are those
of one process (:mod:`qtbench.train.parallel` moves the tensors).  Every
micro-batch appends a row to ``trace.jsonl``: kept samples and tokens, the
method's thresholds and quadrant counts, and per-sample decisions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Any, Mapping

import torch
import torch.nn.functional as F

from qtbench import fsdp as fsdp_tools
from qtbench.data.batches import IGNORE_INDEX, TokenizedExample, attended_positions, collate, loss_positions, next_token_labels
from qtbench.methods.base import BatchStats, Method, Selection
from qtbench.methods.stats import compute_batch_stats
from qtbench.train import parallel


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
class StepContext:
    """What every step of one run reads, set up once by the loop.

    ``ref`` and ``frozen_base`` are the reference and frozen base models of
    methods that score with another model (Rho-1's excess loss); ``trace`` is
    rank 0's open ``trace.jsonl`` (``None`` on other ranks)."""

    model: Any
    method: Method
    examples: list[TokenizedExample]
    pad_id: int
    device: torch.device
    counters: Counters
    stats_chunk: int = 128
    ref: Any = None
    frozen_base: Any = None
    trace: IO[str] | None = None
    #: the tokenizer's special token ids (``all_special_ids``): the step marks
    #: loss positions that predict one (``BatchStats.special_mask``)
    special_ids: tuple[int, ...] = ()


@dataclass
class MicroBatch:
    """One global micro-batch: its data-set indices, the whole collated batch
    (CPU), this rank's rows of it (on the device), and its response positions."""

    ids: torch.Tensor
    full: dict[str, torch.Tensor]
    rows: slice
    local: dict[str, torch.Tensor]
    response: torch.Tensor

    @classmethod
    def collate(cls, ctx: StepContext, indices: list[int]) -> "MicroBatch":
        rank, world = parallel.rank_and_world()
        full = collate([ctx.examples[i] for i in indices], ctx.pad_id)  # padded to the whole micro-batch's width
        rows = parallel.shard_rows(len(indices), world)[rank]
        local = {k: v[rows].to(ctx.device) for k, v in full.items()}
        return cls(torch.tensor(indices), full, rows, local, loss_positions(full["labels"]))


def train_window(ctx: StepContext, window: list[list[int]], epoch: int, plan_weights: Mapping[int, float],
                 epoch_plan: dict | None = None) -> float:
    """Decide inside each micro-batch of the window, then back-propagate the
    kept tokens; returns the window's loss (summed over ranks).  The caller
    sums the gradients over ranks and steps the optimizer."""
    decided = []
    for indices in window:
        batch = MicroBatch.collate(ctx, indices)
        selection = decide(ctx, batch, epoch)
        if plan_weights:
            selection.sample_weight = selection.sample_weight * torch.tensor([plan_weights.get(i, 1.0) for i in indices])
        decided.append((batch, selection))
    # the loss denominator: kept tokens of the whole window (every rank holds the global selections)
    window_tokens = sum(int((s.token_keep & s.sample_keep[:, None]).sum()) for _, s in decided)
    total = 0.0
    for batch, selection in decided:
        row, loss = train_micro_batch(ctx, batch, selection, epoch, window_tokens)
        total += loss
        if epoch_plan is not None:
            row["epoch_plan"], epoch_plan = epoch_plan, None
        if ctx.trace is not None:
            ctx.trace.write(json.dumps(row, sort_keys=True) + "\n")
        ctx.counters.trace_rows += 1
    total = parallel.global_sum(total)
    ctx.counters.loss_sum += total
    return total


def decide(ctx: StepContext, batch: MicroBatch, epoch: int) -> Selection:
    """The whole micro-batch's selection, the same on every rank.

    Statistics come from this rank's rows and are gathered before one
    decision on the global micro-batch; masks-only draws (random pruners) read
    the whole micro-batch's masks, which every rank has."""
    method, counters = ctx.method, ctx.counters
    special = special_positions(batch.full["input_ids"], ctx.special_ids)
    if method.needs_stats_pass:
        local = compute_batch_stats(ctx.model, batch.local, method.required_stats, batch.ids[batch.rows],
                                    counters.optimizer_steps, epoch, ctx.ref, ctx.frozen_base, ctx.stats_chunk)
        local.special_mask = special[batch.rows].to(local.nll.device)
        counters.input_tokens_scored += int(batch.full["attention_mask"].sum())
        counters.input_positions_scored += padded_size(batch.full["attention_mask"])
        return decide_on_shards(method, local)
    if method.needs_select:
        attended = attended_positions(batch.full["attention_mask"])
        stats = BatchStats.masks_only(batch.response, attended, batch.ids, counters.optimizer_steps, epoch, special)
        return _select_on_rank0(method, stats)
    return method.select_without_stats(batch.response)


def special_positions(input_ids: torch.Tensor, special_ids: tuple[int, ...]) -> torch.Tensor:
    """``[B, L-1]`` bool: loss positions whose target token is a special token."""
    targets = input_ids[:, 1:]
    if not special_ids:
        return torch.zeros(targets.shape, dtype=torch.bool)
    return torch.isin(targets, torch.tensor(sorted(special_ids), dtype=targets.dtype))


def decide_on_shards(method: Method, local: BatchStats) -> Selection:
    """One decision on the global micro-batch from this rank's shard of its
    statistics: gathered, decided on rank 0, broadcast; on the CPU."""
    stats, _, _ = parallel.gather_stats(local)
    return parallel.selection_to_cpu(_select_on_rank0(method, stats))


def _select_on_rank0(method: Method, stats: BatchStats) -> Selection:
    """``method.select(stats)`` run by rank 0 and broadcast (on the CPU), so
    every rank holds rank 0's decision whatever its own method state."""
    if not parallel.is_distributed():
        return method.select(stats)
    rank, _ = parallel.rank_and_world()
    return parallel.broadcast_object(parallel.selection_to_cpu(method.select(stats)) if rank == 0 else None)


def train_micro_batch(ctx: StepContext, batch: MicroBatch, selection: Selection, epoch: int,
                      window_tokens: int) -> tuple[dict[str, Any], float]:
    """Back-propagate this rank's kept rows of one micro-batch; update the
    counters; hand the per-sample losses to the method.  Returns the trace
    row and this rank's loss contribution."""
    counters, response = ctx.counters, batch.response
    keep_rows = selection.sample_keep.nonzero().squeeze(1)
    kept_tokens = int((selection.token_keep[keep_rows] & response[keep_rows]).sum())
    row = {"step": counters.optimizer_steps, "micro_batch": counters.micro_batches, "epoch": epoch,
           "batch_size": len(batch.ids), "response_tokens": int(response.sum()),
           "samples_kept": int(keep_rows.numel()), "response_tokens_kept": 0, "loss": None}
    counters.micro_batches += 1
    counters.samples_seen += len(batch.ids)
    counters.response_tokens_seen += int(response.sum())
    counters.input_tokens_seen += int(batch.full["attention_mask"].sum())
    loss = 0.0
    if keep_rows.numel() == 0 or window_tokens == 0:
        counters.empty_micro_batches += 1
    else:
        loss, ce_sum = _backward_own_rows(ctx, batch, selection, epoch, window_tokens)
        counters.samples_trained += int(keep_rows.numel())
        counters.loss_tokens += kept_tokens
        counters.input_tokens_trained += int(batch.full["attention_mask"][keep_rows].sum())
        counters.input_positions_trained += padded_size(batch.full["attention_mask"][keep_rows])
        row.update(response_tokens_kept=kept_tokens, loss=ce_sum / max(kept_tokens, 1))
    row.update(selection.trace)
    row["samples"] = sample_columns(batch.ids, selection)
    return row, loss


def _backward_own_rows(ctx: StepContext, batch: MicroBatch, selection: Selection, epoch: int,
                       window_tokens: int) -> tuple[float, float]:
    """Forward/backward of this rank's kept rows; (loss, summed CE over all ranks).

    Under FSDP the gradients are averaged over ranks, so the loss is scaled by
    the world size, and a rank without kept rows runs a dummy forward/backward
    (every FSDP forward is collective)."""
    _, world = parallel.rank_and_world()
    sharded = fsdp_tools.is_sharded(ctx.model)
    mine = parallel.scatter_selection(selection, batch.rows, batch.response.shape[1])
    local_keep = mine.sample_keep.nonzero().squeeze(1)
    loss, ce_sum, local_means = 0.0, 0.0, torch.zeros(0)
    if local_keep.numel():
        sub = _trim(batch.local, local_keep.to(ctx.device))
        sums, _, local_means = masked_token_losses(ctx.model, sub, mine.token_keep[local_keep].to(ctx.device))
        weight = mine.sample_weight[local_keep].to(device=ctx.device, dtype=sums.dtype)
        scaled = (sums * weight).sum() / window_tokens
        (scaled * world if sharded else scaled).backward()
        loss, ce_sum = float(scaled.detach()), float(sums.detach().sum())
    elif sharded:
        fsdp_tools.dummy_forward(ctx.model, backward=True)
    observed_ids, observed = parallel.gather_observations(batch.ids[batch.rows][local_keep], local_means.cpu())
    ctx.method.observe(observed_ids, observed, epoch)
    return loss, parallel.global_sum(ce_sum)


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
    labels = next_token_labels(batch["labels"])  # position t predicts token t+1
    keep = F.pad(token_keep[:, : width - 1].to(labels.device), (0, 1), value=False) & (labels != IGNORE_INDEX)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX,
                         reduction="none").view(labels.shape)
    response = labels != IGNORE_INDEX
    full_mean = (ce.detach() * response).sum(dim=1) / response.sum(dim=1).clamp_min(1)
    return (ce * keep).sum(dim=1), keep.sum(dim=1), full_mean


def padded_size(attention_mask: torch.Tensor) -> int:
    """Positions a forward over these rows computes: rows x their longest
    attended length (``_trim`` cuts the rest)."""
    if attention_mask.shape[0] == 0:
        return 0
    return int(attention_mask.shape[0] * attention_mask.sum(dim=1).max())


def sample_columns(ids: torch.Tensor, selection: Selection) -> dict[str, list]:
    """Per-sample decisions of one micro-batch, column-wise: data-set index,
    kept, loss weight and whatever per-sample values the method reported
    (Q-Tuning: ppl, entropy, quadrant).  Samples an epoch-level pruner left out
    of the epoch never reach a micro-batch and so have no row."""
    columns = {"id": ids.tolist(), "kept": selection.sample_keep.tolist(),
               "weight": [round(w, 6) for w in selection.sample_weight.tolist()]}
    for name, values in selection.per_sample.items():
        columns[name] = [round(v, 6) if isinstance(v, float) else v for v in values]
    return columns
