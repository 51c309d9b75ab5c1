"""Shared helpers of the baseline pruners (not a method: ``discover`` skips it).

* :func:`check_options` - option validation with defaults (unknown option ->
  ``ValueError`` naming it and listing the known ones);
* :func:`make_generator` - a ``torch.Generator`` seeded from (seed, what, epoch,
  step, sample ids...), so random decisions are reproducible and resumable
  without carrying RNG state;
* :func:`top_k_per_sample` / :func:`top_k_per_batch` / :func:`select_tokens_by_score`
  - exact-count selection with deterministic tie-breaking (earlier position
  wins, row-major over the batch);
* :class:`EpochLevelSamplePruner` - base of the epoch-level and static sample
  pruners: the ``double_prune`` switch (the authors' code also trains on a random
  ``round(B * r_s)`` subset of every micro-batch on top of the epoch-level
  selection) and the shared subset size ``epoch_keep_count``;
* :class:`ScoredTokenPruner` - base of the token pruners: ``scope`` (per
  sample or per micro-batch budget), ``count_prompt`` (the authors'
  baseline path counts prompt positions in the token budget) and
  ``special_tokens`` (the authors' baseline path never trains EOS and other
  special tokens).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

import torch

from qtbench.methods.base import BatchStats, Budget, SamplePruner, TokenPruner

Tensor = torch.Tensor


# --------------------------------------------------------------------------- options


def check_options(method: str, options: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` over ``defaults``; an unknown key is a ``ValueError``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for method {method!r}; known options: {', '.join(sorted(defaults)) or '(none)'}"
        )
    return {**defaults, **options}


def check_choice(method: str, name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"option {name!r} of method {method!r} must be one of {choices}, got {value!r}")
    return value


def check_bool(method: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} of method {method!r} must be true or false, got {value!r}")
    return value


def check_fraction(method: str, name: str, value: Any, *, allow_none: bool = False, low_open: bool = False,
                   high: float = 1.0) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"option {name!r} of method {method!r} must be a number, got {value!r}")
    value = float(value)
    ok = (0.0 < value if low_open else 0.0 <= value) and value <= high
    if not ok:
        bound = "(0" if low_open else "[0"
        raise ValueError(f"option {name!r} of method {method!r} must lie in {bound}, {high}], got {value!r}")
    return value


def check_positive_int(method: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {name!r} of method {method!r} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- randomness


def make_generator(seed: int, *parts: Any) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``parts`` (strings, ints, lists).

    The seed is a hash of the parts' ``repr``: equal inputs give equal streams on
    every platform, and nothing needs saving to resume a run."""
    flat = [int(seed)]
    for part in parts:
        if isinstance(part, Tensor):
            part = [int(x) for x in part.reshape(-1).tolist()]
        flat.append(part)
    digest = hashlib.blake2b(repr(flat).encode("utf-8"), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


# --------------------------------------------------------------------------- counts


def epoch_keep_count(n: int, ratio: float) -> int:
    """Samples an epoch-level pruner keeps: max(1, round(N * r_s)) (at most N).

    The authors' code truncates (``int(ratio * N)``); the two differ by one sample
    only when N * r_s is fractional."""
    if n <= 0:
        return 0
    return min(n, max(1, int(round(n * ratio))))


def token_keep_count(n: int, ratio: float) -> int:
    """Tokens kept out of ``n`` candidates: max(1, round(n * r_t)) for n >= 1.

    As the authors' code (``max(1, int(round(n * token_ratio)))``); Python's
    ``round`` rounds half to even."""
    if n <= 0:
        return 0
    return min(n, max(1, int(round(n * ratio))))


# --------------------------------------------------------------------------- selection


def keep_by_score(scores: list[float], k: int, largest: bool) -> list[int]:
    """Indices of the ``k`` best of ``scores`` (ties: lower index first), ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if largest else scores[i], i))
    return sorted(order[:k])


def _order(scores: Tensor, largest: bool) -> Tensor:
    """Indices of a 1-d ``scores`` best first; ties: lower index first."""
    keys = scores.to(torch.float64)
    return torch.sort(keys, descending=largest, stable=True).indices


def top_k_rows(scores: Tensor, k: int, largest: bool = True) -> Tensor:
    """``[B]`` bool: the ``k`` best rows (ties: lower row first)."""
    keep = torch.zeros(scores.shape[0], dtype=torch.bool)
    if k > 0:
        keep[_order(scores, largest)[:k]] = True
    return keep


def top_k_per_sample(scores: Tensor, pool: Tensor, ratio: float, largest: bool = True) -> Tensor:
    """Per row, keep ``token_keep_count(|pool_row|, ratio)`` pool positions with the
    best scores (ties: earlier position first)."""
    keep = torch.zeros_like(pool, dtype=torch.bool)
    for row in range(pool.shape[0]):
        positions = torch.nonzero(pool[row], as_tuple=True)[0]
        k = token_keep_count(int(positions.numel()), ratio)
        if k:
            best = _order(scores[row, positions], largest)[:k]
            keep[row, positions[best]] = True
    return keep


def top_k_per_batch(scores: Tensor, pool: Tensor, ratio: float, largest: bool = True) -> Tensor:
    """Over the whole micro-batch, keep ``token_keep_count(|pool|, ratio)`` pool
    positions with the best scores (ties: earlier row, then earlier position)."""
    flat_pool = pool.reshape(-1)
    positions = torch.nonzero(flat_pool, as_tuple=True)[0]
    keep = torch.zeros_like(flat_pool, dtype=torch.bool)
    k = token_keep_count(int(positions.numel()), ratio)
    if k:
        best = _order(scores.reshape(-1)[positions], largest)[:k]
        keep[positions[best]] = True
    return keep.reshape(pool.shape)


# --------------------------------------------------------------------------- sample pruners


class CheckedSamplePruner(SamplePruner):
    """A sample pruner whose options are exactly the keys of ``option_defaults``:
    the registry checks them at DAG build (:meth:`option_keys`), the
    constructor fills the defaults and refuses an unknown key naming the method."""

    #: subclasses extend this with their own options and defaults
    option_defaults: dict[str, Any] = {}

    @classmethod
    def option_keys(cls) -> frozenset[str]:
        """The option keys the config may set (checked at DAG build by the registry)."""
        return frozenset(cls.option_defaults)

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.options = check_options(self.name, options, self.option_defaults)


class EpochLevelSamplePruner(CheckedSamplePruner):
    """Base of epoch-level / static sample pruners (fewer optimizer steps).

    Option ``double_prune`` (default false) reproduces the authors' baseline
    path: on top of the epoch's subset, each micro-batch trains only a uniformly
    random ``Budget.keep_count(B)`` of its samples (seeded by seed, epoch, step
    and sample ids)."""

    option_defaults: dict[str, Any] = {"double_prune": False}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.double_prune = check_bool(self.name, "double_prune", self.options["double_prune"])
        #: True when select_samples must run every step even without statistics
        self.needs_select = self.double_prune

    def select_samples(self, stats: BatchStats) -> tuple[Tensor, Tensor, dict[str, Any]]:
        batch = stats.batch_size
        if not self.double_prune:
            return torch.ones(batch, dtype=torch.bool), torch.ones(batch), {}
        gen = make_generator(self.seed, self.name, "double_prune", stats.epoch, stats.step, stats.sample_ids)
        k = self.budget.keep_count(batch)
        keep = torch.zeros(batch, dtype=torch.bool)
        keep[torch.randperm(batch, generator=gen)[:k]] = True
        return keep, torch.ones(batch), {"double_prune_kept": int(k)}


class BatchScoredSamplePruner(CheckedSamplePruner):
    """Base of per-micro-batch sample pruners: keep ``Budget.keep_count(B)``
    samples with the highest :meth:`scores` (ties: lower row first)."""

    def scores(self, stats: BatchStats) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_samples(self, stats: BatchStats) -> tuple[Tensor, Tensor, dict[str, Any]]:
        batch = stats.batch_size
        k = self.budget.keep_count(batch)
        keep = top_k_rows(self.scores(stats), k, largest=True)
        return keep, torch.ones(batch), {"samples_kept": int(keep.sum())}


# --------------------------------------------------------------------------- token pruners


class ScoredTokenPruner(TokenPruner):
    """Base of the token pruners: keep an exact count of candidates by score.

    Options shared by every token pruner:

    * ``scope``: ``sample`` - each kept sample keeps ``max(1, round(r_t * n_i))``
      of its own ``n_i`` response tokens (the paper's per-sample budget
      ``||m(x)|| = r_t * L(x)``); ``batch`` - the micro-batch keeps
      ``max(1, round(r_t * n))`` of all its ``n`` candidates, ranked together;
    * ``count_prompt`` (default false): the authors' baseline path ranks every
      attended position of the kept samples, prompt included (prompt positions
      carry a zero loss score there), and takes ``round(r_t * n_attended)`` of
      them; the prompt positions it picks carry no loss.  True reproduces which
      response tokens that path keeps (not its loss denominator, which also
      counts the picked prompt positions);
    * ``special_tokens``: what happens to response positions whose target is a
      special token (EOS, chat end-of-turn; ``BatchStats.special_mask``, from
      the tokenizer's ``all_special_ids``).  ``rank`` (default): ordinary
      candidates, ranked like any token (qtbench's behaviour so far, and the
      paper's text, which prunes "answer tokens" with no exception);
      ``drop``: never trained and not counted in the budget - the authors'
      baseline path, which removes special tokens from its ``allowed_mask``
      (``trainer.py`` L990-1000) while their Q-Tuning path trains them, an
      asymmetry that can hurt the baselines' stopping on generation tasks;
      ``keep``: always trained, outside the budget (``r_t`` of the other
      candidates), as Q-Tuning's path trains EOS and baselines.md Sec. 3
      recommends ("EOS included").  The default stays ``rank`` because the
      paper describes no such switch and the design notes ask every quirk of
      the authors' code to be a switch that is off by default.

    Subclasses set ``default_scope`` and implement :meth:`token_scores` (higher =
    keep, unless ``largest`` is false), or override :meth:`choose`."""

    option_defaults: dict[str, Any] = {}
    default_scope: str = "sample"
    #: score given to prompt positions under ``count_prompt`` (None: use the
    #: score tensor as it is there)
    prompt_score: float | None = 0.0
    #: options every token pruner accepts, with their defaults (``scope`` from ``default_scope``)
    SHARED_OPTIONS = ("scope", "count_prompt", "special_tokens")

    @classmethod
    def option_keys(cls) -> frozenset[str]:
        """The option keys the config may set (checked at DAG build by the registry)."""
        return frozenset({*cls.SHARED_OPTIONS, *cls.option_defaults})

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        defaults = {"scope": self.default_scope, "count_prompt": False, "special_tokens": "rank",
                    **self.option_defaults}
        self.options = check_options(self.name, options, defaults)
        self.scope = check_choice(self.name, "scope", self.options["scope"], ("sample", "batch"))
        self.count_prompt = check_bool(self.name, "count_prompt", self.options["count_prompt"])
        self.special_tokens = check_choice(self.name, "special_tokens", self.options["special_tokens"],
                                           ("rank", "drop", "keep"))

    #: rank descending (keep the highest scores) unless a subclass says otherwise
    largest: bool = True

    def token_scores(self, stats: BatchStats, candidates: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_tokens(self, stats: BatchStats, candidates: Tensor) -> tuple[Tensor, dict[str, Any]]:
        candidates = candidates.bool()
        kept_rows = candidates.any(dim=1)
        special = self._special(stats, candidates)
        ranked = candidates & ~special
        pool = stats.attention_mask.bool() & kept_rows[:, None] & ~special if self.count_prompt else ranked
        keep = self.choose(stats, ranked, pool) & ranked
        if self.special_tokens == "keep":
            keep |= candidates & special
        trace = {"tokens_kept": int(keep.sum()), "token_candidates": int(candidates.sum())}
        if self.special_tokens != "rank":
            trace["special_candidates"] = int((candidates & special).sum())
        return keep, trace

    def choose(self, stats: BatchStats, candidates: Tensor, pool: Tensor) -> Tensor:
        """The kept positions: the budget's count of ``pool`` positions with the
        best :meth:`token_scores` (the caller keeps those among ``candidates``)."""
        scores = self.token_scores(stats, candidates)
        if self.count_prompt and self.prompt_score is not None:
            scores = torch.where(candidates, scores.to(torch.float64),
                                 torch.full_like(scores, self.prompt_score, dtype=torch.float64))
        chooser = top_k_per_sample if self.scope == "sample" else top_k_per_batch
        return chooser(scores, pool, self.budget.token_ratio, largest=self.largest)

    def _special(self, stats: BatchStats, candidates: Tensor) -> Tensor:
        """Positions ``special_tokens`` sets apart (none under ``rank``)."""
        if self.special_tokens == "rank":
            return torch.zeros_like(candidates)
        if stats.special_mask is None:
            raise ValueError(f"option special_tokens: {self.special_tokens} of method {self.name!r} needs the "
                             "special-token mask (BatchStats.special_mask), which these statistics lack")
        return stats.special_mask.bool().to(candidates.device)


def require_static_scores(method: str, data: Any) -> list[float]:
    """The cached per-record scores a static pruner plans from
    (``DatasetInfo.static_scores``, written by the static_scores rule), as floats;
    a clear error when they are missing or do not match the data set."""
    scores = data.static_scores
    if scores is None or len(scores) != len(data):
        raise ValueError(f"method {method!r} is static: DatasetInfo.static_scores must hold one score per record "
                         f"(got {None if scores is None else len(scores)} for {len(data)} records)")
    return [float(s) for s in scores]


def require_extra(stats: BatchStats, name: str, method: str) -> Tensor:
    if name not in stats.extras:
        raise ValueError(f"method {method!r} needs the statistic {name!r}, which the stats pass did not provide")
    return stats.extras[name]
