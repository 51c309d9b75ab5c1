"""Q-Tuning's decision function: hand-computed cases, options, and properties.

Every expected number below is worked out by hand in the comments (numpy's
linear quantile: virtual index v = (n - 1) q, value = s[floor v] + frac(v) *
(s[floor v + 1] - s[floor v])); none is derived by calling the code under test.
The equivalence with a loop/numpy port of the authors' code is in
``test_q_tuning_reference.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import JOINT_METHODS, build_method
from qtbench.methods.q_tuning import (
    DEFAULT_OPTIONS, QTuning, decide, numpy_linear_quantile, resolve_options, sample_axes, select, token_scores,
)

GARBAGE_NLL = 5.0      # written at prompt/padding positions: must never be read
GARBAGE_ENT = 9.0      # written at padding positions: must never be read


def build(rows: list[dict], width: int) -> BatchStats:
    """rows: {"prompt": n_prompt_columns, "ppl": [token PPLs of the response],
    "ent": entropy at every attended column, "gap": attended non-response
    columns after the response}; the rest of the row is padding."""
    b = len(rows)
    nll = np.full((b, width), GARBAGE_NLL)
    ent = np.full((b, width), GARBAGE_ENT)
    resp = np.zeros((b, width), dtype=bool)
    attn = np.zeros((b, width), dtype=bool)
    for i, row in enumerate(rows):
        p, r, g = row["prompt"], len(row["ppl"]), row.get("gap", 0)
        attn[i, : p + r + g] = True
        resp[i, p: p + r] = True
        nll[i, p: p + r] = np.log(np.asarray(row["ppl"], dtype=float))
        ent[i, : p + r + g] = row["ent"]
    return BatchStats.from_tensors(torch.tensor(nll, dtype=torch.float64), torch.tensor(ent, dtype=torch.float64),
                                   torch.tensor(resp), torch.tensor(attn))


def cols(mask_row: torch.Tensor) -> list[int]:
    return mask_row.nonzero().squeeze(1).tolist()


# --------------------------------------------------------------------------- batch of 8: the bisection

# (PPL, Ent) per sample.  Sorted PPL s = [1..8], sorted Ent e = [.1 .. .8].
EIGHT = [(8, .1), (1, .7), (7, .8), (2, .2), (6, .6), (3, .3), (4, .5), (5, .4)]


def eight(long_rows=(0, 1, 6, 7)) -> BatchStats:
    # 6 columns; samples in long_rows: 1 prompt + 5 response columns, others 1 + 1.
    rows = [{"prompt": 1, "ppl": [p] * (5 if i in long_rows else 1), "ent": e} for i, (p, e) in enumerate(EIGHT)]
    return build(rows, 6)


def test_eight_bisection_three_iterations():
    # r_s = 0.5, B = 8 (n - 1 = 7).
    # it 1: alpha = beta = (0 + .49)/2 = .245
    #   ppl_hi = Q(.755): v = 5.285 -> 6 + .285 = 6.285 ; ppl_lo = Q(.245): v = 1.715 -> 2 + .715 = 2.715
    #   ent_lo = .2 + .0715 = .2715 ; ent_hi = .6 + .0285 = .6285
    #   Q2 = PPL in {7,8} & Ent <= .2715: s0 (8,.1) ; s2 (7,.8) no          -> {0}
    #   Q4 = PPL in {1,2} & Ent > .6285:  s1 (1,.7) ; s3 (2,.2) no          -> {1}
    #   f = 2/8 = .25 < .5 -> lower bounds := .245
    # it 2: alpha = (.245 + .49)/2 = .3675
    #   ppl_hi: v = 7 * .6325 = 4.4275 -> 5.4275 ; ppl_lo: v = 2.5725 -> 3.5725
    #   ent_lo = .35725 ; ent_hi = .54275
    #   Q2 = PPL in {6,7,8} & Ent <= .35725: s0 only (s2 .8, s4 .6)         -> {0}
    #   Q4 = PPL in {1,2,3} & Ent > .54275:  s1 only (s3 .2, s5 .3)         -> {1}
    #   f = .25 -> lower bounds := .3675
    # it 3: alpha = (.3675 + .49)/2 = .42875
    #   ppl_hi: v = 7 * .57125 = 3.99875 -> 4 + .99875 = 4.99875 ; ppl_lo: v = 3.00125 -> 4.00125
    #   ent_lo = .4 + .000125 = .400125 ; ent_hi = .499875
    #   Q2 = PPL in {5..8} & Ent <= .400125: s0 (8,.1), s7 (5,.4)            -> {0, 7}
    #   Q4 = PPL in {1..4} & Ent > .499875:  s1 (1,.7), s6 (4,.5)            -> {1, 6}
    #   f = 4/8 = .5 -> |f - r_s| = 0 < .01: stop.
    # Q1 = PPL > 4.99875 & Ent > .499875: s2 (7,.8), s4 (6,.6) ; Q3 = PPL <= 4.00125 & Ent <= .400125: s3, s5.
    d = decide(eight(), Budget(0.5, 1.0))
    t = d.selection.trace
    assert t["bisect_iters"] == 3
    assert t["alpha"] == t["beta"] == pytest.approx(0.42875, rel=1e-15)
    assert t["ppl_hi"] == pytest.approx(4.99875, rel=1e-12)
    assert t["ppl_lo"] == pytest.approx(4.00125, rel=1e-12)
    assert t["ent_lo"] == pytest.approx(0.400125, rel=1e-12)
    assert t["ent_hi"] == pytest.approx(0.499875, rel=1e-12)
    assert cols(d.q2) == [0, 7] and cols(d.q4) == [1, 6]
    assert (t["n_q1"], t["n_q2"], t["n_q3"], t["n_q4"], t["n_unassigned"]) == (2, 2, 2, 2, 0)
    assert t["keep_frac"] == 0.5 and t["keep_count"] == 4 and t["n_topup"] == 0
    assert cols(d.selection.sample_keep) == [0, 1, 6, 7]


def test_eight_bisection_stops_at_first_iteration():
    # r_s = .25: iteration 1 above gives f = .25 -> stop; alpha = .245.
    # Q1 = PPL > 6.285 & Ent > .6285: s2 (7,.8) ; Q3 = PPL <= 2.715 & Ent <= .2715: s3 (2,.2).
    t = select(eight(), Budget(0.25, 1.0)).trace
    assert t["alpha"] == pytest.approx(0.245, rel=1e-15) and t["bisect_iters"] == 1
    assert [t["ppl_hi"], t["ppl_lo"], t["ent_lo"], t["ent_hi"]] == pytest.approx([6.285, 2.715, 0.2715, 0.6285], rel=1e-12)
    assert (t["n_q1"], t["n_q2"], t["n_q3"], t["n_q4"], t["samples_kept"]) == (1, 1, 1, 1, 2)


def test_r_t_one_never_token_prunes_even_when_budget_says_so():
    # r_s = .5 keeps {0, 1, 6, 7} (6 attended columns each), drops {2..5} (2 each).
    # N_tok = 4*6 + 4*2 = 32; r_t = 1: keep = round(32 * .5 * 1) = 16, drop_target = 16,
    # dropped by samples = 8, remaining = 8 > 0 -- but the code's `token_ratio != 1.0` guard skips.
    sel = select(eight(), Budget(0.5, 1.0))
    t = sel.trace
    assert (t["token_budget"], t["tokens_dropped_by_samples"], t["tokens_pruned"]) == (16, 8, 0)
    assert t["response_tokens_kept"] == 20 and t["attended_tokens_kept"] == 24
    # r_t = .999: keep = round(15.984) = 16, remaining = 8, candidates = Q2 rows {0, 7}: 10 tokens.
    # scores (attended neighbours, lambda .5): row 0 (PPL 8, prompt col 0 counts 1):
    #   col1 .5*8 + .5*(1+8) = 8.5, cols 2-4 .5*8 + .5*16 = 12, col5 .5*8 + .5*(8+0) = 8
    # row 7 (PPL 5): col1 2.5 + .5*6 = 5.5, cols 2-4 2.5 + 5 = 7.5, col5 2.5 + 2.5 = 5
    # 8 highest: all five of row 0 (12,12,12,8.5,8) and row 7's three 7.5 -> row 7 keeps cols 1, 5.
    sel = select(eight(), Budget(0.5, 0.999))
    t = sel.trace
    assert (t["token_budget"], t["tokens_pruned"], t["attended_tokens_kept"]) == (16, 8, 16)
    assert cols(sel.token_keep[0]) == [] and cols(sel.token_keep[7]) == [1, 5]
    assert cols(sel.token_keep[1]) == [1, 2, 3, 4, 5] and cols(sel.token_keep[6]) == [1, 2, 3, 4, 5]
    assert t["response_tokens_kept"] == 12


# --------------------------------------------------------------------------- batch of 4: top-up and token budget

# a: PPL 2, Ent .8 | b: PPL 4 (tokens 1,32,4,2,4: geometric mean 4), Ent .3
# c: PPL 8 (tokens 2,32,2,32: geometric mean 8), Ent .5 | d: PPL 1, Ent .1
# Token PPLs are values with exp(log x) == x in float64, so token scores are exact.
FOUR_ROWS = [
    {"prompt": 2, "ppl": [2, 2, 2, 2], "ent": .8},          # cols 2-5 response, 6-7 pad: 6 attended
    {"prompt": 3, "ppl": [1, 32, 4, 2, 4], "ent": .3},      # cols 3-7 response: 8 attended
    {"prompt": 1, "ppl": [2, 32, 2, 32], "ent": .5},        # cols 1-4 response, 5-7 pad: 5 attended
    {"prompt": 2, "ppl": [1, 1, 1, 1, 1], "ent": .1},       # cols 2-6 response, 7 pad: 7 attended
]


def four() -> BatchStats:
    return build(FOUR_ROWS, 8)


def test_four_topup_q2_like():
    # r_s = .75, K = round(3) = 3.  Sorted PPL [1,2,4,8], Ent [.1,.3,.5,.8], n - 1 = 3.
    # it 1 (.245): ppl_hi = Q(.755) v 2.265 -> 4 + .265*4 = 5.06 ; ppl_lo v .735 -> 1.735
    #   ent_lo = .1 + .735*.2 = .247 ; ent_hi = .5 + .265*.3 = .5795
    #   Q2: c (8) has Ent .5 > .247 -> none ; Q4: d (1) has Ent .1 <= .5795 -> none ; f = 0 -> up
    # it 2 (.3675): ppl_hi v 1.8975 -> 2 + .8975*2 = 3.795 ; ppl_lo v 1.1025 -> 2.205
    #   ent_lo = .3 + .1025*.2 = .3205 ; ent_hi = .3 + .8975*.2 = .4795
    #   Q2 = {b (4,.3)} ; Q4 = {a (2,.8)} ; f = .5 < .75 -> up ; for every alpha in (1/3, .49) the
    #   sets stay the same, so all 10 iterations run: alpha_10 = .49 * 1023/1024 = .489521484375.
    # final: ppl_hi v 3*.510478515625 = 1.531435546875 -> 4 - 2*.468564453125 = 3.06287109375
    #        ppl_lo v 1.468564453125 -> 2 + 2*.468564453125 = 2.93712890625
    #        ent_lo = .3 + .2*.468564453125 = .393712890625 ; ent_hi = .5 - .093712890625 = .406287109375
    # Q1 = {c} (8 > 3.06, .5 > .406) ; Q3 = {d}.
    # top-up: p = (PPL-1)/7, e = (Ent-.1)/.7: c: p = 1, e = .4/.7 = .5714 -> 3/7 ; d: p = e = 0 -> 0
    #   -> add c; p >= e -> Q2-like.
    d = decide(four(), Budget(0.75, 1.0))
    t = d.selection.trace
    assert t["bisect_iters"] == 10 and t["alpha"] == t["beta"] == pytest.approx(0.489521484375, rel=1e-15)
    assert [t["ppl_hi"], t["ppl_lo"], t["ent_lo"], t["ent_hi"]] == pytest.approx(
        [3.06287109375, 2.93712890625, 0.393712890625, 0.406287109375], rel=1e-12)
    assert cols(d.q2) == [1] and cols(d.q4) == [0]
    assert (t["n_q1"], t["n_q3"], t["keep_frac"]) == (1, 1, 0.5)
    assert cols(d.topup) == [2] and cols(d.q2_like) == [2] and (t["n_topup"], t["n_q2_like"]) == (1, 1)
    assert cols(d.selection.sample_keep) == [0, 1, 2] and cols(d.prune_rows) == [1, 2]


def test_four_topup_tie_counts_as_q2_like():
    # r_s = 1: K = 4, f never exceeds .5; top-up adds c (3/7) then d (0): d has p - e = 0 >= e - p = 0.
    d = decide(four(), Budget(1.0, 1.0))
    assert cols(d.topup) == [2, 3] and cols(d.q2_like) == [2, 3]


# Token scores of the candidate rows (attended neighbours, lambda = .5: .5*p + .5*(left + right)):
# b: base over cols 0..7 = [1,1,1, 1,32,4,2,4] (prompt cols count exp(0) = 1):
#   b3 = .5 + .5*(1+32) = 17 ; b4 = 16 + .5*(1+4) = 18.5 ; b5 = 2 + .5*(32+2) = 19
#   b6 = 1 + .5*(4+4) = 5 ; b7 = 2 + .5*(2+0) = 3
# c: base = [1, 2,32,2,32, 0,0,0]:
#   c1 = 1 + .5*(1+32) = 17.5 ; c2 = 16 + .5*(2+2) = 18 ; c3 = 1 + .5*(32+32) = 33 ; c4 = 16 + .5*(2+0) = 17
# descending: c3 33, b5 19, b4 18.5, c2 18, c1 17.5, b3 17 (flat 1*8+3 = 11), c4 17 (flat 2*8+4 = 20), b6 5, b7 3


def test_four_token_scores_literal():
    d = decide(four(), Budget(0.75, 0.7))
    assert d.scores[1, 3:8].tolist() == [17.0, 18.5, 19.0, 5.0, 3.0]
    assert d.scores[2, 1:5].tolist() == [17.5, 18.0, 33.0, 17.0]


def test_batch_budget_dropped_samples_count_first():
    # r_s = .75, r_t = .7: N_tok = 6 + 8 + 5 + 7 = 26; keep = round(26*.75*.7) = round(13.65) = 14;
    # drop_target = 12; d (dropped) has 7 attended columns -> remaining = 5; candidates b (5) + c (4) = 9.
    # drop the 5 highest: c3, b5, b4, c2, c1 -> b keeps 3, 6, 7 ; c keeps 4 ; a (Q4) keeps all of 2-5.
    sel = select(four(), Budget(0.75, 0.7))
    t = sel.trace
    assert (t["attended_tokens"], t["token_budget"], t["tokens_dropped_by_samples"]) == (26, 14, 7)
    assert (t["token_candidates"], t["tokens_pruned"], t["attended_tokens_kept"]) == (9, 5, 14)
    assert cols(sel.token_keep[0]) == [2, 3, 4, 5]
    assert cols(sel.token_keep[1]) == [3, 6, 7]
    assert cols(sel.token_keep[2]) == [4]
    assert cols(sel.token_keep[3]) == []
    assert (t["response_tokens"], t["response_tokens_kept"]) == (18, 8)


def test_batch_budget_tie_goes_to_lower_flat_index():
    # r_t = 2/3: 26*.75 = 19.5, 19.5 * 0.666.. = 12.999999999999998 -> 13; drop_target 13, remaining 6:
    # the five above plus one of the 17s: b3 (flat 11) before c4 (flat 20).
    sel = select(four(), Budget(0.75, 2 / 3))
    assert sel.trace["token_budget"] == 13 and sel.trace["tokens_pruned"] == 6
    assert cols(sel.token_keep[1]) == [6, 7] and cols(sel.token_keep[2]) == [4]


def test_batch_budget_no_token_pruning_when_samples_cover_the_drop():
    # r_t = .95: keep = round(19.5*.95) = round(18.525) = 19, drop_target = 7 = d's 7 -> remaining 0.
    t = select(four(), Budget(0.75, 0.95)).trace
    assert (t["token_budget"], t["tokens_pruned"], t["attended_tokens_kept"]) == (19, 0, 19)
    # r_t = .9: keep = round(17.55) = 18, drop_target 8, remaining 1 -> only c3 (33) goes.
    sel = select(four(), Budget(0.75, 0.9))
    assert sel.trace["tokens_pruned"] == 1 and cols(sel.token_keep[2]) == [1, 2, 4]


def test_batch_budget_with_q2_like_tie_row():
    # r_s = 1, r_t = .5: all kept, prune rows b, c, d (d Q2-like by the 0 >= 0 tie).
    # keep = round(26 * .5) = 13, drop_target 13, nothing dropped by samples, candidates 5 + 4 + 5 = 14.
    # d's scores: base [1,1, 1,1,1,1,1, 0]: d2..d5 = .5 + .5*2 = 1.5, d6 = .5 + .5*(1+0) = 1.
    # 13 of 14 candidates go: the survivor is the lowest, d6 = 1.
    sel = select(four(), Budget(1.0, 0.5))
    assert sel.trace["tokens_pruned"] == 13
    assert cols(sel.token_keep[0]) == [2, 3, 4, 5]  # Q4 keeps everything
    assert [cols(sel.token_keep[i]) for i in (1, 2, 3)] == [[], [], [6]]


def test_per_sample_budget():
    # floor(r_t * L) per Q2(-like) sample; r_t = .5: b (L = 5) keeps floor(2.5) = 2 -> drops 19, 18.5, 17
    # -> keeps b6, b7 ; c (L = 4) keeps 2 -> drops 33, 18 -> keeps c1, c4 ; a keeps all 4.
    sel = select(four(), Budget(0.75, 0.5), token_budget="per_sample")
    assert cols(sel.token_keep[1]) == [6, 7] and cols(sel.token_keep[2]) == [1, 4]
    assert cols(sel.token_keep[0]) == [2, 3, 4, 5]
    assert sel.trace["token_budget"] == 4 + 2 + 2 and sel.trace["response_tokens_kept"] == 8
    # r_t = .7: b keeps floor(3.5) = 3 (drops 19, 18.5), c keeps floor(2.8) = 2 (drops 33, 18).
    sel = select(four(), Budget(0.75, 0.7), token_budget="per_sample")
    assert cols(sel.token_keep[1]) == [3, 6, 7] and cols(sel.token_keep[2]) == [1, 4]


def test_lowest_drop():
    # batch budget as above (drop 5), lowest first: b7 3, b6 5, b3 17 (flat 11), c4 17 (flat 20), c1 17.5
    sel = select(four(), Budget(0.75, 0.7), token_drop="lowest")
    assert cols(sel.token_keep[1]) == [4, 5] and cols(sel.token_keep[2]) == [2, 3]
    # per-sample, r_t = .5: b drops its 3 lowest (3, 5, 17) -> keeps b4, b5; c drops 17, 17.5 -> keeps c2, c3
    sel = select(four(), Budget(0.75, 0.5), token_drop="lowest", token_budget="per_sample")
    assert cols(sel.token_keep[1]) == [4, 5] and cols(sel.token_keep[2]) == [2, 3]


def test_paper_text_preset_decisions_on_four():
    # paper_text: Ent over response (same here: constant per row), per-sample budget, response-only
    # neighbours: b base [0,0,0, 1,32,4,2,4] -> b3 = .5 + .5*32 = 16.5, b4 18.5, b5 19, b6 5, b7 3
    # c base [0, 2,32,2,32, 0..] -> c1 = 1 + .5*32 = 17, c2 18, c3 33, c4 17.
    d = decide(four(), Budget(0.75, 0.5), preset="paper_text")
    assert d.scores[1, 3:8].tolist() == [16.5, 18.5, 19.0, 5.0, 3.0]
    assert d.scores[2, 1:5].tolist() == [17.0, 18.0, 33.0, 17.0]
    # per sample: b keeps 2 (drops 19, 18.5, 16.5), c keeps 2 (drops 33, 18; keeps the two 17s)
    assert cols(d.selection.token_keep[1]) == [6, 7] and cols(d.selection.token_keep[2]) == [1, 4]


# --------------------------------------------------------------------------- constant axes


def test_constant_ppl_topup():
    # 4 samples, every NLL 0 -> PPL 1 for all; Ent [.3, .1, .4, .2].  r_s = 1 -> K = 4.
    # PPL quantiles are all 1: Q2 (PPL > 1) is empty; Q4 = Ent > ent_hi.  Final alpha = .489521484375:
    # ent_hi = Q(.510478515625): v 1.531435546875 -> .2 + .1*.531435546875 = .2531435546875 -> Q4 = {0, 2}.
    # Top-up: p = 0 (max - min = 0 < 1e-12), e = (Ent - .1)/.3: s1 -> 0, s3 -> .333 ; score = e.
    # Order s3, s1; Q2-like iff 0 >= e: s1 only.
    rows = [{"prompt": 1, "ppl": [1, 1], "ent": e} for e in (.3, .1, .4, .2)]
    d = decide(build(rows, 4), Budget(1.0, 1.0))
    assert cols(d.q4) == [0, 2] and cols(d.topup) == [1, 3] and cols(d.q2_like) == [1]
    assert d.selection.trace["ent_hi"] == pytest.approx(0.2531435546875, rel=1e-12)
    # r_s = .75 -> K = 3: only the top score s3 (Q4-like) is added.
    d = decide(build(rows, 4), Budget(0.75, 1.0))
    assert cols(d.topup) == [3] and cols(d.q2_like) == [] and cols(d.selection.sample_keep) == [0, 2, 3]


def test_both_axes_constant():
    # all scores 0 -> stable order picks the lowest indices; 0 >= 0 -> Q2-like.
    rows = [{"prompt": 1, "ppl": [3, 3], "ent": .5} for _ in range(4)]
    d = decide(build(rows, 4), Budget(0.5, 1.0))
    assert cols(d.topup) == [0, 1] and cols(d.q2_like) == [0, 1]


def test_single_sample_batch():
    d = decide(build([{"prompt": 1, "ppl": [2, 4], "ent": .5}], 4), Budget(0.125, 0.5))
    assert d.selection.sample_keep.tolist() == [True] and cols(d.q2_like) == [0]


def test_sample_without_response_tokens():
    rows = [{"prompt": 3, "ppl": [], "ent": .2}, {"prompt": 1, "ppl": [4, 4], "ent": .9}]
    d = decide(build(rows, 4), Budget(1.0, 0.5))
    assert d.ppl[0].item() == 1.0  # count clamped to 1: exp(0)
    assert not d.selection.token_keep[0].any()


# --------------------------------------------------------------------------- token scores


def score_rows():
    # row 0: prompt cols 0,1 ; response cols 2,3,4 with PPL 2, 4, 32 ; col 5 attended non-response ; col 6 pad
    # row 1: all 7 columns response, PPL 1, 2, 4, 1, 2, 4, 32
    nll = torch.full((2, 7), GARBAGE_NLL, dtype=torch.float64)
    nll[0, 2:5] = torch.log(torch.tensor([2.0, 4.0, 32.0], dtype=torch.float64))
    nll[1] = torch.log(torch.tensor([1.0, 2, 4, 1, 2, 4, 32], dtype=torch.float64))
    resp = torch.zeros(2, 7, dtype=torch.bool)
    resp[0, 2:5] = True
    resp[1] = True
    attn = torch.ones(2, 7, dtype=torch.bool)
    attn[0, 6] = False
    return nll, resp, attn


@pytest.mark.parametrize("lam, neighbours, row0, row1_ends", [
    # lambda 0: the token's own PPL.
    (0.0, "attended", [2, 4, 32], [1, 32]),
    (0.0, "response", [2, 4, 32], [1, 32]),
    # attended: base row 0 = [1, 1, 2, 4, 32, 1, 0]
    # .5: c2 = 1 + .5*(1+4) = 3.5 ; c3 = 2 + .5*(2+32) = 19 ; c4 = 16 + .5*(4+1) = 18.5
    # row 1 ends: c0 = .5 + .5*(0+2) = 1.5 ; c6 = 16 + .5*(4+0) = 18
    (0.5, "attended", [3.5, 19, 18.5], [1.5, 18]),
    # 1: c2 = 1 + 4 = 5 ; c3 = 2 + 32 = 34 ; c4 = 4 + 1 = 5 ; row 1: c0 = 0 + 2 = 2, c6 = 4 + 0 = 4
    (1.0, "attended", [5, 34, 5], [2, 4]),
    # response: base row 0 = [0, 0, 2, 4, 32, 0, 0]
    # .5: c2 = 1 + .5*4 = 3 ; c3 = 19 ; c4 = 16 + .5*4 = 18 ; 1: c2 = 4, c3 = 34, c4 = 4
    (0.5, "response", [3, 19, 18], [1.5, 18]),
    (1.0, "response", [4, 34, 4], [2, 4]),
])
def test_token_scores_boundaries(lam, neighbours, row0, row1_ends):
    nll, resp, attn = score_rows()
    s = token_scores(nll, resp, attn, lam, neighbours)
    assert s[0, 2:5].tolist() == [float(v) for v in row0]
    assert [s[1, 0].item(), s[1, 6].item()] == [float(v) for v in row1_ends]


def test_token_scores_lambda_03():
    # .7*4 + .3*(2 + 32) = 2.8 + 10.2 = 13.0 (row 0, col 3, either neighbour mode)
    nll, resp, attn = score_rows()
    assert token_scores(nll, resp, attn, 0.3, "attended")[0, 3].item() == pytest.approx(13.0, rel=1e-14)


# --------------------------------------------------------------------------- EU-plane axes


def test_sample_axes_entropy_over():
    # prompt cols 0,1 (Ent 3), response cols 2,3 (Ent 1, NLL log 2, log 32), col 4 pad (Ent 9).
    nll = torch.tensor([[GARBAGE_NLL, GARBAGE_NLL, math.log(2), math.log(32), GARBAGE_NLL]], dtype=torch.float64)
    ent = torch.tensor([[3.0, 3.0, 1.0, 1.0, 9.0]], dtype=torch.float64)
    resp = torch.tensor([[False, False, True, True, False]])
    attn = torch.tensor([[True, True, True, True, False]])
    stats = BatchStats.from_tensors(nll, ent, resp, attn)
    ppl, ent_all = sample_axes(stats, "all")
    _, ent_resp = sample_axes(stats, "response")
    assert ppl.item() == pytest.approx(8.0, rel=1e-14)     # exp((ln 2 + 5 ln 2)/2) = exp(3 ln 2)
    assert ent_all.item() == 2.0                           # (3 + 3 + 1 + 1)/4
    assert ent_resp.item() == 1.0


def test_entropy_over_changes_the_triage():
    # s0: PPL 4, Ent 3 on its 2 prompt columns and .5 on its 2 response columns; s1: PPL 2, Ent 1 everywhere.
    # all: Ent = ((3+3+.5+.5)/4, 1) = (1.75, 1) ; response: (.5, 1).  r_s = .5 -> K = 1.
    # it 1 (.245), n - 1 = 1: ppl_hi = 2 + .755*2 = 3.51, ppl_lo = 2 + .245*2 = 2.49.
    #   all:      ent_lo = 1 + .245*.75 = 1.18375 -> s0 (1.75) not Q2; ent_hi = 1 + .755*.75 = 1.56625 -> s1 not Q4.
    #             Same for every alpha: nothing, 10 iterations, then top-up by |p - e|: p = (1, 0), e = (1, 0)
    #             -> both 0, s0 by index, Q2-like (1 >= 1).
    #   response: ent_lo = .5 + .245*.5 = .6225 -> s0 (4 > 3.51, .5 <= .6225) is Q2, and
    #             ent_hi = .5 + .755*.5 = .8775 -> s1 (2 <= 2.49, 1 > .8775) is Q4: f = 1 > .5.  For every
    #             alpha > 0 (ppl_hi = 4 - 2 alpha, ent_lo = .5 + .5 alpha, ppl_lo = 2 + 2 alpha, ent_hi = 1 - .5 alpha)
    #             both stay in: 10 iterations, alpha = .49 / 2**10 = .000478515625, and both samples are kept
    #             although K = 1 (the code never trims an overshoot).
    nll = torch.tensor([[0.0, 0.0, math.log(4), math.log(4)], [0.0, 0.0, math.log(2), math.log(2)]], dtype=torch.float64)
    ent = torch.tensor([[3.0, 3.0, .5, .5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    resp = torch.tensor([[False, False, True, True]] * 2)
    stats = BatchStats.from_tensors(nll, ent, resp, torch.ones(2, 4, dtype=torch.bool))
    d_all = decide(stats, Budget(0.5, 1.0))
    d_resp = decide(stats, Budget(0.5, 1.0), entropy_over="response")
    assert d_all.entropy.tolist() == [1.75, 1.0] and d_resp.entropy.tolist() == [0.5, 1.0]
    assert cols(d_all.q2) == [] and cols(d_all.topup) == [0] and cols(d_all.q2_like) == [0]
    assert d_all.selection.trace["bisect_iters"] == 10
    t = d_resp.selection.trace
    assert cols(d_resp.q2) == [0] and cols(d_resp.q4) == [1] and cols(d_resp.topup) == []
    assert t["bisect_iters"] == 10 and t["alpha"] == pytest.approx(0.000478515625, rel=1e-15)
    assert t["keep_frac"] == 1.0 and t["keep_count"] == 1 and t["samples_kept"] == 2


# --------------------------------------------------------------------------- options


def test_defaults_follow_the_code():
    opts = resolve_options({})
    assert opts == DEFAULT_OPTIONS
    assert (opts["entropy_over"], opts["token_budget"], opts["stats_source"], opts["neighbours"]) == (
        "all", "batch", "same_forward", "attended")
    assert (opts["lambda"], opts["alpha_max"], opts["beta_max"], opts["max_iter"], opts["tol"]) == (0.5, 0.49, 0.49, 10, 0.01)
    assert opts["token_drop"] == "highest"


def test_paper_text_preset_flips_the_disagreements():
    opts = resolve_options({"preset": "paper_text"})
    assert (opts["entropy_over"], opts["token_budget"], opts["stats_source"], opts["neighbours"]) == (
        "response", "per_sample", "separate_pass", "response")
    assert opts["token_drop"] == "highest" and opts["lambda"] == 0.5
    # explicit options win over the preset
    opts = resolve_options({"preset": "paper_text", "token_budget": "batch", "lambda": 0})
    assert opts["token_budget"] == "batch" and opts["entropy_over"] == "response" and opts["lambda"] == 0.0
    opts = resolve_options({"entropy_over": "response"})
    assert opts["preset"] == "code" and opts["entropy_over"] == "response" and opts["token_budget"] == "batch"


def test_unknown_option_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'bogus'.*valid options: .*entropy_over.*token_budget"):
        resolve_options({"bogus": 1})
    with pytest.raises(ValueError, match="'bogus'"):
        select(four(), Budget(0.5, 0.5), bogus=1)
    with pytest.raises(ValueError, match="'bogus'"):
        build_method("q_tuning", Budget(0.5, 0.5), {"q_tuning": {"bogus": 1}})


@pytest.mark.parametrize("bad", [
    {"preset": "paper"}, {"entropy_over": "prompt"}, {"token_budget": "global"}, {"token_drop": "random"},
    {"stats_source": "x"}, {"neighbours": "all"}, {"lambda": 1.5}, {"lambda": "0.5"}, {"alpha_max": 0.5},
    {"beta_max": 0}, {"max_iter": 0}, {"max_iter": 2.0}, {"tol": 0}, {"device": "cuda"},
])
def test_invalid_values(bad):
    with pytest.raises(ValueError, match=repr(next(iter(bad)))):
        resolve_options(bad)


def test_stats_source_changes_no_decision():
    a = select(four(), Budget(0.75, 0.7))
    b = select(four(), Budget(0.75, 0.7), stats_source="separate_pass")
    assert torch.equal(a.sample_keep, b.sample_keep) and torch.equal(a.token_keep, b.token_keep)


def test_registered_method():
    assert JOINT_METHODS["q_tuning"] is QTuning
    m = build_method("q_tuning", Budget(0.75, 0.7), {"q_tuning": {"token_drop": "lowest"}}, seed=3)
    assert isinstance(m, QTuning) and m.required_stats == frozenset({"nll", "entropy"}) and m.needs_stats_pass
    got = m.select(four())
    want = select(four(), Budget(0.75, 0.7), token_drop="lowest")
    assert torch.equal(got.sample_keep, want.sample_keep) and torch.equal(got.token_keep, want.token_keep)
    assert got.trace == want.trace
    json.dumps(got.trace, allow_nan=False)
    assert got.sample_weight.dtype == torch.float32 and got.sample_weight.tolist() == [1.0] * 4


def test_trace_keys():
    t = select(four(), Budget(0.75, 0.7)).trace
    for key in ("alpha", "beta", "ppl_hi", "ppl_lo", "ent_lo", "ent_hi", "n_q1", "n_q2", "n_q3", "n_q4",
                "n_topup", "n_q2_like", "samples_kept", "response_tokens", "response_tokens_kept", "token_budget"):
        assert key in t
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t.values())


def test_float32_stats_and_device_input_agree():
    s32 = four()
    s32 = BatchStats.from_tensors(s32.nll.float(), s32.entropy.float(), s32.response_mask, s32.attention_mask)
    a = select(s32, Budget(0.75, 0.7))
    b = select(s32, Budget(0.75, 0.7), device="input")
    assert torch.equal(a.sample_keep, b.sample_keep) and torch.equal(a.token_keep, b.token_keep)


def test_empty_batch():
    stats = BatchStats.from_tensors(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))
    sel = select(stats, Budget(0.5, 0.5))
    assert sel.sample_keep.shape == (0,) and sel.token_keep.shape == (0, 5)


def test_numpy_linear_quantile_matches_numpy():
    rng = np.random.default_rng(1)
    for n in range(1, 12):
        for _ in range(30):
            x = rng.choice([rng.normal(size=n), rng.integers(0, 4, size=n) / 8.0])
            for q in rng.uniform(-0.1, 1.1, size=6).tolist() + [0.0, 1.0, 0.245, 0.755, 0.5]:
                qc = float(min(max(q, 0.0), 1.0))
                assert numpy_linear_quantile(sorted(x.tolist()), q) == float(np.quantile(x, qc))


# --------------------------------------------------------------------------- properties


@st.composite
def batches(draw):
    b = draw(st.integers(1, 8))
    t = draw(st.integers(1, 12))
    attn = draw(arrays(np.bool_, (b, t)))
    resp = draw(arrays(np.bool_, (b, t))) & attn
    grid = st.integers(0, 40).map(lambda k: k / 8.0)  # coarse grid: many ties
    fine = st.floats(0.0, 12.0, allow_nan=False, allow_infinity=False)
    elements = draw(st.sampled_from([grid, fine]))
    nll = draw(arrays(np.float64, (b, t), elements=elements))
    ent = draw(arrays(np.float64, (b, t), elements=elements))
    ratio = st.one_of(st.sampled_from([0.0625, 0.125, 0.25, 0.5, 0.7, 1.0]), st.floats(0.01, 1.0))
    r_s, r_t = draw(ratio), draw(ratio)
    opts = {
        "token_budget": draw(st.sampled_from(["batch", "per_sample"])),
        "token_drop": draw(st.sampled_from(["highest", "lowest"])),
        "neighbours": draw(st.sampled_from(["attended", "response"])),
        "entropy_over": draw(st.sampled_from(["all", "response"])),
        "lambda": draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])),
    }
    stats = BatchStats.from_tensors(torch.tensor(nll), torch.tensor(ent), torch.tensor(resp), torch.tensor(attn))
    return stats, Budget(r_s, r_t), opts


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_properties(case):
    stats, budget, opts = case
    d = decide(stats, budget, **opts)
    sel, t = d.selection, d.selection.trace
    b = stats.batch_size
    resp, attn = stats.response_mask, stats.attention_mask
    keep = sel.sample_keep
    assert keep.dtype == torch.bool and keep.shape == (b,)
    assert sel.token_keep.dtype == torch.bool and sel.token_keep.shape == resp.shape
    # kept samples: exactly Q2 u Q4 u top-up, at least K of them, never trimmed
    k = min(budget.keep_count(b), b)
    assert torch.equal(keep, d.q2 | d.q4 | d.topup)
    assert int(keep.sum()) == max(k, int((d.q2 | d.q4).sum())) >= k
    assert not (d.q2 & d.q4).any() and not (d.topup & (d.q2 | d.q4)).any()
    assert not (d.q2_like & ~d.topup).any()
    # no non-response position, no dropped sample's token
    assert not (sel.token_keep & ~resp).any()
    assert not (sel.token_keep & ~keep[:, None]).any()
    # kept non-Q2 samples (Q4, Q4-like) keep every response token
    whole = keep & ~d.prune_rows
    assert torch.equal(sel.token_keep[whole], resp[whole])
    lengths = resp.sum(1)
    kept_per_row = sel.token_keep.sum(1)
    n_tok = int(attn.sum())
    dropped = int(attn[~keep].sum())
    n_cand = int((resp & d.prune_rows[:, None]).sum())
    pruned = int((resp & keep[:, None] & ~sel.token_keep).sum())
    assert t["attended_tokens_kept"] == n_tok - dropped - pruned
    if opts["token_budget"] == "batch":
        target = int(round(n_tok * budget.sample_ratio * budget.token_ratio))
        remaining = max(0, max(0, n_tok - target) - dropped)
        assert t["token_budget"] == target
        expect = min(remaining, n_cand) if budget.token_ratio != 1.0 else 0
        assert pruned == expect
        if budget.token_ratio != 1.0 and 0 < remaining <= n_cand:
            assert t["attended_tokens_kept"] == target  # the budget is met exactly
    else:
        rows = d.prune_rows
        want = torch.floor(lengths[rows].double() * budget.token_ratio).long()
        assert torch.equal(kept_per_row[rows], want)
    # the dropped tokens are the extreme scores among the candidates
    cand = resp & d.prune_rows[:, None]
    gone, stay = cand & ~sel.token_keep, cand & sel.token_keep
    if opts["token_budget"] == "batch" and gone.any() and stay.any():
        if opts["token_drop"] == "highest":
            assert d.scores[gone].min() >= d.scores[stay].max()
        else:
            assert d.scores[gone].max() <= d.scores[stay].min()
    # deterministic, JSON-clean trace, weights 1
    again = select(stats, budget, **opts)
    assert torch.equal(again.sample_keep, keep) and torch.equal(again.token_keep, sel.token_keep)
    json.dumps(t, allow_nan=False)
    assert torch.equal(sel.sample_weight, torch.ones(b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(7)
    for _ in range(50):
        b, t = int(rng.integers(1, 9)), int(rng.integers(1, 64))
        attn = rng.random((b, t)) < 0.9
        resp = attn & (rng.random((b, t)) < 0.7)
        nll, ent = rng.gamma(2.0, 1.0, (b, t)), rng.gamma(2.0, 1.0, (b, t))
        cpu = BatchStats.from_tensors(torch.tensor(nll).float(), torch.tensor(ent).float(), torch.tensor(resp),
                                      torch.tensor(attn))
        gpu = BatchStats(cpu.nll.cuda(), cpu.entropy.cuda(), cpu.response_mask.cuda(), cpu.attention_mask.cuda(),
                         cpu.sample_ids)
        for device in ("cpu", "input"):
            a = select(cpu, Budget(0.25, 0.5), device=device)
            g = select(gpu, Budget(0.25, 0.5), device=device)
            assert torch.equal(a.sample_keep, g.sample_keep) and torch.equal(a.token_keep, g.token_keep)
