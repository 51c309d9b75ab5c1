"""SFT data adapters: every supported format becomes Alpaca records.

Formats (``data.format``; ``auto`` detects per record):

* ``alpaca`` - ``instruction``, optional ``input``, ``output`` (GPTeacher's
  ``response`` is accepted for ``output``);
* ``messages`` - ShareGPT/OpenAI style: ``messages`` (``role``/``content``) or
  ``conversations`` (``from``/``value``); the last assistant turn is the
  response, the turns before it (system and user) make the instruction;
* ``prompt_response`` - ``prompt``/``response`` (also ``question``/``answer``,
  as GSM8K stores it).

Sources: a local ``.json`` (array), ``.jsonl`` or ``.parquet`` file, or a
Hugging Face data set id (with ``split`` and ``revision``).  A bad record
(missing field, wrong type, empty response) is reported with its index and
reason; ``on_bad_record: skip`` drops it, ``fail`` stops with the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from qtbench.io import iter_jsonl_numbered

FORMATS = ("alpaca", "messages", "prompt_response")


class DataError(ValueError):
    """A data file or record that cannot be used; the message names it."""


@dataclass
class LoadReport:
    """What happened to the records of one source."""

    source: str
    total: int = 0
    kept: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "bad": len(self.bad), "bad_records": [{"index": i, "reason": r} for i, r in self.bad]}


def read_raw(source: str, split: str = "train", revision: str | None = None) -> list[Any]:
    """Raw records of a local file or a Hugging Face data set."""
    path = Path(source)
    if path.suffix in (".json", ".jsonl", ".parquet") or path.exists():
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        try:
            if path.suffix == ".parquet":
                import pandas as pd

                return pd.read_parquet(path).to_dict(orient="records")
            if path.suffix == ".jsonl":
                try:  # a line that is not an object is a bad record, reported with its index below
                    return [row for _, row in iter_jsonl_numbered(path, objects_only=False)]
                except ValueError as exc:  # names the file and the line
                    raise DataError(str(exc)) from None
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            for key in ("data", "train", "records"):
                if isinstance(data.get(key), list):
                    return data[key]
            raise DataError(f"{path}: a JSON object without a list of records (expected an array)")
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records")
        return data
    import datasets

    return list(datasets.load_dataset(source, split=split, revision=revision))


def _text(record: Mapping[str, Any], key: str, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DataError(f"missing field {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"field {key!r} is {type(value).__name__}, expected a string")
    return value


def detect_format(record: Mapping[str, Any]) -> str:
    if "messages" in record or "conversations" in record:
        return "messages"
    if "instruction" in record:
        return "alpaca"
    if ("prompt" in record and "response" in record) or ("question" in record and "answer" in record):
        return "prompt_response"
    raise DataError(f"cannot tell the format from the fields {sorted(record)[:8]}")


def to_alpaca(record: Any, fmt: str = "auto") -> dict[str, str]:
    """One raw record as ``{instruction, input, output}``; raises DataError."""
    if not isinstance(record, Mapping):
        raise DataError(f"record is {type(record).__name__}, expected an object")
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "alpaca":
        output_key = "response" if "response" in record and "output" not in record else "output"
        out = {"instruction": _text(record, "instruction"), "input": _text(record, "input", required=False),
               "output": _text(record, output_key)}
    elif fmt == "prompt_response":
        prompt_key, response_key = ("prompt", "response") if "prompt" in record else ("question", "answer")
        out = {"instruction": _text(record, prompt_key), "input": "", "output": _text(record, response_key)}
    elif fmt == "messages":
        out = _from_messages(record)
    else:
        raise DataError(f"unknown data format {fmt!r}; expected one of {FORMATS} or auto")
    if not out["output"].strip():
        raise DataError("empty response")
    if not out["instruction"].strip():
        raise DataError("empty instruction")
    return out


_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "model": "assistant", "bot": "assistant"}


def _from_messages(record: Mapping[str, Any]) -> dict[str, str]:
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list) or not turns:
        raise DataError("field 'messages'/'conversations' must be a non-empty list")
    normalised = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DataError(f"turn {i} is not an object")
        role = _ROLE.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise DataError(f"turn {i} needs a known role and string content")
        normalised.append((role, content))
    last = max((i for i, (role, _) in enumerate(normalised) if role == "assistant"), default=None)
    if last is None:
        raise DataError("no assistant turn")
    context = [content for role, content in normalised[:last] if role in ("system", "user", "assistant")]
    if not context:
        raise DataError("no user turn before the response")
    return {"instruction": "\n\n".join(context), "input": "", "output": normalised[last][1]}


def load_sft_records(
    source: str, fmt: str = "auto", split: str = "train", revision: str | None = None,
    on_bad_record: str = "skip", max_records: int | None = None,
) -> tuple[list[dict[str, str]], LoadReport]:
    """Alpaca records of ``source`` and the report of what was dropped."""
    raw = read_raw(source, split, revision)
    if max_records is not None:
        raw = raw[:max_records]
    report = LoadReport(source=str(source), total=len(raw))
    records = []
    for index, item in enumerate(raw):
        try:
            records.append(to_alpaca(item, fmt))
        except DataError as exc:
            report.bad.append((index, str(exc)))
    report.kept = len(records)
    if report.bad and on_bad_record == "fail":
        shown = "; ".join(f"record {i}: {r}" for i, r in report.bad[:5])
        raise DataError(f"{source}: {len(report.bad)} bad record(s) ({shown})")
    if not records:
        raise DataError(f"{source}: no usable records ({len(report.bad)} bad of {report.total})")
    return records, report


def load_configured_records(source: str, data_cfg: Mapping[str, Any] | None = None
                            ) -> tuple[list[dict[str, str]], LoadReport]:
    """:func:`load_sft_records` of ``source``, read as the config's ``data``
    section says (format, split, revision, bad-record policy, cap): training,
    static scoring and LESS's warm-up all read through here, so they see the
    same records."""
    cfg = dict(data_cfg or {})
    return load_sft_records(source, cfg.get("format", "auto"), cfg.get("split", "train"), cfg.get("revision"),
                            cfg.get("on_bad_record", "skip"), cfg.get("max_records"))
