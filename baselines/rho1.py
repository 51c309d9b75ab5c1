"""Rho-1: selective language modeling by excess loss over a reference model.

Paper: Lin et al., "Rho-1: Not All Tokens Are What You Need" (NeurIPS 2024).
A reference model is trained on clean, desired data; each training token's
excess loss ``L_delta = L_theta(x_i) - L_ref(x_i)`` (current minus reference
loss) says how much there is still to learn from it that the clean
distribution endorses; only the top ``k%`` tokens by excess loss carry the
loss.  "In practice, token selection can be implemented by ranking the tokens
in a batch according to their excess loss and using only the top k% of tokens
for training" (Sec. 2.3).

* scores: ``nll - ref_nll`` per response token (``ref_nll`` from the configured
  reference model; in the Q-Tuning authors' runs an SFT'd copy of the base
  model; default world: the base model fine-tuned briefly on a clean held-out
  split);
* model: the model being trained and the reference, in the no-grad stats pass;
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n))`` highest excess losses.  Default
  ``scope: batch`` (ranked across the micro-batch, as the Rho-1 paper says and as
  the authors' code does); ``scope: sample`` keeps the top ``r_t`` of each
  sample's response tokens (the reading in qtbench's paper notes).  Ties:
  earlier row, then earlier position.
"""

from __future__ import annotations

import torch

from baselines._common import ScoredTokenPruner, require_extra
from qtbench.methods.base import BatchStats
from qtbench.methods.registry import register_token_pruner


@register_token_pruner("rho1")
class Rho1(ScoredTokenPruner):
    required_stats = frozenset({"nll", "ref_nll"})
    option_defaults: dict = {}
    default_scope = "batch"

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        return stats.nll.to(torch.float64) - require_extra(stats, "ref_nll", self.name).to(torch.float64)
