"""Token-level baselines on a hand-built batch.

B = 2, T = 6.  Response (candidate) positions: row 0 -> 1..4, row 1 -> 2..5;
row 0's position 5 is padding.  Expected kept positions are written by hand
from the numbers below (r_t = 0.5 -> 2 of 4 per sample, 4 of 8 per batch)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qtbench.methods.base import BatchStats, Budget
from qtbench.methods.registry import TOKEN_PRUNERS, load_registry

load_registry()

RESPONSE = [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
ATTENTION = [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
NLL = [[0, 0.5, 2.0, 1.0, 3.0, 0], [0, 0, 3.5, 2.5, 0.2, 4.0]]
# excess = nll - ref: row 0 -> p1 .4, p2 1.9, p3 .8, p4 2.6 ; row 1 -> p2 .5, p3 2.0, p4 .2, p5 .1
REF = [[0.3, 0.1, 0.1, 0.2, 0.4, 0.0], [0.7, 0.7, 3.0, 0.5, 0.0, 3.9]]
# base - ref: row 0 -> p1 1.0, p2 1.5, p3 2.5, p4 0 ; row 1 -> p2 0, p3 .8, p4 3.0, p5 .1
BASE = [[5.0, 1.5, 2.0, 3.0, 0.5, 0.0], [0.0, 0.0, 1.0, 1.0, 4.0, 2.0]]
TC_REF = [[0.0, 0.5, 0.5, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.2, 1.0, 1.9]]
ATTN = [[0.9, 0.1, 0.3, 0.2, 0.4, 0.0], [0.8, 0.7, 0.05, 0.5, 0.6, 0.01]]


def stats(ref=REF, base=BASE, **kw):
    return BatchStats.from_tensors(NLL, [[0.0] * 6] * 2, RESPONSE, ATTENTION, sample_ids=[4, 9], step=5, epoch=2,
                                   ref_nll=ref, base_nll=base, attention_received=ATTN, **kw)


def mask(rows):
    out = torch.zeros(2, 6, dtype=torch.bool)
    for r, positions in enumerate(rows):
        out[r, positions] = True
    return out


def run(name, options=None, ratio=0.5, candidates=None, s=None):
    s = s or stats()
    pruner = TOKEN_PRUNERS[name](Budget(1.0, ratio), options or {}, 0)
    cand = s.response_mask.clone() if candidates is None else candidates
    keep, trace = pruner.select_tokens(s, cand)
    assert not bool((keep & ~cand).any())
    return keep


def test_ppl_drops_highest_per_sample():
    # row 0 lowest two: p1 (.5), p3 (1.0); row 1: p4 (.2), p3 (2.5)
    assert torch.equal(run("ppl"), mask([[1, 3], [3, 4]]))


def test_ppl_drop_highest_per_batch():
    # lowest four of the batch: .2 (1,p4), .5 (0,p1), 1.0 (0,p3), 2.0 (0,p2)
    assert torch.equal(run("ppl", {"scope": "batch"}), mask([[1, 2, 3], [4]]))


def test_ppl_authors_code_switch_keeps_highest():
    # row 0 highest two: p4 (3), p2 (2); row 1: p5 (4), p2 (3.5)
    assert torch.equal(run("ppl", {"drop": "lowest"}), mask([[2, 4], [2, 5]]))


def test_loss_keeps_highest_per_sample_and_batch():
    assert torch.equal(run("loss"), mask([[2, 4], [2, 5]]))
    # highest four of the batch: 4 (1,p5), 3.5 (1,p2), 3 (0,p4), 2.5 (1,p3)
    assert torch.equal(run("loss", {"scope": "batch"}), mask([[4], [2, 3, 5]]))


def test_rho1_excess_loss_batch_default_and_per_sample():
    # batch top four: 2.6 (0,p4), 2.0 (1,p3), 1.9 (0,p2), .8 (0,p3)
    assert torch.equal(run("rho1"), mask([[2, 3, 4], [3]]))
    # per sample: row 0 p4 (2.6), p2 (1.9); row 1 p3 (2.0), p2 (.5)
    assert torch.equal(run("rho1", {"scope": "sample"}), mask([[2, 4], [2, 3]]))
    assert TOKEN_PRUNERS["rho1"].required_stats == {"nll", "ref_nll"}


def test_token_cleaning_batch_sample_and_threshold():
    s = stats(ref=TC_REF)
    # threshold: batch - batch top four: 3.0 (1,p4), 2.5 (0,p3), 1.5 (0,p2), 1.0 (0,p1)
    assert torch.equal(run("token_cleaning", {"threshold": "batch"}, s=s), mask([[1, 2, 3], [4]]))
    # per sample: row 0 p3 (2.5), p2 (1.5); row 1 p4 (3.0), p3 (.8)
    assert torch.equal(run("token_cleaning", {"threshold": "batch", "scope": "sample"}, s=s), mask([[2, 3], [3, 4]]))
    # a fixed cut 1.2: scores >= 1.2 -> (0,p2) 1.5, (0,p3) 2.5, (1,p4) 3.0
    assert torch.equal(run("token_cleaning", {"threshold": 1.2}, s=s), mask([[2, 3], [4]]))
    assert TOKEN_PRUNERS["token_cleaning"].required_stats == {"base_nll", "ref_nll"}


def test_token_cleaning_global_threshold_by_hand():
    """The paper's static cut: the data set's 10 response-token scores (by hand,
    sorted: 4.0 3.0 2.5 2.0 1.5 1.0 0.8 0.5 0.1 -0.2), r_t = 0.5 -> k = 5 -> the cut
    is the 5th highest, 1.5; r_t = 0.6 -> k = 6 -> 1.0; r_t = 0.7 -> k = 7 -> 0.8; r_t = 0.25 -> k = round(2.5)
    = 2 (half to even) -> 3.0.  Applied per batch: keep score >= cut."""
    from baselines.token_cleaning import threshold_from_scores

    data = [1.0, -0.2, 2.5, 0.8, 4.0, 0.1, 1.5, 3.0, 0.5, 2.0]
    assert threshold_from_scores(data, 0.5) == 1.5
    assert threshold_from_scores(data, 0.6) == 1.0
    assert threshold_from_scores(data, 0.7) == 0.8
    assert threshold_from_scores(data, 0.25) == 3.0
    assert threshold_from_scores(data, 1.0) == -0.2
    with pytest.raises(ValueError, match="no response tokens"):
        threshold_from_scores([], 0.5)

    pruner = TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.5), {}, 0)  # threshold: global, the default
    assert pruner.needs_token_scores
    s = stats(ref=TC_REF)
    with pytest.raises(ValueError, match="token scores"):
        pruner.select_tokens(s, s.response_mask)  # no pre-pass given
    pruner.set_token_scores(torch.tensor(data))
    keep, trace = pruner.select_tokens(s, s.response_mask)
    # batch scores: row 0 p1 1.0, p2 1.5, p3 2.5, p4 0 ; row 1 p2 0, p3 .8, p4 3.0, p5 .1 -> >= 1.5: (0,p2), (0,p3), (1,p4)
    assert torch.equal(keep, mask([[2, 3], [4]])) and trace["token_threshold"] == 1.5
    # the same batch at r_t = 0.6: k = 6 -> cut 1.0 -> also (0,p1) 1.5 - 0.5 = 1.0 (a tie at the cut stays)
    wide = TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.6), {"threshold": "global"}, 0)
    wide.set_token_scores(torch.tensor(data))
    assert torch.equal(wide.select_tokens(s, s.response_mask)[0], mask([[1, 2, 3], [4]]))


def test_token_cleaning_threshold_option():
    from qtbench.methods.registry import build_method, needs_token_scores

    assert needs_token_scores("token_cleaning") and needs_token_scores("random+token_cleaning")
    assert not needs_token_scores("token_cleaning", {"token_cleaning": {"threshold": "batch"}})
    assert not needs_token_scores("token_cleaning", {"token_cleaning": {"threshold": 0.3}})
    assert not needs_token_scores("rho1") and not needs_token_scores("q_tuning")
    variants = {"tc_batch": {"method": "token_cleaning", "options": {"threshold": "batch"}}}
    assert not needs_token_scores("tc_batch", {}, variants) and needs_token_scores("random+token_cleaning", {}, variants)
    assert build_method("random+token_cleaning", Budget(0.5, 0.5)).needs_token_scores
    assert not build_method("rho1", Budget(1.0, 0.5)).needs_token_scores
    with pytest.raises(ValueError, match="'threshold'"):
        TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.5), {"threshold": "dataset"}, 0)
    with pytest.raises(ValueError, match="count_prompt"):
        TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.5), {"count_prompt": True}, 0)
    TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.5), {"count_prompt": True, "threshold": "batch"}, 0)


def test_fastv_keeps_most_attended_per_sample():
    # row 0: p4 (.4), p2 (.3); row 1: p4 (.6), p3 (.5)
    assert torch.equal(run("fastv"), mask([[2, 4], [3, 4]]))


def test_count_prompt_switch():
    # fastv: row 0 pool = attended p0..p4 (5) -> k = round(2.5) = 2: p0 (.9), p4 (.4) -> response: p4
    #        row 1 pool = p0..p5 (6) -> k = 3: p0 (.8), p1 (.7), p4 (.6) -> response: p4
    assert torch.equal(run("fastv", {"count_prompt": True}), mask([[4], [4]]))
    # loss: prompt positions score 0. row 0 k = 2: p4 (3), p2 (2); row 1 k = 3: p5, p2, p3
    assert torch.equal(run("loss", {"count_prompt": True}), mask([[2, 4], [2, 3, 5]]))


def test_candidates_restrict_selection():
    # row 1 dropped by the sample pruner: batch scope ranks only row 0's four tokens, k = 2
    cand = mask([[1, 2, 3, 4], []])
    assert torch.equal(run("ppl", {"scope": "batch"}, candidates=cand), mask([[1, 3], []]))
    assert torch.equal(run("loss", {"count_prompt": True}, candidates=cand), mask([[2, 4], []]))


def test_ties_go_to_earlier_positions():
    flat = BatchStats.from_tensors([[0, 1, 1, 1, 1]], [[0] * 5], [[0, 1, 1, 1, 1]])
    for options in ({}, {"drop": "lowest"}):
        pruner = TOKEN_PRUNERS["ppl"](Budget(1.0, 0.5), options, 0)
        keep, _ = pruner.select_tokens(flat, flat.response_mask)
        assert keep.tolist() == [[False, True, True, False, False]]


def test_token_keep_count():
    from baselines._common import token_keep_count

    assert token_keep_count(3, 0.5) == 2
    assert token_keep_count(5, 0.5) == 2  # round(2.5) = 2, half to even
    assert token_keep_count(1, 0.5) == 1  # never zero for a sample with tokens
    assert token_keep_count(0, 0.5) == 0
    assert token_keep_count(4, 0.7) == 3


def test_random_tokens_counts_and_reproducibility():
    keep = run("random")
    assert keep.sum(dim=1).tolist() == [2, 2]
    assert torch.equal(run("random"), keep)
    batch_keep = run("random", {"scope": "batch"})
    assert int(batch_keep.sum()) == 4
    random_tokens = TOKEN_PRUNERS["random"](Budget(1.0, 0.5), {}, 0)
    assert random_tokens.required_stats == frozenset() and random_tokens.needs_select


def test_token_options_validated():
    for name in TOKEN_PRUNERS:
        with pytest.raises(ValueError, match="'bogus'"):
            TOKEN_PRUNERS[name](Budget(1.0, 0.5), {"bogus": 1}, 0)
        with pytest.raises(ValueError, match="'scope'"):
            TOKEN_PRUNERS[name](Budget(1.0, 0.5), {"scope": "dataset"}, 0)
    with pytest.raises(ValueError, match="'drop'"):
        TOKEN_PRUNERS["ppl"](Budget(1.0, 0.5), {"drop": "middle"}, 0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.integers(2, 7), st.sampled_from([0.3, 0.5, 0.7, 1.0]),
    st.sampled_from(["random", "ppl", "loss", "rho1", "token_cleaning", "fastv", "sparsevlm"]),
    st.sampled_from(["sample", "batch"]), st.integers(0, 2**16),
)
def test_exact_counts_property(b, t, ratio, name, scope, seed):
    from baselines._common import token_keep_count

    g = torch.Generator().manual_seed(seed)
    resp = torch.rand(b, t, generator=g) < 0.6
    cand = resp & (torch.rand(b, 1, generator=g) < 0.8)
    vals = lambda: torch.rand(b, t, generator=g) * resp  # noqa: E731
    s = BatchStats.from_tensors(vals(), vals(), resp, torch.ones(b, t, dtype=torch.bool), ref_nll=vals(),
                                base_nll=vals(), attention_received=torch.rand(b, t, generator=g),
                                hidden_redundancy=torch.rand(b, t, generator=g))
    options = {"scope": scope, **({"threshold": "batch"} if name == "token_cleaning" else {})}
    pruner = TOKEN_PRUNERS[name](Budget(1.0, ratio), options, seed)
    keep, _ = pruner.select_tokens(s, cand)
    assert not bool((keep & ~cand).any())
    if scope == "sample":
        assert keep.sum(1).tolist() == [token_keep_count(int(n), ratio) for n in cand.sum(1)]
    else:
        assert int(keep.sum()) == token_keep_count(int(cand.sum()), ratio)


def test_token_cleaning_global_threshold_tiny_models():
    """The static cut over a data set with two tiny random Llamas: applying it
    through the option keeps exactly the tokens at or above it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from baselines.token_cleaning import global_threshold
    from qtbench.data.batches import collate, tokenize_records
    from qtbench.methods.stats import compute_batch_stats

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzAS:\n 0123456789"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    base, ref = LlamaForCausalLM(config), LlamaForCausalLM(config)
    records = [{"instruction": "add 2 and 3", "input": "", "output": "5"},
               {"instruction": "say hi", "input": "", "output": "hello there friend"}]
    cut = global_threshold(records, base, ref, tok, 0.5, batch_size=1, max_length=64)
    batch = collate(tokenize_records(records, tok, 64), 0)
    s = compute_batch_stats(base, batch, {"base_nll", "ref_nll"}, base_model=base, reference_model=ref)
    pruner = TOKEN_PRUNERS["token_cleaning"](Budget(1.0, 0.5), {"threshold": cut}, 0)
    keep, _ = pruner.select_tokens(s, s.response_mask)
    n = int(s.response_mask.sum())
    assert int(keep.sum()) == round(0.5 * n)  # random float scores: no ties at the cut


# special_tokens: row 0's last response position (p4) and row 1's (p5) predict EOS
SPECIAL = [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]


def test_special_tokens_switch_keeps_or_drops_eos():
    s = stats(special_mask=SPECIAL)
    # rank (default): EOS ranks like any token - ppl keeps row 0 p1 (.5), p3 (1.0); row 1 p4 (.2), p3 (2.5)
    assert torch.equal(run("ppl", s=s), mask([[1, 3], [3, 4]]))
    # keep: EOS always trained, outside the budget: r_t of the 3 others -> round(1.5) = 2 each
    # row 0 p1 (.5), p3 (1.0) + EOS p4 ; row 1 p4 (.2), p3 (2.5) + EOS p5
    assert torch.equal(run("ppl", {"special_tokens": "keep"}, s=s), mask([[1, 3, 4], [3, 4, 5]]))
    # loss keeps the highest: rank -> row 0 p4 (EOS, 3.0), p2 (2.0); row 1 p5 (EOS, 4.0), p2 (3.5)
    assert torch.equal(run("loss", s=s), mask([[2, 4], [2, 5]]))
    # drop (the authors' baseline path): EOS never trained nor counted: row 0 p2 (2.0), p3 (1.0); row 1 p2, p3
    assert torch.equal(run("loss", {"special_tokens": "drop"}, s=s), mask([[2, 3], [2, 3]]))
    # keep for random: the EOS always in, 2 of the 3 others drawn
    keep = run("random", {"special_tokens": "keep"}, s=s)
    assert keep[0, 4] and keep[1, 5] and keep.sum(dim=1).tolist() == [3, 3]
    # drop with count_prompt = the code's allowed_mask: attended minus special. fastv row 0 pool p0..p3 (4)
    # -> k = 2: p0 (.9), p2 (.3) -> response p2 ; row 1 pool p0..p4 (5) -> k = 2: p0 (.8), p1 (.7) -> none
    assert torch.equal(run("fastv", {"special_tokens": "drop", "count_prompt": True}, s=s), mask([[2], []]))


def test_special_tokens_needs_the_mask():
    with pytest.raises(ValueError, match="special_tokens: keep of method 'ppl' needs the special-token mask"):
        run("ppl", {"special_tokens": "keep"})
    with pytest.raises(ValueError, match="'special_tokens'"):
        run("ppl", {"special_tokens": "yes"})


def test_step_marks_special_positions():
    from qtbench.train.step import special_positions

    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])  # BOS 1, EOS 2, pad 0
    assert special_positions(ids, (0, 1, 2)).tolist() == [[False, False, True, True], [False, True, True, True]]
    assert not special_positions(ids, ()).any()


def sparsevlm_stats():
    """One sample of 5 input tokens, all attended; loss positions j = 0..3
    score keys 1..4; j0 predicts the last prompt token (prompt), j1..j3 the
    response.  The final layer's attention (one head; rows: queries):

        q0 [1.0               ]    column sums  2.1  1.0  1.3  .3  .3
        q1 [ .5  .5           ]    p = /5 (all queries): .42 .2 .26 .06 .06
        q2 [ .2  .2  .6       ]    -> loss positions: p = [.2, .26, .06, .06]
        q3 [ .2  .2  .6   0   ]    (q3 copies q2: rank(P) = 4)
        q4 [ .2  .1  .1  .3 .3]

    Final-layer hidden states h0..h4 = (1,0) (1,0) (0,2) (1,0) (-1,0); unit
    vectors' centre (.4, .2); redundancy s = centre . u = .4 .4 .2 .4 -.4 ->
    loss positions s = [.4, .2, .4, -.4].
    score = .5 p - .5 s = [-.10, .03, -.17, .23]."""
    from qtbench.methods.stats import _attention_received, hidden_redundancy

    a = torch.tensor([[1.0, 0, 0, 0, 0], [.5, .5, 0, 0, 0], [.2, .2, .6, 0, 0], [.2, .2, .6, 0, 0],
                      [.2, .1, .1, .3, .3]], dtype=torch.float64)
    hidden = torch.tensor([[[1.0, 0], [1, 0], [0, 2], [1, 0], [-1, 0]]], dtype=torch.float64)
    p = _attention_received(a.sum(dim=0)[None], torch.ones(1, 5))["attention_received"]
    s = hidden_redundancy(hidden, torch.ones(1, 5))
    torch.testing.assert_close(p, torch.tensor([[.2, .26, .06, .06]], dtype=torch.float64))
    torch.testing.assert_close(s.double(), torch.tensor([[.4, .2, .4, -.4]], dtype=torch.float64))
    rank = int(torch.linalg.matrix_rank(a))
    assert rank == 4
    return BatchStats.from_tensors([[0.0, 1, 1, 1]], [[0.0] * 4], [[0, 1, 1, 1]], [[1, 1, 1, 1]],
                                   attention_received=p, hidden_redundancy=s, attention_rank=[[float(rank)] * 4],
                                   special_mask=[[0, 0, 0, 1]])


def test_sparsevlm_hand_computed_ratio_and_authors_code():
    s = sparsevlm_stats()
    pruner = TOKEN_PRUNERS["sparsevlm"](Budget(1.0, 0.5), {}, 0)
    torch.testing.assert_close(pruner.token_scores(s, s.response_mask),
                               torch.tensor([[-.10, .03, -.17, .23]], dtype=torch.float64))
    kept = lambda options, ratio=0.5: (  # noqa: E731
        TOKEN_PRUNERS["sparsevlm"](Budget(1.0, ratio), options, 0).select_tokens(s, s.response_mask)[0]
        .nonzero()[:, 1].tolist())
    # ratio (default): r_t = .5 of 3 response tokens -> 2 highest: j3 (.23), j1 (.03)
    assert kept({}) == [1, 3]
    # FastV on p alone keeps j1 (.26) and j2 (.06, tie with j3 -> earlier): the redundancy term flips j2/j3
    assert TOKEN_PRUNERS["fastv"](Budget(1.0, 0.5), {}, 0).select_tokens(s, s.response_mask)[0].nonzero()[:, 1].tolist() == [1, 2]
    # alpha = 1: attention only, as FastV
    assert kept({"alpha": 1.0}) == [1, 2]
    # authors_code: N = max(1, (L-1) - rank) = max(1, 4 - 4) = 1; n_valid = 4 attended -> marks min(1, 3) = 1
    # lowest-scored attended position: j2 (-.17), a response token -> trained; r_t is ignored
    for ratio in (0.5, 1.0):
        assert kept({"budget": "authors_code"}, ratio) == [2]
    # rank 2 -> N = 2: the two lowest, j2 (-.17) and j0 (-.10, prompt: no loss) -> only j2 trained
    low_rank = BatchStats.from_tensors(s.nll, s.entropy, s.response_mask, s.attention_mask,
                                       attention_received=s.extras["attention_received"],
                                       hidden_redundancy=s.extras["hidden_redundancy"], attention_rank=[[2.0] * 4])
    pruner = TOKEN_PRUNERS["sparsevlm"](Budget(1.0, 0.5), {"budget": "authors_code"}, 0)
    keep, trace = pruner.select_tokens(low_rank, low_rank.response_mask)
    assert keep.nonzero()[:, 1].tolist() == [2] and trace["sparsevlm_n_prune"] == 2
    # special_tokens: keep under ratio: j3 (EOS) always kept, 1 of the other 2 (round(1.0)): j1 (.03)
    assert kept({"special_tokens": "keep"}) == [1, 3]
    assert kept({"special_tokens": "drop"}) == [1]


def test_sparsevlm_stats_and_options():
    cls = TOKEN_PRUNERS["sparsevlm"]
    assert cls(Budget(1.0, 0.5), {}, 0).required_stats == {"attention_received", "hidden_redundancy"}
    assert cls(Budget(1.0, 0.5), {"budget": "authors_code"}, 0).required_stats == {
        "attention_received", "hidden_redundancy", "attention_rank"}
    assert cls.stats_for_options({"budget": "authors_code"}) >= {"attention_rank"}
    for bad in ({"budget": "paper"}, {"alpha": 1.5}, {"budget": "authors_code", "scope": "batch"},
                {"budget": "authors_code", "count_prompt": True}):
        with pytest.raises(ValueError, match="sparsevlm"):
            cls(Budget(1.0, 0.5), bad, 0)


def test_sparsevlm_composes_in_pairs():
    from qtbench.methods.registry import build_method, parse_method

    for name in ("random+sparsevlm", "longest+sparsevlm"):
        spec = parse_method(name)
        assert (spec.family, spec.token) == ("pair", "sparsevlm")
    method = build_method("random+sparsevlm", Budget(0.5, 0.5), {"random": {"mode": "batch"}})
    assert method.required_stats == {"attention_received", "hidden_redundancy"}
