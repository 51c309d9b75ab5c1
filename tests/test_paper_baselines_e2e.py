"""LESS, SparseVLM and a judge-scored pruner (Alpagasus) trained end to end on CPU.

One smoke-sized Snakemake run (the tiny world model, ~2.5 min on 2 cores):
LESS's warm-up rule, the static scoring of LESS and Alpagasus (the world's base
model as a stand-in judge), training with each, evaluation and the tables.
The checks read what each run really trained on from its trace."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from tests.test_workflow import SMOKE, snakemake

pytestmark = pytest.mark.slow

OVERLAY = {
    "experiment": "smoke_paper_baselines",
    "methods": ["less", "random+sparsevlm", "alpagasus+random"],
    "budgets": [{"r_s": 0.5, "r_t": 0.5}],
    "method_budgets": {},
    "seeds": [0],
}
N_RECORDS = 96  # config/smoke.yaml world.n_sft
# r_t = 0.5 per sample is max(1, round(0.5 n_i)) of its n_i response tokens: the world's
# short answers (a one-token answer keeps its token; 5 tokens keep 2) move a
# micro-batch's share off one half
HALF_LOW, HALF_HIGH = 0.35, 0.75


def top_ids(scores: list[float], k: int) -> set[int]:
    """The k highest finite scores, ties to the lower index (the static pruners' rule)."""
    finite = [(i, s) for i, s in enumerate(scores) if not math.isnan(s)]
    return {i for i, _ in sorted(finite, key=lambda item: (-item[1], item[0]))[:k]}


def trace(results, run_id: str) -> list[dict]:
    path = results / "runs" / run_id / "checkpoint" / "trace.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("paper_baselines")
    overlay = work / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(OVERLAY))
    done = snakemake(work, "--cores", "2", "--configfile", str(SMOKE), str(overlay), config=SMOKE)
    assert done.returncode == 0, done.stderr[-4000:]
    return work / "results" / OVERLAY["experiment"], done.stdout + done.stderr


def test_less_warms_up_scores_and_trains_on_its_top_quarter(finished):
    results, log = finished
    assert "rule less_warmup" in log
    warmups = list((results / "less" / "tiny").glob("warmup-*/epoch*/adapter.safetensors"))
    assert warmups, "the warm-up kept no adapter checkpoints"
    scores = json.loads((results / "static" / "tiny" / "less.json").read_text())["scores"]
    assert len(scores) == N_RECORDS
    assert sum(math.isnan(s) for s in scores) == round(0.05 * N_RECORDS)  # the held-out target slice, never kept
    plan = trace(results, "tiny/less/s0.25-t1/seed0")[0]["epoch_plan"]["id"]  # sample-only: r_s * r_t = 25%
    assert set(plan) == top_ids(scores, round(0.25 * N_RECORDS))


def test_alpagasus_trains_on_the_stand_in_judges_top_half(finished):
    results, _ = finished
    scored = json.loads((results / "static" / "tiny" / "alpagasus.json").read_text())
    assert scored["model"]["judge"]["path"].endswith("models/tiny/base")  # `path: world` = the world's base model
    assert all(0.0 <= s <= 5.0 for s in scored["scores"])  # an expected rating on the 0-5 scale
    rows = trace(results, "tiny/alpagasus+random/s0.5-t0.5/seed0")
    assert set(rows[0]["epoch_plan"]["id"]) == top_ids(scored["scores"], round(0.5 * N_RECORDS))
    for row in rows:  # the Random token pruner keeps about half of each kept sample's response tokens
        assert HALF_LOW <= row["tokens_kept"] / row["token_candidates"] <= HALF_HIGH


def test_sparsevlm_keeps_half_the_response_tokens_of_each_micro_batch(finished):
    results, _ = finished
    rows = trace(results, "tiny/random+sparsevlm/s0.5-t0.5/seed0")
    assert len(rows) == 3  # smoke: max_steps 3
    for row in rows:
        assert HALF_LOW <= row["tokens_kept"] / row["token_candidates"] <= HALF_HIGH
        assert row["response_tokens_kept"] == row["tokens_kept"]


def test_the_tables_show_the_three_and_label_the_stand_in_judge(finished):
    results, _ = finished
    table = pd.read_csv(results / "tables" / "comparison.csv", keep_default_na=False).set_index("method")
    assert {"less", "random+sparsevlm", "alpagasus+random"} <= set(table.index)
    assert "stand-in judge" in table.loc["alpagasus+random", "options"]
