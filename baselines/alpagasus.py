"""AlpaGasus: keep the samples an LLM judge rates highest for accuracy.

Paper: Chen et al., "AlpaGasus: Training a Better Alpaca with Fewer Data"
(ICLR 2024, arXiv 2307.08701).  A strong LLM (ChatGPT) rates every
(instruction, input, response) triplet on a 0-5 scale for the accuracy of the
response; the paper trains on the ~9k of 52k Alpaca samples rated >= 4.5.

* scores: the judge's expected rating (:func:`static_scores`): the prompt of
  the AlpaGasus rating script (``gpt4life/alpagasus`` ``rating/chatgpt_rating.py``:
  its system prompt, the ``###Instruction / ### Input / ### Response`` triplet
  and the "rate according to the accuracy ... on a scale of 0 to 5" request),
  then, instead of generating and parsing a number, one forward pass:
  ``rating = sum_d d * p(d)`` over the next-token probabilities of the digit
  tokens 0..5, renormalised over those six (DEITA's scorers read their scores
  the same way).  With a chat template the judge answers after its generation
  prompt; without one (a base model) the prompt ends with the cue ``Score:``.
  Sub-integer ratings (4.5) exist only as expected values here;
* model: a judge named in the config, ``judge: {path, revision,
  trust_remote_code, dtype}`` (loaded by ``qtbench.models``: safetensors only,
  remote code only if set).  The paper's judge is ChatGPT; any local model is
  a *substitute* for it.  On the default world the judge is the world's own
  pretrained tiny base model (``judge: {path: world}``, marked ``stand_in:
  true``, shown as "stand-in judge" in the tables): it runs the real code path
  but knows nothing of rating, so its subset says nothing about AlpaGasus;
* when: static, once before training (a cached Snakemake output per model x
  data set); the same subset every epoch, fewer optimizer steps;
* keeps (reading chosen): ``keep: budget`` (default) - the
  ``max(1, round(N * r_s))`` highest-rated samples (ties: lower index first),
  i.e. the budget of the run, as Q-Tuning's Table 13 runs AlpaGasus at 12.5% /
  25% of the data; ``keep: threshold`` - the paper's rule: every sample rated
  >= ``threshold`` (4.5), whatever the budget (the trace's ``epoch_kept`` says
  how many; if none qualifies, the budget's top-rated ones are kept and the
  trace says ``filter_ignored``).

Compute: one judge forward pass per sample (prompt ~ the sample plus ~110
words of instructions), once per data set; no generation.

Options: ``judge`` (required), ``keep`` (budget), ``threshold`` (4.5),
``stand_in`` (false), ``batch_size`` (16), ``max_length`` (512; a longer
prompt keeps its end), ``chat_template`` (auto), ``double_prune`` (false).
"""

from __future__ import annotations

from typing import Any, Mapping

from baselines._judge import JudgeSelection, digit_logits, digit_token_ids, expected_rating, render, uses_chat_template
from baselines._common import check_choice
from qtbench.methods.base import Budget
from qtbench.methods.registry import register_sample_pruner
from qtbench.methods.static import JudgeSlot

SYSTEM_PROMPT = ("We would like to request your feedback on the performance of AI assistant in response to the "
                 "instruction and the given input displayed following.")
TRIPLET = "###Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}\n\n"
USER_PROMPT = ("Please rate according to the accuracy of the response to the instruction and the input. Each "
               "assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of the "
               "accuracy. Please first output a single line containing value indicating the scores. In the subsequent "
               "line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias. \n\n")
CUE = "Score:"
RATINGS = (0, 1, 2, 3, 4, 5)


def rating_prompt(record: Mapping[str, Any], tokenizer: Any, chat: bool) -> tuple[str, bool]:
    fields = {key: str(record.get(key) or "") for key in ("instruction", "input", "output")}
    return render(tokenizer, SYSTEM_PROMPT, TRIPLET.format_map(fields) + USER_PROMPT, CUE, chat)


def static_scores(records: list[dict], judges: Mapping[str, Any], tokenizer: Any, options: Mapping[str, Any]) -> dict:
    """The judge's expected 0-5 accuracy rating of each record (``judges``:
    option key -> (model, tokenizer), ``qtbench.methods.static.JudgeModels``)."""
    pruner = Alpagasus(Budget(), options)  # validate the options before any scoring
    pruner.check_judges()
    opts = pruner.options
    model, tok = judges["judge"]
    chat = uses_chat_template(tok, opts["chat_template"])
    logits = digit_logits(model, tok, [rating_prompt(r, tok, chat) for r in records], digit_token_ids(tok, RATINGS),
                          batch_size=opts["batch_size"], max_length=opts["max_length"])
    return {"scores": expected_rating(logits, RATINGS).tolist()}


@register_sample_pruner("alpagasus")
class Alpagasus(JudgeSelection):
    judge_slots = (JudgeSlot("judge"),)
    extra_defaults = {"keep": "budget", "threshold": 4.5}

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(budget, options, seed)
        self.keep = check_choice(self.name, "keep", self.options["keep"], ("budget", "threshold"))
        threshold = self.options["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"option 'threshold' of method {self.name!r} must be a number, got {threshold!r}")
        self.threshold = float(threshold)

    def eligible(self, score: float) -> bool:
        return super().eligible(score) and (self.keep == "budget" or score >= self.threshold)

    def ignore_budget(self) -> bool:
        return self.keep == "threshold"
