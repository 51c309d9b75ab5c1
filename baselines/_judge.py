"""Shared code of the judge-scored static selectors (``alpagasus``, ``deita``, ``ds2``).

* :func:`digit_token_ids` - the judge tokenizer's token ids of each rating digit;
* :func:`digit_logits` - per prompt, the next-token log-probability of each
  rating digit under a causal LM judge (one forward pass per prompt, no
  generation: the rating is read where the judge would write it);
* :func:`expected_rating` - the expected value of the rating over the digits'
  probabilities renormalised over the rating scale (DEITA's scorer code:
  ``softmax(logits[digit ids]) @ [1..6]``);
* :func:`embed` - mean-pooled (or last-token) last hidden state of a model;
* :class:`JudgeSelection` - the static top-``r_s`` selection shared by the three,
  with the options every judge method has (its judge slots, ``stand_in``,
  ``batch_size``, ``max_length``, ``chat_template``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from baselines._common import (EpochLevelSamplePruner, check_bool, check_choice, check_positive_int, epoch_keep_count,
                              keep_by_score, require_static_scores)
from qtbench.methods.base import Budget, DatasetInfo, EpochPlan
from qtbench.methods.static import WORLD_JUDGE, JudgeSlot, check_judge_entry
from qtbench.models import check_model_path

Tensor = torch.Tensor

SCORING_DEFAULTS = {"batch_size": 16, "max_length": 512, "chat_template": "auto"}


# --------------------------------------------------------------------------- records and prompts


def record_fields(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """(instruction, input, output) of an Alpaca-format record (missing -> "")."""
    return (str(record.get("instruction") or ""), str(record.get("input") or ""), str(record.get("output") or ""))


def query_text(record: Mapping[str, Any]) -> str:
    """The user query: the instruction, then the input on its own line when there is one."""
    instruction, inp, _ = record_fields(record)
    return f"{instruction}\n{inp}" if inp else instruction


def uses_chat_template(tokenizer: Any, setting: Any) -> bool:
    """``chat_template``: ``auto`` (the tokenizer's chat template when it has one),
    ``true`` (required) or ``false`` (plain text)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if setting == "auto":
        return has
    if setting and not has:
        raise ValueError("option chat_template is true but the judge's tokenizer has no chat template")
    return bool(setting)


def render(tokenizer: Any, system: str, user: str, cue: str, chat: bool) -> tuple[str, bool]:
    """The judge's input text and whether the tokenizer should add its special
    tokens: the chat template with a generation prompt (the model's own answer
    cue), or plain ``system\\n\\nuser`` followed by ``cue`` (a base model needs a
    cue after which the rating is the next token)."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False
    text = f"{system}\n\n{user}" if system else user
    return text + cue, True


# --------------------------------------------------------------------------- digits and ratings


def digit_token_ids(tokenizer: Any, values: Sequence[int]) -> list[list[int]]:
    """For each rating value (a single digit), the ids of the tokens that spell it:
    the single-token encodings of ``"d"`` and ``" d"`` and a vocabulary entry
    ``d`` (SentencePiece vocabularies hold ``"1"`` but encode ``"1"`` as
    ``"▁" "1"``); never the unknown token.  A value with no such token is an
    error naming it."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    unknown = getattr(tokenizer, "unk_token_id", None)
    out = []
    for value in values:
        text = str(value)
        if len(text) != 1:
            raise ValueError(f"rating values are single digits, got {value!r}")
        ids: set[int] = set()
        for variant in (text, " " + text):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] != unknown:
                ids.add(int(encoded[0]))
        if text in vocab:
            ids.add(int(vocab[text]))
        if not ids:
            raise ValueError(f"the judge's tokenizer has no single token for the rating digit {text!r}")
        out.append(sorted(ids))
    return out


def rating_probabilities(digit_scores: Tensor) -> Tensor:
    """``[N, K]`` digit logits (or log-probabilities) -> ``[N, K]`` probabilities
    renormalised over the K rating values (a softmax over them)."""
    return torch.softmax(digit_scores.to(torch.float64), dim=-1)


def expected_rating(digit_scores: Tensor, values: Sequence[float]) -> Tensor:
    """``[N]`` expected rating ``sum_k p_k * values[k]`` with ``p`` the digits'
    probabilities renormalised over the scale (:func:`rating_probabilities`)."""
    weights = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return rating_probabilities(digit_scores) @ weights


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _encode(tokenizer: Any, text: str, add_special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _keep_tail(ids: list[int], max_length: int, first: int | None) -> list[int]:
    """At most ``max_length`` ids: a long prompt keeps its BOS and its end (the
    rating cue), dropping from the middle-left."""
    if len(ids) <= max_length:
        return ids
    if first is not None and ids and ids[0] == first:
        return [ids[0]] + ids[len(ids) - (max_length - 1):]
    return ids[len(ids) - max_length:]


@torch.no_grad()
def digit_logits(model: Any, tokenizer: Any, prompts: Sequence[tuple[str, bool]], digit_ids: list[list[int]],
                 batch_size: int = 16, max_length: int = 512) -> Tensor:
    """``[N, K]``: per prompt (text, add special tokens), the next-token
    log-probability of each rating digit (summed over the tokens that spell it,
    :func:`digit_token_ids`), after the prompt's last token."""
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = [_keep_tail(_encode(tokenizer, text, special), max_length, bos)
                for text, special in prompts[start:start + batch_size]]
        ids, mask = _pad(rows, pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = mask.sum(dim=1) - 1
        next_logp = torch.log_softmax(logits[torch.arange(len(rows)), last.to(device)].float(), dim=-1).cpu()
        out.append(torch.stack([torch.logsumexp(next_logp[:, ids_k], dim=-1) for ids_k in digit_ids], dim=-1))
    return torch.cat(out) if out else torch.zeros((0, len(digit_ids)))


@torch.no_grad()
def embed(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16, max_length: int = 512,
          pooling: str = "mean") -> Tensor:
    """``[N, H]`` float32: the last hidden state of each text, mean-pooled over
    its tokens (``mean``) or at its last token (``last``, DEITA's CLM embedder)."""
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [_encode(tokenizer, text, True)[:max_length] or [pad_id] for text in texts[start:start + batch_size]]
        ids, mask = _pad(rows, pad_id)
        outputs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = outputs.hidden_states[-1].float().cpu()
        if pooling == "last":
            out.append(hidden[torch.arange(len(rows)), mask.sum(dim=1) - 1])
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))
    return torch.cat(out) if out else torch.zeros((0, 0))


def cosine_similarity_matrix(a: Tensor, b: Tensor | None = None) -> Tensor:
    """``[N, M]`` cosine similarities of the rows of ``a`` and ``b`` (default ``a``)."""
    a = torch.nn.functional.normalize(a.to(torch.float64), dim=1)
    b = a if b is None else torch.nn.functional.normalize(b.to(torch.float64), dim=1)
    return a @ b.T


# --------------------------------------------------------------------------- selection


class JudgeSelection(EpochLevelSamplePruner):
    """Static top-``r_s`` selection by a judge-derived score (ties: lower index
    first), optionally restricted to the eligible samples (:meth:`eligible`).

    Subclasses set ``judge_slots`` and ``extra_defaults`` and may override
    :meth:`eligible` and :meth:`ignore_budget`."""

    static = True
    judge_slots: tuple[JudgeSlot, ...] = ()
    #: the method's own options and defaults
    extra_defaults: dict[str, Any] = {}

    @classmethod
    def option_keys(cls) -> frozenset[str]:
        """The option keys the config may set (checked at DAG build by the registry)."""
        return frozenset({*EpochLevelSamplePruner.option_defaults, "stand_in", *SCORING_DEFAULTS,
                          *(slot.key for slot in cls.judge_slots), *cls.extra_defaults})

    def __init__(self, budget: Budget, options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.option_defaults = {
            **EpochLevelSamplePruner.option_defaults,
            "stand_in": False,
            **SCORING_DEFAULTS,
            **{slot.key: None for slot in self.judge_slots},
            **self.extra_defaults,
        }
        super().__init__(budget, options, seed)
        # a missing required judge is refused at DAG build and when scoring, not here:
        # the trainer builds the pruner from the cached scores without any judge
        for slot in self.judge_slots:
            check_judge_entry(self.name, slot.key, self.options[slot.key], required=False)
        check_bool(self.name, "stand_in", self.options["stand_in"])
        check_positive_int(self.name, "batch_size", self.options["batch_size"])
        check_positive_int(self.name, "max_length", self.options["max_length"])
        check_choice(self.name, "chat_template", self.options["chat_template"], ("auto", True, False))

    @classmethod
    def check_config(cls, options: Mapping[str, Any], config: Mapping[str, Any], key: str) -> None:
        """Called at DAG build (``qtbench.preflight.check_methods``): every required
        judge is named as a valid entry; a local judge folder exists and holds
        safetensors weights (a hub id is not checked offline); ``path: world``
        needs a world model in ``models``.  Errors name ``<key>.<slot>``."""
        has_world = any(entry["path"] == WORLD_JUDGE for entry in config["models"].values())
        for slot in cls.judge_slots:
            slot_key = f"{key}.{slot.key}"
            try:
                entry = check_judge_entry(cls.name, slot.key, options.get(slot.key), slot.required)
            except ValueError as exc:
                raise ValueError(f"config key {slot_key!r}: {exc}") from None
            if entry is None:
                continue
            path = entry["path"]
            if path == WORLD_JUDGE:
                if not has_world:
                    raise ValueError(f"config key '{slot_key}.path': 'world' names the synthetic world's base model, "
                                     "but no model of the config has path: world")
            else:
                try:
                    check_model_path(path)  # a local folder: exists, safetensors; a hub id: nothing offline
                except FileNotFoundError as exc:
                    raise ValueError(f"config key '{slot_key}.path': {exc}") from None

    def check_judges(self) -> None:
        """Every required judge is named (called before scoring)."""
        for slot in self.judge_slots:
            check_judge_entry(self.name, slot.key, self.options[slot.key], required=slot.required)

    def eligible(self, score: float) -> bool:
        return math.isfinite(score)

    def ignore_budget(self) -> bool:
        """True: keep every eligible sample whatever the budget (a threshold rule)."""
        return False

    def plan_epoch(self, epoch: int, num_epochs: int, data: DatasetInfo) -> EpochPlan:
        scores = require_static_scores(self.name, data)
        n = len(data)
        eligible = [i for i in range(n) if self.eligible(scores[i])]
        filter_ignored = not eligible
        if filter_ignored:
            eligible = [i for i in range(n) if math.isfinite(scores[i])] or list(range(n))
        k = len(eligible) if self.ignore_budget() and not filter_ignored else epoch_keep_count(n, self.budget.sample_ratio)
        ranked = [scores[i] if math.isfinite(scores[i]) else -math.inf for i in eligible]
        kept = sorted(eligible[j] for j in keep_by_score(ranked, k, largest=True))
        trace = {"epoch_total": n, "epoch_kept": len(kept), "eligible": 0 if filter_ignored else len(eligible),
                 "filter_ignored": filter_ignored}
        return EpochPlan(kept, {}, trace)
