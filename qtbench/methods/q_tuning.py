"""Q-Tuning (arXiv 2509.23873): Error-Uncertainty triage of samples, then
context-aware token pruning inside the "misconception" quadrant.

This module is a *pure decision function* plus the thin :class:`QTuning`
method the trainer talks to.  It reproduces the decisions of the authors'
code (GitHub ``Q-tuning/Q-tuning``, file
``LLaMA-Factory/src/llamafactory/train/sft/trainer.py``: ``_compute_ppl_entropy``,
``_dynamic_threshold_search_bisect`` and the ``plug == "wisely"`` branch of
``compute_loss``), computed in float64 so that the quantiles and comparisons
are those of ``numpy``; the design note ``paper.md`` (shared design folder) describes the method
and where the paper text and the code disagree.

Calling it without a model
--------------------------
Every input is a ``[B, T]`` tensor in *loss-position* alignment (column ``j``
predicts input token ``j + 1``, as ``labels[:, 1:]`` / ``attention_mask[:, 1:]``
in the authors' code)::

    import torch
    from qtbench.methods.base import BatchStats, Budget
    from qtbench.methods.q_tuning import select, decide

    nll = torch.rand(8, 16) * 3          # -log p(token) per loss position
    entropy = torch.rand(8, 16) * 5      # predictive entropy per loss position
    attention = torch.ones(8, 16, dtype=torch.bool)      # attention_mask[:, 1:]
    response = torch.zeros(8, 16, dtype=torch.bool)      # labels[:, 1:] != -100
    response[:, 6:] = True
    stats = BatchStats.from_tensors(nll, entropy, response, attention)
    sel = select(stats, Budget(0.25, 0.5))                       # code's behaviour
    sel = select(stats, Budget(0.25, 0.5), preset="paper_text")  # paper's wording
    sel = select(stats, Budget(0.25, 0.5), **{"lambda": 0.0})    # 'lambda' is a keyword
    sel.sample_keep, sel.token_keep, sel.trace
    d = decide(stats, Budget(0.25, 0.5))   # + per-sample PPL/Ent, quadrants, token scores

The algorithm (``[code]`` = authors' trainer.py, ``[page]`` = paper / project page)
------------------------------------------------------------------------------------
Stage 1, sample triage per micro-batch [code]:

* ``PPL = exp(mean NLL over response positions)`` (``valid_label_mask =
  (shifted_labels != -100) & (attn_mask_shift > 0)``, count clamped to 1, so a
  sample without response tokens has PPL 1); ``Ent`` = mean entropy over all
  attended positions (code) or over response positions (paper), option
  ``entropy_over``.
* Joint bisection: ``alpha, beta`` start in ``[0, alpha_max]``/``[0, beta_max]``
  (0.49), at most ``max_iter`` (10) iterations; each iteration sets
  ``alpha = (lo + hi) / 2`` (same for beta), ``ppl_hi = Q(PPL, 1 - alpha)``,
  ``ppl_lo = Q(PPL, alpha)``, ``ent_lo = Q(Ent, beta)``, ``ent_hi = Q(Ent, 1 - beta)``
  with numpy's default (linear) quantile, ``Q2 = PPL > ppl_hi & Ent <= ent_lo``,
  ``Q4 = PPL <= ppl_lo & Ent > ent_hi``, ``f = (|Q2| + |Q4|) / B``; stop when
  ``|f - r_s| < tol`` (0.01); if ``f < r_s`` both lower bounds move up, else both
  upper bounds move down.  The last iterate is the answer.  Quantiles are
  computed in Python floats with numpy's exact formula (virtual index
  ``(n - 1) q``, ``_lerp``: ``a + (b - a) t`` for ``t < 0.5``, else
  ``b - (b - a)(1 - t)``), so thresholds are bit-identical to ``np.quantile``.
* Top-up: ``K = min(B, max(1, round(B r_s)))`` (``Budget.keep_count``).  If
  ``|Q2 u Q4| < K`` the remaining samples with the largest
  ``max(p - e, e - p)`` are added, ``p``/``e`` being PPL/Ent min-max normalised
  over the batch (all zeros when ``max - min < 1e-12``, as the code's ``_norm``).
  Ties are broken towards the lower batch index (stable sort).  The code's
  ``np.argsort(-score[remain])`` uses numpy's default, unstable sort, whose
  tie order depends on the platform (numpy's AVX2/AVX-512 argsort reorders ties
  even for 4 elements); ties arise for duplicate samples and constant axes.  An added sample with
  ``p - e >= e - p`` (i.e. ``p >= e``) is "Q2-like" and is token-pruned like Q2.
  Q2 u Q4 is never trimmed down to K when the bisection overshoots.

Stage 2, token pruning inside Q2 (and Q2-like) [page][code]:

* ``PPL_i = exp(NLL_i)``; ``s_i = (1 - lambda) PPL_i + lambda (PPL_{i-1} + PPL_{i+1})``
  (no division by 2), neighbours = adjacent loss columns of the same row.
  ``neighbours: attended`` (code): the code computes ``exp(CE)`` with
  ``CrossEntropyLoss(reduction='none')`` whose loss is 0 at ``label == -100``,
  multiplied by ``attention_mask[:, 1:]``; so an attended non-response neighbour
  (the last prompt position before the response) counts ``exp(0) = 1``, a
  padded position or a position outside the row counts 0.
  ``neighbours: response`` (paper.md's wording): every neighbour outside the
  response counts 0.
* ``token_budget: batch`` (code): ``N_tok`` = attended loss positions of the
  whole micro-batch (``attention_mask[:, 1:].sum()``, prompt included), keep
  ``round(N_tok * r_s * r_t)`` (Python ``round``, half to even, evaluated as
  ``(N_tok * r_s) * r_t``), ``drop_target = max(0, N_tok - keep)``; every attended
  position of a dropped sample counts toward the drop first; the remainder
  ``max(0, drop_target - dropped)`` is taken from the response tokens of the
  Q2 (+ Q2-like) samples with the highest scores across the micro-batch, at
  most all of them.  As in the code, nothing is token-pruned when
  ``r_t == 1.0`` exactly (``self.token_ratio != 1.0`` guard).
  ``token_budget: per_sample`` (paper's equations): each Q2 (+ Q2-like)
  sample keeps ``floor(r_t * L)`` of its ``L`` response tokens and drops the
  rest by score.  Q4 (and Q4-like) samples keep every response token.
* ``token_drop: highest`` drops the highest scores (paper and code);
  ``lowest`` drops the lowest (the paper's "reversed PPL" ablation; the
  code's ``token_method: fwise``).  Ties: stable sort on the row-major flat
  index ``b * T + j`` of the micro-batch, the lower index being dropped first
  (``torch.topk`` in the code leaves ties unspecified).

Numerics: everything runs in float64 (the code runs Stage 1 in float32 numpy
and scores tokens in the model dtype), by default on the CPU (option
``device: cpu``), so the decisions are bit-identical whatever device the stats
come from; ``device: input`` computes where the stats live (vectorised torch
throughout, but CUDA reductions and ``exp`` may differ from the CPU in the last
ulp, which changes a decision only for statistics equal to ~1e-15).  The
returned :class:`~qtbench.methods.base.Selection` is always on the CPU.

Options (``DEFAULT_OPTIONS``; an explicit option overrides its preset):

* ``preset``: ``code`` (default) | ``paper_text``; sets the four below at once.
* ``entropy_over``: ``all`` (code, default) | ``response`` (paper_text: the
  page's formula over the response tokens T).
* ``token_budget``: ``batch`` (code, default) | ``per_sample`` (paper_text:
  floor(r_t L) kept per Q2 sample).
* ``stats_source``: ``same_forward`` (code, default) | ``separate_pass``
  (paper_text); recorded only.
* ``neighbours``: ``attended`` (code, default) | ``response`` (paper_text:
  paper.md's "neighbours outside the response count as 0").
* ``token_drop``: ``highest`` (paper and code, default) | ``lowest`` (the
  paper's "reversed" ablation; the code's ``token_method: fwise``).
* ``lambda``: 0.5 (code's ``wise_lambda``; paper), in [0, 1].
* ``alpha_max`` / ``beta_max``: 0.49 (code), upper starts of the bisection on
  the PPL / entropy axis, in (0, 0.5).
* ``max_iter``: 10 (code), >= 1; ``tol``: 0.01 (code), > 0.
* ``device``: ``cpu`` (qtbench, default) | ``input`` (compute on the stats' device).
* ``stage``: ``both`` (default) | ``triage_only`` | ``tokens_only``: the
  single-stage ablations of the paper's Fig. 6 (see "Ablations" below).
* ``token_scorer``: ``ppl`` (default; the context-aware score above with
  ``lambda``) | ``reversed`` (the same score, the lowest dropped: shorthand
  for ``token_drop: lowest``) | ``rho1`` (Rho-1's excess loss against a
  reference model): the scorers of the paper's Table 5.
* ``prune_quadrants``: ``q2`` (default; Q2 and Q2-like top-ups) | ``q2_q4``
  (every kept sample, Q4 included: the paper's quadrant ablation "token-prune
  Q2 and Q4").

Ablations (the paper's Fig. 6 and Table 5)
------------------------------------------
Each single-stage variant spends the run's whole total budget
``r_s * r_t`` in its one stage, so that it compares with Q-Tuning at the same
amount of data (the budget protocol of ``qtbench.config`` for sample-only and
token-only baselines); run it at ``(r_s * r_t, 1)`` or ``(1, r_s * r_t)``
(``method_budgets``) so that the run id shows what it does.

* ``stage: triage_only`` - Stage 1 alone: the triage above with
  ``r_s' = r_s * r_t``, and every response token of a kept sample keeps its
  loss (no Stage 2).  It equals ``stage: both`` at ``(r_s * r_t, 1)``.
* ``stage: tokens_only`` - Stage 2 alone: every sample is kept and every
  response token is a candidate, scored by ``token_scorer``.  ``token_budget:
  per_sample`` keeps ``floor(r_s r_t L)`` of each sample's ``L`` response
  tokens; ``batch`` keeps ``round(n r_s r_t)`` of the micro-batch's ``n``
  response tokens, ranked together.  (The Stage-2 batch rule counts prompt
  positions because dropped samples pay for them; with no sample dropped it
  would strip every response token whenever the prompts exceed ``r_s r_t`` of
  the batch, so this stage counts response tokens only.)  Nothing is pruned
  when ``r_s * r_t == 1``.
* ``token_scorer: rho1`` - the score of a response token is
  ``NLL_ref_i - NLL_i`` (minus Rho-1's excess loss, so that ``token_drop:
  highest`` drops the tokens with the LOWEST excess loss and keeps those the
  model has yet to learn, as Rho-1 does); ``lambda`` and ``neighbours`` do
  not apply.  It needs ``ref_nll`` from a reference model
  (:meth:`QTuning.stats_for_options`, read by the workflow before any run).

``stats_source`` changes no decision: qtbench always scores in a separate
no-grad pass, which equals the code's same-forward statistics when the forward
is deterministic (no dropout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from qtbench.methods.base import BatchStats, Budget, Method, Selection
from qtbench.methods.registry import register_joint_method

Tensor = torch.Tensor

__all__ = [
    "DEFAULT_OPTIONS", "PRESETS", "Decision", "QTuning", "bisect_thresholds", "decide",
    "numpy_linear_quantile", "resolve_options", "rho1_scores", "sample_axes", "select", "token_scores",
]

DEFAULT_OPTIONS: dict[str, Any] = {
    "preset": "code",
    "entropy_over": "all",
    "token_budget": "batch",
    "stats_source": "same_forward",
    "neighbours": "attended",
    "token_drop": "highest",
    "lambda": 0.5,
    "alpha_max": 0.49,
    "beta_max": 0.49,
    "max_iter": 10,
    "tol": 0.01,
    "device": "cpu",
    "stage": "both",
    "token_scorer": "ppl",
    "prune_quadrants": "q2",
}

#: What each preset sets; options given explicitly win over the preset.
PRESETS: dict[str, dict[str, str]] = {
    "code": {"entropy_over": "all", "token_budget": "batch", "stats_source": "same_forward", "neighbours": "attended"},
    "paper_text": {"entropy_over": "response", "token_budget": "per_sample", "stats_source": "separate_pass",
                   "neighbours": "response"},
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "preset": tuple(PRESETS),
    "entropy_over": ("all", "response"),
    "token_budget": ("batch", "per_sample"),
    "stats_source": ("same_forward", "separate_pass"),
    "neighbours": ("attended", "response"),
    "token_drop": ("highest", "lowest"),
    "device": ("cpu", "input"),
    "stage": ("both", "triage_only", "tokens_only"),
    "token_scorer": ("ppl", "reversed", "rho1"),
    "prune_quadrants": ("q2", "q2_q4"),
}


def resolve_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``options`` and return the complete option dict.

    Order of precedence: explicit option > preset > :data:`DEFAULT_OPTIONS`.
    Raises ``ValueError`` naming an unknown option (and listing the valid ones)
    or an invalid value."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown q_tuning option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(sorted(DEFAULT_OPTIONS))}")
    preset = options.get("preset", DEFAULT_OPTIONS["preset"])
    if preset not in PRESETS:
        raise ValueError(f"q_tuning option 'preset' must be one of {list(PRESETS)}, got {preset!r}")
    resolved = {**DEFAULT_OPTIONS, **PRESETS[preset], **options}
    if resolved["token_scorer"] == "reversed":
        if options.get("token_drop", "lowest") != "lowest":
            raise ValueError("q_tuning option 'token_scorer: reversed' drops the lowest scores; "
                             f"it contradicts 'token_drop: {options['token_drop']}'")
        resolved["token_drop"] = "lowest"
    for name, choices in _CHOICES.items():
        if resolved[name] not in choices:
            raise ValueError(f"q_tuning option {name!r} must be one of {list(choices)}, got {resolved[name]!r}")
    resolved["lambda"] = _real(resolved, "lambda", 0.0, 1.0, closed=True)
    resolved["alpha_max"] = _real(resolved, "alpha_max", 0.0, 0.5, closed=False)
    resolved["beta_max"] = _real(resolved, "beta_max", 0.0, 0.5, closed=False)
    tol = resolved["tol"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (float(tol) > 0 and math.isfinite(tol)):
        raise ValueError(f"q_tuning option 'tol' must be a positive number, got {tol!r}")
    resolved["tol"] = float(tol)
    max_iter = resolved["max_iter"]
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"q_tuning option 'max_iter' must be an integer >= 1, got {max_iter!r}")
    return resolved


def _real(options: Mapping[str, Any], name: str, low: float, high: float, closed: bool) -> float:
    value = options[name]
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        value = float(value)
        ok = (low <= value <= high) if closed else (low < value < high)
    if not ok:
        interval = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValueError(f"q_tuning option {name!r} must be a number in {interval}, got {options[name]!r}")
    return value


# --------------------------------------------------------------------------- stage 1


def numpy_linear_quantile(sorted_values: list[float], q: float) -> float:
    """``float(np.quantile(x, q))`` (method ``linear``) from ``sorted(x)``,
    reproducing numpy's arithmetic bit for bit (including the code's clamp of
    ``q`` to [0, 1]).  Finite values assumed."""
    q = float(min(max(q, 0.0), 1.0))
    n = len(sorted_values)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(sorted_values[-1])
    if virtual < 0:
        return float(sorted_values[0])
    below = math.floor(virtual)
    gamma = virtual - below
    a, b = float(sorted_values[below]), float(sorted_values[below + 1])
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


def sample_axes(stats: BatchStats, entropy_over: str = "all", device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Per-sample (PPL, mean entropy) in float64: the Error-Uncertainty plane.

    PPL over response positions (``response & attention``, like the code's
    ``valid_label_mask``; 1.0 for a sample without any); entropy over attended
    positions (``all``) or response positions (``response``)."""
    nll, entropy, response, attention = _as_f64(stats, device)
    return _axes(nll, entropy, response, attention, entropy_over)


def _as_f64(stats: BatchStats, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    attention = stats.attention_mask.to(device=device, dtype=torch.bool)
    response = stats.response_mask.to(device=device, dtype=torch.bool) & attention
    nll = stats.nll.detach().to(device=device, dtype=torch.float64)
    entropy = stats.entropy.detach().to(device=device, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    # The code's per-token CE is 0 wherever label == -100; entropy is only read where masked.
    return torch.where(response, nll, zero), entropy, response, attention


def _axes(nll: Tensor, entropy: Tensor, response: Tensor, attention: Tensor, entropy_over: str) -> tuple[Tensor, Tensor]:
    n_resp = response.sum(dim=1).clamp_min(1).to(torch.float64)
    ppl = torch.exp(nll.sum(dim=1) / n_resp)
    ent_mask = attention if entropy_over == "all" else response
    zero = torch.zeros((), dtype=torch.float64, device=entropy.device)
    ent = torch.where(ent_mask, entropy, zero).sum(dim=1) / ent_mask.sum(dim=1).clamp_min(1).to(torch.float64)
    return ppl, ent


@dataclass
class Bisection:
    """Result of the joint alpha/beta bisection (the code's ``best`` tuple)."""

    alpha: float
    beta: float
    ppl_hi: float
    ppl_lo: float
    ent_lo: float
    ent_hi: float
    q2: Tensor
    q4: Tensor
    keep_frac: float
    iterations: int


def bisect_thresholds(ppl: Tensor, ent: Tensor, keep_ratio: float, alpha_max: float = 0.49,
                      beta_max: float = 0.49, max_iter: int = 10, tol: float = 0.01) -> Bisection:
    """The code's ``_dynamic_threshold_search_bisect`` on float64 tensors ``[B]``
    (``B >= 1``).  The loop is over at most ``max_iter`` scalar iterations; the
    quadrant masks are vectorised."""
    n = int(ppl.shape[0])
    ppl_sorted = sorted(ppl.tolist())
    ent_sorted = sorted(ent.tolist())
    alpha_low, alpha_high = 0.0, float(alpha_max)
    beta_low, beta_high = 0.0, float(beta_max)
    best = None
    for it in range(max_iter):
        alpha = (alpha_low + alpha_high) / 2.0
        beta = (beta_low + beta_high) / 2.0
        ppl_hi = numpy_linear_quantile(ppl_sorted, 1.0 - alpha)
        ppl_lo = numpy_linear_quantile(ppl_sorted, alpha)
        ent_lo = numpy_linear_quantile(ent_sorted, beta)
        ent_hi = numpy_linear_quantile(ent_sorted, 1.0 - beta)
        q2 = (ppl > ppl_hi) & (ent <= ent_lo)
        q4 = (ppl <= ppl_lo) & (ent > ent_hi)
        keep_frac = int(q2.sum() + q4.sum()) / max(1, n)
        best = Bisection(alpha, beta, ppl_hi, ppl_lo, ent_lo, ent_hi, q2, q4, keep_frac, it + 1)
        if abs(keep_frac - keep_ratio) < tol:
            break
        if keep_frac < keep_ratio:
            alpha_low, beta_low = alpha, beta
        else:
            alpha_high, beta_high = alpha, beta
    assert best is not None
    return best


def _minmax(x: Tensor) -> Tensor:
    """The code's ``_norm``: min-max to [0, 1]; zeros when ``max - min < 1e-12``."""
    x_min, x_max = float(x.min()), float(x.max())
    if x_max - x_min < 1e-12:
        return torch.zeros_like(x)
    # a tensor divisor: CUDA turns division by a scalar into a reciprocal multiply
    return (x - x_min) / torch.full_like(x, x_max - x_min)


# --------------------------------------------------------------------------- stage 2


def token_scores(nll: Tensor, response: Tensor, attention: Tensor, lam: float = 0.5,
                 neighbours: str = "attended") -> Tensor:
    """Context-aware token scores ``s_i = (1 - lam) PPL_i + lam (PPL_{i-1} + PPL_{i+1})``
    on ``[B, T]`` float64 tensors (meaningful on response positions; other
    positions carry whatever the formula gives and are never candidates).

    ``neighbours="attended"`` (the code): ``PPL = exp(NLL)`` on response
    positions, ``exp(0) = 1`` on attended non-response positions, 0 on padding
    and outside the row.  ``"response"``: 0 everywhere outside the response."""
    response = response.bool()
    attention = attention.bool()
    nll = torch.where(response, nll.to(torch.float64), torch.zeros((), dtype=torch.float64, device=nll.device))
    valid = attention if neighbours == "attended" else response
    base = torch.where(valid, torch.exp(nll), torch.zeros((), dtype=torch.float64, device=nll.device))
    left = F.pad(base[:, :-1], (1, 0))
    right = F.pad(base[:, 1:], (0, 1))
    return (1.0 - lam) * base + lam * (left + right)


def _drop_by_rank(scores: Tensor, candidates: Tensor, n_drop: Tensor, lowest: bool) -> Tensor:
    """Per row of ``scores [R, C]``, mark the ``n_drop[r]`` candidates with the
    highest (or lowest) score; ties go to the lower column index."""
    key = scores if lowest else -scores
    order = torch.argsort(key, dim=1, stable=True)
    cand_sorted = candidates.gather(1, order)
    rank = torch.cumsum(cand_sorted.to(torch.long), dim=1) - 1
    drop_sorted = cand_sorted & (rank < n_drop.view(-1, 1))
    return torch.zeros_like(candidates).scatter(1, order, drop_sorted)


# --------------------------------------------------------------------------- decision


@dataclass
class Decision:
    """Everything :func:`decide` worked out for one micro-batch (CPU tensors).

    ``q2``/``q4``: quadrant membership after the bisection (before the top-up);
    ``topup``: samples added to reach K; ``q2_like``: top-ups treated as Q2;
    ``prune_rows``: samples whose response tokens may be pruned (Q2 + Q2-like);
    ``scores``: the token scores ``s_i`` (``[B, T]``, float64)."""

    selection: Selection
    ppl: Tensor
    entropy: Tensor
    q2: Tensor
    q4: Tensor
    topup: Tensor
    q2_like: Tensor
    prune_rows: Tensor
    scores: Tensor
    options: dict[str, Any]


def decide(stats: BatchStats, budget: Budget, **options: Any) -> Decision:
    """Like :func:`select`, returning the intermediate quantities as well."""
    return _decide(stats, budget, resolve_options(options))


def select(stats: BatchStats, budget: Budget, **options: Any) -> Selection:
    """Q-Tuning's selection for one micro-batch: which samples train and which
    of their response tokens carry loss.  ``options`` as in the module
    docstring (``resolve_options``); pass ``lambda`` as ``**{"lambda": x}``."""
    return _decide(stats, budget, resolve_options(options)).selection


def _decide(stats: BatchStats, budget: Budget, opts: Mapping[str, Any]) -> Decision:
    if opts["stage"] == "tokens_only":
        return _decide_tokens_only(stats, budget, opts)
    if opts["stage"] == "triage_only":
        # Stage 1 spends the whole total budget; r_t = 1 switches Stage 2 off
        budget = Budget(float(budget.sample_ratio) * float(budget.token_ratio), 1.0)
    device = torch.device("cpu") if opts["device"] == "cpu" else stats.nll.device
    nll, entropy, response, attention = _as_f64(stats, device)
    batch, width = response.shape
    r_s, r_t = float(budget.sample_ratio), float(budget.token_ratio)
    if batch == 0:
        return _empty(response, opts)

    # ---- Stage 1: EU-plane triage
    ppl, ent = _axes(nll, entropy, response, attention, opts["entropy_over"])
    bis = bisect_thresholds(ppl, ent, r_s, opts["alpha_max"], opts["beta_max"], opts["max_iter"], opts["tol"])
    q2, q4 = bis.q2, bis.q4
    kept0 = q2 | q4
    k_keep = min(budget.keep_count(batch), batch)
    topup = torch.zeros_like(kept0)
    q2_like = torch.zeros_like(kept0)
    need = k_keep - int(kept0.sum())
    if need > 0:
        p_hat, e_hat = _minmax(ppl), _minmax(ent)
        s2, s4 = p_hat - e_hat, e_hat - p_hat
        wise = torch.maximum(s2, s4)
        remain = (~kept0).nonzero().squeeze(1)  # ascending batch index, like the code's `remain`
        order = torch.argsort(-wise[remain], stable=True)
        extra = remain[order[:need]]
        topup[extra] = True
        q2_like = topup & (s2 >= s4)
    kept = kept0 | topup
    # the paper's quadrant ablation "token-prune Q2 and Q4" prunes every kept sample
    prune_rows = kept if opts["prune_quadrants"] == "q2_q4" else q2 | q2_like

    # ---- Stage 2: token pruning inside Q2 (+ Q2-like)
    scores = _stage2_scores(stats, nll, response, attention, opts, device)
    candidates = response & prune_rows.view(-1, 1)
    lowest = opts["token_drop"] == "lowest"
    n_tok = int(attention.sum())
    dropped_by_samples = int(attention[~kept].sum())
    n_cand = int(candidates.sum())
    lengths = response.sum(dim=1)
    if opts["token_budget"] == "batch":
        token_budget = int(round(n_tok * r_s * r_t))
        drop_target = max(0, n_tok - token_budget)
        remaining = max(0, drop_target - dropped_by_samples)
        n_drop = min(remaining, n_cand) if (remaining > 0 and r_t != 1.0) else 0
        if n_drop > 0:
            drop = _drop_by_rank(scores.reshape(1, -1), candidates.reshape(1, -1),
                                 torch.tensor([n_drop], device=device), lowest).view(batch, width)
        else:
            drop = torch.zeros_like(candidates)
    else:  # per_sample: floor(r_t * L) kept per Q2 sample
        keep_n = torch.floor(lengths.to(torch.float64) * r_t).to(torch.long)
        n_drop_rows = torch.where(prune_rows, lengths - keep_n, torch.zeros_like(lengths))
        drop = _drop_by_rank(scores, candidates, n_drop_rows, lowest)
        token_budget = int(torch.where(kept, torch.where(prune_rows, keep_n, lengths), torch.zeros_like(lengths)).sum())
    token_keep = response & kept.view(-1, 1) & ~drop
    n_pruned = int(drop.sum())

    n_q1 = int(((ppl > bis.ppl_hi) & (ent > bis.ent_hi)).sum())
    n_q3 = int(((ppl <= bis.ppl_lo) & (ent <= bis.ent_lo)).sum())
    n_q2, n_q4 = int(q2.sum()), int(q4.sum())
    trace = {
        "alpha": bis.alpha, "beta": bis.beta,
        "ppl_hi": bis.ppl_hi, "ppl_lo": bis.ppl_lo, "ent_lo": bis.ent_lo, "ent_hi": bis.ent_hi,
        "n_q1": n_q1, "n_q2": n_q2, "n_q3": n_q3, "n_q4": n_q4,
        "n_unassigned": batch - n_q1 - n_q2 - n_q3 - n_q4,
        "keep_frac": bis.keep_frac, "bisect_iters": bis.iterations, "keep_count": k_keep,
        "n_topup": int(topup.sum()), "n_q2_like": int(q2_like.sum()),
        "samples_kept": int(kept.sum()),
        "response_tokens": int(response.sum()), "response_tokens_kept": int(token_keep.sum()),
        "token_budget": token_budget,
        "attended_tokens": n_tok, "attended_tokens_kept": n_tok - dropped_by_samples - n_pruned,
        "tokens_dropped_by_samples": dropped_by_samples,
        "token_candidates": n_cand, "tokens_pruned": n_pruned,
    }
    cpu = torch.device("cpu")
    selection = Selection(kept.to(cpu), token_keep.to(cpu), torch.ones(batch, dtype=torch.float32), trace)
    return Decision(selection, ppl.to(cpu), ent.to(cpu), q2.to(cpu), q4.to(cpu), topup.to(cpu),
                    q2_like.to(cpu), prune_rows.to(cpu), scores.to(cpu), dict(opts))


def rho1_scores(nll: Tensor, ref_nll: Tensor, response: Tensor) -> Tensor:
    """``NLL_ref_i - NLL_i`` on response positions, 0 elsewhere (float64): minus
    Rho-1's excess loss, so that dropping the HIGHEST scores drops the tokens
    with the lowest excess loss (Rho-1 keeps the highest)."""
    response = response.bool()
    zero = torch.zeros((), dtype=torch.float64, device=nll.device)
    excess = nll.to(torch.float64) - ref_nll.to(device=nll.device, dtype=torch.float64)
    return torch.where(response, -excess, zero)


def _stage2_scores(stats: BatchStats, nll: Tensor, response: Tensor, attention: Tensor,
                   opts: Mapping[str, Any], device: torch.device) -> Tensor:
    """The Stage-2 score of every loss position under ``token_scorer``."""
    if opts["token_scorer"] != "rho1":  # ppl, or reversed (token_drop lowest)
        return token_scores(nll, response, attention, opts["lambda"], opts["neighbours"])
    if "ref_nll" not in stats.extras:
        raise ValueError("q_tuning option 'token_scorer: rho1' needs the reference model's NLL (stats extra "
                         "'ref_nll'): give the run a reference model")
    return rho1_scores(nll, stats.extras["ref_nll"].detach().to(device), response)


def _decide_tokens_only(stats: BatchStats, budget: Budget, opts: Mapping[str, Any]) -> Decision:
    """Stage 2 alone (``stage: tokens_only``): every sample kept, every response
    token a candidate, ``r_s * r_t`` of the response tokens kept (module docstring)."""
    device = torch.device("cpu") if opts["device"] == "cpu" else stats.nll.device
    nll, entropy, response, attention = _as_f64(stats, device)
    batch, width = response.shape
    if batch == 0:
        return _empty(response, opts)
    total = float(budget.sample_ratio) * float(budget.token_ratio)
    ppl, ent = _axes(nll, entropy, response, attention, opts["entropy_over"])
    scores = _stage2_scores(stats, nll, response, attention, opts, device)
    lowest = opts["token_drop"] == "lowest"
    lengths = response.sum(dim=1)
    n_resp = int(lengths.sum())
    if opts["token_budget"] == "batch":
        n_drop = n_resp - int(round(n_resp * total)) if total != 1.0 else 0
        drop = torch.zeros_like(response)
        if n_drop > 0:
            drop = _drop_by_rank(scores.reshape(1, -1), response.reshape(1, -1),
                                 torch.tensor([n_drop], device=device), lowest).view(batch, width)
        token_budget = n_resp - n_drop
    else:
        keep_n = torch.floor(lengths.to(torch.float64) * total).to(torch.long)
        drop = _drop_by_rank(scores, response, lengths - keep_n, lowest)
        token_budget = int(keep_n.sum())
    token_keep = response & ~drop
    n_tok, n_pruned = int(attention.sum()), int(drop.sum())
    everyone = torch.ones(batch, dtype=torch.bool, device=device)
    trace = _empty(response, opts).selection.trace
    trace.update({
        "n_unassigned": batch, "keep_frac": 1.0, "keep_count": batch, "samples_kept": batch,
        "response_tokens": n_resp, "response_tokens_kept": int(token_keep.sum()), "token_budget": token_budget,
        "attended_tokens": n_tok, "attended_tokens_kept": n_tok - n_pruned,
        "token_candidates": n_resp, "tokens_pruned": n_pruned,
    })
    cpu = torch.device("cpu")
    none = torch.zeros(batch, dtype=torch.bool)
    selection = Selection(everyone.to(cpu), token_keep.to(cpu), torch.ones(batch, dtype=torch.float32), trace)
    return Decision(selection, ppl.to(cpu), ent.to(cpu), none, none, none.clone(), none.clone(),
                    everyone.to(cpu), scores.to(cpu), dict(opts))


def _empty(response: Tensor, opts: Mapping[str, Any]) -> Decision:
    none = torch.zeros(0, dtype=torch.bool)
    trace = {k: None for k in ("alpha", "beta", "ppl_hi", "ppl_lo", "ent_lo", "ent_hi")}
    trace.update({k: 0 for k in ("n_q1", "n_q2", "n_q3", "n_q4", "n_unassigned", "bisect_iters", "keep_count",
                                 "n_topup", "n_q2_like", "samples_kept", "response_tokens", "response_tokens_kept",
                                 "token_budget", "attended_tokens", "attended_tokens_kept",
                                 "tokens_dropped_by_samples", "token_candidates", "tokens_pruned")})
    trace["keep_frac"] = 0.0
    token_keep = torch.zeros(tuple(response.shape), dtype=torch.bool)
    empty = torch.zeros(0, dtype=torch.float64)
    return Decision(Selection(none, token_keep, torch.ones(0), trace), empty, empty, none, none, none, none, none,
                    torch.zeros(tuple(response.shape), dtype=torch.float64), dict(opts))


# --------------------------------------------------------------------------- method


@register_joint_method("q_tuning")
class QTuning(Method):
    """Q-Tuning as a trainer :class:`~qtbench.methods.base.Method`: one joint
    (sample, token) decision per micro-batch from the stats pass."""

    name = "q_tuning"
    required_stats = frozenset({"nll", "entropy"})
    #: the option keys the config may set (checked at DAG build, before any run)
    option_keys = frozenset(DEFAULT_OPTIONS)

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.budget = budget
        self.options = resolve_options(options)
        self.required_stats = self.stats_for_options(self.options)
        self.seed = seed  # unused: the method is deterministic

    @classmethod
    def check_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate option values without building the method (config validation)."""
        return resolve_options(options)

    @classmethod
    def stats_for_options(cls, options: Mapping[str, Any] | None) -> frozenset[str]:
        """The statistics a run with these options needs, without building it:
        the reference model's NLL only for ``token_scorer: rho1`` when Stage 2 runs."""
        opts = resolve_options(options)
        if opts["token_scorer"] == "rho1" and opts["stage"] != "triage_only":
            return cls.required_stats | {"ref_nll"}
        return cls.required_stats

    def select(self, stats: BatchStats) -> Selection:
        decision = _decide(stats, self.budget, self.options)
        selection = decision.selection
        selection.per_sample = {
            "ppl": decision.ppl.tolist(),
            "entropy": decision.entropy.tolist(),
            "quadrant": quadrants(decision),
        }
        return selection

    def decide(self, stats: BatchStats) -> Decision:
        return _decide(stats, self.budget, self.options)


def quadrant_labels(ppl: Tensor, ent: Tensor, ppl_hi: float | None, ppl_lo: float | None,
                    ent_lo: float | None, ent_hi: float | None) -> list[str]:
    """Each sample's place on the EU plane under the final thresholds, with the
    code's inequalities: Q2 = PPL > ppl_hi & Ent <= ent_lo (misconception),
    Q4 = PPL <= ppl_lo & Ent > ent_hi (calibration), Q1 = PPL > ppl_hi &
    Ent > ent_hi (noise), Q3 = PPL <= ppl_lo & Ent <= ent_lo (redundant);
    anything else (between the thresholds) is ``mid``."""
    if ppl_hi is None:
        return ["mid"] * int(ppl.shape[0])
    high, low = ppl > ppl_hi, ppl <= ppl_lo
    confident, unsure = ent <= ent_lo, ent > ent_hi
    labels = []
    for h, l, c, u in zip(high.tolist(), low.tolist(), confident.tolist(), unsure.tolist()):
        labels.append("Q2" if h and c else "Q4" if l and u else "Q1" if h and u else "Q3" if l and c else "mid")
    return labels


def quadrants(decision: Decision) -> list[str]:
    """:func:`quadrant_labels` of a decision, with top-ups marked ``Q2+``
    (Q2-like: its tokens may be pruned) or ``Q4+`` (kept whole)."""
    trace = decision.selection.trace
    labels = quadrant_labels(decision.ppl, decision.entropy, trace["ppl_hi"], trace["ppl_lo"],
                             trace["ent_lo"], trace["ent_hi"])
    for row in decision.topup.nonzero().flatten().tolist():
        labels[row] = "Q2+" if bool(decision.q2_like[row]) else "Q4+"
    return labels
