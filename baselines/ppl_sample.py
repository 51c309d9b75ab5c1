"""PPL (sample level): keep the samples with the highest perplexity.

A loss-based sample-selection baseline (the EU plane's error axis alone, the
"hard examples" heuristic): PPL = exp(mean NLL over the response tokens) under
the model being trained.

* scores: response perplexity per sample (``BatchStats.sample_ppl``);
* model: the model being trained, in the no-grad stats pass;
* when: every micro-batch (same optimizer steps, fewer samples per step);
* keeps: the ``Budget.keep_count(B)`` highest (ties: lower row first).
"""

from __future__ import annotations

import torch

from baselines._common import BatchScoredSamplePruner
from qtbench.methods.base import BatchStats
from qtbench.methods.registry import register_sample_pruner


@register_sample_pruner("ppl_sample")
class PplSample(BatchScoredSamplePruner):
    required_stats = frozenset({"nll"})
    option_defaults: dict = {}

    def scores(self, stats: BatchStats) -> torch.Tensor:
        # exp is monotone: rank on the mean NLL (no overflow for very wrong samples)
        return stats.sample_mean_loss()
