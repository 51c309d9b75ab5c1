"""PPL (token level): drop the highest-perplexity response tokens.

The Q-Tuning paper's PPL token baseline (App. B.3, "removes high-PPL tokens"):
per-token perplexity ``PPL_i = exp(NLL_i)`` under the model being trained; the
tokens the model finds most surprising are treated as noise and leave the loss.

* scores: per-token NLL of the response tokens (``exp`` is monotone, so ranking
  on NLL equals ranking on PPL);
* model: the model being trained, in the no-grad stats pass;
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n))`` lowest-PPL candidates
  (``drop: highest``, default), per sample (``scope: sample``, default, the
  paper's per-sample budget) or across the micro-batch (``scope: batch``); ties:
  earlier position first.

Switch ``drop: lowest`` keeps the highest-loss tokens instead, which is what the
authors' code's baseline path runs under ``token_method="ppl"`` (top-k by
loss; the paper's text describes the opposite).  The code's full behaviour is
``{drop: lowest, scope: batch, count_prompt: true}``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import ScoredTokenPruner, check_choice
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_token_pruner


@register_token_pruner("ppl")
class PplTokens(ScoredTokenPruner):
    required_stats = frozenset({"nll"})
    option_defaults = {"drop": "highest"}
    default_scope = "sample"

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.drop = check_choice(self.name, "drop", self.options["drop"], ("highest", "lowest"))
        self.largest = self.drop == "lowest"  # dropping the highest = keeping the lowest

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        return stats.nll
