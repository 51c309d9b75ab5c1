"""Budget and method labels of the report: one definition each.

* a budget ``s<r_s>-t<r_t>`` splits into exact decimal strings
  (:func:`split_budget`) and reads ``25%×50%`` (:func:`budget_label`);
* a result row's method family is :func:`qtbench.methods.registry.method_family`
  (``full``, ``sample``, ``token``, ``pair``, ``joint``), plus
  ``base`` for a base model's record and ``other`` for a name the registry no
  longer knows (:func:`row_family`);
* the main table's row groups (:data:`GROUPS`) merge pairs and joint methods;
  methods that read ground-truth labels (:func:`qtbench.methods.registry.uses_ground_truth`)
  are *controls*, in their own group (:func:`row_group`);
* a variant (config ``variants``) is shown under its base method with the
  options that differ (:func:`base_method`, :func:`row_options`), a run that
  uses InfoBatch says which form it ran (:func:`infobatch_form`), and a run whose
  judge-scored pruner (Alpagasus, DEITA, DS2) scores with a stand-in judge
  (option ``stand_in: true``, e.g. the world's tiny base model) says so
  (:func:`judge_note`).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Mapping

from qtbench.config import multiply, parse_budget, ratio_str
from qtbench.methods.registry import default_options, describe_variant, method_family, part_options, resolve_method
from qtbench.methods.registry import uses_ground_truth

#: Row groups of the main table, in the paper's order: (key, label).  ``joint``
#: holds the (sample, token) pairs and Q-Tuning, as the paper's bottom block.
GROUPS = (("base", "Zero-shot"), ("full", "Full data"), ("sample", "Sample-level"),
          ("token", "Token-level"), ("joint", "Sample + token"), ("controls", "Controls (use ground-truth labels)"),
          ("other", "Other"))
GROUP_LABEL = dict(GROUPS)
GROUP_RANK = {key: i for i, (key, _) in enumerate(GROUPS)}

#: Groups whose rows are never marked best: the base model (not trained) and the
#: controls (they read the labels no data-selection method may read).
NEVER_BEST = frozenset({"base", "controls"})


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


def row_family(method: str, variants: Mapping[str, Any] | None = None) -> str:
    """The family of a result row's method: :func:`qtbench.methods.registry.method_family` (``full``, ``sample``, ``token``, ``pair``, ``joint``; a
    variant has its base method's), ``base`` for a base model's record,
    ``other`` for a name the registry does not know (an old result)."""
    if method == "base":
        return "base"
    try:
        return method_family(method, variants)
    except ValueError:
        return "other"


def family_group(family: str) -> str:
    """The main table's row group of a family: pairs and joint methods share one."""
    return "joint" if family in ("pair", "joint") else family


def method_group(method: str, variants: Mapping[str, Any] | None = None) -> str:
    """The main table's row group of a method (:func:`row_group`)."""
    return row_group(method, variants)


def row_group(method: str, variants: Mapping[str, Any] | None = None) -> str:
    """The main table's row group of a result row: ``controls`` for a method
    that reads ground-truth labels, else the group of its family."""
    family = row_family(method, variants)
    if family not in ("base", "other") and uses_ground_truth(method, variants):
        return "controls"
    return family_group(family)


def base_method(method: str, variants: Mapping[str, Any] | None = None) -> str:
    """The registered method a row's method name runs (``q_tuning_l0`` -> ``q_tuning``,
    ``random+ppl_lowest`` -> ``random+ppl``); the name itself when it is no variant
    or the registry does not know it."""
    if method == "base":
        return method
    try:
        return resolve_method(method, variants).base
    except ValueError:
        return method


def infobatch_form(method: str, method_options: Mapping[str, Any] | None = None,
                   variants: Mapping[str, Any] | None = None) -> str:
    """Which InfoBatch a run used: ``"budget forced"`` (the Q-Tuning authors'
    code: exactly ``int(r_s N)`` records every epoch, ``budget_forced: true``),
    ``"paper form"`` (the InfoBatch paper's own form: prune a share of the
    well-learned records, annealed), or ``""`` when the method does not use InfoBatch."""
    try:
        resolved = resolve_method(method, variants)
        options = part_options(method, method_options, variants)
    except ValueError:
        return ""
    for role, written in resolved.parts.items():
        variant = resolved.variants.get(written)
        if (variant.method if variant else written) == "infobatch":
            forced = {**default_options("infobatch"), **options.get(role, {})}.get("budget_forced", False)
            return "budget forced" if forced else "paper form"
    return ""


def judge_note(method: str, method_options: Mapping[str, Any] | None = None,
               variants: Mapping[str, Any] | None = None) -> str:
    """``"stand-in judge"`` when a part of the run is a judge-scored pruner whose
    options say ``stand_in: true`` (its judge substitutes for the paper's, e.g.
    the world's tiny base model for ChatGPT), else ``""``."""
    try:
        resolved = resolve_method(method, variants)
        options = part_options(method, method_options, variants)
    except ValueError:
        return ""
    for role, cls in resolved.classes().items():
        if getattr(cls, "judge_slots", None) and options.get(role, {}).get("stand_in") is True:
            return "stand-in judge"
    return ""


def row_options(method: str, method_options: Mapping[str, Any] | None = None,
                variants: Mapping[str, Any] | None = None) -> str:
    """What a row's options column shows: for a variant, ``variant of <base>:``
    and the options that differ from its base method's run
    (:func:`qtbench.methods.registry.describe_variant`); for a run that uses
    InfoBatch, its form (:func:`infobatch_form`); for a run scored by a stand-in
    judge, ``stand-in judge`` (:func:`judge_note`).  ``""`` otherwise."""
    if method == "base":
        return ""
    try:
        base, differing = describe_variant(method, {"variants": variants or {}, "method_options": method_options or {}})
    except ValueError:
        return ""
    parts = []
    if base != method:
        options = ", ".join(f"{key}={_option_text(value)}" for key, value in differing.items())
        parts.append(f"variant of {base}" + (f": {options}" if options else " (same options)"))
    form = infobatch_form(method, method_options, variants)
    if form:
        parts.append(f"InfoBatch: {form}")
    note = judge_note(method, method_options, variants)
    if note:
        parts.append(note)
    return "; ".join(parts)


def _option_text(value: Any) -> str:
    """An option value as it reads in YAML (``true``, ``0.5``, ``paper_text``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)
