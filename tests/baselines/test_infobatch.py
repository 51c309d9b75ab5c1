"""InfoBatch across epochs with a known loss history (expectations by hand)."""

from __future__ import annotations

import pytest
import torch

from qtbench.methods.base import Budget, DatasetInfo
from qtbench.methods.registry import SAMPLE_PRUNERS, load_registry

load_registry()

DATA = DatasetInfo([{"instruction": "q", "output": "a"}] * 8, [3] * 8)
LOSSES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # mean 4.5 -> below mean: 0, 1, 2, 3


def make(ratio, options=None, seed=0):
    return SAMPLE_PRUNERS["infobatch"](Budget(ratio), options or {}, seed)


def observe_all(pruner, losses=LOSSES, ids=None, epoch=0):
    ids = list(range(len(losses))) if ids is None else ids
    pruner.observe(torch.tensor(ids), torch.tensor(losses), epoch)


def test_anneal_schedule():
    from baselines.infobatch import anneal_epoch

    assert [anneal_epoch(e, 3, 0.125) for e in range(3)] == [False, False, True]
    assert [anneal_epoch(e, 8, 0.125) for e in range(8)] == [False] * 7 + [True]
    assert anneal_epoch(174, 200, 0.125) is False and anneal_epoch(175, 200, 0.125) is True
    assert anneal_epoch(0, 1, 0.125) is True
    assert not any(anneal_epoch(e, 3, 0.0) for e in range(3))


def test_first_epoch_has_no_history():
    plan = make(0.5).plan_epoch(0, 8, DATA)
    assert plan.indices == list(range(8)) and plan.weights == {}


def test_budget_derived_prune_probability_and_rescaling():
    pruner = make(0.75, seed=3)
    observe_all(pruner)
    plan = pruner.plan_epoch(1, 8, DATA)
    # p = (1 - 0.75) * 8 / 4 = 0.5 -> 2 of the 4 below-mean samples pruned, 6 kept (= 0.75 * 8)
    assert plan.trace["prune_prob"] == pytest.approx(0.5)
    assert set(range(4, 8)) <= set(plan.indices) and len(plan.indices) == 6
    survivors = [i for i in plan.indices if i < 4]
    assert len(survivors) == 2
    assert plan.weights == {i: pytest.approx(2.0) for i in survivors}  # 1 / (1 - 0.5)
    # reproducible from (seed, epoch)
    again = make(0.75, seed=3)
    observe_all(again)
    assert again.plan_epoch(1, 8, DATA).indices == plan.indices


def test_fixed_prune_ratio_as_in_the_paper():
    pruner = make(0.25, {"prune_ratio": 0.5})
    observe_all(pruner)
    plan = pruner.plan_epoch(1, 8, DATA)
    assert len(plan.indices) == 6 and set(range(4, 8)) <= set(plan.indices)
    assert sorted(plan.weights.values()) == [2.0, 2.0]


def test_budget_below_reach_prunes_all_below_mean():
    pruner = make(0.25)
    observe_all(pruner)
    plan = pruner.plan_epoch(1, 8, DATA)
    # p = min(1, 0.75 * 8 / 4) = 1: everything below the mean goes, nothing to rescale
    assert plan.indices == [4, 5, 6, 7] and plan.weights == {}
    assert plan.trace["epoch_kept"] == 4


def test_full_budget_prunes_nothing():
    pruner = make(1.0)
    observe_all(pruner)
    plan = pruner.plan_epoch(1, 8, DATA)
    assert plan.indices == list(range(8)) and plan.weights == {}


def test_three_epoch_run_prunes_then_anneals():
    pruner = make(0.5)
    assert pruner.plan_epoch(0, 3, DATA).indices == list(range(8))
    observe_all(pruner)
    plan1 = pruner.plan_epoch(1, 3, DATA)
    # p = 0.5 * 8 / 4 = 1 -> [4..7]
    assert plan1.indices == [4, 5, 6, 7]
    # epoch 1 trains 4..7 only; their new losses: 0.5 each; 0..3 keep 1..4
    observe_all(pruner, [0.5] * 4, ids=[4, 5, 6, 7], epoch=1)
    assert pruner.history == {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 0.5, 5: 0.5, 6: 0.5, 7: 0.5}
    plan2 = pruner.plan_epoch(2, 3, DATA)  # final epoch: annealed, full data, weight 1
    assert plan2.indices == list(range(8)) and plan2.weights == {} and plan2.trace["annealed"] is True


def test_history_ignores_nan_and_state_round_trip():
    pruner = make(0.75, seed=11)
    observe_all(pruner, LOSSES[:7] + [float("nan")])
    assert 7 not in pruner.history
    observe_all(pruner)
    plan = pruner.plan_epoch(1, 8, DATA)
    state = pruner.state_dict()
    assert set(state) == {"ids", "losses", "plan"}
    restored = make(0.75, seed=11)
    restored.load_state_dict(state)
    assert restored.history == pruner.history
    # mid-epoch resume: observations after the plan do not change the cached plan
    observe_all(restored, [9.0] * 8, epoch=1)
    replay = restored.plan_epoch(1, 8, DATA)
    assert replay.indices == plan.indices and replay.weights == plan.weights
    # next epoch: both make the same decision
    observe_all(pruner, [9.0] * 8, epoch=1)
    assert restored.plan_epoch(2, 8, DATA).indices == pruner.plan_epoch(2, 8, DATA).indices


def test_budget_forced_authors_code():
    pruner = make(0.5, {"budget_forced": True})
    # epoch 0: every score is the initial 1.0 -> nothing below the mean -> whole data set
    first = pruner.plan_epoch(0, 3, DATA)
    assert first.indices == list(range(8)) and first.weights == {}
    observe_all(pruner)
    # above mean [4, 5, 6, 7] + int(0.5 * 4) = 2 below; 6 != 8 -> truncated to int(0.5 * 8) = 4
    plan = pruner.plan_epoch(1, 3, DATA)
    assert plan.indices == [4, 5, 6, 7] and plan.weights == {}
    # no annealing: the final epoch is pruned too
    assert len(pruner.plan_epoch(2, 3, DATA).indices) == 4


def test_budget_forced_rescales_chosen_below_mean():
    pruner = make(0.5, {"budget_forced": True})
    observe_all(pruner, [1, 1, 1, 1, 1, 1, 1, 9])  # mean 2: below 0..6, above [7]
    plan = pruner.plan_epoch(1, 3, DATA)
    # [7] + int(0.5 * 7) = 3 chosen below -> 4 entries (not 8) -> truncate to 4: all stay
    assert 7 in plan.indices and len(plan.indices) == 4
    assert plan.weights == {i: 2.0 for i in plan.indices if i != 7}


def test_infobatch_options_validated():
    for bad in ({"prune_ratio": 1.0}, {"prune_ratio": -0.1}, {"anneal": 1.0}, {"budget_forced": "yes"}, {"bogus": 0}):
        with pytest.raises(ValueError):
            make(0.5, bad)
