"""FSDP for full fine-tuning of models that do not fit one GPU (``train.fsdp``).

With ``train.fsdp: true`` and several processes, the trainer shards the model
with PyTorch's ``fully_shard`` (FSDP2): one unit per decoder layer, the rest
(embeddings, final norm, LM head) in the root unit.  Every rank then holds
1/W of the weights, gradients and AdamW state.  What changes for the trainer:

* the pruning decision does not (``qtbench.train.parallel``: stats gathered, one
  decision, each rank trains its rows);
* FSDP reduce-scatters the gradients and *averages* them over ranks, so each
  rank's loss (its kept-token CE sum over the window's global kept-token
  count) is multiplied by W: the update is still one process's on the whole
  window (:func:`qtbench.train.parallel.all_reduce_gradients` is not used);
* every forward and backward is a collective: a rank whose rows were all
  dropped, or whose shard of a small micro-batch is empty, runs a one-token
  dummy forward (and backward, with zero loss) so that the others do not wait
  forever;
* the stats pass runs inside the model's own forward (its chunked softmax
  is a hook on the LM head), where FSDP has gathered the root unit's weights;
* checkpoints and the final model hold the full state dict (gathered to rank
  0, on the CPU); a resumed run scatters it back.

The paper fine-tunes LoRA adapters (rank 8), for which every rank holds the
whole model and ``fsdp`` stays off; FSDP is for full fine-tuning of 7B+
models (``train.lora.rank: 0``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["dummy_forward", "full_optimizer_state", "full_state_dict", "is_sharded", "load_full_optimizer_state",
           "load_full_state_dict", "reshard_root", "shard_model"]


def is_sharded(model: Any) -> bool:
    """True for a model sharded by :func:`shard_model` (an FSDP2 module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _decoder_layers(model: Any) -> list[Any]:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (expected .layers)")
    return list(layers)


def shard_model(model: Any) -> Any:
    """Shard ``model`` in place over the default process group: one FSDP unit
    per decoder layer, then the root (embeddings, norm, LM head: tied
    embeddings stay in one unit).  Returns the model (now an FSDP module).

    One no-grad token goes through the root's forward at once: FSDP sets
    itself up on the first forward, and it must be the root's.  Collective."""
    from torch.distributed.fsdp import fully_shard

    for layer in _decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    dummy_forward(model)
    return model


def dummy_forward(model: Any, backward: bool = False) -> None:
    """A one-token forward (and, with ``backward``, a zero-loss backward) that
    takes part in a sharded model's collectives for a rank with nothing of
    its own to run; without a backward the root is resharded after it."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    with torch.set_grad_enabled(backward):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    if backward:
        (logits.float().sum() * 0.0).backward()
    else:
        reshard_root(model)


def reshard_root(model: Any) -> None:
    """Put the root unit's sharded parameters back after a forward without a
    backward (the stats pass): FSDP leaves the root's weights gathered until
    the next backward, and until then ``model.parameters()`` - what the
    optimizer, gradient clipping and the state dict see - would be the
    gathered copies.  A no-op for a model that is not sharded."""
    if is_sharded(model):
        model.reshard()


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (``{}`` on the other ranks).
    Collective.  Tensors are separate copies (tied weights appear under both
    names), so they can be written with ``safetensors.torch.save_file``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def load_full_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Scatter a full state dict (the same on every rank) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options())


def full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state with full (unsharded) tensors keyed by parameter
    name, on rank 0's CPU (``{}`` elsewhere).  Collective.  Plain tensors,
    numbers and strings: it loads with ``torch.load(weights_only=True)``."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Scatter a full optimizer state (the same on every rank) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())
