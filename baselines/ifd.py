"""IFD (Cherry LLM): keep the samples whose instruction helps the response least.

Paper: Li et al., "From Quantity to Quality: Boosting LLM Performance with
Self-Guided Data Selection for Instruction Tuning" (NAACL 2024, "Cherry LLM").
Instruction-Following Difficulty ``IFD(Q, A) = s(A | Q) / s(A)``: the mean
cross-entropy of the answer tokens given the instruction, divided by the mean
cross-entropy of the answer alone.  A high IFD means the instruction barely
helps the model produce the answer (hard, informative samples); IFD > 1 means
the instruction even hurts (the pair is likely misaligned) and such samples are
dropped.  The rest are ranked by IFD, highest first.

* scores: IFD with mean losses (:func:`static_scores`), prompt and response as
  the plain template renders them (``qtbench.data.template.format_prompt``); ``s(A)``
  scores the response after BOS alone (Cherry's code prefixes a short
  "### Response:" cue; Superfiltering scores the answer alone, as here);
* length: the training length (``max_length: null`` = ``train.max_length``,
  filled in by the static_scores rule; capped at the scoring model's context),
  tokenized as training does (an over-long record loses its response's tail).
  Both passes score the SAME response token ids: the response-alone pass takes
  exactly the ids the conditioned pass kept (``baselines._ifd.ifd_examples``),
  so a long prompt cannot truncate one pass's response and not the other's.
  Cherry's code scores at 512 (Alpaca example) / 1024 tokens and truncates the
  two passes separately; the training length is the faithful reading for a
  benchmark that trains at 2048;
* model: the base model (option ``proxy: null``, default; a model id or path
  there scores with that model instead - Cherry's paper scores with a briefly
  "pre-experienced" copy of the base model);
* when: static, once before training (a cached Snakemake output per model x
  data set); the same subset every epoch, fewer optimizer steps;
* keeps: the ``max(1, round(N * r_s))`` highest IFD among the eligible samples
  (ties: lower index first).  Eligible: IFD is a number and IFD <= ``threshold``
  (default 1.0; Cherry's code drops ``mean_rate > 1``, so IFD = 1 stays;
  ``threshold: null`` disables the filter).  The budget counts the whole data set
  (as Superfiltering; Cherry's script takes ``sample_rate`` of the filtered
  set): when fewer samples are eligible, the epoch keeps only those (traced as
  ``epoch_kept``); if none is, the filter is ignored (traced ``filter_ignored``).

Options: ``threshold`` (1.0), ``proxy`` (null = the base model; read by the
static scoring rule, ``qtbench.methods.static``), ``batch_size`` (16) and ``max_length``
(null = ``train.max_length``) for scoring, ``double_prune`` (false).

Compute: two no-grad forwards of the scoring model over the data set, once per
model x data set (the conditioned pass over up to ``max_length`` tokens per
record, the response-alone pass over its kept response tokens).
"""

from __future__ import annotations

from typing import Any, Mapping

from baselines._ifd import IfdSelection, ifd_from_losses, response_losses
from qtbench.methods.base import Budget
from qtbench.methods.registry import register_sample_pruner


def static_scores(records: list[dict], model: Any, tokenizer: Any, options: Mapping[str, Any]) -> list[float]:
    """IFD = mean loss(y | x) / mean loss(y) under ``model`` (one float per record)."""
    Ifd(Budget(), options)  # validate the options before any scoring
    conditioned, alone = response_losses(records, model, tokenizer, options, "ifd")
    return ifd_from_losses(conditioned, alone, "loss")


@register_sample_pruner("ifd")
class Ifd(IfdSelection):
    drop_at_threshold = False
