"""Superfiltering: IFD scored by a small proxy model.

Paper: Li et al., "Superfiltering: Weak-to-Strong Data Filtering for Fast
Instruction-Tuning" (ACL 2024).  The IFD of Cherry LLM, computed with a small
proxy language model (GPT-2 124M in the paper) instead of the model to be
trained, as a ratio of perplexities:
``IFD = PPL(y | x) / PPL(y) = exp(loss(y | x) - loss(y))``.  Samples with
IFD >= 1 are dropped (the official ``select_data.py`` keeps ``ifd < 1``), and
the top ``int(r_s * N)`` of the whole data set by IFD are kept.

* scores: :func:`static_scores` (perplexity ratio; the answer alone is scored
  after BOS, as the official code scores ``output`` alone);
* model: a small proxy, option ``proxy`` (a model id or path, read by the static
  scoring rule ``qtbench.methods.static``): set ``proxy: gpt2`` (124M, the paper's) on the
  real path, pinned by ``proxy_revision`` (the proxy never inherits the base
  model's revision); ``null`` (default) falls back to the base model, which is
  what the default world uses (its base model is already tiny);
* when: static, once before training (a cached Snakemake output); the same
  subset every epoch, fewer optimizer steps;
* keeps: the ``max(1, round(N * r_s))`` highest among IFD < ``threshold`` (1.0;
  ``null`` disables); ties: lower index first; fewer eligible -> fewer kept (traced).

* length: the training length (``max_length: null`` = ``train.max_length``, set
  by the static_scores rule), capped at the proxy's context (GPT-2: 1024, the
  official code's ``max_length``); both passes score the SAME response token
  ids (the response-alone pass takes exactly the ids the conditioned pass kept
  after truncation: ``baselines._ifd.ifd_examples``).

Compute: two forward passes of the proxy over the data set (prompt+response and
the kept response alone), i.e. at most ``2 * N * L`` proxy tokens, once per data set.

Options: ``threshold`` (1.0), ``proxy`` (null), ``proxy_revision`` (null), ``batch_size`` (16),
``max_length`` (null = ``train.max_length``), ``double_prune`` (false).
"""

from __future__ import annotations

from typing import Any, Mapping

from baselines._ifd import IfdSelection, ifd_from_losses, response_losses
from qtbench.methods.base import Budget
from qtbench.methods.registry import register_sample_pruner


def static_scores(records: list[dict], model: Any, tokenizer: Any, options: Mapping[str, Any]) -> list[float]:
    """IFD = PPL(y | x) / PPL(y) under the proxy ``model`` (one float per record)."""
    Superfiltering(Budget(), options)  # validate the options before any scoring
    conditioned, alone = response_losses(records, model, tokenizer, options, "superfiltering")
    return ifd_from_losses(conditioned, alone, "ppl")


@register_sample_pruner("superfiltering")
class Superfiltering(IfdSelection):
    drop_at_threshold = True
