"""SFT records -> token ids with a response-only loss, and batches of them.

Records are normalised by :mod:`qtbench.data.sources` to the Alpaca shape
(``instruction``, ``input``, ``output``) and rendered to prompt and response
text by :mod:`qtbench.data.template` (the plain template, or the model's chat
template).

Prompt and response are tokenized separately and concatenated, so the
response mask is exact (no re-tokenisation across the boundary); labels are
-100 on the prompt and on padding, EOS closes the response.

Loss-position alignment (defined here once, :func:`loss_positions`,
:func:`attended_positions`, :func:`next_token_labels`): a ``[B, L]`` batch has
``L - 1`` loss positions; column ``j`` is the model's output at input position
``j``, which predicts token ``j + 1`` (as Hugging Face's causal-LM loss and the
Q-Tuning authors' code).  Every ``[B, T]`` statistic and selection mask of
:mod:`qtbench.methods` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from qtbench.data.template import render

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    """One SFT example: ``input_ids`` and ``labels`` (-100 on the prompt)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def response_length(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def tokenize_example(
    prompt: str, response: str, tokenizer: Any, max_length: int, add_bos: bool = True
) -> TokenizedExample:
    """Tokenize prompt and response separately; truncate the response first.

    Over-long examples keep their whole prompt (up to ``max_length - 1``) and as
    much response as fits; ``truncated`` reports it so the caller can count it.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    if add_bos and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    total = len(prompt_ids) + len(response_ids)
    truncated = total > max_length
    if truncated:
        prompt_ids = prompt_ids[: max_length - 1]
        response_ids = response_ids[: max_length - len(prompt_ids)]
    return TokenizedExample(
        prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + list(response_ids), truncated
    )


def tokenize_records(
    records: Sequence[dict], tokenizer: Any, max_length: int, chat_template: bool = False
) -> list[TokenizedExample]:
    add_bos = not chat_template
    return [
        tokenize_example(*render(record, tokenizer, chat_template), tokenizer, max_length, add_bos)
        for record in records
    ]


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]`` bool: the loss positions whose target is a response token
    (a method's ``response_mask``)."""
    return labels[:, 1:] != IGNORE_INDEX


def attended_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L-1]`` bool: the loss positions whose target token is attended
    (not padding)."""
    return attention_mask[:, 1:].bool()


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` labels shifted to loss positions (the last column -100), so a
    loss over ``[B, L, V]`` logits needs no copy of the logits."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def collate(examples: Iterable[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels``."""
    examples = list(examples)
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
