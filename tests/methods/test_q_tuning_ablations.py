"""Q-Tuning's ablation options (the paper's Fig. 6 stages and Table 5 token
scorers), each checked by hand on one small batch.

The batch (B = 4, three loss positions per row, every position a response
token) puts sample 0 in Q2 (highest PPL, lowest entropy) and sample 1 in Q4
(lowest PPL, highest entropy) at every bisection step:

    row  NLL per token      PPL              entropy
    0    2.5 1.5 2.0        e^2   = 7.389    0.5
    1    0.1 0.1 0.1        e^0.1 = 1.105    3.0
    2    1.0 1.0 1.0        e     = 2.718    2.0
    3    0.5 0.5 0.5        e^0.5 = 1.649    1.0

Token scores ``s_i = (1 - lam) e^{NLL_i} + lam (e^{NLL_{i-1}} + e^{NLL_{i+1}})``
(0 outside the row) for row 0, e^2.5 = 12.182, e^1.5 = 4.482, e^2 = 7.389:

    lam = 0     12.182   4.482   7.389     -> highest first: pos 0, pos 2, pos 1
    lam = 0.5    8.332  12.026   5.935     -> pos 1, pos 0, pos 2
and for the uniform rows ``s_0 = s_2 = e^x`` and ``s_1 = 2 e^x`` at lam = 0.5
(rows 1, 2, 3: s_1 = 1.658, 4.077, 2.473; s_0 = s_2 = 1.105, 2.718, 1.649).
"""

from __future__ import annotations

import math

import pytest
import torch

from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.q_tuning import QTuning, decide, resolve_options, rho1_scores, select
from qtbench.methods.registry import build_method, required_stats

NLL = [[2.5, 1.5, 2.0], [0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]
ENT = [[0.5] * 3, [3.0] * 3, [2.0] * 3, [1.0] * 3]
REF = [[2.0, 0.5, 2.2], [0.1] * 3, [1.0] * 3, [0.5] * 3]  # row 0 excess loss: 0.5, 1.0, -0.2


def batch(with_ref: bool = False) -> BatchStats:
    extras = {"ref_nll": torch.tensor(REF, dtype=torch.float64)} if with_ref else {}
    return BatchStats.from_tensors(torch.tensor(NLL, dtype=torch.float64), torch.tensor(ENT, dtype=torch.float64),
                                   torch.ones(4, 3, dtype=torch.bool), **extras)


def rows(mask: torch.Tensor) -> list[list[int]]:
    return mask.int().tolist()


# --------------------------------------------------------------------------- both stages, per scorer


def test_triage_puts_sample_0_in_q2_and_sample_1_in_q4():
    d = decide(batch(), Budget(0.5, 0.7))
    assert d.q2.tolist() == [True, False, False, False]
    assert d.q4.tolist() == [False, True, False, False]
    assert math.isclose(d.ppl[0].item(), math.exp(2.0), rel_tol=1e-12)
    assert d.scores[0].tolist() == pytest.approx([0.5 * math.exp(2.5) + 0.5 * math.exp(1.5),
                                                   0.5 * math.exp(1.5) + 0.5 * (math.exp(2.5) + math.exp(2.0)),
                                                   0.5 * math.exp(2.0) + 0.5 * math.exp(1.5)], rel=1e-12)


@pytest.mark.parametrize("options, kept_in_row0", [
    # batch budget at (0.5, 0.7): N_tok = 12, keep round(12 * 0.5 * 0.7) = round(4.2) = 4, drop 8,
    # rows 2 and 3 (dropped samples) pay 6, so 2 response tokens of the Q2 row 0 go
    ({}, [0, 0, 1]),                                  # lam 0.5: drop pos 1 (12.03), pos 0 (8.33)
    ({"lambda": 0.0}, [0, 1, 0]),                     # lam 0: drop pos 0 (12.18), pos 2 (7.39)
    ({"token_scorer": "reversed"}, [0, 1, 0]),        # lam 0.5, lowest first: pos 2 (5.94), pos 0 (8.33)
    ({"token_drop": "lowest"}, [0, 1, 0]),            # the same, spelt as before
    ({"token_scorer": "rho1"}, [0, 1, 0]),            # keep the highest excess loss: pos 1 (1.0)
    ({"token_scorer": "rho1", "lambda": 0.0}, [0, 1, 0]),  # lambda does not apply to rho1
])
def test_token_scorers_inside_q2(options, kept_in_row0):
    sel = select(batch(with_ref=True), Budget(0.5, 0.7), **options)
    assert sel.sample_keep.tolist() == [True, True, False, False]
    assert rows(sel.token_keep) == [kept_in_row0, [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert sel.trace["tokens_pruned"] == 2


def test_rho1_scores_are_minus_the_excess_loss():
    got = rho1_scores(torch.tensor(NLL, dtype=torch.float64), torch.tensor(REF, dtype=torch.float64),
                      torch.tensor([[1, 1, 0]] + [[1, 1, 1]] * 3, dtype=torch.bool))
    assert got[0].tolist() == pytest.approx([-0.5, -1.0, 0.0])  # position 2 is no response: 0
    assert got[1:].abs().max().item() == pytest.approx(0.0)


def test_rho1_per_sample_and_its_needs():
    # per_sample at (0.5, 0.5): row 0 keeps floor(0.5 * 3) = 1 token, the highest excess loss (pos 1)
    sel = select(batch(with_ref=True), Budget(0.5, 0.5), token_scorer="rho1", token_budget="per_sample")
    assert rows(sel.token_keep)[0] == [0, 1, 0]
    with pytest.raises(ValueError, match="ref_nll"):
        select(batch(), Budget(0.5, 0.5), token_scorer="rho1")
    assert QTuning.stats_for_options({"token_scorer": "rho1"}) == {"nll", "entropy", "ref_nll"}
    assert QTuning.stats_for_options({"token_scorer": "rho1", "stage": "triage_only"}) == {"nll", "entropy"}
    assert QTuning.stats_for_options({}) == {"nll", "entropy"}
    assert required_stats("q_tuning", {"q_tuning": {"token_scorer": "rho1"}}) == {"nll", "entropy", "ref_nll"}
    assert required_stats("q_tuning") == {"nll", "entropy"}
    method = build_method("q_tuning", Budget(0.5, 0.5), {"q_tuning": {"token_scorer": "rho1"}})
    assert method.required_stats == {"nll", "entropy", "ref_nll"}  # what the trainer's stats pass computes


def test_reversed_contradicting_token_drop_is_an_error():
    assert resolve_options({"token_scorer": "reversed"})["token_drop"] == "lowest"
    with pytest.raises(ValueError, match="token_drop: highest"):
        resolve_options({"token_scorer": "reversed", "token_drop": "highest"})
    with pytest.raises(ValueError, match="'stage' must be one of"):
        resolve_options({"stage": "triage"})


# --------------------------------------------------------------------------- single stages (Fig. 6)


def test_triage_only_keeps_every_token_of_the_kept_samples():
    # total budget 0.5 * 0.5 = 0.25 spent on samples: K = round(4 * 0.25) = 1, but rows 0 and 1
    # stay in Q2/Q4 at every bisection step (f = 0.5) and the code never trims: both kept, whole
    sel = select(batch(), Budget(0.5, 0.5), stage="triage_only")
    assert sel.sample_keep.tolist() == [True, True, False, False]
    assert rows(sel.token_keep) == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert sel.trace["tokens_pruned"] == 0 and sel.trace["keep_count"] == 1
    both = select(batch(), Budget(0.25, 1.0))  # = both stages at (r_s r_t, 1)
    assert torch.equal(both.token_keep, sel.token_keep) and both.trace == sel.trace


def test_tokens_only_batch_budget_ranks_every_response_token():
    # total 1 * 0.5: keep round(12 * 0.5) = 6 response tokens of the batch; the 6 highest scores go:
    # row 0 (12.03, 8.33, 5.94), row 2 pos 1 (4.08), row 2 pos 0 and pos 2 (2.718 each);
    # next would be row 3 pos 1 (2.47)
    sel = select(batch(), Budget(1.0, 0.5), stage="tokens_only")
    assert sel.sample_keep.tolist() == [True] * 4
    assert rows(sel.token_keep) == [[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]]
    assert sel.trace["token_budget"] == 6 and sel.trace["tokens_pruned"] == 6
    assert sel.trace["ppl_hi"] is None and sel.trace["n_q2"] == 0  # no triage
    # the same total from the pair (0.5, 1.0): the stage spends r_s * r_t
    assert torch.equal(select(batch(), Budget(0.5, 1.0), stage="tokens_only").token_keep, sel.token_keep)


def test_tokens_only_per_sample_budget():
    # floor(0.5 * 3) = 1 token kept per row; row 0 drops pos 1 and pos 0 (lam 0.5); in the
    # uniform rows s_1 = 2 e^x is highest and s_0 = s_2 tie: the lower index goes first
    sel = select(batch(), Budget(1.0, 0.5), stage="tokens_only", token_budget="per_sample")
    assert rows(sel.token_keep) == [[0, 0, 1]] * 4
    lam0 = select(batch(), Budget(1.0, 0.5), stage="tokens_only", token_budget="per_sample", **{"lambda": 0.0})
    assert rows(lam0.token_keep)[0] == [0, 1, 0]
    # nothing to prune at a total budget of 1
    assert bool(select(batch(), Budget(1.0, 1.0), stage="tokens_only").token_keep.all())


def test_stage_options_reach_the_method_object():
    method = build_method("q_tuning", Budget(1.0, 0.5), {"q_tuning": {"stage": "tokens_only"}})
    sel = method.select(batch())
    assert sel.per_sample["quadrant"] == ["mid"] * 4
    assert rows(sel.token_keep) == [[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]]


def test_prune_quadrants_q2_q4_prunes_the_calibration_samples_too():
    # per-sample budget at (0.5, 0.7): floor(0.7 * 3) = 2 tokens kept in each pruned row; row 1 (Q4)
    # is pruned only under q2_q4, where its s_1 = 2 e^0.1 (1.658) is the highest score
    only_q2 = select(batch(), Budget(0.5, 0.7), token_budget="per_sample")
    both = select(batch(), Budget(0.5, 0.7), token_budget="per_sample", prune_quadrants="q2_q4")
    assert rows(only_q2.token_keep)[:2] == [[1, 0, 1], [1, 1, 1]]
    assert rows(both.token_keep)[:2] == [[1, 0, 1], [1, 0, 1]]
    assert both.trace["token_candidates"] == 6 and only_q2.trace["token_candidates"] == 3
