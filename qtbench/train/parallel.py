"""Several processes, one decision: the collectives of the training step.

This module only moves tensors between processes; it never asks a method for
anything (:mod:`qtbench.train.step` makes the decision).

Q-Tuning's thresholds are quantiles of the micro-batch, and every token
pruner ranks inside a micro-batch, so a pruning decision depends on which
samples share the batch.  qtbench keeps that batch fixed by the config
(``train.micro_batch_size``) whatever the number of processes: with ``W``
processes, each *global* micro-batch of ``B`` samples is split into ``W``
contiguous row shards (:func:`shard_rows`), and

1. every rank computes :class:`~qtbench.methods.base.BatchStats` for its own
   rows (the no-grad stats pass; under FSDP all ranks must run it together);
2. the stats are gathered (:func:`gather_stats`): rows in rank order, the
   token axis padded to the longest shard with zeros / ``False`` - exactly the
   values the stats pass writes at padded positions, so the gathered stats
   equal those of one process that collated the whole micro-batch;
3. rank 0 decides on the global stats and the
   :class:`~qtbench.methods.base.Selection` is broadcast
   (:func:`broadcast_object`, :func:`selection_to_cpu`);
4. every rank keeps its own rows (:func:`scatter_selection`), cut back to its
   own token width, and back-propagates only those.

The decision is therefore a function of the global micro-batch's statistics
only - the same for 1, 2 or 8 GPUs (``tests/train/test_parallel.py`` checks
it with 2 and 3 CPU processes over gloo against one process).  Random pruners
draw from generators seeded by (seed, step, epoch, sample ids) and the
gathered token width equals one process's, so their draws agree too.  What
cannot be promised is bit-identical *statistics* over a whole run: gradients
summed over ranks round differently from one process's sum, so after the
first update the weights - and every later NLL - agree only to float
precision (~1e-7 relative).  (Each rank pads its shard to the whole
micro-batch's width, so a row's statistics do not depend on its shard.)

The rest of the contract (``qtbench train`` under ``torchrun``, one process
per GPU, started by :mod:`qtbench.launch`):

* :func:`init_from_env` joins the process group the launcher describes
  (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; NCCL on CUDA, gloo on CPU) and
  :func:`local_device` picks ``cuda:LOCAL_RANK``;
* the loss of a window is each rank's kept-token CE sum divided by the
  window's kept tokens over *all* ranks (:func:`global_sum`), and after the
  window :func:`all_reduce_gradients` sums the gradients - so the update is
  one process's on the whole window (no DDP wrapper needed);
* loss-history methods (InfoBatch) see every rank's per-sample losses
  (:func:`gather_observations`), so the method state - and each epoch plan -
  is the same on every rank;
* only rank 0 writes the trace, checkpoints and the final model
  (:func:`barrier` around them).

By default every rank holds the whole model: the paper trains LoRA adapters
(rank 8, ``train.lora``), so a 7-8B model in bf16 fits one GPU.  For full
fine-tuning of models that do not fit, ``train.fsdp: true`` shards weights,
gradients and optimizer state (FSDP2, :mod:`qtbench.fsdp`); the decision path
above is unchanged, the gradients are FSDP's reduce-scatter instead of
:func:`all_reduce_gradients`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from qtbench.methods.base import BatchStats, Selection

if TYPE_CHECKING:
    import torch
    from torch import Tensor

__all__ = [
    "all_reduce_gradients", "barrier", "broadcast_object", "gather_observations", "gather_stats", "global_sum",
    "init_from_env", "is_distributed", "local_device", "rank_and_world", "scatter_selection", "selection_to_cpu",
    "shard_rows",
]


# --------------------------------------------------------------------------- process group


def is_distributed(group: Any = None) -> bool:
    """True when a process group with more than one process is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group: Any = None) -> torch.device:
    """Where tensor collectives run: the current CUDA device for NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env(device: str | torch.device | None = None) -> tuple[int, int]:
    """Join the process group that ``accelerate launch`` / ``torchrun`` describe
    in the environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): NCCL for CUDA, gloo otherwise.  Returns
    (rank, world size); (0, 1) for a plain single process.  Idempotent."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        import torch

        cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank_and_world()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for CUDA under a process group."""
    import torch

    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def barrier(group: Any = None) -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed(group):
        import torch.distributed as dist

        dist.barrier(group=group)


def all_reduce_gradients(parameters: Any, group: Any = None) -> None:
    """Sum every trainable parameter's gradient over ranks, in place (one
    flat buffer per dtype).  With each rank's loss divided by the *global*
    kept-token count (:func:`global_sum`), the summed gradient is the one a
    single process computes on the whole window - no DDP wrapper, no
    ``no_sync`` bookkeeping, and a rank without kept samples just contributes
    zeros.  (DDP's bucketed overlap is faster on many GPUs; FSDP reduces its
    own shards.)"""
    if not is_distributed(group):
        return
    import torch
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[Any, list] = {}
    for p in params:
        by_dtype.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group_params in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group_params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for p in group_params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n






# --------------------------------------------------------------------------- sharding


def shard_rows(batch_size: int, world_size: int) -> list[slice]:
    """Contiguous row shards of a global micro-batch, one per rank, in rank
    order; sizes differ by at most one (the first ranks take the extra rows),
    and a rank gets an empty shard when ``batch_size < world_size``.

    Every rank builds the same global micro-batch (the same seeded epoch
    order) and takes ``indices[shard_rows(B, W)[rank]]``."""
    if batch_size < 0 or world_size < 1:
        raise ValueError(f"need batch_size >= 0 and world_size >= 1, got {batch_size}, {world_size}")
    base, extra = divmod(batch_size, world_size)
    slices, start = [], 0
    for rank in range(world_size):
        size = base + (1 if rank < extra else 0)
        slices.append(slice(start, start + size))
        start += size
    return slices


# --------------------------------------------------------------------------- gather / scatter


def _all_gather_rows(tensor: Tensor, width: int, fill: Any, sizes: Sequence[int], group: Any, device: torch.device
                     ) -> Tensor:
    """All ranks' ``[B_r, T_r]`` (or ``[B_r]``) tensors, padded to ``width``
    columns with ``fill``, concatenated along rows in rank order."""
    import torch
    import torch.distributed as dist

    world = len(sizes)
    rows_max = max(sizes)
    dtype = tensor.dtype
    wire_dtype = torch.uint8 if dtype == torch.bool else dtype  # NCCL has no bool
    shape = (rows_max, width) if tensor.dim() == 2 else (rows_max,)
    padded = torch.full(shape, fill, dtype=wire_dtype, device=device)
    if tensor.dim() == 2:
        padded[: tensor.shape[0], : tensor.shape[1]] = tensor.to(device=device, dtype=wire_dtype)
    else:
        padded[: tensor.shape[0]] = tensor.to(device=device, dtype=wire_dtype)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    out = torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)
    return out.to(dtype)


def gather_stats(local: BatchStats, group: Any = None) -> tuple[BatchStats, list[slice], list[int]]:
    """The global micro-batch's stats from every rank's shard.

    Returns ``(stats, row_slices, widths)``: the gathered stats (rows in rank
    order, the token axis padded to the widest shard with 0 / ``False``, on
    ``local``'s device), each rank's rows in them, and each rank's own token
    width.  Without a process group, ``local`` itself."""
    if not is_distributed(group):
        return local, [slice(0, local.batch_size)], [int(local.nll.shape[1])]
    import torch.distributed as dist

    rank, world = rank_and_world(group)
    device = _comm_device(group)
    extras = sorted(local.extras)
    meta = [None] * world
    dist.all_gather_object(meta, {"rows": local.batch_size, "width": int(local.nll.shape[1]), "extras": extras,
                                  "step": int(local.step), "epoch": int(local.epoch),
                                  "dtype": str(local.nll.dtype)}, group=group)
    for other in meta:
        for key in ("extras", "step", "epoch", "dtype"):
            if other[key] != meta[0][key]:
                raise RuntimeError(f"ranks disagree on the stats' {key}: {meta[0][key]!r} vs {other[key]!r} "
                                   "(every rank must score the same global micro-batch with the same method)")
    sizes = [m["rows"] for m in meta]
    widths = [m["width"] for m in meta]
    width = max(widths)
    gather = lambda t, fill: _all_gather_rows(t, width, fill, sizes, group, device).to(local.nll.device)  # noqa: E731
    stats = BatchStats(
        nll=gather(local.nll, 0),
        entropy=gather(local.entropy, 0),
        response_mask=gather(local.response_mask.bool(), False),
        attention_mask=gather(local.attention_mask.bool(), False),
        sample_ids=_all_gather_rows(local.sample_ids.long(), width, -1, sizes, group, device).cpu(),
        step=local.step,
        epoch=local.epoch,
        extras={name: gather(local.extras[name], 0) for name in extras},
        special_mask=None if local.special_mask is None else gather(local.special_mask.bool(), False),
    )
    starts = [sum(sizes[:r]) for r in range(world)]
    return stats, [slice(s, s + n) for s, n in zip(starts, sizes)], widths


def scatter_selection(selection: Selection, rows: slice, width: int) -> Selection:
    """One rank's part of a global selection: its rows (also of the
    per-sample trace values), its own token width.

    Positions past ``width`` are padding of that rank's rows and can never be
    kept (the token mask is a subset of the response mask); that is checked."""
    token_keep = selection.token_keep[rows]
    if token_keep.shape[1] > width and bool(token_keep[:, width:].any()):
        raise RuntimeError("the selection keeps a padded position of this rank's rows")
    out = Selection(
        sample_keep=selection.sample_keep[rows].clone(),
        token_keep=token_keep[:, :width].clone(),
        sample_weight=selection.sample_weight[rows].clone(),
        trace=dict(selection.trace),
    )
    per_sample = getattr(selection, "per_sample", None)
    if per_sample:  # per-sample trace values (lists of length B): this rank's rows
        out.per_sample = {name: list(values[rows]) for name, values in per_sample.items()}
    return out


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for selections, epoch
    plans and other small objects).  Without a process group, ``obj``."""
    if not is_distributed(group):
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def selection_to_cpu(selection: Selection) -> Selection:
    """``selection`` with every tensor on the CPU (to broadcast it, or to index it with CPU row slices)."""
    out = Selection(selection.sample_keep.cpu(), selection.token_keep.cpu(), selection.sample_weight.cpu(),
                    dict(selection.trace))
    if getattr(selection, "per_sample", None):
        out.per_sample = {name: list(values) for name, values in selection.per_sample.items()}
    return out










def gather_observations(sample_ids: Tensor, losses: Tensor, group: Any = None) -> tuple[Tensor, Tensor]:
    """Every rank's (sample ids, per-sample losses), concatenated in rank order,
    for ``method.observe`` (loss histories must see the whole batch)."""
    if not is_distributed(group):
        return sample_ids, losses
    import torch
    import torch.distributed as dist

    _, world = rank_and_world(group)
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (sample_ids.detach().cpu(), losses.detach().float().cpu()), group=group)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def global_sum(value: int | float, group: Any = None) -> int | float:
    """The sum of ``value`` over ranks (e.g. the window's kept tokens, the loss
    denominator); ``value`` itself without a process group."""
    if not is_distributed(group):
        return value
    import torch
    import torch.distributed as dist

    is_int = isinstance(value, int) and not isinstance(value, bool)
    tensor = torch.tensor([value], dtype=torch.int64 if is_int else torch.float64, device=_comm_device(group))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return int(tensor.item()) if is_int else float(tensor.item())

