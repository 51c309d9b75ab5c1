"""qtbench.io's JSON-lines reader: what it returns and how it names a bad line."""

from __future__ import annotations

import pytest

from qtbench.io import iter_jsonl, read_jsonl


def test_read_jsonl_skips_blank_lines_and_keeps_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    # a raw U+2028 inside a string is one line of JSON (str.splitlines would cut it in two)
    path.write_text('{"a": 1}\n\n   \n{"a": 2, "s": "x\u2028y"}\r\n{"a": 3}', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2, "s": "x\u2028y"}, {"a": 3}]
    assert list(iter_jsonl(str(path))) == read_jsonl(path)


def test_read_jsonl_of_an_empty_file_is_empty(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert read_jsonl(path) == []


def test_iter_jsonl_is_lazy_and_names_the_bad_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "kep', encoding="utf-8")
    rows = iter_jsonl(path)
    assert next(rows) == {"step": 0}
    assert next(rows) == {"step": 1}
    with pytest.raises(ValueError, match=r"trace\.jsonl: line 3 is not valid JSON \(truncated\?\)"):
        next(rows)
    with pytest.raises(ValueError, match=r"trace\.jsonl: line 3 is not valid JSON"):
        read_jsonl(path)


def test_read_jsonl_rejects_a_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.jsonl: line 3 is not a JSON object \(got list\)"):
        read_jsonl(path)


def test_read_jsonl_names_a_missing_or_binary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"binary\.jsonl: not UTF-8 text"):
        read_jsonl(binary)
