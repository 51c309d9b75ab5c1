"""Sample-level baselines on hand-built batches and data sets.

Every expected selection below is written out by hand from the numbers in the
fixture, not derived by calling the code under test."""

from __future__ import annotations

import math

import pytest
import torch

from qtbench.methods.base import BatchStats, Budget, DatasetInfo
from qtbench.methods.registry import SAMPLE_PRUNERS, load_registry

load_registry()


def make(name, budget, options=None, seed=0):
    return SAMPLE_PRUNERS[name](budget, options or {}, seed)


# B = 4, T = 4.  Response means (by hand):
#   entropy over response: r0 (1+3)/2 = 2, r1 (5+5)/2 = 5, r2 1, r3 (4+4+4)/3 = 4
#   entropy over all:      r0 22/4 = 5.5, r1 10/4 = 2.5, r2 1, r3 21/4 = 5.25
#   nll over response:     r0 2, r1 0.5, r2 3, r3 2 (tie with r0)
#   el2n over response:    r0 0.3, r1 0.1, r2 0.5, r3 0.7
RESPONSE = [[0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
ATTENTION = [[1, 1, 1, 1]] * 4
ENTROPY = [[9, 1, 3, 9], [0, 0, 5, 5], [1, 1, 1, 1], [9, 4, 4, 4]]
NLL = [[0, 1, 3, 0], [0, 0, 0.5, 0.5], [3, 3, 3, 3], [0, 2, 2, 2]]
EL2N = [[0, 0.2, 0.4, 0], [0.9, 0.9, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5], [0, 0.6, 0.6, 0.9]]


def batch(**overrides):
    kwargs = dict(nll=NLL, entropy=ENTROPY, response_mask=RESPONSE, attention_mask=ATTENTION,
                  sample_ids=[10, 11, 12, 13], step=3, epoch=1, el2n=EL2N)
    kwargs.update(overrides)
    return BatchStats.from_tensors(**kwargs)


def kept(pruner, stats):
    keep, weight, _ = pruner.select_samples(stats)
    assert torch.equal(weight, torch.ones(stats.batch_size))
    return keep.tolist()


def test_entropy_keeps_highest_response_entropy():
    assert kept(make("entropy", Budget(0.5)), batch()) == [False, True, False, True]


def test_entropy_over_all_positions_switch():
    assert kept(make("entropy", Budget(0.5), {"entropy_over": "all"}), batch()) == [True, False, False, True]


def test_ppl_sample_keeps_highest_perplexity_ties_to_lower_row():
    assert kept(make("ppl_sample", Budget(0.5)), batch()) == [True, False, True, False]


def test_el2n_keeps_highest_mean_el2n():
    # r_s = 0.25 of B = 4 -> K = 1
    assert kept(make("el2n", Budget(0.25)), batch()) == [False, False, False, True]


def test_per_batch_keep_count_never_zero():
    # B = 4, r_s = 0.125: round(0.5) = 0 -> K = max(1, 0) = 1
    assert kept(make("ppl_sample", Budget(0.125)), batch()) == [False, False, True, False]


def test_required_stats():
    assert make("entropy", Budget(0.5)).required_stats == {"entropy"}
    assert make("ppl_sample", Budget(0.5)).required_stats == {"nll"}
    assert make("el2n", Budget(0.5)).required_stats == {"el2n"}
    for name in ("longest", "shortest_instruction", "char_entropy", "infobatch", "ifd", "superfiltering"):
        assert make(name, Budget(0.5)).required_stats == frozenset(), name
    assert make("random", Budget(0.5)).required_stats == frozenset()


# --------------------------------------------------------------------------- random


def test_random_batch_mode_counts_and_reproducibility():
    pruner = make("random", Budget(0.5), {"mode": "batch"}, seed=7)
    assert pruner.plan_epoch(0, 3, DatasetInfo([{}] * 5, [1] * 5)) is None
    first = kept(pruner, batch())
    assert sum(first) == 2
    assert kept(make("random", Budget(0.5), {"mode": "batch"}, seed=7), batch()) == first
    # different steps draw different subsets at least sometimes
    draws = {tuple(kept(pruner, batch(step=s))) for s in range(30)}
    assert len(draws) > 1


def test_random_epoch_mode_subset_per_epoch():
    data = DatasetInfo([{"output": "x"}] * 10, [1] * 10)
    pruner = make("random", Budget(0.3), seed=1)
    plan = pruner.plan_epoch(0, 3, data)
    assert len(plan.indices) == 3 and len(set(plan.indices)) == 3
    assert plan.indices == sorted(plan.indices) and all(0 <= i < 10 for i in plan.indices)
    assert plan.weights == {}
    assert make("random", Budget(0.3), seed=1).plan_epoch(0, 3, data).indices == plan.indices
    assert len({tuple(pruner.plan_epoch(e, 10, data).indices) for e in range(10)}) > 1
    # epoch mode keeps every sample of the (already pruned) micro-batch
    assert kept(pruner, batch()) == [True] * 4


def test_random_epoch_double_prune():
    pruner = make("random", Budget(0.5), {"double_prune": True}, seed=3)
    assert pruner.required_stats == frozenset() and pruner.needs_select  # masks-only stats, no forward
    keep = kept(pruner, batch())
    assert sum(keep) == 2
    assert kept(make("random", Budget(0.5), {"double_prune": True}, seed=3), batch()) == keep


def test_random_options_validated():
    with pytest.raises(ValueError, match="'mode'"):
        make("random", Budget(0.5), {"mode": "sometimes"})
    with pytest.raises(ValueError, match="'bogus'"):
        make("random", Budget(0.5), {"bogus": 1})
    with pytest.raises(ValueError, match="double_prune"):
        make("random", Budget(0.5), {"mode": "batch", "double_prune": True})


# --------------------------------------------------------------------------- length / text rules

RECORDS = [
    {"instruction": "abcd", "input": "", "output": "aaaa"},
    {"instruction": "a", "input": "zzzzzzzz", "output": "b"},
    {"instruction": "abc", "input": "", "output": "cc"},
    {"instruction": "", "input": "", "output": "ddd"},
    {"instruction": "ab", "input": "", "output": "eeeee"},
]
TOKENS = [5, 9, 2, 9, 7]


def test_longest_keeps_longest_responses_in_tokens():
    data = DatasetInfo(RECORDS, TOKENS)
    # K = round(5 * 0.4) = 2: lengths 9 (idx 1) and 9 (idx 3)
    assert make("longest", Budget(0.4)).plan_epoch(0, 3, data).indices == [1, 3]
    # K = 3: + 7 (idx 4)
    assert make("longest", Budget(0.6)).plan_epoch(0, 3, data).indices == [1, 3, 4]
    # the same subset every epoch
    assert make("longest", Budget(0.6)).plan_epoch(2, 3, data).indices == [1, 3, 4]


def test_longest_in_characters():
    data = DatasetInfo(RECORDS, TOKENS)
    # output lengths 4, 1, 2, 3, 5 -> the two longest: idx 4 (5), idx 0 (4)
    assert make("longest", Budget(0.4), {"length_unit": "chars"}).plan_epoch(0, 3, data).indices == [0, 4]


def test_shortest_instruction_is_the_authors_longest():
    data = DatasetInfo(RECORDS, TOKENS)
    # instruction lengths 4, 1, 3, 0, 2 -> shortest two: idx 3 (0), idx 1 (1)
    assert make("shortest_instruction", Budget(0.4)).plan_epoch(0, 3, data).indices == [1, 3]


def test_char_entropy_values_and_selection():
    from baselines.char_entropy import char_entropy

    assert char_entropy("") == 0.0
    assert char_entropy("aaaa") == pytest.approx(0.0, abs=1e-9)
    assert char_entropy("abab") == pytest.approx(0.693147, abs=1e-5)
    assert char_entropy("abcd") == pytest.approx(1.386294, abs=1e-5)
    assert char_entropy("aab") == pytest.approx(0.636514, abs=1e-5)
    records = [{"instruction": s, "output": "x"} for s in ("aaaa", "abab", "abcd", "aab", "")]
    data = DatasetInfo(records, [1] * 5)
    # lowest three: idx 0 (0), idx 4 (0), idx 3 (0.6365)
    assert make("char_entropy", Budget(0.6)).plan_epoch(0, 3, data).indices == [0, 3, 4]


def test_epoch_keep_count_rounding():
    from baselines._common import epoch_keep_count

    assert epoch_keep_count(10, 0.125) == 1  # round(1.25)
    assert epoch_keep_count(10, 0.25) == 2  # round(2.5) = 2 (half to even)
    assert epoch_keep_count(3, 0.1) == 1  # never zero
    assert epoch_keep_count(8, 1.0) == 8


# --------------------------------------------------------------------------- IFD / Superfiltering

SCORES = [0.5, 1.2, 0.9, 1.0, float("nan"), 0.7]


def ifd_data(scores=SCORES):
    return DatasetInfo([{"instruction": "q", "output": "a"}] * len(scores), [1] * len(scores), list(scores))


def test_ifd_keeps_top_ifd_at_most_one():
    # K = 3; eligible (IFD <= 1, not NaN): 0 (.5), 2 (.9), 3 (1.0), 5 (.7)
    plan = make("ifd", Budget(0.5)).plan_epoch(0, 3, ifd_data())
    assert plan.indices == [2, 3, 5]
    assert make("ifd", Budget(0.5)).static is True


def test_superfiltering_drops_ifd_equal_one():
    # eligible (IFD < 1): 0, 2, 5
    assert make("superfiltering", Budget(0.5)).plan_epoch(0, 3, ifd_data()).indices == [0, 2, 5]


def test_ifd_filter_off_and_shortfall():
    assert make("ifd", Budget(0.5), {"threshold": None}).plan_epoch(0, 3, ifd_data()).indices == [1, 2, 3]
    plan = make("ifd", Budget(1.0)).plan_epoch(0, 3, ifd_data())
    assert plan.indices == [0, 2, 3, 5]
    assert plan.trace["epoch_kept"] == 4 and plan.trace["eligible"] == 4


def test_ifd_all_filtered_falls_back():
    plan = make("ifd", Budget(0.5)).plan_epoch(0, 3, ifd_data([2.0, 3.0, 1.5, 4.0]))
    assert plan.indices == [1, 3]
    assert plan.trace["filter_ignored"] is True


def test_ifd_needs_static_scores():
    with pytest.raises(ValueError, match="static_scores"):
        make("ifd", Budget(0.5)).plan_epoch(0, 3, DatasetInfo([{}] * 2, [1, 1]))


def char_tokenizer():
    """One token per character: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then
    ``\n`` 4, `` `` 5, ``0``-``9`` 6-15, ``:`` 16, ``A`` 17, ``S`` 18, ``a``-``z`` 19-44."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzAS:\n 0123456789"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_ifd_static_scores_with_patched_scoring(monkeypatch):
    import baselines.ifd as ifd
    import baselines.superfiltering as sf
    import qtbench.methods.stats as qstats

    calls = []

    def fake(model, examples, pad_id, batch_size=16):
        calls.append(([e.input_ids for e in examples], batch_size))
        if len(calls) % 2 == 0:  # the second pass of each scoring: the response alone
            return [2.0, 1.0]
        return [1.0, 2.0]

    monkeypatch.setattr(qstats, "mean_example_nll", fake)
    records = [{"instruction": "Add", "input": "", "output": "4"},
               {"instruction": "Say", "input": "hi", "output": "hello"}]
    tok = char_tokenizer()
    assert ifd.static_scores(records, None, tok, {"batch_size": 4, "max_length": 64}) == pytest.approx([0.5, 2.0])
    # "Add\nAnswer:" then " 4" and EOS; the alone pass: BOS, " 4", EOS
    assert calls[0][0][0] == [1, 17, 22, 22, 4, 17, 32, 37, 41, 23, 36, 16, 5, 10, 2] and calls[0][1] == 4
    assert calls[1][0] == [[1, 5, 10, 2], [1, 5, 26, 23, 30, 30, 33, 2]]
    assert sf.static_scores(records, None, tok, {"max_length": 64}) == pytest.approx([math.exp(-1.0), math.exp(1.0)])
    with pytest.raises(ValueError, match="'bogus'"):
        ifd.static_scores(records, None, tok, {"bogus": 1})
    with pytest.raises(ValueError, match="'max_length'.*train.max_length"):
        ifd.static_scores(records, None, tok, {})  # null: only the static_scores rule knows the training length


def test_ifd_passes_score_the_same_response_ids_when_truncated():
    """A record longer than max_length: the conditioned pass keeps its prompt and
    loses the response's tail (as training does); the response-alone pass scores
    exactly the response ids the conditioned pass kept, not the whole response
    (before: the alone pass kept all of " xyz</s>", the conditioned one " xy")."""
    from baselines._ifd import ifd_examples

    tok = char_tokenizer()
    long = {"instruction": "abcdef", "input": "", "output": "xyz"}   # prompt "abcdef\nAnswer:": 14 chars
    short = {"instruction": "ab", "input": "", "output": "xyz"}      # 1 + 10 + 5 = 16 tokens: fits
    (cond, alone), (cond2, alone2) = ifd_examples([long, short], tok, max_length=18)
    # BOS + 14 prompt chars = 15 positions; 18 - 15 = 3 response tokens: " ", "x", "y"
    assert cond.input_ids == [1, 19, 20, 21, 22, 23, 24, 4, 17, 32, 37, 41, 23, 36, 16, 5, 42, 43]
    assert [t for t in cond.labels if t != -100] == [5, 42, 43] and cond.truncated
    assert alone.input_ids == [1, 5, 42, 43] and alone.labels == [-100, 5, 42, 43]
    # not truncated: both passes score " xyz" and EOS
    assert [t for t in cond2.labels if t != -100] == [5, 42, 43, 44, 2] and not cond2.truncated
    assert alone2.input_ids == [1, 5, 42, 43, 44, 2] and alone2.labels == [-100, 5, 42, 43, 44, 2]


def test_ifd_scores_at_the_training_length():
    """The static_scores rule fills a null max_length with train.max_length (not
    a fixed 512); the scoring model's context caps it (GPT-2: 1024)."""
    from types import SimpleNamespace

    from baselines._ifd import scoring_length
    from qtbench.methods.static import scoring_options

    assert scoring_options("ifd", {}, 2048)["max_length"] == 2048
    assert scoring_options("superfiltering", {"proxy": "gpt2"}, 2048) == {"proxy": "gpt2", "max_length": 2048}
    assert scoring_options("ifd", {"max_length": 300}, 2048)["max_length"] == 300  # set by hand: kept
    assert scoring_options("longest", {}, 2048) == {}  # no max_length option: untouched
    assert make("ifd", Budget(0.5)).options["max_length"] is None
    gpt2 = SimpleNamespace(config=SimpleNamespace(n_positions=1024))
    llama = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    assert scoring_length(gpt2, 2048) == 1024 and scoring_length(llama, 2048) == 2048
    with pytest.raises(ValueError, match="max_length"):
        scoring_length(llama, None)


def test_ifd_static_scores_tiny_model():
    """End to end with a tiny random Llama and a character tokenizer."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import baselines.ifd as ifd
    import baselines.superfiltering as sf

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzAS:\n 0123456789"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128))
    records = [{"instruction": "Add 2 and 2", "input": "", "output": "4"},
               {"instruction": "Say hi", "input": "", "output": "hello there"}]
    for module in (ifd, sf):
        scores = module.static_scores(records, model, tok, {"batch_size": 2, "max_length": 64})
        assert len(scores) == 2 and all(math.isfinite(s) and s > 0 for s in scores)


def test_static_options_validated():
    for name in ("ifd", "superfiltering"):
        with pytest.raises(ValueError, match="'bogus'"):
            make(name, Budget(0.5), {"bogus": True})
        with pytest.raises(ValueError, match="threshold"):
            make(name, Budget(0.5), {"threshold": "high"})


def test_ifd_proxy_option():
    assert make("superfiltering", Budget(0.5), {"proxy": "gpt2"}).options["proxy"] == "gpt2"
    assert make("ifd", Budget(0.5)).options["proxy"] is None
    with pytest.raises(ValueError, match="proxy"):
        make("superfiltering", Budget(0.5), {"proxy": 3})


def test_proxy_loads_with_its_own_revision_never_the_base_models(monkeypatch, tmp_path):
    """Superfiltering's proxy (GPT-2) is another repository: it is loaded with
    ``proxy_revision`` and the base model's dtype, never with the base model's
    revision (a hash of another repo) or its trust_remote_code."""
    import qtbench.models as models
    from qtbench.methods.static import scoring_model_entry, score_static

    base = {"path": "meta-llama/Llama-2-7b-hf", "revision": "abc123", "trust_remote_code": True, "dtype": "bfloat16"}
    assert scoring_model_entry({}, base) == base  # IFD: the base model itself
    assert scoring_model_entry({"proxy": "openai-community/gpt2", "proxy_revision": "607a30d"}, base) == \
        {"revision": "607a30d", "dtype": "bfloat16"}
    assert scoring_model_entry({"proxy": "openai-community/gpt2"}, base) == {"revision": None, "dtype": "bfloat16"}
    with pytest.raises(ValueError, match="proxy_revision"):
        make("superfiltering", Budget(0.5), {"proxy_revision": "607a30d"})  # a revision without a proxy

    loaded = []

    class Stop(Exception):
        pass

    def fake_load(path, entry=None, *args, **kwargs):
        loaded.append((path, dict(entry or {})))
        raise Stop

    monkeypatch.setattr(models, "load_tokenizer", fake_load)
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    with pytest.raises(Stop):
        score_static("superfiltering", "meta-llama/Llama-2-7b-hf", str(data),
                     {"proxy": "openai-community/gpt2", "proxy_revision": "607a30d"}, tmp_path / "s.json", model_entry=base)
    assert loaded == [("openai-community/gpt2", {"revision": "607a30d", "dtype": "bfloat16"})]
