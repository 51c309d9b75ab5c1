"""Per-item records: lm-eval's logged samples -> items file -> tidy frame, and the errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qtbench.items import (
    ITEM_COLUMNS,
    MissingItemsError,
    eval_record_path,
    items_from_samples,
    items_path,
    read_items,
    write_items,
)


def sample(doc_id, filt, **metrics):
    """A logged sample shaped as lm-eval 0.4.13's evaluator builds it (evaluator.py, log_samples)."""
    return {"doc_id": doc_id, "doc": {"question": "q"}, "target": 0, "arguments": [("ctx", " a")],
            "resps": [[(-0.5, False)]], "filtered_resps": [(-0.5, False)], "filter": filt,
            "metrics": list(metrics), "doc_hash": "h", "prompt_hash": "p", "target_hash": "t", **metrics}


def test_items_from_samples_keeps_numbers_only_and_sorts():
    samples = {
        "world_arc_easy": [sample(2, "none", acc=True, acc_norm=np.float64(0.0)),
                           sample(0, "none", acc=np.bool_(False), acc_norm=1)],
        "world_gsm8k": [sample(5, "strict-match", exact_match=np.float64(1.0), bleu=("ref", "pred"))],
    }
    rows = items_from_samples(samples)
    assert rows == [
        {"task": "world_arc_easy", "doc_id": 0, "filter": "none", "metrics": {"acc": 0.0, "acc_norm": 1.0}},
        {"task": "world_arc_easy", "doc_id": 2, "filter": "none", "metrics": {"acc": 1.0, "acc_norm": 0.0}},
        {"task": "world_gsm8k", "doc_id": 5, "filter": "strict-match", "metrics": {"exact_match": 1.0}},
    ]
    assert all(type(v) is float for row in rows for v in row["metrics"].values())
    json.dumps(rows)  # plain JSON: no numpy scalars, no documents


def test_items_from_samples_without_metrics_list_uses_the_other_keys():
    old = sample(3, "none", acc=1.0)
    del old["metrics"]
    assert items_from_samples({"t": [old]}) == [{"task": "t", "doc_id": 3, "filter": "none", "metrics": {"acc": 1.0}}]


def test_items_from_samples_names_a_missing_key():
    bad = sample(0, "none", acc=1.0)
    del bad["filter"]
    with pytest.raises(ValueError, match=r"sample 0 of task 't'.*'filter'"):
        items_from_samples({"t": [bad]})


def test_write_and_read_items(tmp_path):
    record = tmp_path / "seed0.json"
    rows = [{"task": "world_arc_easy", "doc_id": 17, "filter": "none", "metrics": {"acc": 1.0, "acc_norm": 0.0}},
            {"task": "world_gsm8k", "doc_id": 3, "filter": "strict-match", "metrics": {"exact_match": 0.0}}]
    written = write_items(items_path(record), rows)
    assert written == tmp_path / "seed0.items.jsonl"
    assert eval_record_path(written) == record
    frame = read_items(record)  # the record's path finds its items file
    assert list(frame.columns) == ITEM_COLUMNS
    assert frame.values.tolist() == [["world_arc_easy", 17, "acc,none", 1.0],
                                     ["world_arc_easy", 17, "acc_norm,none", 0.0],
                                     ["world_gsm8k", 3, "exact_match,strict-match", 0.0]]
    assert read_items(written).equals(frame)


def test_missing_items_file_names_it_and_the_rebuild_command(tmp_path):
    record = tmp_path / "evals" / "tiny" / "full" / "s1-t1" / "seed0.json"
    with pytest.raises(MissingItemsError) as info:
        read_items(record)
    message = str(info.value)
    assert str(record.with_name("seed0.items.jsonl")) in message
    assert "snakemake --forcerun evaluate evaluate_base" in message
    assert f"delete {record}" in message
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("line, expected", [
    ("{not json", r"line 2 is not valid JSON"),
    ('{"task": "t", "doc_id": "7", "filter": "none", "metrics": {}}', r"line 2: 'doc_id' must be a int"),
    ('{"task": "t", "doc_id": 7, "metrics": {}}', r"line 2: missing key 'filter'"),
    ('{"task": "t", "doc_id": 7, "filter": "none", "metrics": {"acc": NaN}}', r"line 2: metric 'acc' has value nan"),
    ('{"task": "t", "doc_id": 1, "filter": "none", "metrics": {"acc": 0.0}}', r"doc_id 1, metric 'acc,none' appears more"),
])
def test_bad_items_lines_are_named(tmp_path, line, expected):
    path = tmp_path / "base.items.jsonl"
    path.write_text('{"task": "t", "doc_id": 1, "filter": "none", "metrics": {"acc": 1.0}}\n' + line + "\n")
    with pytest.raises(ValueError, match=expected) as info:
        read_items(path)
    assert str(path) in str(info.value)


TASK_MC = """task: t_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

TASK_GEN = """task: t_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(lol)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_items_from_real_lm_eval_samples_reproduce_its_scores(tmp_path, monkeypatch):
    """lm-eval's dummy model on two local tasks: the items' means are lm-eval's scores."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    docs = [{"question": f"q{i}", "choices": ["a", "b", "c"], "label": i % 3, "answer": "lol" if i % 2 else "x"}
            for i in range(6)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "t_mc.yaml").write_text(TASK_MC.format(data=data))
    (tmp_path / "t_gen.yaml").write_text(TASK_GEN.format(data=data))
    out = lm_eval.simple_evaluate(model="dummy", tasks=["t_mc", "t_gen"], log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    record = tmp_path / "seed0.json"
    write_items(items_path(record), items_from_samples(out["samples"]))
    frame = read_items(record)
    assert sorted(frame.groupby(["task", "metric"]).size().items()) == [
        (("t_gen", "exact_match,strict-match"), 6), (("t_mc", "acc,none"), 6)]
    assert sorted(frame["doc_id"].unique().tolist()) == list(range(6))
    means = frame.groupby(["task", "metric"])["value"].mean()
    # the dummy model generates "lol": exact match on the three odd documents
    assert means[("t_gen", "exact_match,strict-match")] == pytest.approx(0.5)
    for (task, metric), mean in means.items():
        assert mean == pytest.approx(float(out["results"][task][metric]))
