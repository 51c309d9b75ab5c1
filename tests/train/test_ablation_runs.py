"""A short training (2 optimizer steps, the tiny model) of each Q-Tuning
ablation option, run as a named variant through the trainer: the options reach
the method and its decisions show in the trace."""

from __future__ import annotations

import json

import pytest

from qtbench.train.loop import train
from tests.train.test_loop import run_config

VARIANTS = {
    "qt_triage": ({"stage": "triage_only"}, "0.125", "1"),
    "qt_tokens": ({"stage": "tokens_only"}, "1", "0.5"),
    "qt_reversed": ({"token_scorer": "reversed"}, "0.5", "0.5"),
    "qt_rho1": ({"token_scorer": "rho1"}, "0.5", "0.5"),
    "qt_q2q4": ({"prune_quadrants": "q2_q4"}, "0.5", "0.5"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_two_steps_of_each_ablation_variant(name, tiny_model_dir, records_file, tmp_path):
    options, r_s, r_t = VARIANTS[name]
    cfg = run_config(name, r_s, r_t, max_steps=2)
    cfg["variants"] = {name: {"method": "q_tuning", "options": options}}
    out = tmp_path / "out"
    # the Rho-1 scorer needs a reference model: the base itself will do for two steps
    reference = str(tiny_model_dir) if name == "qt_rho1" else None
    summary = train(cfg, out, str(tiny_model_dir), str(records_file), reference_model=reference, progress=False)
    assert summary["optimizer_steps"] == 2
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 2  # micro-batch 4, no accumulation
    for row in trace:
        assert row["batch_size"] == 4
        if name == "qt_triage":  # K = max(1, round(4 * 0.125)) = 1 (or more, never trimmed); no token pruned
            assert row["samples_kept"] >= 1 and row["tokens_pruned"] == 0
        if name == "qt_tokens":  # every sample, round(n * 0.5) of the batch's n response tokens
            assert row["samples_kept"] == 4 and row["samples"]["quadrant"] == ["mid"] * 4
            assert row["response_tokens_kept"] == round(row["response_tokens"] * 0.5)
        if name == "qt_q2q4":
            assert row["token_candidates"] >= 1
    if name == "qt_rho1":
        with pytest.raises(ValueError, match="reference model"):
            train(cfg, tmp_path / "no_ref", str(tiny_model_dir), str(records_file), progress=False)
