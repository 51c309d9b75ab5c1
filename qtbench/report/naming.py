"""Budget and method labels of the report: one definition each.

* a budget ``s<r_s>-t<r_t>`` splits into exact decimal strings
  (:func:`split_budget`) and reads ``25%×50%`` (:func:`budget_label`);
* a result row's method family is :func:`qtbench.methods.registry.method_family`
  (``full``, ``sample``, ``token``, ``pair``, ``joint``), plus
  ``base`` for a base model's record and ``other`` for a name the registry no
  longer knows (:func:`row_family`);
* the main table's row groups (:data:`GROUPS`) merge pairs and joint methods.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from qtbench.config import multiply, parse_budget, ratio_str
from qtbench.methods.registry import method_family

#: Row groups of the main table, in the paper's order: (key, label).  ``joint``
#: holds the (sample, token) pairs and Q-Tuning, as the paper's bottom block.
GROUPS = (("base", "Zero-shot"), ("full", "Full data"), ("sample", "Sample-level"),
          ("token", "Token-level"), ("joint", "Sample + token"), ("other", "Other"))
GROUP_LABEL = dict(GROUPS)
GROUP_RANK = {key: i for i, (key, _) in enumerate(GROUPS)}


def split_budget(budget: Any) -> tuple[str, str, str] | None:
    """``"s0.25-t0.5"`` -> ``("0.25", "0.5", "0.125")`` (decimal strings, exact);
    ``None`` for a base model's record."""
    if budget is None or (isinstance(budget, float) and math.isnan(budget)) or budget == "":
        return None
    parse_budget(str(budget))  # validates
    r_s, _, r_t = str(budget)[1:].partition("-t")
    r_s, r_t = ratio_str(r_s), ratio_str(r_t)
    return r_s, r_t, multiply(r_s, r_t)


def percent(ratio: str | float | None) -> str:
    """``"0.125"`` -> ``"12.5%"`` (no float noise)."""
    if ratio is None or ratio == "":
        return ""
    text = format((Decimal(str(ratio)) * 100).normalize(), "f")
    return f"{text}%"


def budget_label(budget: Any) -> str:
    """``"s0.25-t0.5"`` -> ``"25%×50%"``; ``""`` for a base model."""
    parts = split_budget(budget)
    return "" if parts is None else f"{percent(parts[0])}×{percent(parts[1])}"


def row_family(method: str) -> str:
    """The family of a result row's method: :func:`qtbench.methods.registry.method_family` (``full``, ``sample``, ``token``, ``pair``, ``joint``), ``base``
    for a base model's record, ``other`` for a name the registry does not know
    (an old result)."""
    if method == "base":
        return "base"
    try:
        return method_family(method)
    except ValueError:
        return "other"


def family_group(family: str) -> str:
    """The main table's row group of a family: pairs and joint methods share one."""
    return "joint" if family in ("pair", "joint") else family


def method_group(method: str) -> str:
    """The main table's row group of a method (:func:`row_family`, :func:`family_group`)."""
    return family_group(row_family(method))
