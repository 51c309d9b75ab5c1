"""FastV (as the Q-Tuning paper adapts it): drop the least-attended tokens.

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models" (ECCV 2024).  FastV
ranks (image) tokens by the average attention they receive and prunes the
least-attended ones.  The Q-Tuning paper adapts it to SFT token pruning: the
response tokens that receive the least final-layer attention leave the loss.

* scores: the stats pass's ``attention_received``: final-layer attention each
  token receives, mean over heads and over the attended query positions that
  can see it, aligned to loss positions (column ``j`` = attention received by
  input token ``j + 1``, the token that position predicts - as the authors'
  code, which drops the BOS key column).  The authors' code averages over *all*
  query positions instead (a plain mean over ``Lq``), which favours early
  tokens; the ranking here is per attending query;
* model: the model being trained, in the no-grad stats pass;
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n_i))`` most-attended response tokens of each
  sample (``scope: sample``, default, as the authors' code and FastV's
  per-sequence ranking) or across the micro-batch (``scope: batch``); ties:
  earlier position first.
"""

from __future__ import annotations

import torch

from baselines._common import ScoredTokenPruner, require_extra
from qtbench.methods.base import BatchStats
from qtbench.methods.registry import register_token_pruner


@register_token_pruner("fastv")
class FastV(ScoredTokenPruner):
    required_stats = frozenset({"attention_received"})
    option_defaults: dict = {}
    default_scope = "sample"
    prompt_score = None  # under count_prompt, prompt positions rank by their own attention (as the code)

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        return require_extra(stats, "attention_received", self.name)
