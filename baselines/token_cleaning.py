"""TokenCleaning (fixed-model variant): keep the tokens a reference model learned.

Paper: Pang et al., "Token Cleaning: Fine-Grained Data Selection for LLM
Supervised Fine-Tuning" (ICML 2025).  Each response token's influence is the
loss difference between the base model and a reference model trained on a
small clean warm-up set: ``score_i = L_base(x_i) - L_ref(x_i)``.  Tokens with a
high score (the reference learned them, so they carry useful signal) are kept;
the rest are "uninformative or noisy" and leave the loss.  The fixed-model
variant computes the scores once and keeps the top fraction *over the whole
data set* as a static label mask.

* scores: ``base_nll - ref_nll`` per response token (both models fixed; the
  model being trained plays no role);
* when: every micro-batch, on the candidates the sample pruner left;
* keeps: the ``max(1, round(r_t * n))`` highest scores across the micro-batch
  (default ``scope: batch``).  Approximation: the paper's threshold is the
  global ``(1 - r_t)`` quantile of all tokens' scores in the data set; a
  micro-batch top-``r_t`` is that threshold estimated on the batch, so each
  batch keeps exactly ``r_t`` instead of the data set doing so on average.
  Because both models are fixed, the exact static mask is available by setting
  option ``threshold`` to the global cut (computed once over the data set by
  :func:`global_threshold`, e.g. in a Snakemake rule): a candidate is then kept
  iff ``score >= threshold`` (no per-batch count; ties at the cut all stay).
  ``scope: sample`` ranks within each sample.  Ties: earlier position first.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import ScoredTokenPruner, require_extra, token_keep_count
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_token_pruner


def global_threshold(
    records: list[dict],
    base_model: Any,
    reference_model: Any,
    tokenizer: Any,
    token_ratio: float,
    batch_size: int = 16,
    max_length: int = 512,
    chat_template: bool = False,
) -> float:
    """The paper's global cut: the ``k``-th highest ``base_nll - ref_nll`` over
    every response token of ``records``, ``k = max(1, round(r_t * n_tokens))``.

    Pass the result as option ``threshold`` to apply the static mask exactly."""
    from qtbench.data.batches import collate, tokenize_records
    from qtbench.methods.stats import token_nll_entropy

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_records(records, tokenizer, max_length, chat_template)
    scores = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad)
        device = next(base_model.parameters()).device
        ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        base = token_nll_entropy(base_model, ids, attn, want_entropy=False)["nll"].cpu()
        ref = token_nll_entropy(reference_model, ids, attn, want_entropy=False)["nll"].cpu()
        response = batch["labels"][:, 1:] != -100
        scores.append((base - ref)[response].to(torch.float64))
    flat = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    k = token_keep_count(int(flat.numel()), token_ratio)
    if k == 0:
        raise ValueError("global_threshold: the records have no response tokens")
    return float(torch.sort(flat, descending=True).values[k - 1])


@register_token_pruner("token_cleaning")
class TokenCleaning(ScoredTokenPruner):
    required_stats = frozenset({"base_nll", "ref_nll"})
    option_defaults = {"threshold": None}
    default_scope = "batch"

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        threshold = self.options["threshold"]
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ValueError(f"option 'threshold' of method 'token_cleaning' must be a number or null, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        if self.threshold is not None and self.count_prompt:
            raise ValueError("options 'threshold' and 'count_prompt' of method 'token_cleaning' exclude each other")

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        base = require_extra(stats, "base_nll", self.name).to(torch.float64)
        ref = require_extra(stats, "ref_nll", self.name).to(torch.float64)
        return base - ref

    def choose(self, stats: BatchStats, candidates: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return super().choose(stats, candidates, pool)
        return candidates & (self.token_scores(stats, candidates) >= self.threshold)
