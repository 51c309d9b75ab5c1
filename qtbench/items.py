"""Per-item outcomes of one evaluation: what makes paired comparisons possible.

Beside each evaluation record ``<name>.json`` the evaluate step writes
``<name>.items.jsonl``: one JSON object per (task, document, filter) with the
per-document metric values that lm-eval computes before aggregating them::

    {"task": "world_arc_easy", "doc_id": 17, "filter": "none", "metrics": {"acc": 1.0, "acc_norm": 0.0}}

Two checkpoints evaluated on the same tasks then share ``doc_id`` s, so their
scores can be compared item by item (:mod:`qtbench.report.intervals`).  The
evaluation writes them (:func:`items_from_samples`, :func:`write_items`), the
report reads them (:func:`read_items`).

Only metrics whose per-document value is a number are kept: a task's score is
then the mean of its items' values (lm-eval's ``mean`` aggregation).  Metrics
whose per-document "value" is an argument to a corpus-level aggregation (BLEU's
``(reference, prediction)`` pairs, for instance) have no item-level mean and are
left out of the file; :func:`qtbench.report.compare.load_group` checks that the
items' mean reproduces the record's score, so such a metric is refused there
rather than silently mis-scored.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from qtbench.io import iter_jsonl_numbered, read_json, write_text_atomic

#: Suffix of the per-item file written beside an evaluation record ``<name>.json``.
ITEMS_SUFFIX = ".items.jsonl"

#: Columns of :func:`read_items`' frame.
ITEM_COLUMNS = ["task", "doc_id", "metric", "value"]

#: Keys of an lm-eval 0.4 logged sample that are not metrics (used when a sample
#: lacks the ``metrics`` list that lm-eval >= 0.4.3 adds).
_SAMPLE_FIELDS = frozenset({"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                            "doc_hash", "prompt_hash", "target_hash"})


class MissingItemsError(FileNotFoundError):
    """An evaluation record has no per-item file (it predates per-item records)."""


def items_path(eval_path: str | Path) -> Path:
    """``.../seed0.json`` -> ``.../seed0.items.jsonl`` (an items path is returned as is)."""
    path = Path(eval_path)
    if path.name.endswith(ITEMS_SUFFIX):
        return path
    if path.suffix != ".json":
        raise ValueError(f"{path}: expected an evaluation record ending in .json")
    return path.with_name(path.name[: -len(".json")] + ITEMS_SUFFIX)


def eval_record_path(path: str | Path) -> Path:
    """The evaluation record an items file belongs to (a record path is returned as is)."""
    path = Path(path)
    if path.name.endswith(ITEMS_SUFFIX):
        return path.with_name(path.name[: -len(ITEMS_SUFFIX)] + ".json")
    return path


def rebuild_hint(eval_path: str | Path) -> str:
    """How to rebuild an evaluation record together with its per-item file (no retraining)."""
    record = eval_record_path(eval_path)
    return (f"rebuild the evaluations (checkpoints are reused, nothing is retrained) with "
            f"`snakemake --forcerun evaluate evaluate_base` (plus the --configfile you ran with), "
            f"or delete {record} and run snakemake again")


def items_from_samples(samples: Mapping[str, Iterable[Mapping[str, Any]]], generations: bool = False
                       ) -> list[dict[str, Any]]:
    """Rows of an items file from ``lm_eval.simple_evaluate(..., log_samples=True)["samples"]``.

    ``samples`` maps each task name to lm-eval's logged samples: dicts with
    ``doc_id``, ``filter`` and one key per metric holding that document's value
    (lm-eval >= 0.4.3 also lists the metric names under ``metrics``).  Returns
    ``[{"task", "doc_id", "filter", "metrics": {name: value}}]`` sorted by task,
    filter and doc id, values as floats (booleans become 0/1).  Per-document
    values that are not numbers (arguments to corpus-level aggregations) are
    left out; documents and prompts are never copied, generations only with
    ``generations`` (``"response"``: the filtered response(s)).  Concatenate
    the rows of several ``simple_evaluate`` calls (one per shot count) freely:
    their tasks differ."""
    rows = []
    for task, logged in samples.items():
        for index, sample in enumerate(logged):
            where = f"lm-eval sample {index} of task {task!r}"
            for key in ("doc_id", "filter"):
                if key not in sample:
                    raise ValueError(f"{where} has no {key!r} key (lm-eval >= 0.4.3 logs it; "
                                     f"keys: {sorted(sample)})")
            names = sample.get("metrics")
            if not isinstance(names, (list, tuple)):
                names = [key for key in sample if key not in _SAMPLE_FIELDS]
            metrics = {}
            for name in names:
                value = _number(sample.get(name))
                if value is not None:
                    metrics[str(name)] = value
            row = {"task": str(task), "doc_id": int(sample["doc_id"]), "filter": str(sample["filter"]),
                   "metrics": metrics}
            if generations:
                resps = sample.get("filtered_resps")
                row["response"] = resps[0] if isinstance(resps, list) and len(resps) == 1 else resps
            rows.append(row)
    rows.sort(key=lambda r: (r["task"], r["filter"], r["doc_id"]))
    return rows


def _number(value: Any) -> float | None:
    """A per-document metric value as a float; ``None`` when it is not a number."""
    if isinstance(value, (bool, np.bool_, numbers.Real)):
        return float(value)
    return None


def write_items(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write items rows (as :func:`items_from_samples` returns them) as JSON lines, atomically."""
    text = "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows)
    return write_text_atomic(path, text)


def read_items(path: str | Path) -> pd.DataFrame:
    """The per-item outcomes of one evaluation as a tidy frame.

    ``path`` is the evaluation record (``<name>.json``) or its items file.
    Columns: ``task``, ``doc_id`` (int), ``metric`` in lm-eval's
    ``"<metric>,<filter>"`` form (as in the record's ``scores``), ``value``
    (float, the metric's raw value, not x100).  A missing items file raises
    :class:`MissingItemsError` naming it and the command that rebuilds it; a
    malformed line, a non-finite value or a repeated (task, doc_id, metric)
    raises ``ValueError`` naming the file and line."""
    path = items_path(path)
    if not path.exists():
        raise MissingItemsError(f"{path} does not exist: {eval_record_path(path)} was written without per-item "
                                f"outcomes (by an older qtbench?); {rebuild_hint(path)}")
    rows = []
    for number, row in iter_jsonl_numbered(path):
        rows.extend(_parse_row(path, number, row))
    frame = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    frame = frame.astype({"task": object, "doc_id": "int64", "metric": object, "value": "float64"})
    duplicated = frame.duplicated(["task", "doc_id", "metric"], keep="first")
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ValueError(f"{path}: task {first['task']!r}, doc_id {first['doc_id']}, metric {first['metric']!r} "
                         f"appears more than once")
    return frame


def _parse_row(path: Path, number: int, row: dict) -> list[tuple[str, int, str, float]]:
    where = f"{path}, line {number}"
    for key, kind in (("task", str), ("doc_id", int), ("filter", str), ("metrics", dict)):
        if key not in row:
            raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise ValueError(f"{where}: {key!r} must be a {kind.__name__}, got {row[key]!r}")
    out = []
    for name, value in row["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {name!r} has value {value!r}; expected a finite number")
        out.append((row["task"], row["doc_id"], f"{name},{row['filter']}", float(value)))
    return out


#: Tolerance (points) between the mean of a record's items and its score.
SCORE_TOLERANCE = 1e-6


def record_item_scores(path: str | Path, metrics: Mapping[str, str]) -> dict[str, pd.Series]:
    """Per task, one record's per-item values of its metric in points (index: doc id),
    checked against the record's score: a metric that is not a mean over items, or
    an items file from another evaluation, is refused with the file named."""
    path = Path(path)
    record = read_json(path)
    items = read_items(path)
    out = {}
    for task, metric in metrics.items():
        score = (record.get("scores") or {}).get(task, {}).get(metric)
        if score is None:
            raise ValueError(f"{path}: no score for task {task!r}, metric {metric!r}")
        values = items.loc[(items["task"] == task) & (items["metric"] == metric)].set_index("doc_id")["value"]
        if values.empty:
            raise ValueError(f"{path}: its items file has no rows for task {task!r}, metric {metric!r}")
        values = values.sort_index() * 100.0
        if abs(values.mean() - float(score["value"]) * 100.0) > SCORE_TOLERANCE:
            raise ValueError(f"{path}: task {task!r}, metric {metric!r}: the mean over its {len(values)} items is "
                             f"{values.mean():.6f} points but the record says {float(score['value']) * 100.0:.6f}; "
                             f"either the metric is not a mean over items (choose another with eval.tasks[].metric) "
                             f"or the items file comes from another evaluation ({rebuild_hint(path)})")
        out[task] = values.rename(None)
    return out
