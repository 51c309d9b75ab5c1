"""Loss (token level): keep the highest-loss response tokens.

A hard-token baseline (the token-level analogue of loss-based sample
selection, and what the authors' code's ``token_method="ppl"``/``"loss"``
path does): the tokens the model currently predicts worst carry the loss.

* scores: per-token NLL under the model being trained (no-grad stats pass);
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n))`` highest-NLL candidates, per sample
  (``scope: sample``, default) or across the micro-batch (``scope: batch``, as
  the authors' code); ties: earlier position first.
"""

from __future__ import annotations

import torch

from baselines._common import ScoredTokenPruner
from qtbench.methods.base import BatchStats
from qtbench.methods.registry import register_token_pruner


@register_token_pruner("loss")
class LossTokens(ScoredTokenPruner):
    required_stats = frozenset({"nll"})
    option_defaults: dict = {}
    default_scope = "sample"

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        return stats.nll
