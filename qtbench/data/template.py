"""The prompt template: one definition for SFT, pretraining and the world's tasks.

* the plain template (base-model prompts, as the paper's evaluation uses and as
  every model without a chat template gets)::

      {instruction}[\n\n{input}]\nAnswer: {output}</s>

  The world's lm-eval tasks render their prompts the same way
  (``tests/test_world.py`` checks each task YAML against it), so what SFT
  teaches is what the benchmarks ask;
* the model's own chat template (``chat_template: true`` in the config): the
  user turn is the plain prompt without ``\nAnswer:``.
"""

from __future__ import annotations

from typing import Any
ANSWER_CUE = "\nAnswer:"


def prompt_text(instruction: str, input_: str = "") -> str:
    """The plain template's prompt: instruction, a blank line and the input if
    any, then the answer cue."""
    instruction, extra = str(instruction or "").strip(), str(input_ or "").strip()
    return (f"{instruction}\n\n{extra}" if extra else instruction) + ANSWER_CUE


def format_prompt(record: dict) -> tuple[str, str]:
    """The plain template: ``(prompt, response)`` of an Alpaca record."""
    return prompt_text(record.get("instruction", ""), record.get("input", "")), " " + str(record["output"]).strip()


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
