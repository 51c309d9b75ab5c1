"""The one interface every data-pruning method implements.

The paper frames all pruning as a pair (Psi, Phi): a sample pruner and a token
pruner applied to each mini-batch.  qtbench makes that the only interface:

* :class:`BatchStats` - what the model being trained says about a micro-batch
  (per-token NLL and predictive entropy, masks), computed once under no-grad.
* :class:`Budget` - the nominal ratios ``r_s`` (samples) and ``r_t`` (tokens).
* :class:`Selection` - which samples and which loss positions carry loss, and
  a per-sample loss weight (InfoBatch's 1/r rescaling).
* :class:`Method` - the object the trainer talks to.  It never knows which
  method runs: per epoch it may ask :meth:`Method.plan_epoch` for a subset of
  the data (epoch-level and static pruners), per step it calls
  :meth:`Method.select`, and after the update :meth:`Method.observe` hands back
  the per-sample losses (loss histories).

Alignment convention (the same as Hugging Face's causal-LM loss and the Q-Tuning
authors' code): every ``[B, T]`` tensor here is indexed by *loss position*.
Column ``j`` is the model's output at input position ``j``, which predicts input
token ``j + 1``; so ``nll[:, j] = -log p(x_{j+1} | x_{<=j})`` and
``response_mask[:, j]`` is true when ``labels[:, j + 1] != -100``.  For an input of
length ``L`` the tensors have ``T = L - 1`` columns; the one definition is
:func:`qtbench.data.batches.loss_positions`.

Methods are found by name through :mod:`qtbench.methods.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

Tensor = torch.Tensor

#: Statistics a method can ask the stats pass for (see ``qtbench.methods.stats``).
KNOWN_STATS = frozenset({"nll", "entropy", "el2n", "ref_nll", "base_nll", "attention_received",
                         "attention_received_visible", "hidden_redundancy", "attention_rank"})


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """Nominal budget of a run: keep ``sample_ratio`` of the samples and, inside
    them, ``token_ratio`` of the response tokens.  Both lie in (0, 1]."""

    sample_ratio: float = 1.0
    token_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sample_ratio", "token_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < float(value) <= 1.0):
                raise ValueError(f"budget {name} must lie in (0, 1], got {value!r}")

    @property
    def total(self) -> float:
        """Nominal share of the response tokens that carry loss: r_s * r_t."""
        return self.sample_ratio * self.token_ratio

    def keep_count(self, batch_size: int) -> int:
        """K = max(1, round(B * r_s)): samples a per-batch sample pruner keeps.

        Python's ``round`` rounds half to even, like ``numpy.round`` in the
        authors' code (B=4, r_s=0.125 -> round(0.5) = 0 -> K = 1)."""
        return max(1, int(round(batch_size * self.sample_ratio)))


# --------------------------------------------------------------------------- stats


@dataclass
class BatchStats:
    """Per-token statistics of one micro-batch under the model being trained.

    Build it from plain tensors with :meth:`from_tensors`; no model is needed,
    which is what makes every pruning decision a pure, testable function.
    All ``[B, T]`` tensors use the loss-position alignment of the module
    docstring.  ``extras`` holds optional statistics a method asked for
    (``ref_nll``/``base_nll`` under another model, ``el2n`` per token,
    ``attention_received`` / ``attention_received_visible`` from the final
    layer's attention, ``hidden_redundancy`` from its hidden states,
    ``attention_rank`` - one number per micro-batch, repeated), each ``[B, T]``.
    ``special_mask`` (``[B, T]`` bool or None) marks the loss positions whose
    target is a special token (EOS, ...): the step fills it from the token ids
    for every method (no forward needed), so token pruners can honour the
    authors' special-token switch (``special_tokens`` of ``baselines._common``).
    """

    nll: Tensor
    entropy: Tensor
    response_mask: Tensor
    attention_mask: Tensor
    sample_ids: Tensor
    step: int = 0
    epoch: int = 0
    extras: dict[str, Tensor] = field(default_factory=dict)
    special_mask: Tensor | None = None

    @classmethod
    def from_tensors(
        cls,
        nll: Any,
        entropy: Any,
        response_mask: Any,
        attention_mask: Any | None = None,
        sample_ids: Any | None = None,
        step: int = 0,
        epoch: int = 0,
        special_mask: Any | None = None,
        **extras: Any,
    ) -> "BatchStats":
        """Build stats from array-likes (lists, numpy arrays or tensors)."""
        nll_t = torch.as_tensor(nll, dtype=torch.float64 if _is_f64(nll) else torch.float32)
        entropy_t = torch.as_tensor(entropy, dtype=nll_t.dtype)
        response_t = torch.as_tensor(response_mask).bool()
        attention_t = response_t.clone() if attention_mask is None else torch.as_tensor(attention_mask).bool()
        if nll_t.dim() != 2:
            raise ValueError(f"nll must be [B, T], got shape {tuple(nll_t.shape)}")
        shape = nll_t.shape
        for name, tensor in (("entropy", entropy_t), ("response_mask", response_t), ("attention_mask", attention_t)):
            if tensor.shape != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} like nll")
        if bool((response_t & ~attention_t).any()):
            raise ValueError("response_mask marks positions that attention_mask does not")
        ids = torch.arange(shape[0]) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long)
        extra_t = {}
        for name, value in extras.items():
            if name not in KNOWN_STATS:
                raise ValueError(f"unknown statistic {name!r}; known: {sorted(KNOWN_STATS)}")
            extra_t[name] = torch.as_tensor(value, dtype=nll_t.dtype)
            if extra_t[name].shape != shape:
                raise ValueError(f"{name} has shape {tuple(extra_t[name].shape)}, expected {tuple(shape)}")
        special_t = None if special_mask is None else torch.as_tensor(special_mask).bool()
        if special_t is not None and special_t.shape != shape:
            raise ValueError(f"special_mask has shape {tuple(special_t.shape)}, expected {tuple(shape)}")
        return cls(nll_t, entropy_t, response_t, attention_t, ids, step, epoch, extra_t, special_t)

    @classmethod
    def masks_only(cls, response_mask: Tensor, attention_mask: Tensor, sample_ids: Tensor,
                   step: int = 0, epoch: int = 0, special_mask: Tensor | None = None) -> "BatchStats":
        """Stats without a forward pass (zero NLL and entropy), for methods that
        draw at random every step and read only the masks."""
        zeros = torch.zeros(response_mask.shape)
        return cls(zeros, zeros.clone(), response_mask.bool(), attention_mask.bool(), sample_ids, step, epoch, {},
                   special_mask)

    @property
    def batch_size(self) -> int:
        return int(self.nll.shape[0])

    def response_counts(self) -> Tensor:
        """Response tokens per sample, [B] (long)."""
        return self.response_mask.sum(dim=1)

    def sample_mean_loss(self) -> Tensor:
        """Mean NLL over each sample's response tokens, [B] (0 for none)."""
        return masked_mean(self.nll, self.response_mask)

    def sample_ppl(self) -> Tensor:
        """Response perplexity exp(mean response NLL): the EU plane's error axis."""
        return torch.exp(self.sample_mean_loss())

    def sample_mean_entropy(self, over: str = "response") -> Tensor:
        """Mean predictive entropy per sample: the EU plane's uncertainty axis.

        ``over="response"`` averages over response loss positions (the paper's
        formula); ``over="all"`` over every attended loss position, prompt
        included (the authors' code: ``attention_mask[:, 1:]``)."""
        if over == "response":
            return masked_mean(self.entropy, self.response_mask)
        if over == "all":
            return masked_mean(self.entropy, self.attention_mask)
        raise ValueError(f"entropy_over must be 'response' or 'all', got {over!r}")

    def take(self, rows: Tensor) -> "BatchStats":
        """The stats of a subset of rows (a bool mask or indices)."""
        return BatchStats(
            self.nll[rows], self.entropy[rows], self.response_mask[rows], self.attention_mask[rows],
            self.sample_ids[rows], self.step, self.epoch, {k: v[rows] for k, v in self.extras.items()},
            None if self.special_mask is None else self.special_mask[rows],
        )


def _is_f64(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype) in ("float64", "torch.float64")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Row-wise mean of ``values`` where ``mask`` holds; 0 for an empty row."""
    mask_f = mask.to(values.dtype)
    return (values * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp_min(1.0)


# --------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """What one step trains on.

    ``sample_keep [B]`` - samples that enter the backward pass;
    ``token_keep [B, T]`` - loss positions that carry loss (always a subset of
    the response mask and of the kept samples); ``sample_weight [B]`` - a loss
    weight per sample (1 unless a method rescales, e.g. InfoBatch);
    ``trace`` - numbers the method wants in the per-step trace (thresholds,
    quadrant counts), JSON-serialisable scalars only;
    ``per_sample`` - optional per-sample values written with the micro-batch's
    row of ``trace.jsonl`` (its ``samples`` columns), each a list of length B (e.g. Q-Tuning's PPL,
    entropy and quadrant), JSON-serialisable.
    """

    sample_keep: Tensor
    token_keep: Tensor
    sample_weight: Tensor
    trace: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, list] = field(default_factory=dict)

    @classmethod
    def keep_all(cls, stats_or_masks: "BatchStats | Tensor") -> "Selection":
        response = stats_or_masks.response_mask if isinstance(stats_or_masks, BatchStats) else stats_or_masks
        batch = response.shape[0]
        return cls(torch.ones(batch, dtype=torch.bool), response.clone().bool(), torch.ones(batch))


# --------------------------------------------------------------------------- methods


@dataclass
class EpochPlan:
    """Which data-set indices an epoch iterates, and with which loss weights.

    Returned by epoch-level and static sample pruners (fewer optimizer steps);
    ``None`` from :meth:`Method.plan_epoch` means "every sample, weight 1"."""

    indices: list[int]
    weights: dict[int, float] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """What epoch-level and static pruners may know about the training set.

    ``records`` are the raw SFT records (dicts with at least ``instruction``,
    ``input``, ``output``); ``response_lengths`` counts response tokens after
    tokenisation; ``static_scores`` is the cached output of a static scoring
    rule when the method has one (one float per record); ``labels`` is the
    ground truth of a synthetic world's records (``clean``, a noise type or
    ``duplicate``: :mod:`qtbench.world.labels`), given only to a method whose
    pruner declares ``uses_ground_truth`` (the controls)."""

    records: list[dict]
    response_lengths: list[int]
    static_scores: list[float] | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)


class SamplePruner:
    """Base class of sample-level methods.  Override what applies:

    * ``plan_epoch`` for epoch-level or static pruning (fewer steps);
    * ``select_samples`` for per-batch pruning (same steps, fewer samples);
    * ``observe`` to receive each trained sample's mean loss (loss histories);
    * ``state_dict``/``load_state_dict`` when the method keeps state, so that a
      resumed run makes the same decisions.

    ``required_stats`` names what ``select_samples`` reads from the stats pass;
    an empty set means no stats pass is needed for this pruner.
    """

    name: ClassVar[str] = ""
    required_stats: ClassVar[frozenset[str]] = frozenset()
    #: True when ``select_samples`` must run every step even without statistics
    #: (random draws); the trainer then passes masks-only stats.
    needs_select: bool = False
    #: True when the method scores data once before training (a Snakemake rule
    #: caches the scores); the trainer then passes them in ``DatasetInfo``.
    static: ClassVar[bool] = False
    #: True for a control that reads the world's ground truth (``DatasetInfo.labels``):
    #: the trainer then needs the world's ``sft_meta.jsonl``, the tables show it
    #: apart from the selection rules.
    uses_ground_truth: ClassVar[bool] = False

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.budget = budget
        self.options = dict(options or {})
        self.seed = seed

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan | None:
        return None

    def expected_epoch_size(self, epoch: int, num_epochs: int, n_records: int) -> int | None:
        """A forecast of how many records ``plan_epoch`` will keep in a later
        epoch, for sizing the learning-rate schedule before that epoch is
        planned (``qtbench.train.schedule``); ``None``: the same as the epoch
        just planned.  Only pruners whose epochs differ in size override it."""
        return None

    def select_samples(self, stats: BatchStats) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Return (keep [B] bool, weight [B] float, trace)."""
        batch = stats.batch_size
        return torch.ones(batch, dtype=torch.bool), torch.ones(batch), {}

    def observe(self, sample_ids: Tensor, sample_losses: Tensor, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class TokenPruner:
    """Base class of token-level methods.

    ``select_tokens`` gets the stats and the candidate loss positions
    (``[B, T]`` bool: response tokens of kept samples only) and returns the
    subset that keeps carrying loss.  It must never add a position that is not
    a candidate; :class:`PairMethod` enforces that."""

    name: ClassVar[str] = ""
    required_stats: ClassVar[frozenset[str]] = frozenset()
    #: the config's ``method_options`` entry this pruner reads; None: its name
    #: (the random token pruner reads ``random_tokens``: ``random`` is the sample pruner's)
    options_section: ClassVar[str | None] = None
    #: True when ``select_tokens`` must run every step even without statistics.
    needs_select: bool = False

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.budget = budget
        self.options = dict(options or {})
        self.seed = seed

    def select_tokens(self, stats: BatchStats, candidates: Tensor) -> tuple[Tensor, dict[str, Any]]:
        return candidates.clone(), {}

    #: True when the pruner needs the data set's per-token scores, computed once
    #: before training (the token_scores rule; TokenCleaning's global threshold)
    needs_token_scores: bool = False

    def set_token_scores(self, scores: Tensor) -> None:
        """Receive every response token's score over the data set (1-d), once,
        before the first step (only when ``needs_token_scores``)."""
        raise NotImplementedError(f"token pruner {self.name!r} takes no data-set token scores")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Method:
    """What the trainer runs.  Subclasses: :class:`PairMethod` (every
    baseline and ``full``) and Q-Tuning (``qtbench.methods.q_tuning``)."""

    name: str = ""
    required_stats: frozenset[str] = frozenset()

    @property
    def needs_stats_pass(self) -> bool:
        """A no-grad forward is needed before ``select``."""
        return bool(self.required_stats)

    @property
    def needs_select(self) -> bool:
        """``select`` must run every step (masks-only stats when no pass is needed)."""
        return self.needs_stats_pass

    @property
    def static(self) -> bool:
        return False

    @property
    def uses_ground_truth(self) -> bool:
        """The method reads ``DatasetInfo.labels`` (a control, not a selection rule)."""
        return False

    @property
    def needs_token_scores(self) -> bool:
        """The method needs the data set's per-token scores before training
        (:meth:`set_token_scores`; the token_scores rule)."""
        return False

    def set_token_scores(self, scores: Tensor) -> None:
        raise NotImplementedError(f"method {self.name!r} takes no data-set token scores")

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan | None:
        return None

    def expected_epoch_size(self, epoch: int, num_epochs: int, n_records: int) -> int | None:
        """See :meth:`SamplePruner.expected_epoch_size`."""
        return None

    def select(self, stats: BatchStats) -> Selection:
        raise NotImplementedError

    def select_without_stats(self, response_mask: Tensor) -> Selection:
        """Selection for a method that needs no ``select`` call (keeps everything)."""
        return Selection.keep_all(response_mask)

    def observe(self, sample_ids: Tensor, sample_losses: Tensor, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class KeepAllSamples(SamplePruner):
    name = "none"


class KeepAllTokens(TokenPruner):
    name = "none"


class PairMethod(Method):
    """A (sample pruner, token pruner) pair, as every baseline row of the paper.

    The sample pruner runs first; the token pruner sees only the kept samples'
    response positions as candidates, so it can never revive a dropped sample
    or a prompt token."""

    def __init__(self, name: str, sample: SamplePruner, token: TokenPruner) -> None:
        self.name = name
        self.sample = sample
        self.token = token
        self.required_stats = frozenset(sample.required_stats | token.required_stats)

    @property
    def static(self) -> bool:
        return self.sample.static

    @property
    def uses_ground_truth(self) -> bool:
        return bool(getattr(self.sample, "uses_ground_truth", False))

    @property
    def needs_select(self) -> bool:
        return self.needs_stats_pass or self.sample.needs_select or self.token.needs_select

    @property
    def needs_token_scores(self) -> bool:
        return bool(self.token.needs_token_scores)

    def set_token_scores(self, scores: Tensor) -> None:
        self.token.set_token_scores(scores)

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan | None:
        return self.sample.plan_epoch(epoch, num_epochs, data)

    def expected_epoch_size(self, epoch: int, num_epochs: int, n_records: int) -> int | None:
        return self.sample.expected_epoch_size(epoch, num_epochs, n_records)

    def select(self, stats: BatchStats) -> Selection:
        keep, weight, trace = self.sample.select_samples(stats)
        keep = keep.bool()
        candidates = stats.response_mask & keep[:, None]
        token_keep, token_trace = self.token.select_tokens(stats, candidates)
        if bool((token_keep & ~candidates).any()):
            raise RuntimeError(f"token pruner {self.token.name!r} kept a position that was not a candidate")
        return Selection(keep, token_keep, weight.to(torch.float32), {**trace, **token_trace})

    def observe(self, sample_ids: Tensor, sample_losses: Tensor, epoch: int) -> None:
        self.sample.observe(sample_ids, sample_losses, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"sample": self.sample.state_dict(), "token": self.token.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sample.load_state_dict(state.get("sample", {}))
        self.token.load_state_dict(state.get("token", {}))
