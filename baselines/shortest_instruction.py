"""Shortest instruction: the Q-Tuning authors' code's "longest" baseline.

The authors' code (``LLaMA-Factory/src/llamafactory/data/infobatch.py``,
``data_method="longest"``) sorts the training set by the number of characters
of each record's ``instruction`` field (``input`` not included), ascending, and
keeps the first ``int(r_s * N)``: the *shortest* instructions.  The paper's
text describes the opposite (long responses: method ``longest``); this module
reproduces the code under an honest name so the paper's table rows can be
rerun as they were produced.

* scores: ``len(instruction)`` in characters; model: none;
* when: fixed before training, applied per epoch (same subset every epoch,
  fewer optimizer steps, as in the code);
* keeps: the ``max(1, round(N * r_s))`` shortest (ties: lower index first; the
  code uses numpy's unstable ``argsort`` and ``int(r_s * N)``).

Option ``double_prune`` (default false): the authors' baseline path's extra
random ``round(B * r_s)`` subset of every micro-batch.
"""

from __future__ import annotations

from baselines._common import EpochLevelSamplePruner, epoch_keep_count, keep_by_score
from qtbench.methods.base import DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner


@register_sample_pruner("shortest_instruction")
class ShortestInstruction(EpochLevelSamplePruner):
    option_defaults = dict(EpochLevelSamplePruner.option_defaults)

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        lengths = [float(len(str(r.get("instruction", "") or ""))) for r in data.records]
        k = epoch_keep_count(len(data), self.budget.sample_ratio)
        kept = keep_by_score(lengths, k, largest=False)
        return EpochPlan(kept, {}, {"epoch_kept": len(kept), "epoch_total": len(data)})
