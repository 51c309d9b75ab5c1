"""FastV (as the Q-Tuning paper adapts it): drop the least-attended tokens.

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models" (ECCV 2024).  FastV
ranks (image) tokens by the average attention they receive,
``phi_j = (1/n) sum_q a_{q->j}`` (mean over heads and queries), and prunes the
least-attended ones.  The Q-Tuning paper adapts it to SFT token pruning: the
response tokens that receive the least final-layer attention leave the loss.

* scores: final-layer attention each token receives, mean over heads, aligned
  to loss positions (column ``j`` = attention received by input token ``j + 1``,
  the token that position predicts - as the authors' code, which drops the BOS
  key column).  Option ``attention_mean`` says over which queries:

  - ``all_queries`` (default; the stats pass's ``attention_received``): a plain
    mean over all the sample's attended query positions - FastV's ``phi_j``
    and the authors' adaptation (``trainer.py`` L1078-1125:
    ``attn.mean(dim=1).mean(dim=1)``).  Under causal attention a key is seen
    only by the queries at or after it, so this favours early tokens; it is
    the default because it is what the paper's FastV rows ran.  (The authors'
    mean runs over the padded length, so padding rows of shorter samples vote
    too and a score depends on the batch-mates' lengths; here it is the
    sample's own queries - the same for the longest sample of a batch.)
  - ``visible_queries`` (``attention_received_visible``): divided by the
    number of attended queries that can see the key, i.e. the mean attention
    per attending query; removes the positional bias (qtbench's earlier
    default, kept as a reading of "least attention" that does not depend on
    position);
* model: the model being trained, in the no-grad stats pass (only the final
  layer's attention is read, through a hook; the model keeps its SDPA/flash
  attention);
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n_i))`` most-attended response tokens of each
  sample (``scope: sample``, default, as the authors' code and FastV's
  per-sequence ranking) or across the micro-batch (``scope: batch``); ties:
  earlier position first.  ``count_prompt`` and ``special_tokens`` as every
  token pruner (``baselines._common``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import ScoredTokenPruner, check_choice, require_extra
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_token_pruner

#: option ``attention_mean`` -> the statistic it reads
ATTENTION_STAT = {"all_queries": "attention_received", "visible_queries": "attention_received_visible"}


@register_token_pruner("fastv")
class FastV(ScoredTokenPruner):
    required_stats = frozenset({"attention_received"})
    option_defaults: dict = {"attention_mean": "all_queries"}
    default_scope = "sample"
    prompt_score = None  # under count_prompt, prompt positions rank by their own attention (as the code)

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        mean = check_choice(self.name, "attention_mean", self.options["attention_mean"], tuple(ATTENTION_STAT))
        self.stat = ATTENTION_STAT[mean]
        self.required_stats = frozenset({self.stat})

    @classmethod
    def stats_for_options(cls, options: Mapping[str, Any] | None) -> frozenset[str]:
        """The statistic the ``attention_mean`` reading needs (read by the workflow)."""
        mean = dict(options or {}).get("attention_mean", "all_queries")
        return frozenset({ATTENTION_STAT.get(mean, "attention_received")})  # the constructor checks the value

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        return require_extra(stats, self.stat, self.name)
