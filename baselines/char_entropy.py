"""Character entropy of the instruction: the Q-Tuning authors' code's "entropy".

The authors' code (``LLaMA-Factory/src/llamafactory/data/infobatch.py``,
``data_method="entropy"``) scores each record by the Shannon entropy (natural
log) of the character distribution of its ``instruction`` text,
``H = -sum_c p_c log(p_c + 1e-12)`` (0 for an empty instruction), sorts
ascending and keeps the first ``int(r_s * N)``: the *lowest* entropy.  The
paper describes its Entropy baseline as keeping high-entropy samples under the
model (method ``entropy``); this module reproduces the code.

* scores: character entropy of ``instruction`` (``input`` not included);
  model: none;
* when: fixed before training (computed from the records, no scoring rule),
  applied per epoch (same subset every epoch, fewer optimizer steps);
* keeps: the ``max(1, round(N * r_s))`` lowest (ties: lower index first).

Option ``double_prune`` (default false): the authors' baseline path's extra
random ``round(B * r_s)`` subset of every micro-batch.
"""

from __future__ import annotations

import math
from collections import Counter

from baselines._common import EpochLevelSamplePruner, epoch_keep_count, keep_by_score
from qtbench.methods.base import DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner


def char_entropy(text: str) -> float:
    """Shannon entropy (nats) of the characters of ``text``, as the authors' code."""
    if not text:
        return 0.0
    counts = Counter(text)
    total = sum(counts.values())
    return float(-sum((c / total) * math.log(c / total + 1e-12) for c in counts.values()))


@register_sample_pruner("char_entropy")
class CharEntropy(EpochLevelSamplePruner):
    option_defaults = dict(EpochLevelSamplePruner.option_defaults)

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        scores = [char_entropy(str(r.get("instruction", "") or "")) for r in data.records]
        k = epoch_keep_count(len(data), self.budget.sample_ratio)
        kept = keep_by_score(scores, k, largest=False)
        return EpochPlan(kept, {}, {"epoch_kept": len(kept), "epoch_total": len(data)})
