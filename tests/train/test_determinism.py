"""Same config and seed => same run, on CPU (issue 7, item 2).

Two short trainings with methods that make pruning decisions from the model's
own statistics must produce the same selections, trace, summary and weights,
bit for bit; two evaluations of one checkpoint the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qtbench.train.loop as train_mod
from qtbench.evaluate import evaluate
from tests.train.test_checkpoint import state_dict, summary_without_time, trace_rows, write_records
from tests.train.test_loop import run_config


def recorded_run(cfg, out: Path, base: Path, data: Path, monkeypatch) -> list[tuple]:
    """Train and return every selection the method made (ids, kept samples, kept tokens, weights)."""
    real_build = train_mod.build_method
    selections: list[tuple] = []

    def build(*args, **kwargs):
        method = real_build(*args, **kwargs)
        real_select = method.select

        def select(stats):
            chosen = real_select(stats)
            selections.append((stats.sample_ids.tolist(), chosen.sample_keep.tolist(),
                               chosen.token_keep.nonzero().tolist(), chosen.sample_weight.tolist()))
            return chosen

        method.select = select
        return method

    monkeypatch.setattr(train_mod, "build_method", build)
    train_mod.train(cfg, out, str(base), str(data), progress=False)
    monkeypatch.undo()
    return selections


@pytest.mark.parametrize("method, r_s, r_t", [("q_tuning", "0.5", "0.5"), ("ppl_sample+ppl", "0.5", "0.5")])
def test_two_runs_are_identical(method, r_s, r_t, tiny_model_dir, tmp_path, monkeypatch):
    data = write_records(tmp_path / "sft.jsonl", 32)
    cfg = run_config(method, r_s, r_t, epochs=2, warmup_ratio=0.1, stats_chunk=64)
    first = recorded_run(cfg, tmp_path / "a", tiny_model_dir, data, monkeypatch)
    second = recorded_run(cfg, tmp_path / "b", tiny_model_dir, data, monkeypatch)

    assert len(first) == 16  # 32 records / 4 per micro-batch x 2 epochs, one selection each
    kept_samples = sum(sum(keep) for _, keep, _, _ in first)
    assert 0 < kept_samples < 32 * 2  # the method did prune, so there are decisions to compare
    assert first == second
    assert trace_rows(tmp_path / "a") == trace_rows(tmp_path / "b")
    assert summary_without_time(tmp_path / "a") == summary_without_time(tmp_path / "b")
    wa, wb = state_dict(tmp_path / "a"), state_dict(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # and the comparison is sharp: another seed orders the data differently
    other = {**cfg, "run": {**cfg["run"], "seed": 1, "run_id": cfg["run"]["run_id"].replace("seed0", "seed1")}}
    assert recorded_run(other, tmp_path / "c", tiny_model_dir, data, monkeypatch) != first


TASK_YAML = """\
task: world_reliability_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"question": f"what is {a} plus {b} ?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)],
             "answer": (a + b) % 3} for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (5, 2), (3, 3), (7, 2)]]
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "world_reliability_mc.yaml").write_text(TASK_YAML.format(data=data.resolve()))
    return folder


EVAL_CFG = {"tasks": [{"name": "world_reliability_mc", "num_fewshot": 0}], "batch_size": 4, "limit": 6,
            "bootstrap_iters": 0, "device": "cpu", "max_length": 128, "seed": 1234}


def test_two_evaluations_are_identical(tiny_model_dir, tmp_path):
    tasks = write_task(tmp_path / "tasks")
    one = evaluate(str(tiny_model_dir), EVAL_CFG, tmp_path / "one.json", tasks_dir=tasks)
    two = evaluate(str(tiny_model_dir), EVAL_CFG, tmp_path / "two.json", tasks_dir=tasks)
    scores = one["scores"]["world_reliability_mc"]
    assert {"acc,none", "acc_norm,none"} <= set(scores) and 0.0 <= scores["acc,none"]["value"] <= 1.0
    assert one["scores"] == two["scores"]
    assert one["lm_eval"]["results"] == two["lm_eval"]["results"]
    assert one["lm_eval"]["n-samples"]["world_reliability_mc"]["effective"] == 6
    for record in (one, two):
        record.pop("wall_time_s")
    stored = [json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json")]
    for record in stored:
        record.pop("wall_time_s")
        record.pop("lm_eval")  # holds lm-eval's own timings and dates
        record.pop("items_file")  # names the record's own sibling file
    assert stored[0] == stored[1]
    assert (tmp_path / "one.items.jsonl").read_bytes() == (tmp_path / "two.items.jsonl").read_bytes()
