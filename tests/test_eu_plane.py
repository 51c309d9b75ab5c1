"""The eu-plane diagnostic: quadrant labels and a scored data set."""

from __future__ import annotations

import pandas as pd
import torch

import math
import sys

import pytest

from qtbench.eu_plane import auroc, crosstab, label_auroc, score_records, truth_label
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


# clean ppl 1, 2, 3.  random 2.5 beats 1 and 2 (2 pairs), 4 beats all (3): 5/6.
# duplicate 2: beats 1, ties 2 (half), loses to 3: 1.5/3 = 0.5.  Entropy: random 0.1 and 0.2 below
# every clean 0.5..0.7: 0; duplicate 0.65 beats 0.5 and 0.6: 2/3.  No wrong_answer record: NaN.
AUROC_FRAME = pd.DataFrame({
    "truth": ["clean", "clean", "clean", "noise:random", "noise:random", "duplicate"],
    "ppl": [1.0, 2.0, 3.0, 2.5, 4.0, 2.0],
    "entropy": [0.5, 0.6, 0.7, 0.1, 0.2, 0.65],
})


@pytest.mark.parametrize("sklearn", [True, False])
def test_label_auroc_by_hand(sklearn, monkeypatch):
    if not sklearn:
        monkeypatch.setitem(sys.modules, "sklearn.metrics", None)  # the scipy path
    table = label_auroc(AUROC_FRAME)
    assert table.loc["noise:random", "AUROC ppl"] == pytest.approx(5 / 6)
    assert table.loc["noise:random", "AUROC entropy"] == 0.0
    assert table.loc["duplicate", "AUROC ppl"] == pytest.approx(0.5)
    assert table.loc["duplicate", "AUROC entropy"] == pytest.approx(2 / 3)
    assert math.isnan(table.loc["noise:wrong_answer", "AUROC ppl"]) and table.loc["noise:wrong_answer", "n"] == 0
    assert list(table.index) == ["noise:random", "noise:wrong_answer", "noise:truncated", "noise:refusal", "duplicate"]
    assert auroc([3.0], [1.0, 2.0]) == 1.0
