"""The stats pass against a straightforward full-vocabulary reference."""

from __future__ import annotations

import torch

from qtbench.data import collate, tokenize_records
from qtbench.models import load_model, load_tokenizer
from qtbench.stats import compute_batch_stats, mean_response_nll, token_nll_entropy
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
    from qtbench.data import format_prompt

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
