"""Shared code of the IFD-based static selectors (``ifd``, ``superfiltering``)."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from baselines._common import (
    EpochLevelSamplePruner,
    check_positive_int,
    epoch_keep_count,
    keep_by_score,
    require_static_scores,
)
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan

#: ``max_length: null`` = the training length (``train.max_length``), filled in
#: by the static_scores rule (:func:`qtbench.methods.static.scoring_options`).
SCORING_DEFAULTS = {"batch_size": 16, "max_length": None}

log = logging.getLogger(__name__)


def model_context(model: Any) -> int | None:
    """The longest sequence the scoring model takes (``max_position_embeddings``,
    GPT-2's ``n_positions``), or None when its config does not say."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def scoring_length(model: Any, max_length: Any, method: str = "ifd") -> int:
    """The scoring length: option ``max_length`` (the training length), capped
    at the scoring model's context (Superfiltering's GPT-2: 1024 positions)."""
    if max_length is None:
        raise ValueError(f"option 'max_length' of method {method!r} is null: the static_scores rule sets it to "
                         "train.max_length; give a number when scoring by hand")
    length = check_positive_int(method, "max_length", max_length)
    context = model_context(model)
    if context is not None and context < length:
        log.warning("%s: max_length %d exceeds the scoring model's %d positions; scoring at %d", method, length,
                    context, context)
        length = context
    return length


def ifd_examples(records: list[dict], tokenizer: Any, max_length: int) -> list[tuple[Any, Any]]:
    """Per record, the (conditioned, alone) examples of the two IFD passes, over
    the SAME response token ids.

    The conditioned example is the training tokenization (``tokenize_example``:
    BOS, prompt, response, EOS; an over-long record keeps its prompt and loses
    the response's tail).  The alone example is a start token (BOS, else EOS)
    followed by exactly the response ids the conditioned example kept, so a
    truncation never makes the two passes score different tokens."""
    from qtbench.data.batches import IGNORE_INDEX, TokenizedExample, tokenize_example
    from qtbench.data.template import format_prompt

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("IFD scoring needs a BOS or EOS token to start the response-alone pass")
    pairs = []
    for record in records:
        prompt, response = format_prompt(record)
        conditioned = tokenize_example(prompt, response, tokenizer, max_length)
        ids = [label for label in conditioned.labels if label != IGNORE_INDEX]
        alone = TokenizedExample([start] + ids, [IGNORE_INDEX] + ids, conditioned.truncated)
        pairs.append((conditioned, alone))
    return pairs


def response_losses(records: list[dict], model: Any, tokenizer: Any, options: Mapping[str, Any],
                    method: str = "ifd") -> tuple[list[float], list[float]]:
    """Mean response NLL given the prompt, and of the same response tokens alone."""
    from qtbench.methods import stats as qstats

    batch_size = int(options.get("batch_size", SCORING_DEFAULTS["batch_size"]))
    max_length = scoring_length(model, options.get("max_length"), method)
    pairs = ifd_examples(records, tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    conditioned = qstats.mean_example_nll(model, [c for c, _ in pairs], pad, batch_size)
    alone = qstats.mean_example_nll(model, [a for _, a in pairs], pad, batch_size)
    return [float(x) for x in conditioned], [float(x) for x in alone]


def ifd_from_losses(conditioned: list[float], alone: list[float], ratio_of: str) -> list[float]:
    """IFD per sample: ratio of mean losses (``loss``) or of perplexities (``ppl``);
    NaN where undefined."""
    out = []
    for c, a in zip(conditioned, alone):
        if not (math.isfinite(c) and math.isfinite(a)):
            out.append(float("nan"))
        elif ratio_of == "loss":
            out.append(c / a if a > 0 else float("nan"))
        else:
            out.append(math.exp(c - a))
    return out


class IfdSelection(EpochLevelSamplePruner):
    """Static top-``r_s`` selection by an IFD score with a ceiling filter."""

    static = True
    #: drop samples with IFD >= threshold (True) or only IFD > threshold (False)
    drop_at_threshold: bool = False

    @classmethod
    def option_keys(cls) -> frozenset[str]:
        """The option keys the config may set (the defaults below are set per instance)."""
        return frozenset({*EpochLevelSamplePruner.option_defaults, "threshold", "proxy", "proxy_revision",
                          *SCORING_DEFAULTS})

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.option_defaults = {
            **EpochLevelSamplePruner.option_defaults,
            "threshold": 1.0,
            "proxy": None,
            "proxy_revision": None,
            **SCORING_DEFAULTS,
        }
        super().__init__(budget, options, seed)
        threshold = self.options["threshold"]
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ValueError(f"option 'threshold' of method {self.name!r} must be a number or null, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)
        proxy = self.options["proxy"]
        if proxy is not None and (not isinstance(proxy, str) or not proxy):
            raise ValueError(f"option 'proxy' of method {self.name!r} must be a model id or path, or null")
        revision = self.options["proxy_revision"]
        if revision is not None and (proxy is None or not isinstance(revision, str) or not revision):
            raise ValueError(f"option 'proxy_revision' of method {self.name!r} must be a commit or tag of the "
                             f"'proxy' model (and needs 'proxy'), got {revision!r}")
        check_positive_int(self.name, "batch_size", self.options["batch_size"])
        if self.options["max_length"] is not None:
            check_positive_int(self.name, "max_length", self.options["max_length"])

    def eligible(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.threshold is None:
            return True
        return score < self.threshold if self.drop_at_threshold else score <= self.threshold

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        scores = require_static_scores(self.name, data)
        n = len(data)
        k = epoch_keep_count(n, self.budget.sample_ratio)
        eligible = [i for i in range(n) if self.eligible(scores[i])]
        filter_ignored = not eligible
        if filter_ignored:
            eligible = [i for i in range(n) if math.isfinite(scores[i])] or list(range(n))
        ranked = [scores[i] if math.isfinite(scores[i]) else -math.inf for i in eligible]
        kept = sorted(eligible[j] for j in keep_by_score(ranked, k, largest=True))
        trace = {"epoch_total": n, "epoch_kept": len(kept), "eligible": 0 if filter_ignored else len(eligible),
                 "filter_ignored": filter_ignored}
        return EpochPlan(kept, {}, trace)
