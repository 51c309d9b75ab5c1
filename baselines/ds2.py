"""DS2: LLM ratings corrected by a score-transition matrix, plus long-tail diversity.

Paper: Pang et al., "Improving Data Efficiency via Curating LLM-Driven Rating
Systems" (ICLR 2025, arXiv 2410.10877; code ``UCSC-REAL/DS2``).  An LLM rates
every sample; the ratings are treated as noisy labels whose noise is a K x K
score-transition matrix ``T[i, j] = P(rated j | true score i)``, estimated
without ground truth from the ratings of embedding neighbours (k-NN
clusterability, the HOC estimator of Docta); samples whose neighbours disagree
beyond what ``T`` explains get a curated rating; selection takes the highest
curated ratings and, within the last score admitted, the most long-tail
(farthest from their neighbours) samples.

* ratings (``LLM_scoring/scoring.py``): DS2's data-quality-estimator prompt
  (rarity, complexity, informativeness) with the sample as ``### user: ... /
  ### assistant: ...``; DS2 asks for 1-10 and compresses to six classes 0..5
  (<= 4 -> 0, >= 9 -> 5); here (reading chosen) the prompt asks for the overall
  rating on 0..5 directly, so that it is one digit token, and the raw rating is
  the most probable digit (greedy decoding's answer) - a discrete label, as the
  curation needs; the expected digit value is kept in the extras;
* correction (``score_curation/docta``), :func:`curate_ratings`:
  1. ``T`` and the true-score prior ``p`` by HOC (:func:`estimate_transition`):
     the first-, second- and third-order consensus frequencies of (rating of a
     sample, of its nearest and second-nearest neighbour), over ``hoc_rounds``
     (50) random 90% subsets, fitted by Adam (lr 0.1, 1501 steps, best loss
     kept) to their analytical values ``sum_i p_i T_ij``, ``sum_i p_i T_ij
     T_il``, ``sum_i p_i T_ij T_il T_im`` (softmax-parametrised ``T``, ``p``;
     init ``T = softmax(5 I - 1)``);
  2. SimiFeat-rank detection over ``epochs`` (51) random 90% subsets
     (:func:`simifeat_round`): a sample's k-NN (k = 10, itself included, its own
     weight set to ``2 v_1 - v_2``) rating histogram weighted by ``1 - cosine
     distance``, l2-normalised; score ``-log P(own rating)``; within each
     rating c the top ``1 - P(true c | rated c)`` fraction by that score (clip
     [0.05, 0.95]; ``P(true c | rated c) = T[c, c] p_c / P(rated c)``) is
     flagged, with the histogram's arg-max as suggestion;
  3. a sample flagged in more than half its rounds (``(flags + 1) / (rounds +
     2) > 0.5``) takes the most suggested other rating when its confidence
     ``(count + 1) / (total + K) * noisy_avg`` >= ``confidence`` (0.5);
* long-tail score (``get_lr_score.score_from_embedding``): the mean cosine
  distance ``x`` to the ``k`` (10) nearest other samples, mapped to
  ``2 / (1 + exp(-x)) - 1`` (DS2's own call counts the sample itself and its
  duplicate in a doubled data set among the k; here they are left out);
* models: ``rater`` (required) and ``embedder`` (optional, loaded with
  ``AutoModel``; DS2 uses ``BAAI/bge-large-en-v1.5``; null = the rater's
  mean-pooled last hidden state), each ``{path, revision, trust_remote_code,
  dtype}``.  On the default world both are the world's pretrained tiny base
  model (``path: world``, ``stand_in: true``: a stand-in on the real code path);
* when: static, once before training (a cached Snakemake output); the same
  subset every epoch, fewer optimizer steps;
* keeps (``subset_generation.extract_data``): the ``max(1, round(N * r_s))``
  samples with the highest curated rating, ties within a rating broken by the
  higher long-tail score.  The cached score is ``curated rating + long-tail
  score`` (the long-tail score is < 1, so a top-k of it is exactly that order);
  ``extras`` hold ``rating``, ``expected_rating``, ``curated``, ``long_tail``,
  ``noisy_avg`` and the ``transition_matrix``.

Compute: one rater forward pass and one embedding pass per sample, an N x N
similarity matrix, ~100 k-NN passes over 90% subsets, a 6 x 6 fit; once per
data set.  Random subsets are drawn from option ``seed`` (0), so the cached
scores are reproducible.

Options: ``rater`` (required), ``embedder`` (null), ``k`` (10), ``epochs``
(51), ``hoc_rounds`` (50), ``hoc_steps`` (1501), ``confidence`` (0.5),
``seed`` (0), ``stand_in`` (false), ``batch_size`` (16), ``max_length`` (512),
``chat_template`` (auto), ``double_prune`` (false).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from baselines._common import check_fraction, check_positive_int, make_generator
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

SYSTEM_PROMPT = ("As a data quality estimator, your task is to assess the quality of data sample based on the criteria: "
                 "Rarity, Complexity, Informativeness. Please rate the sample on a scale from 0 to 5, where a higher "
                 "score indicates higher level of quality. Ensure that the ratings are not overly concentrated around a "
                 "specific score. If multiple samples have similar qualities, consider spreading the scores more evenly "
                 "to reflect subtle differences.")
USER_PROMPT = ("Please carefully evaluate the following data sample and return its overall rating, a single integer "
               "from 0 to 5. \n## Data sample (conversation):\n### user: {query}\n### assistant: {output}\n")
CUE = "Overall rating:"
RATINGS = (0, 1, 2, 3, 4, 5)


# --------------------------------------------------------------------------- neighbours


def _knn(distance: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` smallest distances per row, ascending
    (ties: lower index first)."""
    order = torch.sort(distance, dim=1, stable=True)
    return order.values[:, :k], order.indices[:, :k]


def _others(distance: torch.Tensor) -> torch.Tensor:
    """The distance matrix with each sample's own entry moved out of reach."""
    return distance + torch.diag(torch.full((distance.shape[0],), math.inf, dtype=distance.dtype))


def long_tail_scores(embeddings: torch.Tensor, k: int = 10) -> list[float]:
    """DS2's long-tail score: ``2 / (1 + exp(-x)) - 1`` with ``x`` the mean cosine
    distance of a sample to its ``k`` nearest other samples."""
    n = embeddings.shape[0]
    if n < 2:
        return [0.0] * n
    distance = _others(1.0 - cosine_similarity_matrix(embeddings))
    values, _ = _knn(distance, min(k, n - 1))
    return [2.0 / (1.0 + math.exp(-float(x))) - 1.0 for x in values.mean(dim=1)]


# --------------------------------------------------------------------------- HOC: the transition matrix


def consensus_frequencies(patterns: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """First-, second- and third-order frequencies of rating patterns ``[M, 3]``
    (own rating, nearest neighbour's, second-nearest's)."""
    m = max(1, patterns.shape[0])
    k = num_classes
    c1 = torch.zeros(k, dtype=torch.float64)
    c2 = torch.zeros(k, k, dtype=torch.float64)
    c3 = torch.zeros(k, k, k, dtype=torch.float64)
    for a, b, c in patterns.tolist():
        c1[a] += 1
        c2[a, b] += 1
        c3[a, b, c] += 1
    return [c1 / m, c2 / m, c3 / m]


def consensus_analytical(T: torch.Tensor, p: torch.Tensor) -> list[torch.Tensor]:
    """The consensus frequencies that transition matrix ``T`` and prior ``p``
    imply when a sample and its two neighbours share their true score."""
    weighted = p[:, None] * T  # [i, j] = p_i T_ij
    c2 = weighted.T @ T
    c3 = (weighted[:, :, None, None] * T[:, None, :, None] * T[:, None, None, :]).sum(dim=0)
    return [p @ T, c2, c3]


def estimate_transition(frequencies: list[torch.Tensor], num_classes: int, steps: int = 1501, lr: float = 0.1,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """HOC: fit ``(T, p)`` to the consensus ``frequencies`` (Docta's ``calc_func``:
    Adam on softmax-parametrised ``T`` and ``p``, loss = sum over the three
    orders of the Frobenius norm of the difference, the best loss after step 5 kept)."""
    k = num_classes
    t_param = (5.0 * torch.eye(k, dtype=torch.float64) - torch.ones(k, k, dtype=torch.float64)).requires_grad_(True)
    noise = torch.rand(k, generator=generator, dtype=torch.float64) * 0.1
    p_param = (torch.ones(k, dtype=torch.float64) / k + noise).requires_grad_(True)
    optimizer = torch.optim.Adam([t_param, p_param], lr=lr)
    best, best_t, best_p = math.inf, t_param.detach().clone(), p_param.detach().clone()
    for step in range(steps):
        optimizer.zero_grad()
        analytical = consensus_analytical(torch.softmax(t_param, dim=1), torch.softmax(p_param, dim=0))
        loss = sum(torch.linalg.norm((est - ana).reshape(-1)) for est, ana in zip(frequencies, analytical))
        if step > 5 and float(loss.detach()) < best:
            best, best_t, best_p = float(loss.detach()), t_param.detach().clone(), p_param.detach().clone()
        loss.backward()
        optimizer.step()
    return torch.softmax(best_t, dim=1), torch.softmax(best_p, dim=0)


# --------------------------------------------------------------------------- SimiFeat: detection and curation


def knn_rating_distribution(distance: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Docta's ``count_knn_distribution``: over each sample's ``k`` nearest
    (itself first, its own distance replaced by ``2 v_1 - v_2``), the ratings
    weighted by ``1 - distance``, l2-normalised per sample."""
    values, indices = _knn(distance, k)
    values = values.clone()
    if k >= 3:
        values[:, 0] = 2.0 * values[:, 1] - values[:, 2]
    neighbour_labels = labels[indices]
    counts = torch.zeros(distance.shape[0], num_classes, dtype=torch.float64)
    for c in range(num_classes):
        counts[:, c] = ((1.0 - values) * (neighbour_labels == c)).sum(dim=1)
    return torch.nn.functional.normalize(counts, p=2.0, dim=1)


def simifeat_round(distance: torch.Tensor, labels: torch.Tensor, clean_given_rated: Sequence[float],
                   num_classes: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One SimiFeat-rank round over a subset: (flagged [M] bool, suggested rating [M])."""
    probs = knn_rating_distribution(distance, labels, num_classes, k)
    score = -torch.log(probs[torch.arange(len(labels)), labels] + 1e-8).numpy()
    suggested = probs.argmax(dim=1).numpy()
    labels_np = labels.numpy()
    flagged = np.zeros(len(labels_np), dtype=bool)
    for c in range(num_classes):
        members = labels_np == c
        if not members.any():
            continue
        rate = 1.0 - min(float(clean_given_rated[c]), 1.0)
        rate = 0.95 if rate >= 1.0 else (0.05 if rate <= 0.0 else rate)
        threshold = np.percentile(score[members], 100 * (1 - rate))
        flagged |= (score >= threshold) & members
    return flagged, suggested


def curate_ratings(labels: Sequence[int], embeddings: torch.Tensor, num_classes: int = 6, k: int = 10,
                   epochs: int = 51, hoc_rounds: int = 50, hoc_steps: int = 1501, confidence: float = 0.5,
                   seed: int = 0, sample_fraction: float = 0.9) -> dict[str, Any]:
    """DS2's score curation (see the module docstring): returns ``curated``
    ratings, ``noisy_avg`` per sample, and the estimated ``transition_matrix``
    and ``prior``."""
    labels_t = torch.tensor([int(x) for x in labels], dtype=torch.long)
    n = len(labels_t)
    out = {"curated": labels_t.tolist(), "noisy_avg": [0.0] * n,
           "transition_matrix": torch.eye(num_classes).tolist(), "prior": [1.0 / num_classes] * num_classes}
    size = int(n * sample_fraction)
    if size < 3:  # no two neighbours to compare with: nothing to curate
        return out
    distance = 1.0 - cosine_similarity_matrix(embeddings)
    generator = make_generator(seed, "ds2")

    # 1. HOC: (own, 1st, 2nd nearest other) rating patterns on random subsets
    frequencies = [torch.zeros(num_classes, dtype=torch.float64), torch.zeros((num_classes,) * 2, dtype=torch.float64),
                   torch.zeros((num_classes,) * 3, dtype=torch.float64)]
    for _ in range(hoc_rounds):
        subset = torch.randperm(n, generator=generator)[:size]
        _, nearest = _knn(_others(distance[subset][:, subset]), 2)
        patterns = torch.stack([labels_t[subset], labels_t[subset][nearest[:, 0]], labels_t[subset][nearest[:, 1]]], dim=1)
        for total, part in zip(frequencies, consensus_frequencies(patterns, num_classes)):
            total += part / hoc_rounds
    T, prior = estimate_transition(frequencies, num_classes, steps=hoc_steps, generator=generator)
    rated = torch.bincount(labels_t, minlength=num_classes).to(torch.float64) / n
    clean_given_rated = [float(T[c, c] * prior[c] / rated[c]) if rated[c] > 0 else 1.0 for c in range(num_classes)]

    # 2. SimiFeat-rank over random subsets
    flags = np.zeros(n)
    rounds = np.zeros(n)
    suggestions = np.zeros((n, num_classes))
    for _ in range(epochs):
        subset = torch.randperm(n, generator=generator)[:size]
        flagged, suggested = simifeat_round(distance[subset][:, subset], labels_t[subset], clean_given_rated,
                                            num_classes, min(k, size))
        idx = subset.numpy()
        rounds[idx] += 1
        flags[idx[flagged]] += 1
        suggestions[idx[flagged], suggested[flagged]] += 1

    # 3. curation
    noisy_avg = (flags + 1) / (rounds + 2)
    suggest = (suggestions + 1) / (suggestions.sum(axis=1, keepdims=True) + num_classes)
    suggest[np.arange(n), labels_t.numpy()] = -1
    curated = labels_t.tolist()
    for i in np.nonzero(noisy_avg > 0.5)[0]:
        best = int(np.argmax(suggest[i]))
        if suggest[i, best] * noisy_avg[i] >= confidence:
            curated[i] = best
    out.update(curated=curated, noisy_avg=noisy_avg.tolist(), transition_matrix=T.tolist(), prior=prior.tolist())
    return out


# --------------------------------------------------------------------------- scoring


def static_scores(records: list[dict], judges: Mapping[str, Any], tokenizer: Any, options: Mapping[str, Any]) -> dict:
    """Curated rating + long-tail score per record (``judges``: option key -> (model, tokenizer))."""
    pruner = Ds2(Budget(), options)  # validate the options before any scoring
    pruner.check_judges()
    opts = pruner.options
    size = {"batch_size": opts["batch_size"], "max_length": opts["max_length"]}
    model, tok = judges["rater"]
    chat = uses_chat_template(tok, opts["chat_template"])
    prompts = [render(tok, SYSTEM_PROMPT, USER_PROMPT.format(query=query_text(r), output=str(r.get("output") or "")),
                      CUE, chat) for r in records]
    logits = digit_logits(model, tok, prompts, digit_token_ids(tok, RATINGS), **size)
    ratings = logits.argmax(dim=1).tolist() if len(records) else []
    model, tok = judges["embedder"]
    embeddings = embed(model, tok, [f"{query_text(r)}\n{r.get('output') or ''}" for r in records], **size)
    curation = curate_ratings(ratings, embeddings, len(RATINGS), k=opts["k"], epochs=opts["epochs"],
                              hoc_rounds=opts["hoc_rounds"], hoc_steps=opts["hoc_steps"],
                              confidence=opts["confidence"], seed=opts["seed"])
    long_tail = long_tail_scores(embeddings, opts["k"])
    return {"scores": selection_scores(curation["curated"], long_tail), "rating": ratings,
            "expected_rating": expected_rating(logits, RATINGS).tolist(), "curated": curation["curated"],
            "long_tail": long_tail, "noisy_avg": curation["noisy_avg"],
            "transition_matrix": curation["transition_matrix"]}


def selection_scores(curated: Sequence[int], long_tail: Sequence[float]) -> list[float]:
    """The cached score ``curated + long_tail`` (long-tail < 1: rating first, then diversity)."""
    return [float(c) + float(t) for c, t in zip(curated, long_tail)]


@register_sample_pruner("ds2")
class Ds2(JudgeSelection):
    judge_slots = (JudgeSlot("rater"), JudgeSlot("embedder", required=False, encoder=True, fallback="rater"))
    extra_defaults = {"k": 10, "epochs": 51, "hoc_rounds": 50, "hoc_steps": 1501, "confidence": 0.5, "seed": 0}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        for key in ("k", "epochs", "hoc_rounds", "hoc_steps"):
            check_positive_int(self.name, key, self.options[key])
        check_fraction(self.name, "confidence", self.options["confidence"])
        value = self.options["seed"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"option 'seed' of method {self.name!r} must be a non-negative integer, got {value!r}")
