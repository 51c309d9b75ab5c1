"""Judge-scored static pruners: Alpagasus, DEITA, DS2.

The math is checked on hand-written numbers (expected rating from digit
logits, DEITA's tau filter on hand-written embeddings, DS2's transition-matrix
fit, curation and long-tail score); the scoring path end to end with a tiny
random Llama saved as safetensors, with a character tokenizer that has the
digit tokens, loaded through ``qtbench.models`` as the static_scores rule does."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qtbench.config import ConfigError, default_config_path, load_config
from qtbench.methods.base import Budget, DatasetInfo
from qtbench.methods.registry import SAMPLE_PRUNERS, load_registry

load_registry()

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#:.,'?!-()<>/\n 0123456789"))


def make(name, budget, options=None):
    return SAMPLE_PRUNERS[name](budget, options or {}, 0)


def char_tokenizer(chars=CHARS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_model(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random Llama judge saved as safetensors with its tokenizer."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("judge")
    tok = char_tokenizer()
    tiny_model(len(tok)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


RECORDS = [
    {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
    {"instruction": "Name the capital of Zorland.", "input": "", "output": "Vell"},
    {"instruction": "Say hi", "input": "to Ana", "output": "Hi Ana!"},
    {"instruction": "What is 7 minus 3?", "input": "", "output": "The answer is 4."},
    {"instruction": "Repeat the word", "input": "blue", "output": "blue"},
    {"instruction": "Which country borders Mira?", "input": "", "output": "Tosk"},
]


# --------------------------------------------------------------------------- expected rating


def test_expected_rating_from_digit_logits_by_hand():
    from baselines._judge import expected_rating, rating_probabilities

    # probabilities 1:1:1:1:2:4 over 0..5 -> (0 + 1 + 2 + 3 + 2*4 + 4*5) / 10 = 3.4
    logits = torch.log(torch.tensor([[1.0, 1, 1, 1, 2, 4], [1, 1, 1, 1, 1, 1]]))
    assert expected_rating(logits, range(6)).tolist() == pytest.approx([3.4, 2.5])
    # renormalised over the digits: log-probabilities of the full vocabulary (a shift) give the same
    assert expected_rating(logits - 7.0, range(6)).tolist() == pytest.approx([3.4, 2.5])
    assert rating_probabilities(logits)[0].tolist() == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.2, 0.4])
    # DEITA's scale 1..6: softmax over the six logits times [1..6]; one-hot on "6" -> 6
    assert expected_rating(torch.tensor([[0.0, 0, 0, 0, 0, 50]]), range(1, 7)).item() == pytest.approx(6.0)


def test_digit_token_ids():
    from baselines._judge import digit_token_ids

    tok = char_tokenizer()
    ids = digit_token_ids(tok, range(6))
    assert ids == [[tok.convert_tokens_to_ids(str(d))] for d in range(6)]
    with pytest.raises(ValueError, match="'3'"):
        digit_token_ids(char_tokenizer([c for c in CHARS if c != "3"]), range(6))


def test_digit_logits_read_the_next_token_whatever_the_padding():
    from baselines._judge import digit_logits, digit_token_ids

    tok = char_tokenizer()
    model = tiny_model(len(tok)).eval()
    prompts = [("Rate this: ok\nScore:", True), ("Hi\nScore:", True), ("A longer prompt to rate.\nScore:", True)]
    ids = digit_token_ids(tok, range(6))
    batched = digit_logits(model, tok, prompts, ids, batch_size=3)
    single = digit_logits(model, tok, prompts, ids, batch_size=1)
    assert batched.shape == (3, 6) and torch.allclose(batched, single, atol=1e-5)
    with torch.no_grad():
        enc = tok(prompts[0][0], return_tensors="pt")
        logp = torch.log_softmax(model(**enc).logits[0, -1].float(), dim=-1)
    assert torch.allclose(batched[0], logp[[i[0] for i in ids]], atol=1e-5)
    # a prompt longer than max_length keeps its BOS and its end (the cue)
    cut = digit_logits(model, tok, [("x" * 50 + "\nScore:", True)], ids, max_length=10)
    with torch.no_grad():
        tail = [1] + tok("x" * 50 + "\nScore:")["input_ids"][-9:]
        logp = torch.log_softmax(model(input_ids=torch.tensor([tail])).logits[0, -1].float(), dim=-1)
    assert torch.allclose(cut[0], logp[[i[0] for i in ids]], atol=1e-5)


# --------------------------------------------------------------------------- alpagasus


def test_alpagasus_keeps_top_rated_or_the_papers_threshold():
    data = DatasetInfo([{}] * 5, [1] * 5, static_scores=[4.6, 2.0, 4.5, 4.9, 1.0])
    # budget: K = round(5 * 0.4) = 2 -> 4.9 (3), 4.6 (0)
    assert make("alpagasus", Budget(0.4)).plan_epoch(0, 2, data).indices == [0, 3]
    # threshold: every rating >= 4.5 whatever the budget -> 0, 2, 3
    plan = make("alpagasus", Budget(0.2), {"keep": "threshold"}).plan_epoch(0, 2, data)
    assert plan.indices == [0, 2, 3] and plan.trace["epoch_kept"] == 3
    # none qualifies -> the budget's top rated, traced
    plan = make("alpagasus", Budget(0.2), {"keep": "threshold", "threshold": 5.0}).plan_epoch(0, 2, data)
    assert plan.indices == [3] and plan.trace["filter_ignored"]


def test_judge_options_validated():
    for name in ("alpagasus", "deita", "ds2"):
        with pytest.raises(ValueError, match="'bogus'"):
            make(name, Budget(0.5), {"bogus": 1})
        assert make(name, Budget(0.5)).static is True
        assert make(name, Budget(0.5)).required_stats == frozenset()
    with pytest.raises(ValueError, match="'judge'.*path"):
        make("alpagasus", Budget(0.5), {"judge": {"revision": "abc"}})
    with pytest.raises(ValueError, match="trust_remote_code"):
        make("alpagasus", Budget(0.5), {"judge": {"path": "x/y", "trust_remote_code": "yes"}})
    with pytest.raises(ValueError, match="'keep'"):
        make("alpagasus", Budget(0.5), {"keep": "all"})
    with pytest.raises(ValueError, match="'tau'"):
        make("deita", Budget(0.5), {"tau": 1.5})
    with pytest.raises(ValueError, match="'k'"):
        make("ds2", Budget(0.5), {"k": 0})


# --------------------------------------------------------------------------- deita


def test_deita_tau_filter_on_hand_written_embeddings():
    from baselines.deita import repr_filter, selection_scores

    # walk order by evol: 0 (9), 1 (8), 2 (7), 3 (6), 4 (5)
    evol = [9.0, 8.0, 7.0, 6.0, 5.0]
    emb = torch.tensor([[1.0, 0.0],     # 0: first, accepted
                        [1.0, 0.1],     # 1: cos to 0 = 1/sqrt(1.01) = 0.995 > 0.9 -> rejected
                        [0.0, 1.0],     # 2: cos to 0 = 0 -> accepted
                        [1.0, 1.0],     # 3: cos to 0 and to 2 = 0.707 <= 0.9 -> accepted
                        [0.0, 3.0]])    # 4: cos to 2 = 1 -> rejected
    accepted, max_sim = repr_filter(evol, emb, 0.9)
    assert accepted == [True, False, True, True, False]
    assert max_sim[0] == -math.inf
    assert max_sim[1] == pytest.approx(1 / math.sqrt(1.01)) and max_sim[3] == pytest.approx(1 / math.sqrt(2))
    assert max_sim[4] == pytest.approx(1.0)
    # a looser tau accepts 3 only if similarity <= tau: tau 0.7 rejects it (0.707 > 0.7)
    assert repr_filter(evol, emb, 0.7)[0] == [True, False, True, False, False]

    scores = selection_scores(evol, accepted)
    assert scores == [109.0, 8.0, 107.0, 106.0, 5.0]
    data = DatasetInfo([{}] * 5, [1] * 5, static_scores=scores)
    # K = 2: the first two the walk accepts
    assert make("deita", Budget(0.4)).plan_epoch(0, 2, data).indices == [0, 2]
    # K = 4 > 3 accepted: fill with the best rejected (1), or keep fewer
    assert make("deita", Budget(0.8)).plan_epoch(0, 2, data).indices == [0, 1, 2, 3]
    plan = make("deita", Budget(0.8), {"shortfall": "keep_fewer"}).plan_epoch(0, 2, data)
    assert plan.indices == [0, 2, 3] and plan.trace["epoch_kept"] == 3


# --------------------------------------------------------------------------- ds2


def test_ds2_long_tail_score_by_hand():
    from baselines.ds2 import long_tail_scores

    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = 1 - 1 / math.sqrt(2)  # cosine distance of 2 to 0 and to 1; 0 to 1: 1
    f = lambda x: 2 / (1 + math.exp(-x)) - 1  # noqa: E731
    assert long_tail_scores(emb, k=1) == pytest.approx([f(d), f(d), f(d)])
    assert long_tail_scores(emb, k=2) == pytest.approx([f((1 + d) / 2), f((1 + d) / 2), f(d)])


def test_ds2_consensus_and_transition_matrix_fit():
    from baselines.ds2 import consensus_analytical, consensus_frequencies, estimate_transition

    # by hand: patterns (own, 1st, 2nd neighbour) (0,0,0), (0,1,0), (1,1,1), (1,1,0)
    c1, c2, c3 = consensus_frequencies(torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 0]]), 2)
    assert c1.tolist() == [0.5, 0.5]
    assert c2.tolist() == [[0.25, 0.25], [0.0, 0.5]]
    assert c3[1, 1, 0] == 0.25 and c3[0, 1, 0] == 0.25 and float(c3.sum()) == pytest.approx(1.0)
    # analytical consensus of T = [[.8, .2], [.3, .7]], p = [.6, .4]:
    T = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    p = torch.tensor([0.6, 0.4], dtype=torch.float64)
    a1, a2, a3 = consensus_analytical(T, p)
    assert a1.tolist() == pytest.approx([0.6 * 0.8 + 0.4 * 0.3, 0.6 * 0.2 + 0.4 * 0.7])
    assert a2[0, 1].item() == pytest.approx(0.6 * 0.8 * 0.2 + 0.4 * 0.3 * 0.7)
    assert a3[1, 1, 1].item() == pytest.approx(0.6 * 0.2 ** 3 + 0.4 * 0.7 ** 3)
    # HOC recovers T and p from their exact consensus frequencies
    T_est, p_est = estimate_transition([a1, a2, a3], 2, steps=300, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(T_est, T, atol=0.03) and torch.allclose(p_est, p, atol=0.03)


def test_ds2_curation_fixes_a_rating_its_neighbours_contradict():
    from baselines.ds2 import curate_ratings, selection_scores

    g = torch.Generator().manual_seed(1)
    cluster_a = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(12, 3, generator=g)
    cluster_b = torch.tensor([0.0, 1.0, 0.0]) + 0.05 * torch.randn(12, 3, generator=g)
    emb = torch.cat([cluster_a, cluster_b])
    labels = [5] * 12 + [1] * 12
    labels[3] = 1  # a cluster-a sample rated like cluster b
    out = curate_ratings(labels, emb, num_classes=6, k=10, epochs=21, hoc_rounds=10, hoc_steps=300, seed=0)
    assert out["curated"][3] == 5
    assert out["curated"][:3] + out["curated"][4:] == labels[:3] + labels[4:]
    assert out["noisy_avg"][3] > 0.5
    T = torch.tensor(out["transition_matrix"])
    assert T.shape == (6, 6) and torch.allclose(T.sum(dim=1), torch.ones(6, dtype=T.dtype))
    # rating first, then the long-tail score: 5.1 > 5.05 > 4.9
    data = DatasetInfo([{}] * 3, [1] * 3, static_scores=selection_scores([5, 5, 4], [0.05, 0.1, 0.9]))
    assert make("ds2", Budget(0.34)).plan_epoch(0, 1, data).indices == [1]
    assert make("ds2", Budget(0.67)).plan_epoch(0, 1, data).indices == [0, 1]


# --------------------------------------------------------------------------- end to end


def run_score_static(method, options, tmp_path, judge_dir):
    from qtbench.methods.static import score_static

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = tmp_path / f"{method}.json"
    scores = score_static(method, "never/loaded-base", str(data), options, out,
                          model_entry={"path": "never/loaded-base", "revision": "base-rev", "trust_remote_code": True})
    return scores, json.loads(out.read_text())


def test_alpagasus_scores_with_a_local_judge(tmp_path, judge_dir):
    scores, written = run_score_static("alpagasus", {"judge": {"path": str(judge_dir)}, "batch_size": 4}, tmp_path, judge_dir)
    assert len(scores) == len(RECORDS) and all(0.0 <= s <= 5.0 for s in scores)
    assert len(set(scores)) > 1  # the sample changes the judge's answer
    assert written["scores"] == scores and written["model"] == {"judge": {"path": str(judge_dir), "revision": None}}


def test_deita_scores_with_local_scorers(tmp_path, judge_dir):
    judge = {"path": str(judge_dir)}
    scores, written = run_score_static("deita", {"complexity_scorer": judge, "quality_scorer": judge, "tau": 0.999},
                                       tmp_path, judge_dir)
    extras = written["extras"]
    for c, q, e in zip(extras["complexity"], extras["quality"], extras["evol"]):
        assert 1.0 <= c <= 6.0 and 1.0 <= q <= 6.0 and e == pytest.approx(c * q)
    assert extras["accepted"][max(range(len(scores)), key=lambda i: extras["evol"][i])]  # the best is always accepted
    assert scores == pytest.approx([e + 100.0 * a for e, a in zip(extras["evol"], extras["accepted"])])
    assert written["model"]["embedder"] is None  # the quality scorer's hidden states


def test_deita_with_a_separate_embedder(tmp_path, judge_dir):
    judge = {"path": str(judge_dir)}
    _, written = run_score_static("deita", {"complexity_scorer": judge, "quality_scorer": judge, "embedder": judge,
                                            "pooling": "last"}, tmp_path, judge_dir)
    assert written["model"]["embedder"] == {"path": str(judge_dir), "revision": None}
    assert len(written["extras"]["max_similarity"]) == len(RECORDS)


def test_ds2_scores_with_a_local_rater(tmp_path, judge_dir):
    options = {"rater": {"path": str(judge_dir)}, "k": 3, "epochs": 5, "hoc_rounds": 3, "hoc_steps": 50}
    scores, written = run_score_static("ds2", options, tmp_path, judge_dir)
    extras = written["extras"]
    assert extras["rating"] and all(r in range(6) for r in extras["rating"] + extras["curated"])
    assert scores == pytest.approx([c + t for c, t in zip(extras["curated"], extras["long_tail"])])
    assert all(0.0 <= t < 1.0 for t in extras["long_tail"])
    assert len(extras["transition_matrix"]) == 6


def test_judges_load_with_their_own_entry_never_the_base_models(monkeypatch):
    """A judge is another repository: its own revision and trust_remote_code
    (default false), the base model's dtype; two slots naming one model share it."""
    import qtbench.models as models
    from baselines.deita import Deita
    from qtbench.methods.static import JudgeModels

    loaded = []
    monkeypatch.setattr(models, "load_tokenizer", lambda path, entry=None: ("tok", path))
    monkeypatch.setattr(models, "load_model", lambda path, entry=None: loaded.append(("lm", path, entry)) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(models, "load_encoder", lambda path, entry=None: loaded.append(("enc", path, entry)) or torch.nn.Linear(1, 1))
    judge = {"path": "org/scorer", "revision": "r1"}
    judges = JudgeModels(Deita.judge_slots, {"complexity_scorer": judge, "quality_scorer": judge, "embedder": None},
                         {"revision": "base", "trust_remote_code": True, "dtype": "bfloat16"})
    assert judges["complexity_scorer"] is judges["quality_scorer"] is judges["embedder"]
    assert loaded == [("lm", "org/scorer", {"revision": "r1", "trust_remote_code": False, "dtype": "bfloat16"})]
    judges = JudgeModels(Deita.judge_slots, {"complexity_scorer": judge, "quality_scorer": judge,
                                              "embedder": {"path": "BAAI/bge", "trust_remote_code": True}})
    judges["embedder"]
    assert loaded[-1] == ("enc", "BAAI/bge", {"revision": None, "trust_remote_code": True, "dtype": "auto"})


def test_scoring_without_a_judge_names_the_option():
    import baselines.alpagasus as alpagasus
    import baselines.deita as deita
    import baselines.ds2 as ds2

    for module, key in ((alpagasus, "judge"), (deita, "complexity_scorer"), (ds2, "rater")):
        with pytest.raises(ValueError, match=f"'{key}'.*missing"):
            module.static_scores(RECORDS, {}, None, {})


# --------------------------------------------------------------------------- DAG build


def default_with(methods, **method_options):
    cfg = load_config(default_config_path())
    cfg["methods"] = list(methods)
    cfg["method_options"] = {**cfg["method_options"], **method_options}
    return cfg


def test_dag_build_needs_the_judges(tmp_path, judge_dir):
    from qtbench import preflight

    # the default config names the world's base model as every judge (a stand-in)
    preflight.check_config(default_with(["alpagasus", "deita+random", "ds2"]), skip_tasks=True)
    cases = [
        ({"alpagasus": {}}, "method_options.alpagasus.judge"),
        ({"deita": {"complexity_scorer": {"path": "world"}}}, "method_options.deita.quality_scorer"),
        ({"ds2": {"rater": {"path": str(tmp_path / "nowhere")}}}, "method_options.ds2.rater.path"),
        ({"alpagasus": {"judge": {"path": str(tmp_path)}}}, "method_options.alpagasus.judge.path"),  # no weights
        ({"alpagasus": {"judge": "gpt-4"}}, "method_options.alpagasus.judge"),
    ]
    for options, key in cases:
        method = next(iter(options))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            preflight.check_config(default_with([method], **options), skip_tasks=True)
    # a readable local judge, and a hub id (not checked offline), pass
    preflight.check_config(default_with(["alpagasus"], alpagasus={"judge": {"path": str(judge_dir)}}), skip_tasks=True)
    preflight.check_config(default_with(["alpagasus"], alpagasus={"judge": {"path": "org/judge", "revision": "abc"}}),
                           skip_tasks=True)
    # a variant's own judge is named under the variant
    cfg = default_with(["alp_bad"], alpagasus={"judge": {"path": "world"}})
    cfg["variants"] = {"alp_bad": {"method": "alpagasus", "options": {"judge": {"path": str(tmp_path / "nowhere")}}}}
    with pytest.raises(ConfigError, match=r"variants\.alp_bad\.options\.judge\.path"):
        preflight.check_config(cfg, skip_tasks=True)
    # 'world' without a world model
    cfg = default_with(["alpagasus"])
    cfg["models"] = {"hub": {"path": "org/model"}}
    cfg["data"] = {**cfg["data"], "source": str(tmp_path / "d.jsonl")}
    (tmp_path / "d.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"method_options\.alpagasus\.judge\.path.*world"):
        preflight.check_config(cfg, skip_tasks=True)


def test_stand_in_judge_shows_in_the_tables():
    from qtbench.report.naming import row_options

    cfg = load_config(default_config_path())
    assert row_options("alpagasus+random", cfg["method_options"]) == "stand-in judge"
    assert row_options("ds2", cfg["method_options"]) == "stand-in judge"
    assert row_options("deita", {"deita": {"complexity_scorer": {"path": "x/y"}}}) == ""
    assert row_options("ifd", cfg["method_options"]) == ""


def test_snakemake_plans_judges_as_inputs_and_names_a_missing_one(tmp_path):
    from tests.test_ablation_configs import dry_run
    from tests.test_paper_grid import job_counts

    cfg = tmp_path / "judges.yaml"
    cfg.write_text("experiment: j\nmethods: [alpagasus, deita+random, ds2]\n")
    done = dry_run(tmp_path, cfg)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert job_counts(text)["static_scores"] == 3
    # the world's base model is the (stand-in) judge: an input of each scoring job, its path resolved
    blocks = [block for block in text.split("rule ")[1:] if block.startswith("static_scores")]
    assert len(blocks) == 3 and all("results/j/models/tiny/base" in block.split("output:")[0] for block in blocks)
    assert '"judge": {"path": "results/j/models/tiny/base"}' in text
    assert '"rater": {"path": "results/j/models/tiny/base"}' in text

    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: j\nmethods: [ds2]\nmethod_options:\n  ds2: {rater: {path: ./no/such/rater}}\n")
    done = dry_run(tmp_path, bad)
    assert done.returncode != 0
    assert "method_options.ds2.rater.path" in done.stdout + done.stderr
