"""The stats pass against a straightforward full-vocabulary reference."""

from __future__ import annotations

import torch

from qtbench.data.batches import collate, tokenize_records
from qtbench.models import load_model, load_tokenizer
from qtbench.methods.stats import compute_batch_stats, mean_response_nll, token_nll_entropy
from tests.conftest import make_records


def reference_stats(logits, input_ids):
    """Plain computation over the whole [B, T, V] tensor, no chunks."""
    probs = torch.softmax(logits[:, :-1].double(), dim=-1)
    nll = -torch.log(probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1))
    entropy = -(probs * torch.log(probs)).sum(-1)
    onehot = torch.nn.functional.one_hot(input_ids[:, 1:], logits.shape[-1]).double()
    el2n = (probs - onehot).norm(dim=-1)
    return nll, entropy, el2n


def test_chunked_stats_match_reference(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu").eval()
    batch = collate(tokenize_records(make_records(5), tokenizer, 64), tokenizer.pad_token_id)
    for chunk in (1, 3, 1000):
        got = token_nll_entropy(model, batch["input_ids"], batch["attention_mask"], chunk_size=chunk, want_el2n=True)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, entropy, el2n = reference_stats(logits, batch["input_ids"])
        attended = batch["attention_mask"][:, 1:].bool()
        torch.testing.assert_close(got["nll"][attended].double(), nll[attended], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["entropy"][attended].double(), entropy[attended], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["el2n"][attended].double(), el2n[attended], atol=1e-5, rtol=1e-5)


def test_batch_stats_masks_and_alignment(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu")
    model.train()
    examples = tokenize_records(make_records(3), tokenizer, 512)
    batch = collate(examples, tokenizer.pad_token_id)
    stats = compute_batch_stats(model, batch, {"nll", "entropy"}, torch.tensor([7, 8, 9]), step=4, epoch=1)
    assert model.training  # restored after the no-grad pass
    assert stats.nll.shape == (3, batch["input_ids"].shape[1] - 1)
    assert stats.sample_ids.tolist() == [7, 8, 9]
    for row, example in enumerate(examples):
        # loss position j predicts token j+1: response positions are labels[1:] != -100
        assert stats.response_mask[row].sum() == example.response_length
        assert stats.attention_mask[row].sum() == len(example.input_ids) - 1
    assert (stats.nll[~stats.response_mask] == 0).all()
    # the same numbers as mean_response_nll, which static scorers use
    from qtbench.data.template import format_prompt

    pairs = [format_prompt(r) for r in make_records(3)]
    means = mean_response_nll(model, tokenizer, [p for p, _ in pairs], [r for _, r in pairs], batch_size=2)
    torch.testing.assert_close(torch.tensor(means), stats.sample_mean_loss(), atol=1e-5, rtol=1e-5)


def test_attention_received_for_fastv(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu")
    model.set_attn_implementation("eager")
    batch = collate(tokenize_records(make_records(2), tokenizer, 64), tokenizer.pad_token_id)
    stats = compute_batch_stats(model, batch, {"attention_received"})
    received = stats.extras["attention_received"]
    assert received.shape == stats.nll.shape
    assert (received[stats.attention_mask] > 0).all()
    assert (received[~stats.attention_mask] == 0).all()


def _eager_reference(model, input_ids, attention_mask):
    """FastV's scores the plain way: every layer's attentions from an eager
    forward with ``output_attentions``, the final layer's mean over heads,
    summed over attended queries, divided by the sample's attended queries
    (``attention_received``) or by those that see each key (``..._visible``);
    SparseVLM's redundancy from the final layer's hidden states, the full
    cosine matrix; the rank of the head- and row-mean attention matrix."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True,
                    output_hidden_states=True)
    model.set_attn_implementation("sdpa")
    attn = out.attentions[-1].double()
    on = attention_mask.double()
    received = (attn.mean(dim=1) * on[:, :, None]).sum(dim=1)
    seen_by = torch.flip(torch.cumsum(torch.flip(on, [1]), 1), [1]).clamp_min(1.0)
    # hidden_states[-1] has the final norm applied; the last layer's own output is what the authors hook
    hidden = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda _m, _a, o: hidden.__setitem__("h", (o[0] if isinstance(o, tuple) else o).double()))
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    hook.remove()
    unit = torch.nn.functional.normalize(hidden["h"], dim=-1)
    cos = unit @ unit.transpose(1, 2)  # [B, L, L]
    redundancy = (cos * on[:, :, None]).sum(dim=1) / on.sum(dim=1, keepdim=True)
    return {"attention_received": (received / on.sum(dim=1, keepdim=True))[:, 1:],
            "attention_received_visible": (received / seen_by)[:, 1:],
            "hidden_redundancy": redundancy[:, 1:],
            "attention_rank": int(torch.linalg.matrix_rank(attn.mean(dim=(0, 1)).float()))}


def test_last_layer_attention_equals_eager_output_attentions():
    """The stats pass reads only the final layer's attention (through a hook on
    the attention interface, the model staying on SDPA) and gets what eager
    ``output_attentions`` gives - for grouped-query Llama and for Qwen2 -
    while the hidden states are those of a forward without the hook."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    lengths = [11, 7, 3]
    input_ids = torch.randint(3, 50, (3, 11))
    attention_mask = torch.tensor([[1] * n + [0] * (11 - n) for n in lengths])
    for model in (LlamaForCausalLM(LlamaConfig(**common)), Qwen2ForCausalLM(Qwen2Config(**common))):
        model.set_attn_implementation("sdpa")
        model.eval()
        expected = _eager_reference(model, input_ids, attention_mask)
        hooks_before = len(model.model.layers[-1]._forward_hooks)
        got = token_nll_entropy(model, input_ids, attention_mask, want_attention=True, want_hidden=True,
                                want_rank=True)
        attended = attention_mask[:, 1:].bool()
        for name in ("attention_received", "attention_received_visible", "hidden_redundancy"):
            torch.testing.assert_close(got[name].double()[attended], expected[name][attended], atol=1e-6, rtol=1e-5)
        assert got["attention_rank"].unique().tolist() == [expected["attention_rank"]]
        plain = token_nll_entropy(model, input_ids, attention_mask)
        torch.testing.assert_close(got["nll"], plain["nll"])  # the forward itself is unchanged
        assert model.config._attn_implementation == "sdpa"
        assert model.model.layers[-1].self_attn.config is model.config  # the hook is gone
        assert len(model.model.layers[-1]._forward_hooks) == hooks_before  # the redundancy hook is gone too


def test_fastv_readings_on_a_hand_written_attention_matrix():
    """One head, one sample of 5 attended tokens; the final layer's attention
    (rows: queries, columns: keys):

        q0 [1.0                ]      received by k0..k4 (column sums):
        q1 [ .5  .5            ]        2.2  .9  .8  .8  .3
        q2 [ .2  .2  .6        ]      all_queries (/5):   .44 .18 .16 .16 .06
        q3 [ .1  .1  .1  .7    ]      visible (/5,4,3,2,1): .44 .225 .2667 .4 .3
        q4 [ .4  .1  .1  .1  .3]

    Loss position j scores key j+1.  Response = loss positions 1..3 (keys
    2..4), r_t = .5 -> 2 kept: all_queries keeps p1, p2 (.16 .16 over .06);
    visible_queries keeps p2, p3 (.4 .3 over .2667)."""
    from qtbench.methods.base import BatchStats, Budget
    from qtbench.methods.registry import TOKEN_PRUNERS, load_registry
    from qtbench.methods.stats import _attention_received

    a = torch.tensor([[1.0, 0, 0, 0, 0], [.5, .5, 0, 0, 0], [.2, .2, .6, 0, 0], [.1, .1, .1, .7, 0],
                      [.4, .1, .1, .1, .3]], dtype=torch.float64)
    received = a.sum(dim=0)[None]
    got = _attention_received(received, torch.ones(1, 5))
    torch.testing.assert_close(got["attention_received"], torch.tensor([[.18, .16, .16, .06]], dtype=torch.float64))
    torch.testing.assert_close(got["attention_received_visible"],
                               torch.tensor([[.225, .8 / 3, .4, .3]], dtype=torch.float64))
    load_registry()
    stats = BatchStats.from_tensors([[0.0] * 4], [[0.0] * 4], [[0, 1, 1, 1]], [[1, 1, 1, 1]], **got)
    kept = {}
    for mean in ("all_queries", "visible_queries"):
        pruner = TOKEN_PRUNERS["fastv"](Budget(1.0, 0.5), {"attention_mean": mean}, 0)
        kept[mean] = pruner.select_tokens(stats, stats.response_mask)[0].nonzero()[:, 1].tolist()
    assert kept == {"all_queries": [1, 2], "visible_queries": [2, 3]}
    assert TOKEN_PRUNERS["fastv"](Budget(1.0, 0.5), {}, 0).required_stats == {"attention_received"}
    assert TOKEN_PRUNERS["fastv"].stats_for_options({"attention_mean": "visible_queries"}) == {
        "attention_received_visible"}


class _FixedHidden(torch.nn.Module):
    def __init__(self, hidden_states: torch.Tensor):
        super().__init__()
        self.hidden_states = hidden_states

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return type("Out", (), {"last_hidden_state": self.hidden_states})()


class _RandomLogitsModel(torch.nn.Module):
    """A stand-in LM whose logits are arbitrary: the decoder returns fixed
    random hidden states, the head is a random linear map to a 5000-token
    vocabulary (logits spread over ~+-20, so the softmax is far from uniform)."""

    def __init__(self, hidden_states: torch.Tensor, vocab: int):
        super().__init__()
        self.hidden_states = hidden_states
        self.decoder = _FixedHidden(hidden_states)
        self.head = torch.nn.Linear(hidden_states.shape[-1], vocab, bias=False)
        torch.nn.init.normal_(self.head.weight, std=5.0 / hidden_states.shape[-1] ** 0.5)

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        hidden = self.decoder(input_ids, attention_mask).last_hidden_state
        return type("Out", (), {"logits": self.head(hidden[:, -logits_to_keep:])})()


def test_stats_pass_on_random_logits_matches_a_float64_reference():
    torch.manual_seed(3)
    batch, width, vocab = 3, 17, 5000
    model = _RandomLogitsModel(torch.randn(batch, width, 32) * 4, vocab)
    input_ids = torch.randint(0, vocab, (batch, width))
    attention_mask = torch.tensor([[1] * n + [0] * (width - n) for n in (17, 9, 2)])
    logits = model.head(model.hidden_states).detach().double()
    nll, entropy, el2n = reference_stats(logits, input_ids)
    attended = attention_mask[:, 1:].bool()
    assert entropy[attended].min() < 1.0 < entropy[attended].max()  # peaked and flat rows both occur
    for chunk in (1, 2, 1000):
        got = token_nll_entropy(model, input_ids, attention_mask, chunk_size=chunk, want_el2n=True)
        for name, ref in (("nll", nll), ("entropy", entropy), ("el2n", el2n)):
            torch.testing.assert_close(got[name][attended].double(), ref[attended], atol=2e-4, rtol=1e-4, msg=name)
            assert (got[name][~attended] == 0).all(), name  # padding is never computed
