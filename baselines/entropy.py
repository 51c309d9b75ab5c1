"""Entropy: keep the samples the model being trained is most uncertain about.

The Q-Tuning paper's Entropy baseline (App. B.3) keeps high-entropy samples;
the uncertainty is the same quantity as the EU plane's entropy axis: the mean,
over positions, of the full-vocabulary predictive entropy
``-sum_v p(v|.) log p(v|.)`` under the model being trained.  (The authors' code
runs a different rule under this name, character entropy of the instruction,
keep lowest: that is ``char_entropy``.)

* scores: mean predictive entropy per sample, over the response loss positions
  (``entropy_over: response``, default, the paper's formula) or over every
  attended loss position, prompt included (``entropy_over: all``, the authors'
  code's EU-plane variant);
* model: the model being trained, in the no-grad stats pass;
* when: every micro-batch (same optimizer steps as Q-Tuning, fewer samples per
  step);
* keeps: the ``Budget.keep_count(B) = max(1, round(B * r_s))`` highest (ties:
  lower row first).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import BatchScoredSamplePruner, check_choice
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_sample_pruner


@register_sample_pruner("entropy")
class Entropy(BatchScoredSamplePruner):
    required_stats = frozenset({"entropy"})
    option_defaults = {"entropy_over": "response"}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.entropy_over = check_choice(self.name, "entropy_over", self.options["entropy_over"], ("response", "all"))

    def scores(self, stats: BatchStats) -> torch.Tensor:
        return stats.sample_mean_entropy(self.entropy_over)
