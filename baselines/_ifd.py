"""Shared code of the IFD-based static selectors (``ifd``, ``superfiltering``)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from baselines._common import (
    EpochLevelSamplePruner,
    check_positive_int,
    epoch_keep_count,
    keep_by_score,
)
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan

SCORING_DEFAULTS = {"batch_size": 16, "max_length": 512}


def response_losses(records: list[dict], model: Any, tokenizer: Any, options: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """Mean response NLL given the prompt, and of the response alone."""
    from qtbench.data.template import format_prompt
    from qtbench.methods import stats as qstats

    batch_size = int(options.get("batch_size", SCORING_DEFAULTS["batch_size"]))
    max_length = int(options.get("max_length", SCORING_DEFAULTS["max_length"]))
    pairs = [format_prompt(r) for r in records]
    prompts = [p for p, _ in pairs]
    responses = [r for _, r in pairs]
    conditioned = qstats.mean_response_nll(model, tokenizer, prompts, responses, batch_size=batch_size, max_length=max_length)
    alone = qstats.mean_response_nll(model, tokenizer, [""] * len(responses), responses, batch_size=batch_size, max_length=max_length)
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
        check_positive_int(self.name, "max_length", self.options["max_length"])

    def eligible(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.threshold is None:
            return True
        return score < self.threshold if self.drop_at_threshold else score <= self.threshold

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        scores = data.static_scores
        if scores is None or len(scores) != len(data):
            raise ValueError(
                f"method {self.name!r} is static: DatasetInfo.static_scores must hold one score per record "
                f"(got {None if scores is None else len(scores)} for {len(data)} records)"
            )
        n = len(data)
        k = epoch_keep_count(n, self.budget.sample_ratio)
        scores = [float(s) for s in scores]
        eligible = [i for i in range(n) if self.eligible(scores[i])]
        filter_ignored = not eligible
        if filter_ignored:
            eligible = [i for i in range(n) if math.isfinite(scores[i])] or list(range(n))
        ranked = [scores[i] if math.isfinite(scores[i]) else -math.inf for i in eligible]
        kept = sorted(eligible[j] for j in keep_by_score(ranked, k, largest=True))
        trace = {"epoch_total": n, "epoch_kept": len(kept), "eligible": 0 if filter_ignored else len(eligible),
                 "filter_ignored": filter_ignored}
        return EpochPlan(kept, {}, trace)
