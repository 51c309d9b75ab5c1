"""The learning-rate schedule, sized by the optimizer steps a run really takes.

Linear warm-up, then cosine decay to 0 - the same values as transformers'
``get_cosine_schedule_with_warmup`` - over a total that is *re-sized at the
start of every epoch*: epoch-level pruners (InfoBatch, ``random`` in epoch
mode, static pruners) train fewer samples in some epochs than in others, and
InfoBatch's plan depends on the loss history, so the number of steps is known
only epoch by epoch.  At each epoch start the total becomes the steps already
taken + this epoch's steps (exact, from its plan) + a forecast for the epochs
after it (:meth:`qtbench.methods.base.Method.expected_epoch_size`, else this
epoch's size).  In the last epoch every term is exact, so the schedule ends at
its end value (0) on the last step the run takes, whatever the method.  The
warm-up length is fixed once, from the first estimate.
"""

from __future__ import annotations

import math


class CosineWithWarmup:
    """``LambdaLR`` multiplier with a re-sizable total; a callable object, so
    ``LambdaLR.state_dict`` saves its fields and a resumed run continues the
    same schedule."""

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return float(step) / float(max(1, self.warmup_steps))
        progress = float(step - self.warmup_steps) / float(max(1, self.total_steps - self.warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float):
    """A ``LambdaLR`` over :class:`CosineWithWarmup` (``round(warmup_ratio * total)`` warm-up steps)."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, CosineWithWarmup(total_steps, round(float(warmup_ratio) * total_steps)))


def resize(scheduler, total_steps: int) -> None:
    """Set the schedule's total to ``total_steps`` and the optimizer's current
    learning rate to the re-sized schedule's value at this step (a no-op when
    the total does not change)."""
    for multiplier in scheduler.lr_lambdas:
        multiplier.total_steps = max(int(total_steps), 1)
    step = scheduler.last_epoch
    for group, base_lr, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * multiplier(step)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def steps_per_epoch(samples: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps of an epoch of ``samples`` samples."""
    return math.ceil(math.ceil(samples / micro_batch) / grad_accum)
