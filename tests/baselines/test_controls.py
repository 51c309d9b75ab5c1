"""The ground-truth controls (oracle, anti_oracle) on a hand-built meta file.

Eight records; labels written by hand:
  0 clean, 1 random, 2 clean, 3 truncated, 4 wrong_answer, 5 clean, 6 duplicate (of 0), 7 clean
so clean = {0, 2, 5, 7} and noise + duplicates = {1, 3, 4, 6}.  k = max(1, round(8 * r_s)):
r_s = 1 -> 8, 0.5 -> 4, 0.25 -> 2."""

from __future__ import annotations

import json

import pytest

from qtbench.config import ConfigError, validate_config
from qtbench.data.sources import LoadReport
from qtbench.methods.base import Budget, DatasetInfo
from qtbench.methods.registry import SAMPLE_PRUNERS, build_method, load_registry, uses_ground_truth
from qtbench.train.loop import check_ground_truth, record_labels, train
from qtbench.world.labels import labels_for_records

load_registry()

META = [
    {"index": 0, "family": "fact_covered", "noise": None, "duplicate_of": None, "covered": True},
    {"index": 1, "family": "math", "noise": "random", "duplicate_of": None, "covered": False},
    {"index": 2, "family": "reading", "noise": None, "duplicate_of": None, "covered": False},
    {"index": 3, "family": "math", "noise": "truncated", "duplicate_of": None, "covered": False},
    {"index": 4, "family": "fact_covered", "noise": "wrong_answer", "duplicate_of": None, "covered": True},
    {"index": 5, "family": "two_hop", "noise": None, "duplicate_of": None, "covered": True},
    {"index": 6, "family": "fact_covered", "noise": None, "duplicate_of": 0, "covered": True},
    {"index": 7, "family": "math", "noise": None, "duplicate_of": None, "covered": False},
]
LABELS = ["clean", "random", "clean", "truncated", "wrong_answer", "clean", "duplicate", "clean"]
CLEAN, BAD = {0, 2, 5, 7}, {1, 3, 4, 6}


def info(labels=LABELS):
    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(8)]
    return DatasetInfo(records, [2] * 8, None, labels)


def plan(name, r_s, epoch=0, seed=0, labels=LABELS):
    pruner = SAMPLE_PRUNERS[name](Budget(r_s), {}, seed)
    return pruner.plan_epoch(epoch, 2, info(labels)).indices


def write_meta(path, rows=META):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_from_a_meta_file(tmp_path):
    assert labels_for_records(META, list(range(8)), "m.jsonl") == LABELS
    # the loader skipped raw record 2 and cut the file after 6: labels follow the kept positions
    report = LoadReport("d.jsonl", total=6, kept=5, bad=[(2, "empty response")])
    assert record_labels(write_meta(tmp_path / "m.jsonl"), report, max_records=6) == \
        ["clean", "random", "truncated", "wrong_answer", "clean"]


def test_oracle_at_full_size_trains_on_every_clean_record():
    assert plan("oracle", 1.0) == [0, 2, 5, 7]
    assert plan("oracle", 1.0, epoch=1, seed=3) == [0, 2, 5, 7]


def test_oracle_at_half_is_exactly_the_clean_records():
    assert plan("oracle", 0.5) == [0, 2, 5, 7]


def test_oracle_at_a_quarter_is_a_seeded_random_clean_pair():
    draws = {tuple(plan("oracle", 0.25, epoch=e, seed=s)) for e in range(4) for s in range(4)}
    assert all(len(d) == 2 and set(d) <= CLEAN for d in draws)
    assert plan("oracle", 0.25, epoch=1, seed=2) == plan("oracle", 0.25, epoch=1, seed=2)  # reproducible
    assert len(draws) > 1  # a fresh subset per (seed, epoch), as `random` in epoch mode
    assert set().union(*draws) == CLEAN


def test_anti_oracle_takes_noise_and_duplicates_first():
    assert plan("anti_oracle", 1.0) == list(range(8))  # every record, as full
    assert plan("anti_oracle", 0.5) == [1, 3, 4, 6]
    quarter = {tuple(plan("anti_oracle", 0.25, epoch=e, seed=s)) for e in range(4) for s in range(4)}
    assert all(len(d) == 2 and set(d) <= BAD for d in quarter)
    assert set().union(*quarter) == BAD
    # r_s = 0.75 -> k = 6: all four bad records, then two clean ones at random
    three_quarters = plan("anti_oracle", 0.75)
    assert len(three_quarters) == 6 and BAD < set(three_quarters) and len(set(three_quarters) & CLEAN) == 2


def test_controls_declare_ground_truth():
    assert uses_ground_truth("oracle") and uses_ground_truth("anti_oracle")
    assert not uses_ground_truth("random+random") and not uses_ground_truth("q_tuning") and not uses_ground_truth("full")
    assert build_method("oracle", Budget(0.5)).uses_ground_truth
    assert not build_method("random", Budget(0.5)).uses_ground_truth


def test_a_control_without_labels_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"'oracle'.*sft_meta\.jsonl"):
        plan("oracle", 0.5, labels=None)
    method = build_method("anti_oracle", Budget(0.5))
    with pytest.raises(ValueError, match=r"'anti_oracle'.*--meta"):
        check_ground_truth("anti_oracle", method, None)
    with pytest.raises(FileNotFoundError, match=r"'anti_oracle'.*nope\.jsonl"):
        check_ground_truth("anti_oracle", method, tmp_path / "nope.jsonl")
    check_ground_truth("random", build_method("random", Budget(0.5)), None)  # not a control: no meta needed


def test_a_meta_file_of_other_data_is_a_clear_error(tmp_path):
    meta = write_meta(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"m\.jsonl: 8 metadata rows for 9 records"):
        record_labels(meta, LoadReport("d.jsonl", total=9, kept=9))
    with pytest.raises(ValueError, match=r"m\.jsonl: 8 metadata rows for 6 records"):
        record_labels(meta, LoadReport("d.jsonl", total=6, kept=6))  # no max_records cut: a different file
    with pytest.raises(ValueError, match=r"record 1: missing key"):
        labels_for_records([{"index": 0, "noise": None, "duplicate_of": None}, {"index": 1}], [0, 1], "m.jsonl")


def test_the_config_refuses_a_control_on_data_without_world_labels():
    config = {"experiment": "x", "models": {"m": {"path": "some/model"}}, "data": {"source": "tatsu-lab/alpaca"},
              "methods": ["full", "oracle"], "budgets": [{"r_s": 0.25, "r_t": 0.5}], "seeds": [0],
              "eval": {"tasks": [{"name": "arc_easy"}]}}
    with pytest.raises(ConfigError, match=r"methods\[1\].*'oracle'.*ground-truth.*tatsu-lab/alpaca"):
        validate_config(config)
    validate_config({**config, "data": {"source": "world"}})


def test_oracle_trains_on_the_clean_records_only(tiny_model_dir, tmp_path):
    from tests.conftest import make_records
    from tests.train.test_loop import run_config

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_records(8)))
    meta = write_meta(tmp_path / "sft_meta.jsonl")
    out = tmp_path / "ckpt"
    summary = train(run_config("oracle", r_s="1"), out, str(tiny_model_dir), str(data), progress=False, meta=str(meta))
    assert summary["samples_trained"] == 4  # the four clean records, one epoch
    rows = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert rows[0]["epoch_plan"]["id"] == [0, 2, 5, 7]
    trained = sorted(i for r in rows for i, k in zip(r["samples"]["id"], r["samples"]["kept"]) if k)
    assert trained == [0, 2, 5, 7]
    with pytest.raises(ValueError, match="'oracle'.*--meta"):
        train(run_config("oracle", r_s="1"), tmp_path / "ckpt2", str(tiny_model_dir), str(data), progress=False)
