"""The stats pass: :class:`~qtbench.methods.base.BatchStats` from a model, one
no-grad forward, memory-aware.

The final hidden states are computed once; the LM head, log-softmax, NLL and
entropy are then evaluated over chunks of the attended positions only (no
padding), so the largest extra tensor alive is one ``[B, chunk, V]``-sized
block instead of ``[B, T, V]`` logits plus their softmax (the
full-vocabulary entropy would otherwise double the logits' memory).
Everything runs under ``torch.inference_mode``, inside the model's own
forward (a hook on the LM head; the forward itself returns the last
position's logits only), which keeps it correct under FSDP.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterable, Sequence

import torch

from qtbench.data.batches import attended_positions, collate, loss_positions, tokenize_example
from qtbench.fsdp import dummy_forward, is_sharded, reshard_root
from qtbench.methods.base import KNOWN_STATS, BatchStats

DEFAULT_CHUNK = 128
#: statistics read from the final layer's attention (one capture serves them all)
ATTENTION_STATS = frozenset({"attention_received", "attention_received_visible"})
#: other extras of the trained model's own pass
OWN_EXTRAS = frozenset({"el2n", "hidden_redundancy", "attention_rank"})


@contextlib.contextmanager
def _inside_forward(model: Any, on_head: Any):
    """Run ``on_head(head, hidden)`` inside the model's own forward, right when
    it applies its LM head: ``hidden`` is the decoder's final hidden states
    ``[B, L, H]`` (captured by a hook), ``head`` the LM head module.

    Calling the decoder and the head directly would be simpler, but under
    FSDP the root unit's weights (embeddings, norm, LM head) are gathered only
    inside the root's forward; the model's forward is asked for the logits of
    the last position only (``logits_to_keep=1``), and everything else is the
    hook's chunked computation."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    seen: dict[str, Any] = {}

    def keep_hidden(_module, _args, output):
        seen["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def call_back(module, _args, _output):
        hooks[1].remove()  # once: on_head calls the head itself
        if "hidden" not in seen:
            raise RuntimeError(f"{type(model).__name__}: the LM head ran before the decoder's output was seen")
        on_head(module, seen.pop("hidden"))

    hooks = [backbone.register_forward_hook(keep_hidden), head.register_forward_hook(call_back)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


_CAPTURE = "qtbench_last_layer"


@contextlib.contextmanager
def _last_layer_attention(backbone: Any, attention_mask: torch.Tensor):
    """Read the final layer's attention probabilities without materialising
    every layer's (``output_attentions`` needs eager attention in *all*
    layers: ``[layers, B, H, T, T]``, tens of GB for a 7B model at 2k tokens).

    Only the last attention module is routed through a registered attention
    function that sees its post-RoPE queries and keys, accumulates the
    attention each key receives head by head (one ``[B, T, T]`` block alive),
    and then calls the model's own implementation (SDPA, flash, eager) for the
    output, which is therefore unchanged.  The probabilities are causal
    softmax(q·k·scale) over attended keys - what eager attention returns (no
    sliding window: qtbench's sequences are shorter than any window)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _CAPTURE not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(_CAPTURE, _capturing_attention)
    module = _last_attention_module(backbone)
    captured: dict[str, Any] = {"mask": attention_mask, "inner": module.config._attn_implementation}
    original = module.config
    module.config = copy.copy(original)
    module.config._attn_implementation = _CAPTURE
    module._qtbench_capture = captured
    try:
        yield captured
    finally:
        module.config = original
        del module._qtbench_capture


def _last_attention_module(backbone: Any) -> Any:
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    attention = getattr(layers[-1], "self_attn", None) if layers else None
    if attention is None or not hasattr(attention, "config"):
        raise RuntimeError(f"{type(backbone).__name__}: cannot find the final layer's attention module "
                           "(expected .layers[-1].self_attn, as in Llama, Mistral and Qwen)")
    return attention


def _capturing_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    captured = module._qtbench_capture
    captured["received"], mean_probs = _received_from_qk(query, key, captured["mask"], scaling,
                                                         captured.get("want_rank", False))
    if mean_probs is not None:
        captured["rank"] = int(torch.linalg.matrix_rank(mean_probs))
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    own_eager = sys.modules[type(module).__module__].eager_attention_forward
    inner = ALL_ATTENTION_FUNCTIONS.get_interface(captured["inner"], own_eager)
    return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _received_from_qk(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor, scaling: float,
                      want_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention each key position receives, summed over attended query
    positions, mean over heads: ``[B, L]`` from ``query [B, H, L, D]`` and
    ``key [B, H_kv, L, D]`` (grouped-query heads share their key head).

    With ``want_mean`` also the ``[L, L]`` attention matrix averaged over heads
    and rows, padding query rows included (as eager attention returns them):
    the matrix whose rank the authors' SparseVLM code takes."""
    heads, length = query.shape[1], query.shape[2]
    mean = torch.zeros(length, length, dtype=torch.float32, device=query.device) if want_mean else None
    groups = heads // key.shape[1]
    keys_on = attention_mask.bool()
    allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()[None] & keys_on[:, None, :]
    query_on = attention_mask.to(torch.float32)[:, :, None]
    received = torch.zeros(query.shape[0], length, dtype=torch.float32, device=query.device)
    for head in range(heads):
        scores = (query[:, head].float() @ key[:, head // groups].float().transpose(-1, -2)) * scaling
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
        received += (probs * query_on).sum(dim=1)
        if mean is not None:
            mean += probs.sum(dim=0)
    return received / heads, None if mean is None else mean / (heads * query.shape[0])


def token_nll_entropy(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    want_entropy: bool = True,
    want_el2n: bool = False,
    want_attention: bool = False,
    want_hidden: bool = False,
    want_rank: bool = False,
) -> dict[str, torch.Tensor]:
    """Per loss position: NLL of the next token, predictive entropy, EL2N
    (and the final layer's attention received under both readings, with
    ``want_attention``; SparseVLM's hidden-state redundancy, with
    ``want_hidden``; the rank of the batch's mean attention matrix, with
    ``want_rank``, as a ``[B, L-1]`` tensor holding the one number).

    Returns ``[B, L-1]`` float32 tensors (loss-position alignment).  The LM
    head and the softmax run only at positions whose target token is attended
    (padding is 0, never computed: with varied lengths a third of a random
    micro-batch can be padding), over chunks of ``chunk_size x B`` positions,
    so the largest extra tensors are ``[B, chunk, V]``-sized blocks."""
    targets = input_ids[:, 1:]
    positions = attended_positions(attention_mask)
    out: dict[str, torch.Tensor] = {}

    def on_head(head: Any, hidden: torch.Tensor) -> None:
        flat_hidden, flat_targets = hidden[:, :-1][positions], targets[positions]
        n_pos = flat_targets.shape[0]
        nll = torch.empty(n_pos, dtype=torch.float32, device=input_ids.device)
        entropy = torch.empty_like(nll) if want_entropy else None
        el2n = torch.empty_like(nll) if want_el2n else None
        rows = max(1, chunk_size * input_ids.shape[0])
        for start in range(0, n_pos, rows):
            stop = min(start + rows, n_pos)
            logp = torch.log_softmax(head(flat_hidden[start:stop]).float(), dim=-1)
            target_logp = logp.gather(-1, flat_targets[start:stop, None]).squeeze(-1)
            nll[start:stop] = -target_logp
            if want_entropy or want_el2n:
                probs = logp.exp()
                if want_entropy:
                    entropy[start:stop] = -(probs * logp).sum(-1)
                if want_el2n:
                    # ||p - onehot(y)||_2 = sqrt(sum p^2 - 2 p_y + 1)
                    sq = (probs * probs).sum(-1) - 2 * target_logp.exp() + 1
                    el2n[start:stop] = sq.clamp_min(0).sqrt()
                del probs
            del logp
        for name, values in (("nll", nll), ("entropy", entropy), ("el2n", el2n)):
            if values is not None:
                grid = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
                grid[positions] = values
                out[name] = grid

    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        attention = (stack.enter_context(_last_layer_attention(backbone, attention_mask))
                     if want_attention or want_rank else None)
        if attention is not None:
            attention["want_rank"] = want_rank
        if want_hidden:
            stack.enter_context(_last_layer_redundancy(backbone, attention_mask, out))
        stack.enter_context(_inside_forward(model, on_head))
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    reshard_root(model)
    if "nll" not in out:
        raise RuntimeError(f"{type(model).__name__}: the stats pass never saw the LM head run")
    if attention is not None:
        if "received" not in attention:
            raise RuntimeError(f"{type(model).__name__}: the final attention layer did not go through "
                               "transformers' attention interface, so FastV's attention scores cannot be read")
        out.update(_attention_received(attention["received"], attention_mask))
        if want_rank:
            out["attention_rank"] = torch.full(targets.shape, float(attention["rank"]), device=input_ids.device)
    if want_hidden and "hidden_redundancy" not in out:
        raise RuntimeError(f"{type(model).__name__}: the stats pass never saw the final decoder layer run")
    return out


def _attention_received(received: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """FastV's score, two readings, from the final layer's attention each key
    position received (summed over attended queries, mean over heads), shifted
    to loss positions (the token a loss position predicts):

    * ``attention_received``: divided by the sample's attended query positions
      - a plain mean over queries, FastV's ``(1/n) sum_q a_{q->j}`` and the
      Q-Tuning authors' ``attn.mean(dim=heads).mean(dim=queries)`` (theirs runs
      over the padded length, so padding rows vote too; here only the sample's
      own queries);
    * ``attention_received_visible``: divided by the attended query positions
      that can see the key (causal: those at or after it), which removes the
      plain mean's bias towards early tokens."""
    on = attention_mask.float()
    seen_by = torch.flip(torch.cumsum(torch.flip(on, [1]), 1), [1]).clamp_min(1.0)
    queries = on.sum(dim=1, keepdim=True).clamp_min(1.0)
    return {"attention_received": (received / queries)[:, 1:],
            "attention_received_visible": (received / seen_by)[:, 1:]}


def hidden_redundancy(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]``: for the token each loss position predicts, the mean cosine
    similarity of its hidden state (``hidden [B, L, D]``) to those of the
    sample's attended positions, itself included."""
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    on = attention_mask.to(unit.dtype)[:, :, None]
    centre = (unit * on).sum(dim=1) / on.sum(dim=1).clamp_min(1.0)
    return (unit @ centre[:, :, None]).squeeze(-1)[:, 1:]


@contextlib.contextmanager
def _last_layer_redundancy(backbone: Any, attention_mask: torch.Tensor, out: dict[str, torch.Tensor]):
    """SparseVLM's redundancy from the final decoder layer's output hidden
    states (before the final norm, as the authors' hook on the last layer):
    for each position, the mean cosine similarity of its hidden state to those
    of the sample's attended positions (itself included), shifted to loss
    positions.  ``mean_i cos(h_i, h_j) = (mean_i u_i) . u_j`` with unit vectors
    ``u``, so no ``[L, L]`` similarity matrix is built."""
    layers = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    if not layers:
        raise RuntimeError(f"{type(backbone).__name__}: cannot find the decoder layers (expected .layers)")

    def keep(_module, _args, output):
        out["hidden_redundancy"] = hidden_redundancy(output[0] if isinstance(output, (tuple, list)) else output,
                                                     attention_mask)

    hook = layers[-1].register_forward_hook(keep)
    try:
        yield
    finally:
        hook.remove()


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
    if input_ids.shape[0] == 0:  # a rank's empty shard of a small micro-batch: nothing to run
        if is_sharded(model):  # ... but a sharded model's forward is collective: take part with one token
            dummy_forward(model)
        zeros = torch.zeros((0, max(input_ids.shape[1] - 1, 0)), device=input_ids.device)
        ids = torch.zeros(0, dtype=torch.long) if sample_ids is None else sample_ids
        return BatchStats(zeros, zeros.clone(), zeros.bool(), zeros.bool(), ids.cpu(), step, epoch,
                          {k: zeros.clone() for k in required - {"nll", "entropy"}})
    was_training = model.training
    model.eval()
    try:
        own = token_nll_entropy(
            model, input_ids, attention_mask, chunk_size,
            want_entropy="entropy" in required, want_el2n="el2n" in required,
            want_attention=bool(required & ATTENTION_STATS), want_hidden="hidden_redundancy" in required,
            want_rank="attention_rank" in required,
        )
    finally:
        model.train(was_training)
    extras = {k: own[k] for k in required & (OWN_EXTRAS | ATTENTION_STATS)}
    for name, other in (("ref_nll", reference_model), ("base_nll", base_model)):
        if name in required:
            if other is None:
                raise ValueError(f"the method needs {name!r} but no {'reference' if name == 'ref_nll' else 'base'} model was configured")
            extras[name] = token_nll_entropy(other, input_ids, attention_mask, chunk_size, want_entropy=False)["nll"]
    response_mask = loss_positions(labels)
    attended = attended_positions(attention_mask)
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
    response alone, after BOS)."""
    examples = [tokenize_example(p, r, tokenizer, max_length) for p, r in zip(prompts, responses)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return mean_example_nll(model, examples, pad, batch_size)


def mean_example_nll(model: Any, examples: Sequence[Any], pad_id: int, batch_size: int = 16) -> list[float]:
    """Mean NLL of each tokenized example's labelled (response) tokens, in
    batches of ``batch_size``.  Used by static scorers such as IFD, which build
    the examples themselves (``baselines._ifd.ifd_examples``)."""
    device = next(model.parameters()).device
    losses: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        stats = compute_batch_stats(model, batch, {"nll"})
        losses.extend(stats.sample_mean_loss().tolist())
    return losses
