"""Controls that read the synthetic world's ground truth: ``oracle`` and ``anti_oracle``.

They are not data-selection rules - no method can know which records are
planted noise - but bounds: what selecting by the truth buys on this world, and
what selecting against it costs.  The world's ``sft_meta.jsonl`` labels every
record ``clean``, a noise type (``random``, ``wrong_answer``, ``truncated``, ``refusal``) or
``duplicate`` (the copy that names ``duplicate_of``; its original is clean),
:func:`qtbench.world.labels.record_label`.  The trainer passes the labels in
``DatasetInfo.labels`` only to a pruner with ``uses_ground_truth = True``; the
train rule hands it the world's meta file (``qtbench train --meta``), and the
config refuses a control on data that is not the world's.

Both are epoch-level sample pruners, like ``random`` in its default ``epoch``
mode (fewer optimizer steps, a fresh subset every epoch seeded by (seed,
epoch)); the subset size is the budget's, ``k = max(1, round(N * r_s))`` of the
``N`` records (:func:`baselines._common.epoch_keep_count`):

* ``oracle``: a uniformly random ``min(k, n_clean)`` of the clean records - at
  ``r_s = 1`` every clean record (the planted noise and duplicates removed),
  at a budget a random clean subset of the budget's size (all clean records
  when the budget exceeds them; the trace says ``clean_short``);
* ``anti_oracle``: noise and duplicate records first - a uniformly random
  ``min(k, n_bad)`` of them - then clean records at random to fill ``k``; at
  ``r_s = 1`` every record, as ``full``.

No options.
"""

from __future__ import annotations


import torch

from baselines._common import CheckedSamplePruner, epoch_keep_count, make_generator
from qtbench.methods.base import DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner


class GroundTruthControl(CheckedSamplePruner):
    """Base of the controls: reads ``DatasetInfo.labels``, plans each epoch; no options."""

    uses_ground_truth = True

    def labels(self, data: DatasetInfo) -> list[str]:
        """The records' labels; a clear error when the data carries none."""
        if data.labels is None:
            raise ValueError(
                f"method {self.name!r} is a control that reads the synthetic world's ground-truth labels "
                "(world/sft_meta.jsonl, passed as 'qtbench train --meta'), and this data has none: "
                "run it only with data.source: world")
        if len(data.labels) != len(data):
            raise ValueError(f"method {self.name!r}: {len(data.labels)} labels for {len(data)} records")
        return list(data.labels)

    def _draw(self, pool: list[int], count: int, epoch: int, what: str) -> list[int]:
        """``count`` of ``pool`` uniformly at random, seeded by (seed, method, what, epoch)."""
        if count >= len(pool):
            return list(pool)
        gen = make_generator(self.seed, self.name, what, epoch)
        return [pool[i] for i in torch.randperm(len(pool), generator=gen)[:count].tolist()]


@register_sample_pruner("oracle")
class Oracle(GroundTruthControl):
    """Clean records only: every one at r_s = 1, a random budget-sized subset below."""

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        labels = self.labels(data)
        clean = [i for i, label in enumerate(labels) if label == "clean"]
        k = epoch_keep_count(len(data), self.budget.sample_ratio)
        chosen = sorted(self._draw(clean, k, epoch, "clean"))
        trace = {"epoch_kept": len(chosen), "epoch_total": len(data), "n_clean": len(clean),
                 "clean_short": max(0, k - len(clean))}
        return EpochPlan(chosen, {}, trace)


@register_sample_pruner("anti_oracle")
class AntiOracle(GroundTruthControl):
    """Noise and duplicates first, then clean records at random, to the budget's size."""

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        labels = self.labels(data)
        bad = [i for i, label in enumerate(labels) if label != "clean"]
        clean = [i for i, label in enumerate(labels) if label == "clean"]
        k = epoch_keep_count(len(data), self.budget.sample_ratio)
        chosen = self._draw(bad, k, epoch, "bad")
        chosen += self._draw(clean, k - len(chosen), epoch, "fill")
        trace = {"epoch_kept": len(chosen), "epoch_total": len(data), "n_bad": len(bad),
                 "bad_kept": min(k, len(bad))}
        return EpochPlan(sorted(chosen), {}, trace)
