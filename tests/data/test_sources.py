"""SFT data adapters: every format to Alpaca records, bad records reported exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qtbench.data.batches import IGNORE_INDEX, tokenize_example
from qtbench.data.template import format_prompt
from qtbench.models import load_tokenizer
from qtbench.data.sources import DataError, load_sft_records, to_alpaca
from tests.conftest import SHARED_DATA


def test_plain_template():
    assert format_prompt({"instruction": "Q: capital of Velora?", "input": "", "output": "Tamsin"}) == (
        "Q: capital of Velora?\nAnswer:", " Tamsin")
    assert format_prompt({"instruction": "Read.", "input": "A passage.", "output": "x"})[0] == "Read.\n\nA passage.\nAnswer:"


@pytest.mark.parametrize("raw, expected", [
    ({"instruction": "i", "input": "x", "output": "o"}, {"instruction": "i", "input": "x", "output": "o"}),
    ({"instruction": "i", "input": "", "response": "o"}, {"instruction": "i", "input": "", "output": "o"}),
    ({"prompt": "p", "response": "r"}, {"instruction": "p", "input": "", "output": "r"}),
    ({"question": "q", "answer": "a #### 3"}, {"instruction": "q", "input": "", "output": "a #### 3"}),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "a"}]}, {"instruction": "s\n\nu", "input": "", "output": "a"}),
    ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]},
     {"instruction": "u", "input": "", "output": "a"}),
])
def test_formats(raw, expected):
    assert to_alpaca(raw) == expected


def test_bad_records_are_reported_with_index(tmp_path):
    rows = [
        {"instruction": "ok", "input": "", "output": "fine"},
        {"instruction": "no output"},
        {"instruction": "empty", "output": "   "},
        {"instruction": 3, "output": "wrong type"},
        "not an object",
        {"instruction": "ok again", "output": "fine"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, report = load_sft_records(str(path))
    assert [r["instruction"] for r in records] == ["ok", "ok again"]
    assert report.total == 6 and report.kept == 2
    assert [i for i, _ in report.bad] == [1, 2, 3, 4]
    reasons = dict(report.bad)
    assert "'output'" in reasons[1] and "empty response" in reasons[2] and "int" in reasons[3]
    with pytest.raises(DataError, match=r"4 bad record\(s\).*record 1"):
        load_sft_records(str(path), on_bad_record="fail")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl"):
        load_sft_records(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(DataError, match="bad.jsonl: line 2"):
        load_sft_records(str(bad))
    truncated = tmp_path / "t.json"
    truncated.write_text('[{"instruction": "a"')
    with pytest.raises(DataError, match="t.json"):
        load_sft_records(str(truncated))
    empty = tmp_path / "e.jsonl"
    empty.write_text(json.dumps({"instruction": "a", "output": ""}) + "\n")
    with pytest.raises(DataError, match="no usable records"):
        load_sft_records(str(empty))


def test_parquet_and_json_array(tmp_path):
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.parquet", "d.json"):
        records, report = load_sft_records(str(tmp_path / name), fmt="prompt_response")
        assert [r["output"] for r in records] == ["r1", "r2"] and report.bad == []


def test_response_mask_is_exact(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompt, response = format_prompt({"instruction": "what is 3 plus 4 ?", "output": "7"})
    example = tokenize_example(prompt, response, tokenizer, max_length=64)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1  # + BOS
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
    assert example.input_ids[-1] == tokenizer.eos_token_id
    short = tokenize_example(prompt, response * 30, tokenizer, max_length=n_prompt + 3)
    assert short.truncated and len(short.input_ids) == n_prompt + 3 and short.response_length == 3


SHARED_FILES = [
    ("instruct_cherry_alpaca/cherry_alpaca_5_percent.json", "alpaca", 3111),
    ("instruct_gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "alpaca", 1923),
    ("gsm8k/train.jsonl", "prompt_response", 7473),
]


@pytest.mark.parametrize("name, fmt, count", SHARED_FILES)
def test_real_files(name, fmt, count):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    records, report = load_sft_records(str(path), fmt=fmt)
    assert report.total == count
    assert report.kept + len(report.bad) == count
    assert all(r["output"].strip() for r in records)
    if name.startswith("gsm8k"):
        assert report.bad == [] and records[0]["output"].rstrip().endswith("#### 72")
