"""Random pruning: the floor every data-efficient method must beat.

Sample level (``random``), a uniform subset, no model, no scores.  Two modes
(option ``mode``), because the paper compares against the authors' code, which
prunes sample-level baselines per epoch (fewer optimizer steps), while Q-Tuning
prunes inside each micro-batch (same steps, fewer samples per step):

* ``epoch`` (default, as the authors' code ``InfoBatch.prune`` with
  ``data_method="random"``): every epoch a fresh uniform subset of
  ``max(1, round(N * r_s))`` indices (the code: ``int(r_s * N)``), seeded by
  (seed, epoch);
* ``batch``: every micro-batch keeps a uniform ``Budget.keep_count(B)`` of its
  samples, seeded by (seed, epoch, step, sample ids).

``double_prune`` (epoch mode only, default false) adds the authors' baseline
path's second, per-micro-batch random subset on top of the epoch subset.

Token level (``random``; as a lone name ``random`` means the sample pruner,
write ``none+random`` for the token one): a uniform ``r_t`` of the candidate
response tokens.  ``scope: sample`` (default) draws ``max(1, round(r_t * n_i))``
of each kept sample's ``n_i`` response tokens; ``scope: batch`` draws
``max(1, round(r_t * n))`` of the micro-batch's ``n`` candidates, as the
authors' code does (which also counts prompt positions: ``count_prompt``).
Seeded by (seed, epoch, step, sample ids).

Options: both pruners are named ``random`` but read different
``method_options`` entries, so neither sees (and silently drops) the other's
keys: the sample pruner reads ``method_options.random`` (``mode``,
``double_prune``), the token pruner ``method_options.random_tokens``
(``scope``, ``count_prompt``, ``special_tokens``; its class says so in
``options_section``).  A key of the other pruner is an error that names the
entry it belongs in, so an old config that put ``scope`` under ``random``
fails at validation instead of running with a default it did not ask for.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import (
    EpochLevelSamplePruner,
    ScoredTokenPruner,
    check_choice,
    epoch_keep_count,
    make_generator,
)
from qtbench.methods.base import BatchStats, Budget, DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner, register_token_pruner

Tensor = torch.Tensor

#: the ``method_options`` entry of the token pruner (the sample pruner reads ``random``)
TOKEN_SECTION = "random_tokens"


def _refuse_misplaced(options: Mapping[str, Any] | None, own: type, other: type, other_level: str) -> None:
    """A key of the other ``random`` pruner is an error naming its entry."""
    section = lambda cls: getattr(cls, "options_section", None) or cls.name  # noqa: E731
    for key in options or {}:
        if key in other.option_keys() and key not in own.option_keys():
            raise ValueError(f"option {key!r} of method 'random' belongs to the random {other_level} pruner: "
                             f"put it in method_options.{section(other)}, not method_options.{section(own)}")


@register_sample_pruner("random")
class RandomSamples(EpochLevelSamplePruner):
    """Uniform sample subset, per epoch (``mode: epoch``) or per micro-batch (``mode: batch``)."""

    option_defaults = {**EpochLevelSamplePruner.option_defaults, "mode": "epoch"}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        _refuse_misplaced(options, RandomSamples, RandomTokens, "token")
        super().__init__(budget, options, seed)
        self.mode = check_choice(self.name, "mode", self.options["mode"], ("epoch", "batch"))
        if self.mode == "batch" and self.double_prune:
            raise ValueError("option 'double_prune' of method 'random' only applies to mode 'epoch'")
        if self.mode == "batch":
            self.needs_select = True

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan | None:
        if self.mode != "epoch":
            return None
        n = len(data)
        k = epoch_keep_count(n, self.budget.sample_ratio)
        gen = make_generator(self.seed, self.name, "epoch", epoch)
        chosen = sorted(torch.randperm(n, generator=gen)[:k].tolist())
        return EpochPlan(chosen, {}, {"epoch_kept": len(chosen), "epoch_total": n})

    def select_samples(self, stats: BatchStats) -> tuple[Tensor, Tensor, dict[str, Any]]:
        if self.mode == "epoch":
            return super().select_samples(stats)
        batch = stats.batch_size
        k = self.budget.keep_count(batch)
        gen = make_generator(self.seed, self.name, "batch", stats.epoch, stats.step, stats.sample_ids)
        keep = torch.zeros(batch, dtype=torch.bool)
        keep[torch.randperm(batch, generator=gen)[:k]] = True
        return keep, torch.ones(batch), {"samples_kept": int(k)}


@register_token_pruner("random")
class RandomTokens(ScoredTokenPruner):
    """Uniform ``r_t`` of the candidate tokens (per sample or per micro-batch)."""

    options_section = TOKEN_SECTION
    default_scope = "sample"
    prompt_score = None  # under count_prompt, prompt positions are drawn like any other

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        _refuse_misplaced(options, RandomTokens, RandomSamples, "sample")
        super().__init__(budget, options, seed)
        self.needs_select = True

    def token_scores(self, stats: BatchStats, candidates: Tensor) -> Tensor:
        gen = make_generator(self.seed, self.name, "tokens", stats.epoch, stats.step, stats.sample_ids)
        return torch.rand(candidates.shape, generator=gen, dtype=torch.float64)
