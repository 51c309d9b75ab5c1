"""SparseVLM (as the Q-Tuning authors adapt it): attention received minus redundancy.

Paper: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient
Vision-Language Model Inference" (arXiv 2410.04417; ``Gumpest/SparseVLMs``).
SparseVLM lets text "raters" score visual tokens by the attention they
receive, prunes a number of tokens set adaptively by the rank of the
attention matrix (``N = L - rank(P)``) and recycles redundant ones.  The
Q-Tuning paper lists it among the token-level baselines of every main table;
its authors' code (``trainer.py`` L1127-1236) adapts it to SFT as:

* scores: ``alpha * p_j - (1 - alpha) * s_j`` with ``alpha = 0.5`` (option
  ``alpha``), where ``p_j`` is the final-layer attention token ``j`` receives,
  mean over heads and over all query positions (the stats pass's
  ``attention_received``, the hook FastV reads) and ``s_j`` its redundancy:
  the mean cosine similarity of the final decoder layer's output hidden state
  of ``j`` to those of all positions (``hidden_redundancy``).  High score =
  much attended and little like the rest.  Aligned to loss positions like
  FastV (column ``j`` scores input token ``j + 1``, the code drops the BOS
  column).  Both means run over the sample's own attended positions; the
  code's run over the padded length (padding rows and columns of shorter
  samples vote, so a score would depend on the batch-mates' lengths);
* model: the model being trained, in the no-grad stats pass (final-layer
  attention through the same hook as FastV; the last decoder layer's output
  through a forward hook; both only when a method asks for them);
* when: every micro-batch, on the candidates the sample pruner left;
* keeps (option ``budget``):

  - ``ratio`` (default): the ``max(1, round(r_t * n_i))`` highest-scored
    response tokens of each sample (``scope: sample``, default, as the code
    ranks per sample) or of the micro-batch (``scope: batch``); ties: earlier
    position first.  This is the paper's intent: a token pruner at the
    table's ``r_t``, dropping the tokens SparseVLM would prune;
  - ``authors_code``: what the code trains.  ``N = max(1, (L - 1) - rank(P))``
    with ``P`` the final-layer attention averaged over heads and the
    micro-batch's rows (``attention_rank``, numerical rank; the code takes it
    over the rows its per-batch random subsample kept, qtbench over the
    micro-batch the stats pass scored; when sharded, the largest of the
    ranks' shards' ranks); each kept
    sample then marks its ``min(N, n_valid - 1)`` *lowest*-scored positions
    (``n_valid``: attended positions, minus special tokens under
    ``special_tokens: drop|keep``) among all attended positions, prompt
    included, and trains the marked response tokens.  So it trains on the
    tokens SparseVLM would prune, ignores ``r_t``, and spends marks on prompt
    positions that carry no loss (baselines.md Sec. 0.1 quirk 4).  The code
    also ranks padding columns; here only attended positions are ranked.
    ``scope`` and ``count_prompt`` do not apply (the code's rule is per sample
    over all positions) and are refused;

* options: ``budget`` (``ratio`` | ``authors_code``), ``alpha`` (weight of the
  attention term, in [0, 1]; the code's 0.5), and the shared ``scope``,
  ``count_prompt``, ``special_tokens`` (``baselines._common``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import ScoredTokenPruner, _order, check_choice, check_fraction, require_extra
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_token_pruner

Tensor = torch.Tensor


@register_token_pruner("sparsevlm")
class SparseVLM(ScoredTokenPruner):
    required_stats = frozenset({"attention_received", "hidden_redundancy"})
    option_defaults: dict = {"budget": "ratio", "alpha": 0.5}
    default_scope = "sample"
    prompt_score = None  # under count_prompt, prompt positions rank by their own score

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.budget_rule = check_choice(self.name, "budget", self.options["budget"], ("ratio", "authors_code"))
        self.alpha = check_fraction(self.name, "alpha", self.options["alpha"])
        if self.budget_rule == "authors_code" and (self.scope != "sample" or self.count_prompt):
            raise ValueError(f"options 'scope' and 'count_prompt' of method {self.name!r} do not apply to "
                             "budget: authors_code (the code marks N positions per sample over all positions)")
        self.required_stats = self.stats_for_options(self.options)

    @classmethod
    def stats_for_options(cls, options: Mapping[str, Any] | None) -> frozenset[str]:
        """``attention_rank`` (an SVD per micro-batch) only under ``budget: authors_code``."""
        if dict(options or {}).get("budget") == "authors_code":
            return cls.required_stats | {"attention_rank"}
        return cls.required_stats

    def token_scores(self, stats: BatchStats, candidates: Tensor) -> Tensor:
        attention = require_extra(stats, "attention_received", self.name).to(torch.float64)
        redundancy = require_extra(stats, "hidden_redundancy", self.name).to(torch.float64)
        return self.alpha * attention - (1.0 - self.alpha) * redundancy

    def choose(self, stats: BatchStats, candidates: Tensor, pool: Tensor) -> Tensor:
        if self.budget_rule == "ratio":
            return super().choose(stats, candidates, pool)
        scores = self.token_scores(stats, candidates)
        rank = int(require_extra(stats, "attention_rank", self.name).max())
        self.n_prune = max(1, int(stats.nll.shape[1]) - rank)
        attended = stats.attention_mask.bool() & candidates.any(dim=1)[:, None]
        allowed = attended & ~self._special(stats, candidates)
        marked = torch.zeros_like(candidates)
        for row in torch.nonzero(attended.any(dim=1), as_tuple=True)[0].tolist():
            positions = torch.nonzero(attended[row], as_tuple=True)[0]
            k = min(self.n_prune, max(0, int(allowed[row].sum()) - 1))
            marked[row, positions[_order(scores[row, positions], largest=False)[:k]]] = True
        return marked

    def select_tokens(self, stats: BatchStats, candidates: Tensor) -> tuple[Tensor, dict[str, Any]]:
        keep, trace = super().select_tokens(stats, candidates)
        if self.budget_rule == "authors_code":
            trace["sparsevlm_n_prune"] = self.n_prune
        return keep, trace
