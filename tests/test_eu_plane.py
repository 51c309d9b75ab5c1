"""The eu-plane diagnostic: quadrant labels and a scored data set."""

from __future__ import annotations

import pandas as pd
import torch

from qtbench.eu_plane import crosstab, score_records, truth_label
from qtbench.methods.q_tuning import quadrant_labels
from qtbench.models import load_model, load_tokenizer
from qtbench.methods.base import Budget
from tests.conftest import make_records


def test_quadrant_labels_by_hand():
    # thresholds: ppl_hi 4, ppl_lo 2, ent_lo 1, ent_hi 3
    ppl = torch.tensor([5.0, 5.0, 1.0, 1.0, 3.0, 5.0, 2.0])
    ent = torch.tensor([0.5, 4.0, 0.5, 4.0, 2.0, 2.0, 1.0])
    assert quadrant_labels(ppl, ent, 4.0, 2.0, 1.0, 3.0) == ["Q2", "Q1", "Q3", "Q4", "mid", "mid", "Q3"]


def test_truth_labels_and_crosstab():
    assert truth_label({"noise": "random", "duplicate_of": None}) == "noise:random"
    assert truth_label({"noise": None, "duplicate_of": 3}) == "duplicate"
    assert truth_label({"noise": None, "duplicate_of": None}) == "clean"
    frame = pd.DataFrame({"truth": ["clean", "clean", "noise:random", "noise:random"],
                          "batch_quadrant": ["Q2", "Q3", "Q1", "Q1"]})
    table = crosstab(frame)
    assert table.loc["noise:random", "Q1"] == 100.0 and table.loc["clean", "Q2"] == 50.0
    assert table.loc["clean", "n"] == 2


def test_score_records_matches_training_triage(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device="cpu").eval()
    frame = score_records(model, tokenizer, make_records(16), micro_batch=8, max_length=64,
                          budget=Budget(0.25, 1.0), options={})
    assert list(frame["index"]) == list(range(16))
    assert (frame["ppl"] >= 1.0).all() and (frame["entropy_all"] > 0).all()
    # each micro-batch of 8 keeps at least K = round(8 * 0.25) = 2 samples (Q2, Q4 or top-ups)
    assert frame["kept"].sum() >= 4
    kept_labels = set(frame.loc[frame["kept"], "batch_quadrant"])
    assert kept_labels <= {"Q2", "Q4", "Q2+", "Q4+"}
    assert set(frame.loc[~frame["kept"], "batch_quadrant"]) <= {"Q1", "Q3", "mid"}
