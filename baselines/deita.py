"""DEITA: complexity x quality scores, then a diversity filter on embeddings.

Paper: Liu et al., "What Makes Good Data for Alignment? A Comprehensive Study
of Automatic Data Selection in Instruction Tuning" (ICLR 2024, arXiv
2312.15685; code ``hkust-nlp/deita``).  Two scorers (LLaMA models fine-tuned
on ChatGPT-ranked Evol-Instruct variants) rate a query's complexity and a
response's quality; the evol score is their product; a greedy "Repr Filter"
walks the data by evol score and skips samples too similar to those already
chosen.

* scores: complexity ``c`` and quality ``q`` with the prompts of DEITA's
  scorers (``selection/scorer/llama_scorer.py``: "Please identify the
  complexity score of the following user query ... ##Complexity: " and "...
  the quality score of the Response corresponding to the Question ...
  ##Quality: "), each the expected value ``sum_s s * p(s)`` over the
  next-token probabilities of the digits 1..6 renormalised over them
  (``Scorer.infer_score``: a softmax over those six logits times [1..6]);
  ``evol = c * q`` (single-turn data: no sum over turns).  The query is the
  instruction, plus the input on its own line;
* diversity (``Combined_Filter`` / ``IterativeFilter.filter`` with batch size
  1): walk the samples by evol score, highest first (ties: lower index), and
  accept one when the cosine similarity of its embedding to its nearest
  already-accepted sample is <= ``tau`` (0.9; DEITA rejects ``sim > tau``),
  i.e. its cosine distance >= 1 - tau; the first is always accepted.  The walk
  stops at the budget;
* models: ``complexity_scorer`` and ``quality_scorer`` (required; the released
  ones are ``hkust-nlp/deita-complexity-scorer`` / ``-quality-scorer``, 7B),
  ``embedder`` (optional: any model, loaded with ``AutoModel``; null = the
  quality scorer's own last hidden state), each ``{path, revision,
  trust_remote_code, dtype}``.  Embedding: the last hidden state of
  instruction + response, mean-pooled (``pooling: mean``, default) or at the
  last token (``pooling: last``, DEITA's CLM embedder).  On the default world
  all three are the world's pretrained tiny base model (``path: world``,
  ``stand_in: true``: a stand-in that runs the real code path; its ratings say
  nothing of DEITA's scorers);
* when: static, once before training (a cached Snakemake output); the same
  subset every epoch, fewer optimizer steps;
* keeps: the first ``max(1, round(N * r_s))`` samples the walk accepts.  When
  the filter accepts fewer than that (a small or anisotropic embedding space),
  ``shortfall: fill`` (default, reading chosen so that every method trains at
  the run's budget) tops the subset up with the highest-evol rejected samples;
  ``shortfall: keep_fewer`` (DEITA's code) keeps only the accepted ones (the
  trace's ``epoch_kept`` says how many).  The cached score is ``evol + 100``
  for an accepted sample and ``evol`` (<= 36) for a rejected one, so that the
  selection is a top-k of it; ``extras`` of the scores file hold ``complexity``,
  ``quality``, ``evol``, ``accepted`` and ``max_similarity``.

Compute: two scorer forward passes (no generation) and one embedding pass per
sample, and the greedy walk (``N x accepted`` similarities), once per data set.

Options: ``complexity_scorer``, ``quality_scorer`` (required), ``embedder``
(null), ``tau`` (0.9), ``pooling`` (mean), ``shortfall`` (fill), ``stand_in``
(false), ``batch_size`` (16), ``max_length`` (512), ``chat_template`` (auto),
``double_prune`` (false).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from baselines._common import check_choice, check_fraction
from baselines._judge import (
    JudgeSelection,
    cosine_similarity_matrix,
    digit_logits,
    digit_token_ids,
    embed,
    expected_rating,
    query_text,
    render,
    uses_chat_template,
)
from qtbench.methods.base import Budget
from qtbench.methods.registry import register_sample_pruner
from qtbench.methods.static import JudgeSlot

COMPLEXITY_TEMPLATE = ("You are a helpful assistant. Please identify the complexity score of the following user query. "
                       "\n##Query: {instruction}  \n##Complexity: ")
QUALITY_TEMPLATE = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to "
                    "the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
SCORES = (1, 2, 3, 4, 5, 6)
#: added to the evol score of a sample the diversity filter accepts (evol <= 6 * 6 = 36)
ACCEPTED_OFFSET = 100.0


def repr_filter(evol: Sequence[float], embeddings: torch.Tensor, tau: float) -> tuple[list[bool], list[float]]:
    """DEITA's greedy Repr Filter over all samples: walk by ``evol`` descending
    (ties: lower index first) and accept a sample when its largest cosine
    similarity to the samples accepted so far is <= ``tau``.  Returns, per
    sample, whether it was accepted and that largest similarity when it was
    visited (``-inf`` for the first)."""
    n = len(evol)
    order = sorted(range(n), key=lambda i: (-float(evol[i]), i))
    accepted = [False] * n
    max_sim = [float("-inf")] * n
    if n == 0:
        return accepted, max_sim
    running = torch.full((n,), float("-inf"), dtype=torch.float64)
    normed = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=1)
    for i in order:
        max_sim[i] = float(running[i])
        if running[i] <= tau:  # -inf for the first sample: always accepted
            accepted[i] = True
            running = torch.maximum(running, normed @ normed[i])
    return accepted, max_sim


def selection_scores(evol: Sequence[float], accepted: Sequence[bool]) -> list[float]:
    """The cached score: ``evol + ACCEPTED_OFFSET`` if accepted, else ``evol``."""
    return [float(e) + (ACCEPTED_OFFSET if a else 0.0) for e, a in zip(evol, accepted)]


def static_scores(records: list[dict], judges: Mapping[str, Any], tokenizer: Any, options: Mapping[str, Any]) -> dict:
    """Complexity, quality, evol score and the Repr Filter's verdict per record
    (``judges``: option key -> (model, tokenizer))."""
    pruner = Deita(Budget(), options)  # validate the options before any scoring
    pruner.check_judges()
    opts = pruner.options
    size = {"batch_size": opts["batch_size"], "max_length": opts["max_length"]}
    queries = [query_text(r) for r in records]

    model, tok = judges["complexity_scorer"]
    chat = uses_chat_template(tok, opts["chat_template"])
    prompts = [render(tok, "", COMPLEXITY_TEMPLATE.format(instruction=q), "", chat) for q in queries]
    complexity = expected_rating(digit_logits(model, tok, prompts, digit_token_ids(tok, SCORES), **size), SCORES)

    model, tok = judges["quality_scorer"]
    chat = uses_chat_template(tok, opts["chat_template"])
    prompts = [render(tok, "", QUALITY_TEMPLATE.format(instruction=q, output=str(r.get("output") or "")), "", chat)
               for q, r in zip(queries, records)]
    quality = expected_rating(digit_logits(model, tok, prompts, digit_token_ids(tok, SCORES), **size), SCORES)

    evol = (complexity * quality).tolist()
    model, tok = judges["embedder"]
    texts = [f"{q}\n{r.get('output') or ''}" for q, r in zip(queries, records)]
    embeddings = embed(model, tok, texts, pooling=opts["pooling"], **size)
    accepted, max_sim = repr_filter(evol, embeddings, pruner.tau)
    return {"scores": selection_scores(evol, accepted), "complexity": complexity.tolist(), "quality": quality.tolist(),
            "evol": evol, "accepted": accepted, "max_similarity": [None if s == float("-inf") else s for s in max_sim]}


@register_sample_pruner("deita")
class Deita(JudgeSelection):
    judge_slots = (JudgeSlot("complexity_scorer"), JudgeSlot("quality_scorer"),
                   JudgeSlot("embedder", required=False, encoder=True, fallback="quality_scorer"))
    extra_defaults = {"tau": 0.9, "pooling": "mean", "shortfall": "fill"}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.tau = check_fraction(self.name, "tau", self.options["tau"])
        check_choice(self.name, "pooling", self.options["pooling"], ("mean", "last"))
        self.shortfall = check_choice(self.name, "shortfall", self.options["shortfall"], ("fill", "keep_fewer"))

    def eligible(self, score: float) -> bool:
        return super().eligible(score) and (self.shortfall == "fill" or score >= ACCEPTED_OFFSET)
