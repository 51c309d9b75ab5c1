"""The stats pass: :class:`~qtbench.pruning.BatchStats` from a model, one
no-grad forward, memory-aware.

The final hidden states are computed once; the LM head, log-softmax, NLL and
entropy are then evaluated over chunks of positions, so the largest extra
tensor alive is one ``[B, chunk, V]`` block instead of ``[B, T, V]`` logits
plus their softmax (the full-vocabulary entropy would otherwise double the
logits' memory).  Everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from qtbench.data import IGNORE_INDEX, collate, tokenize_example
from qtbench.pruning import KNOWN_STATS, BatchStats

DEFAULT_CHUNK = 128


def _final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, attentions: bool = False):
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, output_attentions=attentions, use_cache=False)
    return out.last_hidden_state, (out.attentions if attentions else None)


def token_nll_entropy(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    want_entropy: bool = True,
    want_el2n: bool = False,
    want_attention: bool = False,
) -> dict[str, torch.Tensor]:
    """Per loss position: NLL of the next token, predictive entropy, EL2N.

    Returns ``[B, L-1]`` float32 tensors (loss-position alignment).  NLL is
    computed for every position (padding included; callers mask it)."""
    with torch.inference_mode():
        hidden, attn = _final_hidden(model, input_ids, attention_mask, want_attention)
        head = model.get_output_embeddings()
        targets = input_ids[:, 1:]
        n_pos = targets.shape[1]
        nll = torch.empty(targets.shape, dtype=torch.float32, device=input_ids.device)
        entropy = torch.empty_like(nll) if want_entropy else None
        el2n = torch.empty_like(nll) if want_el2n else None
        for start in range(0, n_pos, chunk_size):
            stop = min(start + chunk_size, n_pos)
            logits = head(hidden[:, start:stop]).float()
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            target_logp = logp.gather(-1, targets[:, start:stop, None]).squeeze(-1)
            nll[:, start:stop] = -target_logp
            if want_entropy or want_el2n:
                probs = logp.exp()
                if want_entropy:
                    entropy[:, start:stop] = -(probs * logp).sum(-1)
                if want_el2n:
                    # ||p - onehot(y)||_2 = sqrt(sum p^2 - 2 p_y + 1)
                    sq = (probs * probs).sum(-1) - 2 * target_logp.exp() + 1
                    el2n[:, start:stop] = sq.clamp_min(0).sqrt()
                del probs
            del logp
        out = {"nll": nll}
        if want_entropy:
            out["entropy"] = entropy
        if want_el2n:
            out["el2n"] = el2n
        if want_attention:
            out["attention_received"] = _attention_received(attn[-1], attention_mask)
        return out


def _attention_received(last_attn: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """FastV's score: attention each position receives in the final layer, mean
    over heads and over the (attended) query positions that can see it; then
    shifted to loss positions (the token a loss position predicts)."""
    weights = last_attn.float().mean(dim=1)  # [B, Lq, Lk]
    query = attention_mask.float()[:, :, None]
    received = (weights * query).sum(dim=1)  # [B, Lk]
    # query positions that can attend to key k (causal): those at or after k
    seen_by = torch.flip(torch.cumsum(torch.flip(attention_mask.float(), [1]), 1), [1]).clamp_min(1.0)
    received = received / seen_by
    return received[:, 1:]


def compute_batch_stats(
    model: Any,
    batch: dict[str, torch.Tensor],
    required: Iterable[str],
    sample_ids: torch.Tensor | None = None,
    step: int = 0,
    epoch: int = 0,
    reference_model: Any | None = None,
    base_model: Any | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> BatchStats:
    """BatchStats of a collated batch (``input_ids``, ``attention_mask``, ``labels``).

    ``required`` names the statistics a method declared; ``nll`` and the masks
    are always filled, entropy is computed when asked (zeros otherwise)."""
    required = set(required)
    unknown = required - KNOWN_STATS
    if unknown:
        raise ValueError(f"unknown statistics requested: {sorted(unknown)}; known: {sorted(KNOWN_STATS)}")
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    was_training = model.training
    model.eval()
    try:
        own = token_nll_entropy(
            model, input_ids, attention_mask, chunk_size,
            want_entropy="entropy" in required, want_el2n="el2n" in required,
            want_attention="attention_received" in required,
        )
    finally:
        model.train(was_training)
    extras = {k: own[k] for k in ("el2n", "attention_received") if k in own}
    for name, other in (("ref_nll", reference_model), ("base_nll", base_model)):
        if name in required:
            if other is None:
                raise ValueError(f"the method needs {name!r} but no {'reference' if name == 'ref_nll' else 'base'} model was configured")
            extras[name] = token_nll_entropy(other, input_ids, attention_mask, chunk_size, want_entropy=False)["nll"]
    response_mask = labels[:, 1:] != IGNORE_INDEX
    attended = attention_mask[:, 1:].bool()
    nll = own["nll"] * response_mask
    entropy = own.get("entropy", torch.zeros_like(nll)) * attended
    ids = torch.arange(input_ids.shape[0]) if sample_ids is None else sample_ids
    return BatchStats(nll, entropy, response_mask, attended, ids.cpu(), step, epoch,
                      {k: v * attended for k, v in extras.items()})


def mean_response_nll(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> list[float]:
    """Mean NLL of each response's tokens given its prompt (``""`` scores the
    response alone, after BOS).  Used by static scorers such as IFD."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    losses: list[float] = []
    for start in range(0, len(prompts), batch_size):
        examples = [
            tokenize_example(p, r, tokenizer, max_length)
            for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
        ]
        batch = {k: v.to(device) for k, v in collate(examples, pad).items()}
        stats = compute_batch_stats(model, batch, {"nll"})
        losses.extend(stats.sample_mean_loss().tolist())
    return losses
