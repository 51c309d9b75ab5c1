"""InfoBatch: unbiased dynamic data pruning by loss history.

Paper: Qin et al., "InfoBatch: Lossless Training Acceleration with Unbiased
Dynamic Data Pruning" (ICLR 2024).  Each sample's score is its most recent
training loss.  At the start of every epoch, the samples whose score is below
the mean score ("well learned") are pruned at random with probability ``r``,
and the surviving well-learned samples get their loss scaled by ``1/(1 - r)``
so the expected gradient is unchanged.  In the last part of training
(annealing, ``delta = 0.875`` in the paper) the full data set is used again.

* scores: the unweighted mean response loss of each sample from its last
  training forward (``observe``; samples never trained have no score);
* model: the model being trained (no extra pass: the training forward's loss);
* when: per epoch (fewer optimizer steps), with the per-sample loss weights in
  ``EpochPlan.weights``;
* keeps: every sample at or above the mean score, every sample without a score,
  and a random ``1 - p`` of the below-mean ones (an exact count,
  ``|below| - round(p * |below|)``, as the official code draws an exact subset).

Reading of the budget (default, ``prune_ratio: null``): InfoBatch has no sample
budget, only a prune probability.  qtbench sets ``p`` each epoch so that the
expected kept fraction is ``r_s`` when possible:
``p = min(1, (1 - r_s) * N / |below mean|)`` (``p = 0`` when ``r_s = 1``).
When fewer than ``(1 - r_s) * N`` samples are below the mean, every one of them
is pruned (``p = 1``) and the epoch keeps more than ``r_s``; the trace records
the effective fraction.  ``prune_ratio: <float in [0, 1)>`` fixes ``p`` as in the
paper (its default is 0.5) and ignores ``r_s``.  High ``p`` means large weights
``1/(1-p)``: that is InfoBatch's own trade-off.

Annealing (option ``anneal``, default 0.125 = 1 - delta): epoch ``e`` (0-based)
of ``E`` may prune only if it ends within the first ``1 - anneal`` of training,
``e + 1 <= (1 - anneal) * E``; the others train on the full data, weight 1.
Since ``anneal > 0`` this always leaves at least the final epoch unpruned:
E = 3 prunes epochs 0-1, E = 8 prunes 0-6, E = 200 prunes 0-174 (the official
code prunes while ``e <= delta * E``, i.e. one epoch more, and with E = 3 never
anneals).  ``anneal: 0`` disables annealing.  The first epoch has no history and
so is never pruned.

Switch ``budget_forced: true`` reproduces the Q-Tuning authors' code
(``LLaMA-Factory/src/llamafactory/data/infobatch.py``): unseen samples score
1.0 (``np.ones`` initialisation); the list is [every sample at or above the
mean, in index order] + [a random ``int(r_s * |below|)`` of the below-mean
ones, weight ``1/r_s``]; whenever that list is not the whole data set it is
truncated to its first ``int(r_s * N)`` entries (so mostly the above-mean
samples with the lowest indices); no annealing.  In its first epoch every score
is 1.0, nothing is below the mean and the whole data set is trained.  (The
code's score is the loss summed over response tokens divided by the padded
length; qtbench always feeds the mean response loss.)

Resuming: the history is the state; the plan of the current epoch is cached in
the state too, so a run resumed mid-epoch replays the same plan.  Random draws
are seeded by (seed, epoch).

Option ``double_prune`` (default false): the authors' baseline path's extra
random ``round(B * r_s)`` subset of every micro-batch.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from baselines._common import EpochLevelSamplePruner, check_bool, check_fraction, make_generator
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan
from qtbench.methods.registry import register_sample_pruner

Tensor = torch.Tensor
_EPS = 1e-9


def anneal_epoch(epoch: int, num_epochs: int, anneal: float) -> bool:
    """True when ``epoch`` (0-based) lies in the annealing phase (full data)."""
    if anneal <= 0:
        return False
    return epoch + 1 > (1.0 - anneal) * num_epochs + _EPS


@register_sample_pruner("infobatch")
class InfoBatch(EpochLevelSamplePruner):
    option_defaults = {
        **EpochLevelSamplePruner.option_defaults,
        "prune_ratio": None,
        "anneal": 0.125,
        "budget_forced": False,
    }

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        ratio = self.options["prune_ratio"]
        self.prune_ratio = check_fraction(self.name, "prune_ratio", ratio, allow_none=True)
        if self.prune_ratio is not None and self.prune_ratio >= 1.0:
            raise ValueError("option 'prune_ratio' of method 'infobatch' must be < 1 (the survivors are scaled by 1/(1-p))")
        self.anneal = check_fraction(self.name, "anneal", self.options["anneal"])
        if self.anneal >= 1.0:
            raise ValueError("option 'anneal' of method 'infobatch' must be < 1")
        self.budget_forced = check_bool(self.name, "budget_forced", self.options["budget_forced"])
        self.history: dict[int, float] = {}
        self._plan_epoch: int | None = None
        self._plan: EpochPlan | None = None

    # ----------------------------------------------------------------- history

    def observe(self, sample_ids: Tensor, sample_losses: Tensor, epoch: int) -> None:
        ids = torch.as_tensor(sample_ids).reshape(-1).tolist()
        losses = torch.as_tensor(sample_losses, dtype=torch.float64).reshape(-1).tolist()
        if len(ids) != len(losses):
            raise ValueError(f"infobatch.observe: {len(ids)} sample ids but {len(losses)} losses")
        for i, loss in zip(ids, losses):
            if loss == loss:  # skip NaN
                self.history[int(i)] = float(loss)

    def state_dict(self) -> dict[str, Any]:
        ids = sorted(self.history)
        state: dict[str, Any] = {"ids": ids, "losses": [self.history[i] for i in ids]}
        if self._plan is not None:
            weight_ids = sorted(self._plan.weights)
            state["plan"] = {
                "epoch": self._plan_epoch,
                "indices": list(self._plan.indices),
                "weight_ids": weight_ids,
                "weights": [self._plan.weights[i] for i in weight_ids],
                "trace": dict(self._plan.trace),
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {int(i): float(v) for i, v in zip(state.get("ids", []), state.get("losses", []))}
        plan = state.get("plan")
        if plan:
            self._plan_epoch = int(plan["epoch"])
            weights = {int(i): float(w) for i, w in zip(plan["weight_ids"], plan["weights"])}
            self._plan = EpochPlan([int(i) for i in plan["indices"]], weights, dict(plan.get("trace", {})))
        else:
            self._plan_epoch, self._plan = None, None

    # ----------------------------------------------------------------- planning

    def expected_epoch_size(self, epoch: int, num_epochs: int, n_records: int) -> int:
        """Forecast for sizing the schedule (the plan itself depends on the
        loss history): epoch 0 and annealing epochs train everything; a
        pruned epoch keeps ``r_s`` of the records (the budget ``p`` is set
        for), or with a fixed ``prune_ratio`` about ``p`` of half of them (the
        share below the mean); ``budget_forced`` keeps ``int(r_s * N)``."""
        n = n_records
        if epoch == 0 or (not self.budget_forced and anneal_epoch(epoch, num_epochs, self.anneal)):
            return n
        if self.budget_forced:
            return max(1, int(self.budget.sample_ratio * n)) if self.budget.sample_ratio < 1.0 else n
        if self.prune_ratio is not None:
            return n - int(round(self.prune_ratio * n / 2))
        return max(1, int(round(self.budget.sample_ratio * n)))

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        if self._plan is not None and self._plan_epoch == epoch:
            return EpochPlan(list(self._plan.indices), dict(self._plan.weights), dict(self._plan.trace))
        n = len(data)
        plan = self._plan_forced(epoch, n) if self.budget_forced else self._plan_paper(epoch, num_epochs, n)
        self._plan_epoch, self._plan = epoch, plan
        return EpochPlan(list(plan.indices), dict(plan.weights), dict(plan.trace))

    def _plan_paper(self, epoch: int, num_epochs: int, n: int) -> EpochPlan:
        everything = list(range(n))
        trace: dict[str, Any] = {"epoch_total": n}
        if anneal_epoch(epoch, num_epochs, self.anneal):
            return EpochPlan(everything, {}, {**trace, "epoch_kept": n, "annealed": True, "prune_prob": 0.0})
        scored = {i: self.history[i] for i in range(n) if i in self.history}
        if not scored:
            return EpochPlan(everything, {}, {**trace, "epoch_kept": n, "annealed": False, "prune_prob": 0.0})
        mean = sum(scored.values()) / len(scored)
        below = [i for i in range(n) if i in scored and scored[i] < mean]
        if self.prune_ratio is not None:
            p = self.prune_ratio
        elif below:
            p = min(1.0, max(0.0, (1.0 - self.budget.sample_ratio) * n / len(below)))
        else:
            p = 0.0
        n_prune = int(round(p * len(below)))
        gen = make_generator(self.seed, self.name, "epoch", epoch)
        order = torch.randperm(len(below), generator=gen).tolist()
        pruned = {below[j] for j in order[:n_prune]}
        kept = [i for i in everything if i not in pruned]
        weights = {i: 1.0 / (1.0 - p) for i in below if i not in pruned} if p > 0 else {}
        trace.update({"epoch_kept": len(kept), "annealed": False, "prune_prob": p, "below_mean": len(below)})
        return EpochPlan(kept, weights, trace)

    def _plan_forced(self, epoch: int, n: int) -> EpochPlan:
        r = self.budget.sample_ratio
        scores = [self.history.get(i, 1.0) for i in range(n)]
        mean = sum(scores) / n if n else 0.0
        below = [i for i in range(n) if scores[i] < mean]
        above = [i for i in range(n) if not scores[i] < mean]
        gen = make_generator(self.seed, self.name, "forced", epoch)
        chosen = [below[j] for j in torch.randperm(len(below), generator=gen)[: int(r * len(below))].tolist()]
        order = above + chosen
        if len(order) != n:
            order = order[: max(1, int(r * n))]
        kept = set(order)
        weights = {i: 1.0 / r for i in chosen if i in kept} if r < 1.0 else {}
        return EpochPlan(sorted(kept), weights, {"epoch_total": n, "epoch_kept": len(kept), "below_mean": len(below)})
