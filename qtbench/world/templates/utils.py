"""Custom metrics for the world's lm-eval tasks (copied next to the task YAMLs).

lm-eval resolves ``!function utils.<name>`` relative to the YAML file, so this
module must stay self-contained (standard library only).  SQuAD scoring is
re-implemented here because lm-eval's ``squadv2`` task loads its metric with
``evaluate.load("squad_v2")``, which needs the network.  The normalisation and
token F1 follow the official SQuAD v1.1 evaluation script.
"""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles (a/an/the), squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Token-overlap F1 between normalised prediction and truth (SQuAD v1.1)."""
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    if not pred_tokens or not truth_tokens:
        # both empty -> 1, one empty -> 0 (the SQuAD v2 convention)
        return float(pred_tokens == truth_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def process_results_squad(doc: dict, results: list) -> dict:
    """Best exact match and F1 of the generation over the gold answers."""
    prediction = results[0] if results else ""
    if isinstance(prediction, (list, tuple)):  # defensive: filtered results may be nested
        prediction = prediction[0] if prediction else ""
    prediction = str(prediction).split("\n")[0].strip()
    answers = doc["answers"] if isinstance(doc["answers"], list) else [doc["answers"]]
    return {
        "exact_match": max(exact_match_score(prediction, a) for a in answers),
        "f1": max(f1_score(prediction, a) for a in answers),
    }
