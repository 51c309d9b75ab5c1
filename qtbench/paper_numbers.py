"""The paper's reported ablation numbers (arXiv 2509.23873), as reference rows
beside ours.

Source: ``../shared/design/paper.md``, "Reported numbers" (averages over the
five alignment benchmarks, WizardLM; the paper gives no per-task scores for its
ablations).  Each row has the shape of an entry of the main reference table
(``setting``, ``model``, ``budget``, ``method``, task columns, ``avg``; here no
task columns, like that table's best-baseline rows), with ``method`` the name of
the run in ``config/paper_ablations.yaml`` that reproduces it, so that a table
can put the paper's number beside ours.  ``setting`` is ``WizardLM``, the main
table's, whose ``full`` rows (35.36 | 45.84) give the relative changes.

Rows and where they come from:

* quadrant ablation (WizardLM 12.5% x 50%, LLaMA2-7B | Mistral-7B): "drop Q1+Q3
  without token pruning" 34.51 | 46.54 -> ``q_tuning_triage`` (Stage 1 alone; the
  run is at r_t = 100%, so its budget reads 12.5%×100%); "token-prune Q2 and
  Q4" 37.23 | 46.66 -> ``q_tuning_q2q4``.  (Q-Tuning, Q2 only, 37.74 | 46.92 is
  the main table's ``q_tuning`` row.)
* Table 5, the token scorer inside Q2 (Mistral-7B): Rho-1 45.03 ->
  ``q_tuning_rho1``; PPL lambda = 0 45.92 -> ``q_tuning_l0``; reversed PPL 44.86
  -> ``q_tuning_reversed``; PPL lambda = 0.5 46.79 -> ``q_tuning``.  The paper
  does not print Table 5's budget; 46.79 is Q-Tuning's Mistral-7B average at
  25% x 50% in its budget table, so the rows are placed there.
* Q-Tuning at 25% x 50% from the budget table (LLaMA2-7B 36.47, Mistral-7B
  46.79): the lambda = 0.5 point of the sweep.

Not in the source, so not here: the other points of the lambda sweep (0.3, 0.7,
1.0), the token-pruning-alone arm of Fig. 6, and any LLaMA2-7B Table 5 row.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABLATION_REFERENCE", "ablation_reference"]

_SETTING = "WizardLM"

#: (model, budget, method, reported average)
_ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("LLaMA2-7B", "12.5%×100%", "q_tuning_triage", 34.51),
    ("LLaMA2-7B", "12.5%×50%", "q_tuning_q2q4", 37.23),
    ("LLaMA2-7B", "25%×50%", "q_tuning", 36.47),
    ("Mistral-7B", "12.5%×100%", "q_tuning_triage", 46.54),
    ("Mistral-7B", "12.5%×50%", "q_tuning_q2q4", 46.66),
    ("Mistral-7B", "25%×50%", "q_tuning", 46.79),
    ("Mistral-7B", "25%×50%", "q_tuning_rho1", 45.03),
    ("Mistral-7B", "25%×50%", "q_tuning_l0", 45.92),
    ("Mistral-7B", "25%×50%", "q_tuning_reversed", 44.86),
)

ABLATION_REFERENCE: tuple[dict[str, Any], ...] = tuple(
    {"setting": _SETTING, "model": model, "budget": budget, "method": method, "avg": avg}
    for model, budget, method, avg in _ROWS
)


def ablation_reference() -> list[dict[str, Any]]:
    """The ablation rows, fresh dicts in the shape of the main reference table's
    entries (append them to it: ``[*PAPER_REFERENCE, *ablation_reference()]``)."""
    return [dict(row) for row in ABLATION_REFERENCE]
