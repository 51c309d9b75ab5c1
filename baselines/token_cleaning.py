"""TokenCleaning (fixed-model variant): keep the tokens a reference model learned.

Paper: Pang et al., "Token Cleaning: Fine-Grained Data Selection for LLM
Supervised Fine-Tuning" (ICML 2025).  Each response token's influence is the
loss difference between the base model and a reference model trained on a
small clean warm-up set: ``score_i = L_base(x_i) - L_ref(x_i)``.  Tokens with a
high score (the reference learned them, so they carry useful signal) are kept;
the rest are "uninformative or noisy" and leave the loss.  The fixed-model
variant computes the scores once and keeps the top fraction *over the whole
data set* as a static label mask (``select_token_level=global`` in the
authors' ``generate_token_label.py``).

* scores: ``base_nll - ref_nll`` per response token (both models fixed; the
  model being trained plays no role);
* reference: ``models.<m>.reference`` (its own entry; null = the base model
  fine-tuned by the reference_model rule), same tokenizer as the base model;
* keeps, by option ``threshold``:

  - ``global`` (default: the paper's fixed-model pipeline, the most faithful
    reading of qtbench's baseline notes, section 2.4): the token_scores rule
    scores every response token of the data set once with the base and
    reference models (:func:`token_influence_scores`, at ``train.max_length``,
    tokenized as training); the run's cut is the ``k``-th highest of those
    scores, ``k = max(1, round(r_t * n_tokens))`` (:func:`threshold_from_scores`),
    so the data set keeps ``r_t`` of all its response tokens.  Each micro-batch
    keeps its candidates with ``score >= cut`` (ties at the cut all stay), so a
    batch keeps more or fewer than ``r_t``; the trace records the cut;
  - ``batch``: the top ``max(1, round(r_t * n))`` of each micro-batch's
    candidates (``scope: batch``, default) or of each sample (``scope:
    sample``; Rho-1 as TokenCleaning's baseline ranks per sample): the global
    cut estimated on the batch, exact ``r_t`` per batch, no pre-pass;
  - a number: that fixed cut (``score >= threshold``).

  ``count_prompt`` applies to ``batch`` only.  Ties: earlier position first.

Extra cost of ``global``: one pre-pass over the data set with two no-grad
forwards (base and reference) - about one third of an epoch of training
compute - once per model, cached (``results/<exp>/static/<model>/token_scores.npy``,
4 bytes per response token); training itself is unchanged (it still scores
each micro-batch with both models in the stats pass, as ``batch`` does).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from baselines._common import ScoredTokenPruner, require_extra, token_keep_count
from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import register_token_pruner

THRESHOLD_MODES = ("global", "batch")


def token_influence_scores(
    records: list[dict],
    base_model: Any,
    reference_model: Any,
    tokenizer: Any,
    max_length: int,
    chat_template: bool = False,
    batch_size: int = 16,
) -> torch.Tensor:
    """``base_nll - ref_nll`` of every response token of ``records`` (1-d
    float64, records in order), tokenized as training does."""
    from qtbench.data.batches import collate, loss_positions, tokenize_records
    from qtbench.methods.stats import token_nll_entropy

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_records(records, tokenizer, max_length, chat_template)
    device = next(base_model.parameters()).device
    scores = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad)
            ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            base = token_nll_entropy(base_model, ids, attn, want_entropy=False)["nll"].cpu().to(torch.float64)
            ref = token_nll_entropy(reference_model, ids, attn, want_entropy=False)["nll"].cpu().to(torch.float64)
            scores.append((base - ref)[loss_positions(batch["labels"])])
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def threshold_from_scores(scores: Any, token_ratio: float) -> float:
    """The global cut: the ``k``-th highest of ``scores`` (every response token
    of the data set), ``k = max(1, round(r_t * n))``, so that ``score >= cut``
    keeps ``k`` tokens when no score ties the cut."""
    flat = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    k = token_keep_count(int(flat.numel()), token_ratio)
    if k == 0:
        raise ValueError("token_cleaning: the data set has no response tokens to set a threshold on")
    return float(torch.sort(flat, descending=True).values[k - 1])


def global_threshold(
    records: list[dict],
    base_model: Any,
    reference_model: Any,
    tokenizer: Any,
    token_ratio: float,
    batch_size: int = 16,
    max_length: int = 2048,
    chat_template: bool = False,
) -> float:
    """The paper's global cut over ``records`` in one call (tests, notebooks):
    :func:`token_influence_scores` then :func:`threshold_from_scores`."""
    scores = token_influence_scores(records, base_model, reference_model, tokenizer, max_length, chat_template,
                                    batch_size)
    return threshold_from_scores(scores, token_ratio)


def _threshold_option(value: Any) -> str | float:
    if value in THRESHOLD_MODES:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"option 'threshold' of method 'token_cleaning' must be one of {list(THRESHOLD_MODES)} "
                         f"or a number, got {value!r}")
    return float(value)


@register_token_pruner("token_cleaning")
class TokenCleaning(ScoredTokenPruner):
    required_stats = frozenset({"base_nll", "ref_nll"})
    option_defaults = {"threshold": "global"}
    default_scope = "batch"

    @classmethod
    def token_scores_for_options(cls, options: Mapping[str, Any]) -> bool:
        """The global threshold needs the token_scores rule's output."""
        return options.get("threshold", cls.option_defaults["threshold"]) == "global"

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.mode = _threshold_option(self.options["threshold"])
        #: the cut in force (None: per-batch top-k, or global before set_token_scores)
        self.threshold = self.mode if isinstance(self.mode, float) else None
        self.needs_token_scores = self.mode == "global"
        if self.mode != "batch" and self.count_prompt:
            raise ValueError("option 'count_prompt' of method 'token_cleaning' needs threshold: batch "
                             f"(a cut over scores has no token count), got threshold {self.options['threshold']!r}")

    def set_token_scores(self, scores: torch.Tensor) -> None:
        if self.mode != "global":
            raise ValueError("token_cleaning takes the data set's token scores only with threshold: global")
        self.threshold = threshold_from_scores(scores, self.budget.token_ratio)

    def token_scores(self, stats: BatchStats, candidates: torch.Tensor) -> torch.Tensor:
        base = require_extra(stats, "base_nll", self.name).to(torch.float64)
        ref = require_extra(stats, "ref_nll", self.name).to(torch.float64)
        return base - ref

    def select_tokens(self, stats: BatchStats, candidates: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        keep, trace = super().select_tokens(stats, candidates)
        if self.mode != "batch":
            trace["token_threshold"] = self.threshold
        return keep, trace

    def choose(self, stats: BatchStats, candidates: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        if self.mode == "batch":
            return super().choose(stats, candidates, pool)
        if self.threshold is None:
            raise ValueError("token_cleaning with threshold: global needs the data set's token scores before "
                             "training (rule token_scores; qtbench train --token-scores)")
        return candidates & (self.token_scores(stats, candidates) >= self.threshold)
