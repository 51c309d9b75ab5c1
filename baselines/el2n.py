"""EL2N: keep the samples with the largest error L2 norm.

Paper: Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet: Finding
Important Examples Early in Training" (NeurIPS 2021).  EL2N of an example is
``E || softmax(f(x)) - onehot(y) ||_2``; the paper scores each example once,
early in training (averaged over a few runs), and keeps the highest-scoring
ones for the rest of training.  For a language model every response token is a
prediction, so the sample score is the mean EL2N over its response tokens.

* scores: mean per-token EL2N over response positions (the stats pass's
  ``el2n`` = ``||p - onehot(target)||_2`` per loss position);
* model: the model being trained, in the no-grad stats pass;
* when: every micro-batch - a dynamic variant (the paper's score is static,
  computed early in training and averaged over seeds; here it is the current
  model's, in the same per-batch setting as Q-Tuning);
* keeps: the ``Budget.keep_count(B)`` highest (ties: lower row first).
"""

from __future__ import annotations

import torch

from baselines._common import BatchScoredSamplePruner, require_extra
from qtbench.methods.base import BatchStats, masked_mean
from qtbench.methods.registry import register_sample_pruner


@register_sample_pruner("el2n")
class El2n(BatchScoredSamplePruner):
    required_stats = frozenset({"el2n"})
    option_defaults: dict = {}

    def scores(self, stats: BatchStats) -> torch.Tensor:
        return masked_mean(require_extra(stats, "el2n", self.name), stats.response_mask)
