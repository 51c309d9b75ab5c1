"""Longest: keep the samples with the longest responses.

Paper: Zhao, Andriushchenko, Croce, Flammarion, "Long Is More for Alignment: A
Simple but Tough-to-Beat Baseline for Instruction Fine-Tuning" (ICML 2024):
select the instruction-tuning examples with the longest responses.  The
Q-Tuning paper's text ("removed the longest sequences" / keeps long responses)
follows it; the authors' code instead keeps the *shortest instructions* by
characters under the name "longest": that rule is ``shortest_instruction``.

* scores: response length, ``length_unit: tokens`` (default; the tokenised
  response as trained, EOS and truncation included: ``DatasetInfo.response_lengths``)
  or ``chars`` (characters of the record's ``output``);
* model: none;
* when: fixed before training (no scoring rule needed, the lengths come with
  the data), applied per epoch: the same subset every epoch, fewer optimizer
  steps (like the authors' epoch-level baselines);
* keeps: the ``max(1, round(N * r_s))`` longest (ties: lower index first).

Option ``double_prune`` (default false): the authors' baseline path's extra
random ``round(B * r_s)`` subset of every micro-batch.
"""

from __future__ import annotations

from typing import Any, Mapping

from baselines._common import EpochLevelSamplePruner, check_choice, epoch_keep_count, keep_by_score
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner


@register_sample_pruner("longest")
class Longest(EpochLevelSamplePruner):
    option_defaults = {**EpochLevelSamplePruner.option_defaults, "length_unit": "tokens"}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.length_unit = check_choice(self.name, "length_unit", self.options["length_unit"], ("tokens", "chars"))

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        if self.length_unit == "tokens":
            lengths = [float(x) for x in data.response_lengths]
            if len(lengths) != len(data):
                raise ValueError("longest: DatasetInfo.response_lengths must have one entry per record")
        else:
            lengths = [float(len(str(r.get("output", "")))) for r in data.records]
        k = epoch_keep_count(len(data), self.budget.sample_ratio)
        kept = keep_by_score(lengths, k, largest=True)
        return EpochPlan(kept, {}, {"epoch_kept": len(kept), "epoch_total": len(data)})
