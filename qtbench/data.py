"""SFT records -> prompt/response text -> token ids with a response-only loss.

Records are normalised by ``qtbench.sft_data`` to the Alpaca shape
(``instruction``, ``input``, ``output``).  Two ways to render them:

* the plain template (base-model prompts, as the paper's evaluation uses and as
  every model without a chat template gets)::

      {instruction}[\\n\\n{input}]\\nAnswer: {output}</s>

  The world's lm-eval tasks render their prompts the same way, so what SFT
  teaches is what the benchmarks ask;
* the model's own chat template (``chat_template: true`` in the config): the
  user turn is the plain prompt without ``\\nAnswer:``.

Prompt and response are tokenized separately and concatenated, so the
response mask is exact (no re-tokenisation across the boundary); labels are
-100 on the prompt and on padding, EOS closes the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

IGNORE_INDEX = -100
ANSWER_CUE = "\nAnswer:"


def format_prompt(record: dict) -> tuple[str, str]:
    """The plain template: ``(prompt, response)`` of an Alpaca record."""
    instruction = str(record.get("instruction", "")).strip()
    extra = str(record.get("input", "") or "").strip()
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return prompt + ANSWER_CUE, " " + str(record["output"]).strip()


def render(record: dict, tokenizer: Any, chat_template: bool = False) -> tuple[str, str]:
    """Prompt and response text for ``record`` under the chosen template."""
    if not chat_template:
        return format_prompt(record)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat_template: true, but the tokenizer has no chat template; set chat_template: false "
            "to use qtbench's plain template"
        )
    user = format_prompt(record)[0][: -len(ANSWER_CUE)]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return prompt, str(record["output"]).strip()


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
